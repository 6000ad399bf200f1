//! The JSON line of an event: the one renderer of docs/events.md, used by
//! the agent's stdout and the collector's output file alike.
use serde::Serialize;

use super::Event;

/// Append `ev` as one JSON object (no newline) to `out`.
pub fn write(ev: &Event, out: &mut Vec<u8>) {
    // Serializing these types cannot fail: every map key is a string and
    // a Vec<u8> writer does not return errors.
    let _ = serde_json::to_writer(&mut *out, ev);
}

/// Append `ev` as one JSON object with one more top-level field `key`
/// (the collector's `delivery`), written after the event's own fields.
pub fn write_with(ev: &Event, key: &str, extra: &impl Serialize, out: &mut Vec<u8>) {
    let start = out.len();
    write(ev, out);
    if out.len() > start && out.last() == Some(&b'}') {
        out.pop();
        out.push(b',');
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        if serde_json::to_writer(&mut *out, extra).is_err() {
            out.extend_from_slice(b"null");
        }
        out.push(b'}');
    }
}

/// Write `ev` as one JSON object (no newline) to an I/O stream.
pub fn write_io(ev: &Event, out: impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer(out, ev).map_err(std::io::Error::from)
}

/// `ev` as a JSON string.
pub fn to_string(ev: &Event) -> String {
    let mut out = Vec::with_capacity(512);
    write(ev, &mut out);
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;

    #[test]
    fn extra_field_is_appended_to_the_object() {
        let ev = samples::connect();
        let mut out = Vec::new();
        write_with(
            &ev,
            "delivery",
            &serde_json::json!({"sequence": 3}),
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["delivery"]["sequence"], 3);
        assert_eq!(v["network"]["remote"]["addr"], "93.184.216.34");
        assert_eq!(v["kind"], "connect");
    }

    #[test]
    fn shape_of_a_connect() {
        let s = to_string(&samples::connect());
        assert!(
            s.starts_with(r#"{"kind":"connect","time":"2026-11-24T19:48:38.856200274Z","node":"n1","snapshot":false,"process":{"pid":5,"tid":6,"#),
            "{s}"
        );
        assert!(
            s.contains(r#""network":{"protocol":"tcp","family":"ipv4","op":"connect","local":{"addr":"10.0.0.2","port":41234},"remote":{"addr":"93.184.216.34","port":443},"outcome":"established"}"#),
            "{s}"
        );
    }
}
