//! The read side: one declarative table per endpoint (its SELECT, the
//! filters it takes, how each column is shown), run with bound values.
use serde_json::{Map, Value};
use sqlx::{AnyPool, Row};

use spyglass_proto::model::Severity;

use super::filters::{self, conditions, Filter, FilterError};

/// How a column is shown in JSON.
#[derive(Clone, Copy, Debug)]
pub enum Col {
    Text,
    Int,
    /// 0/1 -> false/true.
    Flag,
    /// Unix ns -> RFC 3339.
    Time,
    /// Comma-joined text -> array.
    List,
    /// JSON text -> its value (`''` -> null).
    Json,
}

/// One read endpoint.
pub struct Endpoint {
    pub name: &'static str,
    /// SELECT ... FROM ... (with `WHERE TRUE` or real conditions, so the
    /// filters' conditions are appended with AND).
    select: &'static str,
    order: &'static str,
    pub filters: &'static [Filter],
    /// JSON path (`pod.name` nests) and kind, in SELECT order.
    columns: &'static [(&'static str, Col)],
}

/// Most rows one answer holds (`truncated` says when there were more).
pub const MAX_ROWS: usize = 10_000;
/// Rows an answer holds when the request does not say (`limit=N`, up
/// to [`MAX_ROWS`]): a screenful of tables for a person, an answer in
/// tens of milliseconds on a fleet of 100,000 containers.
pub const DEFAULT_ROWS: usize = 1_000;

/// The request's `limit=N` (1 to [`MAX_ROWS`]), else [`DEFAULT_ROWS`];
/// the other pairs are the endpoint's filters.
pub fn split_limit(
    pairs: &[(String, String)],
) -> Result<(usize, Vec<(String, String)>), FilterError> {
    let mut limit = None;
    let mut rest = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name != "limit" {
            rest.push((name.clone(), value.clone()));
            continue;
        }
        if limit.is_some() {
            return Err(FilterError::Twice { name: "limit" });
        }
        let n = value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ROWS).contains(n))
            .ok_or_else(|| FilterError::Bad {
                name: "limit",
                why: format!(
                    "{:?} is not a number of rows from 1 to {MAX_ROWS}",
                    value.chars().take(32).collect::<String>()
                ),
            })?;
        limit = Some(n);
    }
    Ok((limit.unwrap_or(DEFAULT_ROWS), rest))
}

const NODE: Filter = Filter::Text {
    name: "node",
    sql: "x.node = ?",
    check: None,
};
const NAMESPACE: Filter = Filter::Text {
    name: "namespace",
    sql: "(c.namespace = ? OR c.pod_namespace = ?)",
    check: None,
};
const CONTAINER: Filter = Filter::Text {
    name: "container",
    sql: "x.container_id = ?",
    check: None,
};

const WHO: &[(&str, Col)] = &[
    ("node", Col::Text),
    ("container.id", Col::Text),
    ("container.namespace", Col::Text),
    ("container.name", Col::Text),
    ("container.pod.name", Col::Text),
    ("container.pod.namespace", Col::Text),
];

pub const CONTAINERS: Endpoint = Endpoint {
    name: "containers",
    select: "SELECT x.node, x.id, x.namespace, x.name, x.runtime, x.pod_name, x.pod_namespace, \
        x.pod_uid, x.image_ref, x.image_digest, x.image_index_digest, x.image_config_digest, \
        x.attributed, x.uid, x.gid, x.user_namespace, x.privileged, x.capabilities, \
        x.host_network, x.host_pid, x.host_ipc, x.read_only_rootfs, x.no_new_privileges, \
        x.seccomp, x.created, x.first_seen, x.last_seen, x.exited, x.exit_code, x.pod_labels, \
        x.usage_at, x.cpu_percent, x.memory_bytes, x.memory_limit_bytes, x.pids, x.oom_kills \
        FROM containers x WHERE 1 = 1",
    order: "x.node, x.namespace, x.name, x.id",
    filters: &[
        Filter::Flag {
            name: "root",
            yes: "(x.uid = 0 AND x.user_namespace = 0)",
            no: "(x.uid <> 0 OR x.user_namespace = 1)",
        },
        Filter::Flag {
            name: "privileged",
            yes: "x.privileged = 1",
            no: "x.privileged = 0",
        },
        Filter::Flag {
            name: "exited",
            yes: "x.exited IS NOT NULL",
            no: "x.exited IS NULL",
        },
        NODE,
        Filter::Text {
            name: "namespace",
            sql: "(x.namespace = ? OR x.pod_namespace = ?)",
            check: None,
        },
        Filter::Text {
            name: "image",
            sql: "(x.image_digest = ? OR x.image_index_digest = ? OR x.image_config_digest = ?)",
            check: None,
        },
        Filter::Text {
            name: "id",
            sql: "x.id = ?",
            check: None,
        },
    ],
    columns: &[
        ("node", Col::Text),
        ("id", Col::Text),
        ("namespace", Col::Text),
        ("name", Col::Text),
        ("runtime", Col::Text),
        ("pod.name", Col::Text),
        ("pod.namespace", Col::Text),
        ("pod.uid", Col::Text),
        ("image.ref", Col::Text),
        ("image.digest", Col::Text),
        ("image.index_digest", Col::Text),
        ("image.config_digest", Col::Text),
        ("attributed", Col::Flag),
        ("posture.uid", Col::Int),
        ("posture.gid", Col::Int),
        ("posture.user_namespace", Col::Flag),
        ("posture.privileged", Col::Flag),
        ("posture.capabilities", Col::List),
        ("posture.host_network", Col::Flag),
        ("posture.host_pid", Col::Flag),
        ("posture.host_ipc", Col::Flag),
        ("posture.read_only_rootfs", Col::Flag),
        ("posture.no_new_privileges", Col::Flag),
        ("posture.seccomp", Col::Text),
        ("created", Col::Time),
        ("first_seen", Col::Time),
        ("last_seen", Col::Time),
        ("exited", Col::Time),
        ("exit_code", Col::Int),
        ("pod.labels", Col::Json),
        ("usage.at", Col::Time),
        ("usage.cpu_percent", Col::Int),
        ("usage.memory_bytes", Col::Int),
        ("usage.memory_limit_bytes", Col::Int),
        ("usage.pids", Col::Int),
        ("usage.oom_kills", Col::Int),
    ],
};

pub const PORTS: Endpoint = Endpoint {
    name: "ports",
    select: "SELECT x.node, x.container_id, c.namespace, c.name, c.pod_name, c.pod_namespace, \
        x.protocol, x.address, x.port, x.wildcard, c.host_network, x.declared, x.pid, x.exe, \
        x.since, x.last_seen FROM listeners x \
        LEFT JOIN containers c ON c.node = x.node AND c.id = x.container_id \
        WHERE x.closed IS NULL",
    order: "x.node, x.container_id, x.protocol, x.address, x.port",
    filters: &[
        Filter::Flag {
            name: "exposed",
            yes: "(x.wildcard = 1 OR c.host_network = 1)",
            no: "(x.wildcard = 0 AND (c.host_network IS NULL OR c.host_network = 0))",
        },
        NODE,
        CONTAINER,
        NAMESPACE,
    ],
    columns: &[
        ("node", Col::Text),
        ("container.id", Col::Text),
        ("container.namespace", Col::Text),
        ("container.name", Col::Text),
        ("container.pod.name", Col::Text),
        ("container.pod.namespace", Col::Text),
        ("protocol", Col::Text),
        ("address", Col::Text),
        ("port", Col::Int),
        ("wildcard", Col::Flag),
        ("host_network", Col::Flag),
        ("declared", Col::Flag),
        ("pid", Col::Int),
        ("exe", Col::Text),
        ("since", Col::Time),
        ("last_seen", Col::Time),
    ],
};

pub const EGRESS: Endpoint = Endpoint {
    name: "egress",
    select: "SELECT x.node, x.container_id, c.namespace, c.name, c.pod_name, c.pod_namespace, \
        x.protocol, x.address, x.port, x.internet, x.first_seen, x.last_seen, x.count \
        FROM egress x LEFT JOIN containers c ON c.node = x.node AND c.id = x.container_id \
        WHERE 1 = 1",
    order: "x.node, x.container_id, x.protocol, x.address, x.port",
    filters: &[
        Filter::Flag {
            name: "internet",
            yes: "x.internet = 1",
            no: "x.internet = 0",
        },
        NODE,
        CONTAINER,
        NAMESPACE,
    ],
    columns: &[
        ("protocol", Col::Text),
        ("address", Col::Text),
        ("port", Col::Int),
        ("internet", Col::Flag),
        ("first_seen", Col::Time),
        ("last_seen", Col::Time),
        ("count", Col::Int),
    ],
};

pub const IMAGES: Endpoint = Endpoint {
    name: "images",
    select: "SELECT x.digest, x.index_digest, x.config_digest, x.first_seen, x.last_seen, \
        (SELECT COUNT(*) FROM containers c WHERE c.image_digest = x.digest), \
        (SELECT COUNT(DISTINCT c.node) FROM containers c WHERE c.image_digest = x.digest), \
        (SELECT MIN(r.ref) FROM image_refs r WHERE r.digest = x.digest) \
        FROM images x WHERE 1 = 1",
    order: "x.digest",
    filters: &[Filter::Text {
        name: "digest",
        sql: "(x.digest = ? OR x.index_digest = ? OR x.config_digest = ?)",
        check: None,
    }],
    columns: &[
        ("digest", Col::Text),
        ("index_digest", Col::Text),
        ("config_digest", Col::Text),
        ("first_seen", Col::Time),
        ("last_seen", Col::Time),
        ("containers", Col::Int),
        ("nodes", Col::Int),
        ("ref", Col::Text),
    ],
};

pub const NODES: Endpoint = Endpoint {
    name: "nodes",
    select: "SELECT x.node, x.agent_version, x.kernel, x.first_seen, x.last_seen, x.connected, \
        x.lost, x.lag_ms, \
        (SELECT COUNT(*) FROM containers c WHERE c.node = x.node) FROM nodes x WHERE 1 = 1",
    order: "x.node",
    filters: &[
        Filter::Flag {
            name: "connected",
            yes: "x.connected = 1",
            no: "x.connected = 0",
        },
        NODE,
    ],
    columns: &[
        ("node", Col::Text),
        ("agent_version", Col::Text),
        ("kernel", Col::Text),
        ("first_seen", Col::Time),
        ("last_seen", Col::Time),
        ("connected", Col::Flag),
        ("lost", Col::Int),
        ("lag_ms", Col::Int),
        ("containers", Col::Int),
    ],
};

pub const FINDINGS: Endpoint = Endpoint {
    name: "findings",
    select: "SELECT x.node, x.container_id, c.namespace, c.name, c.pod_name, c.pod_namespace, \
        x.rule, x.severity, x.subject, x.summary, x.count, x.first_seen, x.last_seen, x.open \
        FROM findings x LEFT JOIN containers c ON c.node = x.node AND c.id = x.container_id \
        WHERE 1 = 1",
    order: "x.last_seen DESC, x.node, x.container_id, x.rule, x.subject",
    filters: &[
        Filter::Text {
            name: "rule",
            sql: "x.rule = ?",
            check: None,
        },
        Filter::Text {
            name: "severity",
            sql: "x.severity = ?",
            check: Some(filters::severity),
        },
        Filter::Flag {
            name: "open",
            yes: "x.open = 1",
            no: "x.open = 0",
        },
        NODE,
        NAMESPACE,
        CONTAINER,
    ],
    columns: &[
        ("rule", Col::Text),
        ("severity", Col::Text),
        ("subject", Col::Text),
        ("summary", Col::Text),
        ("count", Col::Int),
        ("first_seen", Col::Time),
        ("last_seen", Col::Time),
        ("open", Col::Flag),
    ],
};

/// The severity words of scanner reports, as `severity=` of `vulns`
/// takes them (at or above).
pub fn vuln_severity(v: &str) -> Result<(), String> {
    const WORDS: &[&str] = &["negligible", "low", "medium", "high", "critical"];
    if WORDS.contains(&v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not one of {}", WORDS.join(", ")))
    }
}

/// Which report describes which image (manifest digest): a report that
/// names a config digest describes the images of that config only (a
/// multi-platform index digest names every platform's image); one that
/// names none, the images of the manifest or index digests it names.
/// Equi-joins only, so both databases use their indexes.
macro_rules! report_images {
    () => {
        "SELECT i2.digest AS image, d.report AS report FROM images i2 \
            JOIN vuln_report_digests d ON d.kind = 'config' AND d.digest = i2.config_digest \
         UNION SELECT i2.digest, d.report FROM images i2 \
            JOIN vuln_report_digests d ON d.kind <> 'config' AND d.digest = i2.digest \
            WHERE NOT EXISTS (SELECT 1 FROM vuln_report_digests c \
                WHERE c.report = d.report AND c.kind = 'config') \
         UNION SELECT i2.digest, d.report FROM images i2 \
            JOIN vuln_report_digests d ON d.kind <> 'config' AND d.digest = i2.index_digest \
            WHERE NOT EXISTS (SELECT 1 FROM vuln_report_digests c \
                WHERE c.report = d.report AND c.kind = 'config')"
    };
}

/// Vulnerabilities of the fleet's images, from the scanner reports that
/// describe them ([`report_images!`]): one row per image,
/// vulnerability and package, with where the image runs now (counted
/// once per image in one grouped pass, not once per row: an image in
/// 10,000 containers with 1,000 vulnerabilities took over 10 s so).
pub const VULNS: Endpoint = Endpoint {
    name: "vulns",
    select: concat!(
        "SELECT i.digest, \
        (SELECT MIN(r.ref) FROM image_refs r WHERE r.digest = i.digest), \
        x.id, x.severity, x.kind, x.package, x.version, x.source_package, x.fixed_version, \
        x.purl, x.title, x.vex, x.report, COALESCE(r.containers, 0), COALESCE(r.nodes, 0) \
        FROM images i JOIN (",
        report_images!(),
        ") j ON j.image = i.digest \
        JOIN vulns x ON x.report = j.report \
        LEFT JOIN (SELECT c.image_digest AS digest, COUNT(*) AS containers, \
            COUNT(DISTINCT c.node) AS nodes FROM containers c WHERE c.exited IS NULL \
            GROUP BY c.image_digest) r ON r.digest = i.digest \
        WHERE 1 = 1"
    ),
    order: "x.severity_rank DESC, i.digest, x.id, x.package, x.version",
    filters: &[
        Filter::Text {
            name: "severity",
            sql: "x.severity_rank >= (CASE ? WHEN 'critical' THEN 5 WHEN 'high' THEN 4 \
                WHEN 'medium' THEN 3 WHEN 'low' THEN 2 WHEN 'negligible' THEN 1 ELSE 0 END)",
            check: Some(vuln_severity),
        },
        Filter::Flag {
            name: "fixable",
            yes: "x.fixed_version <> ''",
            no: "x.fixed_version = ''",
        },
        Filter::Flag {
            name: "running",
            yes: "COALESCE(r.containers, 0) > 0",
            no: "COALESCE(r.containers, 0) = 0",
        },
        Filter::Text {
            name: "image",
            sql: "(i.digest = ? OR i.index_digest = ? OR i.config_digest = ?)",
            check: None,
        },
        Filter::Text {
            name: "id",
            sql: "x.id = ?",
            check: None,
        },
        Filter::Text {
            name: "package",
            sql: "x.package = ?",
            check: None,
        },
        Filter::Text {
            name: "namespace",
            sql: "EXISTS (SELECT 1 FROM containers c WHERE c.image_digest = i.digest \
                AND c.exited IS NULL AND (c.namespace = ? OR c.pod_namespace = ?))",
            check: None,
        },
        Filter::Text {
            name: "node",
            sql: "EXISTS (SELECT 1 FROM containers c WHERE c.image_digest = i.digest \
                AND c.exited IS NULL AND c.node = ?)",
            check: None,
        },
    ],
    columns: &[
        ("image.digest", Col::Text),
        ("image.ref", Col::Text),
        ("id", Col::Text),
        ("severity", Col::Text),
        ("package.kind", Col::Text),
        ("package.name", Col::Text),
        ("package.version", Col::Text),
        ("package.source", Col::Text),
        ("fixed_version", Col::Text),
        ("package.purl", Col::Text),
        ("title", Col::Text),
        ("vex", Col::Text),
        ("report", Col::Text),
        ("running.containers", Col::Int),
        ("running.nodes", Col::Int),
    ],
};

/// The imported scanner reports.
pub const REPORTS: Endpoint = Endpoint {
    name: "reports",
    select: concat!(
        "SELECT x.name, x.format, x.imported, x.packages, x.vulnerabilities, \
        (SELECT MIN(d.digest) FROM vuln_report_digests d \
            WHERE d.report = x.name AND d.kind = 'config'), \
        (SELECT MIN(d.digest) FROM vuln_report_digests d \
            WHERE d.report = x.name AND d.kind = 'manifest'), \
        (SELECT COUNT(*) FROM (",
        report_images!(),
        ") j WHERE j.report = x.name) \
        FROM vuln_reports x WHERE 1 = 1"
    ),
    order: "x.name",
    filters: &[Filter::Text {
        name: "image",
        sql:
            "EXISTS (SELECT 1 FROM vuln_report_digests d WHERE d.report = x.name AND d.digest = ?)",
        check: None,
    }],
    columns: &[
        ("name", Col::Text),
        ("format", Col::Text),
        ("imported", Col::Time),
        ("packages", Col::Int),
        ("vulnerabilities", Col::Int),
        ("image.config_digest", Col::Text),
        ("image.manifest_digest", Col::Text),
        ("fleet_images", Col::Int),
    ],
};

pub const ENDPOINTS: &[&Endpoint] = &[
    &CONTAINERS,
    &PORTS,
    &EGRESS,
    &IMAGES,
    &NODES,
    &FINDINGS,
    &VULNS,
    &REPORTS,
];

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("reading the inventory ({endpoint}): {source}")]
    Store {
        endpoint: &'static str,
        source: sqlx::Error,
    },
}

/// The SQL an endpoint runs for these filters, and its bound values.
#[cfg(test)]
pub fn sql(
    ep: &Endpoint,
    pairs: &[(String, String)],
) -> Result<(String, Vec<String>), FilterError> {
    sql_limit(ep, pairs, MAX_ROWS)
}

/// [`sql`] for at most `limit` rows (it asks for one more, to tell
/// whether there were more).
fn sql_limit(
    ep: &Endpoint,
    pairs: &[(String, String)],
    limit: usize,
) -> Result<(String, Vec<String>), FilterError> {
    let c = conditions(ep.filters, pairs, 1)?;
    let mut text = ep.select.to_owned();
    for cond in &c.sql {
        text.push_str(" AND ");
        text.push_str(cond);
    }
    text.push_str(&format!(" ORDER BY {} LIMIT {}", ep.order, limit + 1));
    Ok((text, c.binds))
}

fn insert(obj: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_owned(), v);
        }
        Some((head, rest)) => {
            let inner = obj
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = inner {
                insert(m, rest, v);
            }
        }
    }
}

fn cell(row: &sqlx::any::AnyRow, i: usize, col: Col) -> Result<Value, sqlx::Error> {
    Ok(match col {
        Col::Text => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::from),
        Col::List => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, |s| {
                Value::from(
                    s.split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                )
            }),
        Col::Int => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::from),
        Col::Json => row
            .try_get::<Option<String>, _>(i)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null),
        Col::Flag => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, |v| Value::from(v != 0)),
        Col::Time => row.try_get::<Option<i64>, _>(i)?.map_or(Value::Null, |v| {
            Value::from(spyglass_proto::time::format_rfc3339(i128::from(v)))
        }),
    })
}

/// Columns a few endpoints prefix to their own: who owns the row.
fn columns(ep: &Endpoint) -> Vec<(&'static str, Col)> {
    let who = matches!(ep.name, "egress" | "findings" | "runaway");
    let mut cols = Vec::new();
    if who {
        cols.extend_from_slice(WHO);
    }
    cols.extend_from_slice(ep.columns);
    cols
}

/// Run an endpoint: its rows as JSON objects, and whether there were
/// more than its `limit` (default [`DEFAULT_ROWS`]).
pub async fn run(
    pool: &AnyPool,
    ep: &Endpoint,
    pairs: &[(String, String)],
) -> Result<(Vec<Value>, bool), QueryError> {
    let (limit, filters) = split_limit(pairs)?;
    run_limit(pool, ep, &filters, limit).await
}

/// [`run`] for at most `limit` rows (the web page shows fewer than an
/// API answer holds).
pub async fn run_limit(
    pool: &AnyPool,
    ep: &Endpoint,
    pairs: &[(String, String)],
    limit: usize,
) -> Result<(Vec<Value>, bool), QueryError> {
    let (text, binds) = sql_limit(ep, pairs, limit.min(MAX_ROWS))?;
    let mut q = sqlx::query(&text);
    for b in binds {
        q = q.bind(b);
    }
    let err = |source| QueryError::Store {
        endpoint: ep.name,
        source,
    };
    let rows = q.fetch_all(pool).await.map_err(err)?;
    let cols = columns(ep);
    let limit = limit.min(MAX_ROWS);
    let truncated = rows.len() > limit;
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for row in rows.iter().take(limit) {
        let mut obj = Map::new();
        for (i, (path, col)) in cols.iter().enumerate() {
            insert(&mut obj, path, cell(row, i, *col).map_err(err)?);
        }
        out.push(Value::Object(obj));
    }
    Ok((out, truncated))
}

// The web page's own questions (src/inventory/web.rs): the overview's
// counts, runaway processes and namespaces. Not API endpoints.

/// Rules whose open findings the overview lists as runaway processes
/// (docs/findings.md).
pub const RUNAWAY_RULES: &[&str] = &[
    "process.cpu_runaway",
    "process.fork_rate",
    "container.memory_near_limit",
    "container.oom_kill",
];

/// Open findings of [`RUNAWAY_RULES`], rows shaped as `findings`.
pub const RUNAWAY: Endpoint = Endpoint {
    name: "runaway",
    select: "SELECT x.node, x.container_id, c.namespace, c.name, c.pod_name, c.pod_namespace, \
        x.rule, x.severity, x.subject, x.summary, x.count, x.first_seen, x.last_seen, x.open \
        FROM findings x LEFT JOIN containers c ON c.node = x.node AND c.id = x.container_id \
        WHERE x.open = 1 AND x.rule IN ('process.cpu_runaway', 'process.fork_rate', \
        'container.memory_near_limit', 'container.oom_kill')",
    order: FINDINGS.order,
    filters: &[NODE],
    columns: FINDINGS.columns,
};

/// The overview's counts, for the whole fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub nodes: i64,
    pub connected: i64,
    /// Containers not exited.
    pub running: i64,
    pub exited: i64,
    /// Running as uid 0 without a user namespace.
    pub root: i64,
    pub privileged: i64,
    /// Open listeners on a wildcard address or in a host-network container
    /// (as `ports?exposed=true`).
    pub exposed: i64,
    /// `egress` rows to internet addresses, and the containers they are of.
    pub internet_destinations: i64,
    pub internet_containers: i64,
    pub images: i64,
    /// Open findings of [`RUNAWAY_RULES`].
    pub runaway: i64,
    /// Open findings per severity word, most severe first (every word).
    pub findings: Vec<(&'static str, i64)>,
}

/// One scan of `containers` for its four counts (they were four scans),
/// of the covering index `containers_counts` (migration 0004); exposed
/// listeners are the open wildcard ones (a partial index) and the others
/// of host-network containers (another).
const SUMMARY: &str = "SELECT \
    (SELECT COUNT(*) FROM nodes), \
    (SELECT COUNT(*) FROM nodes WHERE connected = 1), \
    cc.running, cc.exited, cc.root, cc.privileged, \
    (SELECT COUNT(*) FROM listeners WHERE closed IS NULL AND wildcard = 1) \
    + (SELECT COUNT(*) FROM containers c JOIN listeners x \
        ON x.node = c.node AND x.container_id = c.id \
        WHERE c.host_network = 1 AND x.closed IS NULL AND x.wildcard = 0), \
    (SELECT COUNT(*) FROM egress WHERE internet = 1), \
    (SELECT COUNT(*) FROM (SELECT DISTINCT node, container_id FROM egress WHERE internet = 1) t), \
    (SELECT COUNT(*) FROM images), \
    (SELECT COUNT(*) FROM findings WHERE open = 1 AND rule IN ('process.cpu_runaway', \
        'process.fork_rate', 'container.memory_near_limit', 'container.oom_kill')) \
    FROM (SELECT \
        COUNT(CASE WHEN exited IS NULL THEN 1 END) AS running, \
        COUNT(CASE WHEN exited IS NOT NULL THEN 1 END) AS exited, \
        COUNT(CASE WHEN exited IS NULL AND uid = 0 AND user_namespace = 0 THEN 1 END) AS root, \
        COUNT(CASE WHEN exited IS NULL AND privileged = 1 THEN 1 END) AS privileged \
        FROM containers) cc";

/// The overview's counts.
pub async fn summary(pool: &AnyPool) -> Result<Summary, QueryError> {
    let err = |source| QueryError::Store {
        endpoint: "summary",
        source,
    };
    let row = sqlx::query(SUMMARY).fetch_one(pool).await.map_err(err)?;
    let n = |i: usize| row.try_get::<i64, _>(i).map_err(err);
    let by_severity =
        sqlx::query("SELECT severity, COUNT(*) FROM findings WHERE open = 1 GROUP BY severity")
            .fetch_all(pool)
            .await
            .map_err(err)?;
    let mut findings: Vec<(&'static str, i64)> =
        Severity::WORDS.iter().rev().map(|w| (*w, 0)).collect();
    for r in &by_severity {
        let (word, count): (String, i64) = (r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?);
        if let Some(slot) = findings.iter_mut().find(|(w, _)| *w == word) {
            slot.1 += count;
        }
    }
    Ok(Summary {
        nodes: n(0)?,
        connected: n(1)?,
        running: n(2)?,
        exited: n(3)?,
        root: n(4)?,
        privileged: n(5)?,
        exposed: n(6)?,
        internet_destinations: n(7)?,
        internet_containers: n(8)?,
        images: n(9)?,
        runaway: n(10)?,
        findings,
    })
}

/// A namespace (containerd's or a pod's) and its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceCount {
    pub name: String,
    pub containers: i64,
    pub running: i64,
}

/// Namespaces, containerd's and pods' (a pod container counts in both),
/// with their container counts; at most `limit`, and whether there were
/// more.
pub async fn namespaces(
    pool: &AnyPool,
    limit: usize,
) -> Result<(Vec<NamespaceCount>, bool), QueryError> {
    let err = |source| QueryError::Store {
        endpoint: "namespaces",
        source,
    };
    // per pair, from the covering index `containers_counts`; the pairs
    // are few (namespaces times pod namespaces), folded here
    let rows = sqlx::query(
        "SELECT namespace, pod_namespace, COUNT(*), \
         COUNT(CASE WHEN exited IS NULL THEN 1 END) \
         FROM containers GROUP BY namespace, pod_namespace",
    )
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut pairs = Vec::with_capacity(rows.len());
    for r in &rows {
        pairs.push((
            r.try_get::<String, _>(0).map_err(err)?,
            r.try_get::<String, _>(1).map_err(err)?,
            r.try_get::<i64, _>(2).map_err(err)?,
            r.try_get::<i64, _>(3).map_err(err)?,
        ));
    }
    Ok(fold_namespaces(pairs, limit))
}

/// Counts per (containerd namespace, pod namespace) pair into counts
/// per namespace, in name order: a pod container counts in both of its
/// namespaces, once when they are the same; empty names are not
/// namespaces. At most `limit`, and whether there were more.
fn fold_namespaces(
    pairs: Vec<(String, String, i64, i64)>,
    limit: usize,
) -> (Vec<NamespaceCount>, bool) {
    let mut by_name: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for (ns, pod_ns, containers, running) in pairs {
        let distinct_pod_ns = pod_ns != ns;
        for name in [Some(ns), distinct_pod_ns.then_some(pod_ns)]
            .into_iter()
            .flatten()
            .filter(|n| !n.is_empty())
        {
            let slot = by_name.entry(name).or_default();
            slot.0 += containers;
            slot.1 += running;
        }
    }
    let more = by_name.len() > limit;
    let out = by_name
        .into_iter()
        .take(limit)
        .map(|(name, (containers, running))| NamespaceCount {
            name,
            containers,
            running,
        })
        .collect();
    (out, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_taken_out_of_the_filters_and_checked() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            split_limit(&p(&[("root", "true")])).unwrap(),
            (DEFAULT_ROWS, p(&[("root", "true")]))
        );
        assert_eq!(
            split_limit(&p(&[("limit", "10000"), ("node", "n1")])).unwrap(),
            (10_000, p(&[("node", "n1")]))
        );
        for bad in ["0", "10001", "-1", "ten", "1 OR 1=1"] {
            let e = split_limit(&p(&[("limit", bad)])).unwrap_err();
            assert!(e.to_string().contains("limit"), "{e}");
        }
        assert!(split_limit(&p(&[("limit", "5"), ("limit", "6")])).is_err());
    }

    #[test]
    fn every_endpoint_selects_as_many_columns_as_it_shows() {
        for ep in ENDPOINTS.iter().copied().chain([&RUNAWAY]) {
            let select = ep.select.split(" FROM ").next().unwrap();
            // subqueries hold their own FROM: count top-level commas
            let mut depth = 0;
            let mut commas = 0;
            for ch in ep.select[..].chars() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => commas += 1,
                    _ => {}
                }
            }
            let _ = select;
            assert_eq!(commas + 1, columns(ep).len(), "{}", ep.name);
        }
    }

    #[test]
    fn filters_append_bound_conditions() {
        let (text, binds) = sql(
            &CONTAINERS,
            &[
                ("root".into(), "true".into()),
                ("node".into(), "n'1".into()),
            ],
        )
        .unwrap();
        assert!(
            text.ends_with(
                "WHERE 1 = 1 AND (x.uid = 0 AND x.user_namespace = 0) AND x.node = $1 \
                 ORDER BY x.node, x.namespace, x.name, x.id LIMIT 10001"
            ),
            "{text}"
        );
        assert_eq!(binds, ["n'1"]);
    }

    #[test]
    fn namespaces_fold_pairs_counting_a_pod_container_in_both() {
        let pair = |ns: &str, pod: &str, c, r| (ns.to_owned(), pod.to_owned(), c, r);
        let (out, more) = fold_namespaces(
            vec![
                pair("k8s.io", "shop", 5, 4),
                pair("k8s.io", "kube-system", 3, 3),
                pair("k8s.io", "", 1, 0),
                pair("moby", "moby", 2, 2),
                pair("", "", 7, 7),
            ],
            10,
        );
        let got: Vec<(&str, i64, i64)> = out
            .iter()
            .map(|n| (n.name.as_str(), n.containers, n.running))
            .collect();
        assert_eq!(
            got,
            [
                ("k8s.io", 9, 7),
                ("kube-system", 3, 3),
                ("moby", 2, 2),
                ("shop", 5, 4)
            ]
        );
        assert!(!more);
        let (out, more) = fold_namespaces(vec![pair("a", "b", 1, 1)], 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "a");
        assert!(more);
    }

    #[test]
    fn runaway_rules_are_the_ones_counted_and_listed() {
        for rule in RUNAWAY_RULES {
            let quoted = format!("'{rule}'");
            assert!(RUNAWAY.select.contains(&quoted), "{rule}");
            assert!(SUMMARY.contains(&quoted), "{rule}");
        }
        assert_eq!(
            RUNAWAY.select.matches("'process.").count()
                + RUNAWAY.select.matches("'container.").count(),
            RUNAWAY_RULES.len()
        );
    }
}
