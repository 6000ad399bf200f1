//! The Kafka output's settings: command-line flags, and a librdkafka
//! properties file for what a site adds (TLS, SASL, tuning).
use std::{collections::BTreeMap, path::PathBuf};

/// Properties the collector sets itself: a properties file that sets
/// one would weaken the delivery guarantee (or point it elsewhere).
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "allow.auto.create.topics",
    "message.max.bytes",
    "isolation.level",
    "enable.auto.commit",
    "group.id",
];

/// Properties whose values are secrets: never logged.
const SECRET: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the Kafka properties file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Kafka properties file {path}, line {line}: expected `key=value` \
         (librdkafka property names, for example security.protocol=SSL)"
    )]
    Syntax { path: PathBuf, line: usize },
    #[error(
        "Kafka properties file {path}, line {line}: `{key}` is set by the collector \
         (its delivery guarantee rests on it); use the --kafka-* flags instead, or remove the line"
    )]
    Reserved {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("--kafka-transactional-id must be 1 to 200 characters of [A-Za-z0-9._-], got {0:?}")]
    TransactionalId(String),
    #[error("--kafka-brokers is empty: give HOST:PORT[,HOST:PORT...]")]
    NoBrokers,
    #[error("the Kafka topic names must differ: {0} is used twice")]
    SameTopic(String),
}

/// Publish every event and finding to Kafka (docs/siem.md).
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Publish to Kafka instead of the output file: bootstrap brokers,
    /// HOST:PORT[,HOST:PORT...]. A batch is acked to its agent only once
    /// Kafka committed every record of it (acks=all, idempotent,
    /// transactional producer).
    #[arg(long = "kafka-brokers", conflicts_with = "output")]
    pub brokers: Option<String>,
    /// Topic for events (and findings, unless --kafka-findings-topic);
    /// records are keyed by node, so a node's events stay in order.
    #[arg(long = "kafka-topic", default_value = "spyglass-events")]
    pub topic: String,
    /// Topic for findings; default: the events topic.
    #[arg(long = "kafka-findings-topic")]
    pub findings_topic: Option<String>,
    /// Topic of each agent stream's last committed batch (the dedupe
    /// state, written in the same transaction as the records): create it
    /// with cleanup.policy=compact.
    #[arg(long = "kafka-positions-topic", default_value = "spyglass-positions")]
    pub positions_topic: String,
    /// The producer's transactional.id: stable per replica (a
    /// StatefulSet pod's name) and never shared by two running
    /// collectors. Default: the host name.
    #[arg(
        long = "kafka-transactional-id",
        env = "SPYGLASS_KAFKA_TRANSACTIONAL_ID"
    )]
    pub transactional_id: Option<String>,
    /// Most memory the batches waiting for Kafka may hold, MiB; past it
    /// streams are not read (agents keep their batches in their spools).
    #[arg(long = "kafka-queue-mib", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub queue_mib: u64,
    /// Largest record, bytes (the broker's message.max.bytes): a batch
    /// with an event rendering larger is refused (INVALID_ARGUMENT).
    #[arg(long = "kafka-max-record-bytes", default_value_t = 1_000_000)]
    pub max_record_bytes: usize,
    /// The broker shows read_committed consumers the records of aborted
    /// transactions (Tansu 0.6; never Apache Kafka): then, at start and
    /// before each new agent stream, read past each stream's position for
    /// records an aborted transaction left, so their batches are not
    /// written twice. Off: nothing is read past a position.
    #[arg(long = "kafka-recover-aborted")]
    pub recover_aborted: bool,
    /// librdkafka properties file (`key=value` lines, `#` comments) for
    /// TLS, SASL and tuning: security.protocol, ssl.ca.location,
    /// sasl.mechanism, sasl.username, sasl.password, ...
    #[arg(long = "kafka-config")]
    pub config: Option<PathBuf>,
}

/// The settings the Kafka output runs with.
#[derive(Clone)]
pub struct Settings {
    pub brokers: String,
    pub topic: String,
    pub findings_topic: Option<String>,
    pub positions_topic: String,
    pub transactional_id: String,
    pub queue_bytes: usize,
    pub max_record_bytes: usize,
    /// --kafka-recover-aborted.
    pub recover_aborted: bool,
    /// From --kafka-config.
    pub extra: BTreeMap<String, String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET.contains(&k.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Settings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("findings_topic", &self.findings_topic)
            .field("positions_topic", &self.positions_topic)
            .field("transactional_id", &self.transactional_id)
            .field("queue_bytes", &self.queue_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("recover_aborted", &self.recover_aborted)
            .field("extra", &extra)
            .finish()
    }
}

/// Parse a librdkafka properties file.
pub fn parse_properties(
    path: &std::path::Path,
    text: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || ConfigError::Syntax {
            path: path.to_owned(),
            line: i + 1,
        };
        let (k, v) = line.split_once('=').ok_or_else(syntax)?;
        let key = k.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Err(syntax());
        }
        if RESERVED.contains(&key) {
            return Err(ConfigError::Reserved {
                path: path.to_owned(),
                line: i + 1,
                key: key.to_owned(),
            });
        }
        out.insert(key.to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn valid_id(id: &str) -> bool {
    (1..=200).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl KafkaArgs {
    /// The settings, when --kafka-brokers is given.
    pub fn settings(&self) -> Result<Option<Settings>, ConfigError> {
        let Some(brokers) = &self.brokers else {
            return Ok(None);
        };
        if brokers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        let id = self
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("spyglass-{}", host_name()));
        if !valid_id(&id) {
            return Err(ConfigError::TransactionalId(id));
        }
        let mut topics = vec![&self.topic, &self.positions_topic];
        topics.extend(self.findings_topic.as_ref());
        for (i, t) in topics.iter().enumerate() {
            if topics[..i].contains(t) {
                return Err(ConfigError::SameTopic((*t).clone()));
            }
        }
        let extra = match &self.config {
            None => BTreeMap::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                parse_properties(p, &text)?
            }
        };
        Ok(Some(Settings {
            brokers: brokers.trim().to_owned(),
            topic: self.topic.clone(),
            findings_topic: self.findings_topic.clone(),
            positions_topic: self.positions_topic.clone(),
            transactional_id: id,
            queue_bytes: usize::try_from(self.queue_mib << 20).unwrap_or(usize::MAX),
            max_record_bytes: self.max_record_bytes.max(1024),
            recover_aborted: self.recover_aborted,
            extra,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn properties_parse_and_reserved_keys_are_refused() {
        let p = Path::new("k.properties");
        let got = parse_properties(
            p,
            "# site\nsecurity.protocol = SASL_SSL\n\nsasl.password=a=b\n",
        )
        .unwrap();
        assert_eq!(got["security.protocol"], "SASL_SSL");
        assert_eq!(got["sasl.password"], "a=b");
        let e = parse_properties(p, "acks=1\n").unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("`acks` is set by the collector"),
            "{e}"
        );
        let e = parse_properties(p, "x\n").unwrap_err().to_string();
        assert!(e.contains("line 1: expected `key=value`"), "{e}");
    }

    #[test]
    fn secrets_are_not_shown() {
        let s = Settings {
            brokers: "b:9092".into(),
            topic: "t".into(),
            findings_topic: None,
            positions_topic: "p".into(),
            transactional_id: "x".into(),
            queue_bytes: 1,
            max_record_bytes: 1,
            recover_aborted: false,
            extra: [("sasl.password".to_owned(), "hunter2".to_owned())].into(),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn ids_and_topics_are_checked() {
        assert!(valid_id("spyglass-collector-0"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(""));
        let args = KafkaArgs {
            brokers: Some("b:1".into()),
            topic: "t".into(),
            findings_topic: Some("t".into()),
            positions_topic: "p".into(),
            transactional_id: Some("r0".into()),
            queue_mib: 1,
            max_record_bytes: 1,
            recover_aborted: false,
            config: None,
        };
        assert!(matches!(args.settings(), Err(ConfigError::SameTopic(t)) if t == "t"));
    }
}
