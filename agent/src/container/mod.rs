//! Containers: which container a process belongs to (from its cgroup
//! path) and what containerd knows about it (image, pod, posture).
pub mod attribution;
pub mod cgroup;
pub mod containerd;
pub mod lifecycle;
pub mod meta;
