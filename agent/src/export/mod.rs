//! Event sinks.
pub mod stdout;
