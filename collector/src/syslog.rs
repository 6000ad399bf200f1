//! Syslog output: RFC 5424 messages over TCP or TLS with octet-counting
//! framing (RFC 6587), whose MSG is the output line (JSON or OCSF).
//!
//! Syslog is a secondary output: when the receiver is down the collector
//! keeps writing its file, retries the connection on the next batch, and
//! counts and logs the messages it could not send.
use std::sync::Arc;

use spyglass_proto::v1::{event::Detail, Event, EventKind, Severity};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
    },
    TlsConnector,
};
use tracing::warn;

use crate::convert;

#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog target `{0}` must look like tcp://HOST:PORT or tls://HOST:PORT")]
    BadTarget(String),
    #[error("cannot read the syslog CA file {path}: {message}")]
    Ca { path: String, message: String },
}

/// Facility `log audit` (13).
const FACILITY: u8 = 13;

/// RFC 5424 severity for an event.
pub fn severity(ev: &Event) -> u8 {
    match (
        EventKind::try_from(ev.kind).unwrap_or(EventKind::Unspecified),
        &ev.detail,
    ) {
        (EventKind::Finding, Some(Detail::Finding(f))) => {
            match Severity::try_from(f.severity).unwrap_or(Severity::Unspecified) {
                Severity::Critical => 2,
                Severity::High => 3,
                Severity::Medium => 4,
                Severity::Low => 5,
                _ => 6,
            }
        }
        (EventKind::Loss, _) => 4, // warning
        _ => 6,                    // informational
    }
}

/// One framed message: `LEN SP <PRI>1 TIMESTAMP HOST spyglass - KIND - MSG`.
pub fn frame(ev: &Event, line: &str) -> Vec<u8> {
    let pri = FACILITY * 8 + severity(ev);
    let ts = spyglass_proto::time::Timestamp(ev.time_unix_nano).to_string();
    let host = if ev.node.is_empty() {
        "-"
    } else {
        ev.node.as_str()
    };
    let msg = format!(
        "<{pri}>1 {ts} {host} spyglass - {} - {line}",
        convert::kind_name(ev.kind)
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

trait Conn: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Conn for T {}

pub struct SyslogSink {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    conn: Option<Box<dyn Conn>>,
    /// Messages that could not be sent.
    pub dropped: u64,
}

impl SyslogSink {
    /// `tcp://host:port` or `tls://host:port` (with `ca_file` for TLS).
    pub fn new(target: &str, ca_file: Option<&str>) -> Result<Self, SyslogError> {
        let bad = || SyslogError::BadTarget(target.to_owned());
        let (scheme, rest) = target.split_once("://").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let tls = match scheme {
            "tcp" => None,
            "tls" => {
                let mut roots = rustls::RootCertStore::empty();
                if let Some(path) = ca_file {
                    let ca_err = |message: String| SyslogError::Ca {
                        path: path.to_owned(),
                        message,
                    };
                    for cert in
                        CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?
                    {
                        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                    }
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            _ => return Err(bad()),
        };
        Ok(SyslogSink {
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
            tls,
            conn: None,
            dropped: 0,
        })
    }

    async fn connect(&mut self) -> std::io::Result<Box<dyn Conn>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Ok(Box::new(tls.connect(name, tcp).await?))
            }
        }
    }

    /// Send one batch; on failure reconnect once, then count the drop.
    pub async fn send(&mut self, events: &[Event], lines: &[String]) {
        let mut buf = Vec::new();
        for (ev, line) in events.iter().zip(lines) {
            buf.extend_from_slice(&frame(ev, line));
        }
        for attempt in 0..2 {
            if self.conn.is_none() {
                match self.connect().await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        warn!(host = %self.host, port = self.port, error = %e, attempt, "syslog connect failed");
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.write_all(&buf).await.and(conn.flush().await) {
                Ok(()) => return,
                Err(e) => {
                    warn!(host = %self.host, error = %e, "syslog write failed; reconnecting");
                    self.conn = None;
                }
            }
        }
        self.dropped += events.len() as u64;
        warn!(
            dropped = events.len(),
            total_dropped = self.dropped,
            "syslog messages dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_rfc5424_with_octet_count() {
        let ev = Event {
            kind: EventKind::Exec as i32,
            time_unix_nano: 1_795_549_718_856_200_274,
            node: "node1".into(),
            ..Event::default()
        };
        let f = String::from_utf8(frame(&ev, "{\"a\":1}")).unwrap();
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<110>1 2026-11-24T19:48:38.856200274Z node1 spyglass - exec - {\"a\":1}"
        );
        assert!(SyslogSink::new("udp://x:1", None).is_err());
        assert!(SyslogSink::new("tcp://127.0.0.1:514", None).is_ok());
    }
}
