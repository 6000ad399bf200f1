//! End-to-end: listen, connect, accept and UDP events from real sockets on
//! loopback, with the real probes loaded into this kernel.
mod common;

use std::{
    io::Write,
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn me() -> u64 {
    u64::from(std::process::id())
}

fn net(e: &Value) -> &Value {
    &e["network"]
}

fn is(e: &Value, kind: &str, protocol: &str, op: &str) -> bool {
    e["kind"] == kind && net(e)["protocol"] == protocol && net(e)["op"] == op
}

fn endpoint(v: &Value) -> Option<SocketAddr> {
    let addr = v["addr"].as_str()?;
    let ip: std::net::IpAddr = addr.parse().ok()?;
    Some(SocketAddr::new(ip, v["port"].as_u64()? as u16))
}

fn ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[test]
fn tcp_listeners_on_ipv4_and_ipv6_loopback() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l4.local_addr().unwrap();
    let ev = agent.wait_for("IPv4 listen", WAIT, |e| {
        is(e, "listen", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(p)
    });
    assert_eq!(pid_of(&ev), me());
    assert_eq!(net(&ev)["family"], "ipv4");
    assert_eq!(net(&ev)["wildcard"], false);
    assert!(net(&ev).get("remote").is_none());

    if ipv6_loopback() {
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let q = l6.local_addr().unwrap();
        let ev = agent.wait_for("IPv6 listen", WAIT, |e| {
            is(e, "listen", "tcp", "listen") && endpoint(&net(e)["local"]) == Some(q)
        });
        assert_eq!(pid_of(&ev), me());
        assert_eq!(net(&ev)["family"], "ipv6");
    } else {
        eprintln!("note: no IPv6 loopback here; IPv6 listen not checked");
    }
    agent.stop();
}

#[test]
fn wildcard_listener_is_marked() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    // Bound to all interfaces, but nothing ever connects to it.
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ev = agent.wait_for("wildcard listen", WAIT, |e| {
        is(e, "listen", "tcp", "listen") && net(e)["local"]["port"] == port
    });
    assert_eq!(net(&ev)["local"]["addr"], "0.0.0.0");
    assert_eq!(net(&ev)["wildcard"], true);
    agent.stop();
}

#[test]
fn tcp_connect_established_with_both_endpoints_and_accept() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server).unwrap();
    let local = client.local_addr().unwrap();
    let (_conn, _) = listener.accept().unwrap();
    client.write_all(b"hi").unwrap();

    let ev = agent.wait_for("TCP connect", WAIT, |e| {
        is(e, "connect", "tcp", "connect") && endpoint(&net(e)["local"]) == Some(local)
    });
    assert_eq!(endpoint(&net(&ev)["remote"]), Some(server));
    assert_eq!(net(&ev)["outcome"], "established");
    assert_eq!(pid_of(&ev), me());
    assert!(ev["process"]["tid"].as_u64().is_some());

    let acc = agent.wait_for("TCP accept", WAIT, |e| {
        e["kind"] == "accept" && endpoint(&net(e)["remote"]) == Some(local)
    });
    assert_eq!(endpoint(&net(&acc)["local"]), Some(server));
    assert_eq!(
        pid_of(&acc),
        me(),
        "accept is attributed to the listener's owner"
    );
    agent.stop();
}

#[test]
fn tcp_connect_to_closed_port_fails() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    // A port that was free a moment ago: bind, note, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = TcpStream::connect(closed).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let ev = agent.wait_for("failed TCP connect", WAIT, |e| {
        is(e, "connect", "tcp", "connect") && endpoint(&net(e)["remote"]) == Some(closed)
    });
    assert_eq!(net(&ev)["outcome"], "failed");
    assert_eq!(pid_of(&ev), me());
    agent.stop();
}

#[test]
fn tcp_connect_over_ipv6() {
    require_root();
    assert!(
        ipv6_loopback(),
        "this test needs IPv6 on loopback (::1): enable it with `sysctl net.ipv6.conf.lo.disable_ipv6=0`"
    );
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = TcpStream::connect(server).unwrap();
    let local = client.local_addr().unwrap();
    let ev = agent.wait_for("IPv6 TCP connect", WAIT, |e| {
        is(e, "connect", "tcp", "connect") && endpoint(&net(e)["local"]) == Some(local)
    });
    assert_eq!(endpoint(&net(&ev)["remote"]), Some(server));
    assert_eq!(net(&ev)["family"], "ipv6");
    assert_eq!(net(&ev)["outcome"], "established");
    agent.stop();
}

#[test]
fn udp_bind_and_first_send_to_each_peer() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = receiver.local_addr().unwrap();
    let bind = agent.wait_for("UDP bind", WAIT, |e| {
        is(e, "listen", "udp", "bind") && endpoint(&net(e)["local"]) == Some(peer)
    });
    assert_eq!(pid_of(&bind), me());

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        sender.send_to(b"ping", peer).unwrap();
    }
    let mut buf = [0u8; 8];
    receiver.recv_from(&mut buf).unwrap();
    let send = agent.wait_for("UDP send", WAIT, |e| {
        is(e, "connect", "udp", "send") && endpoint(&net(e)["remote"]) == Some(peer)
    });
    assert_eq!(pid_of(&send), me());
    assert_eq!(
        endpoint(&net(&send)["local"]),
        Some(sender.local_addr().unwrap()),
        "a bound sender reports its local endpoint"
    );

    // UDP connect(2) to an IPv6 or IPv4 peer is reported as connect.
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(peer).unwrap();
    let conn = agent.wait_for("UDP connect", WAIT, |e| {
        is(e, "connect", "udp", "connect") && endpoint(&net(e)["remote"]) == Some(peer)
    });
    assert_eq!(pid_of(&conn), me());

    let events = agent.stop();
    let sends = events
        .iter()
        .filter(|e| is(e, "connect", "udp", "send") && endpoint(&net(e)["remote"]) == Some(peer))
        .count();
    assert_eq!(sends, 1, "five datagrams to one peer are one send event");
}

#[test]
fn snapshot_finds_a_listener_started_before_the_agent() {
    require_root();
    let _g = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uaddr = udp.local_addr().unwrap();
    let agent = start_agent(&[]);
    let ev = agent.wait_for("snapshot listen", WAIT, |e| {
        e["kind"] == "listen" && e["snapshot"] == true && endpoint(&net(e)["local"]) == Some(addr)
    });
    assert_eq!(net(&ev)["protocol"], "tcp");
    assert_eq!(pid_of(&ev), me());
    let ev = agent.wait_for("snapshot UDP bind", WAIT, |e| {
        e["kind"] == "listen" && e["snapshot"] == true && endpoint(&net(e)["local"]) == Some(uaddr)
    });
    assert_eq!(net(&ev)["protocol"], "udp");
    assert_eq!(pid_of(&ev), me());
    agent.stop();
}

/// A network namespace the test made, with loopback up; deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Netns(name.into())
    }

    /// `cmd` run inside the namespace (`ip netns exec` execs it: the
    /// child's pid is the command's).
    fn command(&self, cmd: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(cmd);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Two pods listening on the same address and port, each in its own
/// network namespace: each accept names its own namespace's listener
/// (keyed by (protocol, port) alone, both went to the last listener).
#[test]
fn accepts_in_two_namespaces_on_one_port_go_to_their_own_listener() {
    require_root();
    let _g = serial();
    let agent = start_agent(&["--no-snapshot"]);
    let port = "18080";
    let mut servers = Vec::new();
    let spaces: Vec<Netns> = ["sg-acc-a", "sg-acc-b"]
        .iter()
        .map(|n| Netns::create(n))
        .collect();
    for ns in &spaces {
        let child = ns
            .command(&["busybox", "nc", "-l", "-p", port])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = u64::from(child.id());
        agent.wait_for("listen", WAIT, |e| {
            is(e, "listen", "tcp", "listen") && pid_of(e) == pid
        });
        servers.push(child);
    }
    // accepts in the order of the connects, whichever pid they name
    let accepts = |n: usize| {
        let v = agent.matching(|e| e["kind"] == "accept" && net(e)["local"]["port"] == 18080);
        (v.len() >= n).then_some(v)
    };
    for (i, ns) in spaces.iter().enumerate() {
        let st = ns
            .command(&["busybox", "nc", "127.0.0.1", port])
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "connect in {}", ns.0);
        eventually("accept", WAIT, || accepts(i + 1));
    }
    let got: Vec<u64> = accepts(2)
        .unwrap()
        .iter()
        .map(|e| e["process"]["pid"].as_u64().unwrap_or(0))
        .collect();
    let want: Vec<u64> = servers.iter().map(|s| u64::from(s.id())).collect();
    assert_eq!(got, want, "each accept names its own namespace's listener");
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    agent.stop();
}
