//! The webhook output's settings: command-line flags, checked at start
//! (URL, CA bundle, token, extra headers), so a bad one stops the start
//! with the reason.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use ureq::{
    http::{HeaderName, HeaderValue, Uri},
    tls::{parse_pem, Certificate, PemItem},
};

/// Headers the collector sets itself; `--webhook-header` may not.
const RESERVED: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "host",
    "idempotency-key",
    "transfer-encoding",
];

/// Prefix of the collector's own headers.
const OWN_PREFIX: &str = "x-spyglass-";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--webhook-url {url:?} is not a URL: {why}")]
    Url { url: String, why: String },
    #[error(
        "--webhook-url {url:?}: plain http:// is only allowed to a loopback host \
         (localhost, 127.0.0.0/8, [::1]); use https:// for {host}"
    )]
    NotLoopback { url: String, host: String },
    #[error(
        "--webhook-url must not carry credentials (user:password@): put the token in \
         --webhook-token-file"
    )]
    Credentials,
    #[error("cannot read the webhook CA file {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the webhook CA file {path} holds no PEM certificate ({why})")]
    CaEmpty { path: PathBuf, why: String },
    #[error("cannot read the webhook token file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the webhook token file {path} is empty")]
    TokenEmpty { path: PathBuf },
    #[error("the webhook token (file {path}) or --webhook-auth-scheme cannot be sent in a header: {why}")]
    TokenValue { path: PathBuf, why: String },
    #[error(
        "--webhook-header {given:?}: expected `Name: value` with a valid header name and value"
    )]
    Header { given: String },
    #[error("--webhook-header {name}: the collector sets this header itself{hint}")]
    ReservedHeader { name: String, hint: &'static str },
}

/// How a POST's body frames its lines (`--webhook-body`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Body {
    /// One line per event, each ending in `\n` (application/x-ndjson).
    #[default]
    Ndjson,
    /// One JSON array of the events (application/json).
    Array,
}

impl Body {
    pub fn content_type(self) -> &'static str {
        match self {
            Body::Ndjson => "application/x-ndjson",
            Body::Array => "application/json",
        }
    }
}

/// POST every event and finding to an HTTPS receiver (docs/collector.md).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// POST every event and finding to this URL instead of the output
    /// file: https://, or http:// to a loopback host only. A batch is
    /// acked to its agent only once the receiver answered 2xx to every
    /// POST carrying its lines.
    #[arg(long = "webhook-url", id = "webhook-url", value_name = "URL", conflicts_with_all = ["output", "brokers"])]
    pub url: Option<String>,
    /// CA bundle (PEM) to verify the receiver's certificate. Default:
    /// Mozilla's root certificates (webpki-roots).
    #[arg(
        long = "webhook-ca-file",
        id = "webhook-ca-file",
        value_name = "PEM",
        requires = "webhook-url"
    )]
    pub ca_file: Option<PathBuf>,
    /// File holding the token sent as `Authorization: SCHEME TOKEN`
    /// (never logged).
    #[arg(
        long = "webhook-token-file",
        id = "webhook-token-file",
        value_name = "FILE",
        requires = "webhook-url"
    )]
    pub token_file: Option<PathBuf>,
    /// The scheme before the token: `Bearer`, or `Splunk` for a Splunk
    /// HTTP Event Collector.
    #[arg(
        long = "webhook-auth-scheme",
        id = "webhook-auth-scheme",
        value_name = "SCHEME",
        default_value = "Bearer"
    )]
    pub auth_scheme: String,
    /// An extra header on every POST, `Name: value` (repeatable); values
    /// are never logged.
    #[arg(
        long = "webhook-header",
        id = "webhook-header",
        value_name = "NAME: VALUE",
        requires = "webhook-url"
    )]
    pub headers: Vec<String>,
    /// The body's framing: ndjson (one event a line,
    /// application/x-ndjson) or array (one JSON array, application/json).
    #[arg(long = "webhook-body", id = "webhook-body", value_name = "FRAMING", value_enum, default_value_t = Body::Ndjson)]
    pub body: Body,
    /// Most bytes of lines one POST carries (whole agent batches, as
    /// many as fit; a batch larger than this is split by lines; one line
    /// larger goes alone).
    #[arg(long = "webhook-batch-max-bytes", id = "webhook-batch-max-bytes", value_name = "BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1024..=(256 << 20)))]
    pub batch_max_bytes: u64,
    /// Most memory the batches waiting for the receiver may hold, MiB;
    /// past it streams are not read (agents keep their batches in their
    /// spools).
    #[arg(long = "webhook-queue-mib", id = "webhook-queue-mib", value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub queue_mib: u64,
    /// Seconds one POST may take, connection and TLS handshake included;
    /// past it the POST is retried.
    #[arg(long = "webhook-timeout-s", id = "webhook-timeout-s", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,
    /// Longest wait between two tries of a failing POST, seconds (the
    /// wait doubles from 250 ms, with jitter; a Retry-After is honoured
    /// up to this).
    #[arg(long = "webhook-max-backoff-s", id = "webhook-max-backoff-s", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub max_backoff_s: u64,
}

/// The settings the webhook output runs with.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    /// Root certificates; `None`: webpki-roots.
    pub roots: Option<Vec<Certificate<'static>>>,
    /// `SCHEME TOKEN` (a secret).
    pub authorization: Option<String>,
    /// Extra headers (values may be secrets).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
    pub batch_max_bytes: usize,
    pub queue_bytes: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Settings")
            .field("url", &shown_url(&self.url))
            .field("roots", &self.roots.as_ref().map(Vec::len))
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("headers", &headers)
            .field("body", &self.body)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("queue_bytes", &self.queue_bytes)
            .field("timeout", &self.timeout)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// The URL as logs and `/readyz` show it: without its query, which may
/// carry a secret.
pub fn shown_url(url: &str) -> String {
    // Only scheme, host and port: a path can carry a token (chat
    // webhooks), a query or user info too.
    match url.parse::<Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(scheme), Some(a)) => {
                let host = a.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}")
            }
            _ => "(an unparsable URL, not shown)".into(),
        },
        Err(_) => "(an unparsable URL, not shown)".into(),
    }
}

/// Whether `host` (as a URI holds it, IPv6 in brackets) is loopback.
fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Check `--webhook-url`: https://, or http:// to a loopback host.
pub fn check_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Url {
        url: shown_url(url),
        why: why.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("it has no host (https://HOST[:PORT]/PATH)"))?;
    if authority.as_str().contains('@') {
        return Err(ConfigError::Credentials);
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("it has no host (https://HOST[:PORT]/PATH)"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback(host) => Ok(()),
        Some("http") => Err(ConfigError::NotLoopback {
            url: shown_url(url),
            host: host.to_owned(),
        }),
        _ => Err(bad(
            "it must start with https:// (or http:// to a loopback host)",
        )),
    }
}

/// The certificates of a PEM bundle.
fn read_roots(path: &PathBuf) -> Result<Vec<Certificate<'static>>, ConfigError> {
    let pem = std::fs::read(path).map_err(|source| ConfigError::CaRead {
        path: path.clone(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(ConfigError::CaEmpty {
                    path: path.clone(),
                    why: e.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(ConfigError::CaEmpty {
            path: path.clone(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// `Name: value` of `--webhook-header`.
pub fn parse_header(given: &str) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let bad = || ConfigError::Header {
        // the value may be a secret: only the name is shown, and nothing
        // when there is no `:` to tell the name from the value
        given: match given.split_once(':') {
            Some((name, _)) => format!("{}: ...", name.trim()),
            None => "(without a `:`; not shown, it may hold a secret)".into(),
        },
    };
    let (n, v) = given.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    let lower = name.as_str();
    if RESERVED.contains(&lower) || lower.starts_with(OWN_PREFIX) {
        let hint = if lower == "authorization" {
            ": give the token in --webhook-token-file (and --webhook-auth-scheme)"
        } else {
            ""
        };
        return Err(ConfigError::ReservedHeader {
            name: lower.to_owned(),
            hint,
        });
    }
    Ok((name, value))
}

impl WebhookArgs {
    /// The settings, when --webhook-url is given.
    pub fn settings(&self) -> Result<Option<Settings>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let url = url.trim();
        check_url(url)?;
        let roots = self.ca_file.as_ref().map(read_roots).transpose()?;
        let authorization = match &self.token_file {
            None => None,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::TokenRead {
                        path: path.clone(),
                        source,
                    })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ConfigError::TokenEmpty { path: path.clone() });
                }
                let value = format!("{} {token}", self.auth_scheme.trim());
                HeaderValue::from_str(&value).map_err(|_| ConfigError::TokenValue {
                    path: path.clone(),
                    why: "it holds a control character".into(),
                })?;
                Some(value)
            }
        };
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<_, _>>()?;
        Ok(Some(Settings {
            url: url.to_owned(),
            roots,
            authorization,
            headers,
            body: self.body,
            batch_max_bytes: usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX),
            queue_bytes: usize::try_from(self.queue_mib << 20).unwrap_or(usize::MAX),
            timeout: Duration::from_secs(self.timeout_s),
            max_backoff: Duration::from_secs(self.max_backoff_s),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        for ok in [
            "https://siem.example/ingest",
            "https://10.1.2.3:8443/x?channel=1",
            "http://127.0.0.1:8080/hook",
            "http://127.9.0.1/",
            "http://localhost:9000",
            "http://[::1]:9000/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}: {:?}", check_url(ok));
        }
        let e = check_url("http://siem.example/x").unwrap_err().to_string();
        assert!(
            e.contains("only allowed to a loopback host") && e.contains("siem.example"),
            "{e}"
        );
        let e = check_url("http://10.0.0.1/x").unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        let e = check_url("ftp://h/x").unwrap_err().to_string();
        assert!(e.contains("must start with https://"), "{e}");
        let e = check_url("siem.example/x").unwrap_err().to_string();
        assert!(e.contains("not a URL"), "{e}");
        assert!(matches!(
            check_url("https://u:p@siem.example/x"),
            Err(ConfigError::Credentials)
        ));
        assert_eq!(shown_url("https://h/p?token=s"), "https://h");
        assert_eq!(shown_url("https://h:8443/hooks/T0K3N"), "https://h:8443");
        assert_eq!(shown_url("https://u:p@h/x"), "https://h");
        // errors show no more than that
        let e = check_url("http://siem.example/hooks/T0K3N?k=s")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("T0K3N") && !e.contains("k=s"), "{e}");
        let e = check_url("https://exa mple/T0K3N").unwrap_err().to_string();
        assert!(e.contains("not a URL") && !e.contains("T0K3N"), "{e}");
    }

    #[test]
    fn headers_are_checked_and_values_never_shown() {
        let (n, v) = parse_header("X-Tenant: blue team").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-tenant", "blue team"));
        for reserved in [
            "Authorization: Bearer s3cret",
            "Content-Type: text/plain",
            "X-Spyglass-Batches: 1",
        ] {
            let e = parse_header(reserved).unwrap_err().to_string();
            assert!(
                e.contains("sets this header itself") && !e.contains("s3cret"),
                "{e}"
            );
        }
        let e = parse_header("X-Key s3cret").unwrap_err().to_string();
        assert!(e.contains("expected `Name: value`"), "{e}");
        let e = parse_header("Bad Name: s3cret").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        // no `:` at all: nothing of it is shown
        let e = parse_header("X-Api-Key=s3cret").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    fn args(url: &str) -> WebhookArgs {
        WebhookArgs {
            url: Some(url.into()),
            ca_file: None,
            token_file: None,
            auth_scheme: "Bearer".into(),
            headers: vec!["X-Api-Key: k3y".into()],
            body: Body::Ndjson,
            batch_max_bytes: 1 << 20,
            queue_mib: 64,
            timeout_s: 10,
            max_backoff_s: 30,
        }
    }

    #[test]
    fn secrets_are_not_shown_and_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("webhook-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let mut a = args("https://siem.example/x?sig=abc");
        a.token_file = Some(token.clone());
        let s = a.settings().unwrap().unwrap();
        assert_eq!(s.authorization.as_deref(), Some("Bearer t0ken"));
        let shown = format!("{s:?}");
        for secret in ["t0ken", "k3y", "sig=abc"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        std::fs::write(&token, " \n").unwrap();
        assert!(matches!(a.settings(), Err(ConfigError::TokenEmpty { .. })));
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        a.token_file = None;
        a.ca_file = Some(ca);
        let e = a.settings().unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        a.ca_file = Some(dir.join("missing.pem"));
        let e = a.settings().unwrap_err().to_string();
        assert!(e.contains("cannot read the webhook CA file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
