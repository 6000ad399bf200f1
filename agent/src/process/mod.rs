//! Process state: the live table and the startup snapshot.
pub mod snapshot;
pub mod table;
