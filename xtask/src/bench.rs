//! Benchmarks (filled in below).
use anyhow::Result;

pub fn run(_quick: bool) -> Result<()> {
    anyhow::bail!("bench: not implemented yet")
}
