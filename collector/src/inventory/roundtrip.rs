//! Events -> changes -> rows -> a real SQLite file -> the read queries:
//! the whole inventory path but gRPC, and a resent batch.
use std::sync::Arc;

use spyglass_proto::model::{
    Container, ContainerMeta, ContainerState, Endpoint, Event, Family, Image, Kind, Lifecycle,
    NetOp, Network, Posture, Protocol, Runtime, Timestamp,
};

use super::{changes, query, store, tracker::Tracker};

fn container(id: &str, uid: u32) -> Container {
    let mut c = Container::from_cgroup(id.into(), Runtime::Containerd, None);
    c.fill(&Arc::new(ContainerMeta {
        id: id.into(),
        name: id.into(),
        namespace: "k8s.io".into(),
        image: Image {
            reference: "spyglass.test/busybox:1".into(),
            digest: "sha256:m".into(),
            ..Image::default()
        },
        posture: Some(Posture {
            uid,
            capabilities: vec!["CAP_CHOWN".into(), "CAP_NET_RAW".into()],
            ..Posture::default()
        }),
        ..ContainerMeta::default()
    }));
    c
}

fn net(c: &Container, kind: Kind, local: &str, remote: Option<&str>, t: i64) -> Event {
    let mut ev = Event::new(kind, Timestamp(t), "node-a".into());
    let ep = |s: &str| Endpoint::from(s.parse::<std::net::SocketAddr>().unwrap());
    ev.network = Some(Network {
        protocol: Protocol::Tcp,
        family: Family::Ipv4,
        op: if kind == Kind::Listen {
            NetOp::Listen
        } else {
            NetOp::Connect
        },
        local: ep(local),
        remote: remote.map(ep),
        outcome: None,
        wildcard: (kind == Kind::Listen).then(|| ep(local).addr.is_unspecified()),
    });
    ev.container = Some(c.clone());
    ev
}

fn events() -> Vec<Event> {
    let (root, user) = (container("root-c", 0), container("user-c", 1000));
    vec![
        net(&root, Kind::Listen, "0.0.0.0:8080", None, 10),
        net(&user, Kind::Listen, "127.0.0.1:9090", None, 11),
        net(
            &user,
            Kind::Connect,
            "10.0.0.2:5000",
            Some("93.184.216.34:443"),
            12,
        ),
        net(
            &user,
            Kind::Connect,
            "10.0.0.2:5001",
            Some("10.0.0.9:53"),
            13,
        ),
    ]
}

/// The rows `evs` make through `t` (what it already took as written
/// is not written again).
fn take_rows(t: &mut Tracker, evs: &[Event]) -> super::rows::Rows {
    let mut scratch = Vec::new();
    for ev in evs {
        scratch.clear();
        changes::derive(ev, super::updater::internet, &mut scratch);
        for c in &scratch {
            t.apply(c);
        }
    }
    t.take()
}

/// The rows `evs` make through a fresh collector's tracker.
pub(super) fn rows_of(evs: &[Event]) -> super::rows::Rows {
    take_rows(&mut Tracker::default(), evs)
}

/// A new SQLite store in a scratch directory named `name`.
pub(super) async fn scratch_store(name: &str) -> (std::path::PathBuf, sqlx::AnyPool) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = store::open(&dir.join("inv.db")).await.unwrap();
    (dir, pool)
}

pub(super) async fn get(
    pool: &sqlx::AnyPool,
    ep: &query::Endpoint,
    q: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let pairs: Vec<_> = q.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
    query::run(pool, ep, &pairs).await.unwrap().0
}

#[tokio::test(flavor = "current_thread")]
async fn events_become_rows_that_answer_the_questions_and_a_resend_adds_none() {
    let (dir, pool) = scratch_store("spyglass-inv").await;
    let evs = events();
    store::write(&pool, &rows_of(&evs)).await.unwrap();
    // a fresh collector (nothing in memory) given the same batch again
    store::write(&pool, &rows_of(&evs)).await.unwrap();

    let all = get(&pool, &query::CONTAINERS, &[]).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let root = get(&pool, &query::CONTAINERS, &[("root", "true")]).await;
    assert_eq!(root.len(), 1);
    assert_eq!(root[0]["id"], "root-c");
    assert_eq!(root[0]["posture"]["uid"], 0);
    assert_eq!(root[0]["posture"]["capabilities"][1], "CAP_NET_RAW");
    assert_eq!(root[0]["image"]["digest"], "sha256:m");
    assert_eq!(root[0]["first_seen"], "1970-01-01T00:00:00.000000010Z");

    let exposed = get(&pool, &query::PORTS, &[("exposed", "true")]).await;
    assert_eq!(exposed.len(), 1, "{exposed:?}");
    assert_eq!(
        (
            &exposed[0]["container"]["id"],
            &exposed[0]["port"],
            &exposed[0]["address"]
        ),
        (&"root-c".into(), &8080.into(), &"0.0.0.0".into())
    );
    assert_eq!(get(&pool, &query::PORTS, &[]).await.len(), 2);

    let internet = get(&pool, &query::EGRESS, &[("internet", "true")]).await;
    assert_eq!(internet.len(), 1, "{internet:?}");
    assert_eq!(internet[0]["address"], "93.184.216.34");
    assert_eq!(internet[0]["container"]["name"], "user-c");
    assert_eq!(
        get(&pool, &query::EGRESS, &[("internet", "false")])
            .await
            .len(),
        1
    );

    let images = get(&pool, &query::IMAGES, &[]).await;
    assert_eq!(images.len(), 1);
    assert_eq!(
        (
            &images[0]["containers"],
            &images[0]["nodes"],
            &images[0]["ref"]
        ),
        (&2.into(), &1.into(), &"spyglass.test/busybox:1".into())
    );
    let nodes = get(&pool, &query::NODES, &[]).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["containers"], 2);

    // the root container's listener closes: it leaves `ports`
    let root_c = container("root-c", 0);
    let close = net(&root_c, Kind::Close, "0.0.0.0:8080", None, 20);
    store::write(&pool, &rows_of(&[close])).await.unwrap();
    assert!(get(&pool, &query::PORTS, &[("exposed", "true")])
        .await
        .is_empty());
    assert_eq!(get(&pool, &query::PORTS, &[]).await.len(), 1);
    // the listen resent after its close (a batch the dedupe state missed)
    // does not reopen it
    let resent = net(&root_c, Kind::Listen, "0.0.0.0:8080", None, 10);
    store::write(&pool, &rows_of(&[resent])).await.unwrap();
    assert!(get(&pool, &query::PORTS, &[("exposed", "true")])
        .await
        .is_empty());

    // the user container exits: it shows as exited with its code, and
    // its listener leaves `ports`
    let mut exit = Event::new(Kind::Container, Timestamp(30), "node-a".into());
    exit.container = Some(container("user-c", 1000));
    exit.lifecycle = Some(Lifecycle {
        state: ContainerState::Exited,
        exit_code: Some(137),
        image: None,
    });
    store::write(&pool, &rows_of(&[exit])).await.unwrap();
    let gone = get(&pool, &query::CONTAINERS, &[("exited", "true")]).await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(
        (&gone[0]["id"], &gone[0]["exit_code"], &gone[0]["exited"]),
        (
            &"user-c".into(),
            &137.into(),
            &"1970-01-01T00:00:00.000000030Z".into()
        )
    );
    assert!(get(&pool, &query::PORTS, &[]).await.is_empty());
    assert_eq!(
        get(&pool, &query::CONTAINERS, &[("exited", "false")])
            .await
            .len(),
        1
    );

    // a filter value is a value, whatever it holds
    let evil = get(&pool, &query::CONTAINERS, &[("node", "x' OR '1'='1")]).await;
    assert!(evil.is_empty());
    let evil = get(
        &pool,
        &query::CONTAINERS,
        &[("namespace", "k8s.io'; DROP TABLE containers; --")],
    )
    .await;
    assert!(evil.is_empty());
    assert_eq!(get(&pool, &query::CONTAINERS, &[]).await.len(), 2);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A container of `namespace`, in a pod of `pod_ns` when not empty,
/// on the host's network or not.
fn placed(id: &str, uid: u32, pod_ns: &str, host_network: bool) -> Container {
    let mut c = container(id, uid);
    let mut meta = (**c.meta.as_ref().unwrap()).clone();
    meta.posture.as_mut().unwrap().host_network = host_network;
    if !pod_ns.is_empty() {
        meta.pod = Some(spyglass_proto::model::Pod {
            name: format!("{id}-pod"),
            namespace: pod_ns.into(),
            uid: format!("{id}-uid"),
            ..Default::default()
        });
    }
    c.pod = meta.pod.clone();
    c.meta = Some(Arc::new(meta));
    c
}

#[tokio::test(flavor = "current_thread")]
async fn the_overview_counts_agree_with_the_answers_they_summarise() {
    let (dir, pool) = scratch_store("spyglass-inv-sum").await;
    let root = placed("root-c", 0, "shop", false);
    let host = placed("host-c", 1000, "kube-system", true);
    let user = placed("user-c", 1000, "", false);
    let evs = vec![
        // exposed: a wildcard listener, and a loopback one on the host's
        // network; not exposed: a loopback one in its own network
        net(&root, Kind::Listen, "0.0.0.0:8080", None, 10),
        net(&host, Kind::Listen, "127.0.0.1:10250", None, 11),
        net(&user, Kind::Listen, "127.0.0.1:9090", None, 12),
    ];
    store::write(&pool, &rows_of(&evs)).await.unwrap();

    let exposed = get(&pool, &query::PORTS, &[("exposed", "true")]).await;
    let s = query::summary(&pool).await.unwrap();
    assert_eq!(exposed.len(), 2, "{exposed:?}");
    assert_eq!(s.exposed, 2, "{s:?}");
    assert_eq!((s.running, s.exited, s.root, s.privileged), (3, 0, 1, 0));

    // every container is in containerd's k8s.io; two also in a pod
    // namespace
    let (ns, more) = query::namespaces(&pool, 10).await.unwrap();
    let got: Vec<(&str, i64, i64)> = ns
        .iter()
        .map(|n| (n.name.as_str(), n.containers, n.running))
        .collect();
    assert_eq!(
        got,
        [("k8s.io", 3, 3), ("kube-system", 1, 1), ("shop", 1, 1)]
    );
    assert!(!more);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn sample(c: &Container, at: i64, memory: u64) -> Event {
    let mut ev = Event::new(Kind::Resources, Timestamp(at), "node-a".into());
    ev.container = Some(c.clone());
    ev.resources = Some(Box::new(spyglass_proto::model::Usage {
        window_ms: 2_000,
        cpu_percent: 150,
        memory_bytes: Some(memory),
        memory_limit_bytes: Some(1 << 30),
        pids: Some(4),
        oom_kills: Some(0),
        ..Default::default()
    }));
    ev
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_s_latest_resource_sample_is_kept_at_most_every_30_s() {
    let (dir, pool) = scratch_store("spyglass-inv-use").await;
    let c = container("busy-c", 1000);
    let s = 1_000_000_000;
    let mut t = Tracker::default();
    let mut flush = |evs: &[Event]| take_rows(&mut t, evs);
    // a container seen without a sample has none
    store::write(
        &pool,
        &flush(&[net(&c, Kind::Listen, "127.0.0.1:1", None, s)]),
    )
    .await
    .unwrap();
    let got = get(&pool, &query::CONTAINERS, &[]).await;
    assert_eq!(got[0]["usage"]["memory_bytes"], serde_json::Value::Null);
    // the first sample is written; one 10 s later is not
    store::write(&pool, &flush(&[sample(&c, 2 * s, 100)]))
        .await
        .unwrap();
    store::write(&pool, &flush(&[sample(&c, 12 * s, 200)]))
        .await
        .unwrap();
    let got = get(&pool, &query::CONTAINERS, &[]).await;
    let u = &got[0]["usage"];
    assert_eq!(
        (&u["memory_bytes"], &u["cpu_percent"], &u["pids"]),
        (&100.into(), &150.into(), &4.into())
    );
    assert_eq!(u["memory_limit_bytes"], 1 << 30);
    assert_eq!(u["at"], "1970-01-01T00:00:02.000000000Z");
    // 30 s after the written one, the latest is written
    store::write(&pool, &flush(&[sample(&c, 33 * s, 300)]))
        .await
        .unwrap();
    // an older sample (a resent batch, another collector) does not win
    store::write(&pool, &rows_of(&[sample(&c, 20 * s, 999)]))
        .await
        .unwrap();
    let got = get(&pool, &query::CONTAINERS, &[]).await;
    assert_eq!(got[0]["usage"]["memory_bytes"], 300);
    // a process's sample (it names the process) is not the container's
    let mut proc_sample = sample(&c, 70 * s, 5);
    proc_sample.process = Some(Default::default());
    assert!(changes::container_usage(&proc_sample).is_none());
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
