//! The sweep of a node whose agent (re)started: once its startup
//! snapshot is complete ([`super::restarts`]), what the store holds of
//! the node and the new agent did not re-announce has ended while no
//! agent watched (a listener whose process died, a container deleted):
//! open listeners are closed, running containers marked exited (no exit
//! code: nobody saw it), and the open findings of those containers
//! closed (their container is gone, nothing will resolve them).
//!
//! Runs last in the flush's transaction, after the flush's own rows (the
//! re-announcements) are written: a flush that fails sweeps nothing.
//! Portable SQL (SQLite and PostgreSQL), every value bound.
use tracing::info;

use super::rows::Sweep;

/// Listeners of the node open before the cutoff and not seen since.
const CLOSE_LISTENERS: &str = "UPDATE listeners SET closed = $2 \
    WHERE node = $1 AND closed IS NULL AND last_seen < $2";

/// Findings of containers this sweep ends (run before they are marked:
/// the same condition picks them).
const CLOSE_FINDINGS: &str = "UPDATE findings SET open = 0 \
    WHERE node = $1 AND open = 1 AND last_seen < $2 AND container_id IN \
    (SELECT id FROM containers WHERE node = $1 AND exited IS NULL AND last_seen < $2)";

/// Containers of the node running before the cutoff and not seen since.
const END_CONTAINERS: &str = "UPDATE containers SET exited = $2 \
    WHERE node = $1 AND exited IS NULL AND last_seen < $2";

/// What one sweep ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub listeners: u64,
    pub containers: u64,
    pub findings: u64,
}

async fn one(tx: &mut sqlx::Transaction<'_, sqlx::Any>, s: &Sweep) -> Result<Swept, sqlx::Error> {
    let mut out = Swept::default();
    let run = |sql| sqlx::query(sql).bind(s.node.as_str()).bind(s.cutoff);
    if s.listeners {
        out.listeners = run(CLOSE_LISTENERS)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    if s.containers {
        out.findings = run(CLOSE_FINDINGS)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        out.containers = run(END_CONTAINERS)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(out)
}

/// Run `sweeps` in order in the flush's transaction `tx`.
pub async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sweeps: &[Sweep],
) -> Result<(), sqlx::Error> {
    for s in sweeps {
        let swept = one(tx, s).await?;
        info!(
            node = %s.node,
            cutoff = s.cutoff,
            listeners = swept.listeners,
            containers = swept.containers,
            findings = swept.findings,
            "agent restarted: ending what its snapshot did not re-announce"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spyglass_proto::model::{
        AgentState, Container, ContainerMeta, ContainerState, Endpoint, Event, Family, FindingInfo,
        Image, Kind, Lifecycle, NetOp, Network, Protocol, Runtime, Severity, Timestamp,
    };

    use super::super::{changes, query, store, tracker::Tracker, updater};

    fn container(id: &str) -> Container {
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
            ..ContainerMeta::default()
        }));
        c
    }

    fn listen(id: Option<&str>, local: &str, t: i64, snapshot: bool) -> Event {
        let mut ev = Event::new(Kind::Listen, Timestamp(t), "node-a".into());
        let l = Endpoint::from(local.parse::<std::net::SocketAddr>().unwrap());
        ev.network = Some(Network {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            op: NetOp::Listen,
            local: l,
            remote: None,
            outcome: None,
            wildcard: Some(l.addr.is_unspecified()),
        });
        ev.container = id.map(container);
        ev.snapshot = snapshot;
        ev
    }

    fn lifecycle(id: &str, state: ContainerState, t: i64, snapshot: bool) -> Event {
        let mut ev = Event::new(Kind::Container, Timestamp(t), "node-a".into());
        ev.container = Some(container(id));
        ev.lifecycle = Some(Lifecycle {
            state,
            exit_code: None,
            image: None,
        });
        ev.snapshot = snapshot;
        ev
    }

    fn agent(state: AgentState, t: i64) -> Event {
        let mut ev = spyglass_proto::model::samples::agent();
        ev.node = "node-a".into();
        ev.time = Timestamp(t);
        let a = ev.agent.as_mut().unwrap();
        a.state = state;
        a.snapshot_containers = Some(1);
        ev
    }

    fn finding(id: &str, t: i64) -> Event {
        let mut ev = Event::new(Kind::Finding, Timestamp(t), "node-a".into());
        ev.container = Some(container(id));
        ev.finding = Some(Box::new(FindingInfo {
            rule_id: "process.cpu_runaway".into(),
            severity: Severity::High,
            mitre: None,
            summary: "spins".into(),
            subject: "pid 4 /bin/yes".into(),
            action: Default::default(),
            outcome: None,
            count: 1,
            resolved: false,
            restarts: None,
            first_seen: Timestamp(t),
            last_seen: Timestamp(t),
            evidence: vec![],
        }));
        ev
    }

    async fn write(pool: &sqlx::AnyPool, t: &mut Tracker, evs: &[Event]) {
        let mut scratch = Vec::new();
        for ev in evs {
            scratch.clear();
            changes::derive(ev, updater::internet, &mut scratch);
            for c in &scratch {
                t.apply(c);
            }
        }
        store::write(pool, &t.take()).await.unwrap();
    }

    async fn get(pool: &sqlx::AnyPool, ep: &query::Endpoint, q: &[(&str, &str)]) -> Vec<String> {
        let pairs: Vec<_> = q.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
        let rows = query::run(pool, ep, &pairs).await.unwrap().0;
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| match (r["id"].as_str(), r["port"].as_u64()) {
                (Some(id), _) => id.to_owned(),
                (None, Some(port)) => {
                    format!("{}:{port}", r["container"]["id"].as_str().unwrap_or(""))
                }
                _ => format!("{}/{}", r["rule"], r["open"]),
            })
            .collect();
        out.sort();
        out
    }

    /// One collector (one tracker) sees an agent's run, then its restart:
    /// what the new agent does not re-announce ends, what it does stays,
    /// though the tracker had it as written moments before.
    #[tokio::test(flavor = "current_thread")]
    async fn a_restarted_agent_s_snapshot_is_the_truth_for_its_node() {
        let dir = std::env::temp_dir().join(format!("spyglass-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pool = store::open(&dir.join("inv.db")).await.unwrap();
        let mut t = Tracker::default();
        use ContainerState::{Created, Deleted};
        // the first agent: two containers, each listening, one finding,
        // and the host's sshd
        write(
            &pool,
            &mut t,
            &[
                lifecycle("stays", Created, 10, false),
                lifecycle("gone", Created, 10, false),
                listen(Some("stays"), "0.0.0.0:8080", 11, false),
                listen(Some("gone"), "0.0.0.0:9090", 11, false),
                listen(None, "0.0.0.0:22", 11, false),
                listen(None, "127.0.0.1:25", 11, false),
                finding("gone", 12),
            ],
        )
        .await;
        let ports = get(&pool, &query::PORTS, &[]).await;
        assert_eq!(ports, [":22", ":25", "gone:9090", "stays:8080"]);
        // the agent stops; `gone` is deleted and the host's :25 closes
        // unseen; a new agent starts: snapshot (t 100), started,
        // containerd's listing, the marker
        write(
            &pool,
            &mut t,
            &[
                listen(Some("stays"), "0.0.0.0:8080", 100, true),
                listen(None, "0.0.0.0:22", 100, true),
                agent(AgentState::Started, 110),
                lifecycle("stays", Created, 120, true),
            ],
        )
        .await;
        // nothing ended before the marker
        assert_eq!(get(&pool, &query::PORTS, &[]).await.len(), 4);
        write(&pool, &mut t, &[agent(AgentState::SnapshotComplete, 130)]).await;
        assert_eq!(
            get(&pool, &query::PORTS, &[]).await,
            [":22", "stays:8080"],
            "what was re-announced stays open, the rest is closed"
        );
        assert_eq!(
            get(&pool, &query::CONTAINERS, &[("exited", "false")]).await,
            ["stays"]
        );
        let gone = query::run(
            &pool,
            &query::CONTAINERS,
            &[("exited".into(), "true".into())],
        )
        .await
        .unwrap()
        .0;
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(
            (&gone[0]["id"], &gone[0]["exited"], &gone[0]["exit_code"]),
            (
                &"gone".into(),
                &"1970-01-01T00:00:00.000000100Z".into(),
                &serde_json::Value::Null
            ),
            "ended at the snapshot, exit code unknown"
        );
        assert_eq!(
            get(&pool, &query::FINDINGS, &[]).await,
            ["\"process.cpu_runaway\"/false"],
            "the gone container's finding is closed"
        );
        // the listener `gone` had opens again later in a new container
        // under the same id: written, though the tracker had it
        write(
            &pool,
            &mut t,
            &[
                lifecycle("gone", Created, 200, false),
                listen(Some("gone"), "0.0.0.0:9090", 201, false),
            ],
        )
        .await;
        assert_eq!(
            get(&pool, &query::PORTS, &[]).await,
            [":22", "gone:9090", "stays:8080"]
        );
        // a deletion for a container the store never held adds no row
        write(&pool, &mut t, &[lifecycle("ghost", Deleted, 300, false)]).await;
        assert_eq!(get(&pool, &query::CONTAINERS, &[]).await, ["gone", "stays"]);
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
