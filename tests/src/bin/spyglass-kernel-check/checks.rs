//! Each check triggers one thing with a real process or socket and waits
//! for the exact event. A failed assertion fails that check only; the
//! report lists every check with its outcome.
use std::{
    ffi::CString,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::{fs::MetadataExt, process::CommandExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};
use spyglass_e2e::{argv_of, cgroup2_root, free_port, http_get, pid_of, Agent};

use crate::{helper::EPERM_EXIT, maps, outcome};

/// Software-emulated VMs are slow: generous waits (a pass is usually
/// immediate; only a failure waits this long).
const WAIT: Duration = Duration::from_secs(20);
const BUSYBOX: &str = "/bin/busybox";

struct Ctx<'a> {
    agent: &'a Agent,
    /// The agent's /metrics port.
    metrics: u16,
    cgroup: &'a TestCgroup,
    mark: String,
}

/// Every check, then the report.
pub fn run_all(agent_bin: &Path) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut checks = Vec::new();
    let mut probes = Value::Null;
    let mut agent = None;
    let metrics = free_port();
    checks.push(outcome("agent start", || {
        let config = scratch_config(
            "main",
            &format!("[kernel]\ndebug_log = true\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        );
        let started = Agent::start_bin(
            agent_bin,
            &[
                "--config",
                &config,
                "--no-snapshot",
                "--containerd-socket",
                "/nonexistent",
            ],
        );
        // start_bin returns once the `started` event is in.
        probes = started.wait_for("agent started", WAIT, is_started)["agent"]["probes"].clone();
        agent = Some(started);
        "started".into()
    }));
    let mut cgroup = None;
    checks.push(outcome("test cgroup", || {
        let made = TestCgroup::create();
        let detail = format!("{} (id {})", made.dir.display(), made.id);
        cgroup = Some(made);
        detail
    }));
    if let (Some(agent), Some(cgroup)) = (agent, cgroup.as_ref()) {
        checks.push(outcome("probes attached", || all_attached(&probes)));
        checks.push(outcome("exit probe reads this kernel's record", || {
            exit_mode(&probes)
        }));
        let ctx = Ctx {
            agent: &agent,
            metrics,
            cgroup,
            mark: format!("spyglass-kc-{}", std::process::id()),
        };
        for (name, check) in CHECKS {
            checks.push(outcome(name, || check(&ctx)));
        }
        checks.push(outcome("clean stop", || {
            let events = agent.stop();
            format!("{} events in all", events.len())
        }));
    }
    checks.push(outcome("ring buffer loss is reported", || {
        ring_buffer_loss(agent_bin)
    }));
    checks.push(outcome("degrades without cgroup socket hooks", || {
        without_cgroup_hooks(agent_bin)
    }));
    let ok = checks.iter().all(|c| c["ok"] == true);
    json!({"kernel": kernel, "ok": ok, "probes": probes, "checks": checks})
}

fn is_started(e: &Value) -> bool {
    e["kind"] == "agent" && e["agent"]["state"] == "started"
}

type Check = fn(&Ctx) -> String;

const CHECKS: &[(&str, Check)] = &[
    ("exec with argv", exec_with_argv),
    ("exit code", exit_code),
    ("exit by signal", exit_by_signal),
    (
        "exit of a process whose main thread ended first",
        exit_last_thread,
    ),
    (
        "one exit for a process whose threads are killed together",
        exit_threads_killed,
    ),
    ("fork", fork),
    ("tcp listen, connect established, accept", tcp_established),
    ("tcp connect refused", tcp_refused),
    ("udp bind and send", udp_bind_and_send),
    ("tcp and udp close", listener_close),
    ("cgroup attribution", cgroup_attribution),
    ("kill at exec (kernel)", kill_at_exec),
    ("deny connect (kernel)", deny_connect),
];

fn all_attached(probes: &Value) -> String {
    let list = probes
        .as_array()
        .expect("the started event lists the probes");
    assert!(!list.is_empty(), "no probes listed");
    let missing: Vec<String> = list
        .iter()
        .filter(|p| p["attached"] != true)
        .map(|p| format!("{}: {}", p["program"], p["error"]))
        .collect();
    assert!(missing.is_empty(), "not attached: {missing:?}");
    format!("{} of {} attached", list.len(), list.len())
}

/// The exit probe must take `group_dead` from the record where this
/// kernel's format file has it, and `signal->live` where it has not.
fn exit_mode(probes: &Value) -> String {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| {
            std::fs::read_to_string(format!("{t}/events/sched/sched_process_exit/format")).ok()
        })
        .expect("the exit tracepoint's format file (the agent mounts tracefs)");
    let has_field = format.contains(" group_dead;");
    let exit = probes
        .as_array()
        .and_then(|l| l.iter().find(|p| p["program"] == "sched_process_exit"))
        .expect("the exit probe is listed");
    let note = exit["note"].as_str().unwrap_or("");
    let want = if has_field {
        "group_dead"
    } else {
        "signal->live"
    };
    assert!(
        note.contains(want),
        "format has group_dead: {has_field}; probe says {note:?}"
    );
    format!("record has group_dead: {has_field}; probe: {note}")
}

fn exec_with_argv(c: &Ctx) -> String {
    let child = Command::new(BUSYBOX)
        .args(["echo", &c.mark, "two words"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn busybox");
    let pid = u64::from(child.id());
    wait_ok(child);
    let ev = c.agent.wait_for("the exec", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    assert_eq!(
        argv_of(&ev),
        [BUSYBOX, "echo", c.mark.as_str(), "two words"]
    );
    assert_eq!(ev["process"]["exe"], BUSYBOX);
    assert_eq!(ev["process"]["ppid"], std::process::id());
    format!("pid {pid} argv {:?}", argv_of(&ev))
}

fn exit_code(c: &Ctx) -> String {
    let child = Command::new(BUSYBOX)
        .args(["sh", "-c", "exit 3", &c.mark])
        .spawn()
        .expect("spawn sh");
    let pid = u64::from(child.id());
    let status = child.wait_with_output().expect("wait").status;
    assert_eq!(status.code(), Some(3));
    let ev = c.agent.wait_for("the exit", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(ev["exit"]["code"], 3, "{ev}");
    format!("pid {pid} code 3")
}

fn exit_by_signal(c: &Ctx) -> String {
    let mut child = Command::new(BUSYBOX)
        .args(["sleep", "60"])
        .spawn()
        .expect("spawn sleep");
    let pid = u64::from(child.id());
    c.agent.wait_for("the exec", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    child.kill().expect("kill");
    assert_eq!(child.wait().expect("wait").signal(), Some(9));
    let ev = c.agent.wait_for("the exit", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(ev["exit"]["signal"], 9, "{ev}");
    format!("pid {pid} signal 9")
}

fn exit_last_thread(c: &Ctx) -> String {
    let child = Command::new(self_exe())
        .args(["helper", "threads", "7"])
        .spawn()
        .expect("spawn helper");
    let pid = u64::from(child.id());
    assert_eq!(
        child.wait_with_output().expect("wait").status.code(),
        Some(7)
    );
    let ev = c.agent.wait_for("the exit", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(ev["exit"]["code"], 7, "{ev}");
    let exec = c.agent.wait_for("the exec", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    // The exit names the process by its leader's start time, which the
    // exec of the main thread gave.
    let start = &exec["process"]["start_time"];
    assert!(start.is_string(), "{exec}");
    assert_eq!(&ev["process"]["start_time"], start, "{ev}");
    let exits = settled_exits(c, pid);
    assert_eq!(exits, 1, "one process, {exits} exit events");
    format!("pid {pid} code 7, one exit event")
}

/// Nine threads on every CPU end at once (SIGKILL): one exit record,
/// whichever thread gets there last.
fn exit_threads_killed(c: &Ctx) -> String {
    let mut child = KillOnDrop(
        Command::new(self_exe())
            .args(["helper", "spin", "8"])
            .spawn()
            .expect("spawn helper"),
    );
    let child = &mut child.0;
    let pid = u64::from(child.id());
    let exec = c.agent.wait_for("the exec", WAIT, |e| {
        e["kind"] == "exec" && pid_of(e) == pid
    });
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill");
    assert_eq!(child.wait().expect("wait").signal(), Some(9));
    let ev = c.agent.wait_for("the exit", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == pid
    });
    assert_eq!(ev["exit"]["signal"], 9, "{ev}");
    assert_eq!(
        ev["process"]["start_time"], exec["process"]["start_time"],
        "{ev}"
    );
    let exits = settled_exits(c, pid);
    assert_eq!(exits, 1, "nine threads, one process, {exits} exit events");
    // ... and one record: the kernel sent no second one for userspace to drop.
    let (_, text) = http_get(c.metrics, "/metrics");
    let dropped = metric(&text, "spyglass_duplicate_exit_records_total");
    assert_eq!(dropped, Some(0), "second exit records reached the agent");
    format!("pid {pid} (9 threads) killed, one exit event, no second record")
}

/// Exit events of `pid` once a second record, if any, had time to come.
fn settled_exits(c: &Ctx, pid: u64) -> usize {
    std::thread::sleep(Duration::from_secs(1));
    c.agent
        .matching(|e| e["kind"] == "exit" && pid_of(e) == pid)
        .len()
}

fn fork(c: &Ctx) -> String {
    let out = Command::new(self_exe())
        .args(["helper", "fork"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run helper");
    assert!(out.status.success());
    let parent = c.agent.wait_for("the helper's exec", WAIT, |e| {
        e["kind"] == "exec"
            && argv_of(e).get(2).map(String::as_str) == Some("fork")
            && e["process"]["ppid"] == std::process::id()
    });
    let child: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("child pid");
    let ev = c.agent.wait_for("the fork", WAIT, |e| {
        e["kind"] == "fork" && e["fork"]["child_pid"] == child
    });
    assert_eq!(ev["process"]["ppid"], pid_of(&parent), "{ev}");
    c.agent.wait_for("the child's exit", WAIT, |e| {
        e["kind"] == "exit" && pid_of(e) == child
    });
    format!("parent {} child {child}", pid_of(&parent))
}

fn net(e: &Value) -> &Value {
    &e["network"]
}

fn is(e: &Value, kind: &str, protocol: &str, op: &str) -> bool {
    e["kind"] == kind && net(e)["protocol"] == protocol && net(e)["op"] == op
}

fn endpoint(v: &Value) -> Option<SocketAddr> {
    let ip = v["addr"].as_str()?.parse().ok()?;
    Some(SocketAddr::new(ip, v["port"].as_u64()? as u16))
}

fn tcp_established(c: &Ctx) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    let me = u64::from(std::process::id());
    let l = c.agent.wait_for("the listen", WAIT, |e| {
        is(e, "listen", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(server)
    });
    assert_eq!(pid_of(&l), me);
    let client = TcpStream::connect(server).expect("connect");
    let local = client.local_addr().expect("addr");
    let ev = c.agent.wait_for("the connect", WAIT, |e| {
        is(e, "connect", "tcp", "connect") && endpoint(&net(e)["local"]) == Some(local)
    });
    assert_eq!(net(&ev)["outcome"], "established", "{ev}");
    assert_eq!(endpoint(&net(&ev)["remote"]), Some(server));
    assert_eq!(pid_of(&ev), me);
    c.agent.wait_for("the accept", WAIT, |e| {
        e["kind"] == "accept" && endpoint(&net(e)["remote"]) == Some(local)
    });
    format!("listen {server}, connect from {local} established, accepted")
}

fn tcp_refused(c: &Ctx) -> String {
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = TcpStream::connect(closed).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let ev = c.agent.wait_for("the failed connect", WAIT, |e| {
        is(e, "connect", "tcp", "connect") && endpoint(&net(e)["remote"]) == Some(closed)
    });
    assert_eq!(net(&ev)["outcome"], "failed", "{ev}");
    format!("connect to {closed}: failed")
}

fn udp_bind_and_send(c: &Ctx) -> String {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let peer = receiver.local_addr().expect("addr");
    c.agent.wait_for("the bind", WAIT, |e| {
        is(e, "listen", "udp", "bind") && endpoint(&net(e)["local"]) == Some(peer)
    });
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.send_to(b"ping", peer).expect("send");
    let ev = c.agent.wait_for("the send", WAIT, |e| {
        is(e, "connect", "udp", "send") && endpoint(&net(e)["remote"]) == Some(peer)
    });
    assert_eq!(pid_of(&ev), u64::from(std::process::id()));
    format!("bind {peer}, send to it")
}

/// A TCP listener and a bound UDP socket, closed: one `close` each, with
/// the listen's own `network` and this process as the closer.
fn listener_close(c: &Ctx) -> String {
    let me = u64::from(std::process::id());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    c.agent.wait_for("the listen", WAIT, |e| {
        is(e, "listen", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(server)
    });
    drop(listener);
    let ev = c.agent.wait_for("the tcp close", WAIT, |e| {
        is(e, "close", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(server)
    });
    assert_eq!(
        (pid_of(&ev), &net(&ev)["wildcard"]),
        (me, &json!(false)),
        "{ev}"
    );
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let bound = udp.local_addr().expect("addr");
    c.agent.wait_for("the bind", WAIT, |e| {
        is(e, "listen", "udp", "bind") && endpoint(&net(e)["local"]) == Some(bound)
    });
    drop(udp);
    let ev = c.agent.wait_for("the udp close", WAIT, |e| {
        is(e, "close", "udp", "bind") && endpoint(&net(e)["local"]) == Some(bound)
    });
    assert_eq!(pid_of(&ev), me, "{ev}");
    format!("tcp {server} and udp {bound} closed")
}

fn cgroup_attribution(c: &Ctx) -> String {
    let mark = format!("{}-cgroup", c.mark);
    let status = c
        .cgroup
        .command(BUSYBOX)
        .args(["true", &mark])
        .status()
        .expect("run");
    assert!(status.success());
    let ev = c.agent.wait_for("the exec in the cgroup", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(2) == Some(&mark)
    });
    assert_eq!(ev["process"]["cgroup_id"], c.cgroup.id, "{ev}");
    assert_eq!(ev["container"]["id"], c.cgroup.name.as_str(), "{ev}");
    let host_mark = format!("{}-host", c.mark);
    assert!(Command::new(BUSYBOX)
        .args(["true", &host_mark])
        .status()
        .expect("run")
        .success());
    let host = c.agent.wait_for("the exec on the host", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(2) == Some(&host_mark)
    });
    assert_eq!(host["host"], true, "{host}");
    format!("cgroup {} -> container {}", c.cgroup.id, c.cgroup.name)
}

fn kill_at_exec(c: &Ctx) -> String {
    let target = std::env::temp_dir().join(format!("{}-kill", c.mark));
    std::fs::copy(BUSYBOX, &target).expect("copy busybox");
    let path = target.to_str().expect("utf-8 path");
    maps::kill_exec(c.cgroup.id, path);
    // argv[0] `busybox`: the copy's own name is no applet.
    let status = c
        .cgroup
        .command(path)
        .arg0("busybox")
        .arg("true")
        .status()
        .expect("run");
    assert_eq!(
        status.signal(),
        Some(9),
        "the exec in the cgroup was not killed: {status}"
    );
    let ev = c.agent.wait_for("the killed exec", WAIT, |e| {
        e["kind"] == "exec" && e["process"]["exe"] == path
    });
    assert_eq!(ev["enforced"], "kill", "{ev}");
    // The same file by a path that does not read as the rule's: the
    // kernel normalises it (`//`, `.`, `..`) before the lookup.
    let dir = target.parent().and_then(|d| d.to_str()).expect("dir");
    let leaf = target.file_name().and_then(|n| n.to_str()).expect("name");
    let top = dir.rsplit('/').next().expect("dir name");
    let tricked = format!("/{dir}//./../{top}/{leaf}");
    let status = c
        .cgroup
        .command(&tricked)
        .arg0("busybox")
        .arg("true")
        .status()
        .expect("run");
    assert_eq!(
        status.signal(),
        Some(9),
        "{tricked} was not killed: {status}"
    );
    let outside = Command::new(path)
        .arg0("busybox")
        .arg("true")
        .status()
        .expect("run");
    assert!(
        outside.success(),
        "the same file outside the cgroup: {outside}"
    );
    let _ = std::fs::remove_file(&target);
    format!(
        "{path} and {tricked} killed in cgroup {}, runs outside",
        c.cgroup.id
    )
}

/// Run `helper VERB ADDR` in the test cgroup: it must exit with EPERM,
/// and the agent must report a denied `connect` event of `protocol`/`op`
/// to `addr` from that cgroup.
fn refused_in_cgroup(c: &Ctx, verb: &str, addr: SocketAddr, protocol: &str, op: &str) {
    let status = c
        .cgroup
        .command(self_exe())
        .args(["helper", verb, &addr.to_string()])
        .status()
        .expect("run helper");
    assert_eq!(
        status.code(),
        Some(EPERM_EXIT),
        "{verb} from the cgroup: {status}"
    );
    let ev = c.agent.wait_for("the denied connect", WAIT, |e| {
        is(e, "connect", protocol, op)
            && net(e)["outcome"] == "denied"
            && endpoint(&net(e)["remote"]) == Some(addr)
    });
    assert_eq!(ev["process"]["cgroup_id"], c.cgroup.id, "{ev}");
}

fn deny_connect(c: &Ctx) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    let mut mapped = [0u8; 16];
    mapped[10..12].copy_from_slice(&[0xff, 0xff]);
    mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
    maps::deny_connect(c.cgroup.id, mapped);
    refused_in_cgroup(c, "connect", server, "tcp", "connect");
    TcpStream::connect(server).expect("the same connect outside the cgroup");
    // UDP to the same range from an unconnected socket (sendto): refused
    // too, or a UDP deny would be one sendto(2) away from useless.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let peer = udp.local_addr().expect("addr");
    refused_in_cgroup(c, "sendto", peer, "udp", "send");
    format!(
        "connect to {server} and sendto {peer} refused (EPERM) in cgroup {}, allowed outside",
        c.cgroup.id
    )
}

/// Smallest ring (64 KiB), reader stopped, a burst of execs: the overflow
/// must come back as loss events that account for every missing exec, and
/// with kernel diagnostics on, the probe must say why it dropped them.
fn ring_buffer_loss(agent_bin: &Path) -> String {
    const N: usize = 400;
    let config = scratch_config("loss", "[kernel]\ndebug_log = true\n");
    let log_path =
        std::env::temp_dir().join(format!("spyglass-kc-loss-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("agent log file");
    let mut cmd = Command::new(agent_bin);
    cmd.args([
        "run",
        "--config",
        &config,
        "--no-snapshot",
        "--containerd-socket",
        "/nonexistent",
    ])
    .args(["--ring-buffer-bytes", "65536"])
    .env("RUST_LOG", "warn");
    let agent = Agent::spawn_with_stderr(cmd, Stdio::from(log));
    let mark = format!("spyglass-kc-loss-{}", std::process::id());
    agent.signal(libc::SIGSTOP);
    let script = format!("i=0; while [ $i -lt {N} ]; do {BUSYBOX} true {mark}; i=$((i+1)); done");
    let status = Command::new(BUSYBOX)
        .args(["sh", "-c", &script])
        .status()
        .expect("burst");
    agent.signal(libc::SIGCONT);
    assert!(status.success());
    agent.wait_for("a loss event", WAIT, |e| {
        e["kind"] == "loss" && e["loss"]["exec"].as_u64().unwrap_or(0) > 0
    });
    let events = agent.stop();
    let seen = events
        .iter()
        .filter(|e| e["kind"] == "exec" && argv_of(e).get(2) == Some(&mark))
        .count();
    let lost: u64 = events
        .iter()
        .filter(|e| e["kind"] == "loss")
        .map(|e| e["loss"]["exec"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        seen < N,
        "the 64 KiB ring held all {N} execs: nothing overflowed"
    );
    assert!(seen + lost as usize >= N, "{seen} seen + {lost} lost < {N}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let explained = log
        .lines()
        .filter(|l| l.contains("ring buffer full: record dropped"))
        .count();
    assert!(
        explained > 0,
        "no kernel diagnostic for the drops; agent log:\n{log}"
    );
    format!(
        "{seen} of {N} execs reported, {lost} counted lost, {explained} kernel diagnostic lines"
    )
}

/// The cgroup socket hooks (UDP, deny-connect) are optional in the probe
/// table: with them refused (their cgroup is not a cgroup), the agent
/// reports exactly those as not attached, with the reason, and the rest
/// works.
fn without_cgroup_hooks(agent_bin: &Path) -> String {
    const CGROUP_HOOKS: &[&str] = &[
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
        "post_bind4",
        "post_bind6",
        "sock_release",
    ];
    let dir = std::env::temp_dir().join(format!("spyglass-kc-nocgroup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[kernel]\ncgroup_root = \"{}\"\n", dir.display()),
    )
    .expect("write config");
    let agent = Agent::start_bin(
        agent_bin,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--no-snapshot",
            "--containerd-socket",
            "/nonexistent",
        ],
    );
    let start = agent.wait_for("agent started", WAIT, is_started);
    for p in start["agent"]["probes"].as_array().expect("probes") {
        let name = p["program"].as_str().unwrap_or("");
        let hook = CGROUP_HOOKS.contains(&name);
        assert_eq!(p["attached"] == true, !hook, "{p}");
        if hook {
            let error = p["error"].as_str().unwrap_or("");
            assert!(error.contains("cgroup") && error.contains("no UDP"), "{p}");
        }
    }
    let mark = format!("spyglass-kc-degraded-{}", std::process::id());
    assert!(Command::new(BUSYBOX)
        .args(["true", &mark])
        .status()
        .expect("run")
        .success());
    agent.wait_for("an exec", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(2) == Some(&mark)
    });
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = udp.local_addr().expect("addr").port();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    agent.wait_for("a TCP listen", WAIT, |e| {
        is(e, "listen", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(server)
    });
    let events = agent.stop();
    let udp_events = events
        .iter()
        .filter(|e| e["network"]["protocol"] == "udp" && e["network"]["local"]["port"] == port)
        .count();
    assert_eq!(
        udp_events, 0,
        "a UDP bind was reported without the UDP hooks"
    );
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "{} cgroup hooks refused and reported; exec and TCP still reported",
        CGROUP_HOOKS.len()
    )
}

/// A helper that must not outlive a failed check (it spins on every CPU).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an unlabelled Prometheus sample.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A config file for one agent run; its path.
fn scratch_config(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("spyglass-kc-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write agent config");
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn wait_ok(child: std::process::Child) {
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", out.status);
}

fn self_exe() -> PathBuf {
    std::env::current_exe().expect("own path")
}

/// A cgroup v2 directory named like a containerd container
/// (`spyglass-kernel-check/<64 hex>`), removed on drop.
struct TestCgroup {
    dir: PathBuf,
    name: String,
    id: u64,
    procs: CString,
}

impl TestCgroup {
    fn create() -> Self {
        let root = cgroup2_root().expect("a cgroup v2 mount (cgroup2 in /proc/mounts)");
        let name = format!("{:0>64x}", std::process::id());
        let dir = root.join("spyglass-kernel-check").join(&name);
        std::fs::create_dir_all(&dir).expect("create the test cgroup");
        let id = std::fs::metadata(&dir).expect("stat the cgroup").ino();
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL");
        TestCgroup {
            dir,
            name,
            id,
            procs,
        }
    }

    /// A command whose process joins this cgroup before it execs.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.procs.clone();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
