//! Real containers for the tests: `ctr` under containerd, and pods through
//! containerd's CRI API with the labels a kubelet sets. The images are the
//! ones `cargo xtask images` built and imported.
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    CreateContainerRequest, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use serde_json::Value;

use crate::{eventually, root};

pub const SOCKET: &str = "/run/containerd/containerd.sock";
pub const NS: &str = "k8s.io";

/// An image the xtask built: reference and the digests it recorded.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub reference: String,
    pub digest: String,
    pub index_digest: String,
    pub config_digest: String,
}

/// The recorded image `reference`, checked against containerd's own
/// listing (its top-level digest is the manifest, or the index).
pub fn image(reference: &str) -> TestImage {
    let path = root().join("target/test-images/images.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo xtask images` (or `cargo xtask test`)",
            path.display()
        )
    });
    let all: Vec<Value> = serde_json::from_str(&text).expect("images.json");
    let rec = all
        .iter()
        .find(|v| v["ref"] == reference)
        .unwrap_or_else(|| panic!("{reference} not in {}", path.display()));
    let s = |k: &str| rec[k].as_str().unwrap().to_owned();
    let img = TestImage {
        reference: reference.into(),
        digest: s("digest"),
        index_digest: s("index_digest"),
        config_digest: s("config_digest"),
    };
    let listing = ctr(&["images", "ls"]);
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("containerd has no image {reference}; run `cargo xtask images`"));
    let top = line.split_whitespace().nth(2).unwrap();
    let want = if img.index_digest.is_empty() {
        &img.digest
    } else {
        &img.index_digest
    };
    assert_eq!(top, want, "containerd's digest of {reference}");
    img
}

/// `ctr -n k8s.io ARGS`, its stdout; panics on failure.
pub fn ctr(args: &[&str]) -> String {
    let out = Command::new("ctr")
        .args(["-n", NS])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique container id for a test.
pub fn container_id(name: &str) -> String {
    crate::marker(name).replacen("spyglass-e2e-", "sg-", 1)
}

/// A container started with `ctr run -d`; killed and deleted on drop.
pub struct Ctr {
    pub id: String,
}

impl Ctr {
    /// `ctr run -d [flags] IMAGE ID CMD...`
    pub fn run(image: &str, id: &str, flags: &[&str], cmd: &[&str]) -> Ctr {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(cmd);
        ctr(&args);
        Ctr { id: id.into() }
    }

    /// `ctr task exec` a command in it; waits for it.
    pub fn exec(&self, exec_id: &str, cmd: &[&str]) -> String {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, &self.id];
        args.extend_from_slice(cmd);
        ctr(&args)
    }

    /// PID (on the host) of the container's init process.
    pub fn pid(&self) -> u32 {
        let out = ctr(&["task", "ls"]);
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(self.id.as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no task for {}: {out}", self.id))
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        remove(&self.id);
    }
}

/// Kill and delete a container (quietly; it may be gone).
pub fn remove(id: &str) {
    let q = |args: &[&str]| {
        let _ = Command::new("ctr")
            .args(["-n", NS])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    q(&["task", "kill", "-s", "SIGKILL", id]);
    for _ in 0..50 {
        let out = Command::new("ctr")
            .args(["-n", NS, "task", "ls"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !out.lines().any(|l| l.split_whitespace().next() == Some(id)) {
            break;
        }
        q(&["task", "delete", id]);
        std::thread::sleep(Duration::from_millis(50));
    }
    q(&["task", "delete", "-f", id]);
    q(&["containers", "delete", id]);
}

/// Is containerd answering?
pub fn containerd_up() -> bool {
    Command::new("ctr")
        .args(["--timeout", "2s", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn containerd_pids() -> Vec<i32> {
    let out = Command::new("pidof")
        .arg("containerd")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Stop containerd (SIGTERM; running containers' shims stay up).
pub fn containerd_stop() {
    for pid in containerd_pids() {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    eventually("containerd to stop", Duration::from_secs(20), || {
        containerd_pids().is_empty().then_some(())
    });
}

/// Start containerd detached, as `cargo xtask setup` does (with the
/// configuration it wrote).
pub fn containerd_start() {
    if containerd_up() {
        return;
    }
    let config = root().join("target/containerd.toml");
    assert!(
        config.exists(),
        "{} is missing: run `cargo xtask setup`",
        config.display()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root().join("target/containerd.log"))
        .expect("containerd log");
    let mut child = Command::new("setsid")
        .arg("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    // It outlives the test that started it; reap it if it ends first.
    std::thread::spawn(move || child.wait());
    eventually("containerd to answer", Duration::from_secs(30), || {
        containerd_up().then_some(())
    });
}

/// Field of a container in an event, as a string ("" when absent).
pub fn field<'a>(e: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = &e["container"];
    for p in path {
        v = &v[*p];
    }
    v
}

/// A pod (CRI sandbox, host network) with one container, created the way
/// a kubelet does, with its labels; torn down on drop.
pub struct Pod {
    rt: tokio::runtime::Runtime,
    pub sandbox_id: String,
    pub container_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub container_name: String,
}

/// What the pod's container runs and as whom.
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub container_name: &'a str,
    pub image: &'a str,
    pub command: &'a [&'a str],
    pub run_as_user: Option<i64>,
    pub privileged: bool,
}

async fn cri() -> RuntimeServiceClient<containerd_client::tonic::transport::Channel> {
    let ch = containerd_client::connect(SOCKET)
        .await
        .expect("connect to containerd's CRI socket");
    RuntimeServiceClient::new(ch)
}

impl Pod {
    pub fn start(spec: &PodSpec) -> Pod {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // a uid shaped like Kubernetes's (8-4-4-4-12 hex), unique per run
        let mixed = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            ^ u128::from(std::process::id());
        let h = format!("{mixed:032x}");
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let host_network = NamespaceOption {
            network: 2, // NODE: no CNI needed
            ..Default::default()
        };
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.into(),
                uid: uid.clone(),
                namespace: spec.namespace.into(),
                attempt: 0,
            }),
            hostname: String::new(), // host network: the node's
            labels: HashMap::from([("app".to_string(), spec.name.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), spec.name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                spec.namespace.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
            (
                "io.kubernetes.container.name".to_string(),
                spec.container_name.to_string(),
            ),
        ]);
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.container_name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: spec.image.into(),
                ..Default::default()
            }),
            command: spec
                .command
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            labels,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    run_as_user: spec.run_as_user.map(|value| Int64Value { value }),
                    privileged: spec.privileged,
                    namespace_options: Some(host_network),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (sandbox_id, container_id) = rt.block_on(async {
            let mut c = cri().await;
            let sandbox_id = c
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(sandbox.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .expect("CRI RunPodSandbox")
                .into_inner()
                .pod_sandbox_id;
            let container_id = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.clone(),
                    config: Some(container),
                    sandbox_config: Some(sandbox),
                })
                .await
                .expect("CRI CreateContainer")
                .into_inner()
                .container_id;
            c.start_container(StartContainerRequest {
                container_id: container_id.clone(),
            })
            .await
            .expect("CRI StartContainer");
            (sandbox_id, container_id)
        });
        Pod {
            rt,
            sandbox_id,
            container_id,
            name: spec.name.into(),
            namespace: spec.namespace.into(),
            uid,
            container_name: spec.container_name.into(),
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let id = self.sandbox_id.clone();
        self.rt.block_on(async {
            let mut c = cri().await;
            let _ = c
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = c
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        });
    }
}
