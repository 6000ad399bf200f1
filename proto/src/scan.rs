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
    /// Bytes decoding allocates: each list's and map's capacity as it
    /// grows by doubling, each boxed struct, each string's heap chunk
    /// (glibc's, at least 32 bytes). An upper bound of what the allocator
    /// is asked for (a unit test decodes hostile shapes under a counting
    /// allocator), close to it for what agents send.
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
    #[error("{message} is not well-formed protobuf ({why}); no agent sends groups or torn fields")]
    Malformed {
        /// The message type where the scan stopped.
        message: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// A list longer in one message than any agent sends: its entries
    /// cost little to count but each would be rendered into the line.
    #[error("{field} holds {entries} entries in one message; at most {MAX_LIST_ENTRIES} (no agent sends more)")]
    TooMany {
        /// The list.
        field: &'static str,
        /// Its entries.
        entries: usize,
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

/// Most entries of one list (or map) in one message, a batch's events
/// aside (bounded by [`crate::limits::MAX_BATCH_EVENTS`]). Agents send at
/// most 4,096 arguments (4 KiB of argv), a few dozen labels, ancestors,
/// capabilities or probes.
pub const MAX_LIST_ENTRIES: usize = 16_384;

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

/// A map slot as prost's `HashMap<String, String>` holds it: the two
/// `String`s and the table's control byte.
const MAP_SLOT_SIZE: usize = 2 * size_of::<String>() + 1;

/// A repeated scalar element at its widest (`uint64`, `double`).
const SCALAR_SIZE: usize = 8;

/// What glibc's malloc takes for `len` bytes: a chunk of the length plus
/// its 8-byte header, in 16-byte steps, at least 32; nothing for an
/// empty string (it allocates nothing).
pub(crate) fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_add(8 + 15).max(32) & !15
    }
}

/// Bytes a `Vec` of `n` elements of `size` bytes holds once `n` pushes
/// grew it: Rust's first capacity (8, 4 or 1 elements by size), doubled.
fn vec_bytes(n: usize, size: usize) -> usize {
    let first = match size {
        1 => 8,
        2..=1024 => 4,
        _ => 1,
    };
    n.checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .max(first)
        .saturating_mul(size)
}

/// Bytes hashbrown's table holds for `n` entries: buckets a power of two
/// at most 7/8 full (4 and 8 below 8), a slot and a control byte each,
/// plus one group of control bytes.
fn map_bytes(n: usize) -> usize {
    let buckets = match n {
        0..=3 => 4,
        4..=7 => 8,
        _ => (n.saturating_mul(8) / 7)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX),
    };
    buckets.saturating_mul(MAP_SLOT_SIZE).saturating_add(16)
}

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
        "ImageLineage" => size_of::<v1::ImageLineage>(),
        "PackageRef" => size_of::<v1::PackageRef>(),
        "Aggregate" => size_of::<v1::Aggregate>(),
        "Tracked" => size_of::<v1::Tracked>(),
        "Finding" => size_of::<v1::Finding>(),
        _ => return None,
    })
}

/// How a field's value is held once decoded.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A message (index into `Schema::messages`).
    Message(usize),
    /// A map entry message (`map<string, string>`): a slot in a hash map.
    MapEntry(usize),
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
    /// `Batch.events`, whose length [`MAX_LIST_ENTRIES`] does not bound.
    batch_events: bool,
}

#[derive(Debug)]
struct MessageType {
    name: &'static str,
    size: usize,
    is_event: bool,
    /// Whether decoding it where it appears once in its parent can
    /// allocate more than one heap chunk per string field: it has a
    /// list, a map or a box, itself or in a message it holds. One that
    /// cannot is not walked there (prost merges repeats of a single
    /// field into one struct): its strings are counted as one chunk each
    /// of its length. List entries are always walked.
    walk: bool,
    /// How many string fields it has.
    strings: usize,
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
                        Type::Message
                            if protos[by_name[f.type_name()]]
                                .1
                                .options
                                .as_ref()
                                .is_some_and(prost_types::MessageOptions::map_entry) =>
                        {
                            Kind::MapEntry(by_name[f.type_name()])
                        }
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
                        batch_events: path == ".spyglass.v1.Batch.events",
                    });
                }
                let map_entry = m
                    .options
                    .as_ref()
                    .is_some_and(prost_types::MessageOptions::map_entry);
                MessageType {
                    name: leak(short.to_owned()),
                    // a type missing from message_size fails its unit
                    // test; counted as large meanwhile
                    size: message_size(full).unwrap_or(if map_entry { 0 } else { 1024 }),
                    is_event: full == ".spyglass.v1.Event",
                    walk: false,
                    strings: m
                        .field
                        .iter()
                        .filter(|f| matches!(f.r#type(), Type::String | Type::Bytes))
                        .count(),
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
                        || matches!(f.kind, Kind::Message(t) | Kind::MapEntry(t) if self.messages[t].walk)
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

/// Field numbers up to this are counted per message in a fixed array;
/// a list under a higher number is counted at twice its entries.
const COUNTED_NUMBERS: usize = 32;

impl Walk<'_> {
    fn add(&mut self, bytes: usize) {
        self.footprint.bytes = self.footprint.bytes.saturating_add(bytes);
    }

    /// Add up one message's fields (its own struct is counted by the
    /// caller), then its lists' and maps' capacity.
    fn message(&mut self, ty: usize, mut buf: &[u8], depth: usize) -> Result<(), ScanError> {
        let msg = &self.schema.messages[ty];
        let bad = |why| ScanError::Malformed {
            message: msg.name,
            why,
        };
        // entries per list field of this message, by field number, and
        // the single message fields seen
        let mut lists = [0usize; COUNTED_NUMBERS];
        let mut singles = 0u32;
        while buf.has_remaining() {
            let key = decode_varint(&mut buf).map_err(|_| bad("bad field key"))?;
            let number = usize::try_from(key >> 3).unwrap_or(usize::MAX);
            let field = msg.fields.get(number).copied().flatten();
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
            let Some(index) = field else { continue };
            let f = &self.schema.fields[index];
            if !f.repeated
                && matches!(f.kind, Kind::Message(_))
                && wire == WireType::LengthDelimited
                && number < COUNTED_NUMBERS
            {
                // prost would merge a second one into the first, lists
                // and all: no encoder sends a single field twice
                if singles & (1 << number) != 0 {
                    return Err(bad("a single message field sent twice"));
                }
                singles |= 1 << number;
            }
            let entries = self.field(index, wire, value, depth)?;
            match lists.get_mut(number) {
                Some(n) => *n += entries,
                None => {
                    let size = self.entry_size(index);
                    self.add(entries.saturating_mul(2 * size));
                }
            }
        }
        for (number, n) in lists.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            let Some(index) = msg.fields[number] else {
                continue;
            };
            if n > MAX_LIST_ENTRIES && !self.schema.fields[index].batch_events {
                return Err(ScanError::TooMany {
                    field: self.schema.fields[index].name,
                    entries: n,
                });
            }
            let bytes = match self.schema.fields[index].kind {
                Kind::MapEntry(_) => map_bytes(n),
                _ => vec_bytes(n, self.entry_size(index)),
            };
            self.add(bytes);
        }
        Ok(())
    }

    /// The size of one entry of list field `index`.
    fn entry_size(&self, index: usize) -> usize {
        match self.schema.fields[index].kind {
            Kind::Message(t) | Kind::MapEntry(t) => self.schema.messages[t].size,
            Kind::Text => size_of::<String>(),
            Kind::Scalar => SCALAR_SIZE,
        }
    }

    /// Add up what one field occurrence allocates beyond list slots;
    /// returns the list entries it adds (0 for a single field).
    fn field(
        &mut self,
        index: usize,
        wire: WireType,
        value: &[u8],
        depth: usize,
    ) -> Result<usize, ScanError> {
        let schema = self.schema;
        let field = &schema.fields[index];
        let entries = match (field.kind, wire) {
            (Kind::Message(ty) | Kind::MapEntry(ty), WireType::LengthDelimited) => {
                if depth + 1 > MAX_DEPTH {
                    return Err(ScanError::TooDeep { field: field.name });
                }
                let child = &schema.messages[ty];
                if field.boxed {
                    self.add(heap(child.size));
                }
                self.footprint.events += usize::from(child.is_event);
                if child.walk || field.repeated {
                    self.message(ty, value, depth + 1)?;
                } else {
                    // one chunk per string, none longer than the message
                    self.add(child.strings.saturating_mul(heap(value.len())));
                }
                usize::from(field.repeated)
            }
            (Kind::Text, WireType::LengthDelimited) => {
                self.add(heap(value.len()));
                usize::from(field.repeated)
            }
            // a packed list of varints (the schema's only packed kind):
            // one element per byte without its high bit
            (Kind::Scalar, WireType::LengthDelimited) if field.repeated => {
                value.iter().filter(|b| **b & 0x80 == 0).count()
            }
            (Kind::Scalar, _) => usize::from(field.repeated),
            // a wire type that does not match the field: prost refuses
            // the message when it decodes it
            _ => 0,
        };
        self.entries[index] = self.entries[index].saturating_add(entries);
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_its_rust_size() {
        let entries: Vec<usize> = SCHEMA
            .fields
            .iter()
            .filter_map(|f| match f.kind {
                Kind::MapEntry(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 2, "labels and pod_labels");
        let messages = SCHEMA.messages.iter().enumerate();
        for (_, m) in messages.filter(|(i, _)| !entries.contains(i)) {
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
        let _: Option<Box<v1::Aggregate>> = v1::Event::default().aggregate;
        let boxed: Vec<&str> = SCHEMA
            .fields
            .iter()
            .filter(|f| f.boxed)
            .map(|f| f.name)
            .collect();
        assert_eq!(boxed, ["Event.container", "Event.agent", "Event.aggregate"]);
        let walked = |name| SCHEMA.messages[SCHEMA.by_name[name]].walk;
        assert!(walked(".spyglass.v1.Event") && walked(".spyglass.v1.Finding"));
        assert!(walked(".spyglass.v1.Process") && walked(".spyglass.v1.ContainerContext"));
        assert!(!walked(".spyglass.v1.Network") && !walked(".spyglass.v1.Usage"));
    }

    /// Estimate and allocation of decoding `bytes` as a Batch: the
    /// bytes the decoded batch holds and the peak while decoding, as the
    /// counting allocator saw them on this thread.
    fn measured(bytes: &[u8]) -> (usize, usize, usize) {
        let est = footprint("Batch", bytes).unwrap().bytes;
        let (batch, held, peak) = counting::measure(|| v1::Batch::decode(bytes).unwrap());
        drop(batch);
        (est, held, peak)
    }

    fn batch(events: Vec<v1::Event>) -> Vec<u8> {
        v1::Batch {
            node_id: "n".into(),
            events,
            ..v1::Batch::default()
        }
        .encode_to_vec()
    }

    fn with_process(p: v1::Process) -> v1::Event {
        v1::Event {
            process: Some(p),
            ..v1::Event::default()
        }
    }

    /// The estimate covers what decoding allocates, and is not far above
    /// it, for the shapes a hostile client would pick and for what agents
    /// send.
    #[test]
    fn the_estimate_bounds_what_prost_allocates() {
        let one_byte_args = with_process(v1::Process {
            argv: vec!["a".into(); 16_000],
            ..v1::Process::default()
        });
        let ancestors = v1::Event {
            ancestors: vec![v1::Ancestor::default(); 16_000],
            ..v1::Event::default()
        };
        let short_ancestors = v1::Event {
            ancestors: vec![
                v1::Ancestor {
                    pid: 1,
                    exe: "e".into(),
                    comm: "c".into(),
                };
                16_000
            ],
            ..v1::Event::default()
        };
        // one-entry lists, each growing to its first capacity
        let small_lists = vec![
            v1::Event {
                ancestors: vec![v1::Ancestor::default()],
                process: Some(v1::Process {
                    argv: vec!["x".into()],
                    ..v1::Process::default()
                }),
                container: Some(Box::new(v1::ContainerContext {
                    labels: [("k".to_owned(), "v".to_owned())].into(),
                    ..v1::ContainerContext::default()
                })),
                ..v1::Event::default()
            };
            10_000
        ];
        let labels = v1::Event {
            container: Some(Box::new(v1::ContainerContext {
                labels: (0..16_000)
                    .map(|i| (i.to_string(), String::new()))
                    .collect(),
                ..v1::ContainerContext::default()
            })),
            ..v1::Event::default()
        };
        let codes = v1::Event {
            detail: Some(v1::event::Detail::Finding(v1::Finding {
                restarts: Some(v1::Restarts {
                    exit_codes: vec![1; 16_000],
                    ..v1::Restarts::default()
                }),
                ..v1::Finding::default()
            })),
            ..v1::Event::default()
        };
        let evidence = vec![
            v1::Event {
                detail: Some(v1::event::Detail::Finding(v1::Finding {
                    evidence: vec![v1::Event::default()],
                    ..v1::Finding::default()
                })),
                ..v1::Event::default()
            };
            5_000
        ];
        let agents: Vec<v1::Event> = crate::model::samples::all()
            .iter()
            .map(crate::model::wire::to_wire)
            .cycle()
            .take(5_000)
            .collect();
        let shapes = [
            ("one-byte argv", batch(vec![one_byte_args; 10])),
            ("empty ancestors", batch(vec![ancestors; 10])),
            ("short ancestors", batch(vec![short_ancestors; 3])),
            ("one-entry lists", batch(small_lists)),
            ("distinct labels", batch(vec![labels; 3])),
            ("packed exit codes", batch(vec![codes; 5])),
            ("one evidence each", batch(evidence)),
            ("what agents send", batch(agents)),
        ];
        for (name, bytes) in shapes {
            let (est, held, peak) = measured(&bytes);
            assert!(est >= held, "{name}: estimate {est} < {held} held");
            // a vector's last doubling holds the old and the new buffer
            assert!(2 * est >= peak, "{name}: estimate {est}, peak {peak}");
            assert!(est <= 4 * held, "{name}: estimate {est} > 4 x {held} held");
        }
    }

    /// One event whose process (a single field) is sent 1,000 times with
    /// ten arguments each: prost would merge them into one process with
    /// 10,000 arguments, so the scan refuses it.
    #[test]
    fn a_single_field_sent_twice_is_refused() {
        assert_eq!(
            footprint("Batch", &process_repeated()),
            Err(ScanError::Malformed {
                message: "Event",
                why: "a single message field sent twice"
            })
        );
    }

    fn process_repeated() -> Vec<u8> {
        let p = v1::Process {
            argv: vec!["arg".into(); 10],
            ..v1::Process::default()
        }
        .encode_to_vec();
        let mut event = Vec::new();
        for _ in 0..1_000 {
            prost::encoding::encode_key(5, WireType::LengthDelimited, &mut event);
            prost::encoding::encode_varint(p.len() as u64, &mut event);
            event.extend_from_slice(&p);
        }
        let mut out = Vec::new();
        prost::encoding::encode_key(3, WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(event.len() as u64, &mut out);
        out.extend_from_slice(&event);
        out
    }

    #[test]
    fn too_deep_is_refused_where_prost_refuses() {
        // evidence in evidence: each level is an Event and a Finding
        let nested = |levels: usize| {
            let mut ev = v1::Event::default();
            for _ in 0..levels {
                ev = v1::Event {
                    detail: Some(v1::event::Detail::Finding(v1::Finding {
                        evidence: vec![ev],
                        ..v1::Finding::default()
                    })),
                    ..v1::Event::default()
                };
            }
            batch(vec![ev])
        };
        for levels in 45..55 {
            let bytes = nested(levels);
            let scanned = footprint("Batch", &bytes);
            let decoded = v1::Batch::decode(&bytes[..]);
            assert_eq!(
                scanned.is_ok(),
                decoded.is_ok(),
                "{levels} levels: {scanned:?}"
            );
            if let Err(e) = scanned {
                assert_eq!(
                    e,
                    ScanError::TooDeep {
                        field: "Finding.evidence"
                    }
                );
            }
        }
    }

    #[test]
    fn packed_entries_are_counted_as_varints() {
        // a restart loop of 10,001 exits by SIGKILL (137: two bytes each)
        let codes = v1::Event {
            detail: Some(v1::event::Detail::Finding(v1::Finding {
                restarts: Some(v1::Restarts {
                    exit_codes: vec![137; 10_001],
                    ..v1::Restarts::default()
                }),
                ..v1::Finding::default()
            })),
            ..v1::Event::default()
        };
        let f = footprint("Batch", &batch(vec![codes])).unwrap();
        assert_eq!(f.largest, Some(("Restarts.exit_codes", 10_001)));
    }

    #[test]
    fn allocation_sizes() {
        assert_eq!(heap(0), 0);
        assert_eq!(heap(1), 32);
        assert_eq!(heap(24), 32);
        assert_eq!(heap(25), 48);
        assert_eq!(vec_bytes(1, 24), 4 * 24);
        assert_eq!(vec_bytes(5, 24), 8 * 24);
        assert_eq!(vec_bytes(1, 2048), 2048);
        assert_eq!(map_bytes(1), 4 * MAP_SLOT_SIZE + 16);
        assert_eq!(map_bytes(8), 16 * MAP_SLOT_SIZE + 16);
        assert_eq!(vec_bytes(usize::MAX, 8), usize::MAX);
    }
}

/// A test allocator that counts, per thread, the bytes asked for and
/// still held, and their peak.
#[cfg(test)]
mod counting {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    thread_local! {
        static HELD: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
    }

    fn grow(n: usize) {
        let _ = HELD.try_with(|h| {
            h.set(h.get() + n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(h.get())));
        });
    }

    fn shrink(n: usize) {
        let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
    }

    pub struct Counting;

    // SAFETY: every call is passed on to the system allocator unchanged;
    // the counting touches only const-initialised thread-locals, which
    // do not allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's layout, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grow(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: ptr came from System with this layout.
            unsafe { System.dealloc(ptr, layout) };
            shrink(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            // SAFETY: ptr came from System with this layout.
            let q = unsafe { System.realloc(ptr, layout, new) };
            if !q.is_null() {
                // old and new may both be held while it moves
                grow(new);
                shrink(layout.size());
            }
            q
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Run `f`; what it returns, the bytes it left held (its result's)
    /// and the peak above what was held before.
    pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
        let base = HELD.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let t = f();
        let held = HELD.with(Cell::get).saturating_sub(base);
        (t, held, PEAK.with(Cell::get) - base)
    }
}
