//! Rows of the API as a table for people: one column list per endpoint,
//! each column a header and how to show it from a row.
use serde_json::Value;

/// One column: its header and how a row shows in it.
pub struct Column {
    pub header: &'static str,
    pub show: fn(&Value) -> String,
}

const fn col(header: &'static str, show: fn(&Value) -> String) -> Column {
    Column { header, show }
}

/// A text field at `path` (`a.b`), `-` when absent or empty.
fn text(v: &Value, path: &str) -> String {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    match cur {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A digest's first 12 hex digits (`sha256:` dropped).
fn short_digest(s: &str) -> String {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.chars().take(12).collect()
}

/// Where a row runs: `NAMESPACE/POD` for a pod, the container's name
/// else, `host` for none.
fn workload(c: &Value) -> String {
    let pod = text(c, "pod.name");
    if pod != "-" {
        return format!("{}/{pod}", text(c, "pod.namespace"));
    }
    match text(c, "name") {
        n if n != "-" => n,
        _ if text(c, "id") == "-" => "host".into(),
        _ => short_digest(&text(c, "id")),
    }
}

/// When: the time to the second (`2026-12-07T03:40:01Z`).
fn when(v: &Value, path: &str) -> String {
    let t = text(v, path);
    match (t.find('.'), t.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &t[..dot]),
        _ => t,
    }
}

/// Bytes for people: `512B`, `12.3MiB`, `1.0GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// The latest sampled CPU as a percentage of one core; `-` unsampled
/// or exited (its last sample is not its use now).
fn cpu(r: &Value) -> String {
    if !r["exited"].is_null() {
        return "-".into();
    }
    r["usage"]["cpu_percent"]
        .as_u64()
        .map_or_else(|| "-".into(), |p| format!("{p}%"))
}

/// Memory charged, and its limit when one is set: `12.3MiB/1.0GiB`;
/// `-` unsampled or exited.
fn memory(r: &Value) -> String {
    if !r["exited"].is_null() {
        return "-".into();
    }
    let u = &r["usage"];
    match (u["memory_bytes"].as_u64(), u["memory_limit_bytes"].as_u64()) {
        (None, _) => "-".into(),
        (Some(m), None) => bytes(m),
        (Some(m), Some(l)) => format!("{}/{}", bytes(m), bytes(l)),
    }
}

pub const CONTAINERS: &[Column] = &[
    col("NODE", |r| text(r, "node")),
    col("WORKLOAD", workload),
    col("CONTAINER", |r| text(r, "name")),
    col("IMAGE", |r| text(r, "image.ref")),
    col("UID", |r| text(r, "posture.uid")),
    col("PRIVILEGED", |r| text(r, "posture.privileged")),
    col("CPU", cpu),
    col("MEMORY", memory),
    col("EXITED", |r| when(r, "exited")),
    col("ID", |r| short_digest(&text(r, "id"))),
];

pub const PORTS: &[Column] = &[
    col("NODE", |r| text(r, "node")),
    col("WORKLOAD", |r| workload(&r["container"])),
    col("PROTO", |r| text(r, "protocol")),
    col("ADDRESS", |r| text(r, "address")),
    col("PORT", |r| text(r, "port")),
    col("WILDCARD", |r| text(r, "wildcard")),
    col("HOSTNET", |r| text(r, "host_network")),
    col("DECLARED", |r| text(r, "declared")),
    col("EXE", |r| text(r, "exe")),
    col("SINCE", |r| when(r, "since")),
];

pub const EGRESS: &[Column] = &[
    col("NODE", |r| text(r, "node")),
    col("WORKLOAD", |r| workload(&r["container"])),
    col("PROTO", |r| text(r, "protocol")),
    col("ADDRESS", |r| text(r, "address")),
    col("PORT", |r| text(r, "port")),
    col("INTERNET", |r| text(r, "internet")),
    col("COUNT", |r| text(r, "count")),
    col("LAST SEEN", |r| when(r, "last_seen")),
];

pub const IMAGES: &[Column] = &[
    col("DIGEST", |r| short_digest(&text(r, "digest"))),
    col("REF", |r| text(r, "ref")),
    col("CONTAINERS", |r| text(r, "containers")),
    col("NODES", |r| text(r, "nodes")),
    col("LAST SEEN", |r| when(r, "last_seen")),
];

pub const LINEAGE: &[Column] = &[
    col("RELATION", |r| text(r, "relation")),
    col("CONFIG", |r| short_digest(&text(r, "config_digest"))),
    col("REF", |r| text(r, "ref")),
    col("LAYERS", |r| text(r, "layers")),
    col("BY", |r| text(r, "by")),
    col("CONTAINERS", |r| text(r, "running.containers")),
    col("NODES", |r| text(r, "running.nodes")),
];

pub const VULNS: &[Column] = &[
    col("SEVERITY", |r| text(r, "severity")),
    col("ID", |r| text(r, "id")),
    col("PACKAGE", |r| text(r, "package.name")),
    col("VERSION", |r| text(r, "package.version")),
    col("FIXED IN", |r| text(r, "fixed_version")),
    col("IMAGE", |r| short_digest(&text(r, "image.digest"))),
    col("REF", |r| text(r, "image.ref")),
    col("CONTAINERS", |r| text(r, "running.containers")),
    col("NODES", |r| text(r, "running.nodes")),
];

pub const REPORTS: &[Column] = &[
    col("NAME", |r| text(r, "name")),
    col("FORMAT", |r| text(r, "format")),
    col("CONFIG", |r| short_digest(&text(r, "image.config_digest"))),
    col("PACKAGES", |r| text(r, "packages")),
    col("VULNS", |r| text(r, "vulnerabilities")),
    col("FLEET IMAGES", |r| text(r, "fleet_images")),
    col("IMPORTED", |r| when(r, "imported")),
];

pub const NODES: &[Column] = &[
    col("NODE", |r| text(r, "node")),
    col("CONNECTED", |r| text(r, "connected")),
    col("AGENT", |r| text(r, "agent_version")),
    col("KERNEL", |r| text(r, "kernel")),
    col("CONTAINERS", |r| text(r, "containers")),
    col("LOST", |r| text(r, "lost")),
    col("LAG MS", |r| text(r, "lag_ms")),
    col("LAST SEEN", |r| when(r, "last_seen")),
];

pub const FINDINGS: &[Column] = &[
    col("SEVERITY", |r| text(r, "severity")),
    col("RULE", |r| text(r, "rule")),
    col("NODE", |r| text(r, "node")),
    col("WORKLOAD", |r| workload(&r["container"])),
    col("SUBJECT", |r| text(r, "subject")),
    col("COUNT", |r| text(r, "count")),
    col("OPEN", |r| text(r, "open")),
    col("LAST SEEN", |r| when(r, "last_seen")),
];

/// The rows under their headers, columns padded to their widest cell;
/// control characters in values are shown escaped, so a value cannot
/// move the terminal's cursor or forge a line.
pub fn render(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| clean(&(c.show)(r))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([c.header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |vals: Vec<&str>| {
        let padded: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(columns.iter().map(|c| c.header).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Characters that move the cursor or reorder what a terminal shows:
/// controls, and Unicode's bidirectional and invisible format characters
/// (U+200B-U+200F, U+202A-U+202E, U+2060-U+2069, U+FEFF).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if hidden(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_show_pod_image_uid_and_short_id() {
        let rows = [
            json!({"node":"n1","id":"0123456789abcdef0123","name":"web",
                "pod":{"name":"web-7d","namespace":"shop","uid":"u"},
                "image":{"ref":"nginx:1"},"posture":{"uid":0,"privileged":true},"exited":null,
                "usage":{"cpu_percent":150,"memory_bytes":12_897_485,"memory_limit_bytes":1_073_741_824}}),
            json!({"node":"node-two","id":"ffffffffffffffff","name":"job","pod":{"name":"","namespace":""},
                "image":{"ref":""},"posture":{"uid":1000,"privileged":false},
                "usage":{"cpu_percent":90,"memory_bytes":1024},
                "exited":"2026-12-07T03:40:01.123456789Z"}),
        ];
        assert_eq!(
            render(&rows, CONTAINERS),
            "NODE      WORKLOAD     CONTAINER  IMAGE    UID   PRIVILEGED  CPU   MEMORY          EXITED                ID\n\
             n1        shop/web-7d  web        nginx:1  0     yes         150%  12.3MiB/1.0GiB  -                     0123456789ab\n\
             node-two  job          job        -        1000  no          -     -               2026-12-07T03:40:01Z  ffffffffffff\n"
        );
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(5 << 40), "5.0TiB");
        assert_eq!(bytes(u64::MAX), "16777216.0TiB");
        let r = serde_json::json!({"usage":{"cpu_percent":3,"memory_bytes":2048,"memory_limit_bytes":null}});
        assert_eq!((cpu(&r), memory(&r)), ("3%".into(), "2.0KiB".into()));
    }

    #[test]
    fn a_host_listener_shows_as_host_and_control_characters_are_escaped() {
        let rows = [
            json!({"node":"n1","container":{"id":"","name":"","pod":{"name":""}},
            "protocol":"tcp","address":"0.0.0.0","port":22,"wildcard":true,"host_network":false,
            "declared":false,"exe":"/usr/sbin/sshd\u{1b}[2J\nfake","since":"2026-12-07T03:40:01Z"}),
        ];
        let t = render(&rows, PORTS);
        assert!(
            t.lines().nth(1).unwrap().starts_with("n1    host      tcp"),
            "{t}"
        );
        assert!(t.contains(r"/usr/sbin/sshd\u{1b}[2J\nfake"), "{t}");
        // a right-to-left override cannot reorder the row
        let rows = [json!({"node":"n1","container":{"id":""},"exe":"/tmp/\u{202e}hs.exe"})];
        assert!(render(&rows, PORTS).contains(r"/tmp/\u{202e}hs.exe"));
        assert_eq!(t.lines().count(), 2, "{t}");
    }
}
