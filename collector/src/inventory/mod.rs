//! The fleet inventory: the live state of the fleet (nodes, containers,
//! listeners, egress destinations, images, findings) derived from the
//! events the collector receives, kept in a database (`--store`) and
//! answered by a read API (`--api-listen`). docs/fleet.md describes it.
//!
//! - [`changes`]: event -> state change (pure);
//! - [`tracker`]: which changes are new to the store (pure);
//! - [`rows`]: what one flush writes;
//! - [`store`]: the database, its migrations and the writes;
//! - [`restarts`] and [`sweep`]: an agent's startup snapshot is the
//!   truth for its node (what it does not re-announce has ended);
//! - [`retention`]: ended rows deleted after `--retain-exited` /
//!   `--retain-closed`;
//! - [`updater`]: the store task fed from ingest, [`weigh`]: what its
//!   queue holds;
//! - [`reports`]: scanner reports in the store, [`report_dir`]: the
//!   `--vuln-reports` directory they are imported from; [`lineage`]:
//!   the image hierarchy;
//! - [`query`] and [`api`]: the read side; [`web`]: the web page.
pub mod api;
pub mod changes;
pub mod filters;
pub mod lineage;
pub mod query;
pub mod reach;
pub mod report_dir;
pub mod reports;
pub mod restarts;
pub mod retention;
#[cfg(test)]
mod roundtrip;
pub mod rows;
pub mod store;
pub mod sweep;
pub mod tracker;
pub mod updater;
#[cfg(test)]
mod vuln_roundtrip;
pub mod web;
pub mod weigh;

/// Address classification, one definition shared with the agent's
/// policy: the collector uses its internet test for egress destinations.
use spyglass_proto::addr;

pub use store::StoreUrl;
pub use updater::{Feed, Health, Update};
