//! Vulnerability context: scanner reports parsed into one shape
//! ([`report::Report`]), joined with the fleet's images.

pub mod report;
