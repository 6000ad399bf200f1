//! `spyglass`: ask a collector's fleet inventory which containers run as
//! root, which ports are exposed, what talks to the internet, which images
//! run where and which vulnerabilities they carry, which nodes report and
//! which findings are open; follow its
//! live event stream (`events --follow`).
//!
//! Exit status: 0 when something matched, 1 when nothing did, 2 on an
//! error (like grep), so scripts can tell "none" from "could not ask".
mod api;
mod follow;
mod line;
mod table;

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "spyglass",
    version,
    about = "Ask a Spyglass collector about the fleet"
)]
struct Cli {
    /// The collector's API (its --api-listen address).
    #[arg(
        long,
        global = true,
        env = "SPYGLASS_COLLECTOR",
        default_value = "http://127.0.0.1:7072"
    )]
    collector: String,
    /// A file holding the API token (the collector's --api-token-file).
    #[arg(long, global = true, env = "SPYGLASS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Tables for people, or the API's rows as JSON for scripts.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    /// Most rows to ask for (1 to 10000; the collector's default is 1000).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    limit: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Query(Query),
    /// The live event stream, filtered: one line per event (time, node,
    /// workload, kind, pid, what, finding), or `--output json`.
    Events(follow::Events),
}

/// The inventory's questions: one GET each.
#[derive(Subcommand)]
enum Query {
    /// Containers: their workload, image, uid and privileges.
    Containers {
        /// Only those running as root (uid 0 without a user namespace).
        #[arg(long)]
        root: bool,
        /// Only privileged ones.
        #[arg(long)]
        privileged: bool,
        #[arg(long)]
        node: Option<String>,
        /// containerd or Kubernetes namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// A manifest, index or config digest of the image.
        #[arg(long)]
        image: Option<String>,
    },
    /// Listening sockets open now.
    Ports {
        /// Only exposed ones: on a wildcard address or in a host-network
        /// container.
        #[arg(long)]
        exposed: bool,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Where containers connect to.
    Egress {
        /// Only destinations on the internet.
        #[arg(long)]
        internet: bool,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Images and where they run; with --descends-from or --lineage,
    /// the image hierarchy (images built on one, or one's bases).
    Images {
        #[arg(long)]
        digest: Option<String>,
        /// Images built on this one (a manifest, index or config
        /// digest): those whose layers start with its layers, or whose
        /// annotations name it as their base.
        #[arg(long, conflicts_with_all = ["digest", "lineage"])]
        descends_from: Option<String>,
        /// This image's bases, the nearest first.
        #[arg(long, conflicts_with = "digest")]
        lineage: Option<String>,
    },
    /// Nodes and their agents.
    Nodes {
        /// Only nodes whose agent's stream is open.
        #[arg(long)]
        connected: bool,
    },
    /// Vulnerabilities of the fleet's images, from imported scanner
    /// reports (the collector's --vuln-reports), with where each image
    /// runs now.
    Vulns {
        /// At or above: negligible, low, medium, high or critical.
        #[arg(long)]
        severity: Option<String>,
        /// Only those with a fixed version.
        #[arg(long)]
        fixable: bool,
        /// Only images running now.
        #[arg(long)]
        running: bool,
        /// A manifest, index or config digest of the image.
        #[arg(long)]
        image: Option<String>,
        /// A vulnerability id (CVE-..., GHSA-...).
        #[arg(long)]
        id: Option<String>,
        /// A package name.
        #[arg(long)]
        package: Option<String>,
        /// Images running in this containerd or Kubernetes namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Images running on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// The imported scanner reports.
    Reports {
        /// Reports naming this digest.
        #[arg(long)]
        image: Option<String>,
    },
    /// Findings, open and resolved.
    Findings {
        #[arg(long)]
        rule: Option<String>,
        /// info, low, medium, high or critical.
        #[arg(long)]
        severity: Option<String>,
        /// Only open ones.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// A flag as a filter (only when given: absent means "any").
fn flag(name: &'static str, on: bool) -> Option<(&'static str, String)> {
    on.then(|| (name, "true".to_owned()))
}

fn value(name: &'static str, v: Option<String>) -> Option<(&'static str, String)> {
    v.map(|v| (name, v))
}

/// The endpoint, its filters and its table.
fn request(
    c: Query,
) -> (
    &'static str,
    Vec<(&'static str, String)>,
    &'static [table::Column],
) {
    let (endpoint, filters, columns) = match c {
        Query::Containers {
            root,
            privileged,
            node,
            namespace,
            image,
        } => (
            "containers",
            vec![
                flag("root", root),
                flag("privileged", privileged),
                value("node", node),
                value("namespace", namespace),
                value("image", image),
            ],
            table::CONTAINERS,
        ),
        Query::Ports {
            exposed,
            node,
            namespace,
        } => (
            "ports",
            vec![
                flag("exposed", exposed),
                value("node", node),
                value("namespace", namespace),
            ],
            table::PORTS,
        ),
        Query::Egress {
            internet,
            node,
            namespace,
        } => (
            "egress",
            vec![
                flag("internet", internet),
                value("node", node),
                value("namespace", namespace),
            ],
            table::EGRESS,
        ),
        Query::Images {
            descends_from: Some(d),
            ..
        } => (
            "lineage",
            vec![
                Some(("image", d)),
                Some(("relation", "descendants".to_owned())),
            ],
            table::LINEAGE,
        ),
        Query::Images {
            lineage: Some(d), ..
        } => (
            "lineage",
            vec![
                Some(("image", d)),
                Some(("relation", "ancestors".to_owned())),
            ],
            table::LINEAGE,
        ),
        Query::Images { digest, .. } => ("images", vec![value("digest", digest)], table::IMAGES),
        Query::Nodes { connected } => ("nodes", vec![flag("connected", connected)], table::NODES),
        Query::Vulns {
            severity,
            fixable,
            running,
            image,
            id,
            package,
            namespace,
            node,
        } => (
            "vulns",
            vec![
                value("severity", severity),
                flag("fixable", fixable),
                flag("running", running),
                value("image", image),
                value("id", id),
                value("package", package),
                value("namespace", namespace),
                value("node", node),
            ],
            table::VULNS,
        ),
        Query::Reports { image } => ("reports", vec![value("image", image)], table::REPORTS),
        Query::Findings {
            rule,
            severity,
            open,
            node,
            namespace,
        } => (
            "findings",
            vec![
                value("rule", rule),
                value("severity", severity),
                flag("open", open),
                value("node", node),
                value("namespace", namespace),
            ],
            table::FINDINGS,
        ),
    };
    (endpoint, filters.into_iter().flatten().collect(), columns)
}

fn run(cli: Cli) -> Result<bool, api::ApiError> {
    let client = api::Client::new(&cli.collector, cli.token_file.as_ref())?;
    let query = match cli.command {
        Command::Events(e) => return follow::run(&client, e, matches!(cli.output, Output::Json)),
        Command::Query(q) => q,
    };
    let (endpoint, mut filters, columns) = request(query);
    if let Some(n) = cli.limit {
        filters.push(("limit", n.to_string()));
    }
    let answer = client.get(endpoint, &filters)?;
    if answer.stale {
        eprintln!("spyglass: warning: the collector's inventory fell behind its ingest (updates were dropped): rows may be missing or old");
    }
    if answer.truncated {
        eprintln!(
            "spyglass: warning: more rows matched than the {} shown; narrow the filters, or ask for more with --limit (at most 10000)",
            answer.rows.len()
        );
    }
    let text = match cli.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&answer.rows).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table if answer.rows.is_empty() => String::new(),
        Output::Table => table::render(&answer.rows, columns),
    };
    // a closed pipe (`| head`) is not an error worth a message
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(!answer.rows.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(&cli.command, Command::Events(e) if !e.follow) {
        // exits 2, like every usage error
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "events needs --follow: the collector keeps no event history to list \
                 (its output file is the record); `spyglass events --follow` streams what comes",
            )
            .exit();
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("spyglass: error: {e}");
            ExitCode::from(2)
        }
    }
}
