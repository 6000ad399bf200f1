//! The `Publish` stream with batches encoded once: the spool's bytes go
//! on the wire as they are stored (a shared [`Bytes`], no decode and
//! re-encode per send). The send time, which changes on every resend, is
//! appended as one more field: protobuf keeps the last value of a scalar
//! field, and the stored batch never carries it.
use bytes::{BufMut, Bytes};
use prost::Message;
use spyglass_proto::v1 as wire;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    Status,
};

/// `Batch.sent_unix_nano` (spyglass/v1/collector.proto).
const SENT_UNIX_NANO_FIELD: u32 = 4;
const PUBLISH: &str = "/spyglass.v1.Collector/Publish";

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

/// The path of the `Publish` method.
pub fn path() -> PathAndQuery {
    PathAndQuery::from_static(PUBLISH)
}

/// A batch as the spool stores it: encoded once, without a send time.
pub fn encode(batch: &wire::Batch) -> Bytes {
    debug_assert_eq!(batch.sent_unix_nano, 0);
    Bytes::from(batch.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appended_send_time_is_what_the_collector_decodes() {
        let b = wire::Batch {
            node_id: "n".into(),
            sequence: 7,
            events: vec![wire::Event::default()],
            sent_unix_nano: 0,
            stream_id: "s".into(),
        };
        let stored = encode(&b);
        let mut out = bytes::BytesMut::new();
        out.put_slice(&stored);
        prost::encoding::int64::encode(SENT_UNIX_NANO_FIELD, &42, &mut out);
        let got = wire::Batch::decode(out.freeze()).unwrap();
        assert_eq!(got, wire::Batch { sent_unix_nano: 42, ..b });
    }
}
