//! Containers: which container a process belongs to. Today from its cgroup
//! path (container id, runtime, pod uid); containerd metadata comes next.
pub mod cgroup;
