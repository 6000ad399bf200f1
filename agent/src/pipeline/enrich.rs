//! Enrichment: raw kernel records + the process table -> output events.
//! Owns the process table and the listener registry; runs on the
//! pipeline thread.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use agent_common::exec_flags;

use super::{
    decode::{split_exit_code, Exec, Header, Net, NetOp, Oom, Outcome, RawEvent},
    oom::Victims,
};
use crate::{
    clock::Clock,
    container::cgroup::Resolver,
    event::{
        ConnectOutcome, Endpoint, Enforced, Event, ExitInfo, Family, ForkInfo, Kind, Loss,
        NetOp as Op, Network, OomKill, Process, Protocol, Unread,
    },
    process::{
        snapshot::Snapshot,
        table::{Limits, ProcInfo, ProcessTable},
    },
};

/// Who listens on a port, to attribute accepts (which the kernel sees in
/// softirq context, without the accepting process). Keyed by network
/// namespace too: two pods listening on one port each get their own
/// accepts. Namespace 0 (unknown: the kernel's BTF lacks the offsets)
/// matches any namespace, as it did before namespaces were known.
#[derive(Default)]
struct Listeners {
    by_port: HashMap<(Protocol, u16), Vec<Listener>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listener {
    netns: u32,
    ip: IpAddr,
    pid: u32,
}

impl Listeners {
    fn add(&mut self, protocol: Protocol, netns: u32, local: SocketAddr, pid: u32) {
        let v = self.by_port.entry((protocol, local.port())).or_default();
        v.retain(|l| (l.netns, l.ip) != (netns, local.ip()));
        v.push(Listener {
            netns,
            ip: local.ip(),
            pid,
        });
    }

    /// The listener on `local` in `netns` closed. Namespace 0 (unknown)
    /// on either side matches, as in [`Listeners::owner`].
    fn remove(&mut self, protocol: Protocol, netns: u32, local: SocketAddr) {
        let key = (protocol, local.port());
        let Some(v) = self.by_port.get_mut(&key) else {
            return;
        };
        v.retain(|l| !(l.ip == local.ip() && (netns == 0 || l.netns == 0 || l.netns == netns)));
        if v.is_empty() {
            self.by_port.remove(&key);
        }
    }

    fn remove_pid(&mut self, pid: u32) {
        self.by_port.retain(|_, v| {
            v.retain(|l| l.pid != pid);
            !v.is_empty()
        });
    }

    /// Owner of the listener that accepted a connection on `local` in
    /// namespace `netns`: exact address first, then a wildcard listener,
    /// then any on the port; never a listener of another known namespace.
    fn owner(&self, protocol: Protocol, netns: u32, local: SocketAddr) -> Option<u32> {
        let v = self.by_port.get(&(protocol, local.port()))?;
        let same_ns = || {
            v.iter()
                .filter(move |l| netns == 0 || l.netns == 0 || l.netns == netns)
        };
        same_ns()
            .find(|l| l.ip == local.ip())
            .or_else(|| same_ns().find(|l| l.ip.is_unspecified()))
            .or_else(|| same_ns().next())
            .map(|l| l.pid)
    }
}

pub struct Enricher {
    table: ProcessTable,
    containers: Resolver,
    listeners: Listeners,
    clock: Clock,
    node: String,
    depth: usize,
    exited_ttl: std::time::Duration,
    exits: RecentExits,
    /// OOM victims named by the kernel, until their exits.
    oom: Victims,
}

/// Processes whose exit was reported, by (pid, start time), the last
/// [`RecentExits::CAPACITY`] of them. On kernels whose exit record has no
/// `group_dead` (6.12 and older) the probe elects one record per process in
/// an LRU map; a second record can only follow an eviction from that map,
/// and is dropped here. Records without a start time (a failed kernel
/// read) are never taken for a repeat.
#[derive(Debug, Default)]
struct RecentExits {
    seen: std::collections::VecDeque<(u32, u64)>,
    /// Second records dropped.
    duplicates: u64,
}

impl RecentExits {
    const CAPACITY: usize = 256;

    /// Whether this is the first exit record of (pid, start time).
    fn first(&mut self, pid: u32, start_time_ns: u64) -> bool {
        if start_time_ns == 0 {
            return true;
        }
        if self.seen.contains(&(pid, start_time_ns)) {
            self.duplicates += 1;
            return false;
        }
        if self.seen.len() == Self::CAPACITY {
            self.seen.pop_front();
        }
        self.seen.push_back((pid, start_time_ns));
        true
    }
}

/// What the kernel could not read at exec, from the record's flags.
fn unread_of(flags: u32) -> Vec<Unread> {
    [
        (exec_flags::ARGV_READ_FAILED, Unread::Argv),
        (exec_flags::PPID_READ_FAILED, Unread::Ppid),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, u)| u)
    .collect()
}

fn family(a: &SocketAddr) -> Family {
    if a.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

impl Enricher {
    /// Now, on the clock events are stamped with (the boot clock and
    /// the wall clock's offset at start): what aggregation windows are
    /// closed by, so a wall-clock step does not move them.
    pub fn now(&self) -> spyglass_proto::time::Timestamp {
        self.clock.wall(Clock::boot_now())
    }

    pub fn new(
        limits: Limits,
        ancestors: usize,
        node: String,
        cgroup_root: &std::path::Path,
    ) -> Self {
        Enricher {
            exited_ttl: limits.exited_ttl,
            table: ProcessTable::new(limits),
            containers: Resolver::new(cgroup_root),
            listeners: Listeners::default(),
            clock: Clock::new(),
            node,
            depth: ancestors,
            exits: RecentExits::default(),
            oom: Victims::new(cgroup_root),
        }
    }

    /// A `resources` event, now: of a container, or with `pid` of one of
    /// its processes (named from the process table).
    pub fn resources(
        &mut self,
        pid: Option<u32>,
        container: crate::event::Container,
        usage: crate::event::Usage,
    ) -> Event {
        let mut ev = Event::new(Kind::Resources, Clock::now(), self.node.clone());
        if let Some(pid) = pid {
            self.attach_process(&mut ev, pid, None);
        }
        ev.container = Some(container);
        ev.host = false;
        ev.resources = Some(Box::new(usage));
        ev
    }

    /// Exit records dropped as the second report of one process's end.
    pub fn duplicate_exits(&self) -> u64 {
        self.exits.duplicates
    }

    pub fn processes_tracked(&self) -> usize {
        self.table.len()
    }

    /// The process table's bytes, live entries evicted, arguments cut.
    pub fn table_stats(&self) -> crate::metrics::TableStats {
        crate::metrics::TableStats {
            bytes: self.table.bytes() as u64,
            evicted: self.table.evicted,
            argv_trimmed: self.table.argv_trimmed,
        }
    }

    pub fn cgroups_tracked(&self) -> usize {
        self.containers.cached()
    }

    /// Forget what is gone: processes that exited and cgroups learned from
    /// exec records, older than the table's `exited_ttl`.
    pub fn expire(&mut self, now: std::time::Instant) {
        self.table.expire(now);
        self.containers.expire(now, self.exited_ttl);
        self.oom.expire(now);
    }

    fn event(&self, kind: Kind, ts_ns: u64) -> Event {
        Event::new(kind, self.clock.wall(ts_ns), self.node.clone())
    }

    /// Process, parent and ancestors of `pid` into `ev`. Live fields from
    /// the record header (uid, comm, cgroup, thread) take precedence.
    fn attach_process(&mut self, ev: &mut Event, pid: u32, header: Option<&Header>) {
        let known = self.table.get(pid);
        let mut p = match known {
            Some(info) => self.process_of(info),
            None => Process {
                pid,
                ..Process::default()
            },
        };
        if let Some(h) = header.filter(|h| h.pid != 0) {
            p.tid = Some(h.tid);
            p.uid = h.uid;
            p.gid = h.gid;
            if *p.comm != *h.comm {
                p.comm = h.comm.as_str().into(); // comm changes (prctl, exec)
            }
            p.cgroup_id = h.cgroup_id;
        }
        let mut chain = self.table.ancestors(pid, self.depth + 1);
        if chain.is_empty() && p.ppid != 0 {
            chain.push(crate::event::Ancestor {
                pid: p.ppid,
                exe: "".into(),
                comm: "".into(),
            });
        }
        let mut chain = chain.into_iter();
        ev.parent = chain.next();
        ev.ancestors = chain.collect();
        ev.container = self
            .containers
            .resolve(p.cgroup_id)
            .map(|c| crate::event::Container::from_cgroup(c.id, c.runtime, c.pod_uid));
        ev.host = ev.container.is_none();
        ev.process = Some(p);
    }

    /// An exit of an older process under a reused pid: the event keeps
    /// what the record says (ids, comm, cgroup, its start time), not the
    /// table's view of the process that lives under the pid now.
    fn forget_table_view(&self, ev: &mut Event, start_time_ns: u64) {
        if let Some(p) = ev.process.as_mut() {
            *p = Process {
                pid: p.pid,
                uid: p.uid,
                gid: p.gid,
                comm: p.comm.clone(),
                cgroup_id: p.cgroup_id,
                start_time: Some(self.clock.wall(start_time_ns)),
                ..Process::default()
            };
        }
        ev.parent = None;
        ev.ancestors.clear();
    }

    fn process_of(&self, info: &ProcInfo) -> Process {
        Process {
            pid: info.pid,
            tid: None,
            ppid: info.ppid,
            uid: info.uid,
            gid: info.gid,
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            argv: info.argv.clone(),
            argv_truncated: info.argv_truncated,
            exe_truncated: info.exe_truncated,
            unread: info.unread.clone(),
            cgroup_id: info.cgroup_id,
            start_time: (info.start_time_ns != 0).then(|| self.clock.wall(info.start_time_ns)),
            // execs only, by the ownership stage
            package: None,
            unpackaged: false,
        }
    }

    /// Seed the table with the startup snapshot and report it.
    pub fn snapshot(&mut self, snap: &Snapshot) -> Vec<Event> {
        let mut out = Vec::with_capacity(snap.processes.len() + snap.sockets.len());
        for info in &snap.processes {
            self.table.upsert(info.clone());
        }
        let now = Clock::boot_now();
        for info in &snap.processes {
            let mut ev = self.event(Kind::Exec, now);
            ev.snapshot = true;
            self.attach_process(&mut ev, info.pid, None);
            out.push(ev);
        }
        for s in &snap.sockets {
            self.listeners.add(s.protocol, s.netns, s.local, s.pid);
            let mut ev = self.event(Kind::Listen, now);
            ev.snapshot = true;
            self.attach_process(&mut ev, s.pid, None);
            ev.network = Some(Network {
                protocol: s.protocol,
                family: family(&s.local),
                op: if s.protocol == Protocol::Tcp {
                    Op::Listen
                } else {
                    Op::Bind
                },
                local: s.local.into(),
                remote: None,
                outcome: None,
                wildcard: Some(s.local.ip().is_unspecified()),
            });
            out.push(ev);
        }
        out
    }

    /// A loss event.
    pub fn loss(&self, loss: Loss) -> Event {
        let mut ev = self.event(Kind::Loss, Clock::boot_now());
        ev.loss = Some(Box::new(loss));
        ev
    }

    /// One raw record -> one event (none for a repeated exit record).
    pub fn handle(&mut self, raw: RawEvent) -> Option<Event> {
        Some(match raw {
            RawEvent::Exec(e) => self.on_exec(e),
            RawEvent::Fork(f) => {
                let parent = f.header.pid;
                self.table.fork(parent, f.child_pid, f.child_start_time_ns);
                let mut ev = self.event(Kind::Fork, f.header.ts_ns);
                self.attach_process(&mut ev, f.child_pid, None);
                if let Some(p) = ev.process.as_mut() {
                    p.uid = f.header.uid;
                    p.gid = f.header.gid;
                    p.cgroup_id = f.header.cgroup_id;
                }
                ev.fork = Some(ForkInfo {
                    child_pid: f.child_pid,
                });
                ev
            }
            RawEvent::Exit(x) => {
                let pid = x.header.pid;
                if !self.exits.first(pid, x.start_time_ns) {
                    return None;
                }
                let mut ev = self.event(Kind::Exit, x.header.ts_ns);
                let stale = self.table.stale_exit(pid, x.start_time_ns);
                self.attach_process(&mut ev, pid, Some(&x.header));
                if stale {
                    self.forget_table_view(&mut ev, x.start_time_ns);
                }
                if let Some(p) = ev.process.as_mut() {
                    p.tid = None;
                }
                let (code, signal) = split_exit_code(x.exit_code);
                ev.exit = Some(ExitInfo {
                    code,
                    signal,
                    raw: x.exit_code,
                    oom: self.oom.take(pid),
                });
                if !stale {
                    self.table.exit(pid, x.start_time_ns);
                    self.listeners.remove_pid(pid);
                }
                ev
            }
            RawEvent::Net(n) => self.on_net(&n),
            RawEvent::Oom(o) => {
                self.on_oom(&o);
                return None;
            }
        })
    }

    /// An OOM victim: no event of its own, its exit (next) carries it.
    /// The record names a task, maybe a thread: its process is the table's
    /// entry, else its thread group while /proc still has it. The limit is
    /// read now, while the container's cgroup exists; host processes have
    /// none.
    fn on_oom(&mut self, o: &Oom) {
        let victim = self.oom.victim(&o.record);
        let pid = if self.table.get(victim.pid).is_some() {
            victim.pid
        } else {
            super::oom::tgid_of(victim.pid).unwrap_or(victim.pid)
        };
        let cgroup_id = self.table.get(pid).map_or(0, |p| p.cgroup_id);
        let in_container = cgroup_id == 0 || self.containers.resolve(cgroup_id).is_some();
        let memory_limit_bytes = if in_container {
            self.oom.memory_limit(pid, cgroup_id)
        } else {
            None
        };
        let oom = OomKill {
            rss_bytes: victim.rss_bytes,
            memory_limit_bytes,
        };
        self.oom.mark(pid, oom, std::time::Instant::now());
    }

    fn on_exec(&mut self, e: Exec) -> Event {
        let killed = e.flags & agent_common::exec_flags::KILLED != 0;
        let h = &e.header;
        if let Some(cg) = &e.cgroup {
            self.containers
                .learn(h.cgroup_id, cg.level, &cg.parent, &cg.leaf);
        }
        let ppid = if e.ppid != 0 {
            e.ppid
        } else {
            self.table.get(h.pid).map_or(0, |p| p.ppid)
        };
        // The exec event carries the arguments as the kernel sent them,
        // even when the table keeps only their start (over its bytes).
        let argv = e.argv.clone();
        self.table.upsert(ProcInfo {
            pid: h.pid,
            ppid,
            uid: h.uid,
            gid: h.gid,
            comm: h.comm.as_str().into(),
            exe: e.filename.as_str().into(),
            argv: e.argv,
            argv_truncated: e.argv_truncated,
            exe_truncated: e.flags & exec_flags::FILENAME_TRUNCATED != 0,
            unread: unread_of(e.flags),
            cgroup_id: h.cgroup_id,
            start_time_ns: e.start_time_ns,
            start_from_proc: false,
        });
        let mut ev = self.event(Kind::Exec, h.ts_ns);
        self.attach_process(&mut ev, h.pid, Some(h));
        if let Some(p) = ev.process.as_mut() {
            p.argv = argv;
            p.argv_truncated = e.argv_truncated;
        }
        if killed {
            ev.enforced = Some(Enforced::Kill);
        }
        ev
    }

    fn on_net(&mut self, n: &Net) -> Event {
        let (kind, protocol, op) = match n.op {
            NetOp::TcpListen => (Kind::Listen, Protocol::Tcp, Op::Listen),
            NetOp::UdpBind => (Kind::Listen, Protocol::Udp, Op::Bind),
            NetOp::TcpConnect => (Kind::Connect, Protocol::Tcp, Op::Connect),
            NetOp::UdpConnect => (Kind::Connect, Protocol::Udp, Op::Connect),
            NetOp::UdpSend => (Kind::Connect, Protocol::Udp, Op::Send),
            NetOp::TcpAccept => (Kind::Accept, Protocol::Tcp, Op::Accept),
            // a close names what closed: the listen or the bind
            NetOp::TcpClose => (Kind::Close, Protocol::Tcp, Op::Listen),
            NetOp::UdpClose => (Kind::Close, Protocol::Udp, Op::Bind),
        };
        let pid = match n.op {
            NetOp::TcpAccept => self
                .listeners
                .owner(Protocol::Tcp, n.netns, n.local)
                .unwrap_or(0),
            _ => n.header.pid,
        };
        if kind == Kind::Listen && pid != 0 {
            self.listeners.add(protocol, n.netns, n.local, pid);
        }
        if kind == Kind::Close {
            self.listeners.remove(protocol, n.netns, n.local);
        }
        let mut ev = self.event(kind, n.header.ts_ns);
        if pid != 0 {
            self.attach_process(&mut ev, pid, Some(&n.header));
        }
        let listen = matches!(kind, Kind::Listen | Kind::Close);
        ev.network = Some(Network {
            protocol,
            family: family(&n.local),
            op,
            local: Endpoint::from(n.local),
            remote: (!listen).then(|| Endpoint::from(n.remote)),
            outcome: match n.outcome {
                Outcome::Established => Some(ConnectOutcome::Established),
                Outcome::Failed => Some(ConnectOutcome::Failed),
                Outcome::Denied => Some(ConnectOutcome::Denied),
                Outcome::None => None,
            },
            wildcard: listen.then(|| n.local.ip().is_unspecified()),
        });
        ev
    }
}

impl crate::container::lifecycle::Observer for Enricher {
    /// The cgroup resolver forgets a container's cgroups with it.
    fn on_container(&mut self, change: &crate::container::lifecycle::Change) {
        self.containers.on_container(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Args;

    fn header(pid: u32) -> Header {
        Header {
            pid,
            tid: pid,
            uid: 1000,
            gid: 1000,
            ts_ns: 1,
            cgroup_id: 9,
            comm: "x".into(),
        }
    }

    fn enricher() -> Enricher {
        Enricher::new(
            Limits {
                max_entries: 100,
                exited_retained: 10,
                exited_ttl: std::time::Duration::from_secs(60),
                max_bytes: usize::MAX,
            },
            4,
            "node1".into(),
            std::path::Path::new("/nonexistent"),
        )
    }

    fn exec(pid: u32, ppid: u32, exe: &str) -> RawEvent {
        RawEvent::Exec(Exec {
            header: header(pid),
            ppid,
            start_time_ns: u64::from(pid),
            filename: exe.into(),
            argv: Args::from([exe, "--flag"]),
            argv_truncated: false,
            flags: 0,
            cgroup: None,
        })
    }

    #[test]
    fn an_exec_keeps_its_arguments_when_the_table_cuts_them() {
        let mut e = Enricher::new(
            Limits {
                max_entries: 100_000,
                exited_retained: 10,
                exited_ttl: std::time::Duration::from_secs(60),
                max_bytes: 1 << 20,
            },
            4,
            "node1".into(),
            std::path::Path::new("/nonexistent"),
        );
        let long = |pid: u32| {
            let mut raw = exec(pid, 1, "/bin/true");
            if let RawEvent::Exec(x) = &mut raw {
                x.argv = Args::from_nul_separated(&[0u8; 4001]);
            }
            raw
        };
        for pid in 100..400 {
            let p = e.handle(long(pid)).unwrap().process.unwrap();
            assert_eq!((p.argv.len(), p.argv_truncated), (4001, false));
        }
        // the table kept only the start of the last one's arguments
        let fork = e.handle(RawEvent::Fork(super::super::decode::Fork {
            header: header(399),
            child_pid: 500,
            child_start_time_ns: 500,
        }));
        let p = fork.unwrap().process.unwrap();
        assert!(
            p.argv_truncated && p.argv.byte_len() <= 256,
            "{}",
            p.argv.len()
        );
        assert!(e.table_stats().bytes <= 1 << 20);
        assert!(e.table_stats().argv_trimmed > 0);
    }

    #[test]
    fn exec_carries_parent_chain() {
        let mut e = enricher();
        e.handle(exec(10, 1, "/bin/bash"));
        let ev = e.handle(exec(11, 10, "/usr/bin/curl")).unwrap();
        assert_eq!(ev.kind, Kind::Exec);
        let p = ev.process.unwrap();
        assert_eq!((p.pid, p.ppid, &*p.exe), (11, 10, "/usr/bin/curl"));
        assert_eq!(p.argv, ["/usr/bin/curl", "--flag"]);
        let parent = ev.parent.unwrap();
        assert_eq!((parent.pid, &*parent.exe), (10, "/bin/bash"));
        assert_eq!(ev.ancestors[0].pid, 1);
    }

    #[test]
    fn what_the_kernel_could_not_read_is_reported() {
        let mut e = enricher();
        let ok = e.handle(exec(30, 1, "/bin/true")).unwrap().process.unwrap();
        assert!(!ok.exe_truncated && ok.unread.is_empty());
        let mut raw = exec(31, 0, "/very/long");
        if let RawEvent::Exec(x) = &mut raw {
            x.flags = exec_flags::FILENAME_TRUNCATED
                | exec_flags::ARGV_READ_FAILED
                | exec_flags::PPID_READ_FAILED;
        }
        let p = e.handle(raw).unwrap().process.unwrap();
        assert!(p.exe_truncated);
        assert_eq!(p.unread, [Unread::Argv, Unread::Ppid]);
    }

    #[test]
    fn accept_is_attributed_to_the_listener() {
        let mut e = enricher();
        e.handle(exec(20, 1, "/usr/sbin/nginx"));
        let net = |op, local: &str, remote: &str, pid| {
            RawEvent::Net(Net {
                header: header(pid),
                op,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                outcome: Outcome::None,
                sock_id: 1,
                netns: 0,
            })
        };
        let l = e
            .handle(net(NetOp::TcpListen, "0.0.0.0:8080", "0.0.0.0:0", 20))
            .unwrap();
        assert_eq!(l.kind, Kind::Listen);
        let n = l.network.unwrap();
        assert_eq!((n.wildcard, n.remote), (Some(true), None));
        let a = e
            .handle(net(NetOp::TcpAccept, "127.0.0.1:8080", "127.0.0.1:5555", 0))
            .unwrap();
        assert_eq!(a.kind, Kind::Accept);
        assert_eq!(&*a.process.unwrap().exe, "/usr/sbin/nginx");
        // after the owner exits, accepts on the port are unattributed
        e.handle(RawEvent::Exit(super::super::decode::Exit {
            header: header(20),
            exit_code: 0,
            start_time_ns: 20,
        }));
        let a = e
            .handle(net(NetOp::TcpAccept, "127.0.0.1:8080", "127.0.0.1:5556", 0))
            .unwrap();
        assert!(a.process.is_none());
    }

    #[test]
    fn accepts_go_to_the_listener_of_their_own_network_namespace() {
        let mut e = enricher();
        e.handle(exec(40, 1, "/pod-a/server"));
        e.handle(exec(50, 1, "/pod-b/server"));
        let net = |op, netns, local: &str, pid| {
            RawEvent::Net(Net {
                header: header(pid),
                op,
                local: local.parse().unwrap(),
                remote: "10.0.0.9:4000".parse().unwrap(),
                outcome: Outcome::None,
                sock_id: 1,
                netns,
            })
        };
        // both pods listen on 0.0.0.0:8080, each in its own namespace
        e.handle(net(NetOp::TcpListen, 1001, "0.0.0.0:8080", 40));
        e.handle(net(NetOp::TcpListen, 1002, "0.0.0.0:8080", 50));
        let owner = |e: &mut Enricher, netns| {
            let a = e
                .handle(net(NetOp::TcpAccept, netns, "10.0.0.1:8080", 0))
                .unwrap();
            a.process.map(|p| p.exe.to_string())
        };
        assert_eq!(owner(&mut e, 1001).as_deref(), Some("/pod-a/server"));
        assert_eq!(owner(&mut e, 1002).as_deref(), Some("/pod-b/server"));
        assert_eq!(owner(&mut e, 1003), None, "no listener in that namespace");
    }

    #[test]
    fn a_closed_listener_reports_close_and_no_longer_owns_accepts() {
        let mut e = enricher();
        e.handle(exec(60, 1, "/srv/a"));
        e.handle(exec(61, 1, "/srv/b"));
        let net = |op, netns, local: &str, pid| {
            RawEvent::Net(Net {
                header: header(pid),
                op,
                local: local.parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                outcome: Outcome::None,
                sock_id: 7,
                netns,
            })
        };
        e.handle(net(NetOp::TcpListen, 1001, "0.0.0.0:9000", 60));
        e.handle(net(NetOp::TcpListen, 1002, "0.0.0.0:9000", 61));
        // closed by another process (a child holding the descriptor)
        let c = e
            .handle(net(NetOp::TcpClose, 1001, "0.0.0.0:9000", 61))
            .unwrap();
        assert_eq!(c.kind, Kind::Close);
        assert_eq!(c.process.as_ref().unwrap().pid, 61);
        let n = c.network.unwrap();
        assert_eq!(
            (n.protocol, n.op, n.local, n.remote, n.wildcard),
            (
                Protocol::Tcp,
                Op::Listen,
                "0.0.0.0:9000".parse::<SocketAddr>().unwrap().into(),
                None,
                Some(true)
            )
        );
        let owner = |e: &mut Enricher, netns| {
            e.handle(net(NetOp::TcpAccept, netns, "10.0.0.1:9000", 0))
                .unwrap()
                .process
                .map(|p| p.pid)
        };
        assert_eq!(
            owner(&mut e, 1001),
            None,
            "the closed listener is forgotten"
        );
        assert_eq!(owner(&mut e, 1002), Some(61), "the other namespace's stays");
        let u = e
            .handle(net(NetOp::UdpClose, 0, "127.0.0.1:5353", 60))
            .unwrap();
        let n = u.network.unwrap();
        assert_eq!(
            (u.kind, n.protocol, n.op, n.wildcard),
            (Kind::Close, Protocol::Udp, Op::Bind, Some(false))
        );
    }

    #[test]
    fn exit_reports_code_or_signal() {
        let mut e = enricher();
        e.handle(exec(30, 1, "/bin/sh"));
        let exit = |pid: u32, start| {
            RawEvent::Exit(super::super::decode::Exit {
                header: header(pid),
                exit_code: 9,
                start_time_ns: start,
            })
        };
        let ev = e.handle(exit(30, 30)).unwrap();
        let x = ev.exit.unwrap();
        assert_eq!((x.code, x.signal), (None, Some(9)));
        assert_eq!(&*ev.process.unwrap().exe, "/bin/sh");
        // two threads ending at once both report the process's end: once
        assert!(e.handle(exit(30, 30)).is_none());
        assert_eq!(e.duplicate_exits(), 1);
        // a reused pid is another process
        assert!(e.handle(exit(30, 31)).is_some());
        // without a start time (a failed read) nothing is taken for a repeat
        assert!(e.handle(exit(30, 0)).is_some());
        assert!(e.handle(exit(30, 0)).is_some());
    }

    #[test]
    fn an_old_process_exit_spares_the_new_process_under_its_pid() {
        let mut e = enricher();
        e.handle(exec(40, 1, "/bin/new")); // start time 40
        let ev = e
            .handle(RawEvent::Exit(super::super::decode::Exit {
                header: header(40),
                exit_code: 0,
                start_time_ns: 39, // an older process with the same pid
            }))
            .unwrap();
        let p = ev.process.unwrap();
        assert_eq!(p.start_time, Some(e.clock.wall(39)));
        assert_eq!(&*p.exe, "", "not the new process's exe");
        assert!(!e.table.is_exited(40));
    }

    #[test]
    fn recent_exits_are_bounded() {
        let mut r = RecentExits::default();
        for pid in 0..RecentExits::CAPACITY as u32 + 1 {
            assert!(r.first(pid, 1));
        }
        assert_eq!(r.seen.len(), RecentExits::CAPACITY);
        assert!(r.first(0, 1), "the oldest was forgotten");
        assert!(!r.first(RecentExits::CAPACITY as u32, 1));
    }
}
