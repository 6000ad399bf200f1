//! Target `config`: the agent's TOML file. Tables built from the default
//! configuration's own keys (so new fields are covered without editing
//! this file) with values changed to edge values or the wrong type, keys
//! dropped or unknown ones added, then mutated as text; and garbage. An
//! accepted file must print (`print-config`) as a file that reads back
//! the same; a refused one names the file, and the key when one changed.
use std::path::Path;

use proptest::prelude::*;
use toml::{Table, Value};

use super::{config, mutate_text, mutation};
use crate::config::Config;

const PATH: &str = "/etc/spyglass/fuzz-agent.toml";

/// `(section, key)` of every field, `section` empty for top-level ones.
fn keys() -> Vec<(String, String)> {
    let text = toml::to_string(&Config::default()).expect("the default config prints");
    let table: Table = text.parse().expect("the printed default config reads");
    let mut out = vec![(String::new(), "node_name".to_owned())];
    for (section, v) in &table {
        match v {
            Value::Table(t) => out.extend(t.keys().map(|k| (section.clone(), k.clone()))),
            _ => out.push((String::new(), section.clone())),
        }
    }
    out
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0i64, 1, 2, 63, 64, 1000, 1001, 1024, 32_768, 32_769, 65_535, 65_536, 1 << 20,
            1 << 31, i64::from(u32::MAX), i64::MAX, -1, i64::MIN,
        ])
        .prop_map(Value::Integer),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => (0..63u32).prop_map(|s| Value::Integer(1i64 << s)),
        1 => any::<bool>().prop_map(Value::Boolean),
        3 => prop::sample::select(vec![
            "", "zstd", "gzip", "none", "json", "text", "findings", "http://127.0.0.1:4317",
            "https://c.example:443", "ftp://x", "0.0.0.0:9464", "127.0.0.1", "[::1]:1",
            "/tmp/spool", "node-1", "a b", "a\nb", "é",
        ])
        .prop_map(|s| Value::String(s.into())),
        1 => Just(Value::String("a".repeat(254))),
        1 => "[ -~]{0,16}".prop_map(Value::String),
        1 => Just(Value::Float(1.5)),
        1 => Just(Value::Array(vec![Value::Integer(1)])),
        1 => Just(Value::Table(Table::new())),
    ]
}

#[derive(Clone, Debug)]
enum Change {
    Set(usize, Value),
    Drop(usize),
    Unknown(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (any::<usize>(), value()).prop_map(|(i, v)| Change::Set(i, v)),
        1 => any::<usize>().prop_map(Change::Drop),
        1 => any::<usize>().prop_map(Change::Unknown),
    ]
}

/// The default table with `changes` applied, and the keys changed.
fn build(changes: &[Change]) -> (String, Vec<String>) {
    let keys = keys();
    let mut table: Table = toml::to_string(&Config::default())
        .expect("prints")
        .parse()
        .expect("reads");
    let mut changed = Vec::new();
    for c in changes {
        let (i, v) = match c {
            Change::Set(i, v) => (*i, Some(v.clone())),
            Change::Drop(i) => (*i, None),
            Change::Unknown(i) => (*i, Some(Value::Integer(1))),
        };
        let (section, key) = &keys[i % keys.len()];
        let key = if matches!(c, Change::Unknown(_)) {
            format!("{key}_unknown")
        } else {
            key.clone()
        };
        let t = if section.is_empty() {
            &mut table
        } else {
            match table
                .entry(section.clone())
                .or_insert_with(|| Value::Table(Table::new()))
            {
                Value::Table(t) => t,
                _ => continue,
            }
        };
        match v {
            Some(v) => t.insert(key.clone(), v),
            None => t.remove(&key),
        };
        changed.push(key);
    }
    (toml::to_string(&table).expect("a table prints"), changed)
}

/// Parse `text`: no panic; accepted reads back the same from its
/// printed form; refused names the file (and `key`, when given).
fn judge(text: &str, key: Option<&str>) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new(PATH)) {
        Ok(cfg) => {
            let printed = toml::to_string(&cfg)
                .map_err(|e| TestCaseError::fail(format!("print-config fails: {e}")))?;
            let back = Config::parse(&printed, Path::new(PATH)).map_err(|e| {
                TestCaseError::fail(format!("printed config refused: {e}\n{printed}"))
            })?;
            prop_assert_eq!(back, cfg);
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains(PATH), "error does not name the file: {msg}");
            if let Some(k) = key {
                prop_assert!(msg.contains(k), "error does not name `{k}`: {msg}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn changed_configs_round_trip_or_name_file_and_key(
        changes in prop::collection::vec(change(), 1..4),
    ) {
        let (text, changed) = build(&changes);
        let one = (changed.len() == 1).then(|| changed[0].as_str());
        judge(&text, one)?;
    }

    #[test]
    fn mutated_configs_round_trip_or_name_the_file(
        changes in prop::collection::vec(change(), 0..3),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let (text, _) = build(&changes);
        judge(&mutate_text(&text, &muts), None)?;
    }

    #[test]
    fn garbage_configs_are_refused_with_the_file_named(text in "(?s).{0,300}") {
        judge(&text, None)?;
    }
}
