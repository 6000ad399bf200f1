//! One event of the live stream as one line for people:
//! `TIME NODE WORKLOAD KIND PID WHAT [RULE SEVERITY]`, where WORKLOAD is
//! `POD-NAMESPACE/POD`, `CONTAINERD-NAMESPACE/CONTAINER` or `host`, and
//! WHAT depends on the kind (the executable and its arguments, an
//! address and port, an exit status, a finding's summary). Control and
//! bidirectional characters are shown escaped, as in the tables.
use serde_json::Value;

use crate::table::clean;

/// A string field, empty when absent.
fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// The time to the millisecond (`2026-12-07T03:40:01.123Z`).
fn time(v: &Value) -> String {
    let t = s(v, "time");
    match (t.find('.'), t.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &t[..(dot + 4).min(t.len() - 1)]),
        _ => t.to_owned(),
    }
}

/// Where it ran: a pod, else a containerd container, else the host.
fn workload(v: &Value) -> String {
    let c = &v["container"];
    if c.is_null() {
        return "host".into();
    }
    let pod = &c["pod"];
    if !s(pod, "name").is_empty() {
        return format!("{}/{}", s(pod, "namespace"), s(pod, "name"));
    }
    let name = match s(c, "name") {
        "" => s(c, "id").chars().take(12).collect(),
        n => n.to_owned(),
    };
    match s(c, "namespace") {
        "" => name,
        ns => format!("{ns}/{name}"),
    }
}

/// An argument as typed: quoted (and escaped) when it holds a space,
/// a quote or nothing.
fn arg(a: &str) -> String {
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        format!("{a:?}")
    } else {
        a.to_owned()
    }
}

/// The executable, then its arguments after argv[0].
fn command(p: &Value) -> String {
    let mut out = match s(p, "exe") {
        "" => s(p, "comm").to_owned(),
        exe => exe.to_owned(),
    };
    for a in p["argv"].as_array().into_iter().flatten().skip(1) {
        out.push(' ');
        out.push_str(&arg(a.as_str().unwrap_or_default()));
    }
    out
}

/// `ADDR:PORT`, `[V6]:PORT`.
fn endpoint(e: &Value) -> String {
    let addr = s(e, "addr");
    let port = &e["port"];
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn network(n: &Value) -> String {
    let proto = s(n, "protocol");
    let local = endpoint(&n["local"]);
    let remote = (!n["remote"].is_null()).then(|| endpoint(&n["remote"]));
    let mut out = match (s(n, "op"), remote) {
        ("connect", Some(r)) => format!("{proto} -> {r}"),
        ("accept", Some(r)) => format!("{proto} {r} -> {local}"),
        (_, _) => format!("{proto} {local}"),
    };
    if let Some(o) = n["outcome"].as_str() {
        out.push_str(&format!(" ({o})"));
    }
    out
}

/// What happened, by kind.
fn what(v: &Value) -> String {
    let f = &v["finding"];
    if !f.is_null() {
        return s(f, "summary").to_owned();
    }
    match s(v, "kind") {
        "exec" => command(&v["process"]),
        "exit" => match (&v["exit"]["code"], &v["exit"]["signal"]) {
            (_, Value::Number(n)) => format!("signal {n}"),
            (Value::Number(n), _) => format!("code {n}"),
            _ => String::new(),
        },
        "listen" | "connect" | "accept" | "close" if !v["network"].is_null() => {
            network(&v["network"])
        }
        "container" => {
            let l = &v["lifecycle"];
            match &l["exit_code"] {
                Value::Number(n) => format!("{} code {n}", s(l, "state")),
                _ => s(l, "state").to_owned(),
            }
        }
        "agent" => s(&v["agent"], "state").to_owned(),
        _ => s(&v["process"], "comm").to_owned(),
    }
}

/// The line for one event of the stream.
pub fn format(v: &Value) -> String {
    let pid = match &v["process"]["pid"] {
        Value::Number(n) => format!("pid={n}"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{} {} {} {} {} {}",
        time(v),
        s(v, "node"),
        workload(v),
        s(v, "kind"),
        pid,
        what(v)
    );
    let f = &v["finding"];
    if !f.is_null() {
        line.push_str(&format!(" [{} {}]", s(f, "rule_id"), s(f, "severity")));
    }
    clean(line.trim_end())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_exec_in_a_containerd_container() {
        let v = json!({"kind":"exec","time":"2026-12-07T03:40:01.123456789Z","node":"n1",
            "process":{"pid":42,"comm":"sh","exe":"/bin/busybox",
                "argv":["sh","-c","echo hi; id","",""]},
            "container":{"id":"0123456789abcdef","runtime":"containerd","name":"web","namespace":"shop"}});
        assert_eq!(
            format(&v),
            r#"2026-12-07T03:40:01.123Z n1 shop/web exec pid=42 /bin/busybox -c "echo hi; id" "" """#
        );
    }

    #[test]
    fn a_connect_in_a_pod_and_a_finding() {
        let v = json!({"kind":"connect","time":"2026-12-07T03:40:01Z","node":"n2",
            "process":{"pid":7,"comm":"curl"},
            "container":{"id":"ab","name":"c","namespace":"k8s.io",
                "pod":{"name":"web-1","namespace":"prod","uid":"u"}},
            "network":{"protocol":"tcp","op":"connect","local":{"addr":"10.0.0.2","port":40000},
                "remote":{"addr":"2001:db8::1","port":443},"outcome":"established"}});
        assert_eq!(
            format(&v),
            "2026-12-07T03:40:01Z n2 prod/web-1 connect pid=7 tcp -> [2001:db8::1]:443 (established)"
        );
        let v = json!({"kind":"finding","time":"2026-12-07T03:40:01.5Z","node":"n2",
            "process":{"pid":7},
            "finding":{"rule_id":"exec.shell_in_container","severity":"high",
                "summary":"shell started in container web"}});
        assert_eq!(
            format(&v),
            "2026-12-07T03:40:01.5Z n2 host finding pid=7 shell started in container web \
             [exec.shell_in_container high]"
        );
    }

    #[test]
    fn exits_listens_lifecycle_and_the_host() {
        let exit = json!({"kind":"exit","time":"t","node":"n","process":{"pid":1},
            "exit":{"signal":9,"raw":9}});
        assert_eq!(format(&exit), "t n host exit pid=1 signal 9");
        let listen = json!({"kind":"listen","time":"t","node":"n","process":{"pid":2},
            "container":{"id":"0123456789abcdef0123"},
            "network":{"protocol":"udp","op":"listen","local":{"addr":"0.0.0.0","port":67}}});
        assert_eq!(
            format(&listen),
            "t n 0123456789ab listen pid=2 udp 0.0.0.0:67"
        );
        let life = json!({"kind":"container","time":"t","node":"n",
            "container":{"id":"x","name":"c","namespace":"default"},
            "lifecycle":{"state":"exited","exit_code":137}});
        assert_eq!(format(&life), "t n default/c container - exited code 137");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let v = json!({"kind":"exec","time":"t","node":"n\u{1b}[2J",
            "process":{"pid":1,"exe":"/tmp/\u{202e}fdp.exe","argv":["x","a\nb"]}});
        let line = format(&v);
        assert_eq!(
            line,
            r#"t n\u{1b}[2J host exec pid=1 /tmp/\u{202e}fdp.exe "a\nb""#
        );
        assert!(!line.contains('\n') && !line.contains('\u{202e}'));
    }
}
