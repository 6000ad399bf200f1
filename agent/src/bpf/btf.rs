//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the agent looks up the
//! few `task_struct`/`mm_struct` offsets the probes need and writes them
//! into the programs' `OFFSETS` global before loading. This is a small,
//! read-only BTF reader (format: Documentation/bpf/btf.rst): it walks the
//! type section once and resolves `struct.member`, descending into
//! anonymous struct/union members as C does.
use std::path::{Path, PathBuf};

use agent_common::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source}. Spyglass needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.8 are)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: `{strukt}.{member}` is a bitfield, which the probes cannot read")]
    Bitfield { strukt: String, member: String },
}

#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    vlen: u32,
    kind_flag: bool,
    /// size, or the referenced type id
    size_or_type: u32,
    /// byte offset of the kind-specific data in `data`
    extra: usize,
}

/// Parsed BTF type section.
pub struct Btf {
    data: Vec<u8>,
    str_start: usize,
    str_len: usize,
    /// index = type id; id 0 is `void`
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Read and parse BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parse little-endian BTF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let type_start = hdr_len + type_off;
        let type_end = type_start + type_len;
        let str_start = hdr_len + str_off;
        if type_end > data.len() || str_start + str_len > data.len() {
            return Err(BtfError::Malformed("sections out of bounds"));
        }
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = type_start;
        while at < type_end {
            let name_off = u32_at(&data, at)?;
            let info = u32_at(&data, at + 4)?;
            let size_or_type = u32_at(&data, at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                0 | 2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(Type {
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            });
            at = extra + extra_len;
        }
        Ok(Self {
            data,
            str_start,
            str_len,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let off = off as usize;
        if off >= self.str_len {
            return b"";
        }
        let s = &self.data[self.str_start + off..self.str_start + self.str_len];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` inside the struct/union `t`, searching
    /// anonymous members too.
    fn member_bits(&self, t: &Type, member: &[u8]) -> Result<Option<u32>, ()> {
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let (Ok(name_off), Ok(ty), Ok(raw)) = (
                u32_at(&self.data, at),
                u32_at(&self.data, at + 4),
                u32_at(&self.data, at + 8),
            ) else {
                return Ok(None);
            };
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                if let Some(inner) = self.resolve(ty) {
                    if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                        if let Some(b) = self.member_bits(inner, member)? {
                            return Ok(Some(bits + b));
                        }
                    }
                }
            } else if self.name(name_off) == member {
                if bitfield || bits % 8 != 0 {
                    return Err(());
                }
                return Ok(Some(bits));
            }
        }
        Ok(None)
    }

    /// Byte offset of `strukt.member`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        match self.member_bits(t, member.as_bytes()) {
            Ok(Some(bits)) => Ok(bits / 8),
            Ok(None) => Err(BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            }),
            Err(()) => Err(BtfError::Bitfield {
                strukt: strukt.into(),
                member: member.into(),
            }),
        }
    }

    /// All struct offsets the probes need; `exit_group_dead` comes from
    /// tracefs and is left absent here.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            task_pid: self.member_offset("task_struct", "pid")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_real_parent: self.member_offset("task_struct", "real_parent")?,
            task_mm: self.member_offset("task_struct", "mm")?,
            task_exit_code: self.member_offset("task_struct", "exit_code")?,
            task_start_time: self.member_offset("task_struct", "start_time")?,
            mm_arg_start: self.member_offset("mm_struct", "arg_start")?,
            mm_arg_end: self.member_offset("mm_struct", "arg_end")?,
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.member_offset("css_set", "dfl_cgrp")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            cgroup_level: self.member_offset("cgroup", "level")?,
            kernfs_node_name: self.member_offset("kernfs_node", "name")?,
            // renamed when it became RCU-protected (Linux 6.15)
            kernfs_node_parent: self
                .member_offset("kernfs_node", "__parent")
                .or_else(|_| self.member_offset("kernfs_node", "parent"))?,
            task_group_leader: self.member_offset("task_struct", "group_leader")?,
            task_signal: self.member_offset("task_struct", "signal")?,
            signal_live: self.member_offset("signal_struct", "live")?,
            exit_group_dead: agent_common::EXIT_GROUP_DEAD_ABSENT,
            signal_flags: self.member_offset("signal_struct", "flags")?,
            signal_group_exit_code: self.member_offset("signal_struct", "group_exit_code")?,
            sock_net: self.sock_net().unwrap_or(agent_common::OFFSET_ABSENT),
            net_ns_inum: self.net_ns_inum().unwrap_or(agent_common::OFFSET_ABSENT),
        })
    }

    /// `sock.__sk_common.skc_net`: `possible_net_t` holds one pointer, the
    /// `struct net` (kernels without network namespaces have none).
    fn sock_net(&self) -> Result<u32, BtfError> {
        Ok(self.member_offset("sock", "__sk_common")?
            + self.member_offset("sock_common", "skc_net")?)
    }

    /// `net.ns.inum`: the namespace's inode number.
    fn net_ns_inum(&self) -> Result<u32, BtfError> {
        Ok(self.member_offset("net", "ns")? + self.member_offset("ns_common", "inum")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: int, `struct inner { long a; long b; }`, and
    /// `struct outer { int x; <anon union { struct inner; }> at 64; int y:3 }`.
    fn fixture() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0y\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |vals: &[u32]| {
            vals.iter()
                .for_each(|v| t.extend_from_slice(&v.to_le_bytes()));
        };
        // 1: int (4 bytes)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { int a @0; int b @64 bits }
        push(&[
            s("inner"),
            KIND_STRUCT << 24 | 2,
            16,
            s("a"),
            1,
            0,
            s("b"),
            1,
            64,
        ]);
        // 3: anonymous union { struct inner }
        push(&[0, KIND_UNION << 24 | 1, 16, 0, 2, 0]);
        // 4: struct outer (kind_flag: bitfield encoding) { x @0; anon @64; y:3 @256 }
        push(&[
            s("outer"),
            1 << 31 | KIND_STRUCT << 24 | 3,
            40,
            s("x"),
            1,
            0,
            0,
            3,
            64,
            s("y"),
            1,
            3 << 24 | 256,
        ]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(fixture()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 8);
        // b lives in struct inner inside the anonymous union at byte 8
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 16);
    }

    #[test]
    fn reports_missing_and_bitfield_members() {
        let btf = Btf::parse(fixture()).unwrap();
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.member_offset("outer", "z"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "y"),
            Err(BtfError::Bitfield { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 8]).is_err());
        let mut bad = fixture();
        bad[12] = 0xff; // type_len beyond the end
        assert!(Btf::parse(bad).is_err());
    }

    #[test]
    fn running_kernel_has_the_offsets_the_probes_need() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let offs = Btf::from_file(path)
            .expect("this test needs the running kernel's BTF (CONFIG_DEBUG_INFO_BTF)")
            .kernel_offsets()
            .unwrap();
        assert!(offs.task_tgid > 0 && offs.task_tgid == offs.task_pid + 4);
        assert!(offs.mm_arg_end == offs.mm_arg_start + 8);
    }
}
