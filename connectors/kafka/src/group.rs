//! A consumer-group member reading change topics, for `cutover apply`. Kafka's group protocol
//! decides which member reads which partition; this module only reports the decisions and lets
//! the caller say where each partition starts.
//!
//! Contract:
//! - Events arrive on one channel, in the order they happened: a partition's
//!   [`GroupEvent::Assigned`] before its first message, its messages in offset order, its
//!   [`GroupEvent::Revoked`] after its last message.
//! - An assignment waits for the caller's answer: the offset each partition starts at (the one
//!   after the last offset the target holds), or the beginning. Kafka's committed offsets are
//!   not read: the target is the record of what was applied.
//! - A revocation waits for the caller's answer too, so the caller finishes (or drops) the
//!   partition's write in flight before another member can take the partition.
//! - Messages carry the generation of the assignment they were read under; messages of an
//!   earlier generation of a partition are stale (read before a revocation) and must be
//!   dropped.
//!
//! The consumer runs on a thread of its own: librdkafka calls the rebalance callback from the
//! thread that polls, and that callback blocks until the caller answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{ConnectorError, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{mpsc, oneshot};

use crate::watch::Watch;

/// A topic partition.
pub type Partition = (String, i32);

/// One message as read.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The assignment this message was read under (see the module contract).
    pub generation: u64,
}

/// What happened in the group, in order.
#[derive(Debug)]
pub enum GroupEvent {
    /// These partitions are now this member's, under `generation`. Answer with the offset each
    /// starts at, in the same order (`None`: the beginning).
    Assigned {
        partitions: Vec<Partition>,
        generation: u64,
        reply: oneshot::Sender<Vec<Option<i64>>>,
    },
    /// These partitions are no longer this member's. Answer once nothing of them is in flight.
    Revoked {
        partitions: Vec<Partition>,
        reply: oneshot::Sender<()>,
    },
    Message(Delivery),
}

/// Settings of a group member.
#[derive(Clone)]
pub struct GroupOptions {
    pub brokers: String,
    pub group: String,
    /// Topic names; one starting with `^` is a regular expression matching topic names.
    pub topics: Vec<String>,
    /// Extra librdkafka settings (security, timeouts). Values are never logged.
    pub properties: Vec<(String, String)>,
    /// Messages read ahead of the caller.
    pub buffer: usize,
}

/// What the consumer thread sends: events, then `Left` once it has left the group.
enum Signal {
    Event(GroupEvent),
    Left,
}

/// The client context: the rebalance callback and librdkafka's refusals.
struct Member {
    watch: Watch,
    events: mpsc::Sender<Signal>,
    generation: Arc<AtomicU64>,
    /// Set once the caller stopped answering (the channel closed).
    gone: Arc<AtomicBool>,
}

impl ClientContext for Member {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::warn!(target: "librdkafka", "{fac}: {log_message}");
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for Member {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // Closing the consumer on an async thread (its last handle dropped there) revokes
        // too; nobody answers then, and blocking that thread is not allowed.
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = consumer.unassign();
            return;
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let list = partitions(tpl);
                let (reply, answer) = oneshot::channel();
                let sent = self
                    .events
                    .blocking_send(Signal::Event(GroupEvent::Assigned {
                        partitions: list.clone(),
                        generation,
                        reply,
                    }))
                    .is_ok();
                match answer.blocking_recv() {
                    Ok(offsets) if sent => {
                        for ((topic, partition), offset) in list.iter().zip(offsets) {
                            let at = offset.map_or(Offset::Beginning, Offset::Offset);
                            if let Err(e) = tpl.set_partition_offset(topic, *partition, at) {
                                tracing::warn!("cannot set the start of {topic}/{partition}: {e}");
                            }
                        }
                        if let Err(e) = consumer.assign(tpl) {
                            tracing::warn!("cannot take the assigned partitions: {e}");
                        }
                    }
                    _ => {
                        self.gone.store(true, Ordering::SeqCst);
                        let _ = consumer.unassign();
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let (reply, answer) = oneshot::channel();
                if self
                    .events
                    .blocking_send(Signal::Event(GroupEvent::Revoked {
                        partitions: partitions(tpl),
                        reply,
                    }))
                    .is_ok()
                {
                    let _ = answer.blocking_recv();
                }
                // Messages read before this point belong to the old generation.
                self.generation.fetch_add(1, Ordering::SeqCst);
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!("the consumer group rebalance failed: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }
}

/// A running group member. Dropping it without [`GroupReader::stop`] leaves the thread to end
/// at its next poll.
pub struct GroupReader {
    events: mpsc::Receiver<Signal>,
    consumer: Arc<BaseConsumer<Member>>,
    stop: Arc<AtomicBool>,
    watch: Watch,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupReader {
    /// Joins the group and starts reading. Offsets are never committed automatically.
    pub fn start(options: &GroupOptions) -> Result<GroupReader> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("auto.offset.reset", "earliest")
            .set("client.id", format!("cutover-apply-{}", options.group));
        for (k, v) in &options.properties {
            config.set(k, v);
        }
        // What the module's contract rests on, whatever the properties say: offsets are the
        // target's to keep, and rebalancing is eager (every member gives up its partitions
        // before any is moved; the rebalance callback assigns whole lists).
        config
            .set("group.id", &options.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "range,roundrobin");
        let (tx, events) = mpsc::channel(options.buffer.max(16));
        let watch = Watch::default();
        let member = Member {
            watch: watch.clone(),
            events: tx.clone(),
            generation: Arc::new(AtomicU64::new(0)),
            gone: Arc::new(AtomicBool::new(false)),
        };
        let generation = member.generation.clone();
        let gone = member.gone.clone();
        let consumer: BaseConsumer<Member> = config
            .create_with_context(member)
            .map_err(|e| crate::classify(e, "cannot configure the Kafka consumer"))?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| crate::classify(e, "cannot subscribe to the change topics"))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kafka-group".into())
                .spawn(move || poll_loop(&consumer, &tx, &generation, &stop, &gone))
                .map_err(|e| {
                    ConnectorError::fatal(format!("cannot start the consumer thread: {e}"))
                })?
        };
        Ok(GroupReader {
            events,
            consumer,
            stop,
            watch,
            thread: Some(thread),
        })
    }

    /// The next event; `None` once the member has left the group (after [`GroupReader::stop`]
    /// or a failure).
    pub async fn next(&mut self) -> Option<GroupEvent> {
        match self.events.recv().await {
            Some(Signal::Event(event)) => Some(event),
            Some(Signal::Left) | None => None,
        }
    }

    /// Whether no event is waiting: the member has caught up with what it has read.
    pub fn is_idle(&self) -> bool {
        self.events.is_empty()
    }

    /// The partition's first and next offsets (its low and high watermarks), from the broker.
    pub async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        let consumer = self.consumer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&name, partition, Duration::from_secs(10))
                .map_err(|e| {
                    crate::classify(
                        e,
                        &format!("cannot read where {name}/{partition} starts and ends"),
                    )
                })
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("the watermark request failed: {e}")))?
    }

    /// How many partitions `topic` has, from the brokers' metadata.
    pub async fn partition_count(&self, topic: &str) -> Result<usize> {
        let consumer = self.consumer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&name), Duration::from_secs(10))
                .map_err(|e| {
                    crate::classify(e, &format!("cannot read the metadata of topic {name}"))
                })?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map_or(0, |t| t.partitions().len()))
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("the metadata request failed: {e}")))?
    }

    /// The last refused TLS handshake or SASL login, if any.
    pub fn refusal(&self) -> Option<String> {
        self.watch.refusal()
    }

    /// Records in Kafka, without waiting, that each partition was applied up to (not
    /// including) `next` offset: a hint for tools that show the group's lag. The target's
    /// record is the one `apply` resumes from.
    pub fn commit_hint(&self, next: &[(String, i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in next {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("cannot commit the offsets hint: {e}");
            }
        }
    }

    /// Asks the member to leave the group: its partitions are revoked (answer the
    /// [`GroupEvent::Revoked`] as usual), then [`GroupReader::next`] returns `None`.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the consumer thread to end (after [`GroupReader::request_stop`] and draining
    /// [`GroupReader::next`]).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many partitions each of `topics` has on the brokers (0: the brokers have no such topic),
/// read from the metadata of every topic (asking for one by name could create it). The error
/// names a refused TLS handshake or login when that is why the brokers did not answer.
pub async fn topic_partitions(
    brokers: &str,
    properties: &[(String, String)],
    topics: &[String],
) -> Result<Vec<(String, usize)>> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    let watch = Watch::default();
    let consumer: BaseConsumer<Watch> = config
        .create_with_context(watch.clone())
        .map_err(|e| crate::classify(e, "cannot configure the Kafka consumer"))?;
    let topics = topics.to_vec();
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| {
                let reason = watch.refusal().map(|r| format!(": {r}")).unwrap_or_default();
                ConnectorError::fatal(format!("cannot read the topics of the Kafka brokers {brokers}: {e}{reason}"))
                    .with_hint("check source.brokers, that the brokers run, and the source's security properties")
            })?;
        Ok(topics
            .iter()
            .map(|t| {
                let count = metadata
                    .topics()
                    .iter()
                    .find(|m| m.name() == t)
                    .map_or(0, |m| m.partitions().len());
                (t.clone(), count)
            })
            .collect())
    })
    .await
    .map_err(|e| ConnectorError::fatal(format!("the metadata request failed: {e}")))?
}

fn poll_loop(
    consumer: &BaseConsumer<Member>,
    tx: &mpsc::Sender<Signal>,
    generation: &AtomicU64,
    stop: &AtomicBool,
    gone: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) && !gone.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let delivery = Delivery {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    generation: generation.load(Ordering::SeqCst),
                };
                if tx
                    .blocking_send(Signal::Event(GroupEvent::Message(delivery)))
                    .is_err()
                {
                    return;
                }
            }
            Some(Err(e)) => tracing::warn!("reading the change topics: {e}"),
        }
    }
    // Leave the group: the revocation runs in the polls below.
    consumer.unsubscribe();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
        if consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(true)
        {
            break;
        }
    }
    let _ = tx.blocking_send(Signal::Left);
}
