//! Property tests: the parsers take any bytes without panicking, and path
//! normalisation is idempotent and always canonical.
use super::{apk, dpkg, paths, purl::Distro};
use proptest::prelude::*;

/// Bytes that look like package databases: field names, separators,
/// slashes and dots, mixed with anything.
fn dbish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"Package: ".to_vec()),
        Just(b"Status: install ok installed".to_vec()),
        Just(b"Version: ".to_vec()),
        Just(b"Source: x (".to_vec()),
        Just(b"P:".to_vec()),
        Just(b"F:".to_vec()),
        Just(b"R:".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"/".to_vec()),
        Just(b"..".to_vec()),
        Just(b"  ".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    proptest::collection::vec(piece, 0..64).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(crate::fuzz::config(256))]

    #[test]
    fn parsers_take_any_bytes(data in dbish()) {
        for s in dpkg::stanzas(&data) {
            if let Some(p) = dpkg::package_of(&s, false) {
                prop_assert!(dpkg::valid_name(&p.name));
            }
        }
        let _ = dpkg::list_paths(&data).count();
        let _ = dpkg::md5sums_paths(&data).count();
        let _ = dpkg::diversions(&data);
        for r in apk::records(&data) {
            prop_assert!(r.files.iter().all(|f| !f.starts_with('/')));
        }
        let _ = Distro::parse(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn normalised_paths_are_canonical_and_stable(
        parts in proptest::collection::vec(prop_oneof![
            Just(""), Just("."), Just(".."), Just("bin"), Just("usr"), Just("lib64"), Just("x y"), Just("é"),
        ], 0..12),
        trailing in any::<bool>(),
    ) {
        let aliases = paths::UsrAliases::detect(|n| (n == "bin" || n == "lib64").then(|| format!("usr/{n}")));
        let mut path = format!("/{}", parts.join("/"));
        if trailing {
            path.push('/');
        }
        let mut a = [0u8; paths::PATH_MAX];
        let mut b = [0u8; paths::PATH_MAX];
        let once = paths::normalise(&path, &aliases, &mut a).unwrap();
        prop_assert!(once.starts_with('/'));
        prop_assert!(once == "/" || !once.ends_with('/'), "{}", once);
        prop_assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"), "{}", once);
        prop_assert!(!once.starts_with("/bin/") && once != "/bin", "{}", once);
        prop_assert_eq!(paths::normalise(once, &aliases, &mut b), Some(once));
    }
}
