//! What one batch may hold: the limits both ends of the wire apply. The
//! agent checks its configuration against them at start; the collector
//! refuses a batch beyond them before rendering a byte of it.

/// Most events in one batch, every finding's evidence included. The
/// collector counts a batch's events before decoding it (see [`crate::codec`]), so a small message of
/// millions of empty events cannot make it allocate gigabytes.
pub const MAX_BATCH_EVENTS: usize = 65_536;

/// Most bytes a batch may decode into (as [`crate::scan`] estimates them
/// before decoding) whatever its length on the wire: room for
/// [`MAX_BATCH_EVENTS`] small events (an `Event` struct is 552 bytes).
pub const MAX_BATCH_DECODED_BYTES: usize = 64 << 20;

/// Past [`MAX_BATCH_DECODED_BYTES`], a batch may decode into at most this
/// many bytes per byte on the wire. What agents send decodes into about
/// 9.4 (the samples of every kind, with glibc's chunks and vectors'
/// spare capacity; a unit test checks it stays under 12); an exec of
/// one-character arguments into 19; a hostile batch of empty ancestors
/// into 56, of empty evidence events into 552.
pub const MAX_DECODED_PER_WIRE_BYTE: usize = 32;

/// The most bytes a batch of `wire_len` bytes may decode into.
pub fn decoded_bytes_allowed(wire_len: usize) -> usize {
    MAX_BATCH_DECODED_BYTES.max(wire_len.saturating_mul(MAX_DECODED_PER_WIRE_BYTE))
}

/// Most labels an agent sends of one container (and of one pod): a
/// container or pod with more is cut to the first ones by key, so that a
/// tenant's image with tens of thousands of labels cannot make its
/// events' batches longer than the collector takes
/// ([`crate::scan::MAX_LIST_ENTRIES`]).
pub const MAX_AGENT_LABELS: usize = 1_024;

/// Largest `collector.batch_max_events` an agent accepts: the agent can
/// add one pipeline batch (a few thousand events) past it before a
/// flush, and must stay under [`MAX_BATCH_EVENTS`].
pub const MAX_AGENT_BATCH_EVENTS: usize = MAX_BATCH_EVENTS / 2;

/// Longest node id: a DNS name, as Kubernetes node names are.
pub const MAX_NODE_ID_LEN: usize = 253;

/// Longest stream id (the agent's are 32 hex digits).
pub const MAX_STREAM_ID_LEN: usize = 64;

/// Why `id` cannot name a node, if it cannot: 1 to 253 ASCII letters,
/// digits, `.`, `-` or `_` (a host or Kubernetes node name).
pub fn node_id_problem(id: &str) -> Option<String> {
    id_problem(id, MAX_NODE_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
    })
}

/// Why `id` cannot be a stream id, if it cannot: empty (an agent older
/// than stream ids) or up to 64 ASCII letters, digits, `-` or `_`.
pub fn stream_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    id_problem(id, MAX_STREAM_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
    })
}

fn id_problem(id: &str, max: usize, allowed: impl Fn(char) -> bool) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".into());
    }
    if id.len() > max {
        return Some(format!("is {} bytes long; at most {max}", id.len()));
    }
    id.chars()
        .find(|c| !allowed(*c))
        .map(|c| format!("holds {:?}, which is not allowed", c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert_eq!(node_id_problem("ip-10-0-1-7.ec2.internal"), None);
        assert_eq!(node_id_problem("worker_1"), None);
        assert_eq!(node_id_problem("").as_deref(), Some("is empty"));
        assert!(node_id_problem(&"a".repeat(254))
            .unwrap()
            .contains("at most 253"));
        assert!(node_id_problem("a\nb").unwrap().contains("'\\n'"));
        assert!(node_id_problem("a b").is_some());
    }

    #[test]
    fn stream_ids() {
        assert_eq!(stream_id_problem(""), None);
        assert_eq!(stream_id_problem("b5c615a81b84ceef9b37ed53666a2208"), None);
        assert!(stream_id_problem(&"a".repeat(65)).is_some());
        assert!(stream_id_problem("x/y").is_some());
    }
}
