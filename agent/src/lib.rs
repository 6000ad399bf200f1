//! The Spyglass node agent as a library: [`Agent`] loads the probes and
//! runs the pipeline; `main.rs` is only the command line.
//!
//! Data path (one direction, each stage a unit in [`pipeline`]):
//! ring-buffer reader (thread) -> pipeline thread (enrich, attribute,
//! detect) -> sinks (stdout thread, gRPC task). The async runtime serves
//! only network I/O (containerd, collector, metrics) and timers; every
//! blocking read of /proc, cgroupfs or files runs on the pipeline thread.
pub mod agent;
pub mod bpf;
pub mod clock;
pub mod config;
pub mod container;
pub mod detect;
pub mod event;
pub mod export;
#[cfg(test)]
mod fuzz;
pub mod metrics;
pub mod packages;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod resources;

pub use agent::Agent;
