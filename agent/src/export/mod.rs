//! Event sinks.
pub mod grpc;
pub mod spool;
pub mod stdout;
