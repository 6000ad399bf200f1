//! The shared harness (crate spyglass-e2e), pointed at the agent binary
//! cargo built for these tests.
#![allow(dead_code, unused_imports)]

pub use spyglass_e2e::*;

/// Start this build's agent and wait until it is ready.
pub fn start_agent(args: &[&str]) -> Agent {
    Agent::start_bin(
        std::path::Path::new(env!("CARGO_BIN_EXE_spyglass-agent")),
        args,
    )
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spyglass-agent")
}
