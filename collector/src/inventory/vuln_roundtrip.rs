//! Container events with their image lineage and scanner reports -> a
//! real SQLite file -> the vulnerability and hierarchy answers: the
//! joins on each digest kind, severity and fixable filters, a new scan
//! superseding the old one, and which images descend from which.
use std::sync::Arc;

use spyglass_proto::model::{
    Container, ContainerMeta, ContainerState, Event, Image, ImageLineage, Kind, Lifecycle, Runtime,
    Timestamp,
};

use super::{
    lineage, query, reports,
    roundtrip::{get, rows_of, scratch_store},
    store,
};
use crate::vulns::report::{Format, Package, Report, Severity, Subject, Vulnerability};

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// Layers `1..=n` (a base with n layers is a prefix of one with more).
fn layers(n: u8) -> Vec<String> {
    (1..=n).map(|i| digest(char::from(b'0' + i))).collect()
}

/// A container `id` of image (manifest `m`, config `c`, index `i`)
/// first seen, with its lineage.
fn created(id: &str, m: char, c: char, i: Option<char>, lineage: ImageLineage) -> Event {
    let mut ev = Event::new(Kind::Container, Timestamp(10), "node-a".into());
    let mut cont = Container::from_cgroup(id.into(), Runtime::Containerd, None);
    cont.fill(&Arc::new(ContainerMeta {
        id: id.into(),
        name: id.into(),
        namespace: "k8s.io".into(),
        image: Image {
            reference: format!("spyglass.test/{id}:1"),
            digest: digest(m),
            index_digest: i.map(digest).unwrap_or_default(),
            config_digest: digest(c),
            ..Image::default()
        },
        ..ContainerMeta::default()
    }));
    ev.container = Some(cont);
    ev.lifecycle = Some(Lifecycle {
        state: ContainerState::Created,
        exit_code: None,
        image: Some(Arc::new(lineage)),
    });
    ev
}

fn deb(name: &str, version: &str) -> Package {
    Package {
        kind: "deb".into(),
        name: name.into(),
        version: version.into(),
        source: None,
        arch: Some("amd64".into()),
        purl: Some(format!("pkg:deb/debian/{name}@{version}?arch=amd64")),
    }
}

fn vuln(id: &str, package: usize, severity: Severity, fixed: Option<&str>) -> Vulnerability {
    Vulnerability {
        id: id.into(),
        package,
        severity,
        fixed_version: fixed.map(str::to_owned),
        title: None,
        vex: None,
    }
}

fn report(subject: Subject, vulns: Vec<Vulnerability>) -> Report {
    Report {
        format: Format::Trivy,
        subject,
        packages: vec![deb("curl", "7.88.1-10+deb12u5"), deb("zlib1g", "1:1.2.13")],
        vulnerabilities: vulns,
    }
}

fn ids(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn reports_join_on_any_digest_and_a_new_scan_supersedes_the_old() {
    let (dir, pool) = scratch_store("spyglass-vulns").await;
    let evs = vec![
        created("web", 'a', 'b', Some('c'), ImageLineage::default()),
        created("db", 'd', 'e', None, ImageLineage::default()),
    ];
    store::write(&pool, &rows_of(&evs)).await.unwrap();
    // web's report names its config digest only; db's its manifest only
    let by_config = Subject {
        config_digest: Some(digest('b')),
        ..Subject::default()
    };
    let vulns = vec![
        vuln(
            "CVE-2024-0001",
            0,
            Severity::Critical,
            Some("7.88.1-10+deb12u8"),
        ),
        vuln("CVE-2024-0002", 1, Severity::Low, None),
    ];
    reports::save(&pool, "web.json", "s1", &report(by_config, vulns), 1)
        .await
        .unwrap();
    let by_manifest = Subject {
        manifest_digests: vec![digest('d')],
        ..Subject::default()
    };
    let vulns = vec![vuln("CVE-2024-0003", 0, Severity::High, None)];
    reports::save(&pool, "db.json", "s2", &report(by_manifest, vulns), 1)
        .await
        .unwrap();

    let all = get(&pool, &query::VULNS, &[]).await;
    assert_eq!(
        ids(&all),
        ["CVE-2024-0001", "CVE-2024-0003", "CVE-2024-0002"]
    );
    assert_eq!(all[0]["image"]["digest"], digest('a'));
    assert_eq!(all[0]["package"]["name"], "curl");
    assert_eq!(all[0]["fixed_version"], "7.88.1-10+deb12u8");
    assert_eq!(all[0]["running"]["containers"], 1);
    let high = get(&pool, &query::VULNS, &[("severity", "high")]).await;
    assert_eq!(ids(&high), ["CVE-2024-0001", "CVE-2024-0003"]);
    let fixable = get(&pool, &query::VULNS, &[("fixable", "true")]).await;
    assert_eq!(ids(&fixable), ["CVE-2024-0001"]);
    // the image by its index digest
    let web = get(&pool, &query::VULNS, &[("image", &digest('c'))]).await;
    assert_eq!(ids(&web), ["CVE-2024-0001", "CVE-2024-0002"]);
    let bad: Vec<(String, String)> = vec![("severity".into(), "urgent".into())];
    assert!(query::run(&pool, &query::VULNS, &bad).await.is_err());

    // a new scan of web's image (named by its index digest now) under
    // another name: the old report's rows go, CVE-2024-0001 is fixed
    let by_index = Subject {
        index_digests: vec![digest('c')],
        config_digest: Some(digest('b')),
        ..Subject::default()
    };
    let vulns = vec![vuln("CVE-2024-0002", 1, Severity::Low, None)];
    let saved = reports::save(&pool, "web-rescan.json", "s3", &report(by_index, vulns), 2)
        .await
        .unwrap();
    assert_eq!(saved.superseded, ["web.json"]);
    let web = get(&pool, &query::VULNS, &[("image", &digest('a'))]).await;
    assert_eq!(ids(&web), ["CVE-2024-0002"]);
    // another scanner's report of the image stands beside it
    let mut grype = report(
        Subject {
            config_digest: Some(digest('b')),
            ..Subject::default()
        },
        vec![vuln("CVE-2024-0009", 0, Severity::Medium, None)],
    );
    grype.format = Format::Grype;
    let saved = reports::save(&pool, "web.grype.json", "s4", &grype, 3)
        .await
        .unwrap();
    assert!(saved.superseded.is_empty(), "{saved:?}");
    let web = get(&pool, &query::VULNS, &[("image", &digest('a'))]).await;
    assert_eq!(ids(&web), ["CVE-2024-0009", "CVE-2024-0002"]);
    // the superseded report's bytes are remembered, not imported again
    assert!(reports::is_superseded(&pool, "web.json", "s1")
        .await
        .unwrap());
    assert!(!reports::is_superseded(&pool, "web.json", "s9")
        .await
        .unwrap());
    reports::delete(&pool, "web.grype.json").await.unwrap();
    let names: Vec<String> = get(&pool, &query::REPORTS, &[])
        .await
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["db.json", "web-rescan.json"]);
    reports::delete(&pool, "db.json").await.unwrap();
    assert!(get(&pool, &query::VULNS, &[("image", &digest('d'))])
        .await
        .is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn images_descend_from_the_bases_whose_layers_they_start_with() {
    let (dir, pool) = scratch_store("spyglass-lineage").await;
    let base = ImageLineage {
        diff_ids: layers(1),
        ..ImageLineage::default()
    };
    let app = ImageLineage {
        diff_ids: layers(3),
        ..ImageLineage::default()
    };
    // a third image names the app image as its base by annotation only
    let annotated = ImageLineage {
        base_digest: digest('m'),
        base_name: "spyglass.test/app:1".into(),
        diff_ids: vec![digest('z')],
    };
    let evs = vec![
        created("base", 'f', 'g', None, base),
        created("app", 'm', 'n', None, app),
        created("tool", 'p', 'q', None, annotated),
    ];
    store::write(&pool, &rows_of(&evs)).await.unwrap();
    // a runtime image between them, registered by its report only
    let runtime = Subject {
        manifest_digests: vec![digest('r')],
        config_digest: Some(digest('s')),
        diff_ids: layers(2),
        ..Subject::default()
    };
    reports::save(&pool, "runtime.json", "s", &report(runtime, Vec::new()), 1)
        .await
        .unwrap();

    let a = lineage::answer(&pool, &digest('m')).await.unwrap();
    assert_eq!(a.config_digest, digest('n'));
    assert_eq!(a.layers, 3);
    let configs = |v: &[lineage::Related]| {
        v.iter()
            .map(|r| (r.config_digest.clone(), r.by))
            .collect::<Vec<_>>()
    };
    // nearest first: the runtime (2 layers), then the base (1)
    assert_eq!(
        configs(&a.ancestors),
        [(digest('s'), "layers"), (digest('g'), "layers")]
    );
    assert_eq!(configs(&a.descendants), [(digest('q'), "annotation")]);
    // from the base, by its manifest digest: everything above it
    let b = lineage::answer(&pool, &digest('f')).await.unwrap();
    assert_eq!(
        configs(&b.descendants),
        [(digest('s'), "layers"), (digest('n'), "layers")]
    );
    let t = lineage::answer(&pool, &digest('p')).await.unwrap();
    assert_eq!(t.base_digest.as_deref(), Some(digest('m').as_str()));
    assert_eq!(t.base_name.as_deref(), Some("spyglass.test/app:1"));
    // the report's image, by its manifest digest
    let r = lineage::answer(&pool, &digest('r')).await.unwrap();
    assert_eq!(configs(&r.ancestors), [(digest('g'), "layers")]);
    assert!(matches!(
        lineage::answer(&pool, &digest('x')).await,
        Err(lineage::LineageError::Unknown(_))
    ));
    std::fs::remove_dir_all(dir).unwrap();
}
