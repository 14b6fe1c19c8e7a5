//! `cutover apply`: one worker of a Kafka consumer group that applies change topics to the
//! pipeline's PostgreSQL and MongoDB targets. Kafka's group protocol decides which worker reads
//! which partition; start as many workers as the apply side needs, on as many machines.
//!
//! How a partition is applied (see docs/apply.md):
//! - Each assigned partition gets its own sink per target, whose saved state covers that
//!   partition alone (`pipeline/topic/partition` in the target's state). The sink's checkpoint
//!   is the partition's next offset: offsets stand in for WAL positions
//!   (`commit_lsn` = the batch's first offset, `end_lsn` = the offset after its last).
//! - The partition starts at the lowest next offset its sinks stored, or at the beginning;
//!   Kafka's committed offsets are only a hint written after each batch.
//! - A batch of one partition (up to `batch_messages`, or what was read when the worker caught
//!   up) is one source transaction to every sink: folded per key, written set-based, committed
//!   with its checkpoint in one target transaction. A PostgreSQL checkpoint is fenced: a worker
//!   that lost the partition cannot commit over the one that took it.
//! - A revoked partition's messages already read are applied before the revocation is answered.
//! - Messages that cannot be applied (not JSON, no key, an unknown op, a table or a value the
//!   target cannot take) are parked in the dead-letter file with their topic, partition and
//!   offset; the rest flows on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::dead_letters::{blocking, FileStore, Letter, LetterStore, ReadFrom};
use cutover_core::inbound::{self, Inbound, InboundOp};
use cutover_core::{
    ChangeEvent, ConnectorError, Lsn, Position, Result, Sink, StreamEvent, TableName, TableSchema,
};
use cutover_kafka::group::{Delivery, GroupEvent, GroupOptions, GroupReader, Partition};
use tokio::sync::watch;

use crate::config::{ApplySettings, Pipeline};

/// Table definitions: from the catalog database (the first PostgreSQL target, or the
/// original source), or from the messages' schemas.
struct TableDefinitions {
    client: Option<tokio_postgres::Client>,
    known: HashMap<TableName, Arc<TableSchema>>,
}

impl TableDefinitions {
    async fn connect(cfg: &Pipeline) -> Result<TableDefinitions> {
        let url = crate::connect::postgres_targets(cfg)
            .next()
            .map(|pg| pg.url.clone())
            .or_else(|| (!cfg.source_url.is_empty()).then(|| cfg.source_url.clone()));
        let client = match url {
            Some(url) => Some(
                cutover_postgres::PgEndpoint::parse(&url, "catalog")?
                    .connect()
                    .await?,
            ),
            None => None,
        };
        Ok(TableDefinitions {
            client,
            known: HashMap::new(),
        })
    }

    /// The definition of `name`: known, read from the catalog database, or made from the
    /// message's field schemas. The error says why there is none.
    async fn resolve(
        &mut self,
        name: &TableName,
        message: &Inbound,
    ) -> std::result::Result<Arc<TableSchema>, String> {
        if let Some(t) = self.known.get(name) {
            return Ok(t.clone());
        }
        if let Some(client) = &self.client {
            let pattern = format!("{}.{}", name.schema, name.name);
            if let Ok(found) = cutover_postgres::catalog::resolve_tables(client, &[pattern]).await {
                if let Some(t) = found.into_iter().find(|t| &t.schema.name == name) {
                    self.known.insert(name.clone(), t.schema.clone());
                    return Ok(t.schema);
                }
            }
        }
        match &message.fields {
            Some(fields) => {
                let table = Arc::new(inbound::table_from_schema(
                    name.clone(),
                    fields,
                    &message.key_fields,
                )?);
                self.known.insert(name.clone(), table.clone());
                Ok(table)
            }
            None => Err(format!(
                "table {name} does not exist on the target and the message carries no schema to create it from; create the table on the target (or produce the messages with schemas.enable=true)"
            )),
        }
    }
}

/// One target's sink for one partition.
struct LaneSink {
    sink: Box<dyn Sink>,
    /// The next offset this sink has not applied (`None`: nothing applied yet).
    next: Option<i64>,
    tables: HashSet<TableName>,
}

/// One assigned partition.
struct Lane {
    generation: u64,
    sinks: Vec<LaneSink>,
    pending: Vec<Delivery>,
    /// The source transaction of each pending message, when batches keep transactions whole.
    txns: Vec<Option<String>>,
    /// The last batch, while its writes run.
    in_flight: Option<BatchInFlight>,
    /// Whether the partition was read from its beginning by this worker, and which tables
    /// have had a row change in it since: a truncate before any row change of its table (the
    /// copy-start truncate cutover's Kafka sink writes to every partition) removes nothing of
    /// this partition's.
    from_start: bool,
    rows_seen: HashSet<TableName>,
}

/// How long the messages of a source transaction wait for the rest of it (see
/// `whole_transactions`).
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// How many times `batch_messages` one source transaction may hold before it is applied in
/// parts (see `whole_transactions`).
const WHOLE_LIMIT: usize = 100;

/// Counts for the log and the final summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    pub messages: u64,
    pub changes: u64,
    pub parked: u64,
    pub batches: u64,
}

struct Worker<'a> {
    cfg: &'a Pipeline,
    settings: &'a ApplySettings,
    reader: GroupReader,
    catalog: TableDefinitions,
    lanes: HashMap<Partition, Lane>,
    letters: FileStore,
    /// The (topic, message key) of every parked message: later messages of those keys are
    /// parked behind them, in order, so applying the parked ones later (`cutover dlq replay`)
    /// never takes a key back to an older row.
    held: Held,
    partitions: HashMap<String, usize>,
    applied: Applied,
}

/// The keys the dead-letter file holds back, as of the file's stamp they were read at.
#[derive(Default)]
struct Held {
    stamp: Option<Option<String>>,
    /// Message keys by topic.
    keys: HashMap<String, HashSet<Vec<u8>>>,
}

impl Held {
    /// Reads the file's keys again if it changed since (a replay removed letters, or another
    /// worker parked some).
    fn refresh(&mut self, store: &FileStore) -> Result<()> {
        let stamp = store.stamp()?;
        if self.stamp.as_ref() == Some(&stamp) {
            return Ok(());
        }
        let letters = if stamp.is_some() {
            blocking(|| store.open()?.read())?
        } else {
            Vec::new()
        };
        self.keys.clear();
        for l in &letters {
            if let Some(from) = l.read_from.as_ref().filter(|_| !l.key.is_empty()) {
                self.hold(&from.topic, l.key.as_bytes());
            }
        }
        self.stamp = Some(stamp);
        Ok(())
    }

    fn hold(&mut self, topic: &str, key: &[u8]) {
        self.keys
            .entry(topic.to_string())
            .or_default()
            .insert(key.to_vec());
    }

    /// Whether a parked message of `topic` has this message key.
    fn holds(&self, topic: &str, key: Option<&[u8]>) -> bool {
        match (self.keys.get(topic), key) {
            (Some(keys), Some(key)) => keys.contains(key),
            _ => false,
        }
    }
}

/// Runs one worker until `stop` turns true (then it applies what it has read, leaves the
/// group and returns) or an error it cannot retry.
pub async fn run(cfg: &Pipeline, mut stop: watch::Receiver<bool>) -> Result<Applied> {
    let settings = cfg.apply.as_ref().ok_or_else(|| {
        ConnectorError::fatal(format!(
            "pipeline {} reads a PostgreSQL source; run it with cutover run",
            cfg.name
        ))
    })?;
    check_targets(cfg)?;
    let mut total = Applied::default();
    let mut retries = 0u32;
    loop {
        let started = Instant::now();
        match session(cfg, settings, &mut stop, &mut total).await {
            Ok(()) => return Ok(total),
            Err(e) if e.is_retryable() && (cfg.max_retries == 0 || retries < cfg.max_retries) => {
                if started.elapsed() > Duration::from_secs(60) {
                    retries = 0;
                }
                retries += 1;
                let wait = Duration::from_millis(500 * u64::from(retries.min(20)));
                tracing::warn!(error = %e, retry = retries, "apply failed; rejoining the group after {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(total),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Targets `apply` can feed: those that keep their state in themselves.
fn check_targets(cfg: &Pipeline) -> Result<()> {
    match cfg.sinks.iter().find(|t| !t.fed_by_apply()) {
        Some(t) => Err(ConnectorError::fatal(format!(
            "sink {} is a {} sink; cutover apply feeds PostgreSQL and MongoDB targets",
            t.name(),
            t.kind()
        ))
        .with_hint(
            "remove the sink from this pipeline, or feed it from the source with cutover run",
        )),
        None => Ok(()),
    }
}

async fn session(
    cfg: &Pipeline,
    settings: &ApplySettings,
    stop: &mut watch::Receiver<bool>,
    total: &mut Applied,
) -> Result<()> {
    let reader = GroupReader::start(&GroupOptions {
        brokers: settings.brokers.clone(),
        group: settings.group.clone(),
        topics: settings.topics.clone(),
        properties: settings.properties.clone(),
        buffer: settings.batch_messages * 2,
    })?;
    tracing::info!(group = %settings.group, topics = ?settings.topics, "joined the consumer group");
    let mut worker = Worker {
        cfg,
        settings,
        reader,
        catalog: TableDefinitions::connect(cfg).await?,
        lanes: HashMap::new(),
        letters: FileStore::new(settings.dead_letter_file.clone()),
        held: Held::default(),
        partitions: HashMap::new(),
        applied: *total,
    };
    let result = worker.serve(stop).await;
    *total = worker.applied;
    if result.is_err() {
        // Leave the group at once: drop every lane (nothing uncommitted is kept) and answer
        // the revocation the leaving causes.
        worker.lanes.clear();
        worker.reader.request_stop();
        while let Some(event) = worker.reader.next().await {
            match event {
                GroupEvent::Assigned {
                    partitions, reply, ..
                } => {
                    let _ = reply.send(vec![None; partitions.len()]);
                }
                GroupEvent::Revoked { reply, .. } => {
                    let _ = reply.send(());
                }
                GroupEvent::Message(_) => {}
            }
        }
    }
    worker.reader.join();
    result
}

impl Worker<'_> {
    async fn serve(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let mut stopping = false;
        loop {
            let holding = self.lanes.values().any(|l| !l.pending.is_empty());
            let event = tokio::select! {
                event = self.reader.next() => event,
                // A transaction whose end has not come within TAIL_WAIT is applied as it is.
                _ = tokio::time::sleep(TAIL_WAIT), if holding => {
                    tracing::warn!("a source transaction's last message did not come within {TAIL_WAIT:?}: applying what came of it");
                    self.flush_all(true).await?;
                    self.drain().await?;
                    continue;
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    tracing::info!("stop requested: applying what was read, then leaving the group");
                    self.flush_all(true).await?;
                    self.drain().await?;
                    self.reader.request_stop();
                    continue;
                }
            };
            let Some(event) = event else {
                self.flush_all(true).await?;
                self.drain().await?;
                return Ok(());
            };
            match event {
                GroupEvent::Assigned {
                    partitions,
                    generation,
                    reply,
                } => {
                    let mut starts = Vec::with_capacity(partitions.len());
                    for p in &partitions {
                        let lane = self.open_lane(p, generation).await?;
                        let start = lane.sinks.iter().map(|s| s.next).min().flatten();
                        if let Some(next) = start {
                            // Kafka would skip a gap silently (auto.offset.reset): refuse it.
                            let (low, high) = self.reader.watermarks(&p.0, p.1).await?;
                            if let Some(gap) = retention_gap(&p.0, p.1, next, low, high) {
                                return Err(gap);
                            }
                        }
                        starts.push(start);
                        self.lanes.insert(p.clone(), lane);
                    }
                    tracing::info!(partitions = ?partitions.iter().zip(&starts).map(|((t, p), s)| format!("{t}/{p}@{}", s.map_or("start".to_string(), |s| s.to_string()))).collect::<Vec<_>>(), "partitions assigned");
                    let _ = reply.send(starts);
                }
                GroupEvent::Revoked { partitions, reply } => {
                    // What was read still belongs to this worker until it answers.
                    self.flush_all(true).await?;
                    self.drain().await?;
                    for p in &partitions {
                        self.lanes.remove(p);
                    }
                    tracing::info!(partitions = ?partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(), "partitions revoked");
                    let _ = reply.send(());
                }
                GroupEvent::Message(delivery) => {
                    let key = (delivery.topic.clone(), delivery.partition);
                    let full = match self.lanes.get_mut(&key) {
                        Some(lane) if lane.generation == delivery.generation => {
                            if self.settings.whole_transactions {
                                lane.txns.push(delivery.payload.as_deref().and_then(|p| {
                                    inbound::transaction_of(self.settings.read.format, p)
                                }));
                            }
                            lane.pending.push(delivery);
                            lane.pending.len() >= self.settings.batch_messages
                        }
                        // Read before a revocation: the next owner reads it again.
                        _ => false,
                    };
                    if full {
                        self.flush(&key, false).await?;
                    }
                }
            }
            if self.reader.is_idle() {
                self.flush_all(false).await?;
                if self.reader.is_idle() {
                    self.drain().await?;
                }
            }
        }
    }

    /// Connects one sink per target for partition `p` and reads where each stands.
    async fn open_lane(&mut self, p: &Partition, generation: u64) -> Result<Lane> {
        let mut ctx = crate::connect::target_context(self.cfg, "");
        ctx.pipeline = format!("{}/{}/{}", self.cfg.name, p.0, p.1);
        ctx.applying = true;
        let tables: Vec<Arc<TableSchema>> = self.catalog.known.values().cloned().collect();
        let mut sinks = Vec::with_capacity(self.cfg.sinks.len());
        for (i, target) in self.cfg.sinks.iter().enumerate() {
            let mut sink =
                crate::connect::with_transforms(self.cfg, i, target.connect(&ctx).await?);
            let state = sink.open(&tables).await?;
            sinks.push(LaneSink {
                sink,
                next: state.checkpoint.map(|cp| cp.end_lsn.0 as i64),
                tables: tables.iter().map(|t| t.name.clone()).collect(),
            });
        }
        let from_start = sinks.iter().all(|s| s.next.is_none());
        Ok(Lane {
            generation,
            sinks,
            pending: Vec::new(),
            txns: Vec::new(),
            in_flight: None,
            from_start,
            rows_seen: HashSet::new(),
        })
    }

    /// Applies every partition's pending messages (see [`Worker::flush`]).
    async fn flush_all(&mut self, force: bool) -> Result<()> {
        let keys: Vec<Partition> = self
            .lanes
            .iter()
            .filter(|(_, l)| !l.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let mut prepared = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(p) = self.prepare(&key, force).await? {
                prepared.push(p);
            }
        }
        // Partitions are written at once, each by its own sinks: their target sessions work
        // while this process decodes and folds.
        let writes = self.lanes.iter_mut().filter_map(|(key, lane)| {
            let batch = prepared.iter().find(|p| &p.key == key)?;
            Some(write_batch(lane, batch))
        });
        let done = futures::future::try_join_all(writes).await?;
        for batch in done.into_iter().flatten() {
            self.finish(batch);
        }
        Ok(())
    }

    /// Waits for every batch still being written, and logs them.
    async fn drain(&mut self) -> Result<()> {
        let running: Vec<BatchInFlight> = self
            .lanes
            .values_mut()
            .filter_map(|l| l.in_flight.take())
            .collect();
        for f in running {
            let done = f.wait().await?;
            self.finish(done);
        }
        Ok(())
    }

    /// Applies the partition's pending messages as one batch to each of its sinks (see
    /// [`Worker::prepare`]).
    async fn flush(&mut self, key: &Partition, force: bool) -> Result<()> {
        let Some(batch) = self.prepare(key, force).await? else {
            return Ok(());
        };
        let lane = self.lanes.get_mut(key).expect("the lane is open");
        if let Some(done) = write_batch(lane, &batch).await? {
            self.finish(done);
        }
        Ok(())
    }

    /// Counts a written batch, logs it and hints its offset to Kafka.
    fn finish(&mut self, batch: Done) {
        let (key, first, last, changes) = (&batch.key, batch.first, batch.last, batch.changes);
        self.applied.messages += batch.messages as u64;
        self.applied.changes += changes;
        self.applied.batches += 1;
        tracing::info!(topic = %key.0, partition = key.1, first, last, changes, "applied offsets {first}..={last} of {}/{}", key.0, key.1);
        self.reader.commit_hint(&[(key.0.clone(), key.1, last + 1)]);
    }

    /// Takes the partition's pending messages as one batch, decoded, with what cannot be
    /// applied parked. With `whole_transactions`, the messages of the last source transaction
    /// stay pending (its end may not have been read yet) unless `force`, or unless that one
    /// transaction holds more than [`WHOLE_LIMIT`] times `batch_messages` messages.
    async fn prepare(&mut self, key: &Partition, force: bool) -> Result<Option<Prepared>> {
        let Some(lane) = self.lanes.get_mut(key) else {
            return Ok(None);
        };
        let batch = if self.settings.whole_transactions && !force {
            let last = lane.txns.last().cloned().flatten();
            let keep = lane
                .txns
                .iter()
                .rev()
                .take_while(|t| t.is_some() && **t == last)
                .count();
            // A transaction is held whole past `batch_messages`, up to a bound on memory.
            if keep == lane.pending.len() && keep < self.settings.batch_messages * WHOLE_LIMIT {
                return Ok(None);
            }
            if keep == lane.pending.len() {
                tracing::warn!(topic = %key.0, partition = key.1, messages = keep, "a source transaction of more than {WHOLE_LIMIT} x batch_messages messages is applied in parts");
            }
            let cut = if keep == lane.pending.len() {
                keep
            } else {
                lane.pending.len() - keep
            };
            lane.txns.drain(..cut);
            lane.pending.drain(..cut).collect()
        } else {
            lane.txns.clear();
            std::mem::take(&mut lane.pending)
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.offset, last.offset);
        let mut letters = Vec::new();
        // (offset, table, change) in offset order.
        let mut changes: Vec<(i64, Arc<TableSchema>, cutover_core::Change)> = Vec::new();
        self.held.refresh(&self.letters)?;
        for delivery in &batch {
            let held = self.held.holds(&delivery.topic, delivery.key.as_deref());
            let decoded = self.decode(key, delivery).await;
            if held {
                let table = match &decoded {
                    Ok(Some((t, _))) => Some(t.name.clone()),
                    Ok(None) => continue,
                    Err((t, _)) => t.clone(),
                };
                letters.push(letter(
                    delivery,
                    table,
                    "waiting behind an earlier parked message of this key (cutover dlq replay applies them in order)".into(),
                ));
                continue;
            }
            match decoded {
                Ok(Some(c)) => changes.push((delivery.offset, c.0, c.1)),
                Ok(None) => {}
                Err((table, reason)) => {
                    if let Some(k) = &delivery.key {
                        // The letter's key is the message key as text: hold what it reads back as.
                        let text = String::from_utf8_lossy(k);
                        self.held.hold(&delivery.topic, text.as_bytes());
                    }
                    letters.push(letter(delivery, table, reason))
                }
            }
        }
        let lane = self.lanes.get_mut(key).expect("the lane is still open");
        // Truncates: see `Lane::from_start`.
        let multi = *self.partitions.get(&key.0).unwrap_or(&1) > 1;
        let mut kept = Vec::with_capacity(changes.len());
        for (offset, table, change) in changes {
            if change == cutover_core::Change::Truncate && multi {
                if lane.from_start && !lane.rows_seen.contains(&table.name) {
                    tracing::debug!(table = %table.name, offset, "truncate before any row of its partition: nothing to remove");
                    continue;
                }
                let delivery = batch.iter().find(|d| d.offset == offset).expect("read");
                letters.push(letter(
                    delivery,
                    Some(table.name.clone()),
                    truncate_refused(&table.name, self.partitions[&key.0], &key.0),
                ));
                continue;
            }
            lane.rows_seen.insert(table.name.clone());
            kept.push((offset, table, change));
        }
        if !letters.is_empty() {
            // Parked before the batch commits: a crash in between parks them again, never
            // loses them.
            let store = &self.letters;
            let count = letters.len() as u64;
            blocking(|| store.open()?.append(letters))?;
            self.applied.parked += count;
            tracing::warn!(topic = %key.0, partition = key.1, parked = count, "messages parked as dead letters (cutover dlq list)");
        }
        Ok(Some(Prepared {
            key: key.clone(),
            first,
            last,
            messages: batch.len(),
            changes: kept,
        }))
    }

    /// The table and change a message stands for; `Ok(None)` for a message that changes
    /// nothing or a table outside `source.tables`; the error (with the table when known) for
    /// one that cannot be applied.
    async fn decode(
        &mut self,
        key: &Partition,
        delivery: &Delivery,
    ) -> std::result::Result<
        Option<(Arc<TableSchema>, cutover_core::Change)>,
        (Option<TableName>, String),
    > {
        let Some(message) = read_message(
            self.cfg,
            self.settings,
            delivery.key.as_deref(),
            delivery.payload.as_deref(),
        )?
        else {
            return Ok(None);
        };
        let name = message.table.clone();
        if message.op == InboundOp::Truncate && !self.partitions.contains_key(&key.0) {
            let count = self
                .reader
                .partition_count(&key.0)
                .await
                .map_err(|e| (Some(name.clone()), e.to_string()))?;
            self.partitions.insert(key.0.clone(), count);
        }
        if message.op == InboundOp::Truncate
            && !message.truncate_everywhere
            && self.partitions.get(&key.0).copied().unwrap_or(1) > 1
        {
            // Sent to one partition only (Debezium): the rule that a truncate read before any
            // row of its table in its partition removes nothing holds only for a producer that
            // sends it to every partition. Parked, never dropped.
            return Err((
                Some(name.clone()),
                truncate_refused(&name, self.partitions[&key.0], &key.0),
            ));
        }
        self.catalog
            .change_of(&message, self.settings)
            .await
            .map(Some)
    }
}

/// A message's key and payload, read (`Ok(None)`: a message that changes nothing, or a table
/// outside `source.tables`).
fn read_message(
    cfg: &Pipeline,
    settings: &ApplySettings,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> std::result::Result<Option<Inbound>, (Option<TableName>, String)> {
    let Some(message) = inbound::read(&settings.read, key, payload).map_err(|e| (None, e))? else {
        return Ok(None);
    };
    let name = &message.table;
    if !cfg.tables.is_empty()
        && !cfg
            .tables
            .iter()
            .any(|p| cutover_postgres::catalog::matches(p, name))
    {
        return Ok(None);
    }
    Ok(Some(message))
}

impl TableDefinitions {
    /// The table and change `message` stands for, or why it cannot be applied.
    async fn change_of(
        &mut self,
        message: &Inbound,
        settings: &ApplySettings,
    ) -> std::result::Result<(Arc<TableSchema>, cutover_core::Change), (Option<TableName>, String)>
    {
        let name = &message.table;
        let table = self
            .resolve(name, message)
            .await
            .map_err(|e| (Some(name.clone()), e))?;
        let change = message
            .change(&table, &settings.read)
            .map_err(|e| (Some(name.clone()), e))?;
        Ok((table, change))
    }
}

/// What `cutover dlq replay` did with an apply pipeline's parked messages.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Applied to every target and removed from the file.
    pub applied: u64,
    /// Still parked: refused again (with the new reason), or waiting behind such a one.
    pub still: u64,
    /// Truncates, which are never replayed (see docs/apply.md).
    pub truncates: u64,
}

/// `cutover dlq replay` of an apply pipeline: the parked messages, oldest first, are read
/// again and applied to every target (after the cause was fixed: a column added, a table
/// created); those applied leave the file. One refused again stays, with its new reason and
/// one more attempt, and holds back the later messages of its key, as the workers do. The
/// file stays locked meanwhile (a worker parking a message waits). Truncates stay parked:
/// they are for the operator to apply by hand.
pub async fn replay(cfg: &Pipeline) -> Result<Replayed> {
    let settings = cfg.apply.as_ref().ok_or_else(|| {
        ConnectorError::fatal(format!("pipeline {} reads a PostgreSQL source", cfg.name))
    })?;
    check_targets(cfg)?;
    let mut catalog = TableDefinitions::connect(cfg).await?;
    let mut ctx = crate::connect::target_context(cfg, "");
    // A state row of its own: the partitions' offsets are not the replay's.
    ctx.pipeline = format!("{}/replay", cfg.name);
    ctx.applying = true;
    let mut sinks = Vec::with_capacity(cfg.sinks.len());
    for (i, target) in cfg.sinks.iter().enumerate() {
        let mut sink = crate::connect::with_transforms(cfg, i, target.connect(&ctx).await?);
        sink.open(&[]).await?;
        sinks.push((sink, HashSet::new()));
    }
    let store = FileStore::new(settings.dead_letter_file.clone());
    let mut file = store.open()?;
    let letters = file.read()?;
    let mut kept = Vec::new();
    let mut held = Held::default();
    let mut done = Replayed::default();
    // Positions that only grow, so no target takes a replayed change for one it has.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    for (n, letter) in letters.iter().enumerate() {
        let mut letter = letter.clone();
        let topic = letter.read_from.as_ref().map(|f| f.topic.clone());
        let key_text = (!letter.key.is_empty()).then(|| letter.key.clone());
        let payload = letter.payload.clone();
        if let (Some(topic), Some(key)) = (&topic, &key_text) {
            if held.holds(topic, Some(key.as_bytes())) {
                letter.reason = "waiting behind an earlier parked message of this key (cutover dlq replay applies them in order)".into();
                kept.push(letter);
                done.still += 1;
                continue;
            }
        }
        let decoded = match read_message(
            cfg,
            settings,
            key_text.as_deref().map(str::as_bytes),
            payload.as_deref().map(str::as_bytes),
        ) {
            Ok(Some(m)) if m.op == InboundOp::Truncate => {
                kept.push(letter);
                done.truncates += 1;
                continue;
            }
            Ok(Some(m)) => catalog.change_of(&m, settings).await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(None) => done.applied += 1,
            Ok(Some((table, change))) => {
                let at = Lsn(base + n as u64);
                for (sink, tables) in sinks.iter_mut() {
                    if tables.insert(table.name.clone()) {
                        add_table(sink.as_mut(), table.clone()).await?;
                    }
                    sink.apply_all(vec![
                        StreamEvent::Begin {
                            commit_lsn: at,
                            xid: 0,
                            commit_time_micros: base as i64,
                        },
                        StreamEvent::Change(ChangeEvent {
                            position: Position {
                                commit_lsn: at,
                                ordinal: 0,
                            },
                            table: table.clone(),
                            change: change.clone(),
                        }),
                        StreamEvent::Commit {
                            commit_lsn: at,
                            end_lsn: Lsn(at.0 + 1),
                            commit_time_micros: base as i64,
                        },
                    ])
                    .await?;
                }
                done.applied += 1;
            }
            Err((_, reason)) => {
                letter.reason = reason;
                letter.attempts += 1;
                if let (Some(topic), Some(key)) = (&topic, &key_text) {
                    held.hold(topic, key.as_bytes());
                }
                kept.push(letter);
                done.still += 1;
            }
        }
    }
    // Durable on every target before the letters leave the file.
    for (sink, _) in sinks.iter_mut() {
        sink.seal().await?;
    }
    file.settle(&letters, &kept)?;
    Ok(done)
}

/// One partition's batch, decoded: offsets `first..=last`, and its changes in offset order.
struct Prepared {
    key: Partition,
    first: i64,
    last: i64,
    messages: usize,
    changes: Vec<(i64, Arc<TableSchema>, cutover_core::Change)>,
}

/// A batch whose writes run in the background while the next batch is read and folded.
struct BatchInFlight {
    handle: Option<tokio::task::JoinHandle<Result<()>>>,
    done: Done,
}

/// What a batch applied, logged once its writes have committed.
#[derive(Debug, Clone)]
struct Done {
    key: Partition,
    first: i64,
    last: i64,
    messages: usize,
    changes: u64,
}

impl BatchInFlight {
    /// Waits for the batch's writes; what it applied once they committed.
    async fn wait(mut self) -> Result<Done> {
        let handle = self.handle.take().expect("waited once");
        match handle.await {
            Ok(result) => result.map(|()| self.done.clone()),
            Err(e) => Err(ConnectorError::fatal(format!(
                "a batch's write task failed: {e}"
            ))),
        }
    }
}

impl Drop for BatchInFlight {
    /// A batch dropped without waiting (a session that failed) is cancelled: its transaction
    /// is rolled back with its connection.
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// Writes a batch to each of the lane's sinks, as one source transaction (skipping what a sink
/// already holds). The changes are folded now; the writes run in the background, after the
/// lane's previous batch (one write of a sink at a time, in order). Returns the previous
/// batch, committed, if it was still running.
async fn write_batch(lane: &mut Lane, batch: &Prepared) -> Result<Option<Done>> {
    let (first, last, kept) = (batch.first, batch.last, &batch.changes);
    let mut previous = None;
    // Tables join a sink with no write in flight.
    let joining = lane.sinks.iter().any(|s| {
        kept.iter()
            .filter(|(o, ..)| s.next.is_none_or(|n| *o >= n))
            .any(|(_, t, _)| !s.tables.contains(&t.name))
    });
    if joining {
        if let Some(f) = lane.in_flight.take() {
            previous = Some(f.wait().await?);
        }
    }
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let mut applied_changes = 0u64;
    let mut written = Vec::with_capacity(lane.sinks.len());
    for (i, sink) in lane.sinks.iter_mut().enumerate() {
        let start = sink.next.map_or(first, |n| n.max(first));
        if start > last {
            continue;
        }
        for (_, table, _) in kept.iter().filter(|(o, ..)| *o >= start) {
            if sink.tables.insert(table.name.clone()) {
                add_table(sink.sink.as_mut(), table.clone()).await?;
            }
        }
        let commit_lsn = Lsn(start as u64);
        let mut events = Vec::with_capacity(kept.len() + 2);
        events.push(StreamEvent::Begin {
            commit_lsn,
            xid: 0,
            commit_time_micros: now_micros,
        });
        let mut n = 0u32;
        for (_, table, change) in kept.iter().filter(|(o, ..)| *o >= start) {
            events.push(StreamEvent::Change(ChangeEvent {
                position: Position {
                    commit_lsn,
                    ordinal: n,
                },
                table: table.clone(),
                change: change.clone(),
            }));
            n += 1;
        }
        events.push(StreamEvent::Commit {
            commit_lsn,
            end_lsn: Lsn(last as u64 + 1),
            commit_time_micros: now_micros,
        });
        sink.sink.apply_all(events).await?;
        sink.next = Some(last + 1);
        applied_changes = applied_changes.max(u64::from(n));
        written.push(i);
    }
    if let Some(f) = lane.in_flight.take() {
        previous = Some(f.wait().await?);
    }
    // Not settled: a PostgreSQL target commits without waiting for its flush, and a crash of
    // the target loses the batch's rows and its offset together, so the partition is read
    // again from the offset the target kept.
    let writes: Vec<cutover_core::PendingWrite> =
        written.iter().map(|&i| lane.sinks[i].sink.seal()).collect();
    let handle = tokio::spawn(async move {
        for write in writes {
            write.await?;
        }
        Ok(())
    });
    lane.in_flight = Some(BatchInFlight {
        handle: Some(handle),
        done: Done {
            key: batch.key.clone(),
            first,
            last,
            messages: batch.messages,
            changes: applied_changes,
        },
    });
    Ok(previous)
}

/// Adds a table to a sink; a table another worker created at the same moment is taken on a
/// second try.
/// Why a partition cannot be applied from `next` (the offset after the last one the target
/// holds), given its first offset `low` and next offset `high` now: messages in between were
/// deleted before they were read (retention, `DeleteRecords`), or the topic was made anew
/// (empty now, though the target applied some of it). Either way changes would be lost
/// without a trace, so the worker stops.
fn retention_gap(
    topic: &str,
    partition: i32,
    next: i64,
    low: i64,
    high: i64,
) -> Option<ConnectorError> {
    let lost = if next < low {
        format!(
            "the target holds {topic}/{partition} up to offset {}, but the partition now starts at offset {low}: {} message(s) were deleted (retention.ms, retention.bytes or DeleteRecords) before cutover apply read them",
            next - 1,
            low - next
        )
    } else if high == 0 && next > 0 {
        format!(
            "the target holds {topic}/{partition} up to offset {}, but the partition is empty: the topic was deleted and created again, or these are another cluster's topics",
            next - 1
        )
    } else {
        return None;
    };
    Some(ConnectorError::fatal(lost).with_hint(
        "the changes in those messages never reached the target: copy the affected tables again from the source (cutover resnapshot, or a new snapshot), then forget this group's progress for the partition; keep retention longer than the longest time apply workers may be down",
    ))
}

async fn add_table(sink: &mut dyn Sink, table: Arc<TableSchema>) -> Result<()> {
    match sink.add_table(table.clone()).await {
        Ok(()) => Ok(()),
        Err(first) => {
            tracing::debug!(error = %first, table = %table.name, "adding the table again");
            sink.add_table(table).await
        }
    }
}

/// Why a truncate read from one partition of a topic of `partitions` is parked.
fn truncate_refused(table: &TableName, partitions: usize, topic: &str) -> String {
    format!(
        "a truncate of {table} read from one of the {partitions} partitions of {topic} is not applied: it would also remove rows other partitions applied after it. Truncate the target table by hand if it is meant"
    )
}

fn letter(delivery: &Delivery, table: Option<TableName>, reason: String) -> Letter {
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let (schema, name) = table.map_or((String::new(), String::new()), |t| (t.schema, t.name));
    Letter {
        id: 0,
        schema,
        table: name,
        key: text(&delivery.key).unwrap_or_default(),
        op: "apply".into(),
        commit_lsn: String::new(),
        ordinal: delivery.offset as u64,
        destination: format!(
            "{}/{}@{}",
            delivery.topic, delivery.partition, delivery.offset
        ),
        payload: text(&delivery.payload),
        reason,
        attempts: 1,
        parked_at: cutover_core::dead_letters::now_secs(),
        read_from: Some(ReadFrom {
            topic: delivery.topic.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
        }),
    }
}

/// What `cutover status` shows of an apply pipeline: each partition's next offset per target,
/// read from the targets' saved state (PostgreSQL: `cutover.checkpoints` rows named
/// `<pipeline>/<topic>/<partition>`).
pub async fn stored_offsets(cfg: &Pipeline) -> Result<BTreeMap<String, Vec<(String, i64)>>> {
    let mut out = BTreeMap::new();
    for target in crate::connect::postgres_targets(cfg) {
        let client = target.endpoint()?.connect().await?;
        let rows = client
            .query(
                "SELECT pipeline, (end_lsn - '0/0'::pg_lsn)::int8 FROM cutover.checkpoints
                  WHERE sink = $1 AND starts_with(pipeline, $2) ORDER BY pipeline",
                &[&target.name, &format!("{}/", cfg.name)],
            )
            .await
            .map_err(|e| cutover_postgres::error::classify(e, "cannot read the stored offsets"))?;
        out.insert(
            target.name.clone(),
            rows.iter()
                .map(|r| {
                    let p: String = r.get(0);
                    (p[cfg.name.len() + 1..].to_string(), r.get(1))
                })
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_before_the_partitions_first_offset_is_refused() {
        assert!(retention_gap("t", 0, 100, 0, 500).is_none());
        assert!(retention_gap("t", 0, 100, 100, 500).is_none());
        assert!(retention_gap("t", 0, 0, 0, 0).is_none());
        let e = retention_gap("orders", 2, 100, 250, 900)
            .unwrap()
            .to_string();
        assert!(
            e.contains("orders/2 up to offset 99") && e.contains("150 message(s) were deleted"),
            "{e}"
        );
        let e = retention_gap("orders", 2, 100, 0, 0).unwrap().to_string();
        assert!(e.contains("the partition is empty"), "{e}");
    }
}
