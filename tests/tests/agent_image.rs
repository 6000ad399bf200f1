//! End-to-end: the agent image (`cargo xtask image`) imported into the real
//! containerd and run as a container with the settings of the shipped
//! DaemonSet (deploy/base): host PID and network namespaces, the listed
//! capabilities only, read-only root, the same host mounts, the ConfigMap's
//! agent.toml and the mTLS secret. It must see another container's exec,
//! attribute it to that container's image digest, and deliver it over
//! mTLS to a real collector.
mod common;

use std::{collections::BTreeSet, process::Command, time::Duration};

use common::{containers::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "image-test-node";
/// The collector's name in the ConfigMap (`tls_domain`).
const COLLECTOR_DNS: &str = "DNS:spyglass-collector.spyglass.svc";

/// Capabilities containerd gives a container by default (what
/// `drop: ["ALL"]` removes before `add`).
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Bit numbers of the capabilities the DaemonSet names.
fn cap_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("the DaemonSet adds {other}: teach this test its bit"),
    }
}

fn status_hex(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// The YAML documents of a manifest, as JSON (PyYAML in the test venv).
fn manifest(name: &str) -> Value {
    let path = root().join("deploy/base").join(name);
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The image `cargo xtask image` built, imported into `k8s.io`.
fn agent_image() -> String {
    let path = root().join("target/images/images.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask image`", path.display()));
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    let rec = all
        .iter()
        .find(|r| r["name"] == "spyglass-agent")
        .expect("agent image in images.json");
    ctr(&["images", "import", rec["archive"].as_str().unwrap()]);
    let reference = rec["ref"].as_str().unwrap();
    let listing = ctr(&["images", "ls"]);
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not imported: {listing}"));
    assert_eq!(line.split_whitespace().nth(2), rec["digest"].as_str());
    reference.to_owned()
}

/// `ctr run` flags for the DaemonSet's pod and container settings, with
/// host paths mapped by `host`. Returns the flags, the command and the
/// capabilities granted (those the DaemonSet adds that this machine's own
/// bounding set holds).
fn ctr_flags(
    ds: &Value,
    host: impl Fn(&str) -> String,
    bounding: u64,
) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut flags = Vec::new();
    assert_eq!(pod["hostPID"], true);
    flags.push(format!("--with-ns=pid:/proc/{}/ns/pid", std::process::id()));
    assert_eq!(pod["hostNetwork"], true);
    flags.push("--net-host".into());
    assert_eq!(sc["privileged"], false, "the DaemonSet is not privileged");
    if sc["readOnlyRootFilesystem"] == true {
        flags.push("--read-only".into());
    }
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    for cap in DEFAULT_CAPS {
        flags.push(format!("--cap-drop=CAP_{cap}"));
    }
    let mut granted = BTreeSet::new();
    for cap in strs(&sc["capabilities"]["add"]) {
        if bounding & (1 << cap_bit(&cap)) == 0 {
            eprintln!("note: CAP_{cap} is not in this machine's bounding set; not granted");
            continue;
        }
        flags.push(format!("--cap-add=CAP_{cap}"));
        granted.insert(cap);
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for {m}"));
        let src = if let Some(p) = v["hostPath"]["path"].as_str() {
            host(p)
        } else if v.get("configMap").is_some() {
            match m["subPath"].as_str() {
                Some(sub) => host(&format!("configmap:{sub}")),
                None => host(&format!("configmap-dir:{}", v["name"].as_str().unwrap())),
            }
        } else if v.get("secret").is_some() {
            host("secret")
        } else {
            panic!("unsupported volume {v}");
        };
        let mode = if m["readOnly"] == true { "ro" } else { "rw" };
        flags.push(format!(
            "--mount=type=bind,src={src},dst={},options=rbind:{mode}",
            m["mountPath"].as_str().unwrap()
        ));
    }
    let subst = |s: &str| s.replace("$(NODE_NAME)", NODE);
    for e in c["env"].as_array().unwrap() {
        let value = match e["name"].as_str().unwrap() {
            "NODE_NAME" => NODE.to_owned(),
            _ => subst(e["value"].as_str().unwrap()),
        };
        flags.push(format!("--env={}={value}", e["name"].as_str().unwrap()));
    }
    let args = strs(&c["args"]).iter().map(|a| subst(a)).collect();
    (flags, args, granted)
}

#[test]
fn agent_image_under_containerd_with_daemonset_settings_attributes_another_container() {
    require_root();
    let _g = serial();
    let reference = agent_image();
    let busybox = image("spyglass.test/busybox:1");
    let ds = manifest("agent-daemonset.yaml");
    let cm = manifest("agent-config.yaml");
    let dir = scratch("agent-image");

    // The secret: a CA, the collector's certificate for the name the
    // ConfigMap expects, and the agent's client certificate.
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    pki::make_ca(&tls, "ca");
    pki::make_cert(&tls, "ca", "server", "serverAuth", COLLECTOR_DNS);
    // The agent's client certificate names its node: the collector binds
    // node ids to certificates.
    pki::make_cert(&tls, "ca", "tls", "clientAuth", &format!("DNS:{NODE}"));
    std::fs::rename(tls.join("tls.pem"), tls.join("tls.crt")).unwrap();
    std::fs::copy(tls.join("ca.pem"), tls.join("ca.crt")).unwrap();
    let collector = pki::mtls_collector(&tls);
    // The ConfigMap's agent.toml, as shipped.
    let toml = cm["data"]["agent.toml"].as_str().unwrap();
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(
        dir.join("policy/policy.yaml"),
        cm["data"]["policy.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();

    let host = |p: &str| -> String {
        match p {
            "configmap:agent.toml" => dir.join("agent.toml").display().to_string(),
            "configmap-dir:policy" => dir.join("policy").display().to_string(),
            "secret" => tls.display().to_string(),
            // The spool is test-local, not the machine's /var/lib.
            "/var/lib/spyglass" => spool.display().to_string(),
            other => other.to_owned(),
        }
    };
    let bounding = status_hex(std::process::id(), "CapBnd:");
    let (flags, args, granted) = ctr_flags(&ds, host, bounding);
    let id = container_id("agent");
    let metrics = free_port();
    let mut cmd = Command::new("ctr");
    cmd.args(["-n", NS, "run", "--rm"])
        .args(&flags)
        .args([&reference, &id, "/usr/bin/spyglass-agent"])
        .args(&args)
        // Only what differs from a node: the collector's address (no
        // cluster DNS here; the certificate is still checked against the
        // ConfigMap's tls_domain), events on stdout too, and a free
        // metrics port on this shared host network.
        .args([
            "--collector",
            &format!("https://127.0.0.1:{}", collector.port),
            "--format",
            "json",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ]);
    let agent = Agent::spawn(cmd);
    let guard = Ctr { id: id.clone() };

    // It runs with exactly the capabilities granted, nothing more.
    let pid = guard.pid();
    let want = granted.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
    assert_eq!(
        status_hex(pid, "CapEff:"),
        want,
        "agent capabilities {granted:?}"
    );
    assert_eq!(status_hex(pid, "CapBnd:"), want);
    // allowPrivilegeEscalation: false is no_new_privs.
    let nnp = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["allowPrivilegeEscalation"]
        == false;
    assert_eq!(status_hex(pid, "NoNewPrivs:"), u64::from(nnp));
    // Readiness on the metrics endpoint: probes attached, containerd up,
    // the collector connected over mTLS.
    eventually("/readyz to say ready", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", metrics)).ok()?;
        (http_get(metrics, "/readyz").0 == 200).then_some(())
    });

    // Another container's exec, seen from inside the agent's container.
    let mark = marker("image");
    let other = Ctr::run(
        &busybox.reference,
        &container_id("observed"),
        &[],
        &["/bin/sleep", "60"],
    );
    other.exec("probe", &["/bin/echo", &mark]);
    // (Not the `ctr task exec` on the host that carries the mark too.)
    let is_probe = |e: &Value| {
        e["kind"] == "exec" && e.get("container").is_some() && argv_of(e).iter().any(|a| a == &mark)
    };
    let e = agent.wait_for("the other container's exec", WAIT, is_probe);
    assert_eq!(e["node"], NODE, "node name from the DaemonSet env: {e}");
    assert_eq!(e["container"]["id"], other.id.as_str(), "{e}");
    assert_eq!(e["container"]["image"]["ref"], busybox.reference.as_str());
    assert_eq!(e["container"]["image"]["digest"], busybox.digest.as_str());
    assert_eq!(e["process"]["exe"], "/bin/echo");
    // The same event at the collector, over the ConfigMap's mTLS settings.
    let at_collector = eventually("the exec at the collector", WAIT, || {
        lines(&collector.output).into_iter().find(|e| is_probe(e))
    });
    assert_eq!(at_collector["container"]["id"], other.id.as_str());
    assert_eq!(
        at_collector["container"]["image"]["digest"],
        busybox.digest.as_str()
    );
    // The shipped policy's findings reach the collector too.
    let root = eventually("a container.root finding at the collector", WAIT, || {
        lines(&collector.output).into_iter().find(|e| {
            e["kind"] == "finding"
                && e["finding"]["rule_id"] == "container.root"
                && e["container"]["id"] == other.id.as_str()
        })
    });
    assert_eq!(root["finding"]["severity"], "medium");
    drop(other);
    let events = agent.stop();
    // a clean stop always ends with a loss event; it must count nothing
    let losses: Vec<_> = events.iter().filter(|e| e["kind"] == "loss").collect();
    assert!(!losses.is_empty(), "no final loss event at the stop");
    for l in losses {
        let counts = l["loss"]["totals"].as_object().expect("loss totals");
        assert!(
            counts.values().all(|n| n.as_u64() == Some(0)),
            "loss reported: {l}"
        );
    }
}
