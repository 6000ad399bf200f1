//! Logs of the agent and the collector, set up the same way (feature
//! `logging`): stderr, filtered by `RUST_LOG` or the given level; text
//! with colours only on a terminal, or one JSON object per line for log
//! pipelines (`--log-format json`).
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// An error and its causes on one line (`a: b: c`), each cause once:
/// messages that already quote their cause are not followed by it again.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Install the global subscriber.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init();
    }
}
