//! The agent's output event: the shared model of `spyglass_proto::model`,
//! the one definition every shape (JSON lines, wire, OCSF) is made from.
//! Field names are a stable contract, documented in docs/events.md.
pub use spyglass_proto::model::{
    Action, AgentInfo, AgentState, Aggregate, Ancestor, Args, ConnectOutcome, Container,
    ContainerState, Endpoint, Enforced, Event, ExitInfo, Family, FindingInfo, ForkInfo, Kind,
    Lifecycle, Loss, LossStage, LossTotals, Mitre, Name, NetOp, Network, OomKill, Outcome,
    PackageRef, ProbeStatus, Process, Protocol, Restarts, Runtime, Text, Tracked, Unattributed,
    Unread, Usage,
};
