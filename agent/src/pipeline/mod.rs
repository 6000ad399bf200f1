//! The data path: reader (thread) -> enrich (task) -> export (thread),
//! joined by bounded channels.
pub mod decode;
pub mod enrich;
pub mod losses;
pub mod reader;
