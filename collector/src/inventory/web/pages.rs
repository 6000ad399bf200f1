//! The pages, rendered from the read API's rows (the same JSON shapes as
//! `/api/v1/`): pure functions from data to HTML, so a test can feed
//! them hostile rows.
use serde_json::Value;

use super::html::{self, short_time, Cell, Page};
use crate::inventory::query::{NamespaceCount, Summary};

/// Rows of one query, and whether there were more than shown.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    pub rows: Vec<Value>,
    pub more: bool,
}

impl From<(Vec<Value>, bool)> for Listed {
    fn from((rows, more): (Vec<Value>, bool)) -> Listed {
        Listed { rows, more }
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or("")
}

fn flag(v: &Value, path: &[&str]) -> Option<bool> {
    path.iter().fold(v, |v, k| &v[*k]).as_bool()
}

fn int(v: &Value, path: &[&str]) -> Cell {
    match path.iter().fold(v, |v, k| &v[*k]).as_i64() {
        Some(n) => Cell::Num(n),
        None => Cell::Text(String::new()),
    }
}

/// Memory in MiB, one decimal; empty when unsampled.
fn mib(v: &Value, key: &str) -> Cell {
    Cell::Text(v["usage"][key].as_u64().map_or(String::new(), |b| {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    }))
}

/// The latest sampled CPU, percent of one core; empty when unsampled.
fn cpu(v: &Value) -> Cell {
    Cell::Text(
        v["usage"]["cpu_percent"]
            .as_u64()
            .map_or(String::new(), |p| format!("{p}%")),
    )
}

fn time(v: &Value, key: &str) -> Cell {
    Cell::Text(short_time(text(v, &[key])))
}

/// How a container is called: NAMESPACE/POD for pod containers, else its
/// name, else its id's first 12 characters.
pub fn workload(c: &Value) -> String {
    let (pod, pod_ns) = (text(c, &["pod", "name"]), text(c, &["pod", "namespace"]));
    if !pod.is_empty() {
        let name = text(c, &["name"]);
        return format!("{pod_ns}/{pod} {name}").trim_end().to_owned();
    }
    let name = text(c, &["name"]);
    if !name.is_empty() {
        return name.to_owned();
    }
    text(c, &["id"]).chars().take(12).collect()
}

/// The container a row is about (`c` is its container object), linked;
/// `host` for host rows.
fn who(node: &str, c: &Value) -> Cell {
    let id = text(c, &["id"]);
    if id.is_empty() {
        return Cell::Link(html::node(node), format!("host of {node}"));
    }
    Cell::Link(html::container(node, id), workload(c))
}

fn node_cell(node: &str) -> Cell {
    Cell::Link(html::node(node), node.to_owned())
}

fn namespace_cell(c: &Value) -> Cell {
    let mut links = Vec::new();
    for ns in [text(c, &["namespace"]), text(c, &["pod", "namespace"])] {
        if !ns.is_empty() && !links.iter().any(|(_, n): &(_, String)| n == ns) {
            links.push((html::namespace(ns), ns.to_owned()));
        }
    }
    if links.is_empty() {
        return Cell::Text(String::new());
    }
    Cell::Links(links)
}

fn image_cell(c: &Value) -> Cell {
    let digest = text(c, &["image", "digest"]);
    let shown = match text(c, &["image", "ref"]) {
        "" => digest.to_owned(),
        r => r.to_owned(),
    };
    if digest.is_empty() {
        return Cell::Text(shown);
    }
    Cell::Link(html::image(digest), shown)
}

/// Running as root: uid 0 without a user namespace.
fn root(c: &Value) -> Option<bool> {
    let uid = c["posture"]["uid"].as_i64()?;
    Some(uid == 0 && flag(c, &["posture", "user_namespace"]) != Some(true))
}

pub fn nodes_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|n| {
            let name = text(n, &["node"]);
            vec![
                node_cell(name),
                Cell::Flag(flag(n, &["connected"])),
                time(n, "last_seen"),
                Cell::Text(text(n, &["agent_version"]).to_owned()),
                Cell::Text(text(n, &["kernel"]).to_owned()),
                int(n, &["lost"]),
                int(n, &["lag_ms"]),
                int(n, &["containers"]),
            ]
        })
        .collect()
}
pub const NODES_HEAD: &[&str] = &[
    "Node",
    "Connected",
    "Last seen",
    "Agent",
    "Kernel",
    "Events lost",
    "Lag ms",
    "Containers",
];

pub fn containers_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|c| {
            let node = text(c, &["node"]);
            let running = text(c, &["exited"]).is_empty();
            vec![
                Cell::Link(html::container(node, text(c, &["id"])), workload(c)),
                node_cell(node),
                namespace_cell(c),
                image_cell(c),
                int(c, &["posture", "uid"]),
                Cell::Risk(root(c)),
                Cell::Risk(flag(c, &["posture", "privileged"])),
                // an exited container's last sample is not its use now
                if running {
                    cpu(c)
                } else {
                    Cell::Text(String::new())
                },
                if running {
                    mib(c, "memory_bytes")
                } else {
                    Cell::Text(String::new())
                },
                Cell::Text(match text(c, &["exited"]) {
                    "" => "running".to_owned(),
                    t => format!("exited {}", short_time(t)),
                }),
            ]
        })
        .collect()
}
pub const CONTAINERS_HEAD: &[&str] = &[
    "Container",
    "Node",
    "Namespace",
    "Image",
    "UID",
    "Root",
    "Privileged",
    "CPU",
    "Memory",
    "State",
];

pub fn ports_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|p| {
            let node = text(p, &["node"]);
            let exposed =
                flag(p, &["wildcard"]) == Some(true) || flag(p, &["host_network"]) == Some(true);
            vec![
                who(node, &p["container"]),
                node_cell(node),
                Cell::Text(text(p, &["protocol"]).to_owned()),
                Cell::Text(text(p, &["address"]).to_owned()),
                int(p, &["port"]),
                Cell::Risk(Some(exposed)),
                Cell::Flag(flag(p, &["declared"])),
                int(p, &["pid"]),
                Cell::Text(text(p, &["exe"]).to_owned()),
                time(p, "since"),
            ]
        })
        .collect()
}
pub const PORTS_HEAD: &[&str] = &[
    "Container",
    "Node",
    "Proto",
    "Address",
    "Port",
    "Exposed",
    "Declared",
    "PID",
    "Executable",
    "Since",
];

pub fn egress_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|e| {
            let node = text(e, &["node"]);
            vec![
                who(node, &e["container"]),
                node_cell(node),
                Cell::Text(text(e, &["protocol"]).to_owned()),
                Cell::Text(text(e, &["address"]).to_owned()),
                int(e, &["port"]),
                Cell::Risk(flag(e, &["internet"])),
                int(e, &["count"]),
                time(e, "last_seen"),
            ]
        })
        .collect()
}
pub const EGRESS_HEAD: &[&str] = &[
    "Container",
    "Node",
    "Proto",
    "Address",
    "Port",
    "Internet",
    "Count",
    "Last seen",
];

pub fn findings_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|f| {
            let node = text(f, &["node"]);
            vec![
                Cell::Text(text(f, &["severity"]).to_owned()),
                Cell::Text(text(f, &["rule"]).to_owned()),
                who(node, &f["container"]),
                node_cell(node),
                Cell::Text(text(f, &["summary"]).to_owned()),
                int(f, &["count"]),
                Cell::Flag(flag(f, &["open"])),
                time(f, "last_seen"),
            ]
        })
        .collect()
}
pub const FINDINGS_HEAD: &[&str] = &[
    "Severity",
    "Rule",
    "Container",
    "Node",
    "Summary",
    "Count",
    "Open",
    "Last seen",
];

pub fn images_rows(rows: &[Value]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|i| {
            let digest = text(i, &["digest"]);
            vec![
                Cell::Link(html::image(digest), digest.to_owned()),
                Cell::Text(text(i, &["ref"]).to_owned()),
                int(i, &["containers"]),
                int(i, &["nodes"]),
                time(i, "last_seen"),
            ]
        })
        .collect()
}
pub const IMAGES_HEAD: &[&str] = &["Digest", "Reference", "Containers", "Nodes", "Last seen"];

fn namespaces_rows(rows: &[NamespaceCount]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|n| {
            vec![
                Cell::Link(html::namespace(&n.name), n.name.clone()),
                Cell::Num(n.running),
                Cell::Num(n.containers),
            ]
        })
        .collect()
}

/// Everything the overview shows.
#[derive(Default)]
pub struct Overview {
    pub summary: Summary,
    pub stale: bool,
    pub nodes: Listed,
    pub exposed: Listed,
    pub root: Listed,
    pub privileged: Listed,
    pub internet: Listed,
    pub runaway: Listed,
    pub findings: Listed,
    pub namespaces: (Vec<NamespaceCount>, bool),
    pub images: Listed,
}

fn card(p: &mut Page, label: &'static str, value: &str, bad: bool) {
    p.raw(if bad {
        "<div class=\"card bad\"><b>"
    } else {
        "<div class=\"card\"><b>"
    });
    p.text(value);
    p.raw("</b>");
    p.raw(label);
    p.raw("</div>");
}

fn cards(p: &mut Page, s: &Summary) {
    p.raw("<div class=\"cards\" id=\"counts\">");
    card(
        p,
        "nodes connected",
        &format!("{} / {}", s.connected, s.nodes),
        s.connected < s.nodes,
    );
    card(p, "containers running", &s.running.to_string(), false);
    card(p, "running as root", &s.root.to_string(), s.root > 0);
    card(p, "privileged", &s.privileged.to_string(), s.privileged > 0);
    card(p, "exposed ports", &s.exposed.to_string(), s.exposed > 0);
    card(
        p,
        "internet destinations",
        &format!(
            "{} ({} containers)",
            s.internet_destinations, s.internet_containers
        ),
        s.internet_destinations > 0,
    );
    card(
        p,
        "runaway processes",
        &s.runaway.to_string(),
        s.runaway > 0,
    );
    card(p, "images", &s.images.to_string(), false);
    p.raw("</div>\n<div class=\"cards\" id=\"findings-by-severity\">");
    for (word, n) in &s.findings {
        p.raw("<div class=\"card");
        p.raw(if *n > 0 && matches!(*word, "critical" | "high") {
            " bad\"><b>"
        } else {
            "\"><b>"
        });
        p.text(&n.to_string());
        p.raw("</b>open ");
        p.text(word);
        p.raw("</div>");
    }
    p.raw("</div>\n");
}

fn stale(p: &mut Page, stale: bool) {
    if stale {
        p.raw(
            "<p class=\"stale\">The inventory is stale: the collector dropped updates \
             (the store could not keep up). Counts may be behind the event files.</p>\n",
        );
    }
}

/// `/`: the fleet at a glance.
pub fn overview(o: &Overview) -> String {
    let mut p = Page::new("Fleet");
    p.raw("<h1>Fleet overview</h1>\n");
    stale(&mut p, o.stale);
    cards(&mut p, &o.summary);
    p.heading("nodes", "Nodes");
    p.table(
        "nodes-table",
        NODES_HEAD,
        &nodes_rows(&o.nodes.rows),
        o.nodes.more,
    );
    p.heading(
        "exposed",
        "Exposed ports (wildcard address or host network)",
    );
    p.table(
        "exposed-table",
        PORTS_HEAD,
        &ports_rows(&o.exposed.rows),
        o.exposed.more,
    );
    p.heading("root", "Containers running as root");
    p.table(
        "root-table",
        CONTAINERS_HEAD,
        &containers_rows(&o.root.rows),
        o.root.more,
    );
    p.heading("privileged", "Privileged containers");
    let privileged = containers_rows(&o.privileged.rows);
    p.table(
        "privileged-table",
        CONTAINERS_HEAD,
        &privileged,
        o.privileged.more,
    );
    p.heading("internet", "Internet egress");
    p.table(
        "internet-table",
        EGRESS_HEAD,
        &egress_rows(&o.internet.rows),
        o.internet.more,
    );
    p.heading(
        "runaway",
        &format!(
            "Runaway processes (open {})",
            crate::inventory::query::RUNAWAY_RULES.join(", ")
        ),
    );
    p.table(
        "runaway-table",
        FINDINGS_HEAD,
        &findings_rows(&o.runaway.rows),
        o.runaway.more,
    );
    p.heading("findings", "Open findings, latest first");
    let findings = findings_rows(&o.findings.rows);
    p.table("findings-table", FINDINGS_HEAD, &findings, o.findings.more);
    p.heading("namespaces", "Namespaces");
    let (ns, more) = &o.namespaces;
    p.table(
        "namespaces-table",
        &["Namespace", "Running", "Containers"],
        &namespaces_rows(ns),
        *more,
    );
    p.heading("images", "Images");
    p.table(
        "images-table",
        IMAGES_HEAD,
        &images_rows(&o.images.rows),
        o.images.more,
    );
    p.finish()
}

/// What a node's page shows.
pub struct NodeView {
    pub node: Value,
    pub containers: Listed,
    pub ports: Listed,
    pub egress: Listed,
    pub findings: Listed,
}

/// `/nodes/NODE`.
pub fn node(v: &NodeView) -> String {
    let name = text(&v.node, &["node"]);
    let mut p = Page::new(&format!("Node {name}"));
    p.raw("<h1>Node ");
    p.text(name);
    p.raw("</h1>\n");
    p.facts(&[
        ("Connected", Cell::Flag(flag(&v.node, &["connected"]))),
        (
            "Agent version",
            Cell::Text(text(&v.node, &["agent_version"]).to_owned()),
        ),
        ("Kernel", Cell::Text(text(&v.node, &["kernel"]).to_owned())),
        ("Events lost", int(&v.node, &["lost"])),
        ("Lag ms", int(&v.node, &["lag_ms"])),
        ("First seen", time(&v.node, "first_seen")),
        ("Last seen", time(&v.node, "last_seen")),
        ("Containers", int(&v.node, &["containers"])),
    ]);
    workload_tables(&mut p, [&v.containers, &v.ports, &v.egress, &v.findings]);
    p.finish()
}

/// What a container's page shows.
pub struct ContainerView {
    pub container: Value,
    pub ports: Listed,
    pub egress: Listed,
    pub findings: Listed,
}

fn posture(c: &Value) -> Vec<(&'static str, Cell)> {
    let caps = c["posture"]["capabilities"]
        .as_array()
        .map_or(String::new(), |a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        });
    let f = |k: &str| flag(c, &["posture", k]);
    vec![
        (
            "UID / GID",
            Cell::Text(format!("{} / {}", c["posture"]["uid"], c["posture"]["gid"])),
        ),
        ("Root", Cell::Risk(root(c))),
        ("User namespace", Cell::Flag(f("user_namespace"))),
        ("Privileged", Cell::Risk(f("privileged"))),
        ("Capabilities", Cell::Text(caps)),
        ("Host network", Cell::Risk(f("host_network"))),
        ("Host PID", Cell::Risk(f("host_pid"))),
        ("Host IPC", Cell::Risk(f("host_ipc"))),
        ("Read-only root", Cell::Flag(f("read_only_rootfs"))),
        ("No new privileges", Cell::Flag(f("no_new_privileges"))),
        (
            "Seccomp",
            Cell::Text(text(c, &["posture", "seccomp"]).to_owned()),
        ),
    ]
}

/// The latest resource sample (`resources` events, every
/// settings.resources_report_s on the agent).
fn usage(c: &Value) -> Vec<(&'static str, Cell)> {
    let limit = match &c["usage"]["memory_limit_bytes"] {
        Value::Null if c["usage"]["at"].is_null() => Cell::Text(String::new()),
        Value::Null => Cell::Text("none".into()),
        _ => mib(c, "memory_limit_bytes"),
    };
    vec![
        ("Sampled", time(&c["usage"], "at")),
        ("CPU (of one core)", cpu(c)),
        ("Memory", mib(c, "memory_bytes")),
        ("Memory limit", limit),
        ("Tasks", int(c, &["usage", "pids"])),
        ("OOM kills", int(c, &["usage", "oom_kills"])),
    ]
}

fn identity(c: &Value) -> Vec<(&'static str, Cell)> {
    let pod = match text(c, &["pod", "name"]) {
        "" => String::new(),
        name => format!(
            "{}/{name} (uid {})",
            text(c, &["pod", "namespace"]),
            text(c, &["pod", "uid"])
        ),
    };
    let exit = match text(c, &["exited"]) {
        "" => "running".to_owned(),
        t => format!("exited {} with code {}", short_time(t), c["exit_code"]),
    };
    vec![
        ("Node", node_cell(text(c, &["node"]))),
        ("ID", Cell::Text(text(c, &["id"]).to_owned())),
        ("Name", Cell::Text(text(c, &["name"]).to_owned())),
        ("Namespace", namespace_cell(c)),
        ("Pod", Cell::Text(pod)),
        ("Image", image_cell(c)),
        (
            "Image digest",
            Cell::Text(text(c, &["image", "digest"]).to_owned()),
        ),
        ("Runtime", Cell::Text(text(c, &["runtime"]).to_owned())),
        ("Created", time(c, "created")),
        ("First seen", time(c, "first_seen")),
        ("Last seen", time(c, "last_seen")),
        ("State", Cell::Text(exit)),
    ]
}

/// Processes the store knows of in a container: its listeners' (the
/// inventory keeps no process table).
fn processes_rows(ports: &[Value]) -> Vec<Vec<Cell>> {
    let mut seen: Vec<(i64, &str)> = Vec::new();
    for p in ports {
        let (pid, exe) = (p["pid"].as_i64().unwrap_or(0), text(p, &["exe"]));
        if (pid != 0 || !exe.is_empty()) && !seen.contains(&(pid, exe)) {
            seen.push((pid, exe));
        }
    }
    seen.into_iter()
        .map(|(pid, exe)| vec![Cell::Num(pid), Cell::Text(exe.to_owned())])
        .collect()
}

/// `/nodes/NODE/containers/ID`.
pub fn container(v: &ContainerView) -> String {
    let c = &v.container;
    let name = workload(c);
    let mut p = Page::new(&format!("Container {name}"));
    p.raw("<h1>Container ");
    p.text(&name);
    p.raw("</h1>\n");
    p.facts(&identity(c));
    p.heading("posture", "Posture");
    p.facts(&posture(c));
    p.heading("resources", "Resources (latest sample)");
    p.facts(&usage(c));
    p.heading("listeners", "Listeners open now");
    p.table(
        "listeners-table",
        PORTS_HEAD,
        &ports_rows(&v.ports.rows),
        v.ports.more,
    );
    p.heading("destinations", "Destinations");
    p.table(
        "destinations-table",
        EGRESS_HEAD,
        &egress_rows(&v.egress.rows),
        v.egress.more,
    );
    p.heading("findings", "Findings");
    p.table(
        "findings-table",
        FINDINGS_HEAD,
        &findings_rows(&v.findings.rows),
        v.findings.more,
    );
    p.heading(
        "processes",
        "Processes (those holding a listener; the inventory keeps no process list)",
    );
    p.table(
        "processes-table",
        &["PID", "Executable"],
        &processes_rows(&v.ports.rows),
        false,
    );
    p.finish()
}

/// What a namespace's page shows.
pub struct NamespaceView {
    pub name: String,
    pub containers: Listed,
    pub ports: Listed,
    pub egress: Listed,
    pub findings: Listed,
}

/// A node's or a namespace's containers, open ports, destinations and
/// open findings, in that order.
fn workload_tables(p: &mut Page, [containers, ports, egress, findings]: [&Listed; 4]) {
    p.heading("containers", "Containers");
    p.table(
        "containers-table",
        CONTAINERS_HEAD,
        &containers_rows(&containers.rows),
        containers.more,
    );
    p.heading("ports", "Open ports");
    p.table(
        "ports-table",
        PORTS_HEAD,
        &ports_rows(&ports.rows),
        ports.more,
    );
    p.heading("egress", "Destinations");
    p.table(
        "egress-table",
        EGRESS_HEAD,
        &egress_rows(&egress.rows),
        egress.more,
    );
    p.heading("findings", "Open findings");
    p.table(
        "findings-table",
        FINDINGS_HEAD,
        &findings_rows(&findings.rows),
        findings.more,
    );
}

/// `/namespaces/NS`.
pub fn namespace(v: &NamespaceView) -> String {
    let mut p = Page::new(&format!("Namespace {}", v.name));
    p.raw("<h1>Namespace ");
    p.text(&v.name);
    p.raw("</h1>\n");
    workload_tables(&mut p, [&v.containers, &v.ports, &v.egress, &v.findings]);
    p.finish()
}

/// What an image's page shows.
pub struct ImageView {
    pub image: Value,
    pub containers: Listed,
}

/// `/images/DIGEST`.
pub fn image(v: &ImageView) -> String {
    let i = &v.image;
    let digest = text(i, &["digest"]);
    let mut p = Page::new(&format!("Image {digest}"));
    p.raw("<h1>Image ");
    p.text(digest);
    p.raw("</h1>\n");
    p.facts(&[
        ("Reference", Cell::Text(text(i, &["ref"]).to_owned())),
        ("Manifest digest", Cell::Text(digest.to_owned())),
        (
            "Index digest",
            Cell::Text(text(i, &["index_digest"]).to_owned()),
        ),
        (
            "Config digest",
            Cell::Text(text(i, &["config_digest"]).to_owned()),
        ),
        ("Containers", int(i, &["containers"])),
        ("Nodes", int(i, &["nodes"])),
        ("First seen", time(i, "first_seen")),
        ("Last seen", time(i, "last_seen")),
    ]);
    p.heading("containers", "Containers running it");
    p.table(
        "containers-table",
        CONTAINERS_HEAD,
        &containers_rows(&v.containers.rows),
        v.containers.more,
    );
    p.finish()
}

/// A short page for 401, 404 and 500: `message` is escaped.
pub fn message(title: &str, message: &str) -> String {
    let mut p = Page::new(title);
    p.raw("<h1>");
    p.text(title);
    p.raw("</h1>\n<p>");
    p.text(message);
    p.raw("</p>\n");
    p.finish()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const EVIL: &str = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";

    fn hostile_container() -> Value {
        json!({
            "node": EVIL, "id": EVIL, "namespace": EVIL, "name": EVIL,
            "pod": {"name": EVIL, "namespace": EVIL, "uid": EVIL},
            "image": {"ref": EVIL, "digest": EVIL},
            "posture": {"uid": 0, "gid": 0, "user_namespace": false, "privileged": true,
                        "capabilities": [EVIL], "seccomp": EVIL},
            "exited": null
        })
    }

    /// Nothing of EVIL survives as markup: no `<script`, `<img`, and no
    /// quote that could end an attribute, anywhere in the page.
    fn assert_inert(page: &str) {
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("\"'"), "{page}");
        assert!(!page.contains("onerror=alert(2)>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&gt;&lt;img"),
            "{page}"
        );
    }

    #[test]
    fn hostile_names_are_escaped_on_every_page() {
        let c = hostile_container();
        let port = json!({"node": EVIL, "container": c, "protocol": "tcp", "address": EVIL,
                          "port": 80, "wildcard": true, "exe": EVIL, "pid": 7});
        let finding = json!({"node": EVIL, "container": c, "rule": EVIL, "severity": EVIL,
                             "summary": EVIL, "count": 1, "open": true});
        let listed = |v: &Value| Listed {
            rows: vec![v.clone()],
            more: false,
        };
        let o = Overview {
            nodes: listed(&json!({"node": EVIL, "agent_version": EVIL, "kernel": EVIL})),
            exposed: listed(&port),
            root: listed(&c),
            privileged: listed(&c),
            internet: listed(&json!({"node": EVIL, "container": c, "address": EVIL})),
            runaway: listed(&finding),
            findings: listed(&finding),
            namespaces: (
                vec![NamespaceCount {
                    name: EVIL.into(),
                    containers: 1,
                    running: 1,
                }],
                false,
            ),
            images: listed(&json!({"digest": EVIL, "ref": EVIL})),
            ..Overview::default()
        };
        let pages = [
            overview(&o),
            node(&NodeView {
                node: json!({"node": EVIL, "kernel": EVIL}),
                containers: listed(&c),
                ports: listed(&port),
                egress: Listed::default(),
                findings: listed(&finding),
            }),
            container(&ContainerView {
                container: c.clone(),
                ports: listed(&port),
                egress: Listed::default(),
                findings: listed(&finding),
            }),
            namespace(&NamespaceView {
                name: EVIL.into(),
                containers: listed(&c),
                ports: Listed::default(),
                egress: Listed::default(),
                findings: Listed::default(),
            }),
            image(&ImageView {
                image: json!({"digest": EVIL, "ref": EVIL}),
                containers: listed(&c),
            }),
            message(EVIL, EVIL),
        ];
        for page in &pages {
            assert_inert(page);
        }
        // the container link's path is percent-encoded
        assert!(pages[0].contains(
            "href=\"/nodes/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%27%3E%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E/containers/"
        ));
    }

    #[test]
    fn the_overview_links_a_listener_to_its_container_page() {
        let c = json!({"id": "abc123", "name": "web", "namespace": "k8s.io",
                       "pod": {"name": "", "namespace": ""}});
        let o = Overview {
            exposed: Listed {
                rows: vec![json!({"node": "n1", "container": c, "protocol": "tcp",
                                  "address": "0.0.0.0", "port": 18080, "wildcard": true,
                                  "declared": false, "pid": 42, "exe": "/bin/nc",
                                  "since": "2026-12-07T03:40:01.5Z"})],
                more: false,
            },
            ..Overview::default()
        };
        let page = overview(&o);
        assert!(
            page.contains(
                "<tr><td><a href=\"/nodes/n1/containers/abc123\">web</a></td>\
             <td><a href=\"/nodes/n1\">n1</a></td><td>tcp</td><td>0.0.0.0</td>\
             <td class=\"num\">18080</td><td class=\"bad\">yes</td><td>no</td>\
             <td class=\"num\">42</td><td>/bin/nc</td><td>2026-12-07 03:40:01Z</td></tr>"
            ),
            "{page}"
        );
        assert!(page.contains("<p class=\"none\" id=\"root-table\">none</p>"));
    }

    #[test]
    fn workloads_are_named_like_the_cli() {
        let pod = json!({"id": "0123456789abcdef", "name": "api",
                         "pod": {"name": "api-7d9", "namespace": "shop"}});
        assert_eq!(workload(&pod), "shop/api-7d9 api");
        assert_eq!(
            workload(&json!({"id": "0123456789abcdef", "name": "web"})),
            "web"
        );
        assert_eq!(
            workload(&json!({"id": "0123456789abcdef", "name": ""})),
            "0123456789ab"
        );
    }
}
