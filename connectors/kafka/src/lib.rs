//! Kafka sink for cutover: one topic per table (from a template), one message per row change,
//! keyed by the row's primary key, in cutover's JSON envelope or a Debezium-compatible one.
//!
//! Contract: the producer is idempotent with `acks=all`, so a write is durable when every message
//! of it is acknowledged by the in-sync replicas, and retries inside one producer session neither
//! duplicate nor reorder. Every change of one key goes to one partition (the key hashes to it),
//! in source order. Across a restart, changes after the last saved checkpoint are sent again:
//! delivery is at-least-once, and a consumer that keeps the latest message per key ends with the
//! source's state. A truncate is sent to every partition of the table's topic, so it is ordered
//! with the changes of every key.
//!
//! The sink's progress (checkpoint and copied tables) is saved, after the broker acknowledged
//! the messages it covers, in a local state file (`state_path`), as Kafka Connect's standalone
//! mode keeps its offsets in a file.

mod error;
pub mod group;
mod letters;
pub mod security;
mod state;
pub mod target;
pub mod verify;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::envelope::{Encoder, EnvelopeFormat, Op, TruncateMessages};
use cutover_core::event_sink::{EventSink, Routes, Transport};
use cutover_core::naming::{replace_disallowed, Template};
use cutover_core::outbox::Outgoing;
use cutover_core::{ConnectorError, Result, SinkState, TableName, TableSchema};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use cutover_core::dead_letters::{self, blocking, FileStore, Letter, LetterStore, Parking};
use cutover_core::ErrorKind;
pub use error::classify;
use state::StateFile;
use watch::Watch;

/// The sink's producer: its client context keeps librdkafka's refusals (see [`Watch`]).
pub(crate) type SinkProducer = FutureProducer<Watch>;

/// How long to wait for the brokers when connecting and creating topics.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of one Kafka sink. `Debug` leaves out the property values (they may hold
/// `sasl.password` or `ssl.key.password`).
#[derive(Clone)]
pub struct KafkaSinkOptions {
    /// Names the sink in status output and logs.
    pub name: String,
    pub pipeline: String,
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic name per table.
    pub topic: Template,
    pub format: EnvelopeFormat,
    /// Follow each delete with a tombstone.
    pub tombstones: bool,
    /// How truncates are published.
    pub truncates: TruncateMessages,
    /// Partitions and replication factor of topics the sink creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Where the sink saves its progress.
    pub state_path: PathBuf,
    /// How long a message may wait for the broker's acknowledgement before the write fails
    /// (and the pipeline retries from its last checkpoint).
    pub delivery_timeout: Duration,
    /// Extra librdkafka settings (security, tuning). Values are never logged.
    pub properties: Vec<(String, String)>,
    /// Source database name, for Debezium's `source.db`.
    pub source_database: String,
    /// Where messages the brokers refuse for good (too large) are parked; `None` (and no
    /// `dead_letter_topic`): such a message stops the sink.
    pub dead_letter_file: Option<PathBuf>,
    /// A topic on the sink's brokers where such messages are parked instead of a file
    /// (created with one partition, compacted); see the `letters` module.
    pub dead_letter_topic: Option<String>,
}

impl std::fmt::Debug for KafkaSinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkOptions")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic.as_str())
            .field("format", &self.format)
            .field(
                "properties",
                &self.properties.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Characters Kafka allows in a topic name.
fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a topic name Kafka would refuse; the error says what is wrong and the fix.
pub fn check_topic_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic {name:?} must have 1 to 249 characters. Fix: shorten the topic template."
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "topic {name:?} is not allowed by Kafka. Fix: change the topic template."
        ));
    }
    if let Some(c) = name.chars().find(|c| !topic_char(*c)) {
        return Err(format!(
            "topic {name:?} holds {c:?}; Kafka allows only letters, digits, '.', '_' and '-'. Fix: change the literal text of the topic template."
        ));
    }
    Ok(())
}

/// The sink's producer: idempotent, all acknowledgements, the user's extra settings last;
/// `watch` records the refusals it meets.
fn producer(options: &KafkaSinkOptions, watch: Watch) -> Result<SinkProducer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", "65536")
        .set("queue.buffering.max.messages", "200000")
        .set(
            "message.timeout.ms",
            options.delivery_timeout.as_millis().to_string(),
        )
        .set(
            "client.id",
            format!("cutover-{}-{}", options.pipeline, options.name),
        );
    for (k, v) in &options.properties {
        config.set(k, v);
    }
    config.create_with_context(watch).map_err(|e| {
        error::classify(
            e,
            &format!(
                "cannot configure the Kafka producer of sink {}",
                options.name
            ),
        )
    })
}

/// The connection settings every client of the sink shares: the brokers and the user's extra
/// settings.
fn client_config(options: &KafkaSinkOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &options.brokers);
    for (k, v) in &options.properties {
        config.set(k, v);
    }
    config
}

/// Creates topics that do not exist yet; one that exists is left as it is.
async fn create_topics(options: &KafkaSinkOptions, new: &[NewTopic<'_>]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(options)
        .create()
        .map_err(|e| error::classify(e, "cannot create the Kafka admin client"))?;
    let results = admin
        .create_topics(
            new,
            &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)),
        )
        .await
        .map_err(|e| error::classify(e, "cannot create the sink's topics"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(error::classify(
                    KafkaError::AdminOp(code),
                    &format!("cannot create topic {topic}"),
                ))
            }
        }
    }
    Ok(())
}

/// The sink's dead-letter store, if it has one: its file, or its topic (created if missing,
/// written through `producer`).
async fn open_dead_letters(
    options: &KafkaSinkOptions,
    producer: &SinkProducer,
) -> Result<Option<Box<dyn LetterStore>>> {
    if let Some(path) = &options.dead_letter_file {
        return Ok(Some(Box::new(FileStore::new(path.clone()))));
    }
    let Some(topic) = &options.dead_letter_topic else {
        return Ok(None);
    };
    let new = NewTopic::new(
        topic,
        1,
        TopicReplication::Fixed(options.replication_factor),
    )
    .set("cleanup.policy", "compact");
    create_topics(options, &[new]).await?;
    let limit = options
        .properties
        .iter()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.parse().ok());
    let store = letters::TopicStore::new(
        topic.clone(),
        producer.clone(),
        client_config(options),
        limit,
    )?;
    Ok(Some(Box::new(store)))
}

/// The sink's dead-letter store (`cutover dlq list`), if it has one.
pub async fn dead_letter_store(options: &KafkaSinkOptions) -> Result<Option<Box<dyn LetterStore>>> {
    open_dead_letters(options, &producer(options, Watch::default())?).await
}

/// Waits up to [`ADMIN_TIMEOUT`] for the brokers' metadata, asking a second at a time so that a
/// refused handshake or login stops the wait at once instead of at the deadline.
async fn reach_brokers(producer: &SinkProducer, watch: &Watch, brokers: &str) -> Result<()> {
    let what = format!("cannot reach the Kafka brokers {brokers}");
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let probe = producer.clone();
        let asked = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(None, Duration::from_secs(1))
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("metadata task failed: {e}")))?;
        let e = match asked {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Some(refusal) = refused(watch, &what) {
            return Err(refusal);
        }
        if std::time::Instant::now() >= deadline {
            return Err(error::classify(e, &what)
                .with_hint("check the sink's brokers setting and that the brokers run"));
        }
    }
}

/// The error for a TLS handshake or SASL login the brokers refused while doing `what`, if
/// `watch` saw one: fatal, since no retry changes a certificate or a password.
fn refused(watch: &Watch, what: &str) -> Option<ConnectorError> {
    let reason = watch.refusal()?;
    let hint = if reason.contains("SASL") {
        "check the sink's sasl.mechanism, sasl.username and sasl.password properties against the user the brokers know"
    } else {
        "check the sink's ssl.ca.location (the CA that signed the brokers' certificates), that the brokers' certificates name the host in brokers, and ssl.certificate.location/ssl.key.location if the brokers verify clients"
    };
    Some(ConnectorError::fatal(format!("{what}: {reason}")).with_hint(hint))
}

/// A topic of one table: its name and partition count.
#[derive(Debug, Clone)]
pub struct Topic {
    name: String,
    partitions: i32,
}

/// The Kafka sink. See the crate documentation for its delivery contract.
pub type KafkaSink = EventSink<KafkaTransport>;

/// How the Kafka sink reaches the brokers and keeps its progress (a local state file).
pub struct KafkaTransport {
    options: KafkaSinkOptions,
    producer: SinkProducer,
    watch: Watch,
    state: StateFile,
}

impl KafkaTransport {
    /// Creates the producer, checks that the brokers answer, and returns the sink.
    pub async fn connect(options: KafkaSinkOptions) -> Result<KafkaSink> {
        let watch = Watch::default();
        let producer = producer(&options, watch.clone())?;
        reach_brokers(&producer, &watch, &options.brokers).await?;
        let state = StateFile::new(options.state_path.clone());
        let encoder = Encoder {
            format: options.format,
            tombstones: options.tombstones,
            truncates: options.truncates,
            source_name: options.pipeline.clone(),
            database: options.source_database.clone(),
        };
        let parking = open_dead_letters(&options, &producer)
            .await?
            .map(|store| Arc::new(Parking::new(store)));
        Ok(EventSink::new(
            KafkaTransport {
                options,
                producer,
                watch,
                state,
            },
            encoder,
            parking,
        ))
    }

    /// Reads the sink's saved progress (`cutover status`).
    pub async fn saved_state(options: &KafkaSinkOptions) -> Result<SinkState> {
        StateFile::new(options.state_path.clone()).load().await
    }

    /// Deletes the sink's saved progress (`cutover teardown --target-state`), so the next run
    /// copies every table again. The topics and their messages are left alone.
    pub async fn forget_state(options: &KafkaSinkOptions) -> Result<()> {
        StateFile::new(options.state_path.clone()).remove().await
    }

    /// Creates the topics that do not exist and reads their partition counts.
    async fn prepare_topics(
        &self,
        tables: &[Arc<TableSchema>],
    ) -> Result<HashMap<TableName, Topic>> {
        let clean = |s: &str| replace_disallowed(s, topic_char);
        let names: Vec<(TableName, String)> = tables
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    self.options
                        .topic
                        .render(&self.options.pipeline, &t.name, &clean),
                )
            })
            .collect();
        for (table, name) in &names {
            check_topic_name(name).map_err(|e| {
                ConnectorError::fatal(format!("sink {}: table {table}: {e}", self.options.name))
            })?;
        }
        let mut unique: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
        unique.sort_unstable();
        unique.dedup();

        let new: Vec<NewTopic> = unique
            .iter()
            .map(|n| {
                NewTopic::new(
                    n,
                    self.options.partitions,
                    TopicReplication::Fixed(self.options.replication_factor),
                )
            })
            .collect();
        create_topics(&self.options, &new).await?;
        let mut partitions = HashMap::new();
        for name in unique {
            let probe = self.producer.clone();
            let topic = name.to_string();
            let count = tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
                loop {
                    let metadata = probe.client().fetch_metadata(Some(&topic), ADMIN_TIMEOUT)?;
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len() as i32);
                    if count > 0 || std::time::Instant::now() > deadline {
                        return Ok::<_, KafkaError>(count);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .await
            .map_err(|e| ConnectorError::fatal(format!("metadata task failed: {e}")))?
            .map_err(|e| {
                error::classify(e, &format!("cannot read the metadata of topic {name}"))
            })?;
            if count == 0 {
                return Err(ConnectorError::retryable(format!(
                    "topic {name} has no partitions the brokers report"
                )));
            }
            partitions.insert(name.to_string(), count);
        }
        Ok(names
            .into_iter()
            .map(|(table, name)| {
                let partitions = partitions[&name];
                (table, Topic { name, partitions })
            })
            .collect())
    }
}

/// Publishes messages in order and waits until the brokers acknowledged all of them. With
/// `parking`, a message the brokers refuse for good is parked instead of failing the write,
/// and so is every later message of a key that has a parked message (its order is kept).
async fn publish(
    producer: &SinkProducer,
    topics: &HashMap<TableName, Topic>,
    messages: &[Outgoing],
    parking: Option<&Parking>,
) -> Result<()> {
    if let Some(p) = parking {
        blocking(|| p.refresh())?;
    }
    let mut deliveries: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(messages.len());
    let mut parked: Vec<Letter> = Vec::new();
    for (index, out) in messages.iter().enumerate() {
        let topic = topics.get(&out.table.name).ok_or_else(|| {
            ConnectorError::fatal(format!(
                "table {} has no topic: it was not known when the sink opened",
                out.table.name
            ))
        })?;
        if let (Some(p), Some(key)) = (parking, &out.message.key) {
            let key = String::from_utf8_lossy(key);
            if p.holds(&out.table.name, &key)
                || parked
                    .iter()
                    .any(|l| l.key == key && l.table_name() == out.table.name)
            {
                parked.push(Letter::of(
                    out,
                    &topic.name,
                    "waiting behind an earlier parked message of this key".into(),
                ));
                continue;
            }
        }
        let lsn = out.position.commit_lsn.to_string();
        let ordinal = out.position.ordinal.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "cutover.lsn",
                value: Some(lsn.as_str()),
            })
            .insert(Header {
                key: "cutover.ordinal",
                value: Some(ordinal.as_str()),
            })
            .insert(Header {
                key: "cutover.op",
                value: Some(out.message.op.name()),
            });
        // A truncate has no key: it goes to every partition, ahead of what follows it there.
        let targets: Vec<Option<i32>> = if out.message.op == Op::Truncate {
            (0..topic.partitions).map(Some).collect()
        } else {
            vec![None]
        };
        for partition in targets {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic.name).headers(headers.clone());
            if let Some(key) = &out.message.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &out.message.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            match send(producer, record).await {
                Ok(d) => deliveries.push((index, d)),
                // Refused before it left (larger than message.max.bytes): later messages of
                // the key are not sent yet, so parking keeps their order.
                Err(e) if e.kind == ErrorKind::Poison && parking.is_some() => {
                    parked.push(Letter::of(out, &topic.name, e.message.clone()));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let results = futures::future::join_all(deliveries.into_iter().map(|(index, d)| async move {
        match d.await {
            Ok(Ok(_)) => (index, Ok(())),
            Ok(Err((e, _))) => (
                index,
                Err(error::classify(e, "the broker refused a message")),
            ),
            Err(_) => (
                index,
                Err(ConnectorError::retryable("the producer dropped a message")),
            ),
        }
    }))
    .await;
    for (index, result) in results {
        match result {
            Ok(()) => {}
            // Refused by the broker (its own size limit): later messages of the key may be out
            // already; the letter says so.
            Err(e) if e.kind == ErrorKind::Poison && parking.is_some() => {
                let out = &messages[index];
                let topic = &topics[&out.table.name].name;
                parked.push(Letter::of(out, topic, format!("{} (refused by the broker after later messages of the key may have been sent)", e.message)));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(p) = parking {
        let p2 = parked;
        // The file is written (and flushed) before the checkpoint moves past these messages.
        if !p2.is_empty() {
            blocking(|| p.park(p2))?;
        }
    }
    Ok(())
}

/// Sends the parked messages of a sink again, oldest first: those the brokers accept now are
/// removed from the store (file or topic); one still refused stays (with the new reason) and
/// holds back its key's later messages. Returns (sent, still parked). Safe while the pipeline
/// runs: the running sink reloads the parked keys when the store changes (a file is locked
/// meanwhile; a topic cannot be, so two replays must not run at once).
pub async fn replay_dead_letters(options: &KafkaSinkOptions) -> Result<(u64, u64)> {
    let producer = producer(options, Watch::default())?;
    let Some(store) = open_dead_letters(options, &producer).await? else {
        return Ok((0, 0));
    };
    let producer = &producer;
    dead_letters::replay(store.as_ref(), |l| async move {
        let ordinal = l.ordinal.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "cutover.lsn",
                value: Some(l.commit_lsn.as_str()),
            })
            .insert(Header {
                key: "cutover.ordinal",
                value: Some(ordinal.as_str()),
            })
            .insert(Header {
                key: "cutover.op",
                value: Some(l.op.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&l.destination).headers(headers);
        if !l.key.is_empty() {
            record = record.key(l.key.as_bytes());
        }
        if let Some(p) = &l.payload {
            record = record.payload(p.as_bytes());
        }
        match send(producer, record).await?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(error::classify(e, "the broker refused a message")),
            Err(_) => Err(ConnectorError::retryable("the producer dropped a message")),
        }
    })
    .await
}

/// Queues one record, waiting while the producer's local queue is full (backpressure).
async fn send(
    producer: &SinkProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(error::classify(e, "cannot queue a message")),
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    type Route = Topic;

    fn name(&self) -> &str {
        &self.options.name
    }

    async fn prepare(&self, tables: &[Arc<TableSchema>]) -> Result<Routes<Topic>> {
        tables.iter().try_for_each(|t| refuse_keyless(t))?;
        self.prepare_topics(tables).await
    }

    async fn publish(
        &self,
        routes: &Routes<Topic>,
        messages: Vec<Outgoing>,
        parking: Option<&Parking>,
    ) -> Result<()> {
        publish(&self.producer, routes, &messages, parking)
            .await
            .map_err(|e| {
                // A delivery that timed out while the brokers refused the login or handshake
                // (credentials rotated, a certificate expired) says why, and stops the run.
                match e.kind {
                    ErrorKind::Retryable => {
                        refused(&self.watch, "the Kafka brokers refused the sink").unwrap_or(e)
                    }
                    _ => e,
                }
            })
    }

    async fn load_state(&self) -> Result<SinkState> {
        self.state.load().await
    }

    async fn save_state(&self, state: &SinkState) -> Result<()> {
        self.state.save(state.to_json()).await
    }
}

/// Refuses a table without a key: its messages could not be keyed.
fn refuse_keyless(table: &TableSchema) -> Result<()> {
    if table.has_key() {
        return Ok(());
    }
    Err(ConnectorError::fatal(format!(
        "table {} has no key, so its messages could not be keyed",
        table.name
    ))
    .with_hint("add a primary key or a replica identity index to the source table"))
}
