//! The gRPC codec of the generated Collector service: prost's, with one
//! check before a message is decoded. A `Batch` whose events outnumber
//! [`MAX_BATCH_EVENTS`], or that does not scan to its end, is refused
//! from a scan of its top-level fields, before any event is allocated:
//! eight MiB of empty events would otherwise decode into millions of
//! structs.
use std::marker::PhantomData;

use prost::{bytes::Buf, Message};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::{limits::MAX_BATCH_EVENTS, v1};

/// A message the codec checks before decoding.
pub trait Bounded {
    /// Refuse `bytes` (one encoded message) before it is decoded.
    fn check(_bytes: &[u8]) -> Result<(), Status> {
        Ok(())
    }
}

impl Bounded for v1::Ack {}

/// `Batch.events` is field 3.
const EVENTS_FIELD: u64 = 3;

impl Bounded for v1::Batch {
    fn check(bytes: &[u8]) -> Result<(), Status> {
        let Some(events) = count_field(bytes, EVENTS_FIELD) else {
            // groups (wire types 3, 4), bad varints, lengths past the end:
            // nothing an agent sends, and a scan that stopped early would
            // let the rest through uncounted
            return Err(Status::invalid_argument(
                "batch is not a well-formed protobuf message (no agent sends groups or torn fields)",
            ));
        };
        if events > MAX_BATCH_EVENTS {
            return Err(Status::invalid_argument(format!(
                "batch holds {events} events; at most {MAX_BATCH_EVENTS} per batch"
            )));
        }
        Ok(())
    }
}

/// How many times top-level length-delimited field `field` occurs; None
/// when the message does not scan to its end (a group, a bad varint, a
/// length past the end).
fn count_field(mut buf: &[u8], field: u64) -> Option<usize> {
    let mut n = 0;
    while buf.has_remaining() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut buf).ok()?;
                0
            }
            1 => 8,
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).ok()?;
                if key >> 3 == field {
                    n += 1;
                }
                usize::try_from(len).ok()?
            }
            5 => 4,
            _ => return None,
        };
        if skip > buf.len() {
            return None;
        }
        buf.advance(skip);
    }
    Some(n)
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
            U::check(buf.chunk())?;
        } else {
            let whole = buf.copy_to_bytes(buf.remaining());
            U::check(&whole)?;
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

    fn batch_of(n: usize) -> Vec<u8> {
        v1::Batch {
            node_id: "n1".into(),
            sequence: 1,
            events: vec![v1::Event::default(); n],
            sent_unix_nano: 5,
            stream_id: "s".into(),
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_events_without_decoding() {
        assert_eq!(count_field(&batch_of(0), EVENTS_FIELD), Some(0));
        assert_eq!(count_field(&batch_of(3), EVENTS_FIELD), Some(3));
        assert!(v1::Batch::check(&batch_of(MAX_BATCH_EVENTS)).is_ok());
        let e = v1::Batch::check(&batch_of(MAX_BATCH_EVENTS + 1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("65537 events"), "{}", e.message());
    }

    #[test]
    fn a_message_that_does_not_scan_is_refused() {
        assert_eq!(count_field(&[0x1a, 0xff], EVENTS_FIELD), None);
        assert_eq!(count_field(&[0x1a, 0x05, 0x00], EVENTS_FIELD), None);
        // an empty group (start 15, end 15) in front: prost would skip it
        let mut grouped = vec![0x7b, 0x7c];
        grouped.extend(batch_of(MAX_BATCH_EVENTS + 1));
        assert_eq!(count_field(&grouped, EVENTS_FIELD), None);
        let e = v1::Batch::check(&grouped).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
