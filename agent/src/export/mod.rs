//! Event sinks.
pub mod convert;
pub mod grpc;
pub mod spool;
pub mod stdout;
