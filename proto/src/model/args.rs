//! A process's argument vector, kept compactly: one shared buffer holding
//! every argument followed by a NUL, as the kernel hands them over.
//!
//! One `String` per argument costs 24 bytes of header plus an allocation
//! each: 4,000 empty arguments took ~100 KiB per process in the process
//! table, and a process that execs in a loop with them grew the agent
//! without bound (issue 13). Here 4,000 empty arguments take 4,000 bytes,
//! and clones (a fork's child, every event of a process) share them.
use std::{fmt, sync::Arc};

use serde::{ser::SerializeSeq, Serialize, Serializer};

/// Argument vector: each argument followed by a NUL (arguments cannot
/// hold NUL, so the split is exact). Empty: no arguments.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Args(Arc<str>);

impl Args {
    /// From the kernel's argument block: arguments separated by NUL; a
    /// trailing NUL does not add an empty argument. Invalid UTF-8 is
    /// replaced (lossily), argument by argument.
    pub fn from_nul_separated(block: &[u8]) -> Args {
        let block = block.strip_suffix(&[0]).unwrap_or(block);
        if block.is_empty() {
            return Args::default();
        }
        let mut s = String::from_utf8_lossy(block).into_owned();
        s.push('\0');
        Args(s.into())
    }

    /// The arguments, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(&self.0)
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.0.bytes().filter(|&b| b == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first argument (argv\[0\]).
    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// Argument `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.iter().nth(i)
    }

    /// Bytes the buffer holds (arguments and their separators).
    pub fn byte_len(&self) -> usize {
        self.0.len()
    }

    /// The first `max` bytes of the arguments (separators counted), the
    /// last one kept cut where it does not fit, as the kernel cuts a long
    /// argument block (a long argv\[0\] is kept in part, not dropped);
    /// and whether anything was left out.
    #[must_use]
    pub fn prefix(&self, max: usize) -> (Args, bool) {
        if self.0.len() <= max {
            return (self.clone(), false);
        }
        // max - 1 bytes on a character boundary, then a terminator
        let mut end = max.saturating_sub(1);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            return (Args::default(), true);
        }
        let head = &self.0[..end];
        let mut s = String::with_capacity(end + 1);
        s.push_str(head);
        if !head.ends_with('\0') {
            s.push('\0');
        }
        (Args(s.into()), true)
    }

    /// The arguments as owned strings (the wire's shape).
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }

    /// The arguments joined by `sep`.
    pub fn join(&self, sep: &str) -> String {
        let mut out = String::with_capacity(self.0.len());
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(a);
        }
        out
    }
}

/// Iterator over [`Args`].
#[derive(Clone)]
pub struct Iter<'a>(&'a str);

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (arg, rest) = self.0.split_once('\0')?;
        self.0 = rest;
        Some(arg)
    }
}

impl<'a> IntoIterator for &'a Args {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<S> for Args {
    /// Arguments holding a NUL are cut at it (as the kernel would).
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Args {
        let mut s = String::new();
        for a in iter {
            let a = a.as_ref();
            s.push_str(a.split('\0').next().unwrap_or_default());
            s.push('\0');
        }
        Args(s.into())
    }
}

impl From<Vec<String>> for Args {
    fn from(v: Vec<String>) -> Args {
        v.into_iter().collect()
    }
}

impl<const N: usize> From<[&str; N]> for Args {
    fn from(v: [&str; N]) -> Args {
        v.into_iter().collect()
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Args {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.iter().eq(other.iter().copied())
    }
}

impl PartialEq<[String]> for Args {
    fn eq(&self, other: &[String]) -> bool {
        self.iter().eq(other.iter().map(String::as_str))
    }
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for a in self {
            seq.serialize_element(a)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_kernel_block() {
        let a = Args::from_nul_separated(b"curl\0-s\0a b\0");
        assert_eq!(a, ["curl", "-s", "a b"]);
        assert_eq!(
            (a.len(), a.first(), a.get(2)),
            (3, Some("curl"), Some("a b"))
        );
        // one trailing NUL is a terminator, a second makes an empty argument
        assert_eq!(Args::from_nul_separated(b"a\0\0"), ["a", ""]);
        assert_eq!(Args::from_nul_separated(b"x\0yy"), ["x", "yy"]);
        assert!(Args::from_nul_separated(b"").is_empty());
        assert!(Args::from_nul_separated(b"\0").is_empty());
        assert_eq!(Args::from_nul_separated(b"\xff\0b"), ["\u{fffd}", "b"]);
    }

    #[test]
    fn empty_arguments_cost_a_byte_each() {
        let block = vec![0u8; 4000];
        let a = Args::from_nul_separated(&block);
        // 4000 NULs: 4000 empty arguments, each with its terminator
        assert_eq!((a.len(), a.byte_len()), (4000, 4000));
        assert!(a.iter().all(str::is_empty));
    }

    #[test]
    fn a_prefix_keeps_the_first_bytes_cutting_the_last_argument() {
        let a = Args::from(["abc", "de", "fghij"]);
        assert_eq!(a.prefix(100), (a.clone(), false));
        assert_eq!(a.prefix(13), (a.clone(), false));
        assert_eq!(a.prefix(7), (Args::from(["abc", "de"]), true));
        assert_eq!(a.prefix(6), (Args::from(["abc", "d"]), true));
        // a long argv[0] is kept in part, never dropped whole
        assert_eq!(a.prefix(3), (Args::from(["ab"]), true));
        assert_eq!(a.prefix(1), (Args::default(), true));
        for max in 0..13 {
            assert!(a.prefix(max).0.byte_len() <= max, "{max}");
        }
        // never inside a character
        let u = Args::from(["\u{e9}\u{e9}\u{e9}"]); // 6 bytes + NUL
        assert_eq!(u.prefix(5), (Args::from(["\u{e9}\u{e9}"]), true));
    }

    #[test]
    fn round_trips_and_serializes_as_a_list() {
        let v = vec!["/bin/echo".to_string(), String::new(), "it's".into()];
        let a = Args::from(v.clone());
        assert_eq!(a.to_vec(), v);
        assert_eq!(a, *v.as_slice());
        assert_eq!(a.join(" "), "/bin/echo  it's");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"["/bin/echo","","it's"]"#
        );
        assert_eq!(format!("{a:?}"), r#"["/bin/echo", "", "it's"]"#);
        assert_eq!(Args::from(["a\0b"]), ["a"], "a NUL ends an argument");
    }
}
