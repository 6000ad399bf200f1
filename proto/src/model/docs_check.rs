//! docs/events.md and docs/findings.md against the model: every field an
//! event can carry is in a documented table, and every documented field is
//! one the model writes. The samples set every optional field.
use std::collections::BTreeSet;

use serde_json::Value;

use super::{render, samples};

/// Lines that open a table of fields, and the path prefix of its rows.
const SECTIONS: &[(&str, &str)] = &[
    ("## Common fields", ""),
    ("### `process`", "process."),
    ("### `container`", "container."),
    ("`posture`:", "container.posture."),
    ("## `network`", "network."),
    ("## `exit`", "exit."),
    ("## `fork`", "fork."),
    ("## `loss`", "loss."),
    ("## `agent`", "agent."),
    ("## `resources`", "resources."),
    ("## `lifecycle`", "lifecycle."),
    ("## `aggregate`", "aggregate."),
    ("`finding`:", "finding."),
];

/// Objects whose keys are data (labels) or events documented elsewhere.
const OPAQUE: &[&str] = &["labels", "evidence"];

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// `{a, b}` or `[{a, b}]` -> [a, b].
fn braced(s: &str) -> Option<Vec<&str>> {
    let inner = s.trim_start_matches('[').trim_end_matches(']');
    let inner = inner.strip_prefix('{')?.strip_suffix('}')?;
    Some(inner.split(',').map(str::trim).collect())
}

/// Every field path the tables of one document name.
fn documented(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prefix: Option<&str> = None;
    for line in doc.lines() {
        if let Some((_, p)) = SECTIONS.iter().find(|(h, _)| *h == line.trim()) {
            prefix = Some(p);
            continue;
        }
        if line.starts_with('#') {
            prefix = None;
        }
        let (Some(prefix), Some(row)) = (prefix, line.strip_prefix("| `")) else {
            continue;
        };
        let mut cells = row.split(" | ");
        let names = backticked(&format!("`{}", cells.next().unwrap_or("")))
            .into_iter()
            .map(|n| format!("{prefix}{n}"))
            .collect::<Vec<_>>();
        let meaning = cells.collect::<Vec<_>>().join(" | ");
        for name in &names {
            out.insert(name.clone());
            let leaf = name.rsplit('.').next().unwrap_or(name);
            for token in backticked(&meaning) {
                if let Some(fields) = braced(token) {
                    out.extend(fields.iter().map(|f| format!("{name}.{f}")));
                } else if let Some(sub) = token.strip_prefix(&format!("{leaf}.")) {
                    out.insert(format!("{name}.{sub}"));
                }
            }
        }
    }
    out
}

/// Every field path a rendered event has (objects and leaves).
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let fields: Vec<(&String, &Value)> = match v {
        Value::Object(m) => m.iter().collect(),
        Value::Array(items) => {
            for item in items {
                paths(item, prefix, out);
            }
            return;
        }
        _ => return,
    };
    for (k, v) in fields {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.insert(p.clone());
        if !OPAQUE.contains(&k.as_str()) {
            paths(v, &p, out);
        }
    }
}

fn read(name: &str) -> String {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn documented_fields_are_the_fields_events_carry() {
    let mut docs = documented(&read("events.md"));
    docs.extend(documented(&read("findings.md")));
    let mut rendered = BTreeSet::new();
    for ev in samples::all() {
        let v: Value = serde_json::from_str(&render::to_string(&ev)).unwrap();
        paths(&v, "", &mut rendered);
    }
    // An object is documented when its fields are.
    let undocumented: Vec<&String> = rendered
        .iter()
        .filter(|p| !docs.contains(*p) && !docs.iter().any(|d| d.starts_with(&format!("{p}."))))
        .collect();
    assert!(
        undocumented.is_empty(),
        "fields events carry but docs/events.md or docs/findings.md do not list: {undocumented:?}"
    );
    let phantom: Vec<&String> = docs.iter().filter(|d| !rendered.contains(*d)).collect();
    assert!(
        phantom.is_empty(),
        "fields the docs list but no event carries (or the samples miss): {phantom:?}"
    );
}

#[test]
fn the_parser_reads_tables_and_braced_fields() {
    let doc = "## `network`\n\n| field | meaning |\n| --- | --- |\n| `local` | `{addr, port}` of this side |\n| `a`, `b` | x, `a.c` too |\n## Other\n| `skipped` | no |\n";
    let d: Vec<String> = documented(doc).into_iter().collect();
    assert_eq!(
        d,
        [
            "network.a",
            "network.a.c",
            "network.b",
            "network.local",
            "network.local.addr",
            "network.local.port"
        ]
    );
}
