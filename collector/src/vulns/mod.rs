//! Vulnerability context: scanner reports parsed into one shape
//! ([`report::Report`]), joined with the fleet's images.

mod builder;
mod digest;
mod error;
mod purl;
pub mod report;
