//! The pipeline runtime: preflight, snapshot, streaming, checkpointing, shutdown.
//!
//! ```text
//! source ──► per-sink bounded queue (events, bytes) ──► sink driver ──► sink
//!    ▲                                                       │
//!    └──── confirm(min durable end LSN over all sinks) ◄─────┘
//! ```
//! The slot is confirmed only to the lowest transaction end that every sink has made durable,
//! or, when nothing is in flight, to the WAL end the server reported idle. A crash at any point
//! replays from there; sinks are idempotent and the drivers drop what a sink already has.

use std::sync::Arc;
use std::time::Duration;

use cutover_core::transform::TransformSink;
use cutover_core::{
    Change, Checkpoint, ConnectorError, Lsn, Result, Row, Sink, SinkState, Source, StreamEvent,
    StreamItem, TableCopy, TableSchema,
};
use cutover_kafka::KafkaSink;
use cutover_mongodb::MongoSink;
use cutover_nats::NatsSink;
use cutover_postgres::catalog::SourceTable;
use cutover_postgres::source::SnapshotSession;
use cutover_postgres::{PgEndpoint, PgSink, PgSinkOptions, PgSource, PgSourceOptions, SlotStart};
use futures::{FutureExt, StreamExt, TryStreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{self, Pipeline};
use crate::queue::{self, Control, Queued};
use crate::rate;
use crate::status::{self, Phase, SharedStatus, SinkProgress, TableProgress};

/// Most stream events handed to the sink queues in one message.
const DISPATCH_BATCH: usize = 1024;

/// A batch smaller than this, read in the middle of a transaction, makes the reader pause for
/// `GATHER_PAUSE` so that the rest of the transaction gathers in the socket.
const GATHER_BELOW: usize = 64;
const GATHER_PAUSE: Duration = Duration::from_millis(1);

/// How long a starting run waits for an earlier session to release the slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Runs the pipeline until `stop` turns true (then drains, confirms and returns `Ok`), or a
/// fatal error. Retryable errors after the pipeline has started are retried with backoff from
/// the last durable position; errors before it started (a wrong password, an unreachable
/// server) are returned at once.
pub async fn run(
    cfg: &Pipeline,
    status: SharedStatus,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut started = false;
    let mut backoff = Duration::from_millis(500);
    loop {
        let began = Instant::now();
        match run_once(cfg, &status, &mut stop, &mut started).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && started && !*stop.borrow() => {
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                let wait = backoff + Duration::from_millis(jitter);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "pipeline interrupted; resuming from the last durable position");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Builds the source connection options from the pipeline.
pub fn source_options(cfg: &Pipeline) -> PgSourceOptions {
    PgSourceOptions {
        tables: cfg.tables.clone(),
        slot: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        application_name: format!("cutover-{}", cfg.name),
        stream_buffer_events: cfg.stream_buffer_events,
    }
}

/// Connects the source and resolves its tables.
pub async fn connect_source(cfg: &Pipeline) -> Result<PgSource> {
    let endpoint = PgEndpoint::parse(&cfg.source_url, "source")?;
    PgSource::connect(endpoint, source_options(cfg)).await
}

/// Connects every PostgreSQL sink of the pipeline.
pub async fn connect_pg_sinks(cfg: &Pipeline) -> Result<Vec<PgSink>> {
    let mut sinks = Vec::new();
    for sink in &cfg.sinks {
        if let config::Sink::Postgres {
            name,
            url,
            create_tables,
        } = sink
        {
            sinks.push(connect_pg_sink(cfg, name, url, *create_tables).await?);
        }
    }
    Ok(sinks)
}

async fn connect_pg_sink(
    cfg: &Pipeline,
    name: &str,
    url: &str,
    create_tables: bool,
) -> Result<PgSink> {
    let endpoint = PgEndpoint::parse(url, "target")?;
    PgSink::connect(
        endpoint,
        PgSinkOptions {
            apply_schema_changes: cfg.apply_schema_changes,
            name: name.to_string(),
            pipeline: cfg.name.clone(),
            create_tables,
            batch_bytes: cfg.batch_bytes,
        },
    )
    .await
}

/// Connects every sink of the pipeline, in the order the file declares them. `database` is the
/// source database's name, which Debezium envelopes report.
pub async fn connect_sinks(cfg: &Pipeline, database: &str) -> Result<Vec<Box<dyn Sink>>> {
    let mut sinks = Vec::with_capacity(cfg.sinks.len());
    for (i, sink) in cfg.sinks.iter().enumerate() {
        let connected = connect_sink(cfg, sink, database).await?;
        sinks.push(with_transforms(cfg, i, connected));
    }
    Ok(sinks)
}

/// The sink behind its transform rules, when the pipeline or the sink declares any.
pub fn with_transforms(cfg: &Pipeline, index: usize, sink: Box<dyn Sink>) -> Box<dyn Sink> {
    let specs = cfg.sink_transforms.get(index).cloned().unwrap_or_default();
    if cfg.transforms.is_empty_with(&specs) {
        sink
    } else {
        Box::new(TransformSink::new(sink, cfg.transforms.clone(), specs))
    }
}

/// Connects one sink.
pub async fn connect_sink(
    cfg: &Pipeline,
    sink: &config::Sink,
    database: &str,
) -> Result<Box<dyn Sink>> {
    Ok(match sink {
        config::Sink::Postgres {
            name,
            url,
            create_tables,
        } => Box::new(connect_pg_sink(cfg, name, url, *create_tables).await?),
        config::Sink::Kafka(options) => {
            let mut options = options.clone();
            options.source_database = database.to_string();
            Box::new(KafkaSink::connect(options).await?)
        }
        config::Sink::Nats(options) => {
            let mut options = options.clone();
            options.source_database = database.to_string();
            Box::new(NatsSink::connect(options).await?)
        }
        config::Sink::Mongodb(options) => Box::new(MongoSink::connect(options.clone()).await?),
    })
}

/// Turns failed preflight findings into one fatal error listing every failure and its fix.
pub fn refuse_failures(findings: &[cutover_postgres::preflight::Finding]) -> Result<()> {
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| {
            format!(
                "{} ({}; fix: {})",
                f.check,
                f.detail,
                f.fix.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ConnectorError::fatal(format!(
            "the source is not ready for replication: {}.",
            failed.join("; ")
        )))
    }
}

async fn run_once(
    cfg: &Pipeline,
    status: &SharedStatus,
    stop: &mut watch::Receiver<bool>,
    started: &mut bool,
) -> Result<()> {
    status::update(status, |s| s.phase = Phase::Starting);
    let source = connect_source(cfg).await?;
    // After a crash the old walsender holds the slot until it notices; give it time to go.
    source.wait_slot_free(SLOT_RELEASE_WAIT).await?;
    refuse_failures(&source.preflight().await?)?;
    let schemas = source.schemas();
    let mut sinks = connect_sinks(cfg, &source.endpoint().database()).await?;

    let slot_exists = source.slot_exists().await?;
    let mut states = Vec::with_capacity(sinks.len());
    for sink in sinks.iter_mut() {
        let state = sink.open(&schemas).await?;
        if !slot_exists && (state.checkpoint.is_some() || !state.copied_tables.is_empty()) {
            return Err(ConnectorError::fatal(format!(
                "replication slot {} does not exist on the source, but sink {} holds progress from an earlier run: \
                 changes made since that run may be missing from it, and cutover will not guess.",
                cfg.slot,
                sink.name()
            ))
            .with_hint(
                "start the copy over: empty the target tables, run `cutover teardown --target-state PIPELINE`, then run again",
            ));
        }
        states.push(state);
    }
    source.ensure_publication().await?;
    let slot = source.ensure_slot().await?;
    *started = true;

    // Snapshot every table some sink has not copied yet.
    let needs: Vec<(&SourceTable, Vec<usize>)> = source
        .tables()
        .iter()
        .map(|t| {
            let sinks: Vec<usize> = (0..states.len())
                .filter(|&i| !states[i].copied_tables.contains_key(&t.schema.name))
                .collect();
            (t, sinks)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if needs.is_empty() {
        drop(slot);
    } else {
        let session = match slot {
            SlotStart::Created(session) => session,
            SlotStart::Existing => source.export_snapshot().await?,
        };
        status::update(status, |s| {
            s.phase = Phase::Snapshot;
            s.tables = needs
                .iter()
                .map(|(t, _)| TableProgress {
                    name: t.schema.name.to_string(),
                    rows_copied: 0,
                    rows_estimate: t.rows_estimate,
                    done: false,
                })
                .collect();
        });
        tracing::info!(tables = needs.len(), snapshot_lsn = %session.lsn, "copying tables");
        let copy = copy_tables(&source, &sinks, &needs, &session, cfg, status);
        tokio::select! {
            r = copy => r?,
            _ = stop.changed() => {
                tracing::info!("stopped during the snapshot; unfinished table copies were rolled back and restart on the next run");
                return Ok(());
            }
        }
        for (table, idxs) in &needs {
            for &i in idxs {
                states[i]
                    .copied_tables
                    .insert(table.schema.name.clone(), session.lsn);
            }
        }
        drop(session);
    }
    merge_partitions(&source, &mut sinks, &states, cfg).await?;

    stream(cfg, &source, sinks, states, status, stop).await
}

/// Writes the rows of partitions attached since their root was copied (see
/// `cutover_postgres::partitions`) to every sink, as inserts in transactions at the sink's own
/// checkpoint (so the checkpoint does not move), chunk by chunk, then records them as copied.
/// Streaming then replays the changes made to those rows since the sink's checkpoint.
async fn merge_partitions(
    source: &PgSource,
    sinks: &mut [Box<dyn Sink>],
    states: &[SinkState],
    cfg: &Pipeline,
) -> Result<()> {
    let (merge, record) = source.partition_plan().await?;
    for (root, partition) in &merge {
        let Some(table) = source.tables().iter().find(|t| &t.schema.name == root) else {
            continue;
        };
        tracing::info!(%root, %partition, "copying the rows a partition held when it was attached");
        let (tx, mut rx) = mpsc::channel::<Vec<Row>>(4);
        let read = source.copy_partition(table, partition, cfg.chunk_bytes, tx);
        let write = async {
            let mut rows_total = 0u64;
            while let Some(rows) = rx.recv().await {
                for (sink, state) in sinks.iter_mut().zip(states) {
                    let at = state.checkpoint.unwrap_or_else(|| {
                        // Never streamed: the oldest copy's position, which every table's own
                        // snapshot position is at or past.
                        let lsn = state
                            .copied_tables
                            .values()
                            .min()
                            .copied()
                            .unwrap_or(Lsn::ZERO);
                        Checkpoint {
                            commit_lsn: lsn,
                            end_lsn: lsn,
                        }
                    });
                    let inserts = rows
                        .iter()
                        .enumerate()
                        .map(|(n, row)| {
                            StreamEvent::Change(cutover_core::ChangeEvent {
                                position: cutover_core::Position {
                                    commit_lsn: at.commit_lsn,
                                    ordinal: n as u32,
                                },
                                table: table.schema.clone(),
                                change: Change::Insert { row: row.clone() },
                            })
                        })
                        .collect();
                    sink.apply_all(transaction_at(at, inserts)).await?;
                    sink.seal().await?;
                }
                rows_total += rows.len() as u64;
            }
            Ok::<u64, ConnectorError>(rows_total)
        };
        let (read, write) = tokio::join!(read, write);
        let rows = write?;
        read?;
        tracing::info!(%root, %partition, rows, "partition rows copied; its later changes follow from the stream");
    }
    if let Err(e) = source.record_partitions(&record).await {
        // Without the record, partitions attached later cannot be told apart: say so.
        tracing::warn!(error = %e, "cannot record the partitions of the partitioned tables on the publication; rows of partitions attached later will not be copied (make cutover's user own the publication)");
    }
    Ok(())
}

/// `changes` wrapped in one transaction stamped with `at`, a position the sink already has:
/// the sink applies them without its checkpoint moving (rows of a merged partition, changes
/// held during a table's copy, or none, to step a checkpoint back).
fn transaction_at(at: Checkpoint, changes: Vec<StreamEvent>) -> Vec<StreamEvent> {
    let time = cutover_core::outbox::now_micros();
    let mut events = Vec::with_capacity(changes.len() + 2);
    events.push(StreamEvent::Begin {
        commit_lsn: at.commit_lsn,
        xid: 0,
        commit_time_micros: time,
    });
    events.extend(changes);
    events.push(StreamEvent::Commit {
        commit_lsn: at.commit_lsn,
        end_lsn: at.end_lsn,
        commit_time_micros: time,
    });
    events
}

/// Copies tables (up to `parallel_tables` at a time) into the sinks that need them.
async fn copy_tables(
    source: &PgSource,
    sinks: &[Box<dyn Sink>],
    needs: &[(&SourceTable, Vec<usize>)],
    session: &SnapshotSession,
    cfg: &Pipeline,
    status: &SharedStatus,
) -> Result<()> {
    let limit = rate::Limit::per_second(cfg.snapshot_rows_per_s);
    let limit = &limit;
    futures::stream::iter(needs.iter().enumerate().map(|(n, (table, idxs))| {
        copy_table(source, sinks, table, idxs, session, cfg, status, n, limit)
    }))
    .buffer_unordered(cfg.parallel_tables)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn copy_table(
    source: &PgSource,
    sinks: &[Box<dyn Sink>],
    table: &SourceTable,
    idxs: &[usize],
    session: &SnapshotSession,
    cfg: &Pipeline,
    status: &SharedStatus,
    progress_index: usize,
    limit: &Option<rate::Limit>,
) -> Result<()> {
    let depth =
        (cfg.queue_bytes / cfg.parallel_tables.max(1) / cfg.chunk_bytes.max(1)).clamp(2, 64);
    let (tx, mut rx) = mpsc::channel::<Vec<Row>>(depth);
    let read = source.copy_table(table, session, cfg.chunk_bytes, tx);
    let write = async {
        let mut copies: Vec<Box<dyn TableCopy>> = Vec::with_capacity(idxs.len());
        for &i in idxs {
            copies.push(
                sinks[i]
                    .begin_copy(table.schema.clone(), session.lsn)
                    .await?,
            );
        }
        while let Some(rows) = rx.recv().await {
            if let Some(limit) = limit {
                limit.take(rows.len() as u64).await;
            }
            for copy in copies.iter_mut() {
                copy.write(&rows).await?;
            }
            status::update(status, |s| {
                s.tables[progress_index].rows_copied += rows.len() as u64;
            });
        }
        Ok::<_, ConnectorError>(copies)
    };
    let (read, write) = tokio::join!(read, write);
    // Finish (commit) only when the whole table was read: a failed read rolls every copy back.
    let copies = write?;
    let rows = read?;
    for copy in copies {
        copy.finish().await?;
    }
    status::update(status, |s| s.tables[progress_index].done = true);
    tracing::info!(table = %table.schema.name, rows, "table copied");
    Ok(())
}

/// Where streaming starts: the lowest position any sink needs.
fn stream_start(states: &[SinkState]) -> Lsn {
    states
        .iter()
        .map(|s| match s.checkpoint {
            Some(cp) => cp.end_lsn,
            // Lsn::ZERO marks a table the sink does not take (excluded by its rules).
            None => s
                .copied_tables
                .values()
                .copied()
                .filter(|&l| l != Lsn::ZERO)
                .min()
                .unwrap_or(Lsn::ZERO),
        })
        .min()
        .unwrap_or(Lsn::ZERO)
}

async fn stream(
    cfg: &Pipeline,
    source: &PgSource,
    sinks: Vec<Box<dyn Sink>>,
    states: Vec<SinkState>,
    status: &SharedStatus,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let start = stream_start(&states);
    let mut stream = source.stream(start).await?;
    tracing::info!(%start, slot = %cfg.slot, "streaming changes");

    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<(usize, Checkpoint)>();
    let mut queues = Vec::with_capacity(sinks.len());
    let mut drivers = JoinSet::new();
    let mut durable: Vec<Lsn> = Vec::with_capacity(sinks.len());
    status::update(status, |s| {
        s.phase = Phase::Streaming;
        s.confirmed = start;
        s.sinks = sinks
            .iter()
            .zip(&states)
            .map(|(k, st)| SinkProgress {
                name: k.name().to_string(),
                durable: st.checkpoint.map_or(start, |c| c.end_lsn),
                changes_applied: 0,
                queue_depth: 0,
                queue_bytes: 0,
                stalled_ms: 0,
                throttled_ms: 0,
                parked: 0,
                last_commit_micros: None,
            })
            .collect();
    });
    let sink_names: Vec<String> = sinks.iter().map(|s| s.name().to_string()).collect();
    let mut throttled = Vec::with_capacity(sinks.len());
    let mut pacers = JoinSet::new();
    for (index, (sink, state)) in sinks.into_iter().zip(states).enumerate() {
        let (tx, mut rx) = queue::bounded(cfg.queue_events, cfg.queue_bytes);
        let held = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        throttled.push(held.clone());
        let limits = cfg.sink_rates.get(index).copied().unwrap_or_default();
        let (changes, bytes) = (
            rate::Limit::per_second(limits.changes_per_s),
            rate::Limit::per_second(limits.bytes_per_s),
        );
        if changes.is_some() || bytes.is_some() {
            // A pacer between the queue and the driver: the driver never waits on a limit
            // with a write in flight, and the byte permits travel on with the batches.
            let (paced_tx, paced_rx) = mpsc::channel(1);
            pacers.spawn(rate::pace(rx, paced_tx, changes, bytes, held));
            rx = paced_rx;
        }
        durable.push(state.checkpoint.map_or(start, |c| c.end_lsn.max(start)));
        drivers.spawn(drive_sink(
            index,
            sink,
            rx,
            state,
            durable_tx.clone(),
            DriverLimits {
                truncate: cfg.sink_truncate.get(index).copied().unwrap_or(true),
                hold_bytes: cfg.queue_bytes.max(64 << 20),
                batch_bytes: cfg.batch_bytes,
                flush_interval: Duration::from_millis(cfg.flush_interval_ms),
                linger: Duration::from_millis(cfg.linger_ms),
            },
            status.clone(),
        ));
        queues.push(tx);
    }
    drop(durable_tx);

    let mut stalled_ms = vec![0u64; queues.len()];
    let mut stall_logged = vec![0u64; queues.len()];
    let mut stall_log = tokio::time::interval(Duration::from_secs(10));
    let mut confirmed = start;
    let mut last_dispatched = start;
    let mut in_txn = false;
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    let min_durable = |d: &[Lsn]| d.iter().copied().min().unwrap_or(start);
    // Looks for new tables that match the selection; finding one ends this run gracefully and
    // the next one copies it (the first tick, at once, is skipped).
    let discover_every = Duration::from_secs(cfg.discover_interval_s.max(1));
    let mut discover = tokio::time::interval_at(Instant::now() + discover_every, discover_every);
    let mut found_tables: Vec<cutover_core::TableName> = Vec::new();
    // Tables joining while streaming: copied one at a time beside the stream (see `Control`).
    let mut waiting: Vec<SourceTable> = Vec::new();
    let mut joined: std::collections::HashSet<cutover_core::TableName> = Default::default();
    let mut joining: Option<Joining> = None;
    let mut copy_task: Option<CopyTask<'_>> = None;
    let mut steps: Option<mpsc::Receiver<Control>> = None;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    // While a table joins, the slot stays at or before the position its copy began from.
    let mut cap: Option<Lsn> = None;
    let capped = |min: Lsn, cap: Option<Lsn>| cap.map_or(min, |c| min.min(c));
    // After each step of a joining table's copy the stream gets its turn (or GATHER_PAUSE to
    // offer something), so a fast copy does not hold the other tables' changes back.
    let mut stream_turn = false;

    let outcome: Result<()> = 'run: loop {
        if joining.is_none() && !in_txn {
            if let Some(table) = waiting.pop() {
                let name = table.schema.name.clone();
                stream.learn_table(table.schema.clone());
                if let Err(e) = source.publish_table(&name).await {
                    break 'run Err(e);
                }
                let add = Control::AddTable(table.schema.clone());
                tokio::select! {
                    sent = send_all(&queues, &add, 0) => if sent.is_err() {
                        break 'run Err(first_driver_error(&mut drivers).await);
                    },
                    _ = stop.changed() => break 'run Ok(()),
                }
                cap = Some(confirmed.max(last_dispatched));
                let mut progress_index = 0;
                status::update(status, |s| {
                    s.tables.push(TableProgress {
                        name: name.to_string(),
                        rows_copied: 0,
                        rows_estimate: table.rows_estimate,
                        done: false,
                    });
                    progress_index = s.tables.len() - 1;
                });
                tracing::info!(table = %name, "a new table matches source.tables: copying it beside the stream; its changes wait in each sink until the copy is complete");
                let (steps_tx, steps_rx) = mpsc::channel(2);
                copy_task = Some(Box::pin(copy_joining(
                    source,
                    table,
                    cfg,
                    steps_tx,
                    done_tx.clone(),
                )));
                steps = Some(steps_rx);
                joining = Some(Joining {
                    name,
                    finished: 0,
                    progress_index,
                });
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break 'run Ok(()),
            copied = run_copy(&mut copy_task) => {
                copy_task = None;
                match copied {
                    Ok(rows) => tracing::info!(rows, "new table read from the source; the sinks finish its copy"),
                    // Retryable: the next run copies the table with streaming paused.
                    Err(e) => break 'run Err(e),
                }
            }
            _ = tokio::time::sleep(GATHER_PAUSE), if stream_turn => stream_turn = false,
            step = next_step(&mut steps), if !in_txn && !stream_turn => match step {
                None => steps = None,
                Some(step) => {
                    let size = match &step {
                        Control::CopyRows { rows, .. } => {
                            let n = rows.len() as u64;
                            if let Some(j) = &joining {
                                status::update(status, |s| s.tables[j.progress_index].rows_copied += n);
                            }
                            rows.iter().map(Row::size).sum()
                        }
                        _ => 0,
                    };
                    tokio::select! {
                        sent = send_all(&queues, &step, size) => if sent.is_err() {
                            break 'run Err(first_driver_error(&mut drivers).await);
                        },
                        _ = stop.changed() => break 'run Ok(()),
                    }
                    stream_turn = true;
                }
            },
            Some(_) = done_rx.recv() => {
                if let Some(j) = joining.as_mut() {
                    j.finished += 1;
                    if j.finished == queues.len() {
                        tracing::info!(table = %j.name, "new table copied into every sink; it streams like the others");
                        status::update(status, |s| s.tables[j.progress_index].done = true);
                        joined.insert(j.name.clone());
                        joining = None;
                        cap = None;
                    }
                }
            }
            _ = discover.tick(), if cfg.discover_interval_s > 0 && !in_txn => {
                let found = match source.new_tables().await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for new tables; streaming goes on");
                        Vec::new()
                    }
                };
                let found: Vec<_> = found
                    .into_iter()
                    .filter(|n| {
                        !joined.contains(n)
                            && joining.as_ref().is_none_or(|j| &j.name != n)
                            && !waiting.iter().any(|t| &t.schema.name == n)
                    })
                    .collect();
                for name in found {
                    match source.resolve_table(&name).await {
                        Ok(Some(table)) if table.schema.has_key() && table.relkind != 'p' => {
                            waiting.push(table)
                        }
                        // Keyless (refused by the preflight with its fix), gone, or partitioned
                        // (its partitions are tracked from the start of a run): the next run
                        // takes it.
                        Ok(_) => found_tables.push(name),
                        Err(e) => tracing::warn!(error = %e, table = %name, "cannot read a new table's definition; looking again at the next tick"),
                    }
                }
                if !found_tables.is_empty() {
                    tracing::info!(tables = ?found_tables.iter().map(ToString::to_string).collect::<Vec<_>>(), "new partitioned or keyless tables match source.tables: draining, then copying them under a snapshot of their own (or refusing them with the fix)");
                    break 'run Ok(());
                }
                let attached = match source.new_partitions().await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for attached partitions; streaming goes on");
                        Vec::new()
                    }
                };
                if !attached.is_empty() {
                    tracing::info!(partitions = ?attached.iter().map(|(r, p)| format!("{p} of {r}")).collect::<Vec<_>>(), "partitions attached to replicated tables: draining, then copying the rows they held");
                    found_tables = attached.into_iter().map(|(_, p)| p).collect();
                    break 'run Ok(());
                }
            }
            Some(joined) = drivers.join_next() => break 'run Err(driver_ended(joined)),
            Some((i, cp)) = durable_rx.recv() => {
                durable[i] = durable[i].max(cp.end_lsn);
                let min = capped(min_durable(&durable), cap);
                if min > confirmed {
                    stream.confirm(min);
                    confirmed = min;
                    status::update(status, |s| s.confirmed = confirmed);
                }
            }
            _ = sample.tick() => {
                let wal = source.current_wal_lsn().await?;
                let depths: Vec<(usize, usize)> = queues.iter().map(|q| (q.depth(), q.bytes_held())).collect();
                status::update(status, |s| {
                    s.source_wal = wal.max(confirmed);
                    for (i, (p, (depth, bytes))) in s.sinks.iter_mut().zip(&depths).enumerate() {
                        p.queue_depth = *depth;
                        p.queue_bytes = *bytes;
                        p.stalled_ms = stalled_ms[i];
                        p.throttled_ms = throttled[i].load(std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            _ = stall_log.tick() => {
                // Backpressure in the logs: which sink held the reader back, and for how long.
                for (i, q) in queues.iter().enumerate() {
                    let new = stalled_ms[i] - stall_logged[i];
                    if new > 0 {
                        tracing::info!(
                            sink = %sink_names[i],
                            stalled_ms = new,
                            queue_batches = q.depth(),
                            queue_bytes = q.bytes_held(),
                            throttled_ms = throttled[i].load(std::sync::atomic::Ordering::Relaxed),
                            "backpressure: the source reader waited for this sink's full queue"
                        );
                        stall_logged[i] = stalled_ms[i];
                    }
                }
            }
            item = stream.next() => match item {
                Err(e) => break 'run Err(e),
                Ok(None) => break 'run Ok(()),
                Ok(Some(StreamItem::Idle { wal_end })) => {
                    stream_turn = false;
                    if !in_txn && cap.is_none() && min_durable(&durable) >= last_dispatched && wal_end > confirmed {
                        stream.confirm(wal_end);
                        confirmed = wal_end;
                        status::update(status, |s| {
                            s.confirmed = confirmed;
                            s.source_wal = s.source_wal.max(wal_end);
                        });
                    }
                }
                Ok(Some(StreamItem::Event(event))) => {
                    stream_turn = false;
                    // Take every event already decoded (without waiting) and hand them on as one
                    // batch: one queue message per sink instead of one per change.
                    let mut batch = vec![event];
                    let mut idle = None;
                    while batch.len() < DISPATCH_BATCH {
                        match stream.next().now_or_never() {
                            Some(Ok(Some(StreamItem::Event(e)))) => batch.push(e),
                            Some(Ok(Some(StreamItem::Idle { wal_end }))) => {
                                idle = Some(wal_end);
                                break;
                            }
                            Some(Err(e)) => break 'run Err(e),
                            Some(Ok(None)) | None => break,
                        }
                    }
                    for event in &batch {
                        match event {
                            StreamEvent::Begin { .. } => in_txn = true,
                            StreamEvent::Commit { end_lsn, .. } => {
                                in_txn = false;
                                last_dispatched = *end_lsn;
                            }
                            StreamEvent::Change(_) => {}
                        }
                    }
                    let small = batch.len() < GATHER_BELOW;
                    let last = queues.len() - 1;
                    let mut batch = Some(batch);
                    for (i, q) in queues.iter().enumerate() {
                        let events = if i == last { batch.take() } else { batch.clone() }
                            .expect("the batch is kept until the last queue");
                        let began = Instant::now();
                        tokio::select! {
                            sent = q.send(events) => {
                                stalled_ms[i] += began.elapsed().as_millis() as u64;
                                if sent.is_err() {
                                // The driver ended; its result says why.
                                match drivers.join_next().await {
                                    Some(joined) => break 'run Err(driver_ended(joined)),
                                    None => break 'run Err(ConnectorError::fatal("a sink stopped")),
                                }
                            }},
                            _ = stop.changed() => break 'run Ok(()),
                        }
                    }
                    if let Some(wal_end) = idle {
                        if !in_txn && cap.is_none() && min_durable(&durable) >= last_dispatched && wal_end > confirmed {
                            stream.confirm(wal_end);
                            confirmed = wal_end;
                        }
                    }
                    if small && in_txn {
                        // Inside a transaction the rest of it is already committed and on its
                        // way: pausing a moment lets it gather in the socket, so it is read in
                        // large slices instead of one wake-up per few messages (measured: half
                        // of cutover's CPU, and a third more apply throughput on 2 cores).
                        // Self-limiting: once messages arrive faster than GATHER_BELOW per
                        // pause, batches are large and there is no pause.
                        tokio::time::sleep(GATHER_PAUSE).await;
                    }
                }
            }
        }
    };
    outcome?;

    // Graceful stop: let every sink write what it has, then confirm what they made durable.
    status::update(status, |s| s.phase = Phase::Stopping);
    drop(queues);
    while let Some(joined) = drivers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(ConnectorError::fatal(format!("a sink task failed: {e}"))),
        }
    }
    while let Ok((i, cp)) = durable_rx.try_recv() {
        durable[i] = durable[i].max(cp.end_lsn);
    }
    let final_lsn = capped(min_durable(&durable), cap).max(confirmed);
    stream.confirm(final_lsn);
    if let Err(e) = stream.shutdown().await {
        tracing::debug!(error = %e, "replication stream did not close cleanly");
    }
    source.confirm_stopped(final_lsn).await?;
    status::update(status, |s| s.confirmed = final_lsn);
    if !found_tables.is_empty() {
        // Retryable: the runtime starts again from what every sink made durable, and the new
        // run adds the tables to the publication and copies them.
        return Err(ConnectorError::retryable(format!(
            "new table(s) or partition(s) {} to copy",
            found_tables
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    tracing::info!(confirmed = %final_lsn, "stopped; every sink's durable position is confirmed");
    Ok(())
}

/// A table joining while streaming: which, how many sinks have finished its copy, and its line
/// in the status.
struct Joining {
    name: cutover_core::TableName,
    finished: usize,
    progress_index: usize,
}

/// The reading side of a joining table's copy (see [`copy_joining`]).
type CopyTask<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>>;

/// Reads a joining table under a snapshot of its own and hands the copy's steps to the stream
/// loop, which passes them to every sink between source transactions. Returns the rows read.
async fn copy_joining(
    source: &PgSource,
    table: SourceTable,
    cfg: &Pipeline,
    steps: mpsc::Sender<Control>,
    done: mpsc::UnboundedSender<usize>,
) -> Result<u64> {
    let gone = || ConnectorError::retryable("the pipeline stopped during a table's copy");
    // The temporary slot behind the snapshot lives until the whole table is read.
    let session = source.export_snapshot().await?;
    let name = table.schema.name.clone();
    let lsn = session.lsn;
    steps
        .send(Control::BeginCopy {
            table: name.clone(),
            lsn,
        })
        .await
        .map_err(|_| gone())?;
    let (tx, mut rx) = mpsc::channel::<Vec<Row>>(2);
    let limit = rate::Limit::per_second(cfg.snapshot_rows_per_s);
    let read = source.copy_table(&table, &session, cfg.chunk_bytes, tx);
    let forward = async {
        while let Some(rows) = rx.recv().await {
            if let Some(limit) = &limit {
                limit.take(rows.len() as u64).await;
            }
            steps
                .send(Control::CopyRows {
                    table: name.clone(),
                    rows: Arc::new(rows),
                })
                .await
                .map_err(|_| gone())?;
        }
        Ok::<(), ConnectorError>(())
    };
    let (read, forward) = tokio::join!(read, forward);
    forward?;
    let rows = read?;
    drop(session);
    steps
        .send(Control::EndCopy {
            table: name,
            lsn,
            done,
        })
        .await
        .map_err(|_| gone())?;
    Ok(rows)
}

/// Completes with the joining table's copy; never, when none runs.
async fn run_copy(task: &mut Option<CopyTask<'_>>) -> Result<u64> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// The next step of a joining table's copy; never, when none runs.
async fn next_step(steps: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match steps {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends a control message to every sink's queue; `Err` when a sink's driver has ended.
async fn send_all(
    queues: &[queue::QueueSender],
    control: &Control,
    size: usize,
) -> std::result::Result<(), queue::Closed> {
    for q in queues {
        q.send_control(control.clone(), size).await?;
    }
    Ok(())
}

/// Why the first driver to end ended.
async fn first_driver_error(drivers: &mut JoinSet<Result<()>>) -> ConnectorError {
    match drivers.join_next().await {
        Some(joined) => driver_ended(joined),
        None => ConnectorError::fatal("a sink stopped"),
    }
}

fn driver_ended(joined: std::result::Result<Result<()>, tokio::task::JoinError>) -> ConnectorError {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ConnectorError::fatal("a sink stopped before the pipeline did"),
        Err(e) => ConnectorError::fatal(format!("a sink task failed: {e}")),
    }
}

struct DriverLimits {
    /// Whether TRUNCATE events reach this sink.
    truncate: bool,
    /// Most bytes of a joining table's changes held while it is copied.
    hold_bytes: usize,
    batch_bytes: usize,
    flush_interval: Duration,
    linger: Duration,
}

/// Feeds one sink from its queue: drops what the sink already has (transactions at or before
/// its checkpoint, changes older than a table's snapshot), applies the rest, and seals a write
/// when the batch is full, when the oldest change has waited `flush_interval`, or when the queue
/// has been empty at a transaction boundary for `linger`. While one write runs, the next batch is
/// folded (one write in flight per sink, in seal order), so the target is not idle while cutover
/// folds. Every new durable checkpoint is reported on `durable`; byte permits are released when
/// the write that holds their events has finished. A sink whose commits become durable later
/// (see `Sink::unsettled`) reports them from later writes, and is settled once its queue has
/// been quiet for `flush_interval`, before a control step, and before the driver ends.
async fn drive_sink(
    index: usize,
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<Queued>,
    state: SinkState,
    durable: mpsc::UnboundedSender<(usize, Checkpoint)>,
    limits: DriverLimits,
    status: SharedStatus,
) -> Result<()> {
    let mut checkpoint = state.checkpoint;
    let mut copied = state.copied_tables;
    let mut backfill: Option<Backfill> = None;
    let mut held = Vec::new();
    let mut skipping = false;
    let mut in_txn = false;
    let mut batch_deadline: Option<Instant> = None;
    let mut idle_deadline: Option<Instant> = None;
    let mut applied = 0u64;
    let mut buffered_events = 0usize;
    let mut last_commit_time = None;
    let mut writing: Option<InFlight> = None;
    let mut seal_wanted = false;
    // When a quiet sink makes its committed writes durable (see `Sink::settle`).
    let mut settle_deadline: Option<Instant> = None;
    let mut settle_wanted = false;
    let mut closed = false;
    loop {
        if seal_wanted && writing.is_none() {
            writing = Some(InFlight {
                write: Spawned(tokio::spawn(sink.seal())),
                permits: std::mem::take(&mut held),
                events: std::mem::take(&mut buffered_events),
                began: Instant::now(),
            });
            seal_wanted = false;
            batch_deadline = None;
            idle_deadline = None;
            settle_deadline = None;
        } else if settle_wanted && writing.is_none() {
            writing = Some(InFlight {
                write: Spawned(tokio::spawn(sink.settle())),
                permits: Vec::new(),
                events: 0,
                began: Instant::now(),
            });
            settle_wanted = false;
        }
        if closed && writing.is_none() && !seal_wanted {
            if sink.unsettled() {
                settle_wanted = true;
                continue;
            }
            return Ok(());
        }
        let deadline = [batch_deadline, idle_deadline, settle_deadline]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            biased;
            result = finish(&mut writing) => {
                let done = writing.take().expect("finish completes only for a write in flight");
                let result = result?;
                tracing::debug!(
                    sink = sink.name(),
                    events = done.events,
                    ms = done.began.elapsed().as_secs_f64() * 1e3,
                    queued_batches = rx.len(),
                    "flushed"
                );
                drop(done.permits);
                report(index, result, &mut checkpoint, &durable, &status, &*sink, applied, last_commit_time);
                if batch_deadline.is_none() && !seal_wanted && sink.unsettled() {
                    settle_deadline = Some(Instant::now() + limits.flush_interval);
                }
            }
            _ = sleep_until(deadline), if !seal_wanted => {
                if settle_deadline == deadline {
                    settle_deadline = None;
                    settle_wanted = true;
                } else {
                    seal_wanted = true;
                }
            }
            next = rx.recv(), if !closed => match next {
                None => {
                    closed = true;
                    seal_wanted = true;
                }
                Some(Queued { control: Some(control), permit, .. }) => {
                    // Between source transactions: let the write in flight and what is
                    // buffered land first, so the step starts with nothing pending.
                    if let Some(mut w) = writing.take() {
                        let cp = w.result().await?;
                        report(index, cp, &mut checkpoint, &durable, &status, &*sink, applied, last_commit_time);
                    }
                    let cp = sink.seal().await?;
                    report(index, cp, &mut checkpoint, &durable, &status, &*sink, applied, last_commit_time);
                    // The step starts from the sink's exact checkpoint.
                    let cp = sink.settle().await?;
                    report(index, cp, &mut checkpoint, &durable, &status, &*sink, applied, last_commit_time);
                    settle_deadline = None;
                    settle_wanted = false;
                    held.clear();
                    buffered_events = 0;
                    seal_wanted = false;
                    batch_deadline = None;
                    idle_deadline = None;
                    let cp = backfill_step(index, &mut sink, control, &mut backfill, checkpoint, &mut copied).await?;
                    drop(permit);
                    report(index, cp, &mut checkpoint, &durable, &status, &*sink, applied, last_commit_time);
                }
                Some(q) => {
                    idle_deadline = None;
                    let mut passed = Vec::with_capacity(q.events.len());
                    for event in q.events {
                        let pass = match &event {
                            StreamEvent::Begin { commit_lsn, .. } => {
                                in_txn = true;
                                skipping = checkpoint.is_some_and(|cp| *commit_lsn <= cp.commit_lsn);
                                !skipping
                            }
                            StreamEvent::Change(c) => {
                                !skipping
                                    && (limits.truncate || c.change != Change::Truncate)
                                    && copied
                                        .get(&c.table.name)
                                        .is_none_or(|&at| c.position.commit_lsn >= at)
                                    && !backfill.as_mut().is_some_and(|b| b.hold(c))
                            }
                            StreamEvent::Commit { commit_time_micros, .. } => {
                                in_txn = false;
                                last_commit_time = Some(*commit_time_micros);
                                !std::mem::take(&mut skipping)
                            }
                        };
                        if pass {
                            if matches!(event, StreamEvent::Change(_)) {
                                applied += 1;
                            }
                            passed.push(event);
                        }
                    }
                    if let Some(b) = backfill.as_ref().filter(|b| b.held_bytes > limits.hold_bytes) {
                        return Err(ConnectorError::retryable(format!(
                            "table {} changed by more than {} MiB while it was being copied: starting over to copy it with streaming paused",
                            b.table.name,
                            limits.hold_bytes >> 20
                        )));
                    }
                    if !passed.is_empty() {
                        settle_deadline = None;
                        settle_wanted = false;
                        buffered_events += passed.len();
                        sink.apply_all(passed).await?;
                        held.push(q.permit);
                        batch_deadline.get_or_insert_with(|| Instant::now() + limits.flush_interval);
                    }
                    if batch_deadline.is_some() && !in_txn && rx.is_empty() {
                        idle_deadline = Some(Instant::now() + limits.linger);
                    }
                    if batch_deadline.is_some() && sink.buffered_bytes() >= limits.batch_bytes {
                        seal_wanted = true;
                    }
                }
            },
        }
    }
}

/// A table joining while the pipeline streams, in one sink: its copy, and its changes held
/// until the copy is complete.
struct Backfill {
    table: Arc<TableSchema>,
    copy: Option<Box<dyn TableCopy>>,
    held: Vec<StreamEvent>,
    held_bytes: usize,
}

impl Backfill {
    /// Holds `change` if it belongs to the joining table; returns whether it did.
    fn hold(&mut self, change: &cutover_core::ChangeEvent) -> bool {
        if change.table.name != self.table.name {
            return false;
        }
        let held = StreamEvent::Change(change.clone());
        self.held_bytes += held.size();
        self.held.push(held);
        true
    }
}

/// Reports a new durable checkpoint of sink `index` to the runtime and the status.
#[allow(clippy::too_many_arguments)]
fn report(
    index: usize,
    cp: Option<Checkpoint>,
    checkpoint: &mut Option<Checkpoint>,
    durable: &mpsc::UnboundedSender<(usize, Checkpoint)>,
    status: &SharedStatus,
    sink: &dyn Sink,
    applied: u64,
    last_commit_time: Option<i64>,
) {
    let Some(cp) = cp else { return };
    *checkpoint = Some(cp);
    let _ = durable.send((index, cp));
    status::update(status, |s| {
        if let Some(p) = s.sinks.get_mut(index) {
            p.durable = cp.end_lsn;
            p.changes_applied = applied;
            p.last_commit_micros = last_commit_time;
            p.parked = sink.parked();
        }
    });
}

/// One step of a backfill in one sink, with nothing in flight (see [`Control`]). Returns the
/// checkpoint the step's own write made durable, if it wrote one.
///
/// The end is ordered for crash safety: the sink's checkpoint is first stepped back to the
/// copy's snapshot position (an empty transaction there), then the copy is finished (the table
/// is recorded as copied at that position), then the held changes made at or after it are
/// applied in one transaction at the sink's real checkpoint, which moves it back. A crash
/// before the copy is finished copies the table again on restart; a crash after it replays
/// the stream from the snapshot position, held changes included. The runtime keeps the slot
/// at or before that position until every sink has finished.
async fn backfill_step(
    index: usize,
    sink: &mut Box<dyn Sink>,
    control: Control,
    backfill: &mut Option<Backfill>,
    checkpoint: Option<Checkpoint>,
    copied: &mut std::collections::BTreeMap<cutover_core::TableName, Lsn>,
) -> Result<Option<Checkpoint>> {
    match control {
        Control::AddTable(table) => {
            sink.add_table(table.clone()).await?;
            *backfill = Some(Backfill {
                table,
                copy: None,
                held: Vec::new(),
                held_bytes: 0,
            });
        }
        Control::BeginCopy { table, lsn } => {
            let b = backfill_of(backfill, &table)?;
            b.copy = Some(sink.begin_copy(b.table.clone(), lsn).await?);
        }
        Control::CopyRows { table, rows } => {
            let b = backfill_of(backfill, &table)?;
            match b.copy.as_mut() {
                Some(copy) => copy.write(&rows).await?,
                None => {
                    return Err(ConnectorError::fatal(
                        "copy rows arrived before the copy began",
                    ))
                }
            }
        }
        Control::EndCopy { table, lsn, done } => {
            let b = backfill_of(backfill, &table)?;
            let copy = b
                .copy
                .take()
                .ok_or_else(|| ConnectorError::fatal("a copy ended before it began"))?;
            let at_copy = Checkpoint {
                commit_lsn: Lsn(lsn.0.saturating_sub(1)),
                end_lsn: lsn,
            };
            let real = checkpoint.unwrap_or(at_copy);
            if real.end_lsn > lsn {
                sink.apply_all(transaction_at(at_copy, Vec::new())).await?;
                sink.seal().await?;
            }
            let rows = copy.finish().await?;
            crash_point("joined-table-recorded");
            let held: Vec<StreamEvent> = std::mem::take(&mut b.held)
                .into_iter()
                .filter(|e| matches!(e, StreamEvent::Change(c) if c.position.commit_lsn >= lsn))
                .collect();
            let released = held.len();
            sink.apply_all(transaction_at(real, held)).await?;
            let cp = sink.seal().await?;
            copied.insert(table.clone(), lsn);
            tracing::info!(sink = sink.name(), %table, rows, held_changes = released, snapshot_lsn = %lsn, "table joined: copied, and its changes made during the copy applied");
            *backfill = None;
            let _ = done.send(index);
            return Ok(cp);
        }
    }
    Ok(None)
}

/// Ends the process at once, as a crash would, when `CUTOVER_CRASH_AT` names this point: the
/// tests use it to crash between two steps no signal can be timed to fall between.
fn crash_point(point: &str) {
    if std::env::var("CUTOVER_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "CUTOVER_CRASH_AT: ending the process here");
        // No drain, no destructors: the servers see the connections drop, as after SIGKILL.
        std::process::exit(70);
    }
}

fn backfill_of<'a>(
    backfill: &'a mut Option<Backfill>,
    table: &cutover_core::TableName,
) -> Result<&'a mut Backfill> {
    backfill
        .as_mut()
        .filter(|b| &b.table.name == table)
        .ok_or_else(|| ConnectorError::fatal(format!("no copy of {table} is under way")))
}

/// A sealed write in flight and the byte permits of the events it holds.
struct InFlight {
    write: Spawned,
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    events: usize,
    began: Instant,
}

/// Completes with the in-flight write's result; never, when no write is in flight.
async fn finish(writing: &mut Option<InFlight>) -> Result<Option<Checkpoint>> {
    match writing {
        Some(w) => w.result().await,
        None => std::future::pending().await,
    }
}

/// A sealed write running as a task of its own, so it proceeds while the driver folds the next
/// batch on another thread (rows are encoded and sent while changes are folded). Dropping it
/// (a driver ending on an error) stops the write.
struct Spawned(tokio::task::JoinHandle<Result<Option<Checkpoint>>>);

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl InFlight {
    /// The write's result; a write task that panicked or was stopped is a fatal error.
    async fn result(&mut self) -> Result<Option<Checkpoint>> {
        match (&mut self.write.0).await {
            Ok(result) => result,
            Err(e) => Err(ConnectorError::fatal(format!(
                "a sink's write task failed: {e}"
            ))),
        }
    }
}

/// Sleeps until `deadline`; never, without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::TableName;

    #[test]
    fn stream_starts_at_the_lowest_position_any_sink_needs() {
        let copied = |lsn| SinkState {
            checkpoint: None,
            copied_tables: [(TableName::new("public", "a"), Lsn(lsn))].into(),
        };
        let applied = |end| SinkState {
            checkpoint: Some(Checkpoint {
                commit_lsn: Lsn(end - 1),
                end_lsn: Lsn(end),
            }),
            copied_tables: [(TableName::new("public", "a"), Lsn(10))].into(),
        };
        assert_eq!(stream_start(&[applied(50), applied(40)]), Lsn(40));
        assert_eq!(stream_start(&[applied(50), copied(20)]), Lsn(20));
        assert_eq!(stream_start(&[copied(30)]), Lsn(30));
    }
}
