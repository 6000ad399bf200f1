//! The shared harness lives in the crate's library (tests/src/lib.rs).
#![allow(unused_imports)]

pub use spyglass_e2e::*;
