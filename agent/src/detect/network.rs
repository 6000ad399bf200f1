//! Checks on listening sockets and outbound connections: host-network
//! and wildcard listeners, ports the image does not declare, connects
//! denied by policy, listed destinations, internet egress, and ports and
//! destinations new for the image's baseline.
use std::net::IpAddr;

use super::{
    baseline::{Baselines, Seen, What},
    hit::{Ctx, Hit},
    unix_now,
};
use crate::{
    event::{ConnectOutcome, Endpoint, Outcome},
    policy::{addr, info_of, Action, RuleId},
};

/// Every hit of one listen event.
pub fn listen(c: &Ctx<'_>, baselines: &mut Baselines) -> Vec<Hit> {
    let Some(n) = &c.ev.network else {
        return Vec::new();
    };
    let (meta, mut hits) = (c.meta, Vec::new());
    let port = format!("{}/{}", n.local.port, n.protocol);
    let host_net = meta.posture.as_ref().is_some_and(|p| p.host_network);
    if host_net {
        hits.push(Hit::new(
            RuleId::PortHostNetwork,
            port.clone(),
            format!(
                "container {} listens on {}:{} in the host network namespace",
                meta.name, n.local.addr, port
            ),
        ));
    } else if n.wildcard == Some(true) {
        hits.push(Hit::new(
            RuleId::PortWildcard,
            port.clone(),
            format!(
                "container {} listens on {}:{} (every interface)",
                meta.name, n.local.addr, port
            ),
        ));
    }
    if !n.local.addr.is_loopback() && !meta.image.exposed_ports.contains(&port) {
        hits.push(Hit::new(
            RuleId::PortUndeclared,
            port.clone(),
            format!(
                "container {} listens on {port}, which image {} does not declare",
                meta.name, meta.image.reference
            ),
        ));
    }
    if baselines.observe(c.digest, What::Port, &port, unix_now()) == Seen::New {
        let summary = format!(
            "container {} listens on {port}: new for image {}",
            meta.name, meta.image.reference
        );
        hits.push(Hit::new(RuleId::BaselinePort, port, summary));
    }
    hits
}

/// Every hit of one connect event.
pub fn connect(c: &Ctx<'_>, baselines: &mut Baselines) -> Vec<Hit> {
    let Some((n, remote)) =
        c.ev.network
            .as_ref()
            .and_then(|n| Some((n, n.remote.as_ref()?)))
    else {
        return Vec::new();
    };
    if n.outcome == Some(ConnectOutcome::Denied) {
        return vec![denied(c, remote)];
    }
    let mut hits: Vec<Hit> = listed(c, remote).into_iter().collect();
    hits.extend(egress(c, remote, baselines));
    hits
}

fn dest(remote: &Endpoint) -> String {
    format!("{}:{}", remote.addr, remote.port)
}

/// The kernel refused the connect: which rule did, and for a custom rule
/// the entry that covers the destination.
fn denied(c: &Ctx<'_>, remote: &Endpoint) -> Hit {
    let ip = remote.addr;
    let rule = c
        .plan
        .and_then(|pl| pl.connect_rule(ip))
        .unwrap_or(RuleId::NetworkConnect);
    let entry = c
        .policy
        .custom(RuleId::NetworkConnect, c.meta)
        .find(|e| e.action == Action::DenyConnect && e.destinations.iter().any(|d| d.contains(ip)))
        .filter(|_| rule == RuleId::NetworkConnect)
        .map(|e| (e.severity.unwrap_or(info_of(rule).severity), e.action));
    let dest = dest(remote);
    let summary = format!(
        "connection to {dest} from container {} refused by policy",
        c.meta.name
    );
    Hit {
        outcome: Some(Outcome::Denied),
        entry,
        ..Hit::new(rule, dest, summary)
    }
}

/// A custom `network.connect` entry lists the destination.
fn listed(c: &Ctx<'_>, remote: &Endpoint) -> Option<Hit> {
    let ip = remote.addr;
    let e = c.policy.custom(RuleId::NetworkConnect, c.meta).find(|e| {
        e.destinations.iter().any(|d| d.contains(ip))
            && !e.allow.destinations.iter().any(|d| d.contains(ip))
    })?;
    let sev = e
        .severity
        .unwrap_or(info_of(RuleId::NetworkConnect).severity);
    let dest = dest(remote);
    let summary = format!("container {} connects to {dest}", c.meta.name);
    Some(Hit {
        entry: Some((sev, e.action)),
        ..Hit::new(RuleId::NetworkConnect, dest, summary)
    })
}

/// An internet destination, and whether it is new for the image.
fn egress(c: &Ctx<'_>, remote: &Endpoint, baselines: &mut Baselines) -> Vec<Hit> {
    let ip: IpAddr = remote.addr;
    if !addr::is_internet(ip, &c.policy.settings.egress_allow) {
        return Vec::new();
    }
    let (name, dest) = (&c.meta.name, dest(remote));
    let mut hits = vec![Hit::new(
        RuleId::InternetEgress,
        ip.to_string(),
        format!("container {name} connects to internet address {dest}"),
    )];
    if baselines.observe(c.digest, What::Destination, &ip.to_string(), unix_now()) == Seen::New {
        hits.push(Hit::new(
            RuleId::BaselineDestination,
            ip.to_string(),
            format!(
                "container {name} connects to {dest}: new for image {}",
                c.meta.image.reference
            ),
        ));
    }
    hits
}
