//! The command line: subcommands, configuration errors, privilege errors.
mod common;

use std::{os::unix::process::CommandExt, process::Command};

use common::agent_bin;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin()).args(args).output().unwrap()
}

#[test]
fn version_and_print_config() {
    let out = run(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("spyglass-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&[
        "print-config",
        "--ring-buffer-bytes",
        "1048576",
        "--node-name",
        "n1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ring_buffer_bytes = 1048576"), "{text}");
    assert!(text.contains("node_name = \"n1\""), "{text}");
    assert!(text.contains("poll_interval_ms = 10"), "{text}");
}

#[test]
fn config_file_is_read_and_errors_name_file_and_field() {
    let dir = std::env::temp_dir().join(format!("spyglass-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[process]\nancestors = 2\n[output]\nformat = \"text\"\n",
    )
    .unwrap();
    let out = run(&["print-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ancestors = 2") && text.contains("format = \"text\""),
        "{text}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[kernel]\nring_buffer_bytes = 12345\n").unwrap();
    let out = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    assert!(
        err.contains("kernel.ring_buffer_bytes") && err.contains("power of two"),
        "{err}"
    );

    std::fs::write(&bad, "[kernel]\nring_buffer = 65536\n").unwrap();
    let out = run(&["run", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("ring_buffer"),
        "{err}"
    );

    let out = run(&["run", "--config", "/nonexistent/spyglass.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/spyglass.toml"),
        "{err}"
    );
    // Each cause once.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // A collector the agent could never reach: it stops at start with the
    // file named, instead of running with nowhere to send events.
    std::fs::write(
        &bad,
        "[collector]\nurl = \"https://127.0.0.1:9\"\nca_file = \"/nonexistent/ca.crt\"\n",
    )
    .unwrap();
    let out = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read collector CA file /nonexistent/ca.crt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unprivileged_run_says_what_is_missing() {
    spyglass_e2e::require_root();
    let out = Command::new(agent_bin())
        .arg("run")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not enough privileges"), "{err}");
    assert!(err.contains("CAP_BPF"), "{err}");
}

#[test]
fn missing_btf_says_what_is_missing() {
    spyglass_e2e::require_root();
    let dir = std::env::temp_dir().join(format!("spyglass-cli-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("nobtf.toml");
    std::fs::write(&cfg, "[kernel]\nbtf_path = \"/nonexistent/vmlinux\"\n").unwrap();
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no kernel BTF at /nonexistent/vmlinux"),
        "{err}"
    );
    assert!(err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
}

#[test]
fn findings_catalogue_in_the_docs_is_the_agents_own() {
    let out = run(&["rules"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/findings.md"),
    )
    .unwrap();
    let block = docs
        .split_once("<!-- rules:begin -->\n")
        .and_then(|(_, rest)| rest.split_once("<!-- rules:end -->"))
        .map(|(b, _)| b)
        .expect("docs/findings.md has the rules:begin/end markers");
    assert_eq!(
        block, table,
        "docs/findings.md is stale: paste `spyglass-agent rules` between the markers"
    );
    assert!(table.lines().count() >= 20, "{table}");
}

#[test]
fn check_policy_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("spyglass-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("policy.yaml");
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - rule: process.shell\n    acton: kill\n",
    )
    .unwrap();
    let out = run(&["check-policy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("policy file {}, line 4 column 5", bad.display()))
            && err.contains("unknown field `acton`"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - rule: process.shell\n    action: kill\n",
    )
    .unwrap();
    let out = run(&["check-policy", bad.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // runaway thresholds: 0, negative and absurd values, named
    for (setting, want) in [
        (
            "cpu_runaway_percent: 0",
            "settings.cpu_runaway_percent: 0 is out of range; write 1 to 102400",
        ),
        (
            "memory_near_limit_seconds: -3",
            "settings.memory_near_limit_seconds: invalid type: integer `-3`",
        ),
        (
            "restart_loop_minutes: 99999999",
            "settings.restart_loop_minutes: 99999999 is out of range",
        ),
        (
            "memory_near_limit_percent: 150",
            "settings.memory_near_limit_percent: 150 is out of range; write 1 to 100",
        ),
    ] {
        std::fs::write(&bad, format!("version: 1\nsettings:\n  {setting}\n")).unwrap();
        let out = run(&["check-policy", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{setting}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{setting}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_kill_of_every_program_without_scope_is_refused_unless_confirmed() {
    let dir = std::env::temp_dir().join(format!("spyglass-cli-broad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    let check = |policy: &str| {
        std::fs::write(&file, policy).unwrap();
        run(&["check-policy", file.to_str().unwrap()])
    };
    let exec = "version: 1\nrules:\n  - rule: process.exec\n    action: kill\n";
    for paths in ["[\"/\"]", "[\"/usr/\"]", "[\"/opt/app\", \"/usr/bin/\"]"] {
        let out = check(&format!("{exec}    executables: {paths}\n"));
        assert_eq!(out.status.code(), Some(1), "{paths}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("line 3")
                && err.contains("rule `process.exec` with action `kill` and no scope")
                && err.contains("covers every program directory")
                && err.contains("confirm_broad_kill: true"),
            "{paths}: {err}"
        );
    }
    let writable = "version: 1\nsettings:\n  writable_paths: [\"/tmp/\", \"/\"]\nrules:\n  - rule: process.writable_path_exec\n    action: kill\n";
    let out = check(writable);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("settings.writable_paths holds `/`")
            && err.contains("rule `process.writable_path_exec` with action `kill` and no scope"),
        "{err}"
    );
    // The agent refuses it at start too, before it loads anything.
    let out = run(&["run", "--policy", file.to_str().unwrap(), "--no-snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("settings.writable_paths holds `/`"), "{err}");
    // Meant, scoped, or narrower: accepted.
    for ok in [
        format!("{exec}    executables: [\"/\"]\n    confirm_broad_kill: true\n"),
        format!("{exec}    executables: [\"/\"]\n    scope: {{namespaces: [sandbox]}}\n"),
        format!("{exec}    executables: [\"/usr/bin/nc\", \"/opt/\"]\n"),
        format!("{writable}    confirm_broad_kill: true\n"),
    ] {
        let out = check(&ok);
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deny_connect_without_the_probes_that_enforce_it_refuses_to_start() {
    common::require_root();
    let dir = std::env::temp_dir().join(format!("spyglass-cli-deny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A cgroup root that is not a cgroup: the cgroup socket hooks, which
    // are optional probes, cannot attach.
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[kernel]\ncgroup_root = \"{}\"\n", dir.display()),
    )
    .unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nrules:\n  - rule: network.connect\n    destinations: [10.0.0.0/8]\n    action: deny-connect\n",
    )
    .unwrap();
    // (bounded: an agent that starts anyway would run until killed)
    let out = Command::new("timeout")
        .args(["-s", "INT", "20"])
        .arg(agent_bin())
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--no-snapshot",
            "--containerd-socket",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused at start, not run unenforced"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules[0] (network.connect) has action `deny-connect`")
            && err.contains("not attached: connect4 (")
            && err.contains("sendmsg6 ("),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
