//! The collector as a network service: TLS and mutual TLS, bearer tokens,
//! garbage and oversized input, an independent Python gRPC client, OCSF
//! output checked by an independent validator, syslog into a real rsyslog.
mod common;

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{pki::LOOPBACK, *};
use spyglass_proto::v1::{
    collector_client::CollectorClient, event::Detail, Ack, Batch, Endpoint, Event, EventKind,
    Finding, Loss, Network, Severity,
};
use tokio_stream::StreamExt;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Status,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn batch(node: &str, seq: u64, events: Vec<Event>) -> Batch {
    Batch {
        node_id: node.into(),
        sequence: seq,
        events,
        sent_unix_nano: 0,
        stream_id: "test".into(),
    }
}

/// Publish batches on one stream and collect the acks.
async fn publish(
    channel: Channel,
    token: Option<&str>,
    batches: Vec<Batch>,
) -> Result<Vec<Ack>, Status> {
    let n = batches.len();
    let mut req = tonic::Request::new(tokio_stream::iter(batches));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut client = CollectorClient::new(channel).max_encoding_message_size(64 * 1024 * 1024);
    let mut acks = client.publish(req).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match acks.next().await {
            Some(a) => out.push(a?),
            None => break,
        }
    }
    Ok(out)
}

async fn plain(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn tls_channel(port: u16, dir: &Path, identity: Option<&str>) -> Result<Channel, String> {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{id}.pem")),
            read(&format!("{id}.key")),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn mutual_tls_accepts_only_clients_signed_by_the_ca() {
    let _g = serial();
    let dir = scratch("mtls");
    pki::make_ca(&dir, "ca");
    pki::make_cert(&dir, "ca", "server", "serverAuth", LOOPBACK);
    pki::make_cert(&dir, "ca", "agent", "clientAuth", "DNS:mtls-good");
    pki::make_ca(&dir, "rogue-ca");
    pki::make_cert(&dir, "rogue-ca", "rogue", "clientAuth", LOOPBACK);
    let col = pki::mtls_collector(&dir);
    rt().block_on(async {
        let good = tls_channel(col.port, &dir, Some("agent"))
            .await
            .expect("valid client connects");
        let acks = publish(
            good,
            None,
            vec![batch("mtls-good", 1, vec![exec_event("mtls-good", "ok")])],
        )
        .await
        .expect("valid client publishes");
        assert_eq!(acks[0].sequence, 1);

        for id in [None, Some("rogue")] {
            let refused = match tls_channel(col.port, &dir, id).await {
                Err(_) => true,
                Ok(ch) => publish(
                    ch,
                    None,
                    vec![batch("mtls-bad", 1, vec![exec_event("mtls-bad", "no")])],
                )
                .await
                .is_err(),
            };
            assert!(refused, "client with identity {id:?} was not refused");
        }
    });
    let out = lines(&col.output);
    assert!(out.iter().any(|e| e["node"] == "mtls-good"));
    assert!(
        !out.iter().any(|e| e["node"] == "mtls-bad"),
        "a refused client's event was written"
    );
}

#[test]
fn agent_streams_over_mutual_tls() {
    require_root();
    let _g = serial();
    let dir = scratch("mtls-agent");
    pki::make_ca(&dir, "ca");
    pki::make_cert(&dir, "ca", "server", "serverAuth", LOOPBACK);
    // the certificate names the agent's node: node ids are bound to it
    pki::make_cert(&dir, "ca", "agent", "clientAuth", "DNS:mtls-agent");
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let col = pki::mtls_collector(&dir);
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_name = \"mtls-agent\"\n[collector]\nurl = \"https://127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\ntls_domain = \"localhost\"\nspool_dir = \"{}\"\n",
            col.port, p("ca.pem"), p("agent.pem"), p("agent.key"), p("spool")
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", cfg.to_str().unwrap(), "--no-snapshot"]);
    let mark = marker("tls");
    Command::new("/bin/true").arg(&mark).status().unwrap();
    eventually("the exec over mTLS", Duration::from_secs(30), || {
        lines(&col.output)
            .iter()
            .any(|e| argv(e).get(1) == Some(&mark))
            .then_some(())
    });
    agent.stop();
}

#[test]
fn a_client_certificate_publishes_only_for_its_own_node() {
    let _g = serial();
    let dir = scratch("node-binding");
    pki::make_ca(&dir, "ca");
    pki::make_cert(&dir, "ca", "server", "serverAuth", LOOPBACK);
    pki::make_cert(&dir, "ca", "agent-a", "clientAuth", "DNS:node-a");
    // no SAN: named by its CN
    pki::make_cert(&dir, "ca", "node-c", "clientAuth", "");
    pki::make_cert(&dir, "ca", "gateway", "clientAuth", "DNS:gateway.example");
    let one = |node: &str, seq, arg: &str| vec![batch(node, seq, vec![exec_event(node, arg)])];
    let denied = |cert: &str, node: &str| {
        format!(
            "client certificate \"{cert}\" may not publish for node \"{node}\": a batch's \
             node_id must be a DNS SAN of the certificate (its CN without SANs) or allowed \
             for it by --node-identities"
        )
    };
    let col = pki::mtls_collector(&dir);
    rt().block_on(async {
        let ch = |id| tls_channel(col.port, &dir, Some(id));
        // node A's certificate publishing as node B
        let err = publish(
            ch("agent-a").await.unwrap(),
            None,
            one("node-b", 1, "forged"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(err.message(), denied("node-a", "node-b"));
        // a first batch as itself, then another node on the same stream
        let err = publish(
            ch("agent-a").await.unwrap(),
            None,
            [one("node-a", 1, "own"), one("node-b", 2, "forged")].concat(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let acks = publish(ch("agent-a").await.unwrap(), None, one("node-a", 2, "own"))
            .await
            .expect("node A publishes as itself");
        assert_eq!(acks[0].sequence, 2);
        let acks = publish(ch("node-c").await.unwrap(), None, one("node-c", 1, "cn"))
            .await
            .expect("a certificate without SAN publishes as its CN");
        assert_eq!(acks[0].sequence, 1);
        let err = publish(
            ch("gateway").await.unwrap(),
            None,
            one("edge-1", 1, "mapped"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.message(), denied("gateway.example", "edge-1"));
    });
    let written = |col: &Collector| -> Vec<(String, String)> {
        lines(&col.output)
            .iter()
            .map(|e| (e["node"].as_str().unwrap().to_owned(), argv(e)[1].clone()))
            .collect()
    };
    let own = |n: &str, a: &str| (n.to_owned(), a.to_owned());
    assert_eq!(
        written(&col),
        [
            own("node-a", "own"),
            own("node-a", "own"),
            own("node-c", "cn")
        ],
        "nothing of a refused batch is written"
    );

    // A mapping file allows more nodes for a certificate name.
    let map = dir.join("node-identities");
    std::fs::write(
        &map,
        "# gateway relays two edge nodes\ngateway.example edge-1 edge-2\n",
    )
    .unwrap();
    let out2 = dir.join("mapped");
    std::fs::create_dir_all(&out2).unwrap();
    let mut flags = pki::mtls_flags(&dir);
    flags.extend(["--node-identities".into(), map.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let col = Collector::start(free_port(), &out2.join("out.jsonl"), &flags);
    rt().block_on(async {
        let ch = |id| tls_channel(col.port, &dir, Some(id));
        for node in ["edge-1", "edge-2", "gateway.example"] {
            let acks = publish(ch("gateway").await.unwrap(), None, one(node, 1, "mapped"))
                .await
                .unwrap_or_else(|e| panic!("gateway as {node}: {e:?}"));
            assert_eq!(acks[0].sequence, 1);
        }
        let err = publish(ch("gateway").await.unwrap(), None, one("edge-3", 1, "no"))
            .await
            .unwrap_err();
        assert_eq!(err.message(), denied("gateway.example", "edge-3"));
    });
    assert_eq!(
        written(&col),
        [
            own("edge-1", "mapped"),
            own("edge-2", "mapped"),
            own("gateway.example", "mapped")
        ]
    );

    // A malformed file stops the collector at start, naming the line.
    std::fs::write(&map, "gateway.example edge-1\nlonely\n").unwrap();
    let out = Command::new(bin("spyglass-collector"))
        .args(&flags)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--output")
        .arg(out2.join("bad.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: certificate name \"lonely\" has no node id; each line is a certificate \
             name followed by the node ids it may publish for (--node-identities)",
            map.display()
        )),
        "{stderr}"
    );
}

#[test]
fn bearer_token_is_required_when_configured() {
    let _g = serial();
    let dir = scratch("token");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &["--token", "s3cret"]);
    rt().block_on(async {
        let send = |token| async move {
            let one = vec![batch("t", 1, vec![exec_event("t", "x")])];
            publish(plain(col.port).await, token, one).await
        };
        for bad in [None, Some("wrong")] {
            assert_eq!(send(bad).await.unwrap_err().code(), Code::Unauthenticated);
        }
        assert_eq!(send(Some("s3cret")).await.unwrap().len(), 1);
    });
}

#[test]
fn garbage_and_oversized_input_close_only_that_stream() {
    let _g = serial();
    let dir = scratch("garbage");
    let col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &["--max-message-bytes", "65536"],
    );
    rt().block_on(async {
        // A healthy agent keeps one stream open throughout.
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(4);
        let mut healthy = CollectorClient::new(plain(col.port).await);
        let mut acks = healthy
            .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(batch("healthy", 1, vec![exec_event("healthy", "before")]))
            .await
            .unwrap();
        assert_eq!(acks.next().await.unwrap().unwrap().sequence, 1);

        // Garbage bytes on a raw TCP connection: the collector hangs up.
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", col.port)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(&[0x16, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef].repeat(300))
            .unwrap();
        let mut buf = Vec::new();
        let _ = raw.read_to_end(&mut buf);

        // A batch over the size limit gets an error status.
        let big = (0..2000)
            .map(|i| exec_event("big", &format!("{i:0100}")))
            .collect();
        let err = publish(plain(col.port).await, None, vec![batch("big", 1, big)])
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
            "oversized batch: {err:?}"
        );
        // A batch that breaks the contract (sequence 0) is refused.
        let err = publish(plain(col.port).await, None, vec![batch("zero", 0, vec![])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // The healthy stream was not disturbed.
        tx.send(batch("healthy", 2, vec![exec_event("healthy", "after")]))
            .await
            .unwrap();
        assert_eq!(acks.next().await.unwrap().unwrap().sequence, 2);
    });
    let out = lines(&col.output);
    let healthy: Vec<_> = out.iter().filter(|e| e["node"] == "healthy").collect();
    assert_eq!(healthy.len(), 2);
    assert!(!out
        .iter()
        .any(|e| e["node"] == "big" || e["node"] == "zero"));
}

#[test]
fn independent_python_grpc_client_publishes_and_reads_acks() {
    let _g = serial();
    let dir = scratch("python");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let stdout = run_python_client(&dir, "publish.py", col.port);
    assert!(stdout.contains("ack 1 duplicate=False"), "{stdout}");
    assert!(stdout.contains("ack 1 duplicate=True"), "{stdout}");
    assert!(stdout.contains("malformed rejected"), "{stdout}");
    assert!(stdout.contains("ack 2 duplicate=False"), "{stdout}");
    let lines = lines(&col.output);
    let py: Vec<_> = lines
        .iter()
        .filter(|e| e["node"] == "python-node")
        .collect();
    assert_eq!(
        py.len(),
        2,
        "two distinct batches, one event each, dedupe applied"
    );
    assert_eq!(py[0]["process"]["argv"][1], "from-python");
}

/// Run `tests/python/SCRIPT 127.0.0.1:PORT` with stubs generated into
/// `dir`; its stdout (it must exit 0).
fn run_python_client(dir: &Path, script: &str, port: u16) -> String {
    run_python_client_with(dir, script, port, &[])
}

/// [`run_python_client`] with more arguments after the address.
fn run_python_client_with(dir: &Path, script: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("PYTHONPATH", python_stubs(dir))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Python modules generated by grpcio-tools from our .proto files.
fn python_stubs(dir: &Path) -> PathBuf {
    let gen = dir.join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    let st = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root().join("proto"))
        .arg(format!("--python_out={}", gen.display()))
        .arg(format!("--grpc_python_out={}", gen.display()))
        .args(["spyglass/v1/events.proto", "spyglass/v1/collector.proto"])
        .status()
        .unwrap();
    assert!(st.success(), "grpc_tools.protoc failed on our .proto files");
    gen
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hostile_python_client_cannot_take_the_collector_down_or_speak_for_another_node() {
    let _g = serial();
    let dir = scratch("hostile");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let stdout = run_python_client(&dir, "hostile.py", col.port);
    let said = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no outcome for {name}: {stdout}"))
            .to_owned()
    };
    let refused = |name: &str, acked: usize, why: &str| {
        let got = said(name);
        let want = format!("INVALID_ARGUMENT acked {acked} ");
        assert!(got.starts_with(&want), "{name}: {got}");
        assert!(got.contains(why), "{name}: {got}");
    };
    refused("huge-node", 0, "bytes long; at most 253");
    refused("newline-node", 0, "holds '\\n'");
    refused("path-stream", 0, "stream_id \"../../x\" holds '.'");
    refused(
        "million-events",
        0,
        "batch holds 4000000 events, evidence included; at most 65536",
    );
    refused(
        "grouped-events",
        0,
        "Batch is not well-formed protobuf (a group)",
    );
    refused(
        "million-evidence",
        0,
        "Finding.evidence holds 3000000 entries in one message; at most 16384",
    );
    refused(
        "million-ancestors",
        0,
        "Event.ancestors holds 3000000 entries in one message; at most 16384",
    );
    refused("node-change", 1, "one stream, one node");
    refused(
        "other-node-event",
        0,
        "its node \"victim\" is not the batch's node",
    );
    assert_eq!(said("good"), "acked 1");
    // Four million decoded events would take over a GiB; three million
    // evidence events 1.6 GB, three million ancestors 225 MiB.
    let peak = peak_rss_kib(col.child.id());
    assert!(peak < 200 * 1024, "collector peak RSS {peak} KiB");
    let lines = lines(&col.output);
    let nodes: Vec<&str> = lines.iter().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(
        nodes,
        ["py-a", "py-good"],
        "only accepted batches are written"
    );
    assert_eq!(lines[0]["process"]["argv"][1], "first");
}

fn sample_events(node: &str) -> Vec<Event> {
    let mut exec = exec_event(node, "ocsf");
    exec.parent = Some(spyglass_proto::v1::Ancestor {
        pid: 1,
        exe: "/sbin/init".into(),
        comm: "init".into(),
    });
    // a container with everything the agent fills from containerd
    exec.container = Some(Box::new(spyglass_proto::v1::ContainerContext {
        id: "4f1c0de5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c".into(),
        name: "app".into(),
        runtime: "containerd".into(),
        image_ref: "registry.example/shop/app:1.2".into(),
        image_digest: format!("sha256:{}", "ab".repeat(32)),
        image_index_digest: format!("sha256:{}", "cd".repeat(32)),
        image_config_digest: format!("sha256:{}", "ef".repeat(32)),
        image_exposed_ports: vec!["8080/tcp".into()],
        pod_name: "web-0".into(),
        pod_namespace: "shop".into(),
        pod_uid: "1c2d3e4f-aaaa-bbbb-cccc-0123456789ab".into(),
        pod_labels: [("app".to_string(), "web".to_string())].into(),
        container_name: "app".into(),
        namespace: "k8s.io".into(),
        oci_runtime: "io.containerd.runc.v2".into(),
        created_unix_nano: 1_795_549_700_000_000_000,
        labels: [(
            "io.kubernetes.container.name".to_string(),
            "app".to_string(),
        )]
        .into(),
        posture: Some(spyglass_proto::v1::Posture {
            uid: 1000,
            capabilities: vec!["CAP_CHOWN".into()],
            seccomp: "filtered".into(),
            ..Default::default()
        }),
        unattributed: String::new(),
    }));
    let net = |op: &str, outcome: &str| Event {
        kind: if op == "listen" {
            EventKind::Listen
        } else {
            EventKind::Connect
        } as i32,
        time_unix_nano: 1_795_549_718_000_000_000,
        node: node.into(),
        process: exec.process.clone(),
        detail: Some(Detail::Network(Network {
            protocol: "tcp".into(),
            family: "ipv4".into(),
            op: op.into(),
            local: Some(Endpoint {
                addr: "127.0.0.1".into(),
                port: 8080,
            }),
            remote: (op != "listen").then(|| Endpoint {
                addr: "127.0.0.1".into(),
                port: 9,
            }),
            outcome: outcome.into(),
            wildcard: false,
        })),
        ..Event::default()
    };
    // a listener's close (issue 16): the listen's own network
    let mut close = net("listen", "");
    close.kind = EventKind::Close as i32;
    // a container's lifecycle step: the container, no process
    let container = Event {
        kind: EventKind::Container as i32,
        time_unix_nano: 1_795_549_718_000_000_000,
        node: node.into(),
        container: exec.container.clone(),
        detail: Some(Detail::Lifecycle(spyglass_proto::v1::Lifecycle {
            state: "exited".into(),
            exit_code: Some(137),
            image: None,
        })),
        ..Event::default()
    };
    // repeats the agent's export filter aggregated into one connect
    let mut aggregated = net("connect", "established");
    aggregated.aggregate = Some(Box::new(spyglass_proto::v1::Aggregate {
        count: 41,
        first_unix_nano: 1_795_549_660_000_000_000,
        last_unix_nano: 1_795_549_718_000_000_000,
        interval_s: 60,
    }));
    vec![
        exec.clone(),
        net("listen", ""),
        close,
        container,
        net("connect", "established"),
        net("connect", "failed"),
        aggregated,
        Event {
            kind: EventKind::Finding as i32,
            time_unix_nano: 1_795_549_718_000_000_000,
            node: node.into(),
            process: exec.process.clone(),
            detail: Some(Detail::Finding(Finding {
                rule_id: "process.shell".into(),
                severity: Severity::High as i32,
                summary: "shell started in container".into(),
                mitre_technique: "T1059".into(),
                mitre_name: "Command and Scripting Interpreter".into(),
                evidence: vec![exec.clone()],
                count: 1,
                first_seen_unix_nano: 1_795_549_718_000_000_000,
                last_seen_unix_nano: 1_795_549_718_000_000_000,
                subject: "/bin/sh".into(),
                action: "kill".into(),
                outcome: "killed".into(),
                ..Finding::default()
            })),
            ..Event::default()
        },
        Event {
            kind: EventKind::Loss as i32,
            time_unix_nano: 1_795_549_718_000_000_000,
            node: node.into(),
            detail: Some(Detail::Loss(Loss {
                stage: "kernel".into(),
                exec: 3,
                ..Loss::default()
            })),
            ..Event::default()
        },
    ]
}

fn validate_ocsf(file: &Path) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/ocsf/validate.py"))
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "OCSF validation failed:\n{text}");
    text
}

#[test]
fn ocsf_output_passes_the_ocsf_schema_validator() {
    let _g = serial();
    let dir = scratch("ocsf");
    let col = Collector::start(free_port(), &dir.join("ocsf.jsonl"), &["--format", "ocsf"]);
    rt().block_on(async {
        publish(
            plain(col.port).await,
            None,
            vec![batch("ocsf-node", 1, sample_events("ocsf-node"))],
        )
        .await
        .unwrap();
    });
    let out = lines(&col.output);
    let classes: std::collections::BTreeSet<u64> =
        out.iter().filter_map(|e| e["class_uid"].as_u64()).collect();
    assert_eq!(classes, [1007, 1008, 2004, 4001].into_iter().collect());
    // an aggregated connect: OCSF's own count and time range
    let agg = out.iter().find(|e| e.get("count").is_some()).unwrap();
    assert_eq!(
        (&agg["count"], &agg["start_time"], &agg["end_time"]),
        (
            &serde_json::json!(41),
            &serde_json::json!(1_795_549_660_000_i64),
            &serde_json::json!(1_795_549_718_000_i64)
        ),
        "{agg}"
    );
    assert_eq!(agg["unmapped"]["aggregate"]["count"], 41);
    // the container profile: the launched process carries its container
    let launch = out
        .iter()
        .find(|e| e["class_uid"] == 1007 && e["activity_id"] == 1)
        .unwrap();
    assert_eq!(
        launch["metadata"]["profiles"],
        serde_json::json!(["host", "container"])
    );
    let c = &launch["process"]["container"];
    assert_eq!(c["uid"].as_str().unwrap().len(), 64);
    assert_eq!(c["image"]["name"], "registry.example/shop/app:1.2");
    assert_eq!(c["image"]["tag"], "1.2");
    assert_eq!(c["image"]["uid"], format!("sha256:{}", "ef".repeat(32)));
    assert_eq!(c["hash"]["value"], "ab".repeat(32));
    assert_eq!(c["pod_uuid"], "1c2d3e4f-aaaa-bbbb-cccc-0123456789ab");
    assert_eq!(launch["unmapped"]["container"]["posture"]["uid"], 1000);
    validate_ocsf(&col.output);
}

#[test]
fn real_agent_events_pass_the_ocsf_schema_validator() {
    require_root();
    let _g = serial();
    let dir = scratch("ocsf-agent");
    let col = Collector::start(free_port(), &dir.join("ocsf.jsonl"), &["--format", "ocsf"]);
    let spool = dir.join("spool");
    let agent = Agent::streaming_to(&col.url(), &spool, &[]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _ = std::net::TcpStream::connect(
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    );
    Command::new("/bin/sh")
        .args(["-c", "exit 2"])
        .status()
        .unwrap();
    eventually(
        "process and network classes",
        Duration::from_secs(30),
        || {
            let out = lines(&col.output);
            (out.iter().any(|e| e["class_uid"] == 4001)
                && out.iter().any(|e| e["class_uid"] == 1007))
            .then_some(())
        },
    );
    agent.stop();
    validate_ocsf(&col.output);
}

#[test]
fn syslog_lines_arrive_in_a_real_rsyslog() {
    let _g = serial();
    let dir = scratch("syslog");
    let port = free_port();
    let sink = dir.join("syslog.out");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imtcp\")\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"raw\" type=\"string\" string=\"%APP-NAME% %MSGID% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{s}\" template=\"raw\")\n",
            d = dir.display(),
            s = sink.display()
        ),
    )
    .unwrap();
    let mut rsyslog = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .spawn()
        .expect("start rsyslogd (cargo xtask setup installs it)");
    eventually("rsyslog to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &["--syslog", &format!("tcp://127.0.0.1:{port}")],
    );
    let events = sample_events("syslog-node");
    let sent = events.len();
    rt().block_on(async {
        publish(
            plain(col.port).await,
            None,
            vec![batch("syslog-node", 1, events)],
        )
        .await
        .unwrap();
    });
    // every event is one line; the finding is among the last
    let got = eventually("a syslog line per event", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&sink).unwrap_or_default();
        (text.lines().count() >= sent).then_some(text)
    });
    let _ = rsyslog.kill();
    let _ = rsyslog.wait();
    let first = got.lines().next().unwrap();
    assert!(first.starts_with("spyglass exec "), "{first}");
    let json = first.trim_start_matches("spyglass exec ").trim();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["node"], "syslog-node");
    assert_eq!(v["delivery"]["sequence"], 1);
    assert!(got.lines().any(|l| l.starts_with("spyglass finding ")));
}

#[test]
fn syslog_over_tls_is_verified_and_delivered() {
    let _g = serial();
    let dir = scratch("syslog-tls");
    pki::make_ca(&dir, "ca");
    pki::make_cert(&dir, "ca", "server", "serverAuth", LOOPBACK);
    let port = free_port();
    let received = dir.join("received.txt");
    // An independent TLS server: openssl s_server prints what it receives.
    let mut server = Command::new("openssl")
        .current_dir(&dir)
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&received).unwrap())
        .spawn()
        .unwrap();
    eventually(
        "openssl s_server to listen",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    let ca = dir.join("ca.pem");
    let col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &[
            "--syslog",
            &format!("tls://localhost:{port}"),
            "--syslog-ca",
            ca.to_str().unwrap(),
        ],
    );
    rt().block_on(async {
        publish(
            plain(col.port).await,
            None,
            vec![batch("tls-syslog", 1, sample_events("tls-syslog"))],
        )
        .await
        .unwrap();
    });
    let text = eventually("syslog over TLS", Duration::from_secs(20), || {
        let t = std::fs::read_to_string(&received).unwrap_or_default();
        (t.matches("spyglass - ").count() >= 6).then_some(t)
    });
    let _ = server.kill();
    let _ = server.wait();
    // octet-counted RFC 5424 frames: "LEN <110>1 TIME HOST spyglass - exec - {...}"
    let first = text.split("spyglass - ").nth(1).unwrap();
    assert!(first.starts_with("exec - {"), "{first}");
    assert!(text.contains("\"node\":\"tls-syslog\""));
}

/// A tmpfs of `kib` KiB mounted on `dir`, unmounted on drop.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(dir: &Path, kib: u32) -> TinyFs {
        Self::mount_with(dir, &format!("size={kib}k"))
    }

    fn mount_with(dir: &Path, options: &str) -> TinyFs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs on {}", dir.display());
        TinyFs(dir.to_owned())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_rotation_whose_new_file_cannot_be_opened_loses_no_rotated_file() {
    require_root();
    let _g = serial();
    let dir = scratch("collector-rotate");
    // Few inodes: after the rotation's renames, creating the new file
    // fails (ENOSPC) until one is freed.
    let fs = TinyFs::mount_with(&dir.join("out"), "size=4m,nr_inodes=16");
    let out = fs.0.join("events.jsonl");
    let col = Collector::start(
        free_port(),
        &out,
        &[
            "--rotate-bytes",
            "1500",
            "--keep",
            "3",
            "--state-file",
            dir.join("state").to_str().unwrap(),
            "--status-file",
            dir.join("status.json").to_str().unwrap(),
        ],
    );
    let rt = rt();
    let send = |seq: u64| {
        let events = (0..4)
            .map(|i| exec_event("rot", &format!("b{seq}-{i}")))
            .collect();
        rt.block_on(async {
            publish(plain(col.port).await, None, vec![batch("rot", seq, events)]).await
        })
    };
    for seq in 1..=3 {
        send(seq).unwrap();
    }
    // Use up every inode.
    let mut fillers = Vec::new();
    for i in 0.. {
        let f = fs.0.join(format!("filler{i}"));
        if std::fs::write(&f, "").is_err() {
            break;
        }
        fillers.push(f);
    }
    assert!(!fillers.is_empty());
    // Rotation renames, then cannot open the new file; the agent resends.
    for _ in 0..3 {
        let e = send(4).unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    std::fs::remove_file(fillers.pop().unwrap()).unwrap();
    send(4).unwrap();
    let mut args: Vec<String> = Vec::new();
    for f in [
        "events.jsonl.3",
        "events.jsonl.2",
        "events.jsonl.1",
        "events.jsonl",
    ] {
        let p = fs.0.join(f);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is readable by its owner only");
        for e in lines(&p) {
            args.push(e["process"]["argv"][1].as_str().unwrap().to_owned());
        }
    }
    let want: Vec<String> = (1..=4)
        .flat_map(|b| (0..4).map(move |i| format!("b{b}-{i}")))
        .collect();
    assert_eq!(
        args, want,
        "every batch once, oldest first, across the rotated files"
    );
    for f in fillers {
        let _ = std::fs::remove_file(f);
    }
}

fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_health_endpoints_follow_what_the_collector_does() {
    require_root();
    let _g = serial();
    let dir = scratch("collector-metrics");
    // The output on a 256 KiB file system the test can fill.
    let fs = TinyFs::mount(&dir.join("out"), 256);
    let mport = free_port();
    // The dedupe state and the inventory live elsewhere, as on a node
    // whose output has its own volume: only the output fills up (the
    // inventory's first WAL alone takes ~150 KiB of the 256).
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let collector = Collector::start(
        free_port(),
        &fs.0.join("events.jsonl"),
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
            "--state-file",
            dir.join("state").to_str().unwrap(),
            "--store",
            &store,
        ],
    );
    let metrics = || http_get(mport, "/metrics").1;
    let series = |body: &str, s: &str| sample(body, s).unwrap_or_else(|| panic!("{s} in {body}"));
    eventually("/healthz", Duration::from_secs(10), || {
        (http_get(mport, "/healthz").0 == 200).then_some(())
    });
    assert_eq!(http_get(mport, "/readyz"), (200, "ready\n".into()));
    let before = metrics();
    assert_eq!(
        series(&before, "spyglass_collector_events_total{kind=\"exec\"}"),
        0
    );
    assert_eq!(series(&before, "spyglass_collector_agents_known"), 0);

    let finding = Event {
        kind: EventKind::Finding as i32,
        node: "m".into(),
        detail: Some(spyglass_proto::v1::event::Detail::Finding(Finding {
            rule_id: "container.root".into(),
            severity: Severity::High as i32,
            summary: "root".into(),
            ..Finding::default()
        })),
        ..Event::default()
    };
    let first = batch(
        "m",
        1,
        vec![
            exec_event("m", "a"),
            exec_event("m", "b"),
            exec_event("m", "c"),
            finding,
        ],
    );
    let rt = rt();
    rt.block_on(async {
        let ch = plain(collector.port).await;
        publish(ch.clone(), None, vec![first.clone()])
            .await
            .unwrap();
        // The same batch again (as after a reconnect): not written twice.
        let acks = publish(ch, None, vec![first]).await.unwrap();
        assert!(acks[0].duplicate);
    });
    let m = metrics();
    assert_eq!(
        series(&m, "spyglass_collector_events_total{kind=\"exec\"}"),
        3
    );
    assert_eq!(
        series(&m, "spyglass_collector_events_total{kind=\"finding\"}"),
        1
    );
    assert_eq!(
        series(
            &m,
            "spyglass_collector_findings_total{rule=\"container.root\",severity=\"high\"}"
        ),
        1
    );
    assert_eq!(series(&m, "spyglass_collector_batches_total"), 1);
    assert_eq!(series(&m, "spyglass_collector_duplicate_batches_total"), 1);
    assert_eq!(series(&m, "spyglass_collector_agents_known"), 1);

    // Output full: the batch is refused, counted, and /readyz says why.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1000"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let big: Vec<Event> = (0..50).map(|i| exec_event("m", &format!("x{i}"))).collect();
    let refused = rt.block_on(async {
        publish(
            plain(collector.port).await,
            None,
            vec![batch("m", 2, big.clone())],
        )
        .await
    });
    assert!(
        refused.is_err(),
        "a write to a full disk is refused: {refused:?}"
    );
    let (code, body) = http_get(mport, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("output failing"), "{body}");
    assert!(series(&metrics(), "spyglass_collector_output_errors_total") >= 1);

    // Space again: ready again without a write (not ready keeps a
    // collector out of its Service), and the agent's resend is written.
    std::fs::remove_file(&filler).unwrap();
    eventually(
        "/readyz after space is freed",
        Duration::from_secs(10),
        || (http_get(mport, "/readyz").0 == 200).then_some(()),
    );
    rt.block_on(async {
        publish(plain(collector.port).await, None, vec![batch("m", 2, big)])
            .await
            .unwrap();
    });
    assert_eq!(http_get(mport, "/readyz").0, 200);
    assert_eq!(
        series(&metrics(), "spyglass_collector_events_total{kind=\"exec\"}"),
        53
    );
    // The failed write left no torn line: every line parses, each exec once.
    let written = lines(&fs.0.join("events.jsonl"));
    assert_eq!(written.iter().filter(|e| e["kind"] == "exec").count(), 53);

    // A bad batch (sequence 0) ends its stream and is counted.
    let bad = rt.block_on(async {
        publish(
            plain(collector.port).await,
            None,
            vec![batch("m", 0, vec![])],
        )
        .await
    });
    assert!(bad.is_err());
    assert_eq!(
        series(&metrics(), "spyglass_collector_bad_streams_total"),
        1
    );
    drop(collector);
}

/// One definition of an event: the line the collector writes is the line
/// the agent printed, plus `delivery`, field for field.
#[test]
fn collector_writes_the_agents_json_unchanged() {
    require_root();
    let _g = serial();
    let dir = scratch("same-json");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &[]);
    let l = std::net::TcpListener::bind("[::1]:0").unwrap();
    let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 3", "same-json-marker"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    let port = l.local_addr().unwrap().port();
    type Pick = Box<dyn Fn(&serde_json::Value) -> bool>;
    let picks: Vec<(&str, Pick)> = vec![
        ("started", Box::new(|e| e["agent"]["state"] == "started")),
        (
            "exec",
            Box::new(move |e| e["kind"] == "exec" && e["process"]["pid"] == pid),
        ),
        (
            "exit",
            Box::new(move |e| e["kind"] == "exit" && e["process"]["pid"] == pid),
        ),
        (
            "listen",
            Box::new(move |e| e["kind"] == "listen" && e["network"]["local"]["port"] == port),
        ),
    ];
    for (what, pick) in &picks {
        let printed = agent.wait_for(what, Duration::from_secs(30), pick);
        let mut written = eventually(what, Duration::from_secs(30), || {
            lines(&col.output)
                .into_iter()
                .find(|e| pick(e) && e["time"] == printed["time"])
        });
        let delivery = written
            .as_object_mut()
            .unwrap()
            .remove("delivery")
            .expect("collector lines carry delivery");
        assert_eq!(delivery["node_id"], printed["node"], "{what}");
        assert_eq!(
            written, printed,
            "{what}: collector line differs from the agent's"
        );
    }
    assert_eq!(
        agent.wait_for("exit", Duration::from_secs(5), &picks[2].1)["exit"]["code"],
        3
    );
    agent.stop();
}

/// Read from `s` until the server closes the connection; true when it
/// did (EOF or reset) within `wait`.
/// The body of `GET path` on 127.0.0.1:`port`, sent from `source` (a
/// loopback address: every 127/8 address is this host's); None when the
/// server closes the connection first.
fn get_from(source: &str, port: u16, path: &str) -> Option<String> {
    let s = rt().block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(format!("{source}:0").parse().ok()?).ok()?;
        let addr = format!("127.0.0.1:{port}").parse().ok()?;
        sock.connect(addr).await.ok()?.into_std().ok()
    })?;
    s.set_nonblocking(false).ok()?;
    let mut s = s;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn closed_by_server(s: &mut std::net::TcpStream, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK literal header fields without indexing (names and values under
/// 127 bytes).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in headers {
        b.push(0);
        b.push(n.len() as u8);
        b.extend(n.as_bytes());
        b.push(v.len() as u8);
        b.extend(v.as_bytes());
    }
    b
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn a_client_cannot_hold_streams_or_connections_for_ever() {
    let _g = serial();
    let dir = scratch("limits");
    let metrics = free_port();
    let col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &[
            "--max-streams-per-ip",
            "2",
            "--idle-timeout",
            "2",
            "--keepalive-interval",
            "1",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    rt().block_on(async {
        // Two streams held open from 127.0.0.1, each with a batch acked.
        let mut held = Vec::new();
        for (i, node) in ["lim-1", "lim-2"].into_iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(4);
            let mut c = CollectorClient::new(plain(col.port).await);
            let mut acks = c
                .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            tx.send(batch(node, 1, vec![exec_event(node, "held")]))
                .await
                .unwrap();
            assert_eq!(
                acks.next().await.unwrap().unwrap().sequence,
                1,
                "stream {i}"
            );
            held.push((tx, acks));
        }
        let third = || async {
            publish(
                plain(col.port).await,
                None,
                vec![batch("lim-3", 1, vec![exec_event("lim-3", "third")])],
            )
            .await
        };
        let err = third().await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(
            err.message(),
            "peer address 127.0.0.1 already has 2 streams open, the most allowed \
             (--max-streams-per-ip); close one or raise --max-streams-per-ip"
        );
        // One ends: its place is free again.
        held.pop();
        let mut tries = 0;
        let acks = loop {
            match third().await {
                Ok(a) => break a,
                Err(e) if tries < 100 && e.code() == Code::ResourceExhausted => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("after a stream ended: {e:?}"),
            }
        };
        assert_eq!(acks[0].sequence, 1);
    });

    let wait = Duration::from_secs(60);
    let connect = || std::net::TcpStream::connect(("127.0.0.1", col.port)).unwrap();
    // Connects and sends nothing.
    let mut silent = connect();
    // Half of the HTTP/2 preface.
    let mut half = connect();
    half.write_all(&H2_PREFACE[..10]).unwrap();
    // A whole preface and SETTINGS, a Publish call's headers, then five
    // bytes of a 1000-byte message, and nothing more (no ping answered).
    let mut stalled = connect();
    let mut msg = H2_PREFACE.to_vec();
    msg.extend(h2_frame(4, 0, 0, &[]));
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/spyglass.v1.Collector/Publish"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    msg.extend(h2_frame(1, 4, 1, &headers));
    msg.extend(h2_frame(0, 0, 1, &[0, 0, 0, 3, 0xe8]));
    stalled.write_all(&msg).unwrap();
    for (what, s) in [
        ("silent", &mut silent),
        ("half preface", &mut half),
        ("stalled message", &mut stalled),
    ] {
        assert!(
            closed_by_server(s, wait),
            "{what}: connection still open after {wait:?}"
        );
    }

    // The metrics endpoint: half a request line.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    assert!(
        closed_by_server(&mut slow, wait),
        "metrics: half a request line held"
    );
    // and connections beyond the limit from one address (8) are closed
    // at once, while another address (the kubelet's probes) is served
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap())
        .collect();
    let mut over = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    assert!(
        closed_by_server(&mut over, wait),
        "metrics: a 9th connection from one address kept"
    );
    assert_eq!(
        get_from("127.0.0.2", metrics, "/healthz").as_deref(),
        Some("ok\n"),
        "another address is served while one holds its slots"
    );
    drop(idle);
    // (the server frees the idle connections' places as it sees them
    // close: until then a new one may be closed at once)
    eventually("metrics served again", wait, || {
        // until the closed connections' places are freed, a new one may
        // be closed (reset) at accept: try again
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        (text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok\n")).then_some(())
    });
    // the collector still serves agents
    rt().block_on(async {
        let acks = publish(
            plain(col.port).await,
            None,
            vec![batch("lim-4", 1, vec![exec_event("lim-4", "after")])],
        )
        .await
        .unwrap();
        assert_eq!(acks[0].sequence, 1);
    });
}

#[test]
fn a_node_inventing_stream_ids_cannot_grow_the_dedupe_state() {
    let _g = serial();
    let dir = scratch("invented-streams");
    let metrics = free_port();
    let mut col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let stdout = run_python_client_with(&dir, "hostile.py", col.port, &["streams", "2000"]);
    // the last stream is still known: its batch again is a duplicate
    assert_eq!(stdout.trim(), "streams: acked 2001 duplicates 1");
    let (_, body) = http_get(metrics, "/metrics");
    col.stop();
    let text = std::fs::read_to_string(dir.join("out.jsonl.state")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kept = state
        .get("streams")
        .and_then(serde_json::Value::as_array)
        .map_or_else(
            || state.as_object().map_or(0, serde_json::Map::len),
            Vec::len,
        );
    assert_eq!(
        kept,
        16,
        "stream ids kept for one node ({} bytes of state)",
        text.len()
    );
    assert_eq!(
        state["streams"][15],
        serde_json::json!(["py-streams", "made-up-1999", 1]),
        "the one written last is kept"
    );
    assert_eq!(sample(&body, "spyglass_collector_dedupe_streams"), Some(16));
    assert_eq!(lines(&col.output).len(), 2000);
}

/// Each batch's share of the decode budget is given back once written:
/// a share the stream loop did not take from the decoder would stay
/// held. (Refusing a batch the budget cannot hold is a unit test of the
/// budget: no client can make the collector hold a batch here for long.)
#[test]
fn decoded_batches_give_their_memory_budget_back() {
    let _g = serial();
    let dir = scratch("decode-budget");
    let metrics = free_port();
    let mut col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--decode-budget-mib",
            "64",
            "--max-message-bytes",
            "2097152",
        ],
    );
    let stdout = run_python_client_with(&dir, "hostile.py", col.port, &["budget"]);
    for i in 0..3 {
        assert!(
            stdout.contains(&format!("budget-{i}: acked 1\n")),
            "{stdout}"
        );
    }
    let (_, body) = http_get(metrics, "/metrics");
    assert_eq!(
        sample(&body, "spyglass_collector_decode_budget_used_bytes"),
        Some(0)
    );
    assert_eq!(
        sample(&body, "spyglass_collector_decode_budget_refused_total"),
        Some(0)
    );
    col.stop();
    assert_eq!(lines(&col.output).len(), 120);
}

#[test]
fn a_budget_smaller_than_one_batch_is_refused_at_start() {
    let dir = scratch("decode-budget-small");
    let out = Command::new(bin("spyglass-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--decode-budget-mib",
            "64",
            "--output",
        ])
        .arg(dir.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--decode-budget-mib 64 cannot hold one batch of --max-message-bytes 8388608 (it may decode into 256 MiB)"),
        "{err}"
    );
}

#[test]
fn an_empty_or_torn_state_file_does_not_stop_the_collector() {
    let _g = serial();
    let dir = scratch("torn-state");
    let out = dir.join("out.jsonl");
    let send = |port: u16| {
        rt().block_on(async {
            let one = vec![batch("torn", 1, vec![exec_event("torn", "once")])];
            publish(plain(port).await, None, one).await.unwrap()
        })
    };
    let mut col = Collector::start(free_port(), &out, &[]);
    assert!(!send(col.port)[0].duplicate);
    col.stop();
    for (what, text) in [("empty", ""), ("torn", "{\"version\":2,\"streams\":[[\"to")] {
        std::fs::write(dir.join("out.jsonl.state"), text).unwrap();
        let log = dir.join(format!("{what}.log"));
        let port = free_port();
        let child = Command::new(bin("spyglass-collector"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--output")
            .arg(&out)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut col = Collector {
            child,
            port,
            output: out.clone(),
        };
        eventually(
            &format!("the collector to start on an {what} state file"),
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        let acks = send(port);
        assert!(
            acks[0].duplicate,
            "{what} state: the batch in the output was written again"
        );
        col.stop();
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("dedupe state file is empty or corrupt; ignoring it and rebuilding from the output file"),
            "{what}: {log}"
        );
    }
    assert_eq!(lines(&out).len(), 1);
}

/// A TCP connection to 127.0.0.1:`port` from `source` (a loopback
/// address), sending nothing.
fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    rt().block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let s = sock.connect(addr).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Connections are counted per client address before any authentication:
/// one address holding its share cannot lock other agents out (a global
/// cap alone let one client without a token take every connection).
#[test]
fn one_address_cannot_hold_every_connection() {
    let dir = scratch("collector-per-ip");
    let col = Collector::start(
        free_port(),
        &dir.join("out.jsonl"),
        &["--max-connections-per-ip", "3", "--token", "s3cret"],
    );
    let held: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1", col.port))
        .collect();
    let mut over = connect_from("127.0.0.1", col.port);
    let wait = Duration::from_secs(10);
    assert!(
        closed_by_server(&mut over, wait),
        "a fourth connection from one address was kept"
    );
    // another address still gets in (closed only by the idle timeout, 60 s)
    let mut other = connect_from("127.0.0.2", col.port);
    assert!(
        !closed_by_server(&mut other, Duration::from_secs(2)),
        "another address was refused while one held its connections"
    );
    drop(held);
}
