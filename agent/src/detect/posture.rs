//! Once-per-container checks on the OCI spec posture.
use super::hit::Hit;
use crate::{
    container::meta::ContainerMeta,
    policy::{Policy, RuleId},
};

/// Root, privileged, dangerous capabilities and host namespaces.
pub fn check(p: &Policy, meta: &ContainerMeta) -> Vec<Hit> {
    let Some(pos) = &meta.posture else {
        return Vec::new();
    };
    let mut hits = Vec::new();
    let img = &meta.image.reference;
    let name = &meta.name;
    if pos.uid == 0 && !pos.user_namespace {
        hits.push(Hit::new(
            RuleId::ContainerRoot,
            "",
            format!(
                "container {name} (image {img}) runs as root (uid 0 on the host, no user namespace)"
            ),
        ));
    }
    if pos.privileged {
        hits.push(Hit::new(
            RuleId::ContainerPrivileged,
            "",
            format!("container {name} (image {img}) is privileged"),
        ));
    }
    let dangerous: Vec<&str> = pos
        .capabilities
        .iter()
        .filter(|c| p.settings.dangerous_capabilities.contains(c))
        .map(String::as_str)
        .collect();
    if !dangerous.is_empty() && !pos.privileged {
        hits.push(Hit::new(
            RuleId::ContainerCapabilities,
            "",
            format!(
                "container {name} (image {img}) holds {}",
                dangerous.join(", ")
            ),
        ));
    }
    let shared: Vec<&str> = [
        (pos.host_network, "network"),
        (pos.host_pid, "pid"),
        (pos.host_ipc, "ipc"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if !shared.is_empty() {
        hits.push(Hit::new(
            RuleId::ContainerHostNamespace,
            "",
            format!(
                "container {name} (image {img}) shares the host's {} namespace",
                shared.join(", ")
            ),
        ));
    }
    hits
}
