//! What the agent knows about a container: names, image, pod, posture.
//! Built from containerd's records by pure functions (OCI runtime spec,
//! image index and manifest JSON, CRI labels), table-tested here.
use std::collections::BTreeMap;

use serde::Deserialize;

pub use spyglass_proto::model::{ContainerMeta, Image, ImageLineage, Pod, Posture, Seccomp};

/// Labels a kubelet sets on CRI containers.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Pod from CRI labels; None when the container is not in a pod.
pub fn pod_from_labels(labels: &BTreeMap<String, String>) -> Option<Pod> {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let pod = Pod {
        name: get(LABEL_POD_NAME),
        namespace: get(LABEL_POD_NAMESPACE),
        uid: get(LABEL_POD_UID),
        labels: BTreeMap::new(),
    };
    (!pod.name.is_empty() || !pod.uid.is_empty()).then_some(pod)
}

/// Is the namespace at `path` (`/proc/PID/ns/...`) the host's: the same as
/// pid 1's, or, where pid 1's cannot be read (no CAP_SYS_PTRACE), the
/// agent's own (it runs with the host's PID and network namespaces).
pub fn is_host_namespace(kind: &str, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let file = match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    };
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let host = id(&format!("/proc/1/ns/{file}")).or_else(|| id(&format!("/proc/self/ns/{file}")));
    match (id(path), host) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Display name of a container from its labels.
pub fn name_from_labels(id: &str, labels: &BTreeMap<String, String>) -> String {
    [LABEL_CONTAINER_NAME, "nerdctl/name"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

// The parts of the OCI runtime spec the posture needs.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Spec {
    process: SpecProcess,
    root: SpecRoot,
    linux: SpecLinux,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpecProcess {
    args: Vec<String>,
    user: SpecUser,
    capabilities: SpecCaps,
    no_new_privileges: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpecUser {
    uid: u32,
    gid: u32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpecCaps {
    effective: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpecRoot {
    readonly: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpecLinux {
    namespaces: Vec<SpecNamespace>,
    uid_mappings: Vec<serde_json::Value>,
    seccomp: Option<serde_json::Value>,
    masked_paths: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpecNamespace {
    #[serde(rename = "type")]
    kind: String,
    path: String,
}

/// Posture from an OCI runtime spec (JSON). A namespace is the host's
/// when the spec has none of that type, or joins one by path (CRI joins
/// its pod sandbox's) that `is_host(kind, path)` says is the host's.
pub fn posture_from_spec(
    json: &[u8],
    is_host: impl Fn(&str, &str) -> bool,
) -> Result<Posture, serde_json::Error> {
    let spec: Spec = serde_json::from_slice(json)?;
    let own = |kind: &str| {
        spec.linux
            .namespaces
            .iter()
            .any(|n| n.kind == kind && (n.path.is_empty() || !is_host(kind, &n.path)))
    };
    let mut caps = spec.process.capabilities.effective;
    caps.sort();
    caps.dedup();
    let sys_admin = caps.iter().any(|c| c == "CAP_SYS_ADMIN");
    Ok(Posture {
        uid: spec.process.user.uid,
        gid: spec.process.user.gid,
        user_namespace: own("user") && !spec.linux.uid_mappings.is_empty(),
        privileged: sys_admin && spec.linux.masked_paths.is_empty(),
        capabilities: caps,
        host_network: !own("network"),
        host_pid: !own("pid"),
        host_ipc: !own("ipc"),
        read_only_rootfs: spec.root.readonly,
        no_new_privileges: spec.process.no_new_privileges,
        seccomp: if spec.linux.seccomp.is_some() {
            Seccomp::Filtered
        } else {
            Seccomp::Unconfined
        },
    })
}

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Is this descriptor media type an index (manifest list)?
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Platform {
    architecture: String,
    os: String,
    variant: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Manifest {
    config: Descriptor,
}

/// The GOARCH name of this machine (what image platforms use).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The manifest digest for `os/arch` in an image index.
pub fn manifest_for_platform(index_json: &[u8], os: &str, arch: &str) -> Option<String> {
    let index: Index = serde_json::from_slice(index_json).ok()?;
    let matches = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    };
    // Prefer no variant or the first variant listed (arm64/v8).
    let mut candidates: Vec<&Descriptor> = index.manifests.iter().filter(matches).collect();
    candidates.sort_by_key(|d| d.platform.as_ref().is_some_and(|p| !p.variant.is_empty()));
    candidates.first().map(|d| d.digest.clone())
}

/// The CRI sandbox a container belongs to (OCI spec annotation
/// `io.kubernetes.cri.sandbox-id`), for a CRI container.
pub fn sandbox_of_spec(json: &[u8]) -> Option<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Annotated {
        annotations: BTreeMap<String, String>,
    }
    let a: Annotated = serde_json::from_slice(json).ok()?;
    a.annotations
        .get("io.kubernetes.cri.sandbox-id")
        .filter(|s| !s.is_empty())
        .cloned()
}

/// At most [`spyglass_proto::limits::MAX_AGENT_LABELS`] of `labels`, the
/// first by key; a warning names `id` when some are left out.
pub fn bounded_labels(labels: BTreeMap<String, String>, id: &str) -> BTreeMap<String, String> {
    let most = spyglass_proto::limits::MAX_AGENT_LABELS;
    if labels.len() <= most {
        return labels;
    }
    tracing::warn!(
        container = id,
        labels = labels.len(),
        kept = most,
        "container or pod has more labels than the agent reports; the first by key are kept"
    );
    labels.into_iter().take(most).collect()
}

/// A pod's own labels from its sandbox container's labels (without the
/// runtime's and kubelet's bookkeeping keys).
pub fn pod_labels_of_sandbox(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("io.cri-containerd.") && !k.starts_with("io.kubernetes.pod.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The process an OCI runtime spec starts (`process.args`).
pub fn args_from_spec(json: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Spec>(json)
        .map(|s| s.process.args)
        .unwrap_or_default()
}

/// Ports an image config declares (`config.ExposedPorts` keys), sorted.
pub fn exposed_ports_of_config(config_json: &[u8]) -> Vec<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Config {
        config: Inner,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "ExposedPorts")]
        exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    }
    serde_json::from_slice::<Config>(config_json)
        .ok()
        .and_then(|c| c.config.exposed_ports)
        .map(|p| p.into_keys().collect())
        .unwrap_or_default()
}

/// Most layers of an image reported (Docker refuses more than 127).
pub const MAX_LAYERS: usize = 256;
/// Longest base image name reported.
const MAX_BASE_NAME: usize = 512;

/// A `sha256:` digest of 64 lower-case hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The base image an index's or manifest's annotations name
/// (`org.opencontainers.image.base.digest` and `.name`): each empty when
/// absent or malformed.
pub fn base_of(json: &[u8]) -> (String, String) {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Annotated {
        annotations: BTreeMap<String, String>,
    }
    let a = serde_json::from_slice::<Annotated>(json).unwrap_or_default();
    let digest = a
        .annotations
        .get("org.opencontainers.image.base.digest")
        .filter(|d| is_digest(d))
        .cloned()
        .unwrap_or_default();
    let name = a
        .annotations
        .get("org.opencontainers.image.base.name")
        .filter(|n| n.len() <= MAX_BASE_NAME && !n.chars().any(char::is_control))
        .cloned()
        .unwrap_or_default();
    (digest, name)
}

/// An image config's `rootfs.diff_ids`, base first; empty when any is
/// not a digest (a config a reader cannot trust) or there are over
/// [`MAX_LAYERS`].
pub fn diff_ids_of_config(config_json: &[u8]) -> Vec<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Config {
        rootfs: Rootfs,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Rootfs {
        diff_ids: Vec<String>,
    }
    let ids = serde_json::from_slice::<Config>(config_json)
        .map(|c| c.rootfs.diff_ids)
        .unwrap_or_default();
    if ids.len() > MAX_LAYERS || !ids.iter().all(|d| is_digest(d)) {
        return Vec::new();
    }
    ids
}

/// The config digest of an image manifest.
pub fn config_of_manifest(manifest_json: &[u8]) -> Option<String> {
    let m: Manifest = serde_json::from_slice(manifest_json).ok()?;
    (!m.config.digest.is_empty()).then_some(m.config.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_to_the_first_by_key() {
        let most = spyglass_proto::limits::MAX_AGENT_LABELS;
        let many: BTreeMap<String, String> = (0..most + 5)
            .map(|i| (format!("k{i:05}"), "v".to_owned()))
            .collect();
        let kept = bounded_labels(many.clone(), "c1");
        assert_eq!(kept.len(), most);
        assert_eq!(kept.keys().next().map(String::as_str), Some("k00000"));
        assert!(!kept.contains_key(&format!("k{:05}", most)));
        let few: BTreeMap<String, String> = many.into_iter().take(3).collect();
        assert_eq!(bounded_labels(few.clone(), "c1"), few);
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_and_name_from_cri_labels() {
        let l = labels(&[
            (LABEL_POD_NAME, "web-1"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_UID, "u-1"),
            (LABEL_CONTAINER_NAME, "nginx"),
        ]);
        let pod = pod_from_labels(&l).unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
            ("web-1", "shop", "u-1")
        );
        assert_eq!(name_from_labels("abc", &l), "nginx");
        assert_eq!(pod_from_labels(&labels(&[("x", "y")])), None);
        assert_eq!(
            name_from_labels("abc", &labels(&[("nerdctl/name", "n")])),
            "n"
        );
        assert_eq!(name_from_labels("abc", &BTreeMap::new()), "abc");
    }

    fn never(_: &str, _: &str) -> bool {
        false
    }

    #[test]
    fn joined_namespaces_are_host_when_the_path_is_the_hosts() {
        let spec = br#"{"linux":{"namespaces":[{"type":"network","path":"/proc/7/ns/net"},
                        {"type":"pid"},{"type":"ipc","path":"/proc/7/ns/ipc"}]}}"#;
        let p = posture_from_spec(spec, |kind, path| {
            kind == "network" && path == "/proc/7/ns/net"
        })
        .unwrap();
        assert!(p.host_network && !p.host_pid && !p.host_ipc);
        let p = posture_from_spec(spec, never).unwrap();
        assert!(!p.host_network);
    }

    const CAPS3: &str = r#"["CAP_CHOWN","CAP_NET_BIND_SERVICE","CAP_KILL"]"#;

    #[test]
    fn posture_of_a_default_container() {
        let spec = format!(
            r#"{{"process":{{"user":{{"uid":1000,"gid":1001}},"capabilities":{{"effective":{CAPS3},"bounding":{CAPS3}}},"noNewPrivileges":true}},
               "root":{{"path":"rootfs","readonly":true}},
               "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}},{{"type":"network"}}],
                        "seccomp":{{"defaultAction":"SCMP_ACT_ERRNO"}},"maskedPaths":["/proc/kcore"]}}}}"#
        );
        let p = posture_from_spec(spec.as_bytes(), never).unwrap();
        assert_eq!((p.uid, p.gid), (1000, 1001));
        assert!(!p.privileged && !p.user_namespace);
        assert!(!p.host_network && !p.host_pid && !p.host_ipc);
        assert!(p.read_only_rootfs && p.no_new_privileges);
        assert_eq!(p.seccomp, Seccomp::Filtered);
        assert_eq!(
            p.capabilities,
            ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
    }

    #[test]
    fn posture_of_a_privileged_host_network_container() {
        let mut all: Vec<String> = (0..41).map(|i| format!("\"CAP_{i}\"")).collect();
        all[21] = "\"CAP_SYS_ADMIN\"".into();
        let all = format!("[{}]", all.join(","));
        let spec = format!(
            r#"{{"process":{{"user":{{"uid":0,"gid":0}},"capabilities":{{"effective":{all},"bounding":{all}}}}},
               "linux":{{"namespaces":[{{"type":"mount"}},{{"type":"user"}}],"uidMappings":[{{"containerID":0,"hostID":100000,"size":65536}}]}}}}"#
        );
        let p = posture_from_spec(spec.as_bytes(), never).unwrap();
        assert!(p.privileged && p.user_namespace);
        assert!(p.host_network && p.host_pid && p.host_ipc);
        assert_eq!(p.seccomp, Seccomp::Unconfined);
        // all capabilities but masked paths kept: not privileged
        let masked = spec.replace(
            r#""namespaces""#,
            r#""maskedPaths":["/proc/kcore"],"namespaces""#,
        );
        assert!(
            !posture_from_spec(masked.as_bytes(), never)
                .unwrap()
                .privileged
        );
        // no masked paths but no CAP_SYS_ADMIN either: not privileged
        let weak = spec.replace("CAP_SYS_ADMIN", "CAP_X");
        assert!(
            !posture_from_spec(weak.as_bytes(), never)
                .unwrap()
                .privileged
        );
        assert!(posture_from_spec(b"not json", never).is_err());
    }

    #[test]
    fn index_and_manifest_digests() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:att","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        assert_eq!(
            manifest_for_platform(index, "linux", "amd64").as_deref(),
            Some("sha256:amd")
        );
        assert_eq!(
            manifest_for_platform(index, "linux", "arm64").as_deref(),
            Some("sha256:arm")
        );
        assert_eq!(manifest_for_platform(index, "linux", "s390x"), None);
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cfg","size":2},"layers":[]}"#;
        assert_eq!(config_of_manifest(manifest).as_deref(), Some("sha256:cfg"));
        assert_eq!(config_of_manifest(b"{}"), None);
        let config = br#"{"config":{"ExposedPorts":{"8080/tcp":{},"53/udp":{}}}}"#;
        assert_eq!(exposed_ports_of_config(config), ["53/udp", "8080/tcp"]);
        assert!(exposed_ports_of_config(br#"{"config":{}}"#).is_empty());
        assert!(exposed_ports_of_config(b"garbage").is_empty());
    }

    #[test]
    fn lineage_from_annotations_and_the_config() {
        let base = format!("sha256:{}", "a".repeat(64));
        let manifest = format!(
            r#"{{"annotations":{{"org.opencontainers.image.base.digest":"{base}",
                "org.opencontainers.image.base.name":"docker.io/library/debian:bookworm"}}}}"#
        );
        assert_eq!(
            base_of(manifest.as_bytes()),
            (base.clone(), "docker.io/library/debian:bookworm".to_owned())
        );
        // a malformed digest or a name with control characters is dropped
        let bad = r#"{"annotations":{"org.opencontainers.image.base.digest":"sha256:XYZ",
            "org.opencontainers.image.base.name":"a\u001b[2Jb"}}"#;
        assert_eq!(base_of(bad.as_bytes()), (String::new(), String::new()));
        assert_eq!(base_of(b"garbage"), (String::new(), String::new()));
        let one = format!("sha256:{}", "1".repeat(64));
        let two = format!("sha256:{}", "2".repeat(64));
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{one}","{two}"]}}}}"#);
        assert_eq!(diff_ids_of_config(config.as_bytes()), [one.clone(), two]);
        let upper = format!(
            r#"{{"rootfs":{{"diff_ids":["{one}","sha256:{}"]}}}}"#,
            "A".repeat(64)
        );
        assert!(diff_ids_of_config(upper.as_bytes()).is_empty());
        let many: Vec<String> = (0..=MAX_LAYERS).map(|_| one.clone()).collect();
        let config = serde_json::json!({"rootfs": {"diff_ids": many}}).to_string();
        assert!(diff_ids_of_config(config.as_bytes()).is_empty());
        let spec = br#"{"process":{"args":["/bin/sh","-c","x"]}}"#;
        assert_eq!(args_from_spec(spec), ["/bin/sh", "-c", "x"]);
        assert!(is_index(MEDIA_OCI_INDEX) && is_index(MEDIA_DOCKER_LIST));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
    }
}
