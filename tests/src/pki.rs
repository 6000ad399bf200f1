//! Test certificates made with openssl: a CA and certificates it signs.
use std::{path::Path, process::Command};

use crate::{free_port, Collector};

/// Names a loopback server certificate carries.
pub const LOOPBACK: &str = "DNS:localhost,IP:127.0.0.1";

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA (EC P-256): `NAME.key`, `NAME.pem` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// `san` is the subjectAltName value, e.g. `DNS:localhost,IP:127.0.0.1`;
/// empty for a certificate without one (named by its CN, `name`).
pub fn make_cert(dir: &Path, ca: &str, name: &str, usage: &str, san: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let san = if san.is_empty() {
        String::new()
    } else {
        format!("subjectAltName={san}\n")
    };
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("{san}extendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// A collector requiring client certificates signed by `dir/ca.pem`
/// (make_ca + make_cert "server" first). It binds node ids to client
/// certificates: a client publishes only for its certificate's DNS SANs
/// (its CN without SANs).
pub fn mtls_collector(dir: &Path) -> Collector {
    mtls_collector_with(dir, &[])
}

/// The command-line flags of [`mtls_collector`].
pub fn mtls_flags(dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    vec![
        "--tls-cert".into(),
        p("server.pem"),
        "--tls-key".into(),
        p("server.key"),
        "--client-ca".into(),
        p("ca.pem"),
    ]
}

/// [`mtls_collector`] with `extra` flags.
pub fn mtls_collector_with(dir: &Path, extra: &[&str]) -> Collector {
    let mut args = mtls_flags(dir);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Collector::start(free_port(), &dir.join("out.jsonl"), &args)
}
