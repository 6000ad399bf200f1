//! The gRPC codec of the generated Collector service: prost's, with one
//! check before a message is decoded. A `Batch` is scanned first, every
//! field at any depth ([`crate::scan`]), and refused before any event is
//! allocated when it does not scan to its end, when its events (its own
//! and every finding's evidence) outnumber [`MAX_BATCH_EVENTS`], or when
//! what it decodes into would pass [`decoded_bytes_allowed`] (64 MiB, or
//! 32 bytes per wire byte): an empty list entry is two bytes on the wire
//! and a whole struct once decoded, so eight MiB of them would otherwise
//! become gigabytes.
//!
//! What all streams' decoded batches hold at once is bounded too, by
//! [`DECODE_BUDGET`]: a batch's estimate is reserved before it is
//! decoded (`RESOURCE_EXHAUSTED` when the budget is spent, which an agent
//! retries), and its [`Reservation`] is handed to the code that reads it
//! ([`take_reservation`]), which drops it once done with the batch.
use std::{
    cell::RefCell,
    marker::PhantomData,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use prost::{bytes::Buf, Message};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::{
    limits::{decoded_bytes_allowed, MAX_BATCH_EVENTS},
    scan, v1,
};

/// A message the codec checks before decoding.
pub trait Bounded {
    /// Refuse `bytes` (one encoded message) before it is decoded, or say
    /// how many bytes decoding it allocates (0: not counted against the
    /// [`DECODE_BUDGET`]).
    fn check(_bytes: &[u8]) -> Result<usize, Status> {
        Ok(0)
    }
}

/// Bytes the decoded batches of every stream may hold at once. Unbounded
/// until [`DecodeBudget::set_limit`] (the collector sets it from
/// `--decode-budget-mib`).
pub static DECODE_BUDGET: DecodeBudget = DecodeBudget {
    limit: AtomicUsize::new(usize::MAX),
    used: AtomicUsize::new(0),
    refused: AtomicU64::new(0),
};

/// A bound on the bytes decoded messages hold at once, shared by every
/// stream.
#[derive(Debug)]
pub struct DecodeBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl DecodeBudget {
    /// Bound the bytes held at once.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Messages refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Reserve `bytes`, or say why not.
    fn reserve(&'static self, bytes: usize) -> Result<Reservation, Status> {
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= limit)
            });
        match taken {
            Ok(_) => Ok(Reservation {
                budget: self,
                bytes,
            }),
            Err(used) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Status::resource_exhausted(format!(
                    "the collector's decoded batches hold {} MiB of its {} MiB budget \
                     (--decode-budget-mib); this batch needs {} MiB: send it again later",
                    used >> 20,
                    limit >> 20,
                    bytes.div_ceil(1 << 20)
                )))
            }
        }
    }
}

/// Bytes of the [`DECODE_BUDGET`] one decoded message holds, given back
/// when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: &'static DecodeBudget,
    bytes: usize,
}

impl Reservation {
    /// The bytes reserved.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

thread_local! {
    /// The reservation of the message this thread decoded last, until
    /// its reader takes it. The decoder runs inside the reader's poll of
    /// the stream, on the reader's thread, and the message is handed
    /// over in the same poll, so the reader finds it here; one left
    /// untaken (a reader that does not take them) is dropped at this
    /// thread's next decode.
    static DECODED: RefCell<Option<Reservation>> = const { RefCell::new(None) };
}

/// The [`Reservation`] of the message this thread just decoded: call it
/// right after the stream yields the message, and drop it once done with
/// the message.
pub fn take_reservation() -> Option<Reservation> {
    DECODED.with(|d| d.borrow_mut().take())
}

impl Bounded for v1::Ack {}

impl Bounded for v1::Batch {
    fn check(bytes: &[u8]) -> Result<usize, Status> {
        let f = scan::footprint("Batch", bytes)
            .map_err(|e| Status::invalid_argument(format!("batch refused: {e}")))?;
        // the field named in a refusal, formatted only then
        let most = || {
            f.largest
                .map(|(field, n)| format!(" (the most entries: {n} in {field})"))
                .unwrap_or_default()
        };
        if f.events > MAX_BATCH_EVENTS {
            return Err(Status::invalid_argument(format!(
                "batch holds {} events, evidence included; at most {MAX_BATCH_EVENTS} per batch{}",
                f.events,
                most()
            )));
        }
        let allowed = decoded_bytes_allowed(bytes.len());
        if f.bytes > allowed {
            return Err(Status::invalid_argument(format!(
                "batch of {} KiB would decode into {} MiB; at most {} MiB for its size{}",
                bytes.len() >> 10,
                f.bytes.div_ceil(1 << 20),
                allowed >> 20,
                most()
            )));
        }
        Ok(f.bytes)
    }
}

/// Check `bytes` and reserve what decoding them takes.
fn admit<U: Bounded>(bytes: &[u8]) -> Result<(), Status> {
    let need = U::check(bytes)?;
    // a stale reservation is given back before a new one is taken
    DECODED.with(|d| d.borrow_mut().take());
    if need > 0 {
        let r = DECODE_BUDGET.reserve(need)?;
        DECODED.with(|d| *d.borrow_mut() = Some(r));
    }
    Ok(())
}

/// prost's codec plus [`Bounded::check`] on every decoded message.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec { _pd: PhantomData }
    }
}

/// The decoding half of [`BoundedCodec`].
#[derive(Debug, Default)]
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + Bounded> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A decode buffer holds the whole message in one piece (tonic
        // decodes from one BytesMut); were it ever split, it is copied
        // rather than let through unchecked.
        if buf.chunk().len() == buf.remaining() {
            admit::<U>(buf.chunk())?;
        } else {
            let whole = buf.copy_to_bytes(buf.remaining());
            admit::<U>(&whole)?;
            return U::decode(whole)
                .map(Some)
                .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")));
        }
        self.inner.decode(buf)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Bounded + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> BoundedDecoder<U> {
        BoundedDecoder {
            inner: ProstDecoder::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{samples, wire};
    use std::mem::size_of;

    fn batch_of(events: Vec<v1::Event>) -> Vec<u8> {
        v1::Batch {
            node_id: "n1".into(),
            sequence: 1,
            events,
            sent_unix_nano: 5,
            stream_id: "s".into(),
        }
        .encode_to_vec()
    }

    fn refused(bytes: &[u8]) -> String {
        let e = v1::Batch::check(bytes).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        e.message().to_owned()
    }

    #[test]
    fn counts_events_without_decoding() {
        let empty = |n| batch_of(vec![v1::Event::default(); n]);
        assert!(v1::Batch::check(&empty(0)).is_ok());
        assert!(v1::Batch::check(&empty(MAX_BATCH_EVENTS)).is_ok());
        let m = refused(&empty(MAX_BATCH_EVENTS + 1));
        assert!(m.contains("65537 events"), "{m}");
        assert!(m.contains("65537 in Batch.events"), "{m}");
    }

    /// One finding whose evidence is `n` empty events.
    fn finding_with_evidence(n: usize) -> v1::Event {
        v1::Event {
            detail: Some(v1::event::Detail::Finding(v1::Finding {
                evidence: vec![v1::Event::default(); n],
                ..v1::Finding::default()
            })),
            ..v1::Event::default()
        }
    }

    #[test]
    fn evidence_counts_as_events() {
        // eight top-level events: the old scan counted 8 and let them
        // through
        let eight = batch_of(vec![finding_with_evidence(8_192); 8]);
        let m = refused(&eight);
        assert!(m.contains("65544 events, evidence included"), "{m}");
        assert!(m.contains("65536 in Finding.evidence"), "{m}");
        // evidence inside evidence is found too
        let mut outer = finding_with_evidence(0);
        if let Some(v1::event::Detail::Finding(f)) = &mut outer.detail {
            f.evidence = vec![finding_with_evidence(8_192); 8];
        }
        assert!(refused(&batch_of(vec![outer])).contains("65545 events"));
        // one finding with more evidence than any agent sends
        let m = refused(&batch_of(vec![finding_with_evidence(16_385)]));
        assert!(
            m.contains("Finding.evidence holds 16385 entries in one message; at most 16384"),
            "{m}"
        );
    }

    #[test]
    fn empty_list_entries_are_weighed() {
        // empty probe statuses: 2 wire bytes each, 80 decoded bytes each
        let ev = v1::Event {
            detail: Some(v1::event::Detail::Agent(Box::new(v1::AgentInfo {
                probes: vec![v1::ProbeStatus::default(); 16_384],
                ..v1::AgentInfo::default()
            }))),
            ..v1::Event::default()
        };
        let bytes = batch_of(vec![ev; 100]);
        let f = scan::footprint("Batch", &bytes).unwrap();
        // the batch (88), its events' vector (128 events), two ids
        // (32-byte chunks), per event its box and its probes' vector
        let agent = scan::heap(size_of::<v1::AgentInfo>());
        assert_eq!(
            f.bytes,
            88 + 128 * size_of::<v1::Event>() + 2 * 32 + 100 * (agent + 16_384 * 80)
        );
        let m = refused(&bytes);
        assert!(
            m.contains("would decode into 126 MiB; at most 100 MiB"),
            "{m}"
        );
        assert!(m.contains("1638400 in AgentInfo.probes"), "{m}");
        // one list longer than any agent sends
        let ancestors = v1::Event {
            ancestors: vec![v1::Ancestor::default(); 16_385],
            ..v1::Event::default()
        };
        let m = refused(&batch_of(vec![ancestors]));
        assert!(m.contains("Event.ancestors holds 16385 entries"), "{m}");
    }

    #[test]
    fn what_agents_send_fits_with_room() {
        // the most events an agent puts in a batch, every kind, cut to
        // the collector's default largest message
        let kinds: Vec<v1::Event> = samples::all().iter().map(wire::to_wire).collect();
        let mut events = Vec::new();
        let mut wire_len = 0;
        for ev in kinds.iter().cycle() {
            wire_len += ev.encoded_len() + 3;
            if events.len() == crate::limits::MAX_AGENT_BATCH_EVENTS || wire_len > 8 << 20 {
                break;
            }
            events.push(ev.clone());
        }
        let n = events.len();
        let evidence: usize = events
            .iter()
            .map(|e| match &e.detail {
                Some(v1::event::Detail::Finding(f)) => f.evidence.len(),
                _ => 0,
            })
            .sum();
        assert!(evidence > 0, "the samples include a finding with evidence");
        let bytes = batch_of(events);
        let f = scan::footprint("Batch", &bytes).unwrap();
        assert_eq!(f.events, n + evidence);
        assert!(
            f.bytes <= 12 * bytes.len(),
            "{n} events of every kind, {} wire bytes, decode into {} bytes",
            bytes.len(),
            f.bytes
        );
        assert!(v1::Batch::check(&bytes).is_ok());
        // the smallest events, as many as an agent sends in one batch
        let fork = wire::to_wire(&samples::fork());
        let forks = batch_of(vec![fork; crate::limits::MAX_AGENT_BATCH_EVENTS]);
        let f = scan::footprint("Batch", &forks).unwrap();
        assert!(f.bytes * 3 < decoded_bytes_allowed(forks.len()) * 2);
        assert!(v1::Batch::check(&forks).is_ok());
        // execs of one-character arguments (4,096 bytes of argv each, the
        // most the agent reads) filling the collector's largest message
        let exec = v1::Event {
            process: Some(v1::Process {
                argv: vec!["a".into(); 2_048],
                ..v1::Process::default()
            }),
            ..wire::to_wire(&samples::exec())
        };
        let per = exec.encoded_len() + 4;
        let execs = batch_of(vec![exec; (8 << 20) / per]);
        let f = scan::footprint("Batch", &execs).unwrap();
        assert!(f.bytes < decoded_bytes_allowed(execs.len()) * 2 / 3);
        assert!(v1::Batch::check(&execs).is_ok());
    }

    #[test]
    fn the_budget_bounds_what_is_held_at_once() {
        static BUDGET: DecodeBudget = DecodeBudget {
            limit: AtomicUsize::new(100 << 20),
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        };
        let a = BUDGET.reserve(60 << 20).unwrap();
        let e = BUDGET.reserve(50 << 20).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("hold 60 MiB of its 100 MiB budget")
                && e.message().contains("needs 50 MiB"),
            "{}",
            e.message()
        );
        assert_eq!((BUDGET.used(), BUDGET.refused()), (60 << 20, 1));
        let b = BUDGET.reserve(40 << 20).unwrap();
        drop(a);
        assert_eq!(BUDGET.used(), 40 << 20);
        let c = BUDGET.reserve(50 << 20).unwrap();
        assert_eq!(c.bytes(), 50 << 20);
        drop((b, c));
        assert_eq!(BUDGET.used(), 0);
    }

    #[test]
    fn a_message_that_does_not_scan_is_refused() {
        assert!(refused(&[0x1a, 0xff]).contains("Batch is not well-formed"));
        assert!(refused(&[0x1a, 0x05, 0x00]).contains("length past the end"));
        // an empty group (start 15, end 15) in front: prost would skip it
        let mut grouped = vec![0x7b, 0x7c];
        grouped.extend(batch_of(vec![v1::Event::default(); 3]));
        assert!(refused(&grouped).contains("a group"));
        // a torn field inside an event's process, which the old scan of
        // top-level fields did not look into
        let torn = [0x1a, 0x04, 0x2a, 0x02, 0x0a, 0x05];
        assert!(refused(&torn).contains("Process is not well-formed"));
    }
}
