//! The Spyglass wire API, generated at build time from `proto/spyglass/v1`.
//! Only the conversion modules of the agent and the collector use these
//! types directly.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("spyglass.v1");
}

pub mod time;

#[cfg(feature = "endpoints")]
pub mod endpoints;

#[cfg(feature = "logging")]
pub mod logging;
