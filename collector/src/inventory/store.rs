//! The inventory database: opening it from `--store`, the versioned
//! migrations run at start, and writing one flush's rows in one
//! transaction. Every write is an upsert on the table's natural key with
//! bound values (never SQL built from input), so a batch an agent
//! resends writes the same rows again and creates no duplicates.
use std::{borrow::Cow, collections::HashMap, path::PathBuf, str::FromStr, time::Duration};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{Migration, MigrationType, Migrator},
    AnyPool, Executor,
};

use super::rows::{ContainerRow, Rows};

/// Where the inventory lives (`--store`). Its `Debug` hides a password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH`: an embedded SQLite database file.
    Sqlite(PathBuf),
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]` (or
    /// `postgresql://`): a PostgreSQL database several collectors share.
    Postgres(String),
    /// `none`: no inventory.
    None,
}

/// The accepted forms, for the messages that refuse a `--store`.
const FORMS: &str = "sqlite:PATH (an SQLite file, created if missing), \
    postgres://USER[:PASSWORD]@HOST[:PORT]/DB (or postgresql://; a database \
    several collectors share) or none";

impl StoreUrl {
    /// The URL without its password, for logs and messages.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            StoreUrl::Postgres(u) => redact(u),
            StoreUrl::None => "none".into(),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:secret@host/...` -> `scheme://user:***@host/...`:
/// everything between the first `:` of the user part and the last `@`
/// (a password may hold `/`, `?` or `@`; an `@` in the options hides
/// more than the password, never less).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.into();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.into(),
    }
}

/// `--store`'s parser for clap: its errors are this module's, whose
/// messages show a password as `***` (clap's own would print the value
/// whole).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreUrlParser;

impl clap::builder::TypedValueParser for StoreUrlParser {
    type Value = StoreUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreUrl, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                "--store is not UTF-8; give a URL\n",
            )
        })?;
        text.parse().map_err(|e: StoreError| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })
    }
}

/// Check a PostgreSQL URL's shape (no connection is made).
fn postgres_url(s: &str) -> Result<StoreUrl, StoreError> {
    let rest = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
        .ok_or_else(|| StoreError::Url {
            url: redact(s),
            why: "a PostgreSQL URL starts with postgres:// or postgresql://".into(),
        })?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() {
        return Err(StoreError::Url {
            url: redact(s),
            why: "no host".into(),
        });
    }
    sqlx::postgres::PgConnectOptions::from_str(s).map_err(|e| StoreError::Url {
        url: redact(s),
        why: e.to_string(),
    })?;
    Ok(StoreUrl::Postgres(s.into()))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--store {0:?}: expected {FORMS}")]
    Form(String),
    #[error("--store {url:?}: {why}; expected {FORMS}")]
    Url { url: String, why: String },
    #[error("--store sqlite:{0:?}: the path may not hold '?' or '#'; rename the file")]
    Path(String),
    #[error("cannot open the inventory store {url}: {source}; check --store")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate the inventory store {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("writing the inventory ({rows} rows): {source}")]
    Write { rows: usize, source: sqlx::Error },
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        if s == "none" {
            return Ok(StoreUrl::None);
        }
        if s.starts_with("postgres:") || s.starts_with("postgresql:") {
            return postgres_url(s);
        }
        let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        else {
            return Err(StoreError::Form(redact(s)));
        };
        if path.is_empty() || path.starts_with(':') {
            return Err(StoreError::Form(s.into()));
        }
        if path.contains(['?', '#']) {
            return Err(StoreError::Path(path.into()));
        }
        Ok(StoreUrl::Sqlite(path.into()))
    }
}

/// The versioned migrations, in order; never edit one that shipped: add
/// the next.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "inventory",
        include_str!("migrations/0001_inventory.sql"),
    ),
    (
        2,
        "node health pod labels",
        include_str!("migrations/0002_node_health_pod_labels.sql"),
    ),
    (
        3,
        "answer order",
        include_str!("migrations/0003_answer_order.sql"),
    ),
    (
        4,
        "overview indexes",
        include_str!("migrations/0004_overview_indexes.sql"),
    ),
    (
        5,
        "container usage",
        include_str!("migrations/0005_container_usage.sql"),
    ),
    (
        6,
        "vulnerability reports",
        include_str!("migrations/0006_vuln_reports.sql"),
    ),
];

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*d),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    // What `sqlx::migrate!` builds, without its proc macro.
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// How long a write or a query waits for a PostgreSQL connection before
/// it fails: an unreachable server fails them fast (the API answers 503)
/// instead of holding them for sqlx's default 30 s.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A PostgreSQL store's pool. It connects lazily: an unreachable server
/// does not stop the start (ingest never depends on the store); the
/// migrations run when the server is first reached ([`migrate`]).
pub fn open_postgres(url: &str) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let opts = AnyConnectOptions::from_str(url).map_err(|source| StoreError::Open {
        url: redact(url),
        source,
    })?;
    Ok(AnyPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // no JIT: the answers are short index reads, and compiling one
        // costs more than it runs (100-200 ms of a 1,000-node overview's
        // queries went to JIT inlining and optimisation)
        .after_connect(|conn, _| {
            Box::pin(async move { conn.execute("SET jit = off").await.map(drop) })
        })
        .connect_lazy_with(opts))
}

/// Run the migrations not yet applied. Several collectors may start
/// on one PostgreSQL at once: the migrator holds an advisory lock while
/// it runs, so one applies them and the others see them applied.
pub async fn migrate(pool: &AnyPool, url: &str) -> Result<(), StoreError> {
    migrator()
        .run(pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: redact(url),
            source,
        })
}

/// The database cannot be reached, or refuses this collector's
/// connection (network, TLS, pool timeout, server shutting down, too
/// many connections, authentication, missing database): worth trying
/// again later, with the changes kept.
pub fn unreachable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        E::Protocol(_) => true,
        E::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: admin or crash shutdown,
            // cannot connect now; 53300: too many connections; 28:
            // authorization; 3D000: no such database
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("28")
                || c == "53300"
                || c == "3D000"
        }),
        _ => false,
    }
}

/// Two writers met on the same rows (two collectors on one PostgreSQL):
/// a serialization failure, a deadlock, or a unique violation between
/// two inserts of one key. The transaction is rolled back whole, and
/// trying it again gives the same rows as if it had gone first.
fn race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().is_some_and(|c| matches!(c.as_ref(), "40001" | "40P01" | "23505")))
}

/// Why `e` happened, in words for the API and /readyz: a pool that
/// timed out says only that, so one direct connection to `url` is tried
/// to learn the cause (connection refused, unknown host, no such
/// database, ...).
pub async fn reason(url: Option<&str>, e: &StoreError) -> String {
    let timed_out = matches!(
        e,
        StoreError::Open {
            source: sqlx::Error::PoolTimedOut,
            ..
        } | StoreError::Write {
            source: sqlx::Error::PoolTimedOut,
            ..
        } | StoreError::Migrate {
            source: sqlx::migrate::MigrateError::Execute(sqlx::Error::PoolTimedOut),
            ..
        }
    );
    let Some(url) = url.filter(|_| timed_out) else {
        return e.to_string();
    };
    use sqlx::Connection;
    let direct = tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::AnyConnection::connect(url)).await;
    match direct {
        Ok(Err(cause)) => format!("cannot connect to {}: {cause}", redact(url)),
        Err(_) => format!(
            "cannot connect to {}: no answer within {} s",
            redact(url),
            ACQUIRE_TIMEOUT.as_secs()
        ),
        Ok(Ok(conn)) => {
            drop(conn.close().await);
            e.to_string()
        }
    }
}

impl StoreError {
    /// See [`unreachable`].
    pub fn unreachable(&self) -> bool {
        use sqlx::migrate::MigrateError as M;
        match self {
            StoreError::Open { source, .. } | StoreError::Write { source, .. } => {
                unreachable(source)
            }
            StoreError::Migrate {
                source: M::Execute(e) | M::ExecuteMigration(e, _),
                ..
            } => unreachable(e),
            _ => false,
        }
    }
}

/// Open the store (creating an SQLite file) and run its migrations.
pub async fn open(path: &std::path::Path) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let opts = AnyConnectOptions::from_str(&url).map_err(|source| StoreError::Open {
        url: url.clone(),
        source,
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        // the store is a view rebuilt from the events, which are durable
        // in the output: no fsync per transaction
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                // reads of a large fleet's answers through the page
                // cache's mapping, not a pread and a copy per page
                // (shared page cache, not the collector's own memory),
                // and 16 MiB of page cache per connection
                conn.execute("PRAGMA mmap_size = 268435456").await?;
                conn.execute("PRAGMA cache_size = -16384").await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| StoreError::Open {
            url: url.clone(),
            source,
        })?;
    // readers do not wait for the writer
    pool.execute("PRAGMA journal_mode = WAL")
        .await
        .map_err(|source| StoreError::Open {
            url: url.clone(),
            source,
        })?;
    migrator()
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate { url, source })?;
    Ok(pool)
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

const NODE: &str = "INSERT INTO nodes (node, agent_version, kernel, first_seen, last_seen, connected, lost, lag_ms) \
    VALUES ($1, COALESCE($2, ''), COALESCE($3, ''), $4, $5, COALESCE($6, 0), COALESCE($7, 0), $8) \
    ON CONFLICT (node) DO UPDATE SET \
    agent_version = COALESCE($2, nodes.agent_version), \
    kernel = COALESCE($3, nodes.kernel), \
    first_seen = CASE WHEN excluded.first_seen < nodes.first_seen THEN excluded.first_seen ELSE nodes.first_seen END, \
    last_seen = CASE WHEN excluded.last_seen > nodes.last_seen THEN excluded.last_seen ELSE nodes.last_seen END, \
    connected = COALESCE($6, nodes.connected), \
    lost = COALESCE($7, nodes.lost), \
    lag_ms = COALESCE($8, nodes.lag_ms)";

const CONTAINER_TIMES: &str = "INSERT INTO containers (node, id, first_seen, last_seen) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (node, id) DO UPDATE SET \
    first_seen = CASE WHEN excluded.first_seen < containers.first_seen THEN excluded.first_seen ELSE containers.first_seen END, \
    last_seen = CASE WHEN excluded.last_seen > containers.last_seen THEN excluded.last_seen ELSE containers.last_seen END";

const CONTAINER: &str = "INSERT INTO containers (node, id, namespace, name, runtime, \
    pod_name, pod_namespace, pod_uid, image_ref, image_digest, image_index_digest, \
    image_config_digest, attributed, uid, gid, user_namespace, privileged, capabilities, \
    host_network, host_pid, host_ipc, read_only_rootfs, no_new_privileges, seccomp, created, \
    first_seen, last_seen, pod_labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, \
    $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27) \
    ON CONFLICT (node, id) DO UPDATE SET namespace = excluded.namespace, name = excluded.name, \
    runtime = excluded.runtime, pod_name = excluded.pod_name, \
    pod_namespace = excluded.pod_namespace, pod_uid = excluded.pod_uid, \
    image_ref = excluded.image_ref, image_digest = excluded.image_digest, \
    image_index_digest = excluded.image_index_digest, \
    image_config_digest = excluded.image_config_digest, attributed = 1, uid = excluded.uid, \
    gid = excluded.gid, user_namespace = excluded.user_namespace, \
    privileged = excluded.privileged, capabilities = excluded.capabilities, \
    host_network = excluded.host_network, host_pid = excluded.host_pid, \
    host_ipc = excluded.host_ipc, read_only_rootfs = excluded.read_only_rootfs, \
    no_new_privileges = excluded.no_new_privileges, seccomp = excluded.seccomp, \
    created = excluded.created, pod_labels = excluded.pod_labels, \
    first_seen = CASE WHEN excluded.first_seen < containers.first_seen THEN excluded.first_seen ELSE containers.first_seen END, \
    last_seen = CASE WHEN excluded.last_seen > containers.last_seen THEN excluded.last_seen ELSE containers.last_seen END";

/// A container's resource sample, unless the row holds a later one
/// (two collectors, or a resent batch).
const USAGE: &str = "UPDATE containers SET usage_at = $3, cpu_percent = $4, memory_bytes = $5, \
    memory_limit_bytes = $6, pids = $7, oom_kills = $8 \
    WHERE node = $1 AND id = $2 AND (usage_at IS NULL OR usage_at < $3)";

const LISTENER: &str = "INSERT INTO listeners (node, container_id, protocol, address, port, \
    wildcard, declared, pid, exe, since, last_seen) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
    ON CONFLICT (node, container_id, protocol, address, port) DO UPDATE SET \
    wildcard = excluded.wildcard, declared = excluded.declared, pid = excluded.pid, \
    exe = excluded.exe, \
    closed = CASE WHEN listeners.closed >= excluded.since THEN listeners.closed ELSE NULL END, \
    since = CASE WHEN excluded.since < listeners.since THEN excluded.since ELSE listeners.since END, \
    last_seen = CASE WHEN excluded.last_seen > listeners.last_seen THEN excluded.last_seen ELSE listeners.last_seen END";

const CLOSE: &str = "UPDATE listeners SET closed = $1 WHERE node = $2 AND container_id = $3 \
    AND protocol = $4 AND address = $5 AND port = $6 AND last_seen <= $1";

const EGRESS: &str = "INSERT INTO egress (node, container_id, protocol, address, port, \
    internet, first_seen, last_seen, count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (node, container_id, protocol, address, port) DO UPDATE SET \
    internet = excluded.internet, count = egress.count + excluded.count, \
    first_seen = CASE WHEN excluded.first_seen < egress.first_seen THEN excluded.first_seen ELSE egress.first_seen END, \
    last_seen = CASE WHEN excluded.last_seen > egress.last_seen THEN excluded.last_seen ELSE egress.last_seen END";

const IMAGE: &str = "INSERT INTO images (digest, index_digest, config_digest, first_seen, last_seen) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO UPDATE SET \
    index_digest = CASE WHEN excluded.index_digest <> '' THEN excluded.index_digest ELSE images.index_digest END, \
    config_digest = CASE WHEN excluded.config_digest <> '' THEN excluded.config_digest ELSE images.config_digest END, \
    last_seen = CASE WHEN excluded.last_seen > images.last_seen THEN excluded.last_seen ELSE images.last_seen END";

const IMAGE_REF: &str =
    "INSERT INTO image_refs (digest, ref) VALUES ($1, $2) ON CONFLICT (digest, ref) DO NOTHING";

const FINDING: &str = "INSERT INTO findings (node, container_id, rule, subject, severity, \
    summary, count, first_seen, last_seen, open) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
    ON CONFLICT (node, container_id, rule, subject) DO UPDATE SET \
    count = findings.count + excluded.count, \
    first_seen = CASE WHEN excluded.first_seen < findings.first_seen THEN excluded.first_seen ELSE findings.first_seen END, \
    severity = CASE WHEN excluded.last_seen >= findings.last_seen THEN excluded.severity ELSE findings.severity END, \
    summary = CASE WHEN excluded.last_seen >= findings.last_seen THEN excluded.summary ELSE findings.summary END, \
    open = CASE WHEN excluded.last_seen >= findings.last_seen THEN excluded.open ELSE findings.open END, \
    last_seen = CASE WHEN excluded.last_seen > findings.last_seen THEN excluded.last_seen ELSE findings.last_seen END";

const REOPEN: &str = "UPDATE containers SET exited = NULL, exit_code = NULL \
    WHERE node = $1 AND id = $2 AND (exited IS NULL OR exited <= $3)";

const EXITED: &str = "UPDATE containers SET exited = $3, exit_code = COALESCE($4, exit_code) \
    WHERE node = $1 AND id = $2";

const DELETED: &str = "UPDATE containers SET exited = COALESCE(exited, $3), \
    exit_code = COALESCE(exit_code, $4) WHERE node = $1 AND id = $2";

const CLOSE_ALL: &str = "UPDATE listeners SET closed = $3 WHERE node = $1 \
    AND container_id = $2 AND closed IS NULL AND last_seen <= $3";

/// The open findings of a container that ended: nothing of it runs any
/// more (they would count in the overview for ever, and retention keeps
/// open findings).
const CLOSE_FINDINGS: &str = "UPDATE findings SET open = 0 WHERE node = $1 \
    AND container_id = $2 AND open = 1 AND last_seen <= $3";

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// A table's rows in key order: two collectors writing overlapping rows
/// (an image both see, a node during a failover) lock them in the same
/// order, so they wait for each other instead of deadlocking.
fn sorted<K: Ord, V>(m: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

async fn write_nodes(tx: &mut Tx<'_>, rows: &Rows) -> Result<(), sqlx::Error> {
    for (node, r) in sorted(&rows.nodes) {
        sqlx::query(NODE)
            .bind(node)
            .bind(r.agent_version.clone())
            .bind(r.kernel.clone())
            .bind(r.first_seen)
            .bind(r.last_seen)
            .bind(r.connected.map(flag))
            .bind(r.lost.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
            .bind(r.lag_ms)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn write_containers(tx: &mut Tx<'_>, rows: &Rows) -> Result<(), sqlx::Error> {
    for ((node, id), r) in sorted(&rows.containers) {
        write_container(tx, node, id, r).await?;
        if let Some(u) = &r.usage {
            let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            sqlx::query(USAGE)
                .bind(node)
                .bind(id)
                .bind(u.at)
                .bind(i64::from(u.cpu_percent))
                .bind(u.memory_bytes.map(big))
                .bind(u.memory_limit_bytes.map(big))
                .bind(u.pids.map(big))
                .bind(u.oom_kills.map(big))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// One container's row: its times, and its metadata when it carries it.
async fn write_container(
    tx: &mut Tx<'_>,
    node: &str,
    id: &str,
    r: &ContainerRow,
) -> Result<(), sqlx::Error> {
    let meta = r.meta.as_ref().and_then(|c| c.meta.clone().map(|m| (c, m)));
    let Some((c, m)) = meta else {
        sqlx::query(CONTAINER_TIMES)
            .bind(node)
            .bind(id)
            .bind(r.first_seen)
            .bind(r.last_seen)
            .execute(&mut **tx)
            .await?;
        return Ok(());
    };
    let pod = c.pod.clone().unwrap_or_default();
    // a JSON object ('' when the container is in no pod)
    let labels = if c.pod.is_some() {
        serde_json::to_string(&pod.labels).unwrap_or_default()
    } else {
        String::new()
    };
    let p = m.posture.clone();
    let pf = |f: fn(&spyglass_proto::model::Posture) -> bool| p.as_ref().map(|p| flag(f(p)));
    sqlx::query(CONTAINER)
        .bind(node)
        .bind(id)
        .bind(m.namespace.clone())
        .bind(m.name.clone())
        .bind(c.runtime.as_str())
        .bind(pod.name)
        .bind(pod.namespace)
        .bind(pod.uid)
        .bind(m.image.reference.clone())
        .bind(m.image.digest.clone())
        .bind(m.image.index_digest.clone())
        .bind(m.image.config_digest.clone())
        .bind(p.as_ref().map(|p| i64::from(p.uid)))
        .bind(p.as_ref().map(|p| i64::from(p.gid)))
        .bind(pf(|p| p.user_namespace))
        .bind(pf(|p| p.privileged))
        .bind(p.as_ref().map(|p| p.capabilities.join(",")))
        .bind(pf(|p| p.host_network))
        .bind(pf(|p| p.host_pid))
        .bind(pf(|p| p.host_ipc))
        .bind(pf(|p| p.read_only_rootfs))
        .bind(pf(|p| p.no_new_privileges))
        .bind(p.as_ref().map(|p| p.seccomp.as_str()))
        .bind(m.created.map(|t| t.0))
        .bind(r.first_seen)
        .bind(r.last_seen)
        .bind(labels)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn write_sockets(tx: &mut Tx<'_>, rows: &Rows) -> Result<(), sqlx::Error> {
    for ((node, cid, proto, addr, port), r) in sorted(&rows.listeners) {
        sqlx::query(LISTENER)
            .bind(node)
            .bind(cid)
            .bind(*proto)
            .bind(addr)
            .bind(i64::from(*port))
            .bind(flag(r.wildcard))
            .bind(r.declared.map(flag))
            .bind(r.pid.map(i64::from))
            .bind(&r.exe)
            .bind(r.since)
            .bind(r.last_seen)
            .execute(&mut **tx)
            .await?;
    }
    for ((node, cid, proto, addr, port), at) in sorted(&rows.closed) {
        sqlx::query(CLOSE)
            .bind(*at)
            .bind(node)
            .bind(cid)
            .bind(*proto)
            .bind(addr)
            .bind(i64::from(*port))
            .execute(&mut **tx)
            .await?;
    }
    for ((node, cid, proto, addr, port), r) in sorted(&rows.egress) {
        sqlx::query(EGRESS)
            .bind(node)
            .bind(cid)
            .bind(*proto)
            .bind(addr)
            .bind(i64::from(*port))
            .bind(flag(r.internet))
            .bind(r.first_seen)
            .bind(r.last_seen)
            .bind(i64::try_from(r.count).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn write_images_and_findings(tx: &mut Tx<'_>, rows: &Rows) -> Result<(), sqlx::Error> {
    for (digest, r) in sorted(&rows.images) {
        sqlx::query(IMAGE)
            .bind(digest)
            .bind(&r.index_digest)
            .bind(&r.config_digest)
            .bind(r.first_seen)
            .bind(r.last_seen)
            .execute(&mut **tx)
            .await?;
    }
    for ((digest, reference), ()) in sorted(&rows.image_refs) {
        sqlx::query(IMAGE_REF)
            .bind(digest)
            .bind(reference)
            .execute(&mut **tx)
            .await?;
    }
    for ((node, cid, rule, subject), r) in sorted(&rows.findings) {
        sqlx::query(FINDING)
            .bind(node)
            .bind(cid)
            .bind(rule)
            .bind(subject)
            .bind(r.severity)
            .bind(&r.summary)
            .bind(i64::try_from(r.count).unwrap_or(i64::MAX))
            .bind(r.first_seen)
            .bind(r.last_seen)
            .bind(flag(r.open))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn write_lifecycle(tx: &mut Tx<'_>, rows: &Rows) -> Result<(), sqlx::Error> {
    use spyglass_proto::model::ContainerState as S;
    for ((node, id), (at, state, code)) in sorted(&rows.lifecycle) {
        let sql = match state {
            S::Created => REOPEN,
            S::Exited => EXITED,
            S::Deleted => DELETED,
            S::Unknown => continue,
        };
        let q = sqlx::query(sql).bind(node).bind(id).bind(*at);
        let q = if *state == S::Created {
            q
        } else {
            q.bind(code.map(i64::from))
        };
        q.execute(&mut **tx).await?;
        if *state != S::Created {
            for sql in [CLOSE_ALL, CLOSE_FINDINGS] {
                sqlx::query(sql)
                    .bind(node)
                    .bind(id)
                    .bind(*at)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn write_once(pool: &AnyPool, rows: &Rows) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    write_nodes(&mut tx, rows).await?;
    write_containers(&mut tx, rows).await?;
    write_sockets(&mut tx, rows).await?;
    write_images_and_findings(&mut tx, rows).await?;
    super::lineage::write(&mut tx, rows).await?;
    write_lifecycle(&mut tx, rows).await?;
    super::sweep::write(&mut tx, &rows.sweeps).await?;
    tx.commit().await
}

/// Times a transaction that met another writer ([`race`]) is tried.
const RACE_TRIES: u32 = 5;

/// Write one flush's rows in one transaction, tried again (up to
/// [`RACE_TRIES`] times, after a short pause) when it met another
/// collector's transaction on the same rows.
pub async fn write(pool: &AnyPool, rows: &Rows) -> Result<(), StoreError> {
    let mut tries = 1;
    loop {
        match write_once(pool, rows).await {
            Ok(()) => return Ok(()),
            Err(e) if race(&e) && tries < RACE_TRIES => {
                tracing::debug!(error = %e, tries, "inventory write met another writer; trying again");
                // spread the writers apart: 10, 20, 40, 80 ms plus a
                // few ms from the clock
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                        % 10,
                );
                tokio::time::sleep(Duration::from_millis((10 << (tries - 1)) + jitter)).await;
                tries += 1;
            }
            Err(source) => {
                return Err(StoreError::Write {
                    rows: rows.len(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_stays_out_of_debug_output() {
        let u: StoreUrl = "postgres://spyglass:hunter2@db:5432/fleet".parse().unwrap();
        let shown = format!("{u:?} {:?}", Some(&u));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("spyglass:***@db:5432/fleet"), "{shown}");
        // a password holding '/', '?' or '@'
        for url in [
            "postgres://u:s3cr/et@db/fleet",
            "postgres://u:a?b@db/fleet",
            "postgres://u:a@b@db/fleet",
        ] {
            assert_eq!(redact(url), "postgres://u:***@db/fleet", "{url}");
        }
        let e = "postgres://u:s3cr/et@db:port/x"
            .parse::<StoreUrl>()
            .unwrap_err();
        assert!(!e.to_string().contains("s3cr"), "{e}");
    }

    #[test]
    fn store_urls() {
        assert_eq!("none".parse::<StoreUrl>().unwrap(), StoreUrl::None);
        assert_eq!(
            "sqlite:/var/lib/s.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("/var/lib/s.db".into())
        );
        assert_eq!(
            "sqlite://rel.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("rel.db".into())
        );
        for bad in ["", "sqlite:", "mysql://x", "/tmp/x.db", "sqlite::memory:"] {
            let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(e.starts_with("--store"), "{bad}: {e}");
        }
        for good in [
            "postgres://u@h/db",
            "postgresql://u:pw@db.example:5433/inv?sslmode=require",
        ] {
            assert_eq!(
                good.parse::<StoreUrl>().unwrap(),
                StoreUrl::Postgres(good.into())
            );
        }
        for bad in [
            "postgres:/h/db",
            "postgres://u:pw@/db",
            "postgresql://h:port/db",
        ] {
            let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(
                e.starts_with("--store") && e.contains("postgres://USER[:PASSWORD]@HOST"),
                "{bad}: {e}"
            );
            assert!(!e.contains(":pw@"), "the password is not shown: {e}");
        }
        assert_eq!(
            "postgres://u:s3cret@h:5432/db?x=1"
                .parse::<StoreUrl>()
                .unwrap()
                .redacted(),
            "postgres://u:***@h:5432/db?x=1"
        );
        let e = "sqlite:/a?mode=ro"
            .parse::<StoreUrl>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not hold"), "{e}");
    }
}
