//! One event of every kind with every optional field set: the fixtures of
//! the wire round trip, the documentation check and other crates' tests
//! (feature `samples`).
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::*;

const T: i64 = 1_795_549_718_856_200_274;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn process() -> Process {
    Process {
        pid: 5,
        tid: Some(6),
        ppid: 1,
        uid: 1000,
        gid: 1000,
        comm: "curl".into(),
        exe: "/usr/bin/curl".into(),
        argv: vec!["curl".to_string(), "https://example.com".to_string()].into(),
        argv_truncated: true,
        exe_truncated: true,
        unread: vec![Unread::Ppid],
        cgroup_id: 4242,
        start_time: Some(Timestamp(T - 1_000)),
        package: Some(Arc::new(PackageRef {
            kind: "deb".into(),
            name: "curl".into(),
            version: "7.88.1-10+deb12u8".into(),
            source: "curl-src".into(),
            arch: "amd64".into(),
            purl: "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64&distro=debian-12".into(),
        })),
        unpackaged: false,
    }
}

pub fn container() -> Container {
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let pod = Pod {
        name: "web-0".into(),
        namespace: "prod".into(),
        uid: "8d0c".into(),
        labels: labels.clone(),
    };
    let meta = ContainerMeta {
        id: "c0ffee".into(),
        name: "web".into(),
        namespace: "k8s.io".into(),
        oci_runtime: "io.containerd.runc.v2".into(),
        created: Some(Timestamp(T - 5_000_000_000)),
        image: Image {
            reference: "docker.io/library/nginx:1.27".into(),
            digest: "sha256:aa".into(),
            index_digest: "sha256:bb".into(),
            config_digest: "sha256:cc".into(),
            exposed_ports: vec!["80/tcp".into()],
            lineage: None,
        },
        pod: Some(pod.clone()),
        labels,
        posture: Some(Posture {
            uid: 0,
            gid: 0,
            user_namespace: false,
            privileged: true,
            capabilities: vec!["CAP_SYS_ADMIN".into()],
            host_network: true,
            host_pid: false,
            host_ipc: false,
            read_only_rootfs: true,
            no_new_privileges: true,
            seccomp: Seccomp::Filtered,
        }),
        entrypoint: vec!["nginx".into()],
    };
    let mut c = Container::from_cgroup("c0ffee".into(), Runtime::Cri, Some("8d0c".into()));
    c.fill(&Arc::new(meta));
    c
}

/// A container containerd could not describe.
pub fn unattributed_container() -> Container {
    let mut c = Container::from_cgroup("dead".into(), Runtime::Cri, Some("77".into()));
    c.unattributed = Some(Unattributed::LookupTimeout);
    c
}

fn base(kind: Kind) -> Event {
    let mut ev = Event::new(kind, Timestamp(T), "n1".into());
    ev.process = Some(process());
    ev.container = Some(container());
    ev.parent = Some(Ancestor {
        pid: 1,
        exe: "/sbin/init".into(),
        comm: "init".into(),
    });
    ev.ancestors = vec![Ancestor {
        pid: 0,
        exe: "".into(),
        comm: "swapper".into(),
    }];
    ev
}

pub fn exec() -> Event {
    let mut ev = base(Kind::Exec);
    ev.enforced = Some(Enforced::Kill);
    ev
}

/// An exec of a file no package of the image owns.
pub fn exec_unpackaged() -> Event {
    let mut ev = base(Kind::Exec);
    if let Some(p) = ev.process.as_mut() {
        p.exe = "/tmp/x".into();
        p.package = None;
        p.unpackaged = true;
    }
    ev
}

pub fn exit() -> Event {
    let mut ev = base(Kind::Exit);
    ev.exit = Some(ExitInfo {
        code: None,
        signal: Some(9),
        raw: 9,
        oom: Some(OomKill {
            rss_bytes: Some(33_554_432),
            memory_limit_bytes: Some(33_554_432),
        }),
    });
    ev
}

pub fn normal_exit() -> Event {
    let mut ev = base(Kind::Exit);
    ev.container = Some(unattributed_container());
    ev.exit = Some(ExitInfo {
        code: Some(3),
        signal: None,
        raw: 3 << 8,
        oom: None,
    });
    ev
}

pub fn fork() -> Event {
    let mut ev = base(Kind::Fork);
    ev.container = None;
    ev.host = true;
    ev.snapshot = true;
    ev.fork = Some(ForkInfo { child_pid: 5 });
    ev
}

pub fn listen() -> Event {
    let mut ev = base(Kind::Listen);
    ev.network = Some(Network {
        protocol: Protocol::Udp,
        family: Family::Ipv6,
        op: NetOp::Bind,
        local: Endpoint {
            addr: ip("::"),
            port: 53,
        },
        remote: None,
        outcome: None,
        wildcard: Some(true),
    });
    ev
}

/// The startup snapshot is complete, with what it listed.
pub fn snapshot_complete() -> Event {
    let mut ev = Event::new(Kind::Agent, Timestamp(T), "n1".into());
    ev.agent = Some(Box::new(AgentInfo {
        state: AgentState::SnapshotComplete,
        version: "0.1.0".into(),
        kernel: "6.1.0".into(),
        probes: vec![],
        snapshot_processes: Some(120),
        snapshot_sockets: Some(7),
        snapshot_containers: Some(3),
        tracked: None,
    }));
    ev
}

/// A container's init exited (a container event has no process).
pub fn container_exited() -> Event {
    let mut ev = Event::new(Kind::Container, Timestamp(T), "n1".into());
    ev.container = Some(container());
    ev.lifecycle = Some(Lifecycle {
        state: ContainerState::Exited,
        exit_code: Some(137),
        image: None,
    });
    ev
}

/// A container first seen, with its image's lineage.
pub fn container_created() -> Event {
    let mut ev = Event::new(Kind::Container, Timestamp(T), "n1".into());
    ev.container = Some(container());
    ev.lifecycle = Some(Lifecycle {
        state: ContainerState::Created,
        exit_code: None,
        image: Some(Arc::new(ImageLineage {
            base_digest: format!("sha256:{}", "b".repeat(64)),
            base_name: "docker.io/library/debian:bookworm-slim".into(),
            diff_ids: vec![
                format!("sha256:{}", "1".repeat(64)),
                format!("sha256:{}", "2".repeat(64)),
            ],
        })),
    });
    ev
}

/// A TCP listener closed: the same `network` as its listen.
pub fn close() -> Event {
    let mut ev = base(Kind::Close);
    ev.network = Some(Network {
        protocol: Protocol::Tcp,
        family: Family::Ipv4,
        op: NetOp::Listen,
        local: Endpoint {
            addr: ip("0.0.0.0"),
            port: 8080,
        },
        remote: None,
        outcome: None,
        wildcard: Some(true),
    });
    ev
}

pub fn connect() -> Event {
    let mut ev = Event::new(Kind::Connect, Timestamp(T), "n1".into());
    ev.process = Some(process());
    ev.network = Some(Network {
        protocol: Protocol::Tcp,
        family: Family::Ipv4,
        op: NetOp::Connect,
        local: Endpoint {
            addr: ip("10.0.0.2"),
            port: 41234,
        },
        remote: Some(Endpoint {
            addr: ip("93.184.216.34"),
            port: 443,
        }),
        outcome: Some(ConnectOutcome::Established),
        wildcard: None,
    });
    ev.aggregate = Some(Box::new(Aggregate {
        count: 41,
        first: Timestamp(T - 50_000_000_000),
        last: Timestamp(T),
        interval_s: 60,
    }));
    ev
}

pub fn loss() -> Event {
    let mut ev = Event::new(Kind::Loss, Timestamp(T), "n1".into());
    ev.loss = Some(Box::new(Loss {
        stage: LossStage::Kernel,
        exec: 1,
        exit: 2,
        fork: 3,
        network: 4,
        read_errors: 5,
        connect_untracked: 6,
        decode_errors: 7,
        spool_dropped: 8,
        totals: Some(LossTotals {
            exec: 11,
            exit: 12,
            fork: 13,
            network: 14,
            read_errors: 15,
            connect_untracked: 16,
            decode_errors: 17,
            spool_dropped: 18,
        }),
    }));
    ev
}

pub fn agent() -> Event {
    let mut ev = Event::new(Kind::Agent, Timestamp(T), "n1".into());
    ev.agent = Some(Box::new(AgentInfo {
        state: AgentState::Started,
        version: "0.1.0".into(),
        kernel: "6.1.0".into(),
        probes: vec![ProbeStatus {
            program: "sched_process_exit".into(),
            attached: false,
            error: Some("no such tracepoint".into()),
            note: Some("last thread from signal->live".into()),
        }],
        snapshot_processes: Some(120),
        snapshot_sockets: Some(7),
        snapshot_containers: None,
        tracked: Some(Tracked {
            processes: 120,
            containers: 3,
            pending_events: 0,
            cgroups: 9,
        }),
    }));
    ev
}

pub fn finding() -> Event {
    let evidence = exec();
    let mut ev = base(Kind::Finding);
    ev.finding = Some(Box::new(FindingInfo {
        rule_id: "process.shell".into(),
        severity: Severity::High,
        mitre: Some(Mitre {
            technique: "T1059".into(),
            name: "Command and Scripting Interpreter".into(),
        }),
        summary: "shell in web".into(),
        subject: "/bin/sh".into(),
        action: Action::Kill,
        outcome: Some(Outcome::Killed),
        count: 2,
        resolved: false,
        restarts: None,
        first_seen: Timestamp(T),
        last_seen: Timestamp(T + 1),
        evidence: vec![evidence],
    }));
    ev
}

/// A container's sampled resource use.
pub fn resources() -> Event {
    let mut ev = base(Kind::Resources);
    ev.process = None;
    ev.parent = None;
    ev.ancestors = Vec::new();
    ev.resources = Some(Box::new(usage()));
    ev
}

fn usage() -> Usage {
    Usage {
        window_ms: 2000,
        cpu_ms: 1980,
        cpu_percent: 99,
        cpu_total_ms: 600_000,
        memory_bytes: Some(30_000_000),
        memory_limit_bytes: Some(33_554_432),
        memory_percent: Some(89),
        memory_growth_bytes_per_s: Some(-4096),
        pids: Some(3),
        oom_kills: Some(1),
    }
}

/// A resolved CPU runaway, its evidence the process's use.
pub fn runaway_resolved() -> Event {
    let mut evidence = base(Kind::Resources);
    evidence.resources = Some(Box::new(usage()));
    let mut ev = base(Kind::Finding);
    ev.finding = Some(Box::new(FindingInfo {
        rule_id: "process.cpu_runaway".into(),
        severity: Severity::Medium,
        mitre: None,
        summary: "back under".into(),
        subject: "4242".into(),
        action: Action::Alert,
        outcome: None,
        count: 1,
        resolved: true,
        restarts: Some(Restarts {
            count: 6,
            window_s: 600,
            exit_codes: vec![3, 137],
        }),
        first_seen: Timestamp(T),
        last_seen: Timestamp(T),
        evidence: vec![evidence],
    }));
    ev
}

/// Every sample.
pub fn all() -> Vec<Event> {
    vec![
        exec(),
        exec_unpackaged(),
        exit(),
        normal_exit(),
        fork(),
        listen(),
        close(),
        container_exited(),
        container_created(),
        snapshot_complete(),
        connect(),
        loss(),
        agent(),
        finding(),
        resources(),
        runaway_resolved(),
    ]
}
