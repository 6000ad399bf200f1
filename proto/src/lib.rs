//! The Spyglass event model ([`model`]: the one definition of an event and
//! its JSON rendering) and the wire API generated at build time from
//! `proto/spyglass/v1` ([`v1`]). Only [`model::wire`] converts between them.

/// Generated spyglass.v1 messages and the Collector service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("spyglass.v1");
}

/// What counts as the internet, and CIDR ranges: the agent's policy and
/// the collector's inventory classify addresses with the same tables.
pub mod addr;

pub mod model;

pub mod codec;

pub mod scan;

pub mod files;

pub mod limits;

pub mod time;

#[cfg(feature = "endpoints")]
pub mod endpoints;

#[cfg(feature = "logging")]
pub mod logging;
