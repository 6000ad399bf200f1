//! What an encoded message will become once prost decodes it, read from
//! its bytes before a byte of it is decoded.
//!
//! Protobuf lets a few wire bytes stand for a whole struct: an empty
//! list entry is two bytes (a tag and a zero length), and decodes into a
//! struct of its message type, a `String` or a map entry. An 8 MiB batch
//! of empty `Finding.evidence` entries would decode into four million
//! events. The scan walks every length-delimited field at any depth and
//! adds up what decoding it allocates, so the codec can refuse such a
//! message first.
//!
//! The schema the scan walks is the compiled `.proto` itself (the file
//! descriptor set `build.rs` has `protoc` write), so a field added to the
//! `.proto` is walked without a change here; the Rust size of each
//! message type comes from [`message_size`], which a unit test checks
//! covers every message. A list entry costs its type's size; a single
//! message field costs nothing beyond its parent's struct, which holds
//! it, unless `boxed.rs` (shared with `build.rs`) boxes it.
use std::{collections::HashMap, mem::size_of, sync::LazyLock};

use prost::{
    bytes::Buf,
    encoding::{decode_varint, WireType},
    Message,
};
use prost_types::{field_descriptor_proto::Type, FileDescriptorSet};

use crate::v1;

include!("../boxed.rs");

/// What one message decodes into.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// `Event` messages at any depth (a batch's events and every
    /// finding's evidence).
    pub events: usize,
    /// Bytes decoding allocates or fills: each message's struct, each
    /// string's text, each list and map entry. An estimate from the
    /// types' sizes; vectors growing by doubling can hold up to as much
    /// again in spare capacity.
    pub bytes: usize,
    /// The repeated field with the most entries, and their number: what
    /// to name when the message is refused.
    pub largest: Option<(&'static str, usize)>,
}

/// Why a message does not scan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanError {
    /// A bad varint, a length past the end, a group (wire types 3 and
    /// 4), which no agent sends: a scan that stopped early would let the
    /// rest through uncounted.
    #[error("{field} is not well-formed protobuf ({why}); no agent sends groups or torn fields")]
    Malformed {
        /// The message or field where the scan stopped.
        field: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// Messages nested deeper than prost decodes.
    #[error("{field} is nested more than {MAX_DEPTH} messages deep")]
    TooDeep {
        /// The field past the limit.
        field: &'static str,
    },
}

/// prost refuses messages nested deeper than this (its recursion limit).
pub const MAX_DEPTH: usize = 100;

/// Scan `bytes`, one encoded message of the spyglass.v1 type `name`
/// (for example `Batch`).
///
/// # Panics
/// When `name` is not a spyglass.v1 message (a programming error).
pub fn footprint(name: &str, bytes: &[u8]) -> Result<Footprint, ScanError> {
    let schema = &*SCHEMA;
    let root = *schema
        .by_name
        .get(&format!(".spyglass.v1.{name}"))
        .unwrap_or_else(|| panic!("spyglass.v1.{name} is not in the schema"));
    let mut walk = Walk {
        schema,
        entries: vec![0; schema.fields.len()],
        footprint: Footprint {
            bytes: schema.messages[root].size,
            ..Footprint::default()
        },
    };
    walk.message(root, bytes, 0)?;
    let largest = walk
        .entries
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (schema.fields[i].name, *n));
    Ok(Footprint {
        largest,
        ..walk.footprint
    })
}

/// A map entry as prost holds it: two `String`s in a hash map slot, with
/// the table's control byte and load factor.
const MAP_ENTRY_SIZE: usize = 2 * size_of::<String>() + 16;

/// A repeated scalar element at its widest (`uint64`, `double`).
const SCALAR_SIZE: usize = 8;

/// The Rust size of a spyglass.v1 message type; None for a type this
/// table does not know (the unit test keeps it complete).
fn message_size(full_name: &str) -> Option<usize> {
    let name = full_name.strip_prefix(".spyglass.v1.")?;
    Some(match name {
        "Batch" => size_of::<v1::Batch>(),
        "Ack" => size_of::<v1::Ack>(),
        "Event" => size_of::<v1::Event>(),
        "Process" => size_of::<v1::Process>(),
        "Ancestor" => size_of::<v1::Ancestor>(),
        // boxed in Event: the box's allocation
        "ContainerContext" => size_of::<v1::ContainerContext>(),
        "Posture" => size_of::<v1::Posture>(),
        "ExitInfo" => size_of::<v1::ExitInfo>(),
        "OomKill" => size_of::<v1::OomKill>(),
        "Usage" => size_of::<v1::Usage>(),
        "Restarts" => size_of::<v1::Restarts>(),
        "ForkInfo" => size_of::<v1::ForkInfo>(),
        "Endpoint" => size_of::<v1::Endpoint>(),
        "Network" => size_of::<v1::Network>(),
        "Loss" => size_of::<v1::Loss>(),
        "LossTotals" => size_of::<v1::LossTotals>(),
        "ProbeStatus" => size_of::<v1::ProbeStatus>(),
        "AgentInfo" => size_of::<v1::AgentInfo>(),
        "Lifecycle" => size_of::<v1::Lifecycle>(),
        "Tracked" => size_of::<v1::Tracked>(),
        "Finding" => size_of::<v1::Finding>(),
        _ if name.ends_with("Entry") => MAP_ENTRY_SIZE,
        _ => return None,
    })
}

/// How a field's value is held once decoded.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A message (index into `Schema::messages`).
    Message(usize),
    /// A string or bytes: its length.
    Text,
    /// A number, bool or enum: packed when length-delimited.
    Scalar,
}

#[derive(Debug)]
struct Field {
    /// `Message.field`, for errors.
    name: &'static str,
    kind: Kind,
    repeated: bool,
    /// A single message field held in a `Box` (an allocation of its own).
    boxed: bool,
}

#[derive(Debug)]
struct MessageType {
    name: &'static str,
    size: usize,
    is_event: bool,
    /// Whether decoding it can allocate more than its wire length: it
    /// has a list, a map or a box, itself or in a message it holds. One
    /// that cannot is not walked (its strings are counted at its length).
    walk: bool,
    /// field number -> index into `Schema::fields` (numbers are small)
    fields: Vec<Option<usize>>,
}

#[derive(Debug)]
struct Schema {
    messages: Vec<MessageType>,
    fields: Vec<Field>,
    by_name: HashMap<String, usize>,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let set = FileDescriptorSet::decode(DESCRIPTORS).expect("build.rs wrote a descriptor set");
    Schema::from_set(&set)
});

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/spyglass.v1.bin"));

/// The schema's names live as long as the program (one leak, at start).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl Schema {
    fn from_set(set: &FileDescriptorSet) -> Schema {
        // every message type, nested map entries included, by full name
        let mut protos = Vec::new();
        for file in &set.file {
            let package = format!(".{}", file.package());
            let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
                .message_type
                .iter()
                .map(|m| (package.clone(), m))
                .collect();
            while let Some((scope, m)) = stack.pop() {
                let full = format!("{scope}.{}", m.name());
                stack.extend(m.nested_type.iter().map(|n| (full.clone(), n)));
                protos.push((full, m));
            }
        }
        let by_name: HashMap<String, usize> = protos
            .iter()
            .enumerate()
            .map(|(i, (full, _))| (full.clone(), i))
            .collect();
        let mut fields = Vec::new();
        let messages = protos
            .iter()
            .map(|(full, m)| {
                let short = full.trim_start_matches(".spyglass.v1.");
                let mut numbers = Vec::new();
                for f in &m.field {
                    let path = match f.oneof_index {
                        Some(i) if !f.proto3_optional() => {
                            format!("{full}.{}.{}", m.oneof_decl[i as usize].name(), f.name())
                        }
                        _ => format!("{full}.{}", f.name()),
                    };
                    let kind = match f.r#type() {
                        Type::Message => Kind::Message(by_name[f.type_name()]),
                        Type::String | Type::Bytes => Kind::Text,
                        Type::Group => unreachable!("proto3 has no groups"),
                        _ => Kind::Scalar,
                    };
                    let number = usize::try_from(f.number()).unwrap_or(0);
                    if numbers.len() <= number {
                        numbers.resize(number + 1, None);
                    }
                    numbers[number] = Some(fields.len());
                    fields.push(Field {
                        name: leak(format!("{short}.{}", f.name())),
                        kind,
                        repeated: f.label() == prost_types::field_descriptor_proto::Label::Repeated,
                        boxed: BOXED.contains(&path.as_str()),
                    });
                }
                MessageType {
                    name: leak(short.to_owned()),
                    // a type missing from message_size fails its unit
                    // test; counted as large meanwhile
                    size: message_size(full).unwrap_or(1024),
                    is_event: full == ".spyglass.v1.Event",
                    walk: false,
                    fields: numbers,
                }
            })
            .collect();
        let mut schema = Schema {
            messages,
            fields,
            by_name,
        };
        schema.mark_walks();
        schema
    }

    /// Set `walk` on every message type that has a list, a map or a box,
    /// or holds one that has (to a fixed point: message types nest).
    fn mark_walks(&mut self) {
        loop {
            let mut changed = false;
            for m in 0..self.messages.len() {
                let walk = self.messages[m].fields.iter().flatten().any(|&i| {
                    let f = &self.fields[i];
                    f.repeated
                        || f.boxed
                        || matches!(f.kind, Kind::Message(t) if self.messages[t].walk)
                });
                if walk && !self.messages[m].walk {
                    self.messages[m].walk = true;
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }
}

struct Walk<'s> {
    schema: &'s Schema,
    /// entries seen per field (index into `Schema::fields`)
    entries: Vec<usize>,
    footprint: Footprint,
}

impl Walk<'_> {
    /// Add up one message's fields (its own struct is counted by the
    /// caller).
    fn message(&mut self, ty: usize, mut buf: &[u8], depth: usize) -> Result<(), ScanError> {
        let msg = &self.schema.messages[ty];
        let bad = |why| ScanError::Malformed {
            field: msg.name,
            why,
        };
        while buf.has_remaining() {
            let key = decode_varint(&mut buf).map_err(|_| bad("bad field key"))?;
            let field = usize::try_from(key >> 3)
                .ok()
                .and_then(|n| *msg.fields.get(n)?)
                .map(|i| (i, &self.schema.fields[i]));
            let wire = WireType::try_from(key & 7).map_err(|_| bad("bad wire type"))?;
            let len = match wire {
                WireType::Varint => {
                    decode_varint(&mut buf).map_err(|_| bad("bad varint"))?;
                    0
                }
                WireType::SixtyFourBit => 8,
                WireType::ThirtyTwoBit => 4,
                WireType::LengthDelimited => {
                    usize::try_from(decode_varint(&mut buf).map_err(|_| bad("bad length"))?)
                        .map_err(|_| bad("length past the end"))?
                }
                WireType::StartGroup | WireType::EndGroup => return Err(bad("a group")),
            };
            if len > buf.len() {
                return Err(bad("length past the end"));
            }
            let (value, rest) = buf.split_at(len);
            buf = rest;
            // a field the schema does not know is skipped by prost: it
            // allocates nothing
            if let Some((index, field)) = field {
                self.field(index, field, wire, value, depth)?;
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        index: usize,
        field: &Field,
        wire: WireType,
        value: &[u8],
        depth: usize,
    ) -> Result<(), ScanError> {
        if field.repeated {
            self.entries[index] += 1;
        }
        let f = &mut self.footprint;
        match (field.kind, wire) {
            (Kind::Message(ty), WireType::LengthDelimited) => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(ScanError::TooDeep { field: field.name });
                }
                let child = &self.schema.messages[ty];
                if field.repeated || field.boxed {
                    f.bytes = f.bytes.saturating_add(child.size);
                }
                f.events += usize::from(child.is_event);
                if child.walk {
                    self.message(ty, value, depth + 1)?;
                } else {
                    // strings at most as long as the message
                    f.bytes = f.bytes.saturating_add(value.len());
                }
            }
            (Kind::Text, WireType::LengthDelimited) => {
                let own = if field.repeated {
                    size_of::<String>()
                } else {
                    0
                };
                f.bytes = f.bytes.saturating_add(own + value.len());
            }
            // a packed list: at most one element per byte
            (Kind::Scalar, WireType::LengthDelimited) => {
                f.bytes = f.bytes.saturating_add(value.len() * SCALAR_SIZE);
            }
            (Kind::Scalar, _) if field.repeated => {
                f.bytes = f.bytes.saturating_add(SCALAR_SIZE);
            }
            // a scalar in place, or a wire type that does not match the
            // field (prost refuses the message when it decodes it)
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_its_rust_size() {
        for m in &SCHEMA.messages {
            let full = format!(".spyglass.v1.{}", m.name);
            assert!(
                message_size(&full).is_some(),
                "{} needs a line in message_size",
                m.name
            );
        }
        assert!(SCHEMA.messages.len() > 20, "{:?}", SCHEMA.by_name.keys());
    }

    #[test]
    fn boxed_fields_are_boxes() {
        // compiles only while build.rs boxes what boxed.rs names
        let _: Option<Box<v1::ContainerContext>> = v1::Event::default().container;
        let _ = v1::event::Detail::Agent(Box::default());
        let boxed: Vec<&str> = SCHEMA
            .fields
            .iter()
            .filter(|f| f.boxed)
            .map(|f| f.name)
            .collect();
        assert_eq!(boxed, ["Event.container", "Event.agent"]);
        let walked = |name| SCHEMA.messages[SCHEMA.by_name[name]].walk;
        assert!(walked(".spyglass.v1.Event") && walked(".spyglass.v1.Finding"));
        assert!(walked(".spyglass.v1.Process") && walked(".spyglass.v1.ContainerContext"));
        assert!(!walked(".spyglass.v1.Network") && !walked(".spyglass.v1.Usage"));
    }

    #[test]
    fn an_event_costs_its_struct_and_its_boxes() {
        let batch = |events| {
            v1::Batch {
                events,
                ..v1::Batch::default()
            }
            .encode_to_vec()
        };
        let empty = footprint("Batch", &batch(vec![v1::Event::default(); 3])).unwrap();
        let base = size_of::<v1::Batch>() + 3 * size_of::<v1::Event>();
        assert_eq!(empty.bytes, base);
        assert_eq!(empty.events, 3);
        assert_eq!(empty.largest, Some(("Batch.events", 3)));
        let full = v1::Event {
            node: "node-1".into(),
            process: Some(v1::Process {
                argv: vec!["sh".into(), "-c".into()],
                ..v1::Process::default()
            }),
            container: Some(Box::new(v1::ContainerContext {
                labels: [("k".to_owned(), "vv".to_owned())].into(),
                ..v1::ContainerContext::default()
            })),
            ..v1::Event::default()
        };
        let f = footprint("Batch", &batch(vec![full])).unwrap();
        let want = size_of::<v1::Batch>()
            + size_of::<v1::Event>()
            + "node-1".len()
            + 2 * size_of::<String>()
            + "sh-c".len()
            + size_of::<v1::ContainerContext>()
            + MAP_ENTRY_SIZE
            // a map entry is not walked: its length on the wire (two
            // tags, two lengths, "k" and "vv") stands for its strings
            + 7;
        assert_eq!(f.bytes, want);
    }
}
