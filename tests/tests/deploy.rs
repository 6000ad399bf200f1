//! deploy/: the Kubernetes manifests validate against the Kubernetes
//! schemas (kubernetes-validate, strict, offline), the kustomization lists
//! them all, the agent keeps least privilege, and the agent parses the
//! configuration the ConfigMap ships; the overlays docs/deploy.md shows
//! build with kustomize against the base and patch what they say.
use std::{path::Path, process::Command};

use spyglass_e2e::*;

const KUBERNETES: &str = "1.30.0";

fn check(dir: &Path, toml_out: &Path) -> (bool, String) {
    let out = Command::new(python())
        .arg(root().join("tests/deploy/check.py"))
        .arg(dir)
        .arg(KUBERNETES)
        .env("AGENT_TOML_OUT", toml_out)
        .output()
        .expect("run tests/deploy/check.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_validate_and_keep_least_privilege() {
    let dir = scratch("deploy");
    let toml = dir.join("agent.toml");
    let (ok, text) = check(&root().join("deploy/base"), &toml);
    assert!(ok, "deploy/base does not check out:\n{text}");

    // The agent accepts the configuration the ConfigMap ships.
    let out = Command::new(bin("spyglass-agent"))
        .args(["print-config", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's agent.toml is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("spyglass-collector.spyglass.svc"));
    // `kubectl logs` shows the findings (docs/deploy.md).
    assert!(
        effective.contains("format = \"findings\""),
        "the ConfigMap's [output] format is not findings:\n{effective}"
    );
    // And the policy it ships.
    let out = Command::new(bin("spyglass-agent"))
        .arg("check-policy")
        .arg(dir.join("agent.toml.policy.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's policy.yaml is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The checker can fail: a misspelt field, a privileged agent, a file
    // left out of the kustomization.
    let broken = dir.join("base");
    std::fs::create_dir_all(&broken).unwrap();
    for e in std::fs::read_dir(root().join("deploy/base"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), broken.join(e.file_name())).unwrap();
    }
    let ds = broken.join("agent-daemonset.yaml");
    let text = std::fs::read_to_string(&ds).unwrap();
    std::fs::write(
        &ds,
        text.replace("hostPID: true", "hostPid: true")
            .replace("privileged: false", "privileged: true"),
    )
    .unwrap();
    std::fs::write(
        broken.join("extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    )
    .unwrap();
    let (ok, text) = check(&broken, &toml);
    assert!(!ok, "a broken copy passed:\n{text}");
    for why in [
        "hostPid",
        "agent runs privileged",
        "agent without hostPID",
        "extra.yaml",
    ] {
        assert!(text.contains(why), "no complaint about {why}:\n{text}");
    }
}

/// Render the overlays documented in `doc` (tests/deploy/overlays.py):
/// success, its report, and the JSON it prints.
fn overlays(doc: &Path, scratch: &Path) -> (bool, String, serde_json::Value) {
    let out = Command::new(python())
        .arg(root().join("tests/deploy/overlays.py"))
        .arg(doc)
        .arg(root().join("deploy/base"))
        .arg(scratch)
        .arg(KUBERNETES)
        .output()
        .expect("run tests/deploy/overlays.py");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    )
}

fn object<'a>(objs: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    objs.as_array()
        .into_iter()
        .flatten()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or(&serde_json::Value::Null)
}

fn named<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or(&serde_json::Value::Null)
}

/// The digests docs/deploy.md's `mycluster` overlay pins.
const DOC_AGENT_DIGEST: &str =
    "sha256:4f3c0e5d2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const DOC_COLLECTOR_DIGEST: &str =
    "sha256:0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e";

/// What docs/deploy.md says the `kafka` overlay (the collector-kafka
/// component) does: three replicas rolling one at a time, publishing to
/// the brokers the overlay set, every `$(VAR)` of the args defined, every
/// flag one the collector has, and the brokers allowed out.
fn kafka_complaints(ov: &serde_json::Value) -> Vec<String> {
    let mut bad = Vec::new();
    let want = |what: &str, got: &serde_json::Value, expected: serde_json::Value| {
        (*got != expected).then(|| format!("{what}: {got} (expected {expected})"))
    };
    let d = &object(ov, "Deployment", "spyglass-collector")["spec"];
    bad.extend(want("replicas", &d["replicas"], 3.into()));
    bad.extend(want(
        "strategy",
        &d["strategy"]["type"],
        "RollingUpdate".into(),
    ));
    let c = named(&d["template"]["spec"]["containers"], "collector");
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    bad.extend(want(
        "--kafka-brokers",
        &after("--kafka-brokers").into(),
        "$(KAFKA_BROKERS)".into(),
    ));
    bad.extend(want(
        "--output",
        &after("--output").into(),
        serde_json::Value::Null,
    ));
    let cm = &object(ov, "ConfigMap", "spyglass-collector-kafka")["data"];
    bad.extend(want(
        "brokers",
        &cm["BROKERS"],
        "kafka-0.kafka.example:9093,kafka-1.kafka.example:9093".into(),
    ));
    // every $(VAR) comes from the ConfigMap (envFrom, prefix KAFKA_)
    let from = &c["envFrom"][0];
    bad.extend(want(
        "envFrom",
        &from["configMapRef"]["name"],
        "spyglass-collector-kafka".into(),
    ));
    let prefix = from["prefix"].as_str().unwrap_or_default();
    for a in &args {
        if let Some(var) = a.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
            let key = var.strip_prefix(prefix).unwrap_or(var);
            if cm.get(key).is_none() {
                bad.push(format!("{a}: not in the ConfigMap"));
            }
        }
    }
    // the properties file is the mounted Secret's
    let mount = named(&c["volumeMounts"], "kafka")["mountPath"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    let props = after("--kafka-config").unwrap_or("none");
    if !props.starts_with(&format!("{mount}/")) {
        bad.push(format!(
            "--kafka-config {props} is not under the kafka mount {mount}"
        ));
    }
    let vols = &d["template"]["spec"]["volumes"];
    bad.extend(want(
        "kafka volume",
        &named(vols, "kafka")["secret"]["secretName"],
        "spyglass-collector-kafka".into(),
    ));
    // every flag is one the collector knows
    let help = Command::new(bin("spyglass-collector"))
        .arg("--help")
        .output()
        .expect("spyglass-collector --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        if !help.contains(&format!("{flag} ")) && !help.contains(&format!("{flag}\n")) {
            bad.push(format!("{flag}: not a flag of spyglass-collector"));
        }
    }
    let egress = &object(ov, "NetworkPolicy", "spyglass-collector")["spec"]["egress"];
    let brokers = serde_json::json!({"to": [{"ipBlock": {"cidr": "192.168.20.0/24"}}], "ports": [{"port": 9093, "protocol": "TCP"}]});
    if !egress.as_array().is_some_and(|e| e.contains(&brokers)) {
        bad.push(format!("NetworkPolicy egress lacks the brokers: {egress}"));
    }
    bad
}

/// What docs/deploy.md says the `mycluster` overlay does, checked on its
/// rendering against the base's: one complaint per difference.
fn mycluster_complaints(base: &serde_json::Value, ov: &serde_json::Value) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want = |what: &str, got: &serde_json::Value, expected: &serde_json::Value| {
        if got != expected {
            bad.push(format!("{what}: {got} (expected {expected})"));
        }
    };
    let spec = |objs, kind, name| &object(objs, kind, name)["spec"]["template"]["spec"];
    let (b, o) = (
        spec(base, "DaemonSet", "spyglass-agent"),
        spec(ov, "DaemonSet", "spyglass-agent"),
    );
    // k3s: the containerd volume's host path, type kept; every other
    // volume (cgroup, the one an index patch hit) as in the base.
    let mut k3s = named(&b["volumes"], "containerd").clone();
    k3s["hostPath"]["path"] = "/run/k3s/containerd".into();
    want(
        "agent volume containerd",
        named(&o["volumes"], "containerd"),
        &k3s,
    );
    for v in b["volumes"].as_array().into_iter().flatten() {
        let n = v["name"].as_str().unwrap_or_default();
        if n != "containerd" {
            want(&format!("agent volume {n}"), named(&o["volumes"], n), v);
        }
    }
    // Mounted where the agent looks: [containerd] socket is unchanged.
    want(
        "agent mount containerd",
        named(
            &named(&o["containers"], "agent")["volumeMounts"],
            "containerd",
        ),
        named(
            &named(&b["containers"], "agent")["volumeMounts"],
            "containerd",
        ),
    );
    let (ba, oa) = (
        named(&b["containers"], "agent"),
        named(&o["containers"], "agent"),
    );
    want(
        "agent image",
        &oa["image"],
        &format!("registry.example.com/spyglass/agent@{DOC_AGENT_DIGEST}").into(),
    );
    want(
        "agent env RUST_LOG",
        &named(&oa["env"], "RUST_LOG")["value"],
        &"warn".into(),
    );
    want(
        "agent env NODE_NAME",
        named(&oa["env"], "NODE_NAME"),
        named(&ba["env"], "NODE_NAME"),
    );
    want("agent args", &oa["args"], &ba["args"]);
    let (b, o) = (
        spec(base, "Deployment", "spyglass-collector"),
        spec(ov, "Deployment", "spyglass-collector"),
    );
    want(
        "collector volume data",
        named(&o["volumes"], "data"),
        &serde_json::json!({"name": "data", "persistentVolumeClaim": {"claimName": "spyglass-collector-data"}}),
    );
    want(
        "collector volume tls",
        named(&o["volumes"], "tls"),
        named(&b["volumes"], "tls"),
    );
    want(
        "collector image",
        &named(&o["containers"], "collector")["image"],
        &format!("registry.example.com/spyglass/collector@{DOC_COLLECTOR_DIGEST}").into(),
    );
    let np = |objs| &object(objs, "NetworkPolicy", "spyglass-collector")["spec"]["ingress"];
    want(
        "NetworkPolicy gRPC ingress CIDR",
        &np(ov)[0]["from"][0]["ipBlock"]["cidr"],
        &"192.168.0.0/16".into(),
    );
    want("NetworkPolicy metrics ingress", &np(ov)[1], &np(base)[1]);
    let egress = |objs| &object(objs, "NetworkPolicy", "spyglass-collector")["spec"]["egress"];
    want(
        "NetworkPolicy egress",
        egress(ov),
        &serde_json::json!([dns_egress(), {"to": [{"ipBlock": {"cidr": "192.168.10.5/32"}}], "ports": [{"port": 514, "protocol": "UDP"}]}]),
    );
    want(
        "PersistentVolumeClaim",
        &object(ov, "PersistentVolumeClaim", "spyglass-collector-data")["metadata"]["namespace"],
        &"spyglass".into(),
    );
    bad
}

/// Every overlay in docs/deploy.md builds with kustomize against
/// deploy/base and does what the document says (the k3s volume patch
/// once hit the cgroup volume by index).
#[test]
fn documented_overlays_build_and_patch_what_they_say() {
    let dir = scratch("overlays");
    let doc = root().join("docs/deploy.md");
    let (ok, text, json) = overlays(&doc, &dir.join("render"));
    assert!(
        ok,
        "an overlay in docs/deploy.md does not check out:\n{text}"
    );
    let base = &json["base"];
    let names: Vec<&String> = json["overlays"].as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        ["kafka", "mycluster", "pernode", "pernode-hostpath"],
        "overlays documented (check each one here)"
    );
    let bad = kafka_complaints(&json["overlays"]["kafka"]);
    assert!(bad.is_empty(), "overlay kafka:\n{}", bad.join("\n"));
    // Node ids are bound to certificates exactly where each node has its
    // own: off in the base (one shared certificate would refuse every
    // node but one), on with either per-node component.
    for (name, objs, want) in [
        ("base", base, "off"),
        ("pernode", &json["overlays"]["pernode"], "on"),
        (
            "pernode-hostpath",
            &json["overlays"]["pernode-hostpath"],
            "on",
        ),
    ] {
        let c = named(
            &object(objs, "Deployment", "spyglass-collector")["spec"]["template"]["spec"]
                ["containers"],
            "collector",
        );
        assert_eq!(
            named(&c["env"], "SPYGLASS_NODE_BINDING")["value"],
            want,
            "{name}: collector node binding"
        );
    }
    let bad = per_node_complaints(base, &json["overlays"]["pernode"], "secret");
    assert!(bad.is_empty(), "overlay pernode:\n{}", bad.join("\n"));
    let bad = per_node_complaints(base, &json["overlays"]["pernode-hostpath"], "hostPath");
    assert!(
        bad.is_empty(),
        "overlay pernode-hostpath:\n{}",
        bad.join("\n")
    );
    let bad = mycluster_complaints(base, &json["overlays"]["mycluster"]);
    assert!(bad.is_empty(), "overlay mycluster:\n{}", bad.join("\n"));

    // The checks can fail: the k3s patch addressed by index, as the
    // document once had it (without its `test` op, which now stops the
    // build), patches the cgroup volume; a misspelt volume name adds a
    // volume instead of patching one.
    let source = std::fs::read_to_string(&doc).unwrap();
    let by_name = "            volumes:\n              - name: containerd\n                hostPath:\n                  path: /run/k3s/containerd\n";
    assert!(
        source.contains(by_name) && source.contains("\npatches:\n"),
        "docs/deploy.md's k3s patch changed: update this test"
    );
    let by_index = source.replace(by_name, "").replace(
        "\npatches:\n",
        "\npatches:\n  - target: {kind: DaemonSet, name: spyglass-agent}\n    patch: |-\n      - op: replace\n        path: /spec/template/spec/volumes/5/hostPath/path\n        value: /run/k3s/containerd\n",
    );
    std::fs::write(dir.join("by-index.md"), by_index).unwrap();
    let (ok, text, json) = overlays(&dir.join("by-index.md"), &dir.join("render-by-index"));
    assert!(ok, "the overlay patched by index does not build:\n{text}");
    let bad = mycluster_complaints(&json["base"], &json["overlays"]["mycluster"]).join("\n");
    for why in ["agent volume containerd", "agent volume cgroup"] {
        assert!(bad.contains(why), "no complaint about {why}:\n{bad}");
    }
    let misspelt = source.replace(by_name, &by_name.replace("containerd\n", "containrd\n"));
    std::fs::write(dir.join("misspelt.md"), misspelt).unwrap();
    let (ok, text, _) = overlays(&dir.join("misspelt.md"), &dir.join("render-misspelt"));
    assert!(!ok, "a misspelt volume name passed");
    assert!(
        text.contains("'containrd'"),
        "no complaint about the misspelt volume:\n{text}"
    );
}

/// `kubectl kustomize DIR`, with the kustomize library (tests/deploy/render.py).
fn render(dir: &Path) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/deploy/render.py"))
        .arg(dir)
        .output()
        .expect("run tests/deploy/render.py");
    assert!(
        out.status.success(),
        "kustomize build {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// deploy/scripts/check-images.sh on a rendering: success and its report.
fn check_images(rendered: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("sh")
        .arg(root().join("deploy/scripts/check-images.sh"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run deploy/scripts/check-images.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn yaml_objects(rendered: &str) -> serde_json::Value {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(rendered.as_bytes())?;
            c.wait_with_output()
        })
        .expect("parse the rendering");
    serde_json::from_slice(&out.stdout).expect("rendering as JSON")
}

fn container_image(objs: &serde_json::Value, kind: &str, name: &str, container: &str) -> String {
    named(
        &object(objs, kind, name)["spec"]["template"]["spec"]["containers"],
        container,
    )["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// An overlay of deploy/base in `dir` with these `images:` entries.
fn images_overlay(dir: &Path, images: &str) -> std::path::PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let base = dir.join("deploy/base");
    std::fs::create_dir_all(&base).unwrap();
    for e in std::fs::read_dir(root().join("deploy/base"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let ov = dir.join("deploy/overlays/test");
    std::fs::create_dir_all(&ov).unwrap();
    std::fs::write(
        ov.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../base\nimages:\n{images}"
        ),
    )
    .unwrap();
    ov
}

/// The images are the operator's setting: the base names placeholders no
/// registry serves, deploy/scripts/check-images.sh refuses them (and a
/// tag without a digest) saying what to set, and an overlay's `images:`
/// entry with a digest makes both workloads ask for `NAME@sha256:...`.
#[test]
fn images_are_an_operator_setting_pinned_by_digest() {
    let dir = scratch("deploy-images");
    let base = render(&root().join("deploy/base"));
    let (ok, text) = check_images(&base);
    assert!(!ok, "the base's images passed the check:\n{text}");
    for (what, image) in [
        ("DaemonSet/spyglass-agent", "spyglass-agent"),
        ("Deployment/spyglass-collector", "spyglass-collector"),
    ] {
        for want in [
            format!("{what}: image image-not-set.invalid/{image} is the placeholder of deploy/base. Set it in your overlay's kustomization.yaml:"),
            format!("    - name: image-not-set.invalid/{image}\n      newName: REGISTRY/PATH/{image}"),
            format!("      digest: sha256:...            # the \"digest\" of {image} in target/images/images.json"),
        ] {
            assert!(text.contains(&want), "no `{want}` in:\n{text}");
        }
    }
    let objs = yaml_objects(&base);
    assert_eq!(
        container_image(&objs, "DaemonSet", "spyglass-agent", "agent"),
        "image-not-set.invalid/spyglass-agent"
    );
    assert_eq!(
        container_image(&objs, "Deployment", "spyglass-collector", "collector"),
        "image-not-set.invalid/spyglass-collector"
    );

    // Set by name and digest: both workloads pinned, the check passes.
    let (agent, collector) = (
        format!("sha256:{}", "a1".repeat(32)),
        format!("sha256:{}", "c2".repeat(32)),
    );
    let ov = images_overlay(
        &dir.join("digest"),
        &format!(
            "  - name: image-not-set.invalid/spyglass-agent\n    newName: registry.test/sec/spyglass-agent\n    digest: {agent}\n  - name: image-not-set.invalid/spyglass-collector\n    newName: registry.test/sec/spyglass-collector\n    digest: {collector}\n"
        ),
    );
    let rendered = render(&ov);
    let (ok, text) = check_images(&rendered);
    assert!(
        ok,
        "an overlay with both images pinned was refused:\n{text}"
    );
    let objs = yaml_objects(&rendered);
    assert_eq!(
        container_image(&objs, "DaemonSet", "spyglass-agent", "agent"),
        format!("registry.test/sec/spyglass-agent@{agent}")
    );
    assert_eq!(
        container_image(&objs, "Deployment", "spyglass-collector", "collector"),
        format!("registry.test/sec/spyglass-collector@{collector}")
    );

    // A tag is not a pin; one image left unset is still refused.
    let ov = images_overlay(
        &dir.join("tag"),
        "  - name: image-not-set.invalid/spyglass-agent\n    newName: registry.test/sec/spyglass-agent\n    newTag: 0.1.0\n",
    );
    let (ok, text) = check_images(&render(&ov));
    assert!(!ok, "a tag-only overlay passed:\n{text}");
    for want in [
        "DaemonSet/spyglass-agent: image registry.test/sec/spyglass-agent:0.1.0 is not pinned by digest",
        "Deployment/spyglass-collector: image image-not-set.invalid/spyglass-collector is the placeholder",
        "2 image(s) not set",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
}

/// The egress rule that lets a pod resolve names: UDP and TCP 53 to the
/// cluster DNS pods.
fn dns_egress() -> serde_json::Value {
    serde_json::json!({
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    })
}

/// Whether a NetworkPolicy's podSelector selects a pod with these labels.
fn selects(policy: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let sel = &policy["spec"]["podSelector"];
    sel["matchExpressions"].is_null()
        && sel["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| &labels[k] == v)
}

/// The Spyglass pods a rendering runs that some NetworkPolicy limits
/// going out without allowing DNS: one complaint each.
fn dns_complaints(objs: &serde_json::Value) -> Vec<String> {
    let mut bad = Vec::new();
    for (kind, name) in [
        ("DaemonSet", "spyglass-agent"),
        ("Deployment", "spyglass-collector"),
    ] {
        let pod = &object(objs, kind, name)["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        let egress_limited = objs.as_array().into_iter().flatten().filter(|o| {
            o["kind"] == "NetworkPolicy"
                && selects(o, labels)
                && o["spec"]["policyTypes"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "Egress"))
        });
        let mut limited = false;
        let mut dns = false;
        for p in egress_limited {
            limited = true;
            dns |= p["spec"]["egress"]
                .as_array()
                .is_some_and(|rules| rules.contains(&dns_egress()));
        }
        if limited && !dns {
            bad.push(format!("{kind} {name}: egress limited, DNS not allowed"));
        }
        if name == "spyglass-collector" && !limited {
            bad.push(format!("{kind} {name}: no NetworkPolicy limits its egress"));
        }
        if name == "spyglass-agent" && pod["spec"]["hostNetwork"] != true {
            bad.push(format!(
                "{kind} {name}: not on the host network, and no NetworkPolicy of its own"
            ));
        }
    }
    bad
}

/// A syslog receiver given by host name must resolve: the collector's
/// NetworkPolicy allows DNS to the cluster DNS pods (and nothing else
/// but what an overlay adds); the agent, on the host network, is under
/// no NetworkPolicy. Checked on the base and every documented overlay.
#[test]
fn network_policies_let_outputs_resolve_names() {
    let dir = scratch("deploy-dns");
    let (ok, text, json) = overlays(&root().join("docs/deploy.md"), &dir.join("render"));
    assert!(
        ok,
        "an overlay in docs/deploy.md does not check out:\n{text}"
    );
    let base = &json["base"];
    let np = &object(base, "NetworkPolicy", "spyglass-collector")["spec"];
    assert_eq!(
        np["egress"],
        serde_json::json!([dns_egress()]),
        "base egress"
    );
    assert_eq!(np["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let mut renderings = vec![("base".to_owned(), base.clone())];
    for (name, objs) in json["overlays"].as_object().unwrap() {
        renderings.push((format!("overlay {name}"), objs.clone()));
    }
    for (what, objs) in &renderings {
        let bad = dns_complaints(objs);
        assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
    }

    // The check can fail: the base's old `egress: []`.
    let mut closed = base.clone();
    for o in closed.as_array_mut().unwrap() {
        if o["kind"] == "NetworkPolicy" {
            o["spec"]["egress"] = serde_json::json!([]);
        }
    }
    assert_eq!(
        dns_complaints(&closed),
        ["Deployment spyglass-collector: egress limited, DNS not allowed"]
    );
}

/// What docs/deploy.md says the per-node certificate overlays do: the
/// agent's `tls` volume is the keyed Secret mounted file by file, chosen
/// by NODE_NAME (`secret`), or the node's own directory (`hostPath`);
/// the node name the agent reports is spec.nodeName; the rest is the
/// base's.
fn per_node_complaints(base: &serde_json::Value, ov: &serde_json::Value, way: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want = |what: &str, got: &serde_json::Value, expected: &serde_json::Value| {
        if got != expected {
            bad.push(format!("{what}: {got} (expected {expected})"));
        }
    };
    let spec = |objs| &object(objs, "DaemonSet", "spyglass-agent")["spec"]["template"]["spec"];
    let (b, o) = (spec(base), spec(ov));
    let (ba, oa) = (
        named(&b["containers"], "agent"),
        named(&o["containers"], "agent"),
    );
    want("agent args", &oa["args"], &ba["args"]);
    want(
        "agent --node-name",
        &serde_json::json!(oa["args"]
            .as_array()
            .and_then(|a| a.windows(2).find(|w| w[0] == "--node-name"))
            .map(|w| w[1].clone())),
        &"$(NODE_NAME)".into(),
    );
    want(
        "agent env NODE_NAME",
        named(&oa["env"], "NODE_NAME"),
        &serde_json::json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
    );
    let tls_mounts: Vec<&serde_json::Value> = oa["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "tls")
        .collect();
    let (volume, mounts) = match way {
        "secret" => (
            serde_json::json!({"name": "tls", "secret": {"secretName": "spyglass-agent-node-tls"}}),
            serde_json::json!([
                {"name": "tls", "mountPath": "/etc/spyglass/tls/tls.crt", "subPathExpr": "$(NODE_NAME).crt", "readOnly": true},
                {"name": "tls", "mountPath": "/etc/spyglass/tls/tls.key", "subPathExpr": "$(NODE_NAME).key", "readOnly": true},
                {"name": "tls", "mountPath": "/etc/spyglass/tls/ca.crt", "subPath": "ca.crt", "readOnly": true},
            ]),
        ),
        _ => (
            serde_json::json!({"name": "tls", "hostPath": {"path": "/etc/spyglass/agent-tls", "type": "Directory"}}),
            serde_json::json!([{"name": "tls", "mountPath": "/etc/spyglass/tls", "readOnly": true}]),
        ),
    };
    want("agent volume tls", named(&o["volumes"], "tls"), &volume);
    want("agent tls mounts", &serde_json::json!(tls_mounts), &mounts);
    for v in b["volumes"].as_array().into_iter().flatten() {
        let n = v["name"].as_str().unwrap_or_default();
        if n != "tls" {
            want(&format!("agent volume {n}"), named(&o["volumes"], n), v);
        }
    }
    // The ConfigMap's paths are where the files are mounted.
    let toml = object(ov, "ConfigMap", "spyglass-agent")["data"]["agent.toml"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for line in [
        "ca_file = \"/etc/spyglass/tls/ca.crt\"",
        "cert_file = \"/etc/spyglass/tls/tls.crt\"",
        "key_file = \"/etc/spyglass/tls/tls.key\"",
    ] {
        if !toml.contains(line) {
            bad.push(format!("agent.toml lacks {line}"));
        }
    }
    bad
}

/// `openssl x509 -noout` with these options on a certificate.
fn x509(cert: &Path, opts: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(opts)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl x509 {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_certs(out: &Path, nodes: &[&str]) -> (bool, String) {
    let o = Command::new("sh")
        .arg(root().join("deploy/scripts/node-certs.sh"))
        .arg(out)
        .args(nodes)
        .output()
        .expect("run deploy/scripts/node-certs.sh");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// deploy/scripts/node-certs.sh issues one client certificate per node,
/// whose only DNS SAN (and CN) is the node name, signed by the CA it
/// makes and keeps; it refuses what is not a node name; its Secret holds
/// every node's pair keyed by node name, which the `pernode` overlay
/// mounts by $(NODE_NAME) (checked in
/// documented_overlays_build_and_patch_what_they_say).
#[test]
fn node_certs_script_issues_one_certificate_per_node_name() {
    let dir = scratch("node-certs");
    let pki = dir.join("pki");
    let (ok, text) = node_certs(&pki, &["node-a", "worker-2.zone-b.example"]);
    assert!(ok, "node-certs.sh failed:\n{text}");
    let ca = pki.join("ca.crt");
    for node in ["node-a", "worker-2.zone-b.example"] {
        let cert = pki.join("nodes").join(node).join("tls.crt");
        let text = x509(&cert, &["-text"]);
        let san = text
            .lines()
            .skip_while(|l| !l.contains("X509v3 Subject Alternative Name"))
            .nth(1)
            .map(str::trim);
        assert_eq!(san, Some(format!("DNS:{node}").as_str()), "{text}");
        assert!(text.contains(&format!("Subject: CN = {node}\n")), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        let v = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca)
            .arg(&cert)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        // The key is the certificate's.
        let pubkey = |args: &[&str], f: &Path| {
            let o = Command::new("openssl").args(args).arg(f).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            o.stdout
        };
        assert_eq!(
            pubkey(&["x509", "-noout", "-pubkey", "-in"], &cert),
            pubkey(&["pkey", "-pubout", "-in"], &cert.with_file_name("tls.key"))
        );
        assert_eq!(
            std::fs::read(cert.with_file_name("ca.crt")).unwrap(),
            std::fs::read(&ca).unwrap()
        );
    }
    let collector = x509(&pki.join("collector.crt"), &["-ext", "subjectAltName"]);
    assert!(
        collector.contains(
            "DNS:spyglass-collector.spyglass.svc, DNS:spyglass-collector.spyglass.svc.cluster.local"
        ),
        "{collector}"
    );

    // A second run adds a node and keeps the CA and the certificates.
    let before = std::fs::read(pki.join("nodes/node-a/tls.crt")).unwrap();
    let ca_before = std::fs::read(&ca).unwrap();
    let (ok, text) = node_certs(&pki, &["node-a", "node-c"]);
    assert!(ok, "node-certs.sh failed:\n{text}");
    assert_eq!(
        std::fs::read(pki.join("nodes/node-a/tls.crt")).unwrap(),
        before
    );
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    assert_eq!(
        x509(
            &pki.join("nodes/node-c/tls.crt"),
            &["-ext", "subjectAltName"]
        )
        .lines()
        .nth(1)
        .map(str::trim),
        Some("DNS:node-c")
    );

    // The keyed Secret: every node's pair and the CA, as the files.
    let secret =
        yaml_objects(&std::fs::read_to_string(pki.join("spyglass-agent-node-tls.yaml")).unwrap());
    let secret = object(&secret, "Secret", "spyglass-agent-node-tls");
    assert_eq!(secret["metadata"]["namespace"], "spyglass");
    let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "node-a.crt",
            "node-a.key",
            "node-c.crt",
            "node-c.key",
            "worker-2.zone-b.example.crt",
            "worker-2.zone-b.example.key"
        ]
    );
    let decode = |k: &str| {
        let o = Command::new(python())
            .args([
                "-c",
                "import sys, base64; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))",
            ])
            .arg(secret["data"][k].as_str().unwrap())
            .output()
            .unwrap();
        o.stdout
    };
    assert_eq!(
        decode("node-c.crt"),
        std::fs::read(pki.join("nodes/node-c/tls.crt")).unwrap()
    );
    assert_eq!(
        decode("node-a.key"),
        std::fs::read(pki.join("nodes/node-a/tls.key")).unwrap()
    );
    assert_eq!(decode("ca.crt"), ca_before);

    // Not a node name: refused before anything is written for it.
    for name in ["Node-A", "node_a", "a b", "-a", "a..b", "x/../../etc"] {
        let (ok, text) = node_certs(&pki, &[name]);
        assert!(!ok, "node-certs.sh accepted {name:?}:\n{text}");
        assert!(
            text.contains(&format!("'{name}' is not a Kubernetes node name")),
            "{text}"
        );
    }
    assert_eq!(
        std::fs::read_dir(pki.join("nodes")).unwrap().count(),
        3,
        "a refused name left a directory"
    );
}
