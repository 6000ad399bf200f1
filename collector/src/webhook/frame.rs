//! What one POST carries and what its answer means, as pure functions:
//! cutting a group of batches into POSTs, framing a body, the
//! idempotency key, how an answer is handled, and the wait before the
//! next try.
use std::time::Duration;

use super::{config::Body, Pending};

/// A line of a group: (batch's place in the group, line's index in it).
pub type LineRef = (usize, usize);

/// Cut `lines` of a group into POSTs of at most `max_bytes` of lines
/// (newlines counted), in order; a line larger than that goes alone.
pub fn parts(
    group: &[Pending],
    lines: impl IntoIterator<Item = LineRef>,
    max_bytes: usize,
) -> Vec<Vec<LineRef>> {
    let mut out: Vec<Vec<LineRef>> = Vec::new();
    let mut bytes = 0;
    for (b, i) in lines {
        let n = group[b].line(i).len() + 1;
        match out.last_mut() {
            Some(part) if bytes + n <= max_bytes => part.push((b, i)),
            _ => {
                out.push(vec![(b, i)]);
                bytes = 0;
            }
        }
        bytes += n;
    }
    out
}

/// Every line of a group, in order.
pub fn all_lines(group: &[Pending]) -> impl Iterator<Item = LineRef> + '_ {
    group
        .iter()
        .enumerate()
        .flat_map(|(b, p)| (0..p.count()).map(move |i| (b, i)))
}

/// The body of a POST carrying `part`.
pub fn body(group: &[Pending], part: &[LineRef], framing: Body) -> Vec<u8> {
    let size: usize = part.iter().map(|&(b, i)| group[b].line(i).len() + 1).sum();
    let mut out = Vec::with_capacity(size + 2);
    match framing {
        Body::Ndjson => {
            for &(b, i) in part {
                out.extend_from_slice(group[b].line(i));
                out.push(b'\n');
            }
        }
        Body::Array => {
            out.push(b'[');
            for (n, &(b, i)) in part.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(group[b].line(i));
            }
            out.push(b']');
        }
    }
    out
}

/// The POST's `Idempotency-Key`: its first line's place (node, stream,
/// batch sequence, index), how many lines it carries, and a hash of its
/// body (FNV-1a, 64 bits). The same POST tried again carries the same
/// key; two POSTs that start at the same line but carry different lines
/// (batches grouped otherwise after a restart) do not.
pub fn idempotency_key(group: &[Pending], part: &[LineRef], body: &[u8]) -> String {
    let (b, i) = part[0];
    let p = &group[b];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in body {
        h = (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!(
        "{}/{}/{}/{i}+{}-{h:016x}",
        p.node,
        p.stream,
        p.sequence,
        part.len()
    )
}

/// Agent batches a POST carries lines of (`X-Spyglass-Batches`).
pub fn batches(part: &[LineRef]) -> usize {
    let mut n = 0;
    let mut last = None;
    for &(b, _) in part {
        if last != Some(b) {
            n += 1;
            last = Some(b);
        }
    }
    n
}

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the receiver has the lines.
    Taken,
    /// A 4xx that may be a verdict on the content (413, 400, 403, 404,
    /// 422, ...): split the POST to find the lines refused
    /// (`split.rs`). A receiver refusing everything this way is told
    /// apart there: it takes no part of the split.
    Refused,
    /// Try the same POST again later: the receiver fails or is busy
    /// (5xx, 408, 429).
    Retry,
    /// Try again later, but it will not pass until an operator acts: a
    /// redirect, 401, 407 (no part of the body can change these).
    /// Logged as an error.
    Misconfigured,
}

pub fn answer(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Taken,
        408 | 429 | 500..=599 => Answer::Retry,
        401 | 407 => Answer::Misconfigured,
        400..=499 => Answer::Refused,
        _ => Answer::Misconfigured,
    }
}

/// What to fix for a status, in the words of `/readyz` and the log.
pub fn hint(status: u16) -> &'static str {
    match status {
        300..=399 => "redirects are not followed: give the final URL in --webhook-url",
        401 | 403 => "check --webhook-token-file, --webhook-auth-scheme and --webhook-header",
        407 => "the proxy (HTTPS_PROXY, ALL_PROXY) asks for credentials",
        404 | 405 => "check the path of --webhook-url",
        400 | 415 | 422 => {
            "the receiver does not take this body: check --webhook-body and --format"
        }
        429 => "the receiver asks to slow down",
        408 | 500..=599 => "the receiver fails or is unavailable",
        _ => "the receiver refuses the POST",
    }
}

/// What to fix when no answer came, from the error's text (empty when
/// there is nothing to add).
pub fn transport_hint(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("certificate") || e.contains("unknownissuer") {
        " (check --webhook-ca-file and that the receiver's certificate names the URL's host)"
    } else if e.contains("timeout") || e.contains("timed out") {
        " (no answer within --webhook-timeout-s)"
    } else {
        ""
    }
}

/// A `Retry-After` of delay-seconds, at most `cap`; an HTTP date or
/// garbage is ignored (the backoff applies).
pub fn retry_after(value: Option<&str>, cap: Duration) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(cap))
}

/// The wait before the next try: doubling from 250 ms up to `max`, each
/// wait drawn between half and all of it (jitter, so collectors that
/// failed together do not retry together).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

const FIRST: Duration = Duration::from_millis(250);

impl Backoff {
    pub fn new(max: Duration, seed: u64) -> Self {
        Backoff {
            next: FIRST.min(max),
            max,
            seed: seed | 1,
        }
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = FIRST.min(self.max);
    }

    /// The next wait.
    pub fn delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let full = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.seed % nanos.max(1))
    }
}

/// The first bytes of a response body, printable, for the log.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, lines: &[&str]) -> Pending {
        Pending::of_lines(seq, seq, lines)
    }

    #[test]
    fn parts_hold_whole_lines_up_to_the_limit_in_order() {
        let group = [
            batch(1, &[r#"{"a":1}"#, r#"{"a":2}"#]),
            batch(2, &[r#"{"b":1}"#]),
            batch(3, &[&"x".repeat(40)]),
        ];
        // each short line is 8 bytes with its newline
        let p = parts(&group, all_lines(&group), 16);
        assert_eq!(p, [vec![(0, 0), (0, 1)], vec![(1, 0)], vec![(2, 0)]]);
        let p = parts(&group, all_lines(&group), 1 << 20);
        assert_eq!(p, [vec![(0, 0), (0, 1), (1, 0), (2, 0)]]);
        assert_eq!(batches(&p[0]), 3);
        assert!(parts(&[], all_lines(&[]), 10).is_empty());
        // some lines only (what a split left to try again)
        let p = parts(&group, [(0, 1), (2, 0)], 16);
        assert_eq!(p, [vec![(0, 1)], vec![(2, 0)]]);
    }

    #[test]
    fn bodies_are_ndjson_or_one_array_of_the_same_lines() {
        let group = [
            batch(1, &[r#"{"a":1}"#, r#"{"a":2}"#]),
            batch(2, &[r#"{"b":1}"#]),
        ];
        let part = [(0, 1), (1, 0)];
        assert_eq!(body(&group, &part, Body::Ndjson), b"{\"a\":2}\n{\"b\":1}\n");
        let arr = body(&group, &part, Body::Array);
        let v: serde_json::Value = serde_json::from_slice(&arr).unwrap();
        assert_eq!(v, serde_json::json!([{"a":2},{"b":1}]));
        assert_eq!(Body::Ndjson.content_type(), "application/x-ndjson");
        assert_eq!(Body::Array.content_type(), "application/json");
    }

    #[test]
    fn the_key_names_the_first_line_the_count_and_the_body() {
        let group = [batch(7, &["a", "b", "c"]), batch(8, &["d"])];
        let key = |part: &[LineRef], body: &[u8]| idempotency_key(&group, part, body);
        let k = key(&[(0, 1), (0, 2), (1, 0)], b"b\nc\nd\n");
        assert!(k.starts_with("node-1/s1/7/1+3-"), "{k}");
        assert_eq!(k, key(&[(0, 1), (0, 2), (1, 0)], b"b\nc\nd\n"), "stable");
        // the same first line and count with other lines: another key
        assert_ne!(k, key(&[(0, 1), (0, 2), (1, 0)], b"b\nc\nx\n"));
        // a split half gets its own key
        assert!(key(&[(1, 0)], b"d\n").starts_with("node-1/s1/8/0+1-"));
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(answer(200), Answer::Taken);
        assert_eq!(answer(204), Answer::Taken);
        for s in [400, 403, 404, 409, 413, 415, 422, 451] {
            assert_eq!(answer(s), Answer::Refused, "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(answer(s), Answer::Retry, "{s}");
        }
        for s in [101, 301, 307, 401, 407, 600] {
            assert_eq!(answer(s), Answer::Misconfigured, "{s}");
        }
        assert!(hint(401).contains("--webhook-token-file"));
        assert!(hint(302).contains("redirects"));
        assert!(
            transport_hint("io: invalid peer certificate: UnknownIssuer")
                .contains("--webhook-ca-file")
        );
        assert!(transport_hint("timeout: global").contains("--webhook-timeout-s"));
        assert_eq!(transport_hint("io: Connection refused (os error 111)"), "");
    }

    #[test]
    fn retry_after_seconds_are_honoured_up_to_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(retry_after(Some("5"), cap), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(Some(" 120 "), cap), Some(cap));
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), cap),
            None
        );
        assert_eq!(retry_after(Some("-1"), cap), None);
        assert_eq!(retry_after(None, cap), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(max, 42);
        let mut full = FIRST;
        for _ in 0..8 {
            let d = b.delay();
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} not in [{:?}, {full:?}]",
                full / 2
            );
            full = (full * 2).min(max);
        }
        b.reset();
        assert!(b.delay() <= FIRST);
        // two collectors seeded apart do not wait the same
        let (mut x, mut y) = (Backoff::new(max, 1), Backoff::new(max, 2));
        assert!((0..4).any(|_| x.delay() != y.delay()));
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let e = excerpt(format!("bad\ntoken{}", "z".repeat(500)).as_bytes());
        assert_eq!(e.chars().count(), 200);
        assert!(e.starts_with("bad token"));
    }
}
