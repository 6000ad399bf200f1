//! End-to-end: exec, exit and fork events from real processes, with the
//! real probes loaded into this kernel.
mod common;

use std::{os::unix::process::CommandExt, process::Command, time::Duration};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn exec_shows_argv_uid_ppid_exe_and_exit_code() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("exec");
    let odd = "un usual ✓ arg\twith tab";
    // /bin/sh -c 'exit 7' MARK ODD, as nobody (65534): $0 is the marker.
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 7", &mark, odd])
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("spawn");
    let pid = u64::from(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));

    let exec = agent.wait_for("exec of the marked process", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    let p = &exec["process"];
    assert_eq!(
        argv_of(&exec),
        ["/bin/sh", "-c", "exit 7", mark.as_str(), odd]
    );
    assert_eq!(p["exe"], "/bin/sh");
    assert_eq!(p["uid"], 65534);
    assert_eq!(p["gid"], 65534);
    assert_eq!(p["ppid"], std::process::id());
    assert_eq!(exec["parent"]["pid"], std::process::id());
    assert_eq!(exec["snapshot"], false);
    assert!(p["cgroup_id"].as_u64().unwrap() > 0);

    let exit = agent.wait_for("exit of the marked process", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(exit["exit"]["code"], 7);
    assert!(exit["exit"].get("signal").is_none());
    assert_eq!(
        argv_of(&exit),
        argv_of(&exec),
        "exit carries the process it ends"
    );

    // The fork that made the child came from this test process.
    let fork = agent.wait_for("fork of the marked process", WAIT, |e| {
        e["kind"] == "fork" && e["fork"]["child_pid"] == pid
    });
    assert_eq!(fork["process"]["ppid"], std::process::id());
    agent.stop();
}

#[test]
fn an_exec_path_longer_than_the_kernel_keeps_is_marked_truncated() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("longpath");
    // /tmp/MARK/aaaa.../aaaa.../true: over 600 bytes in all.
    let mut dir = std::env::temp_dir().join(&mark);
    for _ in 0..3 {
        dir.push("a".repeat(200));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("true");
    std::fs::copy("/bin/true", &exe).unwrap();
    let child = Command::new(&exe).spawn().unwrap();
    let pid = u64::from(child.id());
    assert!(child.wait_with_output().unwrap().status.success());
    let exec = agent.wait_for("exec of the long path", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    let p = &exec["process"];
    assert_eq!(p["exe_truncated"], true, "{exec}");
    let given = p["exe"].as_str().unwrap();
    assert_eq!(given.len(), 511, "{given}");
    assert!(exe.to_str().unwrap().starts_with(given));
    // an ordinary exec carries neither mark
    assert!(Command::new("/bin/true")
        .arg(&mark)
        .status()
        .unwrap()
        .success());
    let short = agent.wait_for("an exec with a whole path", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).last().map(String::as_str) == Some(mark.as_str())
    });
    assert!(short["process"].get("exe_truncated").is_none(), "{short}");
    assert!(short["process"].get("unread").is_none(), "{short}");
    std::fs::remove_dir_all(std::env::temp_dir().join(&mark)).unwrap();
    agent.stop();
}

#[test]
fn killed_process_reports_its_signal() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = u64::from(child.id());
    agent.wait_for("exec of sleep", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let exit = agent.wait_for("exit of sleep", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(exit["exit"]["signal"], 9);
    assert!(exit["exit"].get("code").is_none());
    agent.stop();
}

#[test]
fn failed_execve_is_not_an_exec_event() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("noexec");
    let missing = format!("/nonexistent/{mark}");
    assert!(Command::new(&missing).spawn().is_err());
    // A real exec afterwards proves the agent was watching.
    let status = Command::new("/bin/true").arg(&mark).status().unwrap();
    assert!(status.success());
    agent.wait_for("the later real exec", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).contains(&mark)
    });
    let events = agent.stop();
    assert!(
        !events
            .iter()
            .any(|e| e["process"]["exe"] == missing.as_str()),
        "a failed execve produced an exec event"
    );
}

#[test]
fn long_argv_is_truncated_and_marked() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("long");
    let big = "x".repeat(6000);
    let status = Command::new("/bin/true")
        .args([&mark, &big])
        .status()
        .unwrap();
    assert!(status.success());
    let exec = agent.wait_for("exec with a long argv", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(1) == Some(&mark)
    });
    assert_eq!(exec["process"]["argv_truncated"], true);
    let argv = argv_of(&exec);
    // NUL-separated; the cut last argument has no terminating NUL.
    let kept: usize = argv.iter().map(std::string::String::len).sum::<usize>() + argv.len() - 1;
    assert_eq!(kept, 4096, "exactly the 4096-byte argv budget is kept");
    assert!(big.starts_with(argv.last().unwrap().as_str()));
    agent.stop();
}

#[test]
fn startup_snapshot_reports_running_processes() {
    require_root();
    let _g = serial();
    let mark = marker("snap");
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .arg0(&mark)
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    std::thread::sleep(Duration::from_millis(100));
    let agent = start_agent(&[]);
    let snap = agent.wait_for("snapshot of the earlier process", WAIT, |e| {
        e["kind"] == "exec" && e["snapshot"] == true && pid_of(e) == pid
    });
    assert_eq!(argv_of(&snap), [mark.as_str(), "30"]);
    assert_eq!(snap["process"]["ppid"], std::process::id());
    child.kill().unwrap();
    child.wait().unwrap();
    agent.stop();
}

/// A process started before the agent with 1 MiB of arguments: the
/// snapshot keeps the first 4096 bytes, as the probe does of an exec, and
/// says so (it used to read and keep the whole /proc/PID/cmdline).
#[test]
fn startup_snapshot_caps_what_it_reads_of_a_cmdline() {
    require_root();
    let _g = serial();
    let mark = marker("snapcap");
    // 1 MiB in 16 arguments (one argument may hold at most 128 KiB)
    let big = vec!["y".repeat(64 << 10); 16];
    // sh stays alive (two commands: no exec of the last one)
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 30; :", &mark])
        .args(&big)
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    std::thread::sleep(Duration::from_millis(100));
    let agent = start_agent(&[]);
    let snap = agent.wait_for("snapshot of the earlier process", WAIT, |e| {
        e["kind"] == "exec" && e["snapshot"] == true && pid_of(e) == pid
    });
    assert_eq!(snap["process"]["argv_truncated"], true);
    let argv = argv_of(&snap);
    assert_eq!(&argv[..4], ["/bin/sh", "-c", "sleep 30; :", mark.as_str()]);
    let kept: usize = argv.iter().map(String::len).sum::<usize>() + argv.len() - 1;
    assert_eq!(
        kept, 4096,
        "the probe's 4096-byte budget, not the whole 1 MiB"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    agent.stop();
}

/// The cgroup v2 mount of this host (unified or hybrid).

#[test]
fn process_in_a_container_cgroup_carries_the_container_id() {
    require_root();
    let _g = serial();
    let root = cgroup2_root().expect("this test needs a cgroup v2 mount (cgroup2 in /proc/mounts)");
    // A cgroup shaped like containerd's (/<namespace>/<64-hex id>), made by
    // the test; a short-lived process joins it and execs.
    let id = format!("{:0>64}", format!("{:x}", std::process::id()));
    let parent = root.join(format!("spyglass-e2e-{}", std::process::id()));
    let cg = parent.join(&id);
    std::fs::create_dir_all(&cg).unwrap();
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("cgroup");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec /bin/true {mark}",
        cg.display()
    );
    assert!(Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
    // and a host process for contrast
    assert!(Command::new("/bin/true")
        .arg(format!("{mark}-host"))
        .status()
        .unwrap()
        .success());
    let exec = agent.wait_for("exec in the container cgroup", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(1) == Some(&mark)
    });
    let host = agent.wait_for("exec on the host", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(1) == Some(&format!("{mark}-host"))
    });
    agent.stop();
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir(&parent);
    assert_eq!(exec["container"]["id"], id.as_str());
    assert_eq!(exec["container"]["runtime"], "containerd");
    // containerd (running for the tests) was asked, several times, and
    // does not know this id: the event says so instead of guessing.
    assert_eq!(
        exec["container"]["unattributed"], "not_found_in_containerd",
        "{exec}"
    );
    assert!(exec["container"].get("image").is_none());
    assert!(
        host.get("container").is_none(),
        "host process marked as container: {host}"
    );
    assert_eq!(host["host"], true);
}
