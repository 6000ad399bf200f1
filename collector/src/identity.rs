//! Which nodes a client certificate may publish for.
//!
//! With mutual TLS every stream comes with the client certificate that
//! opened its connection. A batch's `node_id` must be one of that
//! certificate's names (its DNS subject alternative names, or its common
//! name when it has no DNS SAN), or a node the `--node-identities` file
//! allows for one of those names. So an agent holding node A's
//! certificate cannot publish as node B.
//!
//! The file (`--node-identities`) has one certificate name a line,
//! followed by the node ids it may publish for:
//!
//! ```text
//! # certificate name     node ids
//! gateway.example.net    edge-1 edge-2
//! ```
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use spyglass_proto::limits::node_id_problem;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the node identities file {path} (--node-identities): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: {message}; each line is a certificate name followed by the node ids \
         it may publish for (--node-identities)"
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Extra node ids allowed per certificate name (`--node-identities`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeIdentities {
    allowed: HashMap<String, BTreeSet<String>>,
}

/// `text` escaped and cut to 64 characters, for errors and logs.
fn shown(text: &str) -> String {
    format!("{:?}", text.chars().take(64).collect::<String>())
}

impl NodeIdentities {
    /// Read and check the file: every line names a certificate and at
    /// least one node id, all shaped like node ids, no name twice.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| IdentityError::Syntax {
            path: path.to_owned(),
            line,
            message,
        })
    }

    /// Parse the file's text; the error is (line number, what is wrong).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut allowed: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            let nodes: Vec<&str> = words.collect();
            let fail = |m: String| Err((i + 1, m));
            if let Some(why) = node_id_problem(name) {
                return fail(format!("certificate name {} {why}", shown(name)));
            }
            if nodes.is_empty() {
                return fail(format!("certificate name {} has no node id", shown(name)));
            }
            if allowed.contains_key(name) {
                return fail(format!(
                    "certificate name {} is listed twice; list its node ids on one line",
                    shown(name)
                ));
            }
            for n in &nodes {
                if let Some(why) = node_id_problem(n) {
                    return fail(format!("node id {} {why}", shown(n)));
                }
            }
            allowed.insert(
                name.to_owned(),
                nodes.into_iter().map(str::to_owned).collect(),
            );
        }
        Ok(NodeIdentities { allowed })
    }

    /// Certificate names listed.
    pub fn len(&self) -> usize {
        self.allowed.len()
    }
}

/// The names of a certificate (DER): its DNS subject alternative names,
/// or its subject's common name when it has no DNS SAN.
pub fn cert_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = g {
                names.push((*d).to_owned());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_owned());
        }
    }
    Ok(names)
}

/// What one stream may publish as: bound to its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The certificate's first name, as shown in refusals.
    pub cert: String,
    nodes: BTreeSet<String>,
}

impl Binding {
    /// The binding of a connection's certificate chain (leaf first).
    pub fn for_peer(
        chain: Option<&[CertificateDer<'_>]>,
        ids: &NodeIdentities,
    ) -> Result<Self, Status> {
        let leaf = chain.and_then(<[_]>::first).ok_or_else(|| {
            Status::permission_denied(
                "no client certificate: node ids are bound to client certificates",
            )
        })?;
        let names = cert_names(leaf).map_err(Status::permission_denied)?;
        Ok(Self::of_names(&names, ids))
    }

    /// The binding of a certificate with `names`.
    pub fn of_names(names: &[String], ids: &NodeIdentities) -> Self {
        let mut nodes: BTreeSet<String> = names.iter().cloned().collect();
        for n in names {
            if let Some(more) = ids.allowed.get(n) {
                nodes.extend(more.iter().cloned());
            }
        }
        Binding {
            cert: names.first().cloned().unwrap_or_default(),
            nodes,
        }
    }

    /// Whether the stream may publish for `node`; PERMISSION_DENIED
    /// naming both otherwise.
    pub fn check(&self, node: &str) -> Result<(), Status> {
        if self.nodes.contains(node) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "client certificate {} may not publish for node {}: a batch's node_id must be a \
             DNS SAN of the certificate (its CN without SANs) or allowed for it by \
             --node-identities",
            shown(&self.cert),
            shown(node)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_maps_names_to_nodes_and_refuses_what_is_not_one() {
        let ids = NodeIdentities::parse(
            "# comment\n\ngateway.example  edge-1 edge-2 # trailing\nother x\n",
        )
        .unwrap();
        assert_eq!(ids.len(), 2);
        let b = Binding::of_names(&["gateway.example".into()], &ids);
        assert!(b.check("gateway.example").is_ok());
        assert!(b.check("edge-2").is_ok());
        let e = b.check("x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().starts_with(
                "client certificate \"gateway.example\" may not publish for node \"x\""
            ),
            "{}",
            e.message()
        );
        for (text, line, want) in [
            ("a\n", 1, "certificate name \"a\" has no node id"),
            ("a b\n\na c\n", 3, "listed twice"),
            ("a b/c\n", 1, "node id \"b/c\" holds '/'"),
            ("*.x b\n", 1, "certificate name \"*.x\" holds '*'"),
        ] {
            let (l, m) = NodeIdentities::parse(text).unwrap_err();
            assert_eq!(l, line, "{text}");
            assert!(m.contains(want), "{text}: {m}");
        }
    }

    #[test]
    fn a_refused_node_is_shown_escaped_and_cut() {
        let b = Binding::of_names(&["node-a".into()], &NodeIdentities::default());
        let e = b.check(&format!("evil\n{}", "y".repeat(300))).unwrap_err();
        assert!(!e.message().contains('\n'));
        assert!(e
            .message()
            .contains(&format!("\"evil\\n{}\"", "y".repeat(59))));
    }
}
