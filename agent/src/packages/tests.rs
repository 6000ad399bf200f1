//! Whole-index tests on real directories: fixture rootfses (merged-/usr
//! or not, distroless, Alpine, hostile) and this host's own root.
use super::*;
use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

/// A temporary rootfs removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(what: &str) -> Root {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spyglass-packages-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Root(dir)
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn link(&self, rel: &str, target: &str) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    fn index(&self) -> PackageIndex {
        PackageIndex::read(&self.0).unwrap()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const OS_RELEASE_DEBIAN: &[u8] =
    b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";

/// A Debian-like rootfs from the real fixtures; `merged`: /bin, /sbin,
/// /lib, /lib64 are symlinks into /usr (as on bookworm).
fn debian_root(merged: bool) -> Root {
    let r = Root::new(if merged { "merged" } else { "split" });
    if merged {
        for d in ["bin", "sbin", "lib", "lib64"] {
            fs::create_dir_all(r.0.join("usr").join(d)).unwrap();
            r.link(d, &format!("usr/{d}"));
        }
    }
    r.write("usr/lib/os-release", OS_RELEASE_DEBIAN);
    r.link("etc/os-release", "../usr/lib/os-release");
    r.write(
        "var/lib/dpkg/status",
        include_bytes!("testdata/dpkg-status"),
    );
    r.write(
        "var/lib/dpkg/info/dash.list",
        include_bytes!("testdata/dash.list"),
    );
    // Lines from this host's lists (libc6 is Multi-Arch: same).
    r.write(
        "var/lib/dpkg/info/libc6:amd64.list",
        b"/.\n/lib64\n/usr\n/usr/lib\n/usr/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu/libc.so.6\n/lib64/ld-linux-x86-64.so.2\n",
    );
    r.write(
        "var/lib/dpkg/info/curl.list",
        b"/.\n/usr\n/usr/bin\n/usr/bin/curl\n/usr/share\n/usr/share/doc\n/usr/share/doc/curl\n/usr/share/doc/curl/copyright\n",
    );
    r.write(
        "var/lib/dpkg/info/bash.list",
        b"/.\n/bin\n/bin/bash\n/usr\n/usr/bin\n/usr/bin/bashbug\n",
    );
    r.write(
        "var/lib/dpkg/info/dpkg.list",
        b"/.\n/usr\n/usr/bin\n/usr/bin/dpkg\n",
    );
    // Left behind by a removed package: it must own nothing.
    r.write("var/lib/dpkg/info/nano.list", b"/.\n/bin\n/bin/nano\n");
    r
}

#[test]
fn merged_usr_rootfs_owns_paths_both_ways() {
    let r = debian_root(true);
    let idx = r.index();
    assert_eq!(idx.databases(), [Database::Dpkg]);
    assert_eq!(idx.packages().len(), 5, "{:?}", idx.packages());
    // dash lists /bin/dash; the kernel reports /usr/bin/dash.
    let dash = idx.owner("/usr/bin/dash").expect("dash owns /usr/bin/dash");
    assert_eq!((&*dash.name, &*dash.version), ("dash", "0.5.12-2"));
    assert_eq!(idx.owner("/bin/dash"), Some(dash));
    assert_eq!(idx.owner("/usr/bin/sh").map(|p| &*p.name), Some("dash"));
    // curl lists /usr/bin/curl; /bin/curl is the same file here.
    let curl = idx.owner("/bin/curl").expect("curl through the /bin alias");
    assert_eq!(
        &*curl.purl,
        "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u15?arch=amd64&distro=debian-12"
    );
    assert_eq!(curl.kind, PackageKind::Deb);
    assert_eq!(curl.source, None);
    assert_eq!(idx.owner("/usr//bin/./curl/"), Some(curl));
    // libc6:amd64.list, the merged /lib64.
    let libc = idx.owner("/usr/lib64/ld-linux-x86-64.so.2").expect("libc6");
    assert_eq!(
        (&*libc.name, libc.source.as_deref()),
        ("libc6", Some("glibc"))
    );
    assert_eq!(idx.owner("/lib64/ld-linux-x86-64.so.2"), Some(libc));
    let bash = idx.owner("/usr/bin/bash").expect("bash");
    assert_eq!(bash.source_version.as_deref(), Some("5.2.15-2"));
    // Directories, removed packages, strangers: unpackaged.
    assert_eq!(idx.owner("/usr/share/doc/dash"), None);
    assert_eq!(idx.owner("/usr/bin"), None);
    assert_eq!(idx.owner("/usr/bin/nano"), None);
    assert_eq!(idx.owner("/bin/nano"), None);
    assert_eq!(idx.owner("/usr/local/bin/copied-in"), None);
    assert_eq!(idx.owner("usr/bin/dash"), None);
    assert_eq!(idx.stats().skipped_stanzas, 0);
    assert_eq!(
        idx.distro().map(Distro::qualifier).as_deref(),
        Some("debian-12")
    );
}

#[test]
fn split_usr_rootfs_does_not_alias() {
    let r = debian_root(false);
    let idx = r.index();
    assert_eq!(idx.owner("/bin/dash").map(|p| &*p.name), Some("dash"));
    assert_eq!(
        idx.owner("/usr/bin/dash"),
        None,
        "/usr/bin/dash is another file here"
    );
    assert_eq!(idx.owner("/bin/curl"), None);
    assert_eq!(idx.owner("/usr/bin/curl").map(|p| &*p.name), Some("curl"));
}

#[test]
fn a_diversion_by_another_package_moves_the_file() {
    let r = debian_root(true);
    r.write(
        "var/lib/dpkg/diversions",
        b"/usr/bin/curl\n/usr/bin/curl.distrib\nbash\n/bin/sh\n/bin/sh.distrib\ndash\n",
    );
    let idx = r.index();
    assert_eq!(
        idx.owner("/usr/bin/curl.distrib").map(|p| &*p.name),
        Some("curl")
    );
    assert_eq!(idx.owner("/usr/bin/curl"), None);
    // dash's own diversion of /bin/sh leaves dash's /bin/sh in place.
    assert_eq!(idx.owner("/bin/sh").map(|p| &*p.name), Some("dash"));
}

#[test]
fn exec_paths_resolve_inside_the_rootfs() {
    let r = debian_root(true);
    r.write("usr/bin/dash", b"\x7fELF");
    r.link("bin/sh", "dash");
    // An alternatives chain no package lists, through the /bin alias.
    r.link("etc/alternatives/awk", "/bin/dash");
    r.link("usr/bin/awk", "/etc/alternatives/awk");
    // Links that try to climb out land inside the rootfs.
    r.link("usr/bin/up", "../../../../../../../../usr/bin/dash");
    r.link("usr/bin/loop", "loop");
    let fs = RootFs::open(&r.0).unwrap();
    assert_eq!(fs.resolve("/bin/sh").unwrap(), "/usr/bin/dash");
    assert_eq!(fs.resolve("/usr/bin/awk").unwrap(), "/usr/bin/dash");
    assert_eq!(fs.resolve("/usr/bin/up").unwrap(), "/usr/bin/dash");
    assert_eq!(
        fs.resolve("/usr/bin/../bin/./dash").unwrap(),
        "/usr/bin/dash"
    );
    assert!(fs.resolve("/usr/bin/loop").is_err());
    assert!(fs.resolve("/usr/bin/missing").is_err());
    assert!(fs.resolve("usr/bin/dash").is_err());
    let idx = PackageIndex::read_from(&fs).unwrap();
    assert_eq!(idx.owner("/usr/bin/awk"), None);
    assert_eq!(
        idx.owner_resolving(&fs, "/usr/bin/awk").map(|p| &*p.name),
        Some("dash")
    );
    assert_eq!(idx.owner_resolving(&fs, "/usr/bin/missing"), None);
}

/// The agent's case: a process chrooted into the rootfs, read through
/// `/proc/PID/root`. An absolute symlink there must resolve inside the
/// process's root, not the agent's (the host's os-release says debian 12).
#[test]
fn a_process_root_through_proc() {
    use std::os::unix::ffi::OsStrExt;
    let r = debian_root(true);
    r.write("usr/lib/os-release", b"ID=testos\nVERSION_ID=99\n");
    fs::remove_file(r.0.join("etc/os-release")).unwrap();
    r.link("etc/os-release", "/usr/lib/os-release");
    let dir = std::ffi::CString::new(r.0.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child only calls async-signal-safe functions (chroot,
    // pause, _exit) before it is killed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above, in the child.
        unsafe {
            if libc::chroot(dir.as_ptr()) != 0 {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_link(&proc_root).ok().as_deref() != Some(r.0.as_path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never chrooted (run as root)"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let idx = PackageIndex::read(&proc_root);
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let idx = idx.unwrap();
    assert_eq!(
        idx.distro().map(Distro::qualifier).as_deref(),
        Some("testos-99")
    );
    let dash = idx.owner("/usr/bin/dash").expect("dash");
    assert_eq!(
        &*dash.purl,
        "pkg:deb/testos/dash@0.5.12-2?arch=amd64&distro=testos-99"
    );
}

#[test]
fn distroless_status_d_with_md5sums() {
    let r = Root::new("distroless");
    r.write("etc/os-release", OS_RELEASE_DEBIAN);
    // Stanzas as distroless writes them (control files, no Status).
    r.write(
        "var/lib/dpkg/status.d/libc6",
        b"Package: libc6\nSource: glibc\nVersion: 2.36-9+deb12u7\nArchitecture: amd64\n\
          Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nInstalled-Size: 12986\n\
          Depends: libgcc-s1\nSection: libs\nPriority: optional\nMulti-Arch: same\n\
          Description: GNU C Library: Shared libraries\n Contains the standard libraries.\n",
    );
    r.write(
        "var/lib/dpkg/status.d/libc6.md5sums",
        b"d5b9e0a0a8d0ffc5b6f5c5c8a8b2c3d1  usr/lib/x86_64-linux-gnu/libc.so.6\n\
          0cd8b4c0ad1ab5eb8d7bb2e1ba0d8a0e  usr/bin/ldd\n",
    );
    r.write(
        "var/lib/dpkg/status.d/tzdata",
        b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\nMulti-Arch: foreign\n\
          Description: time zone and daylight-saving time data\n",
    );
    let idx = r.index();
    assert_eq!(idx.databases(), [Database::Dpkg]);
    assert_eq!(idx.packages().len(), 2);
    let libc = idx
        .owner("/usr/lib/x86_64-linux-gnu/libc.so.6")
        .expect("libc6 from md5sums");
    assert_eq!(
        &*libc.purl,
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12"
    );
    assert_eq!(idx.owner("/usr/bin/ldd"), Some(libc));
    assert_eq!(
        idx.stats().packages_without_files,
        1,
        "tzdata has no md5sums"
    );
}

#[test]
fn alpine_rootfs() {
    let r = Root::new("alpine");
    r.write("etc/os-release", b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME=\"Alpine Linux v3.20\"\n");
    r.write(
        "lib/apk/db/installed",
        include_bytes!("testdata/apk-installed"),
    );
    let idx = r.index();
    assert_eq!(idx.databases(), [Database::Apk]);
    let bb = idx.owner("/bin/busybox").expect("busybox");
    assert_eq!(
        (bb.kind, &*bb.purl),
        (
            PackageKind::Apk,
            "pkg:apk/alpine/busybox@1.36.1-r29?arch=x86_64&distro=alpine-3.20.3"
        )
    );
    assert_eq!(bb.source, None);
    let sh = idx.owner("/bin/sh").expect("busybox-binsh");
    assert_eq!(
        (&*sh.name, sh.source.as_deref()),
        ("busybox-binsh", Some("busybox"))
    );
    let crypto = idx.owner("/usr/lib/libcrypto.so.3").expect("libcrypto3");
    assert_eq!(crypto.source.as_deref(), Some("openssl"));
    assert_eq!(
        idx.owner("/usr/bin/curl").map(|p| &*p.version),
        Some("8.10.1-r0")
    );
    assert_eq!(idx.owner("/usr/bin"), None);
}

#[test]
fn a_rootfs_without_a_database_is_an_empty_index() {
    let r = Root::new("scratch");
    r.write("app/server", b"\x7fELF");
    let idx = r.index();
    assert!(idx.databases().is_empty());
    assert_eq!(idx.owner("/app/server"), None);
    assert!(matches!(
        PackageIndex::read(&r.0.join("missing")),
        Err(PackagesError::OpenRoot { .. })
    ));
}

#[test]
fn symlinks_never_lead_out_of_the_rootfs() {
    // A package database outside the rootfs, and links pointing at it.
    let outside = Root::new("outside");
    outside.write(
        "var/lib/dpkg/status",
        b"Package: escaped\nStatus: install ok installed\nVersion: 1\n",
    );
    outside.write("var/lib/dpkg/info/escaped.list", b"/usr/bin/escaped\n");
    let abs = outside.0.join("var").to_string_lossy().into_owned();
    for target in [
        abs.as_str(),
        "../../../../../../../../../../..",
        "../outside-var",
    ] {
        let r = Root::new("escape");
        r.link("var", target);
        let idx = r.index();
        assert!(
            idx.packages().is_empty(),
            "followed {target} out of the rootfs"
        );
    }
    // A symlinked status file is refused even when it stays inside.
    let r = Root::new("symlinked-status");
    r.write("etc/status", include_bytes!("testdata/dpkg-status"));
    r.link("var/lib/dpkg/status", "/etc/status");
    let err = PackageIndex::read(&r.0).unwrap_err();
    assert!(
        matches!(
            err,
            PackagesError::NotRegular {
                what: "a symlink",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("var/lib/dpkg/status"), "{err}");
    // So is a symlinked .list.
    let r = debian_root(true);
    fs::remove_file(r.0.join("var/lib/dpkg/info/curl.list")).unwrap();
    r.link("var/lib/dpkg/info/curl.list", "dash.list");
    assert!(matches!(
        PackageIndex::read(&r.0),
        Err(PackagesError::NotRegular { .. })
    ));
}

#[test]
fn special_and_oversized_files_are_refused() {
    let r = Root::new("fifo");
    fs::create_dir_all(r.0.join("var/lib/dpkg")).unwrap();
    let fifo = std::ffi::CString::new(
        r.0.join("var/lib/dpkg/status")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let err = PackageIndex::read(&r.0).unwrap_err();
    assert!(
        matches!(
            err,
            PackagesError::NotRegular {
                what: "a special file",
                ..
            }
        ),
        "{err}"
    );

    let r = Root::new("huge");
    r.write("var/lib/dpkg/status", b"");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(r.0.join("var/lib/dpkg/status"))
        .unwrap();
    f.set_len(dpkg::MAX_STATUS_BYTES + 1).unwrap(); // sparse
    let err = PackageIndex::read(&r.0).unwrap_err();
    assert!(
        matches!(err, PackagesError::TooLarge { size, .. } if size == dpkg::MAX_STATUS_BYTES + 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("over the 67108864-byte limit"),
        "{err}"
    );
}

#[test]
fn garbage_databases_give_no_packages_and_no_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut garbage = vec![0u8; 256 << 10];
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let r = Root::new("garbage");
    r.write("var/lib/dpkg/status", &garbage);
    r.write("var/lib/dpkg/status.d/x", &garbage);
    r.write("lib/apk/db/installed", &garbage);
    r.write("etc/os-release", &garbage);
    let idx = r.index();
    assert_eq!(idx.databases(), [Database::Dpkg, Database::Apk]);
    assert!(idx.packages().is_empty(), "{:?}", idx.packages());
    assert_eq!(idx.distro(), None, "an oversized os-release is ignored");
}

fn host_output(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The host is Debian: its own dpkg database, read through `/`.
#[test]
fn this_hosts_dpkg_owns_its_binaries() {
    assert!(
        Path::new("/var/lib/dpkg/status").is_file(),
        "this test needs a Debian host with a dpkg database (/var/lib/dpkg/status)"
    );
    let idx = PackageIndex::read(Path::new("/")).unwrap();
    assert_eq!(idx.databases(), [Database::Dpkg]);
    let version = host_output("dpkg-query", &["-W", "-f=${Version}", "dpkg"]);
    let dpkg = idx.owner("/usr/bin/dpkg").expect("/usr/bin/dpkg is owned");
    assert_eq!((&*dpkg.name, &*dpkg.version), ("dpkg", version.as_str()));
    assert!(
        dpkg.purl.starts_with("pkg:deb/debian/dpkg@"),
        "{}",
        dpkg.purl
    );
    // An exec of /bin/sh reports its resolved target (dash on Debian).
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let owner = idx
        .owner(sh.to_str().unwrap())
        .expect("the target of /bin/sh is owned");
    let expected = host_output("dpkg-query", &["-S", "/bin/sh"]);
    assert!(
        expected.contains(&format!("{}: /bin/sh", owner.name)),
        "dpkg -S says {expected}"
    );
    // The same resolution done inside the rootfs, as for a container.
    let root = RootFs::open(Path::new("/")).unwrap();
    assert_eq!(root.resolve("/bin/sh").unwrap(), sh.to_str().unwrap());
    assert_eq!(idx.owner_resolving(&root, "/bin/sh"), Some(owner));
    // As many packages as dpkg itself counts with files on disk.
    let states = host_output("dpkg-query", &["-W", "-f=${db:Status-Status}\n"]);
    let on_disk = states
        .lines()
        .filter(|s| {
            matches!(
                *s,
                "installed"
                    | "unpacked"
                    | "half-configured"
                    | "triggers-awaited"
                    | "triggers-pending"
            )
        })
        .count();
    assert_eq!(idx.packages().len(), on_disk);
    assert!(idx.path_count() > 10_000, "{} paths", idx.path_count());
}

/// Every regular file in this host's /usr/bin and /usr/sbin: the index
/// names the package `dpkg -S` names (asked under both merged-/usr
/// spellings, since dpkg itself knows only the one its list has), and
/// nothing for the files dpkg does not know.
#[test]
fn this_hosts_bin_dirs_agree_with_dpkg_s() {
    let idx = PackageIndex::read(Path::new("/")).unwrap();
    let mut files = Vec::new();
    for dir in ["/usr/bin", "/usr/sbin"] {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                files.push(e.path().to_str().unwrap().to_string());
            }
        }
    }
    assert!(files.len() > 100, "{} files", files.len());
    let mut args: Vec<String> = vec!["-S".into()];
    for f in &files {
        args.push(f.clone());
        args.push(f.strip_prefix("/usr").unwrap().to_string());
    }
    // Exit status 1 when some path is unknown: the answers are on stdout.
    let out = Command::new("dpkg-query").args(&args).output().unwrap();
    let mut dpkg: std::collections::HashMap<String, Vec<String>> = Default::default();
    // dpkg -S names no owner for a diversion's new name; dpkg -L says the
    // diverted package's file is there (libpq-dev's pg_config, diverted by
    // postgresql-common to /usr/bin/pg_config.libpq-dev): some owner.
    let mut diverted_to = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if line.starts_with("diversion by ") {
            if let Some((_, to)) = line.split_once(" to: ") {
                diverted_to.push(to.to_string());
            }
            continue;
        }
        let (pkgs, path) = line.rsplit_once(": ").unwrap();
        let path = if path.starts_with("/usr/") {
            path.to_string()
        } else {
            format!("/usr{path}")
        };
        let names = pkgs
            .split(", ")
            .map(|p| p.split(':').next().unwrap().to_string());
        dpkg.entry(path).or_default().extend(names);
    }
    let mut owned = 0;
    for f in &files {
        let ours = idx.owner(f).map(|p| p.name.to_string());
        match dpkg.get(f) {
            Some(names) => {
                owned += 1;
                let ours =
                    ours.unwrap_or_else(|| panic!("{f}: dpkg -S says {names:?}, the index none"));
                assert!(
                    names.contains(&ours),
                    "{f}: dpkg -S says {names:?}, the index {ours}"
                );
            }
            None if diverted_to.contains(f) => assert!(ours.is_some(), "{f}: a diversion's target"),
            None => assert_eq!(ours, None, "{f}: dpkg -S knows no owner"),
        }
    }
    assert!(owned > 100, "{owned} owned files");
}

/// Figures for the report: `cargo test --release -p spyglass-agent --lib
/// packages::tests::index_of_this_host_bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn index_of_this_host_bench() {
    let t = std::time::Instant::now();
    let idx = PackageIndex::read(Path::new("/")).unwrap();
    let built = t.elapsed();
    let probes = [
        "/usr/bin/dpkg",
        "/usr/bin/dash",
        "/bin/ls",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/local/bin/not-there",
        "/usr/bin/curl",
        "/usr/sbin/sshd-not",
        "/usr/bin/python3.11",
    ];
    let n = 1_000_000;
    let t = std::time::Instant::now();
    let mut hits = 0usize;
    for i in 0..n {
        hits += usize::from(
            idx.owner(std::hint::black_box(probes[i % probes.len()]))
                .is_some(),
        );
    }
    let per = t.elapsed() / n as u32;
    let root = RootFs::open(Path::new("/")).unwrap();
    let m = 10_000u32;
    let t = std::time::Instant::now();
    for _ in 0..m {
        std::hint::black_box(idx.owner_resolving(&root, std::hint::black_box("/usr/bin/awk")));
    }
    let resolving = t.elapsed() / m;
    eprintln!(
        "indexed / in {built:?}: {} packages, {} paths, {} bytes read, ~{} KiB heap; {n} lookups: {per:?} each ({hits} hits); a miss resolved in the rootfs (/usr/bin/awk): {resolving:?}; stats {:?}",
        idx.packages().len(),
        idx.path_count(),
        idx.stats().bytes_read,
        idx.heap_bytes() / 1024,
        idx.stats()
    );
}
