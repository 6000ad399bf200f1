//! How many streams the collector holds open: in all, per peer IP
//! address and per client certificate. An agent keeps one stream open
//! (two for a moment while it reconnects); a client opening more is
//! refused with RESOURCE_EXHAUSTED naming the flag to raise, so no one
//! client can take every task, buffer and socket of the collector.
use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tonic::Status;

/// The limits (`--max-streams`, `--max-streams-per-ip`,
/// `--max-streams-per-cert`).
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub total: usize,
    pub per_ip: usize,
    pub per_cert: usize,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_cert: HashMap<String, usize>,
    /// Streams carrying each node's events (two for a moment while an
    /// agent reconnects): a node is connected while it has one.
    per_node: HashMap<String, usize>,
}

/// The open streams, counted.
#[derive(Debug)]
pub struct Streams {
    limits: StreamLimits,
    open: Arc<Mutex<Open>>,
}

/// One open stream; dropping it (the stream ended) frees its place.
#[derive(Debug)]
pub struct Permit {
    open: Arc<Mutex<Open>>,
    ip: Option<IpAddr>,
    cert: Option<String>,
    node: Option<String>,
}

impl Permit {
    /// The stream now carries `node`'s events.
    pub fn bind_node(&mut self, node: &str) {
        let mut open = self.open.lock().expect("streams lock");
        *open.per_node.entry(node.to_owned()).or_default() += 1;
        self.node = Some(node.to_owned());
    }

    /// The stream ended: whether it was its node's last one (the node is
    /// disconnected only then, not when an older stream ends after a
    /// reconnect already opened a new one).
    pub fn release_node(&mut self) -> bool {
        let Some(node) = self.node.take() else {
            return false;
        };
        let mut open = self.open.lock().expect("streams lock");
        decrement(&mut open.per_node, &node);
        !open.per_node.contains_key(&node)
    }
}

fn decrement<K: Eq + Hash>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("streams lock");
        open.total -= 1;
        if let Some(ip) = &self.ip {
            decrement(&mut open.per_ip, ip);
        }
        if let Some(cert) = &self.cert {
            decrement(&mut open.per_cert, cert);
        }
        if let Some(node) = &self.node {
            decrement(&mut open.per_node, node);
        }
    }
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams {
            limits,
            open: Arc::default(),
        }
    }

    /// Streams open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.lock().expect("streams lock").total
    }

    /// Admit a new stream from `ip` with client certificate `cert`, or
    /// refuse it (RESOURCE_EXHAUSTED naming the limit and its flag).
    pub fn admit(&self, ip: Option<IpAddr>, cert: Option<&str>) -> Result<Permit, Status> {
        let mut open = self.open.lock().expect("streams lock");
        let l = self.limits;
        let full = |what: String, n: usize, flag: &str| {
            Err(Status::resource_exhausted(format!(
                "{what} already has {n} streams open, the most allowed ({flag}); \
                 close one or raise {flag}"
            )))
        };
        if open.total >= l.total {
            return full("the collector".into(), open.total, "--max-streams");
        }
        if let Some(ip) = ip {
            let n = open.per_ip.get(&ip).copied().unwrap_or(0);
            if n >= l.per_ip {
                return full(format!("peer address {ip}"), n, "--max-streams-per-ip");
            }
        }
        if let Some(cert) = cert {
            let n = open.per_cert.get(cert).copied().unwrap_or(0);
            if n >= l.per_cert {
                let shown: String = cert.chars().take(64).collect();
                return full(
                    format!("client certificate {shown:?}"),
                    n,
                    "--max-streams-per-cert",
                );
            }
        }
        open.total += 1;
        if let Some(ip) = ip {
            *open.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(cert) = cert {
            *open.per_cert.entry(cert.to_owned()).or_default() += 1;
        }
        Ok(Permit {
            open: self.open.clone(),
            ip,
            cert: cert.map(str::to_owned),
            node: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_ip_per_cert_and_in_all() {
        let s = Streams::new(StreamLimits {
            total: 4,
            per_ip: 2,
            per_cert: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = s.admit(Some(a), None).unwrap();
        let p2 = s.admit(Some(a), Some("node-a")).unwrap();
        let e = s.admit(Some(a), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "peer address 10.0.0.1 already has 2 streams open, the most allowed \
             (--max-streams-per-ip); close one or raise --max-streams-per-ip"
        );
        let e = s.admit(Some(b), Some("node-a")).unwrap_err();
        assert!(e
            .message()
            .contains("client certificate \"node-a\" already has 1"));
        drop(p1);
        let p3 = s.admit(Some(a), None).unwrap();
        let p4 = s.admit(Some(b), Some("node-b")).unwrap();
        let p5 = s.admit(Some(b), None).unwrap();
        assert_eq!(s.open(), 4);
        let e = s.admit(None, None).unwrap_err();
        assert!(e.message().contains("(--max-streams)"), "{}", e.message());
        drop((p3, p4, p5, p2));
        assert_eq!(s.open(), 0);
        assert!(s.open.lock().unwrap().per_ip.is_empty());
        assert!(s.open.lock().unwrap().per_cert.is_empty());
    }

    #[test]
    fn a_node_is_disconnected_only_when_its_last_stream_ends() {
        let s = Streams::new(StreamLimits {
            total: 8,
            per_ip: 8,
            per_cert: 8,
        });
        let (mut old, mut new) = (s.admit(None, None).unwrap(), s.admit(None, None).unwrap());
        old.bind_node("n1");
        // the agent reconnected before the old stream ended
        new.bind_node("n1");
        assert!(!old.release_node(), "the new stream still carries n1");
        assert!(!old.release_node(), "released once");
        assert!(new.release_node());
        let mut p = s.admit(None, None).unwrap();
        p.bind_node("n2");
        drop(p);
        assert!(s.open.lock().unwrap().per_node.is_empty());
    }
}
