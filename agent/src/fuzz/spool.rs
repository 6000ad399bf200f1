//! Target `spool`: the spool directory as a crash, a full disk or a
//! careless hand may leave it. Batch files under good and bad names
//! (unpadded, signed, huge or duplicate sequence numbers, directories,
//! temporary files) holding valid batches cut or corrupted, or garbage,
//! beside a `stream-id` and `next-seq` that are valid, torn or garbage.
//! Opening must never panic; every batch it indexes reads back as the
//! file holds it; the next sequence number is above every stored one and
//! never 0 (which the collector refuses); a stream id is always valid.
use proptest::prelude::*;
use prost::Message;
use spyglass_proto::{limits, model, v1};

use super::{config, mutate, mutation, Mutation, TempDir};
use crate::export::spool::Spool;

#[derive(Clone, Debug)]
enum Name {
    /// As the agent writes it: 20 digits, `-`, events, `.batch`.
    Padded(u64, u64),
    /// Anything else that might parse.
    Odd(String),
}

/// The top of the sequence range (the spool drops batch files above
/// [`crate::export::spool::MAX_SEQUENCE`] and distrusts such a counter:
/// `sequence_numbers_near_the_top_do_not_wrap_to_zero`).
const NEAR_MAX: u64 = u64::MAX;

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..64u64,
        1 => Just(0u64),
        1 => 0..NEAR_MAX,
        1 => (1..4u64).prop_map(|d| NEAR_MAX - d),
    ]
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        6 => (seq(), 0..100u64).prop_map(|(s, e)| Name::Padded(s, e)),
        1 => prop::sample::select(vec![
            "7-1.batch", "+7-1.batch", "-1-2.batch", "1-.batch", ".batch", "x-y.batch",
            "00000000000000000001-1.batch.tmp", "batch.tmp", "1-1-1.batch",
            "18446744073709551616-1.batch", "00000000000000000003-18446744073709551615.batch",
            "stream-id.tmp", "next-seq.tmp", "loss-totals",
        ])
        .prop_map(|s| Name::Odd(s.into())),
        1 => "[0-9a-z.+-]{0,24}".prop_map(Name::Odd),
    ]
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Padded(s, e) => format!("{s:020}-{e}.batch"),
            Name::Odd(s) => s.clone(),
        }
    }
}

/// A batch as the agent stores it (no send time).
fn batch_bytes(seq: u64, events: usize) -> Vec<u8> {
    v1::Batch {
        node_id: "node-1".into(),
        sequence: seq,
        events: model::samples::all()
            .iter()
            .cycle()
            .take(events)
            .map(model::wire::to_wire)
            .collect(),
        sent_unix_nano: 0,
        stream_id: "0123456789abcdef0123456789abcdef".into(),
    }
    .encode_to_vec()
}

#[derive(Clone, Debug)]
struct File {
    name: Name,
    /// A directory of that name instead of a file.
    dir: bool,
    events: usize,
    muts: Vec<Mutation>,
    garbage: Option<Vec<u8>>,
}

fn file() -> impl Strategy<Value = File> {
    (
        name(),
        prop::bool::weighted(0.05),
        0..6usize,
        prop::collection::vec(mutation(), 0..3),
        prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..200)),
    )
        .prop_map(|(name, dir, events, muts, garbage)| File {
            name,
            dir,
            events,
            muts,
            garbage,
        })
}

fn counter_text() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.9,
        prop_oneof![
            3 => (1..5000u64).prop_map(|n| n.to_string()),
            1 => (0..NEAR_MAX).prop_map(|n| n.to_string()),
            1 => (1..4u64).prop_map(|d| (NEAR_MAX - d).to_string()),
            1 => prop::sample::select(vec!["", "0", "-1", "12a", " 7\n", "18446744073709551616"])
                .prop_map(String::from),
        ],
    )
}

fn stream_text() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.9,
        prop_oneof![
            3 => Just("0123456789abcdef0123456789abcdef\n".to_owned()),
            1 => "[ -~]{0,70}",
        ],
    )
}

#[derive(Clone, Debug)]
struct Layout {
    files: Vec<File>,
    stream_id: Option<String>,
    next_seq: Option<String>,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        prop::collection::vec(file(), 0..6),
        stream_text(),
        counter_text(),
    )
        .prop_map(|(files, stream_id, next_seq)| Layout {
            files,
            stream_id,
            next_seq,
        })
}

/// Lay `l` out in `dir`.
fn lay(dir: &std::path::Path, l: &Layout) {
    for f in &l.files {
        let p = dir.join(f.name.text());
        let n = f.name.text();
        if n.is_empty() || n == "stream-id" || n == "next-seq" || p.exists() {
            continue;
        }
        if f.dir {
            std::fs::create_dir(&p).expect("create a directory");
            continue;
        }
        let seq = match f.name {
            Name::Padded(s, _) => s,
            Name::Odd(_) => 1,
        };
        let data = match &f.garbage {
            Some(g) => g.clone(),
            None => mutate(batch_bytes(seq, f.events), &f.muts),
        };
        std::fs::write(&p, data).expect("write a spool file");
    }
    for (name, text) in [("stream-id", &l.stream_id), ("next-seq", &l.next_seq)] {
        if let Some(t) = text {
            std::fs::write(dir.join(name), t).expect("write a spool file");
        }
    }
}

fn check(dir: &std::path::Path, l: &Layout) -> Result<(), TestCaseError> {
    let mut spool = match Spool::open(dir, 1 << 30) {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains(&*dir.to_string_lossy()), "{msg}");
            return Ok(());
        }
    };
    let id = spool.stream_id().to_owned();
    prop_assert!(
        !id.is_empty() && limits::stream_id_problem(&id).is_none(),
        "stream id {id:?}"
    );
    let kept = l.stream_id.as_deref().map(str::trim) == Some(&id);
    let trusted = l
        .next_seq
        .as_deref()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .is_some_and(|n| n >= 1);
    if kept {
        prop_assert!(trusted, "stream id kept with next-seq {:?}", l.next_seq);
    }
    let mut stored = Vec::new();
    let mut from = 0;
    while let Some(s) = spool.next_after(from) {
        stored.push(s);
        match spool.read(s) {
            Ok(Some(b)) => {
                let name = dir.join(format!("{s:020}-{}.batch", spool.events_in(s)));
                let on_disk = std::fs::read(&name).ok();
                prop_assert_eq!(Some(b.data.to_vec()), on_disk, "batch {} read back", s);
            }
            Ok(None) => prop_assert!(false, "indexed batch {s} reads as absent"),
            Err(e) => prop_assert!(e.to_string().contains(".batch"), "{e}"),
        }
        match s.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    prop_assert_eq!(stored.len(), spool.len());
    // Reserving numbers writes `next-seq`: it may fail (a directory in
    // the way), saying on which file; the exporter counts the loss.
    let dir_text = dir.to_string_lossy().into_owned();
    let (first, second) = match (spool.next_sequence(), spool.next_sequence()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            prop_assert!(e.to_string().contains(&dir_text), "{e}");
            return Ok(());
        }
    };
    prop_assert!(first >= 1, "next sequence {first} (stored: {stored:?})");
    prop_assert!(second > first, "sequence {second} after {first}");
    if let Some(&last) = stored.last() {
        prop_assert!(
            first > last,
            "next sequence {first} not above stored {last}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn any_spool_directory_opens_reads_back_and_continues_above_it(l in layout()) {
        let dir = TempDir::new("spool");
        lay(&dir.0, &l);
        check(&dir.0, &l)?;
    }
}

/// Found by this target: a batch file or a `next-seq` at the top of the
/// sequence range (a corrupt or hand-made name) makes the next sequence
/// wrap to 0 in release builds (which the collector refuses, and after
/// which every number repeats under the same stream id) and panics on
/// overflow in debug builds. Reported; spool.rs belongs to the export
/// work in progress.
#[test]
fn sequence_numbers_near_the_top_do_not_wrap_to_zero() {
    for (file, next_seq) in [
        (Some(u64::MAX), None),
        (Some(u64::MAX - 1), None),
        (None, Some(u64::MAX - 5)),
    ] {
        let dir = TempDir::new("spool-top");
        if let Some(s) = file {
            std::fs::write(dir.0.join(format!("{s:020}-1.batch")), batch_bytes(s, 1)).unwrap();
        }
        std::fs::write(dir.0.join("stream-id"), "0123456789abcdef0123456789abcdef").unwrap();
        if let Some(n) = next_seq {
            std::fs::write(dir.0.join("next-seq"), n.to_string()).unwrap();
        }
        let mut spool = Spool::open(&dir.0, 1 << 30).unwrap();
        let a = spool.next_sequence().unwrap();
        let b = spool.next_sequence().unwrap();
        assert!(
            a >= 1 && b > a,
            "file {file:?}, next-seq {next_seq:?}: {a} then {b}"
        );
        if let Some(s) = file {
            assert!(a > s || spool.stream_id() != "0123456789abcdef0123456789abcdef");
        }
    }
}
