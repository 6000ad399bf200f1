//! The largest record the topics take: `--kafka-max-record-bytes`, or
//! less when a topic's `max.message.bytes` (read with DescribeConfigs at
//! start) is smaller. A batch with a line over it is refused to its
//! agent before it is produced: a record the broker refused would abort
//! its transaction, and the group would be retried forever.
use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::ClientContext,
    config::ClientConfig,
};
use spyglass_proto::limits::{MAX_NODE_ID_LEN, MAX_STREAM_ID_LEN};

use super::Settings;

/// Bytes a record batch of one line adds around it: the batch header
/// (61), the record's framing, the key (the node id) and the `sg.*`
/// headers (node, stream, sequence, index, count), at their longest.
pub const RECORD_OVERHEAD: usize = 61 + 32 + 2 * MAX_NODE_ID_LEN + MAX_STREAM_ID_LEN + 5 * 16 + 60;

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot create a Kafka admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("describing the configuration of topic {topic}: {source}")]
    Describe {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic}: max.message.bytes is {value:?}, not a number of bytes")]
    Value { topic: String, value: String },
}

/// The limit the collector holds lines to, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Most bytes of one rendered line.
    pub line_bytes: usize,
    /// The topic whose `max.message.bytes` set it (and that value), or
    /// `None`: the flag's.
    pub topic: Option<(String, usize)>,
}

impl Limit {
    /// The flag's limit (before the topics were read).
    pub fn of_flag(flag: usize) -> Self {
        Limit {
            line_bytes: flag,
            topic: None,
        }
    }

    /// What sets the limit, for the refusal an agent gets.
    pub fn source(&self) -> String {
        match &self.topic {
            Some((t, max)) => format!(
                "topic {t}'s max.message.bytes of {max} less {RECORD_OVERHEAD} bytes of record framing"
            ),
            None => "--kafka-max-record-bytes, the broker's message.max.bytes".to_owned(),
        }
    }

    /// The producer's `message.max.bytes`: one line and its framing.
    pub fn producer_max(&self) -> usize {
        self.line_bytes + RECORD_OVERHEAD
    }
}

/// The limit from the flag and each topic's `max.message.bytes` (`None`:
/// the broker did not say): the smallest.
pub fn combine(flag: usize, topics: &[(String, Option<usize>)]) -> Limit {
    let mut limit = Limit::of_flag(flag);
    for (topic, max) in topics {
        let Some(max) = *max else { continue };
        let line = max.saturating_sub(RECORD_OVERHEAD);
        if line < limit.line_bytes {
            limit = Limit {
                line_bytes: line,
                topic: Some((topic.clone(), max)),
            };
        }
    }
    limit
}

/// Each of `topics`' `max.message.bytes`, as the brokers describe it;
/// `context` sees the client's errors (a refused login).
pub async fn read<C: ClientContext + 'static>(
    s: &Settings,
    topics: &[&str],
    context: C,
) -> Result<Vec<(String, Option<usize>)>, LimitsError> {
    let mut c = ClientConfig::new();
    for (k, v) in &s.extra {
        c.set(k, v);
    }
    let admin: AdminClient<C> = c
        .set("bootstrap.servers", &s.brokers)
        .create_with_context(context)
        .map_err(LimitsError::Client)?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let answers = admin
        .describe_configs(&specs, &opts)
        .await
        .map_err(|source| LimitsError::Describe {
            topic: topics.join(","),
            source,
        })?;
    let mut out = Vec::new();
    for (topic, answer) in topics.iter().zip(answers) {
        let describe = |source| LimitsError::Describe {
            topic: (*topic).to_owned(),
            source,
        };
        let resource =
            answer.map_err(|code| describe(rdkafka::error::KafkaError::AdminOp(code)))?;
        let max = match resource
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
        {
            None => None,
            Some(v) => Some(v.trim().parse::<usize>().map_err(|_| LimitsError::Value {
                topic: (*topic).to_owned(),
                value: v.to_owned(),
            })?),
        };
        out.push(((*topic).to_owned(), max));
    }
    drop(admin);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_topic_limit_wins_less_the_framing() {
        let flag = 1_000_000;
        assert_eq!(combine(flag, &[]), Limit::of_flag(flag));
        let topics = vec![
            ("events".to_owned(), Some(2_000_000)),
            ("findings".to_owned(), Some(4_000)),
            ("unknown".to_owned(), None),
        ];
        let got = combine(flag, &topics);
        assert_eq!(got.line_bytes, 4_000 - RECORD_OVERHEAD);
        assert_eq!(got.topic, Some(("findings".to_owned(), 4_000)));
        assert!(got
            .source()
            .contains("topic findings's max.message.bytes of 4000"));
        assert_eq!(got.producer_max(), 4_000);
        // a topic allowing more than the flag leaves the flag's limit
        let big = combine(flag, &topics[..1]);
        assert_eq!(big, Limit::of_flag(flag));
        // a limit below the framing refuses every line rather than wrap
        let tiny = combine(flag, &[("t".to_owned(), Some(10))]);
        assert_eq!(tiny.line_bytes, 0);
    }
}
