//! A real Kafka-protocol broker for tests: Tansu 0.6.0
//! (target/tools/tansu, installed by `cargo xtask setup`; docs/testing.md
//! says why Tansu and what it lacks), with its memory storage, on a
//! loopback port, behind a loopback TCP proxy the harness owns. Clients
//! only ever know the proxy's port (it is also the advertised listener),
//! so [`Broker::cut`] can take the broker away from them: a memory broker
//! cannot restart without losing every topic. Killed on drop.
use std::{
    collections::{BTreeSet, HashMap},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers, Message},
    metadata::MetadataPartition,
    Offset, TopicPartitionList,
};

/// The cluster id the broker runs with.
pub const CLUSTER_ID: &str = "spyglass-test";

/// target/tools/tansu; panics naming `cargo xtask setup` when missing.
pub fn tansu() -> PathBuf {
    let p = crate::root().join("target/tools/tansu");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it installs Tansu 0.6.0, the Kafka broker \
         of the tests)",
        p.display()
    );
    p
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One Tansu broker of a test, and the proxy in front of it.
pub struct Broker {
    child: Child,
    /// The broker's own listener (only the harness and `tansu topic`
    /// talk to it directly).
    port: u16,
    proxy: Proxy,
    log: PathBuf,
}

impl Broker {
    /// Start Tansu on a free loopback port behind a proxy, with `scratch`
    /// as its working directory (Tansu reads a `.env` there; none is
    /// written) and its log in `scratch/tansu.log`; returns once a
    /// metadata request through the proxy succeeds.
    pub fn start(scratch: &Path) -> Broker {
        let broker = Broker::spawn(scratch, "tansu", false);
        broker.wait_ready(Duration::from_secs(30));
        broker
    }

    /// Start Tansu (memory storage) behind a proxy, logging to
    /// `scratch/NAME.log`, with `--authentication` when `authenticate`;
    /// does not wait for it.
    fn spawn(scratch: &Path, name: &str, authenticate: bool) -> Broker {
        let bin = tansu();
        std::fs::create_dir_all(scratch).unwrap();
        let log = scratch.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let port = crate::free_port();
        let proxy = Proxy::start(port);
        let mut cmd = Command::new(&bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", proxy.port))
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", CLUSTER_ID]);
        if authenticate {
            cmd.arg("--authentication");
        }
        let child = cmd
            // the flags, not a stray environment, configure it
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Broker {
            child,
            port,
            proxy,
            log,
        }
    }

    /// Wait until a metadata request through the proxy answers.
    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let consumer = self.consumer("spyglass-test-ready", false);
        let mut last = String::new();
        while Instant::now() < deadline {
            match consumer.fetch_metadata(None, Duration::from_secs(1)) {
                Ok(m) if !m.brokers().is_empty() => return,
                Ok(_) => last = "a metadata answer without brokers".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail(&format!(
            "Tansu did not answer a metadata request at {} within {within:?} (last: {last})",
            self.bootstrap()
        ));
    }

    /// Panic with `why` and the tail of the broker's log.
    fn fail(&self, why: &str) -> ! {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!("{why}\n--- {} (tail) ---\n{tail}", self.log.display())
    }

    /// `127.0.0.1:A`, the proxy: what clients are given.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// Create `name` with `partitions` partitions, with Tansu's own CLI
    /// (`tansu topic create`, talking to the broker directly, not through
    /// the proxy): the tool of the broker under test, and no admin client
    /// semantics to second-guess.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu())
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--partitions")
            .arg(partitions.to_string())
            .output()
            .expect("run tansu topic create");
        if !out.status.success() {
            self.fail(&format!(
                "tansu topic create {name} --partitions {partitions} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Close every connection through the proxy and refuse new ones for
    /// `d` (they are accepted and closed at once), as a broker that went
    /// away; returns at once, the cut ends by itself.
    pub fn cut(&self, d: Duration) {
        self.proxy.cut(d);
    }

    /// SIGSTOP the broker (a hung broker: connections stay open, nothing
    /// answers).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        assert!(
            crate::signal_child(&self.child, sig),
            "kill({}, {sig})",
            self.child.id()
        );
    }

    /// An rdkafka consumer on [`Broker::bootstrap`] with a throwaway group
    /// id (it never joins: partitions are assigned, since a group join
    /// takes ~20 s on Tansu).
    fn consumer(&self, group: &str, read_committed: bool) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .unwrap_or_else(|e| panic!("cannot create an rdkafka consumer: {e}"))
    }

    /// Every record of `topic` a read_committed consumer sees now, by
    /// partition then offset: each partition is read from the beginning
    /// until the consumer reports its end (`enable.partition.eof`; with
    /// read_committed that is the last stable offset, so an open
    /// transaction's records and all after them are not read). Panics
    /// after 30 s.
    ///
    /// The end is the fetch's, not ListOffsets' (`fetch_watermarks`):
    /// Tansu 0.6 answers ListOffsets LATEST with the last batch's base
    /// offset + 1 (short of the end when that batch holds several
    /// records), and with 0 under read_committed while a transaction is
    /// open; its fetch answers carry the right high watermark and last
    /// stable offset, which librdkafka's EOF rests on.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer = self.consumer("spyglass-test-read-all", true);
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| self.fail(&format!("metadata of {topic}: {e}")));
        let parts: Vec<i32> = meta
            .topics()
            .iter()
            .find(|m| m.name() == topic)
            .map(|m| m.partitions().iter().map(MetadataPartition::id).collect())
            .unwrap_or_default();
        if parts.is_empty() {
            self.fail(&format!("topic {topic} has no partitions (does it exist?)"));
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        self.poll_to_end(&consumer, topic, &parts)
    }

    /// Poll `consumer` until each of `parts` reported its end.
    fn poll_to_end(&self, consumer: &BaseConsumer, topic: &str, parts: &[i32]) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut open: BTreeSet<i32> = parts.iter().copied().collect();
        let mut records = Vec::new();
        while !open.is_empty() {
            if Instant::now() > deadline {
                self.fail(&format!(
                    "reading {topic} back did not end within 30 s: {} records, \
                     partitions {open:?} not at their end",
                    records.len()
                ));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => records.push(record(&m)),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => self.fail(&format!("reading {topic} back: {e}")),
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }
}

/// A consumed message as a [`Record`].
fn record(m: &BorrowedMessage<'_>) -> Record {
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.proxy.stop();
    }
}

/// The proxy's shared state.
#[derive(Default)]
struct ProxyState {
    /// New connections are refused until then.
    cut_until: Option<Instant>,
    /// Both sockets of every open forwarded connection, by id.
    open: HashMap<u64, (TcpStream, TcpStream)>,
}

/// A loopback TCP forwarder 127.0.0.1:port -> 127.0.0.1:target, a thread
/// per direction per connection (also used to move an agent between
/// collector replicas: [`Proxy::retarget`]).
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    stopped: Arc<AtomicBool>,
    target: Arc<std::sync::atomic::AtomicU16>,
}

fn lock(m: &Mutex<ProxyState>) -> MutexGuard<'_, ProxyState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Kafka proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        let target = Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (st, stop, to) = (state.clone(), stopped.clone(), target.clone());
        std::thread::spawn(move || {
            let ids = AtomicU64::new(0);
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                // checked and registered under one lock, so that a cut
                // closes every connection it did not refuse
                let mut state = lock(&st);
                if state.cut_until.is_some_and(|t| Instant::now() < t) {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    continue;
                }
                let id = ids.fetch_add(1, Ordering::SeqCst);
                state.open.insert(
                    id,
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                );
                drop(state);
                forward(id, client, server, &st);
            }
        });
        Proxy {
            port,
            state,
            stopped,
            target,
        }
    }

    /// Forward new connections to `target`, and close the open ones (their
    /// clients reconnect, to `target`).
    pub fn retarget(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        for (_, (a, b)) in lock(&self.state).open.drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    pub fn cut(&self, d: Duration) {
        let mut st = lock(&self.state);
        st.cut_until = Some(Instant::now() + d);
        for (_, (a, b)) in st.open.drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // wake the accept loop so that it sees the flag
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for (_, (a, b)) in lock(&self.state).open.drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copy both ways between `client` and `server` until either side ends;
/// then close both and forget connection `id`.
fn forward(id: u64, client: TcpStream, server: TcpStream, st: &Arc<Mutex<ProxyState>>) {
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        let st = st.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            lock(&st).open.remove(&id);
        });
    }
}

// --- A broker that requires authentication (SASL) ---

/// A SCRAM-SHA-512 login, and the librdkafka properties that make it.
#[derive(Debug, Clone)]
pub struct Scram {
    pub user: String,
    pub password: String,
}

impl Scram {
    pub const MECHANISM: &'static str = "SCRAM-SHA-512";

    pub fn new(user: &str, password: &str) -> Scram {
        Scram {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// The librdkafka properties that log in as this user.
    pub fn properties(&self) -> [(&'static str, &str); 4] {
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", Self::MECHANISM),
            ("sasl.username", self.user.as_str()),
            ("sasl.password", self.password.as_str()),
        ]
    }

    /// [`Scram::properties`] as a `--kafka-config` file's text.
    pub fn config_file(&self) -> String {
        self.properties()
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

impl Broker {
    /// Start Tansu with `--authentication` (memory storage, behind a
    /// proxy, log in `scratch/tansu-auth.log`): it refuses every SCRAM
    /// login (`e=unknown-user`), as Kafka refuses a wrong password. Tansu
    /// 0.6's memory storage keeps no SCRAM users (storing one succeeds and
    /// keeps nothing, a lookup finds none), so no login can succeed on it;
    /// and its PLAIN checks no password (by its source), so tests log in
    /// with SCRAM. Returns once the broker listens; the
    /// harness's own clients cannot use it (no metadata, no reads).
    pub fn start_authenticated(scratch: &Path) -> Broker {
        let broker = Broker::spawn(scratch, "tansu-auth", true);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", broker.port)).is_err() {
            if Instant::now() > deadline {
                broker.fail("Tansu --authentication did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }
}
