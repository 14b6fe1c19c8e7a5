//! A dead-letter store in a Kafka topic (`dead_letter_topic`): the letters of one sink, in a
//! topic of one partition on the sink's own brokers, as Kafka Connect keeps its dead-letter
//! queue.
//!
//! Record layout: the key is `<id>:<part>/<parts>`, the value one part of the letter's JSON
//! document. A letter larger than the sink's message limit is split into parts (the commonest
//! letter of a Kafka sink is a message too large for the brokers, so one record could not hold
//! it); its parts are consecutive in the partition. A replay removes a letter with a tombstone
//! (no value) on each part's key, so a compacted topic drops it too; a letter refused again is
//! written again under its id, and the latest version of an id wins.
//!
//! Reading follows the partition from where the last read stopped to the broker's high
//! watermark. A process sees the letters it parked itself at once (the broker may report them a
//! little later), and treats them as read when a record of an id at least as high shows up:
//! letter ids grow with each park and the partition keeps their order.
//!
//! Contract: `append` returns once the brokers acknowledged every part (`acks=all`), so a
//! parked letter survives a crash. Unlike the file store, the topic cannot be locked: a replay
//! running beside `cutover run` is safe (the sink parks later messages of a key it has not yet
//! seen replayed), but two replays at once may each send a letter.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cutover_core::dead_letters::{Letter, LetterSession, LetterStore};
use cutover_core::{ConnectorError, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;

use crate::SinkProducer;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::error;

/// How long a read may take to reach the high watermark before it fails (retryable).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A running sink asks the brokers for news at most this often.
const STAMP_EVERY: Duration = Duration::from_millis(250);

/// Part size when a message limit is not set (librdkafka's default is 1 000 000 bytes).
const DEFAULT_PART: usize = 256 * 1024;

/// The topic store of one sink.
pub struct TopicStore {
    topic: String,
    producer: SinkProducer,
    part_bytes: usize,
    state: Mutex<Reader>,
}

impl std::fmt::Debug for TopicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicStore")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// What has been read of the topic.
struct Reader {
    consumer: BaseConsumer,
    /// The offset the next read starts from.
    next_offset: i64,
    /// Live letters by id, each with the parts seen so far.
    letters: BTreeMap<u64, Parts>,
    /// The highest id any record carried.
    max_id: u64,
    /// Letters this process parked that no read has reached yet.
    pending: Vec<Letter>,
    /// The last stamp and when it was taken.
    stamp: Option<(Instant, String)>,
}

/// One letter as read: its last complete version (part count and JSON document) and the parts
/// of a newer version still arriving. The complete version counts until the newer one is whole,
/// so a letter being written again keeps holding its key.
#[derive(Default)]
struct Parts {
    complete: Option<(usize, Vec<u8>)>,
    building: Vec<Option<Vec<u8>>>,
}

/// A record key: (id, part, parts).
fn parse_key(key: &[u8]) -> Option<(u64, usize, usize)> {
    let text = std::str::from_utf8(key).ok()?;
    let (id, rest) = text.split_once(':')?;
    let (part, parts) = rest.split_once('/')?;
    let (id, part, parts) = (id.parse().ok()?, part.parse().ok()?, parts.parse().ok()?);
    (part < parts && parts > 0).then_some((id, part, parts))
}

fn key_of(id: u64, part: usize, parts: usize) -> String {
    format!("{id}:{part}/{parts}")
}

impl TopicStore {
    /// The store of a sink whose producer is `producer`, reading through a consumer made from
    /// `config` (the sink's connection settings). `message_limit`: the sink's
    /// `message.max.bytes`, if set; parts stay well under it.
    pub fn new(
        topic: String,
        producer: SinkProducer,
        mut config: ClientConfig,
        message_limit: Option<usize>,
    ) -> Result<TopicStore> {
        config
            .set("group.id", format!("cutover-dead-letters-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| {
            error::classify(
                e,
                &format!("cannot create a reader of the dead-letter topic {topic}"),
            )
        })?;
        let part_bytes =
            message_limit.map_or(DEFAULT_PART, |limit| (limit / 2).clamp(400, DEFAULT_PART));
        Ok(TopicStore {
            topic,
            producer,
            part_bytes,
            state: Mutex::new(Reader {
                consumer,
                next_offset: 0,
                letters: BTreeMap::new(),
                max_id: 0,
                pending: Vec::new(),
                stamp: None,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, Reader> {
        self.state.lock().expect("not poisoned")
    }

    fn damaged(&self, offset: i64, what: &str) -> ConnectorError {
        ConnectorError::fatal(format!(
            "the dead-letter topic {} holds a record at offset {offset} that is not a cutover dead letter ({what})",
            self.topic
        ))
        .with_hint("give dead_letter_topic a topic of its own: cutover writes and reads every record there")
    }

    /// The partition's high watermark.
    fn high_watermark(&self, reader: &Reader) -> Result<i64> {
        reader
            .consumer
            .fetch_watermarks(&self.topic, 0, READ_TIMEOUT)
            .map(|(_, high)| high)
            .map_err(|e| {
                error::classify(
                    e,
                    &format!(
                        "cannot read the end of the dead-letter topic {}",
                        self.topic
                    ),
                )
            })
    }

    /// Reads the records from where the last read stopped to the high watermark.
    fn catch_up(&self, reader: &mut Reader) -> Result<()> {
        let high = self.high_watermark(reader)?;
        if high <= reader.next_offset {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, Offset::Offset(reader.next_offset))
            .map_err(|e| error::classify(e, "cannot position the dead-letter reader"))?;
        reader
            .consumer
            .assign(&list)
            .map_err(|e| error::classify(e, "cannot position the dead-letter reader"))?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while reader.next_offset < high {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectorError::retryable(format!(
                    "reading the dead-letter topic {} stopped at offset {} of {high}",
                    self.topic, reader.next_offset
                )));
            }
            let Some(record) = reader.consumer.poll(left.min(Duration::from_millis(500))) else {
                // Offsets compaction removed leave gaps: the fetch position passes them.
                let position = reader.consumer.position().ok().and_then(|list| {
                    list.find_partition(&self.topic, 0)
                        .and_then(|p| p.offset().to_raw())
                });
                if let Some(p) = position.filter(|p| *p >= high) {
                    reader.next_offset = p;
                }
                continue;
            };
            let record = record.map_err(|e| {
                error::classify(
                    e,
                    &format!("cannot read the dead-letter topic {}", self.topic),
                )
            })?;
            let offset = record.offset();
            let (id, part, parts) = record
                .key()
                .and_then(parse_key)
                .ok_or_else(|| self.damaged(offset, "its key is not <id>:<part>/<parts>"))?;
            reader.max_id = reader.max_id.max(id);
            match record.payload() {
                // A tombstone removes the version with its part count (one with another count
                // is an older version's key being cleared).
                None => {
                    let current = reader.letters.get(&id).is_some_and(|p| match &p.complete {
                        Some((n, _)) => *n == parts,
                        None => p.building.len() == parts,
                    });
                    if current {
                        reader.letters.remove(&id);
                    }
                }
                Some(bytes) => {
                    let entry = reader.letters.entry(id).or_default();
                    if entry.building.len() != parts || part == 0 {
                        entry.building = vec![None; parts];
                    }
                    entry.building[part] = Some(bytes.to_vec());
                    if entry.building.iter().all(Option::is_some) {
                        let doc = entry.building.drain(..).flatten().flatten().collect();
                        entry.complete = Some((parts, doc));
                    }
                }
            }
            reader.next_offset = offset + 1;
        }
        let max_id = reader.max_id;
        reader.pending.retain(|l| l.id > max_id);
        Ok(())
    }

    /// The live letters read so far and those this process parked since, by id.
    fn letters(&self, reader: &Reader) -> Result<Vec<Letter>> {
        let mut out = Vec::with_capacity(reader.letters.len() + reader.pending.len());
        for (id, parts) in &reader.letters {
            // Without a complete version its parts are still on their way.
            let Some((_, doc)) = &parts.complete else {
                continue;
            };
            let mut letter: Letter = serde_json::from_slice(doc).map_err(|e| {
                ConnectorError::fatal(format!(
                    "dead letter {id} in the topic {} cannot be read back: {e}",
                    self.topic
                ))
                .with_hint("give dead_letter_topic a topic of its own")
            })?;
            letter.id = *id;
            out.push(letter);
        }
        out.extend(reader.pending.iter().cloned());
        out.sort_by_key(|l| l.id);
        Ok(out)
    }

    /// Writes letters (each split into parts) and waits until the brokers acknowledged them.
    fn write(&self, letters: &[Letter]) -> Result<()> {
        for letter in letters {
            let doc = serde_json::to_vec(letter).expect("a letter always serializes");
            let chunks: Vec<&[u8]> = doc.chunks(self.part_bytes).collect();
            for (part, chunk) in chunks.iter().enumerate() {
                self.put(&key_of(letter.id, part, chunks.len()), Some(chunk))?;
            }
        }
        Ok(())
    }

    /// Writes tombstones for every part of the letters with these ids.
    fn remove(&self, removed: &[(u64, usize)]) -> Result<()> {
        for &(id, parts) in removed {
            for part in 0..parts {
                self.put(&key_of(id, part, parts), None)?;
            }
        }
        Ok(())
    }

    /// Writes one record and waits for its acknowledgement. One at a time on purpose: each
    /// record is then a batch of its own, and some Kafka-protocol servers (tansu) report a high
    /// watermark that does not count every record of a batch of several. Letters are rare.
    fn put(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let delivery = self.send(key, value)?;
        // Waits for the acknowledgement; a letter the brokers refuse is an error of the write
        // that parked it (nothing is dropped).
        match futures::executor::block_on(delivery) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(error::classify(
                e,
                &format!("the dead-letter topic {} refused a letter", self.topic),
            )
            .with_hint("check the topic's settings (max.message.bytes, permissions)")),
            Err(_) => Err(ConnectorError::retryable(
                "the producer dropped a dead letter",
            )),
        }
    }

    fn send(&self, key: &str, value: Option<&[u8]>) -> Result<rdkafka::producer::DeliveryFuture> {
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&self.topic).key(key).partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            match self.producer.send_result(record) {
                Ok(d) => return Ok(d),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) if Instant::now() < deadline => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(error::classify(
                        e,
                        &format!("cannot write to the dead-letter topic {}", self.topic),
                    ))
                }
            }
        }
    }
}

impl LetterStore for TopicStore {
    fn describe(&self) -> String {
        format!("the dead-letter topic {}", self.topic)
    }

    fn stamp(&self) -> Result<Option<String>> {
        let mut reader = self.state();
        if let Some((at, stamp)) = &reader.stamp {
            if at.elapsed() < STAMP_EVERY {
                return Ok(Some(stamp.clone()));
            }
        }
        let high = self.high_watermark(&reader)?;
        let stamp = format!("{high}/{}", reader.pending.len());
        reader.stamp = Some((Instant::now(), stamp.clone()));
        Ok((high > 0 || !reader.pending.is_empty()).then_some(stamp))
    }

    fn open(&self) -> Result<Box<dyn LetterSession + '_>> {
        Ok(Box::new(TopicSession { store: self }))
    }
}

/// An opened topic store (nothing is locked: see the module's contract).
struct TopicSession<'a> {
    store: &'a TopicStore,
}

impl LetterSession for TopicSession<'_> {
    fn read(&mut self) -> Result<Vec<Letter>> {
        let mut reader = self.store.state();
        self.store.catch_up(&mut reader)?;
        self.store.letters(&reader)
    }

    fn append(&mut self, mut letters: Vec<Letter>) -> Result<()> {
        let mut reader = self.store.state();
        if reader.next_offset == 0 {
            // Ids continue after every id the topic ever held.
            self.store.catch_up(&mut reader)?;
        }
        let last = reader
            .pending
            .iter()
            .map(|l| l.id)
            .max()
            .unwrap_or(0)
            .max(reader.max_id);
        for (id, l) in (last + 1..).zip(letters.iter_mut()) {
            l.id = id;
        }
        self.store.write(&letters)?;
        reader.pending.extend(letters);
        reader.stamp = None;
        Ok(())
    }

    fn settle(&mut self, read: &[Letter], kept: &[Letter]) -> Result<()> {
        let kept_ids: std::collections::HashMap<u64, &Letter> =
            kept.iter().map(|l| (l.id, l)).collect();
        let reader = self.store.state();
        let parts_of = |id: u64| {
            reader
                .letters
                .get(&id)
                .and_then(|p| p.complete.as_ref())
                .map_or(1, |(n, _)| *n)
        };
        let removed: Vec<(u64, usize)> = read
            .iter()
            .filter(|l| !kept_ids.contains_key(&l.id))
            .map(|l| (l.id, parts_of(l.id)))
            .collect();
        let changed: Vec<Letter> = read
            .iter()
            .filter_map(|l| {
                kept_ids
                    .get(&l.id)
                    .filter(|k| **k != l)
                    .map(|k| (*k).clone())
            })
            .collect();
        // Keys of versions the new ones replace, when their part count differs.
        let mut stale: Vec<(u64, usize)> = Vec::new();
        for l in &changed {
            let doc = serde_json::to_vec(l).expect("a letter always serializes");
            let (old, new) = (
                parts_of(l.id),
                doc.len().div_ceil(self.store.part_bytes).max(1),
            );
            if old != new {
                stale.push((l.id, old));
            }
        }
        drop(reader);
        // The new versions first: a crash in between leaves the letters parked.
        self.store.write(&changed)?;
        self.store.remove(&stale)?;
        self.store.remove(&removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_name_the_letter_and_its_part() {
        assert_eq!(parse_key(key_of(17, 2, 7).as_bytes()), Some((17, 2, 7)));
        assert_eq!(parse_key(b"3:0/1"), Some((3, 0, 1)));
        for bad in [&b"3:1/1"[..], b"3:0/0", b"x:0/1", b"3-0/1", b"", b"\xff"] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }
}
