//! spyglass-collector: receives Spyglass agent streams over gRPC and writes
//! them as JSON lines or OCSF to a rotated file (or stdout), and to syslog,
//! or publishes them to Kafka or an HTTPS webhook.
mod delivery;
mod durable;
#[cfg(test)]
mod fuzz;
mod identity;
mod idle;
mod inflight;
mod inventory;
mod kafka;
mod ledger;
mod live;
mod metrics;
mod ocsf;
mod output;
mod remote;
mod service;
mod streams;
mod syslog;
mod vulns;
mod webhook;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use spyglass_proto::v1::collector_server::CollectorServer;
use tokio::sync::Mutex;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
    Request, Status,
};
use tracing::{info, warn};

/// Receive Spyglass agent event streams and write them for a SIEM.
#[derive(Parser, Debug)]
#[command(name = "spyglass-collector", version, about)]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Output file (JSON lines; rotated by size), or `-` for stdout.
    #[arg(long, default_value = "spyglass-events.jsonl")]
    output: String,
    /// Output format: json (Spyglass events) or ocsf (OCSF 1.8.0).
    #[arg(long, value_enum, default_value_t = output::Format::Json)]
    format: output::Format,
    /// Rotate the output file when it would exceed this many bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    rotate_bytes: u64,
    /// Rotated files kept (FILE.1 .. FILE.N).
    #[arg(long, default_value_t = 5)]
    keep: usize,
    /// Dedupe state file. Default: OUTPUT.state (none for stdout).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Agent status (connected, last seen, last sequence, lag, events,
    /// duplicates, drops per node), rewritten every second as JSON.
    /// Default: OUTPUT.agents.json (none for stdout).
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Also send every line to syslog (RFC 5424): tcp://HOST:PORT or tls://HOST:PORT.
    #[arg(long)]
    syslog: Option<String>,
    /// CA bundle (PEM) to verify a tls:// syslog server.
    #[arg(long)]
    syslog_ca: Option<String>,
    /// Server certificate (PEM); with --tls-key enables TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates: enables mutual TLS; agents
    /// without a certificate signed by it are refused.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// With --client-ca: extra node ids a client certificate may publish
    /// for, one line per certificate name: `NAME NODE_ID...`. Without it a
    /// certificate publishes only for its own names (DNS SANs, else CN).
    #[arg(long, requires = "client_ca")]
    node_identities: Option<PathBuf>,
    /// With --client-ca: `on` binds each node id to its client
    /// certificate; `off` accepts any node id from any certificate the CA
    /// signed (for agents that share one certificate; not advised).
    #[arg(
        long,
        env = "SPYGLASS_NODE_BINDING",
        value_parser = ["on", "off"],
        default_value = "on"
    )]
    node_binding: String,
    /// Require `authorization: Bearer TOKEN` from agents (or SPYGLASS_TOKEN).
    #[arg(long, env = "SPYGLASS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest accepted message (one batch), bytes; bigger ones are refused.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Most memory all streams' decoded batches may hold at once, MiB
    /// (estimated from each batch before it is decoded). A batch that
    /// does not fit ends its stream with RESOURCE_EXHAUSTED, which agents
    /// retry; it must hold one batch of --max-message-bytes at its
    /// largest (32 bytes per wire byte).
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(64..=65536))]
    decode_budget_mib: u64,
    /// Per-stream ceiling in events per second (faster streams are slowed).
    #[arg(long, default_value_t = 500_000)]
    max_events_per_sec: u64,
    /// Most agents (node ids) the collector tracks. A new node beyond it
    /// takes the place of the disconnected one seen longest ago; with
    /// every one connected, its batches are refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 50_000)]
    max_agents: usize,
    /// Sequence spaces (stream ids) the dedupe state keeps per node; a new
    /// one beyond it replaces the one written longest ago. An agent uses
    /// one stream id per spool.
    #[arg(long, default_value_t = ledger::DEFAULT_STREAMS_PER_NODE)]
    dedupe_streams_per_node: usize,
    /// Most agent streams open at once, all clients together; one more
    /// is refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 10_000)]
    max_streams: usize,
    /// Most streams open at once from one peer IP address. Raise it when
    /// agents reach the collector through a proxy or SNAT.
    #[arg(long, default_value_t = 64)]
    max_streams_per_ip: usize,
    /// Most streams open at once per client certificate (mutual TLS): an
    /// agent holds one, two for a moment while it reconnects.
    #[arg(long, default_value_t = 4)]
    max_streams_per_cert: usize,
    /// Most streams a client may open on one HTTP/2 connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); an agent uses one.
    #[arg(long, default_value_t = 8)]
    max_streams_per_connection: u32,
    /// Most gRPC connections open at once; one more is closed when
    /// accepted.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most gRPC connections open at once from one client address
    /// (counted before authentication); raise it when many agents reach
    /// the collector through one NAT or proxy address.
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Close a gRPC connection that sends nothing for this many seconds
    /// (a silent client, a stalled TLS handshake, HTTP/2 preface or
    /// message). Live clients answer the keepalive pings, so keep it above
    /// twice --keepalive-interval.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds between the HTTP/2 pings the collector sends on every
    /// connection; a connection whose ping is not answered within the
    /// same time is closed.
    #[arg(long, default_value_t = 20)]
    keepalive_interval: u64,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address
    /// (ADDR:PORT, plain HTTP). Off when not given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The fleet inventory (docs/fleet.md): `sqlite:PATH` (created if
    /// missing), `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (or
    /// postgresql://; one database several collector replicas share), or
    /// `none`. Default: sqlite:OUTPUT.inventory.db next to the output file
    /// (none when the output is stdout). Keep a password out of the
    /// command line: SPYGLASS_STORE, or libpq's PGPASSWORD / PGPASSFILE.
    #[arg(long, env = "SPYGLASS_STORE", hide_env_values = true,
          value_parser = inventory::store::StoreUrlParser)]
    store: Option<inventory::StoreUrl>,
    /// Most memory the events waiting for the inventory's store may hold,
    /// MiB (16 to 65536); past it updates are dropped for the inventory
    /// (counted; the store is marked stale). With the default a
    /// thousand nodes' startup snapshots at once (100 containers each)
    /// wait for PostgreSQL to catch up and none is dropped.
    #[arg(long, default_value_t = inventory::updater::MAX_QUEUED_KIB / 1024,
          value_parser = clap::value_parser!(u64).range(16..=65536))]
    store_queue_mib: u64,
    /// How long the inventory keeps an exited (or deleted) container
    /// after its exit, with its destinations and closed findings: 90s,
    /// 30m, 24h, 7d, or `forever`.
    #[arg(long, default_value = "24h")]
    retain_exited: inventory::retention::Keep,
    /// How long the inventory keeps a closed listener after its close
    /// (same units).
    #[arg(long, default_value = "24h")]
    retain_closed: inventory::retention::Keep,
    /// A directory of scanner reports to import into the inventory
    /// (Trivy JSON, Grype JSON, CycloneDX BOM or VEX; `*.json`), read
    /// again as files appear, change or go (docs/vulnerabilities.md).
    /// Needs the inventory (not `--store none`).
    #[arg(long)]
    vuln_reports: Option<PathBuf>,
    /// Serve the inventory's read API (JSON under /api/v1/) on this
    /// address (ADDR:PORT, plain HTTP). Off when not given. Without
    /// --api-token-file only a loopback address is accepted.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// File holding the bearer token API clients must send
    /// (`Authorization: Bearer TOKEN`); not the agents' --token.
    #[arg(long, requires = "api_listen")]
    api_token_file: Option<PathBuf>,
    /// File holding the token scanner report uploads must send
    /// (`PUT`/`DELETE /api/v1/reports/NAME`, `Authorization: Bearer
    /// TOKEN`); not the read API's token. Uploads are off without it.
    #[arg(long, requires = "api_listen")]
    api_report_token_file: Option<PathBuf>,
    /// Most clients following the live event stream
    /// (/api/v1/events?follow=1) at once; one more gets 503.
    #[arg(long, default_value_t = live::DEFAULT_MAX_CLIENTS)]
    api_max_stream_clients: usize,
    /// Log filter for stderr.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format on stderr: `text`, or `json` (one object per line, for
    /// log pipelines).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(flatten)]
    kafka: kafka::KafkaArgs,
    #[command(flatten)]
    webhook: webhook::WebhookArgs,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The API token (`--api-token-file`) when the API listens, refused when
/// the address is not loopback and there is none.
fn api_token(cli: &Cli) -> Result<Option<String>> {
    let Some(addr) = cli.api_listen else {
        return Ok(None);
    };
    let token = cli
        .api_token_file
        .as_deref()
        .map(inventory::api::read_token)
        .transpose()?;
    inventory::api::check_exposure(addr, token.as_deref())?;
    Ok(token)
}

/// Open the inventory store `--store` names (default: next to the
/// output file) and start its task; `None` with `--store none`. An
/// unreachable PostgreSQL does not stop the start: the store task
/// migrates and writes once it answers (src/inventory/reach.rs).
async fn open_inventory(
    cli: &Cli,
    out_path: Option<&std::path::Path>,
) -> Result<Option<(sqlx::AnyPool, inventory::Feed)>> {
    use inventory::{reach::Writer, store, StoreUrl};
    let url = cli.store.clone().unwrap_or_else(|| {
        out_path.map_or(StoreUrl::None, |p| {
            StoreUrl::Sqlite(PathBuf::from(format!("{}.inventory.db", p.display())))
        })
    });
    let (pool, writer, down) = match &url {
        StoreUrl::None => {
            if cli.api_listen.is_some() {
                return Err(inventory::api::ApiError::NoStore.into());
            }
            if cli.vuln_reports.is_some() {
                anyhow::bail!("--vuln-reports needs the inventory: drop --store none");
            }
            return Ok(None);
        }
        StoreUrl::Sqlite(path) => {
            let pool = store::open(path).await?;
            (pool.clone(), Writer::new(pool, None, false), None)
        }
        StoreUrl::Postgres(u) => {
            let pool = store::open_postgres(u)?;
            match store::migrate(&pool, u).await {
                Ok(()) => (
                    pool.clone(),
                    Writer::new(pool, Some(u.clone()), false),
                    None,
                ),
                Err(e) if e.unreachable() => {
                    let why = store::reason(Some(u), &e).await;
                    (
                        pool.clone(),
                        Writer::new(pool, Some(u.clone()), true),
                        Some(why),
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let retention = inventory::retention::Retention {
        exited: cli.retain_exited,
        closed: cli.retain_closed,
    };
    let feed =
        inventory::updater::spawn(writer, pool.clone(), retention, cli.store_queue_mib * 1024);
    match down {
        None => info!(store = %url.redacted(), "inventory store open"),
        Some(why) => feed.health.reach.set_down(why),
    }
    Ok(Some((pool, feed)))
}

/// Start importing the reports of `dir` (`--vuln-reports`), refused at
/// start when it is not a directory.
fn watch_reports(
    pool: &sqlx::AnyPool,
    dir: &std::path::Path,
) -> Result<Arc<inventory::report_dir::ImportHealth>> {
    if !dir.is_dir() {
        anyhow::bail!(
            "--vuln-reports {}: not a directory: create it (scanner reports are written into it)",
            dir.display()
        );
    }
    let health = Arc::new(inventory::report_dir::ImportHealth::default());
    inventory::report_dir::spawn(pool.clone(), dir.to_owned(), health.clone());
    info!(dir = %dir.display(), "importing vulnerability reports");
    Ok(health)
}

fn main() {
    let cli = Cli::parse();
    spyglass_proto::logging::init(&cli.log_level, cli.log_format == "json");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spyglass-collector: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(run(cli));
    // Tasks still running (a stream's blocking work) are not waited for
    // without a bound: what they held is saved by the stop already.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(e) = r {
        eprintln!(
            "spyglass-collector: error: {}",
            spyglass_proto::logging::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

/// Bound what decoded batches hold at once; the budget must hold the
/// largest batch --max-message-bytes lets in.
fn decode_budget(cli: &Cli) -> Result<()> {
    let budget = usize::try_from(cli.decode_budget_mib << 20).unwrap_or(usize::MAX);
    let largest = spyglass_proto::limits::decoded_bytes_allowed(cli.max_message_bytes);
    if largest > budget {
        anyhow::bail!(
            "--decode-budget-mib {} cannot hold one batch of --max-message-bytes {} \
             (it may decode into {} MiB): raise the budget to at least {} or lower the largest message",
            cli.decode_budget_mib,
            cli.max_message_bytes,
            largest.div_ceil(1 << 20),
            largest.div_ceil(1 << 20)
        );
    }
    spyglass_proto::codec::DECODE_BUDGET.set_limit(budget);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    // With Kafka there is no output file: the positions topic is the
    // dedupe state (read into the ledger before any batch is taken). With
    // the webhook there is none either, and the dedupe state is in memory
    // (a state file would vouch for batches the receiver never took).
    let kafka = cli.kafka.settings()?;
    let webhook = cli.webhook.settings()?;
    let remote_output = kafka.is_some() || webhook.is_some();
    // Recover (and repair a torn tail) before the file is opened for append.
    let out_path = (cli.output != "-" && !remote_output).then(|| PathBuf::from(&cli.output));
    let state = match remote_output {
        true => None,
        false => cli.state_file.clone().or_else(|| {
            out_path
                .as_ref()
                .map(|p| PathBuf::from(format!("{}.state", p.display())))
        }),
    };
    decode_budget(&cli)?;
    // Node ids bound to client certificates: on with mutual TLS.
    if cli.node_binding == "off" && cli.node_identities.is_some() {
        anyhow::bail!(
            "--node-identities binds node ids to certificates, and --node-binding \
             (or SPYGLASS_NODE_BINDING) is off: drop one of them"
        );
    }
    let identities = match (&cli.client_ca, &cli.node_identities) {
        (None, _) => None,
        _ if cli.node_binding == "off" => None,
        (Some(_), None) => Some(identity::NodeIdentities::default()),
        (Some(_), Some(path)) => {
            let ids = identity::NodeIdentities::load(path)?;
            info!(path = %path.display(), certificates = ids.len(), "node identities read");
            Some(ids)
        }
    };
    let ledger = ledger::Ledger::open(
        state.as_deref(),
        out_path.as_deref(),
        cli.dedupe_streams_per_node,
    )?;
    let file = match remote_output {
        true => output::LineSink::discard(),
        false => output::LineSink::open(&cli.output, cli.rotate_bytes, cli.keep)?,
    };
    let kafka = kafka.map(|settings| {
        info!(?settings, "publishing to Kafka");
        kafka::start(settings)
    });
    let remote = match (&kafka, webhook) {
        (Some((sink, _)), _) => Some(remote::Remote::Kafka(sink.clone())),
        (None, Some(settings)) => {
            info!(?settings, "publishing to a webhook");
            let sink = webhook::start(settings).context("cannot start the webhook's thread")?;
            Some(remote::Remote::Webhook(sink))
        }
        (None, None) => None,
    };
    let syslog = match &cli.syslog {
        Some(t) => Some(syslog::spawn(t, cli.syslog_ca.as_deref())?),
        None => None,
    };
    // the API's token and exposure are checked once, before anything opens
    let api_token = api_token(&cli)?;
    let inventory = open_inventory(&cli, out_path.as_deref()).await?;
    let mut metrics = metrics::Metrics::new(syslog.as_ref().map(|s| s.dropped.clone()));
    metrics.store = inventory.as_ref().map(|(_, feed)| feed.health.clone());
    metrics.vuln_reports = match (&inventory, &cli.vuln_reports) {
        (Some((pool, _)), Some(dir)) => Some(watch_reports(pool, dir)?),
        _ => None,
    };
    let live = Arc::new(live::Hub::new(cli.api_max_stream_clients));
    metrics.live = cli.api_listen.map(|_| live.clone());
    metrics.remote.clone_from(&remote);
    metrics.turned();
    metrics
        .dedupe_streams
        .store(ledger.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(service::Shared {
        outputs: Mutex::new((output::Outputs::new(cli.format, file, syslog), ledger)),
        agents: Default::default(),
        max_events_per_sec: cli.max_events_per_sec,
        max_agents: cli.max_agents,
        identities,
        durability: durable::Durability::start(remote)
            .context("cannot start the output's sync thread")?,
        streams: streams::Streams::new(streams::StreamLimits {
            total: cli.max_streams,
            per_ip: cli.max_streams_per_ip,
            per_cert: cli.max_streams_per_cert,
        }),
        metrics,
        inventory: inventory.as_ref().map(|(_, feed)| feed.clone()),
        live: live.clone(),
    });

    if let Some((sink, positions)) = kafka {
        // what Kafka holds goes into the ledger before any batch is taken
        let seed = shared.clone();
        tokio::spawn(async move {
            let Ok(recovered) = positions.await else {
                return;
            };
            let mut guard = seed.outputs.lock().await;
            for m in &recovered.marks {
                guard.1.record(&m.node, &m.stream, m.sequence);
            }
            drop(guard);
            sink.torn(recovered.partial);
            sink.open();
        });
    }

    // Agent status to a file every second; dedupe state saved and agent
    // status logged every 5 s.
    let status_file = cli.status_file.clone().or_else(|| {
        out_path
            .as_ref()
            .map(|p| PathBuf::from(format!("{}.agents.json", p.display())))
    });
    let bg = shared.clone();
    let out_path = out_path.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            bg.metrics.turned();
            // Not ready takes the collector out of its Service, so no
            // write would come to clear the state: check for space here.
            if let Some(dir) = out_path.as_ref().and_then(|p| p.parent()) {
                bg.metrics.recheck_output(dir);
            }
            n += 1;
            let agents = bg.agents.lock().expect("agents lock").clone();
            if let Some(path) = &status_file {
                let tmp = path.with_extension("tmp");
                let text = serde_json::to_string_pretty(&agents).unwrap_or_default();
                if let Err(e) = spyglass_proto::files::write_private(&tmp, text)
                    .and_then(|_| std::fs::rename(&tmp, path))
                {
                    warn!(path = %path.display(), error = %e, "writing agent status");
                }
            }
            if !n.is_multiple_of(5) {
                continue;
            }
            let mut guard = bg.outputs.lock().await;
            let (outputs, ledger) = &mut *guard;
            let saved = ledger.save(outputs.file.at());
            drop(guard);
            if let Err(e) = saved {
                warn!(error = %e, "saving dedupe state");
            }
            for (node, a) in agents {
                info!(
                    %node, connected = a.connected, peer = %a.peer, last_seq = a.last_sequence,
                    lag_ms = a.lag_ms, events = a.events, duplicates = a.duplicates, drops = a.drops,
                    "agent status"
                );
            }
        }
    });

    let svc = service::CollectorService {
        shared: shared.clone(),
    };
    let server = CollectorServer::new(svc)
        .max_decoding_message_size(cli.max_message_bytes)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    let token = cli.token.clone().map(|t| format!("Bearer {t}"));
    let auth = move |req: Request<()>| -> Result<Request<()>, Status> {
        if let Some(want) = &token {
            let got = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(want.as_str()) {
                return Err(Status::unauthenticated("missing or wrong bearer token"));
            }
        }
        Ok(req)
    };

    let idle_timeout = Duration::from_secs(cli.idle_timeout.max(1));
    let keepalive = Duration::from_secs(cli.keepalive_interval.max(1));
    let mut builder = Server::builder()
        .max_concurrent_streams(cli.max_streams_per_connection.max(1))
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive));
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(cert, "TLS certificate")?,
                read(key, "TLS key")?,
            ))
            .timeout(idle_timeout);
        if let Some(ca) = &cli.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        builder = builder
            .tls_config(tls)
            .context("invalid TLS certificate or key")?;
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    info!(
        listen = %cli.listen,
        output = %shared.durability.remote().map_or(cli.output.as_str(), |r| r.name()),
        format = ?cli.format,
        tls = cli.tls_cert.is_some(),
        mtls = cli.client_ca.is_some(),
        node_binding = shared.identities.is_some(),
        token = cli.token.is_some(),
        "collector ready"
    );
    if let Some(addr) = cli.metrics_listen {
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics (--metrics-listen)"))?;
        let m = shared.clone();
        let store = inventory.as_ref().map(|(_, feed)| feed.health.clone());
        tokio::spawn(spyglass_proto::endpoints::serve(http, move |path| {
            inventory::reach::readiness(path, store.as_ref().map(|h| &h.reach), |p| {
                metrics::answer(&m.metrics, &m.agents, p)
            })
        }));
    }
    if let (Some((pool, feed)), Some(addr)) = (&inventory, cli.api_listen) {
        let listener = inventory::api::bind(addr).await?;
        let report_token = cli
            .api_report_token_file
            .as_deref()
            .map(inventory::api::read_token)
            .transpose()?;
        inventory::api::spawn(
            listener,
            pool.clone(),
            api_token,
            report_token,
            feed.health.clone(),
            live,
        );
    }
    let incoming = idle::incoming(
        listener,
        idle_timeout,
        cli.max_connections.max(1),
        cli.max_connections_per_ip.max(1),
    );
    // On SIGTERM/SIGINT: stop accepting, give open streams a moment, then
    // exit even if agents keep their streams open; agents resend whatever
    // was not acknowledged, and the ledger drops what was already written.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        builder
            .add_service(InterceptedService::new(server, auth))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("stopping");
    if let Some(r) = shared.durability.remote() {
        // no batch is taken now; what was is delivered below
        r.close();
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        _ => {}
    }
    if let Some(r) = shared.durability.remote() {
        if !r.drain(Duration::from_secs(10)).await {
            warn!(
                output = r.name(),
                "batches still wait for the remote output at exit: their agents resend them"
            );
        }
    }
    let mut guard = shared.outputs.lock().await;
    let (outputs, ledger) = &mut *guard;
    ledger.save(outputs.file.at())?;
    info!("collector stopped");
    Ok(())
}
