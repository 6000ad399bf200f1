//! Resource sampling for runaway processes: every
//! `settings.resource_sample_interval_ms` each container cgroup's v2 files
//! (one read per file per container, never per process), and the
//! processes of the containers that used enough CPU to hold a runaway.
//! No eBPF program and no syscall on context switches.
pub mod cgroupfs;
pub mod sampler;

pub use sampler::{Config, ContainerSample, ProcSample, Sampler};
