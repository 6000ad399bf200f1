//! The fleet view's harness: a collector with its store and read API,
//! the API's answers, and the `spyglass` CLI against it.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` runs another collector binary (an older
//! build, to see these tests fail there).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{bin, eventually, free_port, http_get_with, Collector};

pub fn collector_bin() -> PathBuf {
    std::env::var_os("SPYGLASS_E2E_COLLECTOR")
        .map_or_else(|| bin("spyglass-collector"), PathBuf::from)
}

/// Start the collector with `extra` flags; fails at once if it exits.
pub fn start_collector(dir: &Path, extra: &[&str]) -> Collector {
    let port = free_port();
    let output = dir.join("out.jsonl");
    let mut child = Command::new(collector_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--output")
        .arg(&output)
        .args(extra)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start collector");
    eventually("the collector to listen", Duration::from_secs(20), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the collector exited at start ({st}) with {extra:?}");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Collector {
        child,
        port,
        output,
    }
}

/// GET on the API: status and body (JSON when it parses).
pub fn api_get(port: u16, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (status, body) = http_get_with(port, path, &auth);
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

/// `spyglass ARGS` against the collector's API: exit code, stdout, stderr.
pub fn spyglass(api: u16, token_file: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("spyglass"))
        .args(["--collector", &format!("http://127.0.0.1:{api}")])
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .expect("run spyglass");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `method` on the API with `body` (PUT and DELETE of reports): status
/// and body (JSON when it parses).
pub fn api_send(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (status, body) =
        crate::http_request(port, method, path, &auth, body, Duration::from_secs(30));
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}
