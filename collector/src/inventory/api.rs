//! The read API (`--api-listen`): JSON under `/api/v1/`, behind a bearer
//! token of its own (`--api-token-file`), separate from the agents'
//! credentials. Without a token it serves loopback only. It reads, but
//! for scanner reports, which it takes (`PUT /api/v1/reports/NAME`)
//! behind a token of their own (`--api-report-token-file`).
use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::Ordering, Arc},
};

use axum::{
    extract::{Path as UrlPath, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;
use sqlx::AnyPool;
use tracing::{info, warn};

use super::{
    query::{self, QueryError},
    Health,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--api-listen {0} is not a loopback address and no --api-token-file is given: \
         the API shows the whole fleet, so give a token file (clients send \
         `Authorization: Bearer TOKEN`) or listen on 127.0.0.1"
    )]
    OpenToAll(SocketAddr),
    #[error("--api-listen needs the inventory: drop --store none")]
    NoStore,
    #[error("cannot read the API token file {path} (--api-token-file): {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the API token file {0} (--api-token-file) is empty: write a token into it")]
    EmptyToken(String),
    #[error("cannot listen on {addr} for the API (--api-listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The API's token, read from its file (surrounding whitespace ignored).
pub fn read_token(path: &Path) -> Result<String, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApiError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ApiError::EmptyToken(path.display().to_string()));
    }
    Ok(token.to_owned())
}

/// Refuse to serve the fleet's state to every address without a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), ApiError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ApiError::OpenToAll(addr));
    }
    Ok(())
}

#[derive(Clone)]
struct App {
    /// Report uploads, one at a time.
    uploads: Arc<tokio::sync::Semaphore>,
    /// The token report uploads need (`--api-report-token-file`); none:
    /// uploads are off.
    report_token: Option<Arc<str>>,
    pool: AnyPool,
    token: Option<Arc<str>>,
    health: Arc<Health>,
    live: Arc<crate::live::Hub>,
}

/// Compare `got` with the token `want` in time that depends only on the
/// token's length: no early stop at the first differing byte, nor at a
/// length that differs.
pub(super) fn same(got: &[u8], want: &[u8]) -> bool {
    let differ = want.iter().enumerate().fold(0u8, |d, (i, w)| {
        d | (w ^ got.get(i).copied().unwrap_or(!*w))
    });
    differ == 0 && got.len() == want.len()
}

/// Without a token the API serves loopback only; a request must also
/// name a loopback host, so a web page that rebinds its own name to
/// 127.0.0.1 (DNS rebinding) cannot read the fleet through a browser on
/// the collector's host. A request without `Host` (HTTP/1.0) is not a
/// browser's.
pub(super) fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(want) = token else {
        return loopback_host(headers);
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| same(got.as_bytes(), want.as_bytes()))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unauthorized() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (without --api-token-file: the Host is not a loopback address)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    r
}

/// `/api/v1/events?follow=1&...`: the live stream (crate::live).
async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&headers, app.token.as_deref()) {
        return unauthorized();
    }
    let pairs = match pairs {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("query string: {e}")),
    };
    match crate::live::Filter::parse(&pairs).and_then(|f| app.live.subscribe(f)) {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::from_stream(body),
        )
            .into_response(),
        Err(e @ crate::live::LiveError::Full(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `/api/v1/lineage?image=DIGEST[&relation=ancestors|descendants]`: the
/// image hierarchy around one image (lineage.rs).
async fn lineage(
    State(app): State<App>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use super::lineage::{self, LineageError, Which};
    if !authorized(&headers, app.token.as_deref()) {
        return unauthorized();
    }
    let pairs = match pairs {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("query string: {e}")),
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some((name, _)) = pairs.iter().find(|(n, _)| n != "image" && n != "relation") {
        let name: String = name.chars().take(64).collect();
        return error(
            StatusCode::BAD_REQUEST,
            &format!("lineage takes image= and relation=, not {name}="),
        );
    }
    let Some(image) = get("image") else {
        return error(
            StatusCode::BAD_REQUEST,
            "lineage needs image=DIGEST (a manifest, index or config digest)",
        );
    };
    let which = match Which::parse(get("relation")) {
        Ok(w) => w,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if let Some(why) = app.health.reach.down() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("store unreachable: {why}"),
        );
    }
    match lineage::rows(&app.pool, image, which).await {
        Ok((rows, truncated)) => Json(json!({ "lineage": rows, "truncated": truncated,
            "stale": app.health.stale.load(Ordering::Relaxed) }))
        .into_response(),
        Err(e @ LineageError::Unknown(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => {
            warn!(error = %e, "API lineage query failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// A report name sent to the API: 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.`.
fn report_name(name: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(format!("{}{name}", super::report_dir::API_PREFIX))
    } else {
        Err("a report name is 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)".into())
    }
}

/// The answer to a request without the report token
/// (`--api-report-token-file`); `None`: it has it.
fn not_report_writer(headers: &HeaderMap, token: Option<&str>) -> Option<Response> {
    let Some(want) = token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "report uploads are off: start the collector with --api-report-token-file \
             (a token of its own, not the read API's)",
        ));
    };
    (!authorized(headers, Some(want))).then(unauthorized)
}

/// `PUT /api/v1/reports/NAME` with a report as the body: parsed and
/// saved as `api:NAME` (a new scan of an image supersedes the old one);
/// `DELETE` removes it. Behind the report token, checked before a byte
/// of the body is read; one body is read at a time, at most
/// [`crate::vulns::MAX_REPORT_BYTES`].
async fn put_report(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use super::report_dir::{import, ImportError, Outcome};
    if let Some(r) = not_report_writer(&headers, app.report_token.as_deref()) {
        return r;
    }
    let name = match report_name(&name) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let _one = app.uploads.acquire().await;
    let bytes = match axum::body::to_bytes(body, crate::vulns::MAX_REPORT_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "{name}: the body was not read ({e}); a report holds at most {} bytes",
                    crate::vulns::MAX_REPORT_BYTES
                ),
            )
        }
    };
    match import(&app.pool, &name, Vec::from(bytes)).await {
        Ok(Outcome::Unchanged) => {
            Json(json!({ "report": name, "unchanged": true })).into_response()
        }
        Ok(Outcome::Superseded) => error(
            StatusCode::CONFLICT,
            &format!(
                "{name}: a newer scan of its image replaced these very bytes; not imported again"
            ),
        ),
        Ok(Outcome::Saved(s)) => {
            info!(report = %name, superseded = ?s.superseded, "vulnerability report imported through the API");
            Json(json!({ "report": name, "superseded": s.superseded })).into_response()
        }
        Err(e @ ImportError::Store(_)) => {
            warn!(report = %name, error = %e, "vulnerability report not saved");
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn delete_report(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = not_report_writer(&headers, app.report_token.as_deref()) {
        return r;
    }
    let name = match report_name(&name) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match super::reports::delete(&app.pool, &name).await {
        Ok(()) => Json(json!({ "report": name, "deleted": true })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn list(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&headers, app.token.as_deref()) {
        return unauthorized();
    }
    let Some(ep) = query::ENDPOINTS.iter().find(|e| e.name == name) else {
        let known: Vec<_> = query::ENDPOINTS.iter().map(|e| e.name).collect();
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "no endpoint /api/v1/{name}; there are: {}",
                known.join(", ")
            ),
        );
    };
    let pairs = match pairs {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("query string: {e}")),
    };
    if let Some(why) = app.health.reach.down() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("store unreachable: {why}"),
        );
    }
    match query::run(&app.pool, ep, &pairs).await {
        Ok((rows, truncated)) => {
            let mut body = serde_json::Map::new();
            body.insert(ep.name.into(), rows.into());
            body.insert("truncated".into(), truncated.into());
            body.insert(
                "stale".into(),
                app.health.stale.load(Ordering::Relaxed).into(),
            );
            Json(serde_json::Value::Object(body)).into_response()
        }
        Err(QueryError::Filter(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(QueryError::Store { source, .. }) if super::store::unreachable(&source) => {
            let why = source.to_string();
            app.health.reach.set_down(why.clone());
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("store unreachable: {why}"),
            )
        }
        Err(e @ QueryError::Store { .. }) => {
            warn!(error = %e, "API query failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// Bind the API's address (at start, so a busy port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Listen { addr, source })
}

/// Serve the API on `listener` until the process ends.
pub fn spawn(
    listener: tokio::net::TcpListener,
    pool: AnyPool,
    token: Option<String>,
    report_token: Option<String>,
    health: Arc<Health>,
    live: Arc<crate::live::Hub>,
) {
    // the web page (web.rs) on the same listener, behind the same token
    let web = super::web::router(pool.clone(), token.clone(), health.clone());
    let app = App {
        uploads: Arc::new(tokio::sync::Semaphore::new(1)),
        report_token: report_token.map(Arc::from),
        pool,
        token: token.map(Arc::from),
        health,
        live,
    };
    let router = Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/lineage", get(lineage))
        .route("/api/v1/{name}", get(list))
        .route(
            "/api/v1/reports/{name}",
            axum::routing::put(put_report).delete(delete_report),
        )
        .with_state(app)
        .merge(web);
    info!(addr = ?listener.local_addr().ok(), "inventory API ready");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "the inventory API stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_compares_whole_and_a_tokenless_api_wants_a_loopback_host() {
        assert!(same(b"secret", b"secret"));
        for bad in [&b""[..], b"secre", b"secret!", b"Secret", b"\xffecret"] {
            assert!(!same(bad, b"secret"), "{bad:?}");
        }
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            loopback_host(&m)
        };
        for ok in [
            "127.0.0.1:7072",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7072",
            "127.1.2.3",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7072",
            "10.0.0.1:7072",
            "[2001:db8::1]:7072",
            "localhost.evil.example",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()), "no Host: not a browser");
    }

    #[test]
    fn report_names_are_plain_file_names() {
        assert_eq!(report_name("app-1.4_x").unwrap(), "api:app-1.4_x");
        let long = "a".repeat(129);
        for bad in [
            "",
            ".hidden",
            "../etc",
            "a/b",
            "a b",
            "x\u{7}",
            long.as_str(),
        ] {
            assert!(report_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_token_only_loopback() {
        let open = "0.0.0.0:8080".parse().unwrap();
        let e = check_exposure(open, None).unwrap_err().to_string();
        assert!(e.contains("--api-token-file"), "{e}");
        assert!(check_exposure(open, Some("t")).is_ok());
        assert!(check_exposure("127.0.0.1:1".parse().unwrap(), None).is_ok());
        assert!(check_exposure("[::1]:1".parse().unwrap(), None).is_ok());
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let mut h = HeaderMap::new();
        assert!(authorized(&h, None));
        assert!(!authorized(&h, Some("secret")));
        h.insert(header::AUTHORIZATION, "Bearer secre".parse().unwrap());
        assert!(!authorized(&h, Some("secret")));
        h.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert!(authorized(&h, Some("secret")));
        h.insert(header::AUTHORIZATION, "secret".parse().unwrap());
        assert!(!authorized(&h, Some("secret")));
    }
}
