//! Tracepoint record layouts from tracefs (`events/CATEGORY/NAME/format`).
//!
//! Classic tracepoint programs read their record at fixed offsets. The
//! format file is the kernel's own statement of those offsets, so before a
//! program is loaded the agent checks every field the program reads
//! against it (a kernel whose layout differs gets a clear refusal, never
//! silently wrong fields), and reads the offsets of fields that only some
//! kernels have (`sched_process_exit`'s `group_dead`: 6.18 has it, 6.12 and
//! older do not).
use std::path::{Path, PathBuf};

use agent_common::EXIT_GROUP_DEAD_ABSENT;

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("cannot read the tracepoint format file {path}: {source}. Either tracefs is not the kernel's (`mount -t tracefs tracefs /sys/kernel/tracing`), or this kernel lacks the tracepoint")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint format file {path}, line {line}: cannot parse `{text}`")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error(
        "tracepoint {tracepoint}: this kernel's record has {found} where the probe reads \
         `{field}` at offset {offset} ({size} bytes). The probe cannot run on this kernel's \
         layout: please report it with `uname -r` and the format file"
    )]
    Layout {
        tracepoint: String,
        field: &'static str,
        offset: u32,
        size: u32,
        found: String,
    },
}

/// One field of a record, as the format file states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Declaration without the name's array suffix: `bool`, `__u8[4]`,
    /// `__data_loc char[]`.
    pub decl: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// A field a probe reads at a fixed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub offset: u32,
    pub size: u32,
}

const fn f(name: &'static str, offset: u32, size: u32) -> FieldSpec {
    FieldSpec { name, offset, size }
}

/// `sched/sched_process_exec`: the `__data_loc` word of the filename.
pub const EXEC_LAYOUT: &[FieldSpec] = &[f("filename", 8, 4)];

/// `sched/sched_process_exit`: nothing at a fixed offset (`group_dead` is
/// looked up, see [`exit_group_dead`]).
pub const EXIT_LAYOUT: &[FieldSpec] = &[];

/// `sock/inet_sock_set_state` (agent-ebpf/src/tcp.rs).
pub const INET_SOCK_SET_STATE_LAYOUT: &[FieldSpec] = &[
    f("skaddr", 8, 8),
    f("oldstate", 16, 4),
    f("newstate", 20, 4),
    f("sport", 24, 2),
    f("dport", 26, 2),
    f("family", 28, 2),
    f("protocol", 30, 2),
    f("saddr", 32, 4),
    f("daddr", 36, 4),
    f("saddr_v6", 40, 16),
    f("daddr_v6", 56, 16),
];

/// `oom/mark_victim` (agent-ebpf/src/oom.rs): the probe copies the raw
/// record; the victim's `pid` is at 8 on every kernel. The other fields
/// (6.8 and later) are decoded where the format file puts them
/// (pipeline/oom.rs).
pub const MARK_VICTIM_LAYOUT: &[FieldSpec] = &[f("pid", 8, 4)];

/// The tracefs mount: /sys/kernel/tracing, or the older debugfs path.
pub fn root() -> PathBuf {
    let new = Path::new("/sys/kernel/tracing");
    if new.join("events").exists() {
        return new.to_owned();
    }
    PathBuf::from("/sys/kernel/debug/tracing")
}

/// Fields of `category/name` from the format file under `root`.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Vec<Field>, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    parse_format(&text).map_err(|(line, text)| TracefsError::Malformed { path, line, text })
}

/// Parse the `field:` lines of a format file. A line that cannot be parsed
/// is an error (1-based line number and text): the kernel writes these
/// files in one fixed shape, so an odd line means the file is not what the
/// probes were written against.
pub fn parse_format(text: &str) -> Result<Vec<Field>, (usize, String)> {
    let mut fields = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with("field:") {
            continue;
        }
        let bad = || (i + 1, line.to_owned());
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once(':').ok_or_else(bad)?;
            match key {
                "field" => decl = Some(value.trim()),
                "offset" => offset = value.trim().parse().ok(),
                "size" => size = value.trim().parse().ok(),
                _ => {}
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            return Err(bad());
        };
        let (ty, name) = split_declaration(decl).ok_or_else(bad)?;
        fields.push(Field {
            decl: ty,
            name,
            offset,
            size,
        });
    }
    Ok(fields)
}

/// `unsigned char comm[16]` -> (`unsigned char[16]`, `comm`).
fn split_declaration(decl: &str) -> Option<(String, String)> {
    // An array suffix after the name (`comm[16]`), not one inside the
    // type (`__data_loc char[] filename`).
    let (head, suffix) = match decl.rfind('[') {
        Some(at) if decl.ends_with(']') => (&decl[..at], &decl[at..]),
        _ => (decl, ""),
    };
    let head = head.trim_end();
    let at = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_'))? + 1;
    let name = &head[at..];
    if name.is_empty() {
        return None;
    }
    let ty = format!("{}{suffix}", head[..at].trim_end());
    Some((ty, name.to_owned()))
}

/// Check that every field in `expected` is where the probe reads it.
pub fn check_layout(
    tracepoint: &str,
    fields: &[Field],
    expected: &[FieldSpec],
) -> Result<(), TracefsError> {
    for want in expected {
        let found = fields.iter().find(|f| f.name == want.name);
        let ok = found.is_some_and(|f| f.offset == want.offset && f.size == want.size);
        if !ok {
            return Err(TracefsError::Layout {
                tracepoint: tracepoint.to_owned(),
                field: want.name,
                offset: want.offset,
                size: want.size,
                found: match found {
                    Some(f) => format!("`{}` at offset {} ({} bytes)", f.name, f.offset, f.size),
                    None => format!("no field `{}`", want.name),
                },
            });
        }
    }
    Ok(())
}

/// Offset of `group_dead` in the exit record, or
/// [`EXIT_GROUP_DEAD_ABSENT`] when this kernel's record has none (or one
/// the probe cannot read as a byte).
pub fn exit_group_dead(fields: &[Field]) -> u32 {
    fields
        .iter()
        .find(|f| f.name == "group_dead" && f.size == 1 && f.offset != EXIT_GROUP_DEAD_ABSENT)
        .map_or(EXIT_GROUP_DEAD_ABSENT, |f| f.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched_process_exit` as Linux 5.10 to 6.15 print it.
    const EXIT_5_10: &str = "name: sched_process_exit
ID: 311
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d prio=%d\", REC->comm, REC->pid, REC->prio
";

    /// The same record on Linux 6.18.
    const EXIT_6_18: &str = "name: sched_process_exit
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    const INET_5_10: &str = "format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_fields_with_types_and_arrays() {
        let fields = parse_format(EXIT_5_10).unwrap();
        assert_eq!(fields.len(), 7);
        assert_eq!(
            fields[4],
            Field {
                decl: "char[16]".into(),
                name: "comm".into(),
                offset: 8,
                size: 16
            }
        );
        let inet = parse_format(INET_5_10).unwrap();
        let skaddr = inet.iter().find(|f| f.name == "skaddr").unwrap();
        assert_eq!(skaddr.decl, "const void *");
        let exec =
            parse_format("\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:1;\n")
                .unwrap();
        assert_eq!(
            (exec[0].decl.as_str(), exec[0].name.as_str()),
            ("__data_loc char[]", "filename")
        );
    }

    #[test]
    fn group_dead_only_where_the_kernel_has_it() {
        assert_eq!(
            exit_group_dead(&parse_format(EXIT_5_10).unwrap()),
            EXIT_GROUP_DEAD_ABSENT
        );
        assert_eq!(exit_group_dead(&parse_format(EXIT_6_18).unwrap()), 32);
    }

    #[test]
    fn layouts_the_probes_read_match_or_are_refused() {
        let inet = parse_format(INET_5_10).unwrap();
        check_layout(
            "sock/inet_sock_set_state",
            &inet,
            INET_SOCK_SET_STATE_LAYOUT,
        )
        .unwrap();
        // A kernel without `protocol` (4.15) shifts every address.
        let old: Vec<Field> = inet.into_iter().filter(|f| f.name != "protocol").collect();
        let err = check_layout("sock/inet_sock_set_state", &old, INET_SOCK_SET_STATE_LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no field `protocol`"), "{err}");
        let moved =
            parse_format("\tfield:__data_loc char[] filename;\toffset:12;\tsize:4;\n").unwrap();
        let err = check_layout("sched/sched_process_exec", &moved, EXEC_LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`filename` at offset 12 (4 bytes)"), "{err}");
    }

    #[test]
    fn garbage_is_reported_with_its_line() {
        assert_eq!(
            parse_format("format:\n\tfield:int;\toffset:x;\tsize:4;\n"),
            Err((2, "field:int;\toffset:x;\tsize:4;".into()))
        );
        assert_eq!(parse_format("field:nocolon offset 3").unwrap_err().0, 1);
        assert!(parse_format("").unwrap().is_empty());
    }

    #[test]
    fn this_kernel_matches_every_layout_the_probes_read() {
        // As the agent does before it loads (a fresh machine boots
        // without tracefs mounted).
        crate::bpf::preflight::ensure_tracefs()
            .expect("this test mounts tracefs and needs root, as under `cargo xtask test`");
        let root = root();
        for (cat, name, layout) in [
            ("sched", "sched_process_exec", EXEC_LAYOUT),
            ("sched", "sched_process_exit", EXIT_LAYOUT),
            ("sock", "inet_sock_set_state", INET_SOCK_SET_STATE_LAYOUT),
            ("oom", "mark_victim", MARK_VICTIM_LAYOUT),
        ] {
            let fields = read_format(&root, cat, name)
                .expect("this test reads tracefs: run as root with tracefs mounted, as `cargo xtask test` does");
            check_layout(&format!("{cat}/{name}"), &fields, layout).unwrap();
        }
    }
}
