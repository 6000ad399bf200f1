//! Event sinks.
pub mod grpc;
pub mod publish;
pub mod spool;
pub mod stdout;
