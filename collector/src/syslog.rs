//! Syslog output: RFC 5424 messages over TCP or TLS with octet-counting
//! framing (RFC 6587), whose MSG is the output line (JSON or OCSF).
//!
//! Syslog is a secondary output with its own task and a bounded queue:
//! a slow, blackholed or down receiver never stalls the collector's file
//! output. Connects and writes have timeouts; messages that cannot be sent
//! (queue full, receiver down) are counted and logged.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use spyglass_proto::model::{Event, Kind, Severity};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    time::timeout,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
    },
    TlsConnector,
};
use tracing::warn;

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
    match (ev.kind, &ev.finding) {
        (Kind::Finding, Some(f)) => match f.severity {
            Severity::Critical => 2,
            Severity::High => 3,
            Severity::Medium => 4,
            Severity::Low => 5,
            Severity::Info | Severity::Unspecified => 6,
        },
        (Kind::Loss, _) => 4, // warning
        _ => 6,               // informational
    }
}

/// One framed message: `LEN SP <PRI>1 TIMESTAMP HOST spyglass - KIND - MSG`.
pub fn frame(ev: &Event, line: &str) -> Vec<u8> {
    let pri = FACILITY * 8 + severity(ev);
    let ts = ev.time.to_string();
    let host = if ev.node.is_empty() {
        "-"
    } else {
        ev.node.as_str()
    };
    let msg = format!("<{pri}>1 {ts} {host} spyglass - {} - {line}", ev.kind);
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

trait Conn: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Conn for T {}

/// Messages waiting for the syslog task at most (batches of lines).
const QUEUE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct SyslogSink {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    conn: Option<Box<dyn Conn>>,
}

/// The collector's side of the syslog task.
pub struct SyslogHandle {
    tx: mpsc::Sender<(usize, Vec<u8>)>,
    /// Messages that could not be sent.
    pub dropped: Arc<AtomicU64>,
}

impl SyslogHandle {
    /// Queue a batch; when the queue is full the batch is dropped and counted.
    pub fn send(&self, events: &[Event], lines: &crate::output::Lines) {
        let mut buf = Vec::new();
        for (ev, line) in events.iter().zip(lines.iter()) {
            buf.extend_from_slice(&frame(ev, line));
        }
        if self.tx.try_send((events.len(), buf)).is_err() {
            let total = self
                .dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            warn!(
                dropped = events.len(),
                total_dropped = total + events.len() as u64,
                "syslog queue full; messages dropped"
            );
        }
    }
}

impl SyslogSink {
    async fn connect(&mut self) -> std::io::Result<Box<dyn Conn>> {
        let tcp = timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Ok(Box::new(stream))
            }
        }
    }

    /// Send one framed batch; Err when it could not be sent.
    async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let r = timeout(WRITE_TIMEOUT, async {
            conn.write_all(buf).await?;
            conn.flush().await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))
        .and_then(|r| r);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Start the syslog task: `tcp://host:port` or `tls://host:port` (with
/// `ca_file` for TLS).
pub fn spawn(target: &str, ca_file: Option<&str>) -> Result<SyslogHandle, SyslogError> {
    let mut sink = parse(target, ca_file)?;
    let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    tokio::spawn(async move {
        while let Some((n, buf)) = rx.recv().await {
            // one retry on a fresh connection, then drop and count
            let mut sent = false;
            for _ in 0..2 {
                match sink.send(&buf).await {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        warn!(host = %sink.host, port = sink.port, error = %e, "syslog send failed");
                    }
                }
            }
            if !sent {
                let total = counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                warn!(
                    dropped = n,
                    total_dropped = total,
                    "syslog messages dropped"
                );
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    });
    Ok(SyslogHandle { tx, dropped })
}

fn parse(target: &str, ca_file: Option<&str>) -> Result<SyslogSink, SyslogError> {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_rfc5424_with_octet_count() {
        let ev = Event::new(
            Kind::Exec,
            spyglass_proto::time::Timestamp(1_795_549_718_856_200_274),
            "node1".into(),
        );
        let f = String::from_utf8(frame(&ev, "{\"a\":1}")).unwrap();
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<110>1 2026-11-24T19:48:38.856200274Z node1 spyglass - exec - {\"a\":1}"
        );
        assert!(parse("udp://x:1", None).is_err());
        assert!(parse("tcp://127.0.0.1:514", None).is_ok());
        assert!(parse("tcp://host", None).is_err());
    }
}
