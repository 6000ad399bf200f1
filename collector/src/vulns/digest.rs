//! Image digests as scanners spell them (`sha256:...`, `repo@sha256:...`,
//! purl-encoded `sha256%3A...`), normalised to `sha256:<64 hex>` lower
//! case, and gathered into a [`Subject`] without repeats.

use super::report::Subject;

/// `raw` as `sha256:<64 lower-case hex>`, or `None` when it names no
/// sha256 digest. A repository digest (`repo@sha256:...`) gives the
/// digest after its last `@`; other algorithms are refused (the fleet's
/// digests are all sha256).
pub(crate) fn normalise(raw: &str) -> Option<String> {
    let s = raw.trim();
    let s = s.rsplit_once('@').map_or(s, |(_, digest)| digest);
    let (alg, hex) = match s.split_once(':') {
        Some(split) => split,
        None => split_encoded_colon(s)?,
    };
    if !alg.eq_ignore_ascii_case("sha256")
        || hex.len() != 64
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `sha256%3Aabc...` (a purl's version) split at its encoded colon.
fn split_encoded_colon(s: &str) -> Option<(&str, &str)> {
    let at = s.find("%3A").or_else(|| s.find("%3a"))?;
    Some((&s[..at], &s[at + 3..]))
}

/// Gathers a report's digests and references; each is kept once, in the
/// order first seen (diff ids keep the image's layer order).
#[derive(Default)]
pub(crate) struct SubjectBuilder {
    subject: Subject,
}

impl SubjectBuilder {
    pub(crate) fn manifest(&mut self, raw: &str) {
        push_digest(&mut self.subject.manifest_digests, raw);
    }

    pub(crate) fn config(&mut self, raw: &str) {
        if self.subject.config_digest.is_none() {
            self.subject.config_digest = normalise(raw);
        }
    }

    pub(crate) fn diff_id(&mut self, raw: &str) {
        if let Some(d) = normalise(raw) {
            // Two layers may carry the same content (an empty layer twice):
            // the list is the image's rootfs order, repeats included.
            self.subject.diff_ids.push(d);
        }
    }

    /// Diff ids whose order is not the image's (a set sorted by value,
    /// as Trivy's CycloneDX writes them): the hierarchy matches ordered
    /// prefixes, so more than one of them says nothing usable and none is
    /// kept; a single one is its own order.
    pub(crate) fn unordered_diff_ids<'s>(&mut self, ids: impl IntoIterator<Item = &'s str>) {
        let valid: Vec<String> = ids.into_iter().filter_map(normalise).collect();
        if let [one] = valid.as_slice() {
            self.subject.diff_ids.push(one.clone());
        }
    }

    /// A `repo:tag` or `repo@digest` reference, kept as written; a
    /// `repo@sha256:...` also names a manifest digest.
    pub(crate) fn reference(&mut self, raw: &str) {
        let r = raw.trim();
        if r.is_empty() {
            return;
        }
        if r.contains('@') {
            self.manifest(r);
        }
        if !self.subject.refs.iter().any(|known| known == r) {
            self.subject.refs.push(r.to_owned());
        }
    }

    /// Whether any digest names the image (a report without one cannot
    /// be joined).
    pub(crate) fn has_digest(&self) -> bool {
        let s = &self.subject;
        !s.manifest_digests.is_empty()
            || !s.index_digests.is_empty()
            || s.config_digest.is_some()
            || !s.diff_ids.is_empty()
    }

    pub(crate) fn finish(self) -> Subject {
        self.subject
    }
}

fn push_digest(list: &mut Vec<String>, raw: &str) {
    if let Some(d) = normalise(raw) {
        if !list.contains(&d) {
            list.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "62c48b330250328f99591083a3e28b50d8428aa1fb4550e0aa0c91900b71c928";

    #[test]
    fn normalises_the_spellings_scanners_use() {
        let want = format!("sha256:{HEX}");
        assert_eq!(normalise(&format!("sha256:{HEX}")), Some(want.clone()));
        assert_eq!(
            normalise(&format!(" SHA256:{} ", HEX.to_uppercase())),
            Some(want.clone())
        );
        assert_eq!(
            normalise(&format!("registry.example/app@sha256:{HEX}")),
            Some(want.clone())
        );
        assert_eq!(normalise(&format!("sha256%3A{HEX}")), Some(want.clone()));
        assert_eq!(
            normalise(&format!("localhost:5000/a/b@sha256:{HEX}")),
            Some(want)
        );
    }

    #[test]
    fn refuses_what_is_not_a_sha256_digest() {
        for bad in [
            "",
            HEX,
            "alpine:3.19",
            "/work/target/oci",
            &format!("sha512:{HEX}{HEX}"),
            &format!("sha256:{}", &HEX[1..]),
            &format!("sha256:{HEX}0"),
            &format!("sha256:{}g", &HEX[1..]),
            "sha256:",
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unordered_diff_ids_are_dropped_unless_there_is_one() {
        let mut b = SubjectBuilder::default();
        let two = [
            format!("sha256:{HEX}"),
            format!("sha256:{}", "b".repeat(64)),
        ];
        b.unordered_diff_ids(two.iter().map(String::as_str));
        assert!(!b.has_digest());
    }

    #[test]
    fn subject_keeps_each_digest_once_and_refs_as_written() {
        let mut b = SubjectBuilder::default();
        assert!(!b.has_digest());
        b.reference("app:1");
        assert!(!b.has_digest(), "a tag names no digest");
        b.reference(&format!("example.org/app@sha256:{}", HEX.to_uppercase()));
        b.manifest(&format!("sha256:{HEX}"));
        b.config("not a digest");
        b.config(&format!("sha256:{HEX}"));
        b.diff_id("sha1:abc");
        b.unordered_diff_ids([format!("sha256:{HEX}").as_str(), "sha256:zz"]);
        let s = b.finish();
        assert_eq!(s.manifest_digests, vec![format!("sha256:{HEX}")]);
        assert_eq!(s.config_digest, Some(format!("sha256:{HEX}")));
        assert_eq!(
            s.diff_ids,
            vec![format!("sha256:{HEX}")],
            "one valid unordered diff id"
        );
        assert_eq!(
            s.refs,
            vec![
                "app:1".to_owned(),
                format!("example.org/app@sha256:{}", HEX.to_uppercase())
            ]
        );
    }
}
