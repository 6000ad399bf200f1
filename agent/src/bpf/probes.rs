//! The table of probes: what each program attaches to, the kernel it
//! needs, what happens without it, and whether the agent can run without
//! it. Loading follows this table and nothing else.
use super::tracefs::{
    FieldSpec, EXEC_LAYOUT, EXIT_LAYOUT, INET_SOCK_SET_STATE_LAYOUT, MARK_VICTIM_LAYOUT,
};

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Classic tracepoint `category/name`; `layout` lists the record
    /// fields the program reads at fixed offsets, checked against the
    /// kernel's format file before loading.
    TracePoint {
        category: &'static str,
        name: &'static str,
        layout: &'static [FieldSpec],
    },
    /// BTF-typed tracepoint (`tp_btf/name`).
    BtfTracePoint { name: &'static str },
    /// `cgroup_sock_addr` program on the cgroup v2 root.
    CgroupSockAddr,
    /// `cgroup_sock` program on the cgroup v2 root.
    CgroupSock,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Program (function) name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// Oldest kernel the hook exists on.
    pub min_kernel: (u32, u32),
    /// What the agent loses or does instead when the probe cannot load.
    pub fallback: &'static str,
    /// The agent refuses to start without it.
    pub required: bool,
}

/// Every probe the agent loads, in load order.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        program: "sched_process_exec",
        attach: Attach::TracePoint {
            category: "sched",
            name: "sched_process_exec",
            layout: EXEC_LAYOUT,
        },
        min_kernel: (5, 8),
        fallback: "none: exec events are the core of the agent",
        required: true,
    },
    ProbeSpec {
        program: "sched_process_exit",
        attach: Attach::TracePoint {
            category: "sched",
            name: "sched_process_exit",
            layout: EXIT_LAYOUT,
        },
        min_kernel: (5, 8),
        fallback: "none: the process table would grow without bound",
        required: true,
    },
    ProbeSpec {
        program: "sched_process_fork",
        attach: Attach::BtfTracePoint {
            name: "sched_process_fork",
        },
        min_kernel: (5, 5),
        fallback: "no fork events; the process tree comes from exec parent pids only",
        required: false,
    },
    ProbeSpec {
        program: "inet_sock_set_state",
        attach: Attach::TracePoint {
            category: "sock",
            name: "inet_sock_set_state",
            layout: INET_SOCK_SET_STATE_LAYOUT,
        },
        min_kernel: (4, 16),
        fallback: "no TCP listen, connect or accept events",
        required: false,
    },
    ProbeSpec {
        program: "mark_victim",
        attach: Attach::TracePoint {
            category: "oom",
            name: "mark_victim",
            layout: MARK_VICTIM_LAYOUT,
        },
        min_kernel: (4, 13),
        fallback: "OOM victims are not named: exits carry no `exit.oom`, and \
                   `container.oom_kill` comes from the cgroup's memory.events \
                   counter, without the process",
        required: false,
    },
    ProbeSpec {
        program: "connect4",
        attach: Attach::CgroupSockAddr,
        min_kernel: (4, 17),
        fallback: "no UDP connect events (IPv4) and no deny-connect enforcement",
        required: false,
    },
    ProbeSpec {
        program: "connect6",
        attach: Attach::CgroupSockAddr,
        min_kernel: (4, 17),
        fallback: "no UDP connect events (IPv6) and no deny-connect enforcement",
        required: false,
    },
    ProbeSpec {
        program: "sendmsg4",
        attach: Attach::CgroupSockAddr,
        min_kernel: (4, 18),
        fallback: "no UDP send events (IPv4)",
        required: false,
    },
    ProbeSpec {
        program: "sendmsg6",
        attach: Attach::CgroupSockAddr,
        min_kernel: (4, 18),
        fallback: "no UDP send events (IPv6)",
        required: false,
    },
    ProbeSpec {
        program: "post_bind4",
        attach: Attach::CgroupSock,
        min_kernel: (4, 17),
        fallback: "no UDP bind events (IPv4)",
        required: false,
    },
    ProbeSpec {
        program: "post_bind6",
        attach: Attach::CgroupSock,
        min_kernel: (4, 17),
        fallback: "no UDP bind events (IPv6)",
        required: false,
    },
    ProbeSpec {
        program: "sock_release",
        attach: Attach::CgroupSock,
        min_kernel: (5, 9),
        fallback: "no UDP close events (TCP listeners' closes come from \
                   inet_sock_set_state); UDP binds are not remembered",
        required: false,
    },
];

/// The oldest kernel that runs every required probe.
pub fn min_required_kernel() -> (u32, u32) {
    PROBES
        .iter()
        .filter(|p| p.required)
        .map(|p| p.min_kernel)
        .max()
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_are_unique_and_required_kernel_is_the_max() {
        let mut names: Vec<_> = PROBES.iter().map(|p| p.program).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PROBES.len());
        assert_eq!(min_required_kernel(), (5, 8));
    }
}
