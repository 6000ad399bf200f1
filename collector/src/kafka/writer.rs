//! The one task that owns the Kafka producer: it reads the positions at
//! start, then commits the queued batches in transactions (group commit).
use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
    ClientConfig, ClientContext,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use std::collections::HashMap;

use super::{
    gate::Gate,
    limits, positions,
    recover::{self, Recovered},
    ClaimRequest, Health, Pending, Settings, Sink,
};

/// Most bytes of rendered lines one transaction takes.
const GROUP_BYTES: usize = 16 << 20;
/// The producer's transaction.timeout.ms (a broker aborts a transaction
/// open longer; it bounds how long a dead collector's open transaction
/// holds read_committed consumers).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one record may wait for its delivery (message.timeout.ms):
/// past it the transaction is aborted and its batches are resent.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Times a commit that failed with a retriable error is tried again.
const COMMIT_TRIES: u32 = 5;

/// Logs librdkafka's errors (unreachable brokers, authentication) and
/// shows the last one in `/readyz`.
struct Context {
    health: Arc<Health>,
    /// `user U (MECHANISM)`, for a refused login.
    login: String,
}

impl Context {
    fn new(health: &Arc<Health>, s: &Settings) -> Self {
        let user = s
            .extra
            .get("sasl.username")
            .map_or("(none)", String::as_str);
        let mechanism = s
            .extra
            .get("sasl.mechanism")
            .map_or("GSSAPI", String::as_str);
        Context {
            health: health.clone(),
            login: format!("user {user} ({mechanism})"),
        }
    }
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            let why = format!(
                "the brokers refused the SASL login of {}: {reason}; check sasl.username and \
                 sasl.password in --kafka-config",
                self.login
            );
            warn!(error = %why, "kafka login refused");
            self.health.login_refused(&why);
            self.health.set_down(why);
            return;
        }
        warn!(error = %error, reason, "kafka client error");
        if matches!(
            code,
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::SSL)
        ) && !self.health.login_was_refused()
        {
            // after a refused login every broker is "down": the refusal
            // is what to show
            self.health.set_down(reason.to_owned());
        }
    }
}

type Kafka = FutureProducer<Context>;

/// Why a transaction did not commit; `fatal`: the producer must be made
/// anew.
#[derive(Debug)]
struct Failure {
    why: String,
    fatal: bool,
    /// It failed once the commit was asked for: the transaction may have
    /// committed all the same (a commit that timed out, then an abort
    /// refused).
    committing: bool,
    /// With `committing`: the gate's verdict on the group's batches
    /// (which were left out of the commit that may have gone through).
    fenced: Vec<bool>,
}

impl Failure {
    fn of(what: &str, e: &KafkaError) -> Self {
        let fatal = match e {
            KafkaError::Transaction(t) => t.is_fatal(),
            _ => false,
        };
        Failure {
            why: format!("{what}: {e}"),
            fatal,
            committing: what == "commit",
            fenced: Vec::new(),
        }
    }
}

/// Run a blocking producer call off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(KafkaError::Canceled).inspect_err(|_| warn!(error = %e, "kafka call panicked"))
    })
}

fn producer_config(s: &Settings, max_message: usize) -> ClientConfig {
    let mut c = ClientConfig::new();
    // defaults a site may change: batch for 5 ms, and after an outage
    // try the brokers again within a second (librdkafka's default backs
    // off to 10 s)
    c.set("linger.ms", "5")
        .set("reconnect.backoff.max.ms", "1000");
    for (k, v) in &s.extra {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &s.brokers)
        .set("client.id", &s.transactional_id)
        .set("transactional.id", &s.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("allow.auto.create.topics", "false")
        .set(
            "transaction.timeout.ms",
            TXN_TIMEOUT.as_millis().to_string(),
        )
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("message.max.bytes", max_message.to_string());
    c
}

/// A transactional producer, initialised (which fences an older producer
/// of the same transactional.id and aborts its open transaction).
async fn new_producer(s: &Settings, sink: &Sink) -> Result<Kafka, String> {
    let p: Kafka = producer_config(s, sink.producer_max())
        .create_with_context(Context::new(&sink.health, s))
        .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
    let init = p.clone();
    blocking(move || init.init_transactions(Duration::from_secs(30)))
        .await
        .map_err(|e| {
            format!(
                "initialising transactions (transactional.id {}) at {}: {e}",
                s.transactional_id, s.brokers
            )
        })?;
    Ok(p)
}

/// Connect, check the topics, read the positions and recover what an
/// aborted transaction left.
async fn start_up(s: &Settings, sink: &Arc<Sink>) -> Result<(Kafka, Gate, Recovered), String> {
    // the producer first: its client reports a refused login (an admin
    // client's request only times out)
    let built_for = sink.producer_max();
    let mut p = new_producer(s, sink).await?;
    read_limit(s, sink).await?;
    if sink.producer_max() != built_for {
        // a topic takes smaller records: a producer that batches to it
        let old = std::mem::replace(&mut p, new_producer(s, sink).await?);
        tokio::task::spawn_blocking(move || drop(old));
    }
    let settings = s.clone();
    let sink = sink.clone();
    let read = tokio::task::spawn_blocking(move || {
        let c = positions::consumer(&settings, "earliest")?;
        let mut topics = vec![settings.topic.as_str()];
        topics.extend(settings.findings_topic.as_deref());
        for t in topics {
            positions::partitions(&c, t, Duration::from_secs(10))?;
        }
        let parts = positions::partitions(&c, &settings.positions_topic, Duration::from_secs(10))?;
        sink.positions_partitions
            .store(parts.len() as i32, std::sync::atomic::Ordering::Relaxed);
        // the tail starts before the positions are read: a claim made
        // meanwhile is not missed
        let gate = Gate::new(&settings)?;
        let (marks, skipped) = positions::read(&settings)?;
        recover::scan(&settings, marks).map(|r| (gate, r, skipped))
    })
    .await
    .map_err(|e| format!("reading the positions: {e}"))?;
    let (gate, recovered, skipped) = read.map_err(|e| e.to_string())?;
    if skipped > 0 {
        warn!(topic = %s.positions_topic, skipped, "records of the positions topic that are not positions were skipped");
    }
    if recovered.whole + recovered.partial.len() > 0 {
        // never on a broker that hides aborted transactions
        warn!(whole = recovered.whole, torn = recovered.partial.len(),
            "kafka holds records of batches past their streams' positions (an aborted transaction the broker let through): \
             whole ones count as written, torn ones get only their missing lines");
    }
    info!(topic = %s.positions_topic, streams = recovered.marks.len(),
        torn_batches = recovered.partial.len(), "kafka positions read");
    Ok((p, gate, recovered))
}

/// Enqueue one record, waiting while librdkafka's queue is full.
async fn send(
    p: &Kafka,
    mut rec: FutureRecord<'_, str, [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match p.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Wait for every record's delivery (acks=all): where each one landed.
async fn delivered(futs: Vec<DeliveryFuture>) -> Result<Vec<(i32, i64)>, KafkaError> {
    let mut at = Vec::with_capacity(futs.len());
    for f in futs {
        match f.await {
            Ok(Ok(d)) => at.push((d.partition, d.offset)),
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(at)
}

/// The headers recovery reads a record's place in its batch from
/// (whatever the payload's format).
fn headers(b: &Pending, index: usize) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: recover::NODE,
            value: Some(b.batch.node.as_str()),
        })
        .insert(Header {
            key: recover::STREAM,
            value: Some(b.batch.stream.as_str()),
        })
        .insert(Header {
            key: recover::SEQUENCE,
            value: Some(&b.batch.sequence.to_string()),
        })
        .insert(Header {
            key: recover::INDEX,
            value: Some(&index.to_string()),
        })
        .insert(Header {
            key: recover::COUNT,
            value: Some(&b.count().to_string()),
        })
}

/// A record for the claims partition.
fn to_claims<'a>(s: &'a Settings, key: &'a str, value: &'a [u8]) -> FutureRecord<'a, str, [u8]> {
    FutureRecord::to(s.positions_topic.as_str())
        .partition(positions::CLAIMS_PARTITION)
        .key(key)
        .payload(value)
}

/// The transaction's records in the claims partition: its mark (when it
/// carries batches), then the claims. Their offsets.
async fn produce_turn(
    p: &Kafka,
    s: &Settings,
    mark: bool,
    claims: &[ClaimRequest],
) -> Result<(Option<i64>, Vec<i64>), KafkaError> {
    let mut futs = Vec::new();
    if mark {
        let m = positions::Mark {
            txn: s.transactional_id.clone(),
        };
        let (key, value) = (m.key(), m.value());
        futs.push(send(p, to_claims(s, &key, &value)).await?);
    }
    for c in claims {
        let claim = positions::Claim {
            claim: c.node.clone(),
            owner: s.transactional_id.clone(),
        };
        let (key, value) = (claim.key(), claim.value());
        futs.push(send(p, to_claims(s, &key, &value)).await?);
    }
    let mut at: Vec<i64> = delivered(futs).await?.into_iter().map(|(_, o)| o).collect();
    let mark = mark.then(|| at.remove(0));
    Ok((mark, at))
}

/// Produce `group`'s records and positions: how many records.
async fn produce(
    p: &Kafka,
    s: &Settings,
    parts: i32,
    group: &[&Pending],
) -> Result<usize, KafkaError> {
    let mut futs = Vec::new();
    // (batch, topic) of each record
    let mut whose = Vec::new();
    for (i, b) in group.iter().enumerate() {
        for (index, line, finding) in b.records() {
            let topic = match (&s.findings_topic, finding) {
                (Some(t), true) => t.as_str(),
                _ => s.topic.as_str(),
            };
            let rec = FutureRecord::to(topic)
                .key(b.batch.node.as_str())
                .payload(line)
                .headers(headers(b, index));
            futs.push(send(p, rec).await?);
            whose.push((i, topic));
        }
    }
    let records = futs.len();
    let at = delivered(futs).await?;
    let marks = marks_of(group, whose, at);
    let mut futs = Vec::new();
    for m in &marks {
        let (key, value) = (m.key(), m.value());
        futs.push(
            send(
                p,
                FutureRecord::to(s.positions_topic.as_str())
                    .partition(positions::partition_of(&m.node, parts))
                    .key(key.as_str())
                    .payload(value.as_slice()),
            )
            .await?,
        );
    }
    delivered(futs).await?;
    Ok(records)
}

/// The group's positions, with where each stream's records end
/// (recovery reads on from there): `whose` is (batch, topic) of each
/// record, `at` where it landed.
fn marks_of(
    group: &[&Pending],
    whose: Vec<(usize, &str)>,
    at: Vec<(i32, i64)>,
) -> Vec<positions::Position> {
    let mut marks = positions::of_group(group.iter().map(|b| {
        (
            b.batch.node.as_str(),
            b.batch.stream.as_str(),
            b.batch.sequence,
        )
    }));
    let index: HashMap<(&str, &str), usize> = marks
        .iter()
        .enumerate()
        .map(|(i, m)| ((m.node.as_str(), m.stream.as_str()), i))
        .collect();
    // each batch's position, found once
    let mark_of: Vec<Option<usize>> = group
        .iter()
        .map(|b| {
            index
                .get(&(b.batch.node.as_str(), b.batch.stream.as_str()))
                .copied()
        })
        .collect();
    drop(index);
    for ((i, topic), (partition, offset)) in whose.into_iter().zip(at) {
        if let Some(m) = mark_of[i] {
            marks[m].advance(topic, partition, offset + 1);
        }
    }
    marks
}

/// Hold lines to the topics' `max.message.bytes` where it is below the
/// flag's limit (`limits.rs`).
async fn read_limit(s: &Settings, sink: &Sink) -> Result<(), String> {
    let mut topics = vec![s.topic.as_str()];
    topics.extend(s.findings_topic.as_deref());
    let context = Context::new(&sink.health, s);
    let found = limits::read(s, &topics, context)
        .await
        .map_err(|e| e.to_string())?;
    let limit = limits::combine(s.max_record_bytes, &found);
    if let Some((topic, max)) = &limit.topic {
        warn!(%topic, max_message_bytes = max, line_bytes = limit.line_bytes,
            flag = s.max_record_bytes,
            "a topic takes smaller records than --kafka-max-record-bytes: events over its limit are refused to their agents");
    }
    sink.set_limit(limit);
    Ok(())
}

/// Commit, retrying a retriable failure.
async fn commit(p: &Kafka) -> Result<(), Failure> {
    for _ in 0..COMMIT_TRIES {
        let c = p.clone();
        match blocking(move || c.commit_transaction(TXN_TIMEOUT)).await {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t)) if t.is_retriable() => {
                warn!(error = %t, "kafka commit failed; retrying");
            }
            Err(e) => return Err(Failure::of("commit", &e)),
        }
    }
    Err(Failure {
        why: format!("commit: still failing after {COMMIT_TRIES} tries"),
        fatal: false,
        committing: true,
        fenced: Vec::new(),
    })
}

/// What a committed transaction did.
struct Committed {
    records: usize,
    /// Each claim's offset, in order.
    claims: Vec<i64>,
    /// Per batch of the group: fenced, so left out (`gate.rs`).
    fenced: Vec<bool>,
}

type SharedGate = Arc<std::sync::Mutex<Gate>>;

/// One transaction: begin, produce, commit; aborted on failure.
async fn transact(
    p: &Kafka,
    s: &Settings,
    parts: i32,
    group: &[Pending],
    claims: &[ClaimRequest],
    gate: &SharedGate,
) -> Result<Committed, Failure> {
    p.begin_transaction()
        .map_err(|e| Failure::of("begin", &e))?;
    let result = attempt(p, s, parts, group, claims, gate).await;
    let Err(mut f) = result else { return result };
    if !f.fatal {
        let a = p.clone();
        if let Err(e) = blocking(move || a.abort_transaction(Duration::from_secs(30))).await {
            warn!(error = %e, "kafka abort failed; making a new producer");
            f.fatal = true;
        }
    }
    Err(f)
}

/// The open transaction's mark and claims, the gate, the batches it
/// passed, the commit.
async fn attempt(
    p: &Kafka,
    s: &Settings,
    parts: i32,
    group: &[Pending],
    claims: &[ClaimRequest],
    gate: &SharedGate,
) -> Result<Committed, Failure> {
    let (mark, claim_at) = produce_turn(p, s, !group.is_empty(), claims)
        .await
        .map_err(|e| Failure::of("produce", &e))?;
    let fenced = match mark {
        Some(mark) => judge(gate, mark, group).await?,
        None => vec![false; group.len()],
    };
    let live: Vec<&Pending> = group
        .iter()
        .zip(&fenced)
        .filter(|(_, &f)| !f)
        .map(|(b, _)| b)
        .collect();
    let records = produce(p, s, parts, &live)
        .await
        .map_err(|e| Failure::of("produce", &e))?;
    commit(p).await.map_err(|mut f| {
        f.fenced.clone_from(&fenced);
        f
    })?;
    Ok(Committed {
        records,
        claims: claim_at,
        fenced,
    })
}

/// Per batch of `group`: its node was claimed again since the batch's
/// claim (read up to the transaction's `mark`).
async fn judge(gate: &SharedGate, mark: i64, group: &[Pending]) -> Result<Vec<bool>, Failure> {
    let batches: Vec<(String, Option<i64>)> = group
        .iter()
        .map(|b| (b.batch.node.clone(), b.claim))
        .collect();
    let gate = gate.clone();
    tokio::task::spawn_blocking(move || {
        let claimed: Vec<(&str, i64)> = batches
            .iter()
            .filter_map(|(n, c)| Some((n.as_str(), (*c)?)))
            .collect();
        let mut verdict = gate
            .lock()
            .expect("kafka gate lock")
            .fenced(mark, &claimed)?
            .into_iter();
        // a batch without a claim is not fenced
        Ok(batches
            .iter()
            .map(|(_, c)| c.is_some() && verdict.next().unwrap_or(false))
            .collect())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r: Result<Vec<bool>, positions::PositionsError>| r.map_err(|e| e.to_string()))
    .map_err(|why| Failure {
        why: format!("reading the claims before committing: {why}"),
        fatal: false,
        committing: false,
        fenced: Vec::new(),
    })
}

/// Whether every topic answers its metadata: then the output is up.
async fn probe(p: &Kafka, s: &Settings, health: &Health) {
    let client = p.clone();
    let mut topics = vec![s.topic.clone(), s.positions_topic.clone()];
    topics.extend(s.findings_topic.clone());
    let found = tokio::task::spawn_blocking(move || {
        topics.iter().try_for_each(|t| {
            let md = client
                .client()
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .map_err(|e| format!("metadata of topic {t}: {e}"))?;
            match md.topics().iter().find(|m| m.name() == t) {
                Some(m) if m.error().is_none() && !m.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic {t} does not exist")),
            }
        })
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match found {
        Ok(()) => {
            info!("kafka answers again");
            health.set_up();
        }
        Err(why) => health.set_down(why),
    }
}

/// Doubling delay between tries, 100 ms to 10 s.
struct Backoff(Duration);

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }
}

pub async fn run(sink: Arc<Sink>, s: Settings, positions: oneshot::Sender<Recovered>) {
    let health = sink.health.clone();
    let mut backoff = Backoff(Duration::from_millis(100));
    let (mut producer, gate) = loop {
        match start_up(&s, &sink).await {
            Ok((p, gate, marks)) => {
                let _ = positions.send(marks);
                health.set_up();
                break (Some(p), Arc::new(std::sync::Mutex::new(gate)));
            }
            Err(why) => {
                // a refused login shows as a timeout of what waited for it
                let why = health.explain(why);
                warn!(error = %why, brokers = %s.brokers, "kafka not ready; retrying");
                health.set_down(why);
                backoff.wait().await;
            }
        }
    };
    let mut w = Writer {
        sink,
        s,
        gate,
        backoff: Backoff(Duration::from_millis(100)),
    };
    loop {
        // Down with nothing to commit: check that Kafka answers again,
        // so /readyz clears without a batch (not ready keeps batches away)
        if !health.up() && w.sink.queue.idle() {
            producer = ready_producer(producer, &w.s, &w.sink).await;
            if let Some(p) = &producer {
                probe(p, &w.s, &health).await;
            }
        }
        let group = tokio::select! {
            g = w.sink.queue.take(GROUP_BYTES) => g,
            () = w.sink.claim_wake.notified() => Vec::new(),
            () = tokio::time::sleep(Duration::from_secs(1)) => Vec::new(),
        };
        let claims = w.sink.take_claims();
        if group.is_empty() && claims.is_empty() {
            continue;
        }
        producer = w.commit(producer, &group, claims).await;
    }
}

/// The writer task's state between transactions.
struct Writer {
    sink: Arc<Sink>,
    s: Settings,
    gate: SharedGate,
    backoff: Backoff,
}

impl Writer {
    /// Commit `group` and `claims`, retrying until it commits: a stream's
    /// batches commit in order and none is skipped (positions are
    /// high-water marks, so a later batch committed after an earlier one
    /// failed would hide the failed one from every replica's dedupe).
    /// Agents wait for their acks meanwhile; /readyz says why. Fenced
    /// batches are refused to their agents (they resend them).
    async fn commit(
        &mut self,
        mut producer: Option<Kafka>,
        group: &[Pending],
        claims: Vec<ClaimRequest>,
    ) -> Option<Kafka> {
        let (sink, s, health) = (&self.sink, &self.s, &self.sink.health);
        // the gate's verdict of a commit that may have gone through
        let mut uncertain: Option<Vec<bool>> = None;
        loop {
            producer = ready_producer(producer, s, sink).await;
            let Some(p) = producer.clone() else {
                self.backoff.wait().await;
                continue;
            };
            let parts = sink.positions_partitions.load(Ordering::Relaxed);
            if let Some(mut fenced) = uncertain.take() {
                // the new producer's init finished the old transaction
                // either way: the positions of the batches it carried (all
                // but the fenced ones) say which
                fenced.resize(group.len(), false);
                let carried: Vec<&Pending> = group
                    .iter()
                    .zip(&fenced)
                    .filter(|(_, &f)| !f)
                    .map(|(b, _)| b)
                    .collect();
                match committed_already(s, parts, &carried).await {
                    Ok(true) => {
                        info!(
                            batches = carried.len(),
                            "the commit that failed had committed; not sent again"
                        );
                        health.committed(0, carried.len(), Duration::ZERO);
                        settle(sink, group, &fenced);
                        // the claims' offsets are not known: dropping the
                        // requests refuses their streams, which claim anew
                        drop(claims);
                        return producer;
                    }
                    Ok(false) => {}
                    Err(why) => {
                        health.set_down(why);
                        uncertain = Some(fenced);
                        self.backoff.wait().await;
                        continue;
                    }
                }
            }
            let t = Instant::now();
            health.in_txn(true);
            let result = transact(&p, s, parts, group, &claims, &self.gate).await;
            health.in_txn(false);
            match result {
                Ok(done) => {
                    let live = done.fenced.iter().filter(|&&f| !f).count();
                    health.committed(done.records, live, t.elapsed());
                    settle(sink, group, &done.fenced);
                    for (c, at) in claims.into_iter().zip(done.claims) {
                        let _ = c.done.send(at);
                    }
                    self.backoff = Backoff(Duration::from_millis(100));
                    return producer;
                }
                Err(f) => {
                    warn!(error = %f.why, batches = group.len(), fatal = f.fatal,
                        "kafka transaction failed; retrying it (its batches are not acked meanwhile)");
                    health.aborts.fetch_add(1, Ordering::Relaxed);
                    health.set_down(f.why.clone());
                    if f.fatal {
                        // librdkafka's teardown blocks: not on the runtime
                        let old = producer.take();
                        tokio::task::spawn_blocking(move || drop(old));
                        // a commit that timed out may have gone through
                        uncertain = f.committing.then_some(f.fenced);
                    }
                    self.backoff.wait().await;
                }
            }
        }
    }
}

/// Decide `group` once committed: fenced batches refused (their agents
/// resend them to the replica that holds their node now), the rest acked.
fn settle(sink: &Sink, group: &[Pending], fenced: &[bool]) {
    let n = fenced.iter().filter(|&&f| f).count();
    if n > 0 {
        sink.health
            .fenced_batches
            .fetch_add(n as u64, Ordering::Relaxed);
        info!(batches = n, "batches of nodes another stream claimed since were left out (fenced); their agents resend them");
    }
    sink.queue.decided_each(group, |i| {
        if fenced[i] {
            Err("the node's batches moved to another collector stream (fenced): resend".to_owned())
        } else {
            Ok(())
        }
    });
}

/// Whether Kafka already holds `group`: every stream's committed
/// position is at or past its batches (records and positions commit in
/// one transaction, so this is exact).
async fn committed_already(s: &Settings, parts: i32, group: &[&Pending]) -> Result<bool, String> {
    let want = positions::of_group(group.iter().map(|b| {
        (
            b.batch.node.as_str(),
            b.batch.stream.as_str(),
            b.batch.sequence,
        )
    }));
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let mut nodes: Vec<&str> = want.iter().map(|m| m.node.as_str()).collect();
        nodes.dedup();
        let mut have = Vec::new();
        for node in nodes {
            have.extend(positions::read_node(&s, node, parts, None).map_err(|e| e.to_string())?);
        }
        Ok(want.iter().all(|w| {
            have.iter()
                .any(|h| h.node == w.node && h.stream == w.stream && h.sequence >= w.sequence)
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `producer`, or a new one when there is none (`None` while Kafka does
/// not answer; /readyz says why).
async fn ready_producer(producer: Option<Kafka>, s: &Settings, sink: &Sink) -> Option<Kafka> {
    if producer.is_some() {
        return producer;
    }
    let health = &sink.health;
    match new_producer(s, sink).await {
        Ok(p) => {
            health.producer_restarts.fetch_add(1, Ordering::Relaxed);
            Some(p)
        }
        Err(why) => {
            let why = health.explain(why);
            warn!(error = %why, "kafka producer not ready; retrying");
            health.set_down(why);
            None
        }
    }
}
