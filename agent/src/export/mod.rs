//! Event sinks, and what of the stream reaches them (`filter`).
pub mod aggregate;
pub mod filter;
pub mod grpc;
pub mod publish;
pub mod spool;
pub mod stdout;
