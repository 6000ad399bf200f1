//! spyglass-agent: the Spyglass node daemon.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use spyglass_agent::{config::Config, export, policy, Agent};

/// Spyglass: eBPF runtime security telemetry for containers.
///
/// Events are written to stdout as JSON lines; logs go to stderr.
#[derive(Parser, Debug)]
#[command(name = "spyglass-agent", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short, global = true, env = "SPYGLASS_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter for stderr (`error`, `warn`, `info`, `debug`, or a
    /// tracing directive such as `spyglass_agent=debug`). RUST_LOG wins.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format on stderr: `text`, or `json` (one object per line, for
    /// log pipelines).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags that override the config file.
#[derive(clap::Args, Debug, Default)]
struct Overrides {
    /// Node name reported in every event.
    #[arg(long, global = true)]
    node_name: Option<String>,
    /// Ring buffer size in bytes (power of two).
    #[arg(long, global = true)]
    ring_buffer_bytes: Option<u32>,
    /// Output format on stdout: json (default), text, findings (one line
    /// per finding, agent start/stop and loss) or none.
    #[arg(long, global = true, value_enum)]
    format: Option<export::stdout::Format>,
    /// Stream events to a collector at this URL (http:// or https://).
    #[arg(long, global = true)]
    collector: Option<String>,
    /// Spool directory for batches bound for the collector.
    #[arg(long, global = true)]
    spool_dir: Option<PathBuf>,
    /// Do not report processes and sockets that existed before the start.
    #[arg(long, global = true)]
    no_snapshot: bool,
    /// containerd API socket for container metadata.
    #[arg(long, global = true)]
    containerd_socket: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (ADDR:PORT).
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    /// Policy file (YAML) for detections and in-kernel actions.
    #[arg(long, global = true)]
    policy: Option<String>,
    /// What leaves the node: full (every event), security (execs,
    /// listeners, connects aggregated per destination, containers,
    /// findings) or findings.
    #[arg(long, global = true, value_enum)]
    profile: Option<export::filter::Profile>,
    /// Export filter file (YAML; reloaded when it changes).
    #[arg(long, global = true)]
    export_filter: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the probes and stream events (the default).
    Run,
    /// Print the effective configuration as TOML.
    PrintConfig,
    /// Print the version.
    Version,
    /// Print the catalogue of detection rules (Markdown).
    Rules,
    /// Check a policy file without running (exit 1 with the error).
    CheckPolicy {
        /// The policy file (YAML).
        file: PathBuf,
    },
    /// Check an export filter file without running (exit 1 with the
    /// error).
    CheckFilter {
        /// The filter file (YAML, docs/config.md#volume-control).
        file: PathBuf,
    },
}

fn effective_config(cli: &Cli) -> Result<Config> {
    let mut cfg = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let o = &cli.overrides;
    if let Some(n) = &o.node_name {
        cfg.node_name = Some(n.clone());
    }
    if let Some(b) = o.ring_buffer_bytes {
        cfg.kernel.ring_buffer_bytes = b;
    }
    if let Some(f) = o.format {
        cfg.output.format = f;
    }
    if let Some(c) = &o.collector {
        cfg.collector.url = c.clone();
    }
    if let Some(d) = &o.spool_dir {
        cfg.collector.spool_dir = d.clone();
    }
    if o.no_snapshot {
        cfg.snapshot.enabled = false;
    }
    if let Some(s) = &o.containerd_socket {
        cfg.containerd.socket = s.clone();
    }
    if let Some(p) = &o.policy {
        cfg.policy.file = p.clone();
    }
    if let Some(p) = o.profile {
        cfg.export.profile = p;
    }
    if let Some(f) = &o.export_filter {
        cfg.export.filter_file = f.clone();
    }
    if let Some(l) = &o.metrics_listen {
        cfg.metrics.listen = l.clone();
    }
    let source = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    cfg.validate(&source)?;
    Ok(cfg)
}

fn main() {
    let cli = Cli::parse();
    spyglass_proto::logging::init(&cli.log_level, cli.log_format == "json");
    if let Err(e) = real_main(cli) {
        // `{:#}` prints the whole cause chain on one line.
        eprintln!(
            "spyglass-agent: error: {}",
            spyglass_proto::logging::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::CheckPolicy { file }) => {
            let p = policy::load(&file)?;
            #[allow(clippy::print_stdout)]
            {
                println!("policy {}: ok, {} entries", file.display(), p.entries.len());
            }
            Ok(())
        }
        Some(Command::CheckFilter { file }) => {
            let spec = export::filter::FilterSpec::load(&file)?;
            let profile = spec.profile.map_or("the configured one", |p| p.as_str());
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "export filter {}: ok, profile {profile}, {} deny and {} allow entries",
                    file.display(),
                    spec.deny.len(),
                    spec.allow.len()
                );
            }
            Ok(())
        }
        Some(Command::Rules) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", policy::rules::catalogue_markdown());
            }
            Ok(())
        }
        Some(Command::Version) => {
            #[allow(clippy::print_stdout)]
            {
                println!("spyglass-agent {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(())
        }
        Some(Command::PrintConfig) => {
            let cfg = effective_config(&cli)?;
            #[allow(clippy::print_stdout)]
            {
                print!("{}", toml::to_string(&cfg)?);
            }
            Ok(())
        }
        Some(Command::Run) | None => {
            let cfg = effective_config(&cli)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(async {
                let mut agent = Agent::start(cfg).await?;
                agent.run().await;
                agent.shutdown().await
            });
            // A stage the stop left behind (it names it) may still hold a
            // blocking join: do not wait for it again here.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            r?;
            Ok(())
        }
    }
}
