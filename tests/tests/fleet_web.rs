//! The fleet web page in a real browser: a real agent under containerd
//! streams to a real collector; headless Chromium (Debian's, installed by
//! `cargo xtask setup`) renders the collector's overview and a
//! container's page, and the rendered DOM must show the containers,
//! their ports and the links between the pages, with a hostile
//! executable name escaped.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` runs another collector binary (an older
//! build, to see the test fail there); `SPYGLASS_E2E_SCREENSHOT=PATH`
//! also writes a screenshot of the overview (docs/fleet-overview.png is
//! made that way).
mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use spyglass_e2e::containers::{container_id, image, Ctr};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "fleet-web-token-41c9";
/// base64(":" + TOKEN): basic auth with the token as password.
const BASIC: &str = "OmZsZWV0LXdlYi10b2tlbi00MWM5";
/// The root container's listener runs from a copy of busybox whose name
/// is markup; busybox runs the applet of its first argument when its
/// name starts with "busybox".
const HOSTILE_EXE: &str = "/bin/busybox<i>\"x";

fn collector_bin() -> PathBuf {
    std::env::var_os("SPYGLASS_E2E_COLLECTOR")
        .map_or_else(|| bin("spyglass-collector"), PathBuf::from)
}

/// A GET's whole answer (status line, headers, body) as text.
fn raw_get(port: u16, path: &str, auth: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Headless Chromium on `url`: `--dump-dom` (the DOM after rendering) or
/// `--screenshot=PATH`. Bounded: killed after 60 s.
fn chromium(profile: &Path, url: &str, mode: &str) -> String {
    let out = Command::new("timeout")
        .args([
            "--kill-after=5",
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        // nothing leaves the machine: no background requests, every
        // host name unresolvable, anything not loopback to a dead proxy
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-domain-reliability",
            "--no-pings",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            mode,
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): `cargo xtask setup` installs Debian's chromium")
        });
    assert!(
        out.status.success(),
        "chromium {mode} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The table row of `dom` holding `needle`.
fn row_with<'a>(dom: &'a str, needle: &str) -> &'a str {
    let at = dom
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the page:\n{dom}"));
    let start = dom[..at].rfind("<tr>").expect("in a table row");
    let end = at + dom[at..].find("</tr>").expect("a closed row");
    &dom[start..end]
}

/// The part of `dom` from the element with `id` to the next heading.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let tag = format!("id=\"{id}\"");
    let at = dom
        .find(&tag)
        .unwrap_or_else(|| panic!("no {id} in the page:\n{dom}"));
    let end = dom[at..].find("<h2").map_or(dom.len(), |e| at + e);
    &dom[at..end]
}

#[test]
fn the_overview_and_a_container_page_in_a_real_browser() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-web");
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (port, api) = (free_port(), free_port());
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let col = Command::new(collector_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .args([
            "--store",
            &store,
            "--api-listen",
            &format!("127.0.0.1:{api}"),
        ])
        .arg("--api-token-file")
        .arg(&token_file)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start collector");
    // killed on drop, also when an assertion fails
    let mut col = Collector {
        child: col,
        port,
        output: dir.join("out.jsonl"),
    };
    eventually("the collector to listen", WAIT, || {
        if let Ok(Some(st)) = col.child.try_wait() {
            panic!("the collector exited at start ({st})");
        }
        std::net::TcpStream::connect(("127.0.0.1", api)).ok()
    });
    let node = format!("web-{}", std::process::id());
    let agent = Agent::streaming_to(
        &col.url(),
        &dir.join("spool"),
        &["--no-snapshot", "--node-name", &node],
    );
    let (busybox, nonroot) = (
        image("spyglass.test/busybox:1"),
        image("spyglass.test/nonroot:1"),
    );
    let (root_id, user_id) = (container_id("web-root"), container_id("web-user"));
    let (root_port, user_port) = (18000 + free_port() % 1000, 19000 + free_port() % 1000);
    // uid 0, on every address, from an executable named with markup
    let script = format!(
        "/bin/busybox cp /bin/busybox '{HOSTILE_EXE}' && exec '{HOSTILE_EXE}' nc -l -p {root_port}"
    );
    let _root = Ctr::run(
        &busybox.reference,
        &root_id,
        &[],
        &["/bin/sh", "-c", &script],
    );
    // the image's USER 1000, on loopback only
    let loopback = format!("127.0.0.1:{user_port}");
    let httpd = ["/bin/busybox", "httpd", "-f", "-h", "/", "-p", &loopback];
    let _user = Ctr::run(&nonroot.reference, &user_id, &[], &httpd);
    for (id, port) in [(&root_id, root_port), (&user_id, user_port)] {
        agent.wait_for(&format!("the listen in {id}"), WAIT, |e| {
            e["kind"] == "listen"
                && e["container"]["id"] == id.as_str()
                && e["network"]["local"]["port"] == port
        });
    }
    let bearer = format!("Bearer {TOKEN}");
    let mut last = String::new();
    let found = (0..300).any(|_| {
        let (_, body) = http_get_with(
            api,
            "/api/v1/ports",
            &format!("Authorization: {bearer}\r\n"),
        );
        last = body;
        let both = last.contains(&root_id) && last.contains(&user_id);
        if !both {
            std::thread::sleep(Duration::from_millis(100));
        }
        both
    });
    assert!(
        found,
        "both listeners in the inventory within 30 s; the API's ports: {last}"
    );

    the_page_needs_the_token_and_sends_security_headers(api);

    let profile = dir.join("chromium-profile");
    let base = format!("http://spyglass:{TOKEN}@127.0.0.1:{api}");
    let dom = chromium(&profile, &format!("{base}/"), "--dump-dom");
    let link = format!("href=\"/nodes/{node}/containers/{root_id}\"");
    // the exposed-ports table: the root container, linked to its page,
    // with its port; not the loopback listener of the uid-1000 one
    let exposed = section(&dom, "exposed-table");
    let row = row_with(exposed, &link);
    assert!(row.contains(&format!(">{root_id}</a>")), "{row}");
    assert!(
        row.contains(&format!("<td class=\"num\">{root_port}</td>")),
        "{row}"
    );
    assert!(
        row.contains(&format!("<a href=\"/nodes/{node}\">{node}</a>")),
        "{row}"
    );
    // the executable's name is text, not markup
    assert!(row.contains("<td>/bin/busybox&lt;i&gt;\"x</td>"), "{row}");
    assert!(!dom.contains("busybox<i>"), "{dom}");
    assert!(!exposed.contains(&user_id), "{exposed}");
    // running as root: the first, not the second
    let root = section(&dom, "root-table");
    assert!(root.contains(&link), "{root}");
    assert!(!root.contains(&user_id), "{root}");
    // the node, connected
    let nodes = section(&dom, "nodes-table");
    let row = row_with(nodes, &format!("<a href=\"/nodes/{node}\">"));
    assert!(row.contains("<td>yes</td>"), "{row}");

    // The container's page, as the link names it: its listener, posture.
    let page_url = format!("{base}/nodes/{node}/containers/{root_id}");
    let page = chromium(&profile, &page_url, "--dump-dom");
    assert!(
        page.contains(&format!("<h1>Container {root_id}</h1>")),
        "{page}"
    );
    let listeners = section(&page, "listeners-table");
    let row = row_with(listeners, &format!("<td class=\"num\">{root_port}</td>"));
    assert!(row.contains("<td>tcp</td>"), "{row}");
    assert!(row.contains("<td class=\"bad\">yes</td>"), "exposed: {row}");
    assert!(row.contains("<td>/bin/busybox&lt;i&gt;\"x</td>"), "{row}");
    let facts = row_with(&page, "<th>Root</th>");
    assert!(facts.contains("<td class=\"bad\">yes</td>"), "{facts}");
    let digest = format!("href=\"/images/{}\"", busybox.digest.replace(':', "%3A"));
    assert!(page.contains(&digest), "the image link: {page}");
    assert!(page.contains("href=\"/namespaces/k8s.io\""), "{page}");

    if let Some(shot) = std::env::var_os("SPYGLASS_E2E_SCREENSHOT") {
        let shot = std::path::absolute(shot).unwrap();
        chromium(
            &profile,
            &format!("{base}/"),
            &format!("--screenshot={}", shot.display()),
        );
        assert!(shot.exists(), "no screenshot at {}", shot.display());
    }
    agent.stop();
    col.kill();
}

/// Without the token, or with a wrong one, 401 asking for basic auth;
/// with it, the page and its security headers.
fn the_page_needs_the_token_and_sends_security_headers(api: u16) {
    for auth in [None, Some("Basic Ondyb25n"), Some("Bearer wrong")] {
        let answer = raw_get(api, "/", auth);
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
        assert!(
            answer.contains("www-authenticate: Basic realm=\"Spyglass fleet\""),
            "{answer}"
        );
    }
    let answer = raw_get(api, "/", Some(&format!("Basic {BASIC}")));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for header in [
        "content-type: text/html; charset=utf-8",
        "content-security-policy: default-src 'self'; script-src 'none';",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(answer.contains(header), "{header}: {answer}");
    }
    let css = raw_get(api, "/style.css", Some(&format!("Basic {BASIC}")));
    assert!(css.contains("content-type: text/css"), "{css}");
    let missing = raw_get(api, "/nodes/no-such-node", Some(&format!("Basic {BASIC}")));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
