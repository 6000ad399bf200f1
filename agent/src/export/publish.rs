//! The `Publish` stream with batches encoded once: the spool's bytes go
//! on the wire as they are stored (a shared [`Bytes`], no decode and
//! re-encode per send). The send time, which changes on every resend, is
//! appended as one more field: protobuf keeps the last value of a scalar
//! field, and the stored batch never carries it.
//!
//! A batch is built as it fills ([`BatchBuf`]): each event is encoded as
//! it arrives (field `events`), and the batch's own fields follow when it
//! is sealed. Protobuf lets fields come in any order, so this is the same
//! message as `wire::Batch`, without a `Vec` of wire events kept, grown
//! and measured twice.
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use spyglass_proto::v1 as wire;

use super::spool::Stored;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    Status,
};

/// `Batch` field numbers (spyglass/v1/collector.proto); the tests check
/// them against the generated type.
const NODE_ID_FIELD: u32 = 1;
const SEQUENCE_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 3;
const SENT_UNIX_NANO_FIELD: u32 = 4;
const STREAM_ID_FIELD: u32 = 5;
const PUBLISH: &str = "/spyglass.v1.Collector/Publish";
/// A batch buffer bigger than this is let go after sealing.
const KEEP_BYTES: usize = 8 << 20;

/// One send of a stored batch.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The encoded `Batch`, without `sent_unix_nano`.
    pub batch: Bytes,
    pub sent_unix_nano: i64,
}

/// Writes a stored batch and its send time; reads `Ack`s.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCodec;

pub struct BatchEncoder;
pub struct AckDecoder;

impl Encoder for BatchEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.batch);
        if item.sent_unix_nano != 0 {
            prost::encoding::int64::encode(SENT_UNIX_NANO_FIELD, &item.sent_unix_nano, dst);
        }
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = wire::Ack;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<wire::Ack>, Status> {
        wire::Ack::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable ack from the collector: {e}")))
    }
}

impl Codec for BatchCodec {
    type Encode = Outgoing;
    type Decode = wire::Ack;
    type Encoder = BatchEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> BatchEncoder {
        BatchEncoder
    }

    fn decoder(&mut self) -> AckDecoder {
        AckDecoder
    }
}

/// A stored batch ready to send. One read back from disk is decoded once
/// first: a corrupt file would otherwise be refused by the collector as
/// an internal error, retried forever, and stall the node's delivery.
pub fn sendable(stored: Stored) -> Result<Bytes, String> {
    if stored.from_disk {
        wire::Batch::decode(stored.data.clone()).map_err(|e| format!("corrupt spool file: {e}"))?;
    }
    Ok(stored.data)
}

/// The path of the `Publish` method.
pub fn path() -> PathAndQuery {
    PathAndQuery::from_static(PUBLISH)
}

/// Evidence events under `ev`, at any depth.
fn evidence_of(ev: &wire::Event) -> u64 {
    match &ev.detail {
        Some(wire::event::Detail::Finding(f)) => {
            f.evidence.iter().map(|e| 1 + evidence_of(e)).sum()
        }
        _ => 0,
    }
}

/// A batch being filled: its events encoded so far.
#[derive(Debug, Default)]
pub struct BatchBuf {
    buf: BytesMut,
    events: u64,
    counted: u64,
}

impl BatchBuf {
    /// Append one event.
    pub fn push(&mut self, ev: &wire::Event) {
        prost::encoding::message::encode(EVENTS_FIELD, ev, &mut self.buf);
        self.events += 1;
        self.counted += 1 + evidence_of(ev);
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Events as the collector counts them against its per-batch limit:
    /// each one and every finding's evidence.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The batch as the spool stores it: its events, then node, sequence
    /// and stream (no send time). The bytes are copied out at their exact
    /// length (what the spool's memory bound counts; the growing buffer's
    /// capacity can be twice that), and the buffer is kept for the next
    /// batch, empty.
    pub fn seal(&mut self, node_id: &str, sequence: u64, stream_id: &str) -> Bytes {
        let buf = &mut self.buf;
        prost::encoding::string::encode(NODE_ID_FIELD, &node_id.to_owned(), buf);
        prost::encoding::uint64::encode(SEQUENCE_FIELD, &sequence, buf);
        prost::encoding::string::encode(STREAM_ID_FIELD, &stream_id.to_owned(), buf);
        self.events = 0;
        self.counted = 0;
        let sealed = Bytes::copy_from_slice(buf);
        buf.clear();
        if buf.capacity() > KEEP_BYTES {
            *buf = BytesMut::new();
        }
        sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pid: u32) -> wire::Event {
        wire::Event {
            kind: wire::EventKind::Exec as i32,
            node: "n".into(),
            process: Some(wire::Process {
                pid,
                comm: "sh".into(),
                ..wire::Process::default()
            }),
            ..wire::Event::default()
        }
    }

    #[test]
    fn a_batch_built_as_it_fills_is_the_generated_batch() {
        let mut b = BatchBuf::default();
        b.push(&event(1));
        b.push(&event(2));
        assert_eq!(b.events(), 2);
        let stored = b.seal("n1", 9, "s1");
        assert_eq!((b.events(), b.len()), (0, 0), "sealing starts over");
        let want = wire::Batch {
            node_id: "n1".into(),
            sequence: 9,
            events: vec![event(1), event(2)],
            sent_unix_nano: 0,
            stream_id: "s1".into(),
        };
        assert_eq!(wire::Batch::decode(stored.clone()).unwrap(), want);
        // the same bytes as the generated encoder's, fields reordered
        assert_eq!(stored.len(), want.encoded_len());
    }

    #[test]
    fn evidence_counts_toward_the_batch_limit() {
        let finding = wire::Event {
            detail: Some(wire::event::Detail::Finding(wire::Finding {
                evidence: vec![event(1)],
                ..wire::Finding::default()
            })),
            ..event(2)
        };
        let mut b = BatchBuf::default();
        b.push(&finding);
        b.push(&event(3));
        assert_eq!((b.events(), b.counted()), (2, 3));
        let stored = b.seal("n", 1, "s");
        assert_eq!(b.counted(), 0, "sealing starts over");
        let f = spyglass_proto::scan::footprint("Batch", &stored).unwrap();
        assert_eq!(f.events, 3, "the collector counts what the agent counted");
    }

    #[test]
    fn a_corrupt_file_is_refused_before_sending_and_memory_is_trusted() {
        let mut b = BatchBuf::default();
        b.push(&event(1));
        let good = b.seal("n", 1, "s");
        let stored = |data: Bytes, from_disk| Stored { data, from_disk };
        assert_eq!(sendable(stored(good.clone(), true)).unwrap(), good);
        let garbage = Bytes::from_static(b"\xff\xff\xff\xff garbage");
        let e = sendable(stored(garbage.clone(), true)).unwrap_err();
        assert!(e.starts_with("corrupt spool file: "), "{e}");
        // just encoded by this agent: not decoded again
        assert_eq!(sendable(stored(garbage.clone(), false)).unwrap(), garbage);
    }

    #[test]
    fn the_appended_send_time_is_what_the_collector_decodes() {
        let mut buf = BatchBuf::default();
        buf.push(&wire::Event::default());
        let stored = buf.seal("n", 7, "s");
        let b = wire::Batch {
            node_id: "n".into(),
            sequence: 7,
            events: vec![wire::Event::default()],
            sent_unix_nano: 0,
            stream_id: "s".into(),
        };
        let mut out = bytes::BytesMut::new();
        out.put_slice(&stored);
        prost::encoding::int64::encode(SENT_UNIX_NANO_FIELD, &42, &mut out);
        let got = wire::Batch::decode(out.freeze()).unwrap();
        assert_eq!(
            got,
            wire::Batch {
                sent_unix_nano: 42,
                ..b
            }
        );
    }
}
