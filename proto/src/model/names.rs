//! The closed sets of words an event uses (`tcp`, `listen`, `killed`, ...),
//! each an enum with its one spelling. Every shape (JSON, OCSF, syslog,
//! the wire) takes the word from here.
use std::fmt;

/// An enum whose variants are written as fixed words. `$unknown` is the
/// variant a reader uses for a word its version does not know (a newer
/// agent's); it is never produced by the agent and never accepted from a
/// config file.
macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal,)+ } $unknown:ident => $us:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            /// A word this version does not know (sent by a newer agent).
            $unknown,
            $($(#[$vm])* $var,)+
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// Their words, in the same order.
            pub const WORDS: &'static [&'static str] = &[$($s),+];

            /// The word for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s,)+
                    $name::$unknown => $us,
                }
            }

            /// The value a word names; `None` for any other word.
            pub fn parse(word: &str) -> Option<Self> {
                match word {
                    $($s => Some($name::$var),)+
                    _ => None,
                }
            }

            /// The value a word names, or the unknown value (for input
            /// from the wire, which may come from a newer version).
            pub fn parse_lenient(word: &str) -> Self {
                Self::parse(word).unwrap_or($name::$unknown)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&word)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&word, Self::WORDS))
            }
        }
    };
}

names! {
    /// What an event reports (`kind`).
    Kind {
        Exec => "exec",
        Exit => "exit",
        Fork => "fork",
        Listen => "listen",
        Connect => "connect",
        Accept => "accept",
        Loss => "loss",
        Agent => "agent",
        Finding => "finding",
        /// Sampled resource use of a container.
        Resources => "resources",
        /// A listening TCP socket or an explicitly bound UDP socket closed.
        Close => "close",
        /// A container appeared, exited or was deleted (`lifecycle`).
        Container => "container",
    } Unspecified => "unspecified"
}

names! {
    /// How bad a finding is (OCSF severity names, in order).
    Severity {
        Info => "info",
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    } Unspecified => "unspecified"
}

names! {
    /// What a policy entry asks for when its rule matches.
    Action {
        /// Report a finding.
        Alert => "alert",
        /// SIGKILL the process from the kernel at exec, before its first
        /// instruction (exec rules).
        Kill => "kill",
        /// Refuse the connection in the kernel's cgroup connect hook (EPERM).
        DenyConnect => "deny-connect",
    } Unknown => "unknown"
}

// The macro's derive list is shared by every enum; only Action has a default.
#[allow(clippy::derivable_impls)]
impl Default for Action {
    fn default() -> Self {
        Action::Alert
    }
}

names! {
    /// What the kernel did for a finding's policy entry.
    Outcome {
        Killed => "killed",
        Denied => "denied",
    } Unknown => "unknown"
}

names! {
    /// A field of an exec the kernel could not read (`process.unread`).
    Unread {
        /// The argument block (a page not present): `argv` is empty.
        Argv => "argv",
        /// The parent: `ppid` is 0.
        Ppid => "ppid",
    } Unknown => "unknown"
}

names! {
    /// An exec the kernel acted on (`enforced`).
    Enforced {
        Kill => "kill",
    } Unknown => "unknown"
}

names! {
    /// Transport protocol of a socket.
    Protocol {
        Tcp => "tcp",
        Udp => "udp",
    } Unknown => "unknown"
}

names! {
    /// Address family of a socket.
    Family {
        Ipv4 => "ipv4",
        Ipv6 => "ipv6",
    } Unknown => "unknown"
}

names! {
    /// What a socket did (`network.op`).
    NetOp {
        Listen => "listen",
        /// UDP bind to an address and port.
        Bind => "bind",
        Connect => "connect",
        /// First UDP datagram a socket sends to a peer.
        Send => "send",
        Accept => "accept",
    } Unknown => "unknown"
}

names! {
    /// How a connect ended (`network.outcome`).
    ConnectOutcome {
        Established => "established",
        Failed => "failed",
        /// A `deny-connect` policy refused it in the kernel.
        Denied => "denied",
    } Unknown => "unknown"
}

names! {
    /// Where events were lost (`loss.stage`).
    LossStage {
        /// The kernel's ring buffer was full.
        Kernel => "kernel",
        /// The agent's queue or spool.
        Agent => "agent",
    } Unknown => "unknown"
}

names! {
    /// Agent lifecycle (`agent.state`).
    AgentState {
        Started => "started",
        /// A heartbeat.
        Running => "running",
        Stopping => "stopping",
        /// The startup snapshot (processes, listeners, containers) is
        /// complete: what it did not list is not on this node.
        SnapshotComplete => "snapshot_complete",
    } Unknown => "unknown"
}

names! {
    /// A step in a container's life (`lifecycle.state`).
    ContainerState {
        /// First seen: created, or found already there when the agent
        /// started (then `snapshot` is true).
        Created => "created",
        /// Its init process exited.
        Exited => "exited",
        /// containerd deleted it.
        Deleted => "deleted",
    } Unknown => "unknown"
}

names! {
    /// The container runtime a cgroup path or containerd names.
    Runtime {
        Containerd => "containerd",
        CriO => "cri-o",
        Docker => "docker",
        Podman => "podman",
        /// A Kubernetes pod whose runtime the cgroup path does not name
        /// and containerd does not know.
        Cri => "cri",
    } Unknown => "unknown"
}

names! {
    /// Whether a seccomp filter applies to a container.
    Seccomp {
        Filtered => "filtered",
        Unconfined => "unconfined",
    } Unknown => "unknown"
}

names! {
    /// Why a container's metadata is missing (`container.unattributed`).
    Unattributed {
        ContainerdSocketMissing => "containerd_socket_missing",
        ContainerdUnreachable => "containerd_unreachable",
        ContainerdError => "containerd_error",
        NotFoundInContainerd => "not_found_in_containerd",
        LookupTimeout => "lookup_timeout",
        PendingQueueFull => "pending_queue_full",
        RuntimeNotSupported => "runtime_not_supported",
        ContainerdDisabled => "containerd_disabled",
        AgentStopping => "agent_stopping",
    } Unknown => "unknown"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_refused() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(Action::parse("deny-connect"), Some(Action::DenyConnect));
        assert_eq!(Protocol::parse("sctp"), None);
        assert_eq!(Protocol::parse_lenient("sctp"), Protocol::Unknown);
        assert!(Severity::Info < Severity::Critical);
        let e = serde_json::from_str::<Severity>("\"urgent\"").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown variant `urgent`, expected one of `info`, `low`"),
            "{e}"
        );
        assert!(serde_json::from_str::<Severity>("\"unspecified\"").is_err());
        assert_eq!(serde_json::to_string(&Runtime::CriO).unwrap(), "\"cri-o\"");
    }
}
