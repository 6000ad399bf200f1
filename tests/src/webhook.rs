//! A real HTTPS receiver for the collector's webhook output: hyper over
//! tokio-rustls on a loopback port, with a certificate signed at test
//! time by a CA of the test's own (openssl, `pki.rs`). It records every
//! POST (headers, body, the status it answered) and keeps the lines of
//! those it took (2xx), in arrival order. What it answers is set with
//! [`Receiver::set`]: take everything, a fixed status, 413 over a body
//! size, 401 without the right token, or 403 to a body holding a marker
//! (a web application firewall judging one event). Stopped on drop.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request, Response};
use serde_json::Value;
use tokio_rustls::rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};

use crate::pki;

/// What the receiver answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 to every POST.
    Take,
    /// This status to every POST (with `Retry-After: 1` for 429 and 503).
    Status(u16),
    /// 413 to a body over this many bytes, else 200.
    MaxBody(usize),
    /// 401 unless `Authorization` is `Bearer TOKEN`, else 200.
    Token(String),
    /// 403 to a body containing this text, else 200.
    RefuseMarked(String),
}

/// One POST as received.
#[derive(Clone, Debug)]
pub struct Post {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Post {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The events of the body: ndjson lines, or a JSON array.
    pub fn events(&self) -> Vec<Value> {
        if self.header("content-type") == Some("application/json") {
            let v: Value = serde_json::from_slice(&self.body).expect("a JSON array body");
            return v.as_array().expect("a JSON array body").clone();
        }
        let text = std::str::from_utf8(&self.body).expect("a UTF-8 body");
        assert!(text.ends_with('\n'), "an ndjson body ends with a newline");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")))
            .collect()
    }
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    posts: Vec<Post>,
}

/// The receiver of one test.
pub struct Receiver {
    pub port: u16,
    /// The CA that signed its certificate (`--webhook-ca-file`).
    pub ca: PathBuf,
    state: Arc<Mutex<State>>,
    rt: Option<tokio::runtime::Runtime>,
}

fn answer(mode: &Mode, auth: Option<&str>, body: &[u8]) -> u16 {
    match mode {
        Mode::Take => 200,
        Mode::Status(s) => *s,
        Mode::MaxBody(max) if body.len() > *max => 413,
        Mode::MaxBody(_) => 200,
        Mode::Token(t) if auth == Some(format!("Bearer {t}").as_str()) => 200,
        Mode::Token(_) => 401,
        Mode::RefuseMarked(m) if body.windows(m.len()).any(|w| w == m.as_bytes()) => 403,
        Mode::RefuseMarked(_) => 200,
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes().to_vec();
    let mut s = state.lock().unwrap();
    let mode = s.mode.clone().unwrap_or(Mode::Take);
    let status = answer(
        &mode,
        headers.get("authorization").map(String::as_str),
        &body,
    );
    s.posts.push(Post {
        headers,
        body,
        status,
    });
    let mut resp = Response::builder().status(status);
    if matches!(status, 429 | 503) {
        resp = resp.header("Retry-After", "1");
    }
    let text = match status {
        200 => "{\"ok\":true}".to_owned(),
        s => format!("{{\"error\":\"test receiver answers {s}\"}}"),
    };
    Ok(resp.body(Full::new(Bytes::from(text))).unwrap())
}

fn tls(dir: &Path) -> Arc<ServerConfig> {
    pki::make_ca(dir, "webhook-ca");
    pki::make_cert(dir, "webhook-ca", "receiver", "serverAuth", pki::LOOPBACK);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&std::fs::read(dir.join("receiver.pem")).unwrap())
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join("receiver.key")).unwrap()).unwrap();
    let mut c = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

impl Receiver {
    /// Start on a free loopback port, HTTPS with a certificate for
    /// 127.0.0.1 and localhost made in `dir`.
    pub fn start(dir: &Path) -> Receiver {
        std::fs::create_dir_all(dir).unwrap();
        let config = tls(dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    // a failed handshake (a client that does not trust the
                    // CA) just ends this connection
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Receiver {
            port,
            ca: dir.join("webhook-ca.pem"),
            state,
            rt: Some(rt),
        }
    }

    /// `https://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/ingest", self.port)
    }

    /// What to answer from now on.
    pub fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Every POST so far, in arrival order.
    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap().posts.clone()
    }

    /// The events of the POSTs it took (2xx), in arrival order.
    pub fn taken(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .filter(|p| (200..300).contains(&p.status))
            .flat_map(Post::events)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_mode() {
        let ten = b"0123456789";
        assert_eq!(answer(&Mode::Take, None, ten), 200);
        assert_eq!(answer(&Mode::Status(503), None, ten), 503);
        assert_eq!(answer(&Mode::MaxBody(5), None, ten), 413);
        assert_eq!(answer(&Mode::MaxBody(50), None, ten), 200);
        let t = Mode::Token("t".into());
        assert_eq!(answer(&t, Some("Bearer t"), b"x"), 200);
        assert_eq!(answer(&t, Some("Bearer x"), b"x"), 401);
        assert_eq!(answer(&t, None, b"x"), 401);
        let m = Mode::RefuseMarked("POISON".into());
        assert_eq!(answer(&m, None, b"{\"a\":\"xPOISONx\"}\n"), 403);
        assert_eq!(answer(&m, None, b"{\"a\":\"POISO\"}\n"), 200);
    }
}
