//! Every format parsed from real scanner output (see fixtures/README.md):
//! the image's digests, packages and vulnerabilities, and the errors a
//! broken or foreign file gets.

use serde_json::{json, Value};

use super::builder::Limits;
use super::report::{Format, Package, Report, Severity, VexState};
use super::{parse, parse_with, ReportError};

// The fixture image (fixtures/make-fixtures.sh), as its OCI layout says.
const MANIFEST: &str = "sha256:08abb3d12ec0eba50a68c18271a5e7a7261ef1bc8de37ce80f69003a5ac0a614";
const CONFIG: &str = "sha256:8c98264c148217a2f5401e478d41f12b9fefc69ff722a13a9febd8bc441f5a52";
const DIFF_IDS: [&str; 2] = [
    "sha256:ef9abccfbcd1701002544fc5f409b462fce347e3ee964e54d2803ae440430e5d",
    "sha256:36b5d260551a3794e5682dc1a54e32f046f374e62e9d6dbef8579366a0983511",
];
const REPO: &str = "registry.spyglass.test/vulns";

const TRIVY: &[u8] = include_bytes!("fixtures/trivy.json");
const TRIVY_VULNS: &[u8] = include_bytes!("fixtures/trivy-vulns.json");
const TRIVY_SBOM: &[u8] = include_bytes!("fixtures/trivy-sbom.json");
const TRIVY_CDX: &[u8] = include_bytes!("fixtures/trivy.cdx.json");
const TRIVY_VULNS_CDX: &[u8] = include_bytes!("fixtures/trivy-vulns.cdx.json");
const SYFT: &[u8] = include_bytes!("fixtures/syft.json");
const SYFT_CDX: &[u8] = include_bytes!("fixtures/syft.cdx.json");
const GRYPE: &[u8] = include_bytes!("fixtures/grype.json");
const VEX_CDX: &[u8] = include_bytes!("fixtures/vex.cdx.json");
// The scanners' own test outputs (fixtures/README.md, "Upstream").
const UP_TRIVY: &[u8] = include_bytes!("fixtures/upstream/trivy-debian-buster.json");
const UP_GRYPE: &[u8] = include_bytes!("fixtures/upstream/grype-image.json");
const UP_TRIVY_CDX: &[u8] = include_bytes!("fixtures/upstream/trivy-centos-7.cdx.json");

fn ok(name: &str, bytes: &[u8]) -> Report {
    parse(name, bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn err(name: &str, bytes: &[u8]) -> String {
    match parse(name, bytes) {
        Ok(r) => panic!("{name} parsed: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn package<'r>(r: &'r Report, name: &str) -> &'r Package {
    let mut found = r.packages.iter().filter(|p| p.name == name);
    let p = found
        .next()
        .unwrap_or_else(|| panic!("no package {name} in {:?}", r.packages));
    assert!(found.next().is_none(), "{name} listed twice");
    p
}

fn names(r: &Report) -> Vec<&str> {
    let mut n: Vec<&str> = r.packages.iter().map(|p| p.name.as_str()).collect();
    n.sort_unstable();
    n
}

/// A vulnerability as (id, package name, severity, fixed version, vex).
type Row = (String, String, Severity, Option<String>, Option<VexState>);

fn row(
    id: &str,
    package: &str,
    severity: Severity,
    fix: Option<&str>,
    vex: Option<VexState>,
) -> Row {
    (
        id.into(),
        package.into(),
        severity,
        fix.map(str::to_owned),
        vex,
    )
}

const CURL_FIX: Option<&str> = Some("7.88.1-10+deb12u16");
const SSL_FIX: Option<&str> = Some("3.0.19-1~deb12u3");

/// The four findings the hand-written Trivy and Grype reports share.
fn four_findings() -> Vec<Row> {
    vec![
        row("CVE-2023-45853", "zlib1g", Severity::Critical, None, None),
        row("CVE-2025-9086", "curl", Severity::Medium, CURL_FIX, None),
        row(
            "CVE-2025-9086",
            "libcurl4",
            Severity::Medium,
            CURL_FIX,
            None,
        ),
        row("CVE-2025-9230", "libssl3", Severity::High, SSL_FIX, None),
    ]
}

/// The report's vulnerabilities as rows, sorted.
fn vulns(r: &Report) -> Vec<Row> {
    let mut v: Vec<_> = r
        .vulnerabilities
        .iter()
        .map(|v| {
            let p = &r.packages[v.package].name;
            (
                v.id.clone(),
                p.clone(),
                v.severity,
                v.fixed_version.clone(),
                v.vex,
            )
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

fn edit(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

const PACKAGES: [&str; 4] = ["curl", "libcurl4", "libssl3", "zlib1g"];

#[test]
fn trivy_image_report_names_the_config_and_layers_and_lists_every_package() {
    let r = ok("trivy.json", TRIVY);
    assert_eq!(r.format, Format::Trivy);
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    assert_eq!(r.subject.diff_ids, DIFF_IDS, "layer order kept");
    assert!(
        r.subject.manifest_digests.is_empty(),
        "an OCI layout has no repo digest"
    );
    assert_eq!(names(&r), PACKAGES);
    assert_eq!(
        *package(&r, "zlib1g"),
        Package {
            kind: "deb".into(),
            name: "zlib1g".into(),
            version: "1:1.2.13.dfsg-1".into(),
            source: Some("zlib".into()),
            arch: Some("amd64".into()),
            purl: Some(
                "pkg:deb/debian/zlib1g@1.2.13.dfsg-1?arch=amd64&distro=debian-12.11&epoch=1".into()
            ),
        }
    );
    assert_eq!(package(&r, "libssl3").source.as_deref(), Some("openssl"));
    assert!(r.vulnerabilities.is_empty());
}

#[test]
fn trivy_vulnerabilities_join_the_listed_packages() {
    let r = ok("trivy-vulns.json", TRIVY_VULNS);
    assert_eq!(r.subject.manifest_digests, [MANIFEST]);
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    assert_eq!(
        r.subject.refs,
        [format!("{REPO}@{MANIFEST}"), format!("{REPO}:1")]
    );
    assert_eq!(names(&r), PACKAGES, "no package added for a vulnerability");
    assert_eq!(vulns(&r), four_findings());
    let curl = r
        .vulnerabilities
        .iter()
        .find(|v| r.packages[v.package].name == "curl")
        .unwrap();
    assert_eq!(
        curl.title.as_deref(),
        Some("curl: libcurl: Out of bounds read for cookie path")
    );
}

#[test]
fn trivy_without_list_all_pkgs_adds_each_vulnerable_package_at_its_installed_version() {
    let listed = ok("trivy-vulns.json", TRIVY_VULNS);
    let bytes = edit(TRIVY_VULNS, |v| {
        v["Results"][0].as_object_mut().unwrap().remove("Packages");
    });
    let r = ok("trivy-vulns.json", &bytes);
    assert_eq!(names(&r), PACKAGES);
    assert_eq!(r.vulnerabilities.len(), 4);
    for p in &r.packages {
        let full = package(&listed, &p.name);
        // The version a vulnerability names is the listed package's.
        assert_eq!(
            (&p.version, &p.purl, &p.arch, &p.kind),
            (&full.version, &full.purl, &full.arch, &full.kind)
        );
        assert_eq!(
            p.source, None,
            "a vulnerability does not name the source package"
        );
    }
}

#[test]
fn trivy_sbom_mode_keeps_the_config_digest_but_not_layers_in_unknown_order() {
    let r = ok("trivy-sbom.json", TRIVY_SBOM);
    assert_eq!(r.format, Format::Trivy);
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    assert!(r.subject.diff_ids.is_empty(), "{:?}", r.subject.diff_ids);
    assert_eq!(names(&r), PACKAGES);
    assert_eq!(package(&r, "zlib1g").version, "1:1.2.13.dfsg-1");
}

#[test]
fn grype_report_names_the_image_by_every_digest_and_keeps_vex_statements() {
    let r = ok("grype.json", GRYPE);
    assert_eq!(r.format, Format::Grype);
    assert_eq!(r.subject.manifest_digests, [MANIFEST]);
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    // source.target.layers[].digest are the diff ids: the same as
    // Trivy's DiffIDs of the same image, in the same order.
    assert_eq!(r.subject.diff_ids, ok("trivy.json", TRIVY).subject.diff_ids);
    assert_eq!(
        r.subject.refs,
        [format!("{REPO}@{MANIFEST}"), format!("{REPO}:1")]
    );
    assert_eq!(names(&r), PACKAGES);
    let zlib = package(&r, "zlib1g");
    assert_eq!(
        (zlib.version.as_str(), zlib.source.as_deref()),
        ("1:1.2.13.dfsg-1", Some("zlib"))
    );
    assert_eq!(zlib.arch.as_deref(), Some("amd64"));
    let mut want = four_findings();
    // Removed by a VEX document: kept with its statement. The
    // user-ignored CVE-2024-2379 stays out.
    want.push(row(
        "CVE-2025-9231",
        "libssl3",
        Severity::Medium,
        SSL_FIX,
        Some(VexState::NotAffected),
    ));
    assert_eq!(vulns(&r), want);
}

#[test]
fn syft_cyclonedx_names_the_manifest_digest_and_its_packages() {
    let r = ok("syft.cdx.json", SYFT_CDX);
    assert_eq!(r.format, Format::CycloneDx);
    assert_eq!(r.subject.manifest_digests, [MANIFEST]);
    assert_eq!(r.subject.config_digest, None, "syft's BOM has no image id");
    assert_eq!(
        names(&r),
        PACKAGES,
        "the operating-system component is no package"
    );
    let ssl = package(&r, "libssl3");
    assert_eq!(
        (
            ssl.kind.as_str(),
            ssl.version.as_str(),
            ssl.source.as_deref(),
            ssl.arch.as_deref()
        ),
        ("deb", "3.0.19-1~deb12u2", Some("openssl"), Some("amd64"))
    );
    assert_eq!(package(&r, "zlib1g").version, "1:1.2.13.dfsg-1");
}

#[test]
fn trivy_cyclonedx_names_the_image_id_and_packages() {
    let r = ok("trivy.cdx.json", TRIVY_CDX);
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    assert!(
        r.subject.diff_ids.is_empty(),
        "sorted by value, not in layer order"
    );
    assert_eq!(names(&r), PACKAGES);
    assert_eq!(package(&r, "curl").source.as_deref(), Some("curl"));
    // The same packages as Trivy's JSON of the same image.
    assert_eq!(r.packages.len(), ok("trivy.json", TRIVY).packages.len());
    for p in &ok("trivy.json", TRIVY).packages {
        assert_eq!(package(&r, &p.name), p);
    }
}

#[test]
fn cyclonedx_vulnerabilities_take_the_highest_rating_and_trivys_recommended_fix() {
    let r = ok("trivy-vulns.cdx.json", TRIVY_VULNS_CDX);
    assert_eq!(
        vulns(&r),
        [
            row("CVE-2023-45853", "zlib1g", Severity::Critical, None, None),
            row("CVE-2025-9086", "curl", Severity::High, CURL_FIX, None),
            row("CVE-2025-9086", "libcurl4", Severity::High, CURL_FIX, None),
        ]
    );
}

#[test]
fn a_vex_only_bom_is_a_report_about_the_image_its_purl_names() {
    let r = ok("vex.cdx.json", VEX_CDX);
    assert_eq!(r.format, Format::CycloneDx);
    assert_eq!(r.subject.manifest_digests, [MANIFEST]);
    // Packages from purls: a BOM-Link's fragment, or the ref itself.
    assert_eq!(names(&r), PACKAGES);
    let zlib = package(&r, "zlib1g");
    assert_eq!(
        zlib.version, "1:1.2.13.dfsg-1",
        "epoch qualifier back in the version"
    );
    assert_eq!(
        (zlib.kind.as_str(), zlib.arch.as_deref()),
        ("deb", Some("amd64"))
    );
    let under = Some(VexState::UnderInvestigation);
    let not_affected = Some(VexState::NotAffected);
    assert_eq!(
        vulns(&r),
        [
            row("CVE-2023-45853", "zlib1g", Severity::Unknown, None, under),
            row(
                "CVE-2024-2379",
                "libcurl4",
                Severity::Unknown,
                None,
                not_affected
            ),
            row(
                "CVE-2025-9086",
                "curl",
                Severity::High,
                CURL_FIX,
                Some(VexState::Affected)
            ),
            row(
                "CVE-2025-9231",
                "libssl3",
                Severity::Medium,
                None,
                not_affected
            ),
            // CVE-2025-9230's ref points into another BOM at no purl: skipped.
        ]
    );
}

#[test]
fn trivys_own_debian_test_report_without_package_list_adds_the_vulnerable_packages() {
    let r = ok("trivy-debian-buster.json", UP_TRIVY);
    assert_eq!(
        r.subject.config_digest.as_deref(),
        Some("sha256:c2c03a296d2329a4f3ab72a7bf38b78a8a80108204d326b0139d6af700e152d1")
    );
    assert_eq!(
        r.subject.diff_ids,
        ["sha256:78c1b9419976227e05be9d243b7fa583bea44a5258e52018b2af4cdfe23d148d"]
    );
    assert_eq!(
        r.subject.refs,
        ["ghcr.io/aquasecurity/trivy-test-images:debian-buster"]
    );
    assert_eq!(names(&r), ["bash", "libidn2-0"]);
    let idn = package(&r, "libidn2-0");
    assert_eq!(
        (idn.version.as_str(), idn.arch.as_deref()),
        ("2.0.5-1", Some("amd64"))
    );
    assert_eq!(
        vulns(&r),
        [
            row(
                "CVE-2019-18224",
                "libidn2-0",
                Severity::Critical,
                Some("2.0.5-1+deb10u1"),
                None
            ),
            row("CVE-2019-18276", "bash", Severity::Low, None, None),
        ]
    );
}

#[test]
fn grypes_own_image_presenter_snapshot_parses() {
    let r = ok("grype-image.json", UP_GRYPE);
    assert_eq!(
        r.subject.manifest_digests,
        ["sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5"]
    );
    assert_eq!(
        r.subject.config_digest.as_deref(),
        Some("sha256:ab5608d634db2716a297adbfa6a5dd5d8f8f5a7d0cab73649ea7fbb8c8da544f")
    );
    assert_eq!(r.subject.diff_ids.len(), 3);
    assert_eq!(
        (
            package(&r, "package-1").kind.as_str(),
            package(&r, "package-2").kind.as_str()
        ),
        ("rpm", "deb")
    );
    assert_eq!(
        vulns(&r),
        [
            row(
                "CVE-1999-0001",
                "package-1",
                Severity::Low,
                Some("1.2.1"),
                None
            ),
            row("CVE-1999-0002", "package-2", Severity::Critical, None, None),
        ]
    );
}

#[test]
fn an_older_trivy_bom_with_one_layer_keeps_it_and_puts_rpm_epochs_back() {
    let r = ok("trivy-centos-7.cdx.json", UP_TRIVY_CDX);
    assert_eq!(
        r.subject.config_digest.as_deref(),
        Some("sha256:f1cb7c7d58b73eac859c395882eec49d50651244e342cd6c68a5c7809785f427")
    );
    assert_eq!(
        r.subject.diff_ids,
        ["sha256:89169d87dbe2b72ba42bfbb3579c957322baca28e03a1e558076542a1c1b2b4a"],
        "a single diff id has no order to lose"
    );
    assert_eq!(
        r.subject.refs,
        ["ghcr.io/aquasecurity/trivy-test-images:centos-7"]
    );
    let ssl = package(&r, "openssl-libs");
    assert_eq!(
        (
            ssl.kind.as_str(),
            ssl.version.as_str(),
            ssl.source.as_deref(),
            ssl.arch.as_deref()
        ),
        ("rpm", "1:1.0.2k-16.el7", Some("openssl"), Some("x86_64"))
    );
    assert_eq!(package(&r, "bash").version, "4.2.46-31.el7");
}

#[test]
fn a_vex_statement_about_the_image_itself_adds_no_package() {
    let bytes = edit(VEX_CDX, |v| {
        let image = v["metadata"]["component"]["purl"].clone();
        let affects = v["vulnerabilities"][0]["affects"].as_array_mut().unwrap();
        affects.push(json!({"ref": image}));
    });
    let r = ok("vex.cdx.json", &bytes);
    assert_eq!(names(&r), PACKAGES);
    assert_eq!(r.vulnerabilities.len(), 4);
}

#[test]
fn cyclonedx_resolved_maps_to_fixed_and_spec_1_4_and_1_7_are_read() {
    let bytes = edit(VEX_CDX, |v| {
        v["specVersion"] = json!("1.4");
        v["vulnerabilities"][1]["analysis"]["state"] = json!("resolved");
    });
    let r = ok("vex.cdx.json", &bytes);
    let zlib = r
        .vulnerabilities
        .iter()
        .find(|v| v.id == "CVE-2023-45853")
        .unwrap();
    assert_eq!(zlib.vex, Some(VexState::Fixed));
    assert_eq!(
        ok("trivy.cdx.json", TRIVY_CDX).format,
        Format::CycloneDx,
        "trivy writes 1.7"
    );
    let old = edit(VEX_CDX, |v| v["specVersion"] = json!("1.3"));
    assert_eq!(
        err("old.cdx.json", &old),
        "old.cdx.json: a CycloneDX BOM of spec version \"1.3\", which is not imported: \
         spec versions 1.4 to 1.7 are read: write it again with a current scanner"
    );
}

#[test]
fn truncated_report_names_the_file_and_where_it_ends() {
    let half = &TRIVY[..TRIVY.len() / 2];
    let line = half.iter().filter(|&&b| b == b'\n').count() + 1;
    let e = err("reports/trivy.json", half);
    let want = format!("reports/trivy.json: truncated or malformed JSON at line {line} column ");
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("EOF while parsing"), "{e}");
    for (name, bytes) in [("grype.json", GRYPE), ("vex.cdx.json", VEX_CDX)] {
        let e = err(name, &bytes[..bytes.len() - 3]);
        assert!(
            e.starts_with(&format!("{name}: truncated or malformed JSON at line")),
            "{e}"
        );
    }
}

#[test]
fn foreign_files_are_refused_with_what_to_do() {
    let not_a_report = "app.json: not a Trivy, Grype or CycloneDX JSON report (no SchemaVersion, \
         matches or bomFormat): write it with `trivy image -f json`, `grype -o json` or `-f cyclonedx`";
    assert_eq!(
        err("app.json", br#"{"name": "app", "version": 3}"#),
        not_a_report
    );
    assert_eq!(err("app.json", b"[1, 2]"), not_a_report);
    assert_eq!(err("app.json", br#"{"bomFormat": "SPDX"}"#), not_a_report);
    assert_eq!(
        err("app.json", b"\x7fELF\x02\x01\x01\0\0\0"),
        "app.json: not JSON (it does not start with `{`): import the scanner's JSON output: \
         `trivy image -f json`, `grype -o json` or `-f cyclonedx`"
    );
    assert!(
        err("app.xml", b"<?xml version=\"1.0\"?><bom/>").starts_with("app.xml: XML, not JSON: ")
    );
    assert!(err("e.json", b" \n").starts_with("e.json: empty: "));
    assert!(err("e.json", b"[1, 2").starts_with("e.json: truncated or malformed JSON at line 1"));
    assert_eq!(
        err("syft.json", SYFT),
        "syft.json: a syft JSON SBOM, which is not imported: scan it with `grype sbom:FILE -o json`, \
         or write the SBOM with `syft IMAGE -o cyclonedx-json`"
    );
    assert!(
        err("s.json", br#"{"spdxVersion": "SPDX-2.3"}"#).starts_with("s.json: an SPDX document")
    );
}

#[test]
fn deep_nesting_is_refused_or_skipped_not_a_stack_overflow() {
    // In a field that is not read, serde_json skips it without recursing.
    let mut bytes = br#"{"bomFormat": "CycloneDX", "specVersion": "1.6", "x": "#.to_vec();
    bytes.extend(std::iter::repeat_n(b'[', 100_000));
    bytes.extend(std::iter::repeat_n(b']', 100_000));
    bytes.push(b'}');
    let e = err("deep.json", &bytes);
    assert!(
        e.starts_with("deep.json: the CycloneDX report names no image digest"),
        "{e}"
    );
    // In nested components, which are read: the recursion limit.
    let mut bytes = br#"{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": "#.to_vec();
    for _ in 0..10_000 {
        bytes.extend_from_slice(br#"[{"name": "a", "components": "#);
    }
    bytes.extend_from_slice(b"[]");
    for _ in 0..10_000 {
        bytes.extend_from_slice(b"}]");
    }
    bytes.push(b'}');
    let e = err("deep.json", &bytes);
    assert!(
        e.starts_with("deep.json: truncated or malformed JSON at line 1"),
        "{e}"
    );
    assert!(e.contains("recursion limit exceeded"), "{e}");
}

#[test]
fn a_field_of_the_wrong_type_is_a_schema_error_with_its_place() {
    let e = err("t.json", b"{\"SchemaVersion\": 2,\n \"Results\": \"none\"}");
    assert!(
        e.starts_with(
            "t.json: a Trivy report whose content does not fit its format at line 2 column "
        ),
        "{e}"
    );
}

#[test]
fn nulls_and_unknown_fields_are_tolerated() {
    let bytes = edit(TRIVY_VULNS, |v| {
        v["Metadata"]["RepoTags"] = Value::Null;
        v["Results"][0]["Packages"][0]["Licenses"] = Value::Null;
        v["Results"][0]["Packages"][0]["SrcName"] = Value::Null;
        v["Results"][0]["SomethingNew"] = json!({"deep": [1, 2]});
    });
    let r = ok("t.json", &bytes);
    assert_eq!(r.packages.len(), 4);
    assert_eq!(r.subject.refs, [format!("{REPO}@{MANIFEST}")]);
}

#[test]
fn a_report_without_any_image_digest_is_refused() {
    let bytes = edit(TRIVY, |v| {
        let m = v["Metadata"].as_object_mut().unwrap();
        m.remove("ImageID");
        m.remove("DiffIDs");
        m.remove("Layers");
        m.insert(
            "RepoDigests".into(),
            json!(["app@sha512:abcd", "app:latest"]),
        );
    });
    assert_eq!(
        err("reports/fs.json", &bytes),
        "reports/fs.json: the Trivy report names no image digest (looked at Metadata.ImageID, \
         RepoDigests, DiffIDs and an ArtifactName with @sha256:), so it cannot be joined with \
         running images: scan the image (`trivy image IMAGE -f json`), not a directory or a file system"
    );
    let dir = edit(GRYPE, |v| {
        v["source"] = json!({"type": "directory", "target": "/src"});
    });
    assert!(err("g.json", &dir).contains("grype scanned a directory, file or SBOM"));
    let bom = edit(SYFT_CDX, |v| {
        v["metadata"].as_object_mut().unwrap().remove("component");
    });
    assert!(err("b.json", &bom).starts_with("b.json: the CycloneDX report names no image digest"));
}

#[test]
fn an_image_with_no_packages_is_a_report_and_digests_are_normalised() {
    let upper = CONFIG.replace("sha256:", "SHA256:").to_uppercase();
    let bytes = json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("{REPO}@{}", MANIFEST.to_uppercase().replace("SHA256", "sha256")),
        "Metadata": {"ImageID": upper, "DiffIDs": ["sha256:short", DIFF_IDS[0]]},
    });
    let r = ok("empty.json", &serde_json::to_vec(&bytes).unwrap());
    assert_eq!(r.subject.config_digest.as_deref(), Some(CONFIG));
    assert_eq!(r.subject.manifest_digests, [MANIFEST]);
    assert_eq!(
        r.subject.diff_ids,
        [DIFF_IDS[0]],
        "the invalid diff id is skipped"
    );
    assert!(r.packages.is_empty() && r.vulnerabilities.is_empty());
}

#[test]
fn a_utf8_byte_order_mark_is_skipped() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(GRYPE);
    assert_eq!(ok("bom.json", &bytes), ok("grype.json", GRYPE));
}

#[test]
fn size_and_count_caps_name_the_limit() {
    let small = Limits {
        bytes: 1000,
        packages: 1_000_000,
        vulnerabilities: 1_000_000,
    };
    let e = parse_with("big.json", TRIVY, small).unwrap_err();
    assert!(
        matches!(e, ReportError::TooLarge { size, limit: 1000, .. } if size == TRIVY.len()),
        "{e}"
    );
    assert!(e.to_string().starts_with(&format!(
        "big.json: {} bytes, over the 1000-byte limit",
        TRIVY.len()
    )));
    let few = Limits {
        bytes: 1 << 20,
        packages: 3,
        vulnerabilities: 1_000_000,
    };
    let e = parse_with("t.json", TRIVY, few).unwrap_err().to_string();
    assert!(e.starts_with("t.json: more than 3 packages"), "{e}");
    let few = Limits {
        bytes: 1 << 20,
        packages: 10,
        vulnerabilities: 3,
    };
    let e = parse_with("g.json", GRYPE, few).unwrap_err().to_string();
    assert!(e.starts_with("g.json: more than 3 vulnerabilities"), "{e}");
    assert_eq!(super::MAX_REPORT_BYTES, 512 * 1024 * 1024);
}

/// A Trivy report of `packages` packages and `per_package` CVEs each.
fn generated_trivy(packages: usize, per_package: usize) -> Vec<u8> {
    let pkgs: Vec<Value> = (0..packages)
        .map(|i| {
            json!({"ID": format!("pkg{i}@1.{i}-1"), "Name": format!("pkg{i}"), "Version": format!("1.{i}"),
                   "Release": "1", "Arch": "amd64", "SrcName": format!("src{}", i / 3),
                   "Identifier": {"PURL": format!("pkg:deb/debian/pkg{i}@1.{i}-1?arch=amd64"), "UID": format!("{i:016x}")}})
        })
        .collect();
    let vulns: Vec<Value> = (0..packages * per_package)
        .map(|n| {
            let i = n % packages;
            let severity = ["LOW", "MEDIUM", "HIGH", "CRITICAL"][n % 4];
            json!({"VulnerabilityID": format!("CVE-2026-{n:05}"), "PkgName": format!("pkg{i}"),
                   "PkgIdentifier": {"PURL": format!("pkg:deb/debian/pkg{i}@1.{i}-1?arch=amd64"), "UID": format!("{i:016x}")},
                   "InstalledVersion": format!("1.{i}-1"), "FixedVersion": format!("1.{i}-2"), "Status": "fixed",
                   "Severity": severity, "Title": "generated",
                   "Description": "a generated vulnerability ".repeat(8), "References": ["https://example.org/a", "https://example.org/b"]})
        })
        .collect();
    serde_json::to_vec(&json!({"SchemaVersion": 2, "ArtifactName": format!("{REPO}:1"), "ArtifactType": "container_image",
        "Metadata": {"ImageID": CONFIG, "DiffIDs": DIFF_IDS, "RepoDigests": [format!("{REPO}@{MANIFEST}")]},
        "Results": [{"Target": "generated", "Class": "os-pkgs", "Type": "debian", "Packages": pkgs, "Vulnerabilities": vulns}]}))
    .unwrap()
}

/// Not a timed assertion: prints the time a 5,000-vulnerability report
/// takes (run with `--release -- --nocapture`), and checks the result.
#[test]
fn a_5000_vulnerability_trivy_report_parses_whole() {
    let bytes = generated_trivy(700, 5000 / 700 + 1);
    let start = std::time::Instant::now();
    let r = ok("generated.json", &bytes);
    let took = start.elapsed();
    eprintln!(
        "parsed {} bytes, {} packages, {} vulnerabilities in {took:?}",
        bytes.len(),
        r.packages.len(),
        r.vulnerabilities.len()
    );
    assert_eq!(r.packages.len(), 700);
    assert_eq!(r.vulnerabilities.len(), 700 * 8);
    let v = &r.vulnerabilities[4999];
    assert_eq!(
        (v.id.as_str(), r.packages[v.package].name.as_str()),
        ("CVE-2026-04999", "pkg99")
    );
    assert_eq!(
        (v.severity, v.fixed_version.as_deref()),
        (Severity::Critical, Some("1.99-2"))
    );
}
