//! Lexical normalisation of an absolute executable path, one byte at a
//! time: the kernel's kill check (into an `EXEC_KILL` key) and the agent's
//! rules run this same code, so both judge the same path.
//!
//! What it does: collapses repeated `/`, drops `.` segments, and resolves
//! `..` against the segments before it (never above `/`). What it does
//! not: relative paths (they are left as given and match no absolute
//! rule), symbolic links, and bytes past the first [`crate::FILENAME_LEN`]
//! of the path (the kernel keeps no more).
//!
//! Built for the eBPF verifier: the state lives in memory (a per-CPU map
//! value in the kernel) and every field is read and written volatile, so
//! the verifier sees unknown values at each step rather than one path per
//! byte history; every index is checked against its array.
#[cfg(doc)]
use crate::RULE_PATH_LEN;

/// Most segments one path can keep: `/a` per segment of a
/// [`crate::FILENAME_LEN`]-byte input.
pub const MAX_SEGMENTS: usize = crate::FILENAME_LEN / 2;

/// Where [`PathNorm`] stands.
pub mod norm_state {
    /// Reading the path.
    pub const READING: u32 = 0;
    /// The path ended; the output holds it normalised.
    pub const DONE: u32 = 1;
    /// Not absolute: nothing was written; judge the path as given.
    pub const RELATIVE: u32 = 2;
}

/// The normaliser's state between bytes. The output is a separate buffer
/// (the kernel's rule key, [`RULE_PATH_LEN`] bytes), of which only its
/// first bytes are kept: `len` may run past it, and what lies past it is
/// lost.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathNorm {
    /// Length of the output so far (it always ends in `/` between segments).
    pub len: u32,
    /// Where the current segment starts in the output.
    pub seg: u32,
    /// Bytes of the current segment, and its first two bytes.
    pub seg_len: u32,
    pub seg_head: [u8; 2],
    pub _pad: [u8; 2],
    /// Segments kept, and where each starts.
    pub depth: u32,
    pub state: u32,
    pub starts: [u16; MAX_SEGMENTS],
}
const _: () = assert!(core::mem::size_of::<PathNorm>() == 24 + 2 * MAX_SEGMENTS);

/// A volatile read of a field (see the module's comment).
macro_rules! get {
    ($e:expr) => {
        // SAFETY: a field of a live, exclusively borrowed value.
        unsafe { core::ptr::read_volatile(&raw const $e) }
    };
}

/// A volatile write of a field.
macro_rules! set {
    ($e:expr, $v:expr) => {
        // SAFETY: a field of a live, exclusively borrowed value.
        unsafe { core::ptr::write_volatile(&raw mut $e, $v) }
    };
}

impl PathNorm {
    /// A fresh state (the kernel resets its map value the same way).
    pub const fn new() -> Self {
        PathNorm {
            len: 0,
            seg: 0,
            seg_len: 0,
            seg_head: [0; 2],
            _pad: [0; 2],
            depth: 0,
            state: norm_state::READING,
            starts: [0; MAX_SEGMENTS],
        }
    }

    /// Start again (for a state that lives in a map).
    #[inline(always)]
    pub fn reset(&mut self) {
        set!(self.len, 0);
        set!(self.seg, 0);
        set!(self.seg_len, 0);
        set!(self.depth, 0);
        set!(self.state, norm_state::READING);
    }

    /// Feed one byte of the path; NUL ends it. False once the path has
    /// ended (or is relative): stop feeding.
    #[inline(always)]
    pub fn push<const N: usize>(&mut self, out: &mut [u8; N], c: u8) -> bool {
        if get!(self.state) != norm_state::READING {
            return false;
        }
        let len = get!(self.len);
        if len == 0 {
            if c != b'/' {
                set!(self.state, norm_state::RELATIVE);
                return false;
            }
            out[0] = b'/';
            set!(self.len, 1);
            set!(self.seg, 1);
            return true;
        }
        if c == b'/' || c == 0 {
            self.end_segment(out);
            if c == 0 {
                self.finish(out);
                return false;
            }
            return true;
        }
        let i = len as usize;
        if i < N {
            out[i] = c;
        }
        let n = get!(self.seg_len);
        if n < 2 {
            set!(self.seg_head[n as usize & 1], c);
        }
        set!(self.seg_len, n.saturating_add(1));
        set!(self.len, len.saturating_add(1));
        true
    }

    /// The current segment ended (at `/` or the end).
    #[inline(always)]
    fn end_segment<const N: usize>(&mut self, out: &mut [u8; N]) {
        let n = get!(self.seg_len);
        let seg = get!(self.seg);
        let head = [get!(self.seg_head[0]), get!(self.seg_head[1])];
        set!(self.seg_len, 0);
        set!(self.seg_head[0], 0);
        set!(self.seg_head[1], 0);
        if n == 0 {
            return;
        }
        let depth = get!(self.depth);
        if n == 1 && head[0] == b'.' {
            set!(self.len, seg);
        } else if n == 2 && head == [b'.', b'.'] {
            let back = if depth > 0 && ((depth - 1) as usize) < MAX_SEGMENTS {
                set!(self.depth, depth - 1);
                u32::from(get!(self.starts[(depth - 1) as usize]))
            } else {
                seg
            };
            set!(self.len, back);
            set!(self.seg, back);
        } else {
            if (depth as usize) < MAX_SEGMENTS {
                set!(self.starts[depth as usize], seg as u16);
                set!(self.depth, depth + 1);
            }
            let len = get!(self.len);
            if (len as usize) < N {
                out[len as usize] = b'/';
            }
            set!(self.len, len.saturating_add(1));
            set!(self.seg, len.saturating_add(1));
        }
    }

    /// The path ended: drop the `/` after the last segment, end with NUL.
    #[inline(always)]
    fn finish<const N: usize>(&mut self, out: &mut [u8; N]) {
        let mut len = get!(self.len);
        if len > 1 {
            len -= 1;
        }
        if (len as usize) < N {
            out[len as usize] = 0;
        }
        set!(self.len, len);
        set!(self.state, norm_state::DONE);
    }
}

impl Default for PathNorm {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RULE_PATH_LEN;

    fn norm(path: &str) -> Option<String> {
        let mut n = PathNorm::new();
        let mut out = [0u8; RULE_PATH_LEN];
        for &c in path.as_bytes().iter().chain([0u8].iter()) {
            if !n.push(&mut out, c) {
                break;
            }
        }
        (n.state == norm_state::DONE).then(|| {
            let end = out.iter().position(|&b| b == 0).unwrap_or(RULE_PATH_LEN);
            String::from_utf8_lossy(&out[..end]).into_owned()
        })
    }

    #[test]
    fn the_tricks_of_an_evasion_are_undone() {
        for (given, want) in [
            ("/tmp/x", "/tmp/x"),
            ("//tmp/x", "/tmp/x"),
            ("/tmp//x", "/tmp/x"),
            ("/tmp/./x", "/tmp/x"),
            ("/./tmp/x", "/tmp/x"),
            ("/usr/../tmp/x", "/tmp/x"),
            ("/usr/bin/../../tmp/x", "/tmp/x"),
            ("/../../tmp/x", "/tmp/x"),
            ("/tmp/a/..//./x", "/tmp/x"),
            ("/tmp/.x", "/tmp/.x"),
            ("/tmp/..x", "/tmp/..x"),
            ("/tmp/...", "/tmp/..."),
            ("/tmp/x/.", "/tmp/x"),
            ("/tmp/x/..", "/tmp"),
            ("/", "/"),
            ("//", "/"),
            ("/..", "/"),
        ] {
            assert_eq!(norm(given).as_deref(), Some(want), "{given}");
        }
    }

    #[test]
    fn relative_paths_are_left_alone() {
        assert_eq!(norm("./x"), None);
        assert_eq!(norm("x/../y"), None);
        assert_eq!(norm(""), None);
    }

    #[test]
    fn a_long_segment_undone_by_dotdot_does_not_hide_the_rest() {
        let long = format!("/{}/../tmp/x", "a".repeat(400));
        assert_eq!(norm(&long).as_deref(), Some("/tmp/x"));
        let deep = format!("{}/tmp/x", "/a/..".repeat(90));
        assert_eq!(norm(&deep).as_deref(), Some("/tmp/x"));
        let slashes = format!("{}tmp/x", "/".repeat(480));
        assert_eq!(norm(&slashes).as_deref(), Some("/tmp/x"));
    }

    #[test]
    fn the_output_keeps_its_first_bytes_when_longer() {
        let long = format!("/{}", "b".repeat(300));
        let got = norm(&long).unwrap();
        assert_eq!(got.len(), RULE_PATH_LEN);
        assert!(long.starts_with(&got));
    }
}
