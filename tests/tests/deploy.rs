//! deploy/: the Kubernetes manifests validate against the Kubernetes
//! schemas (kubernetes-validate, strict, offline), the kustomization lists
//! them all, the agent keeps least privilege, and the agent parses the
//! configuration the ConfigMap ships.
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("spyglass-collector.spyglass.svc"));
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
