//! The reader: the stream loop. Reads the slot, hands every batch to each sink's bounded queue,
//! confirms the slot as the sinks make changes durable (see [`Progress`]), takes operator
//! commands, and drives the copy of tables that join while streaming.
//!
//! The loop waits on five things: the stop signal, the drivers' reports, control (operator
//! commands and a joining table's copy), a one-second tick (sampling, backpressure logs,
//! discovery), and the next item of the stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{ConnectorError, Lsn, Result, Row, Source, StreamEvent, StreamItem, TableName};
use cutover_postgres::PgSource;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backfill::{JoinEvent, Joiner};
use super::control::{Command, Operator};
use super::discovery;
use super::driver::DriverEvent;
use super::progress::Progress;
use super::telemetry::{QueueSample, Telemetry};
use crate::queue::{Control, QueueSender};

/// Most stream events handed to the sink queues in one message.
const DISPATCH_BATCH: usize = 1024;

/// A batch smaller than this, read in the middle of a transaction, makes the reader pause for
/// `GATHER_PAUSE` so that the rest of the transaction gathers in the socket.
const GATHER_BELOW: usize = 64;
const GATHER_PAUSE: Duration = Duration::from_millis(1);

/// Backpressure is logged every this many ticks.
const STALL_LOG_TICKS: u64 = 10;

/// One sink as the reader sees it: its queue, its pause switch, and its backpressure figures.
pub struct SinkLane {
    pub name: String,
    pub queue: QueueSender,
    pub pause: watch::Sender<bool>,
    /// Its rate limits, read by its pacer before each batch.
    pub rate: watch::Sender<crate::config::RateLimits>,
    /// Time its rate limits held changes back, in ms (written by its pacer).
    pub throttled_ms: Arc<AtomicU64>,
    /// Time the reader waited for its full queue, in ms.
    stalled_ms: u64,
    stall_logged: u64,
}

impl SinkLane {
    pub fn new(
        name: String,
        queue: QueueSender,
        pause: watch::Sender<bool>,
        rate: watch::Sender<crate::config::RateLimits>,
        throttled_ms: Arc<AtomicU64>,
    ) -> Self {
        SinkLane {
            name,
            queue,
            pause,
            rate,
            throttled_ms,
            stalled_ms: 0,
            stall_logged: 0,
        }
    }
}

/// The drivers' tasks and their reports.
pub struct Drivers {
    pub tasks: JoinSet<Result<()>>,
    pub events: mpsc::UnboundedReceiver<DriverEvent>,
    /// Rate-limit pacers between queues and drivers; they end when their queue closes.
    pub pacers: JoinSet<()>,
}

/// What the drivers said.
enum Reported {
    Event(DriverEvent),
    /// A driver ended before the reader closed its queue: why.
    Ended(ConnectorError),
}

impl Drivers {
    async fn next(&mut self) -> Reported {
        tokio::select! {
            biased;
            Some(joined) = self.tasks.join_next() => Reported::Ended(driver_ended(joined)),
            Some(event) = self.events.recv() => Reported::Event(event),
        }
    }

    /// Why the first driver to end ended.
    async fn first_error(&mut self) -> ConnectorError {
        match self.tasks.join_next().await {
            Some(joined) => driver_ended(joined),
            None => ConnectorError::fatal("a sink stopped"),
        }
    }

    /// Waits for every driver to end (their queues closed), then takes their last reports.
    async fn finish(&mut self, progress: &mut Progress) -> Result<()> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ConnectorError::fatal(format!("a sink task failed: {e}"))),
            }
        }
        while let Ok(event) = self.events.try_recv() {
            if let DriverEvent::Durable(i, cp) = event {
                progress.durable(i, cp.end_lsn);
            }
        }
        Ok(())
    }
}

fn driver_ended(joined: std::result::Result<Result<()>, tokio::task::JoinError>) -> ConnectorError {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ConnectorError::fatal("a sink stopped before the pipeline did"),
        Err(e) => ConnectorError::fatal(format!("a sink task failed: {e}")),
    }
}

/// The source's catalog side, for sampling, discovery and joining tables; absent when the
/// reader runs on a stream alone (tests).
pub struct Catalog<'a> {
    pub source: &'a PgSource,
    pub joiner: Joiner<'a>,
    /// Seconds between looks for new tables (0: never).
    pub discover_every: Duration,
    pub next_discovery: Instant,
}

/// Why a step of the loop ends it (a step returns `Err` of this to end the loop).
enum Exit {
    /// Stop requested, the stream ended, or drained to the requested position.
    Stopped,
    /// New tables or partitions need a run of their own.
    Restart(Vec<TableName>),
    /// A source, sink or control step failed.
    Failed(ConnectorError),
}

impl From<ConnectorError> for Exit {
    fn from(e: ConnectorError) -> Exit {
        Exit::Failed(e)
    }
}

/// The stream loop's state.
pub struct Reader<'a> {
    pub stream: Box<dyn Source + 'a>,
    pub lanes: Vec<SinkLane>,
    pub drivers: Drivers,
    pub progress: Progress,
    pub telemetry: Telemetry,
    pub catalog: Option<Catalog<'a>>,
    pub operator: &'a mut Operator,
    pub ticks: u64,
    /// Least time between two heartbeats (see [`super::progress::heartbeat`]) while the source
    /// is idle; none is waited for while a drain or the switch's changed keys wait on the slot.
    pub heartbeat_every: Duration,
    pub next_heartbeat: Instant,
    /// Tables copied in ranges under different snapshots, while the stream settles them.
    pub settling: super::settling::Settling,
}

impl Reader<'_> {
    /// Streams until stopped (or drained to the requested position), then lets every sink write
    /// what it has, confirms what they made durable, and closes the stream. Returns the tables
    /// to restart for as a retryable error.
    pub async fn run(mut self, stop: &mut watch::Receiver<bool>) -> Result<Lsn> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let outcome: Exit = loop {
            if let Err(exit) = self.start_join(stop).await {
                break exit;
            }
            self.write_changed();
            if self.drained() {
                tracing::info!(target = ?self.operator.drain_to, "drained to the requested position: stopping");
                break Exit::Stopped;
            }
            let read = !self.operator.reader_paused;
            let in_txn = self.progress.in_txn();
            let step: std::result::Result<(), Exit> = tokio::select! {
                biased;
                _ = stop.changed() => Err(Exit::Stopped),
                reported = self.drivers.next() => self.reported(reported),
                control = next_control(&mut self.operator.commands, &mut self.catalog, in_txn) => {
                    self.control(control, stop).await
                }
                _ = tick.tick() => self.tick().await,
                item = self.stream.next(), if read => self.item(item, stop).await,
            };
            if let Err(exit) = step {
                break exit;
            }
        };
        let restart = match outcome {
            Exit::Stopped => Vec::new(),
            Exit::Restart(tables) => tables,
            Exit::Failed(e) => return Err(e),
        };
        let confirmed = self.stop().await?;
        if !restart.is_empty() {
            // Retryable: the runtime starts again from what every sink made durable, and the new
            // run adds the tables to the publication and copies them.
            return Err(ConnectorError::retryable(format!(
                "new table(s) or partition(s) {} to copy",
                restart
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(confirmed)
    }

    /// Whether reading has passed the position an operator asked to drain to.
    fn drained(&self) -> bool {
        self.operator
            .drain_to
            .is_some_and(|lsn| self.progress.read_past(lsn))
    }

    /// Graceful stop: every sink writes what it has, then the slot is confirmed to what they
    /// made durable.
    async fn stop(mut self) -> Result<Lsn> {
        self.telemetry.phase(crate::status::Phase::Stopping);
        let lanes = std::mem::take(&mut self.lanes);
        drop(lanes);
        self.drivers.finish(&mut self.progress).await?;
        let final_lsn = self.progress.final_position();
        self.stream.confirm(final_lsn);
        if let Err(e) = self.stream.shutdown().await {
            tracing::debug!(error = %e, "replication stream did not close cleanly");
        }
        if let Some(catalog) = &self.catalog {
            catalog.source.confirm_stopped(final_lsn).await?;
        }
        self.telemetry.confirmed(final_lsn);
        tracing::info!(confirmed = %final_lsn, "stopped; every sink's durable position is confirmed");
        Ok(final_lsn)
    }

    fn confirm(&mut self, lsn: Option<Lsn>) {
        if let Some(lsn) = lsn {
            self.stream.confirm(lsn);
            self.telemetry.confirmed(lsn);
        }
    }

    fn reported(&mut self, reported: Reported) -> std::result::Result<(), Exit> {
        match reported {
            Reported::Ended(e) => Err(Exit::Failed(e)),
            Reported::Event(DriverEvent::Durable(i, cp)) => {
                let moved = self.progress.durable(i, cp.end_lsn);
                self.confirm(moved);
                Ok(())
            }
            Reported::Event(DriverEvent::Joined(_)) => {
                let sinks = self.lanes.len();
                if let Some(line) = self
                    .catalog
                    .as_mut()
                    .and_then(|c| c.joiner.sink_joined(sinks))
                {
                    self.telemetry.table_done(line);
                    self.progress.release();
                }
                Ok(())
            }
        }
    }

    /// Starts the copy of the next waiting table, between source transactions.
    async fn start_join(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        if self.progress.in_txn() || self.operator.drain_to.is_some() {
            return Ok(());
        }
        let Some(catalog) = self.catalog.as_mut() else {
            return Ok(());
        };
        let Some(starting) = catalog.joiner.next_table() else {
            return Ok(());
        };
        let table = starting.table;
        // Rows copied, not streamed: the switch's final check compares the whole table.
        self.operator.changed.mark_full(&table.schema.name);
        let first = if starting.again {
            // Streamed already: in the publication, and known to the decoder.
            Control::CopyAgain(table.schema.clone())
        } else {
            self.stream.learn_table(table.schema.clone());
            catalog.source.publish_table(&table.schema.name).await?;
            Control::AddTable(table.schema.clone())
        };
        self.send_control(first, 0, stop).await?;
        self.progress.hold();
        let line = self.telemetry.table_joining(starting.progress);
        if let Some(catalog) = self.catalog.as_mut() {
            catalog.joiner.begin(table, line, starting.again);
        }
        Ok(())
    }

    /// Hands a control step to every sink's queue, in order.
    async fn send_control(
        &mut self,
        control: Control,
        size: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        for lane in &self.lanes {
            tokio::select! {
                sent = lane.queue.send_control(control.clone(), size) => if sent.is_err() {
                    return Err(Exit::Failed(self.drivers.first_error().await));
                },
                _ = stop.changed() => return Err(Exit::Stopped),
            }
        }
        Ok(())
    }

    async fn control(
        &mut self,
        control: Controlled,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        match control {
            Controlled::Command(request) => {
                let answer = self.command(request.command);
                let _ = request.reply.send(answer);
                Ok(())
            }
            Controlled::Join(JoinEvent::Nothing) => Ok(()),
            Controlled::Join(JoinEvent::Read(Ok(rows))) => {
                tracing::info!(
                    rows,
                    "new table read from the source; the sinks finish its copy"
                );
                Ok(())
            }
            // Retryable: the next run copies the table with streaming paused.
            Controlled::Join(JoinEvent::Read(Err(e))) => Err(Exit::Failed(e)),
            Controlled::Join(JoinEvent::Step(step)) => {
                let size = match &step {
                    Control::CopyRows { rows, .. } => {
                        let line = self
                            .catalog
                            .as_ref()
                            .and_then(|c| c.joiner.progress_index());
                        let size: usize = rows.iter().map(Row::size).sum();
                        if let Some(line) = line {
                            self.telemetry
                                .rows_copied(line, None, rows.len() as u64, size as u64);
                        }
                        size
                    }
                    _ => 0,
                };
                self.send_control(step, size, stop).await
            }
        }
    }

    /// Carries out an operator's command; `Err` says why it cannot be.
    fn command(&mut self, command: Command) -> std::result::Result<(), String> {
        let sink = |name: &str, lanes: &[SinkLane]| {
            lanes
                .iter()
                .position(|l| l.name == name)
                .ok_or_else(|| format!("no sink is named {name:?}"))
        };
        let pause = matches!(command, Command::PauseSink(_));
        match command {
            Command::PauseReader | Command::ResumeReader => {
                let paused = matches!(command, Command::PauseReader);
                self.operator.reader_paused = paused;
                self.telemetry.reader_paused(paused);
                tracing::info!(paused, "source reader paused or resumed by the operator");
            }
            Command::PauseSink(name) | Command::ResumeSink(name) => {
                let i = sink(&name, &self.lanes)?;
                if pause {
                    self.operator.paused_sinks.insert(name.clone());
                } else {
                    self.operator.paused_sinks.remove(&name);
                }
                self.lanes[i].pause.send_replace(pause);
                self.telemetry.sink_paused(i, pause);
                tracing::info!(sink = %name, paused = pause, "sink paused or resumed by the operator");
            }
            Command::DrainTo(lsn) => {
                self.operator.drain_to = Some(lsn);
                tracing::info!(target = %lsn, "draining to the requested position, then stopping");
            }
            Command::WriteChangedKeys { through, path } => {
                self.operator.write_changed = Some((through, path));
            }
            Command::Resnapshot(name) => {
                let Some(catalog) = self.catalog.as_mut() else {
                    return Err("this pipeline copies no table beside its stream".into());
                };
                let Some(table) = catalog
                    .source
                    .tables()
                    .iter()
                    .find(|t| t.schema.name == name)
                    .cloned()
                else {
                    return Err(format!(
                        "{name} is not one of the pipeline's tables (source.tables)"
                    ));
                };
                if catalog.joiner.busy_with(&name) {
                    return Err(format!(
                        "{name} is being copied already; wait until it streams"
                    ));
                }
                tracing::info!(table = %name, "resnapshot asked: the table will be copied again into every sink");
                catalog.joiner.again(table);
            }
            Command::SetRate(name, limits) => {
                let i = sink(&name, &self.lanes)?;
                self.lanes[i].rate.send_replace(limits);
                self.operator.rates.insert(name.clone(), limits);
                tracing::info!(sink = %name, changes_per_s = ?limits.changes_per_s, bytes_per_s = ?limits.bytes_per_s, "sink rate limits set by the operator");
            }
        }
        Ok(())
    }

    /// Writes the changed keys once the reader is past the position they were asked through
    /// and every sink is durable there (the switch's drain reads that too).
    fn write_changed(&mut self) {
        let Some((through, _)) = &self.operator.write_changed else {
            return;
        };
        let confirmed = self.progress.confirmed();
        let Some(read) = self
            .progress
            .read_through()
            .filter(|r| r >= through && confirmed >= *through)
        else {
            return;
        };
        let Some((_, path)) = self.operator.write_changed.take() else {
            return;
        };
        match self.operator.changed.journal(read, confirmed).save(&path) {
            Ok(()) => {
                tracing::info!(through = %read, path = %path.display(), "changed keys written for the switch's final check")
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the changed keys; the switch checks every row")
            }
        }
    }

    /// Forgets the changed keys a clean consistency check covers (every ten seconds).
    fn prune_changed(&mut self) {
        let (Some(path), Some(read)) = (&self.operator.report_path, self.progress.read_through())
        else {
            return;
        };
        let Some(identity) = &self.operator.identity else {
            return;
        };
        let saved = crate::state::SavedCheck::load_for(path, identity)
            .ok()
            .flatten();
        if let Some(from) = saved.and_then(|c| c.clean_from) {
            self.operator.changed.prune(Lsn(from), read);
        }
    }

    /// Once a second: sample the source and the queues; every ten, log backpressure; look for
    /// new tables when it is time.
    async fn tick(&mut self) -> std::result::Result<(), Exit> {
        self.ticks += 1;
        let wal = match &self.catalog {
            Some(c) => c.source.current_wal_lsn().await?,
            None => self.progress.confirmed(),
        };
        let samples: Vec<QueueSample> = self
            .lanes
            .iter()
            .map(|l| QueueSample {
                events: l.queue.events_held(),
                bytes: l.queue.bytes_held(),
                stalled_ms: l.stalled_ms,
                throttled_ms: l.throttled_ms.load(Ordering::Relaxed),
            })
            .collect();
        self.telemetry.sampled(wal, &samples);
        if self.ticks.is_multiple_of(STALL_LOG_TICKS) {
            self.log_backpressure();
            self.prune_changed();
        }
        self.discover().await
    }

    /// Backpressure in the logs: which sink held the reader back, and for how long.
    fn log_backpressure(&mut self) {
        for lane in &mut self.lanes {
            let new = lane.stalled_ms - lane.stall_logged;
            if new > 0 {
                tracing::info!(
                    sink = %lane.name,
                    stalled_ms = new,
                    queue_events = lane.queue.events_held(),
                    queue_bytes = lane.queue.bytes_held(),
                    throttled_ms = lane.throttled_ms.load(Ordering::Relaxed),
                    "backpressure: the source reader waited for this sink's full queue"
                );
                lane.stall_logged = lane.stalled_ms;
            }
        }
    }

    /// Looks for new tables, outside a source transaction, when it is time. Tables that can
    /// join beside the stream wait their turn; others end the run so the next one copies them.
    async fn discover(&mut self) -> std::result::Result<(), Exit> {
        let in_txn = self.progress.in_txn();
        let Some(catalog) = self.catalog.as_mut() else {
            return Ok(());
        };
        if catalog.discover_every.is_zero() || in_txn || Instant::now() < catalog.next_discovery {
            return Ok(());
        }
        catalog.next_discovery = Instant::now() + catalog.discover_every;
        let joiner = &catalog.joiner;
        let found = discovery::look(catalog.source, |n| joiner.knows(n)).await;
        if !found.restart_for.is_empty() {
            return Err(Exit::Restart(found.restart_for));
        }
        for table in found.join {
            catalog.joiner.wait(table);
        }
        Ok(())
    }

    async fn item(
        &mut self,
        item: Result<Option<StreamItem>>,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        if let Some(c) = self.catalog.as_mut() {
            c.joiner.stream_had_turn();
        }
        match item? {
            None => Err(Exit::Stopped),
            Some(StreamItem::Idle { wal_end }) => self.idle(wal_end, stop).await,
            Some(StreamItem::Event(event)) => self.dispatch(event, stop).await,
        }
    }

    /// The source is idle up to `wal_end`: hands the sinks a heartbeat there when it moves
    /// them on and it is time (at once while something waits for the slot to get there).
    async fn idle(
        &mut self,
        wal_end: Lsn,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        let waited_for = self.operator.drain_to.is_some() || self.operator.write_changed.is_some();
        if !self.progress.idle(wal_end) || (!waited_for && Instant::now() < self.next_heartbeat) {
            return Ok(());
        }
        self.next_heartbeat = Instant::now() + self.heartbeat_every;
        let now = cutover_core::outbox::now_micros();
        self.hand_on(super::progress::heartbeat(wal_end, now).to_vec(), stop)
            .await
    }

    /// Takes every event already decoded (without waiting) and hands them on as one batch: one
    /// queue message per sink instead of one per change.
    async fn dispatch(
        &mut self,
        first: StreamEvent,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        let mut batch = vec![first];
        let mut idle = None;
        while batch.len() < DISPATCH_BATCH {
            match self.stream.next().now_or_never() {
                Some(Ok(Some(StreamItem::Event(e)))) => batch.push(e),
                Some(Ok(Some(StreamItem::Idle { wal_end }))) => {
                    idle = Some(wal_end);
                    break;
                }
                Some(Err(e)) => return Err(Exit::Failed(e)),
                Some(Ok(None)) | None => break,
            }
        }
        let small = batch.len() < GATHER_BELOW;
        self.hand_on(batch, stop).await?;
        if let Some(wal_end) = idle {
            self.idle(wal_end, stop).await?;
        }
        if small && self.progress.in_txn() {
            // Inside a transaction the rest of it is already committed and on its way: pausing
            // a moment lets it gather in the socket, so it is read in large slices instead of
            // one wake-up per few messages (measured: half of cutover's CPU, and a third more
            // apply throughput on 2 cores). Self-limiting: once messages arrive faster than
            // GATHER_BELOW per pause, batches are large and there is no pause.
            tokio::time::sleep(GATHER_PAUSE).await;
        }
        Ok(())
    }

    /// Hands one batch to every sink's queue, in order, waiting while a queue is full.
    async fn hand_on(
        &mut self,
        mut batch: Vec<StreamEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Exit> {
        if !self.settling.is_empty() {
            if let Some(catalog) = &self.catalog {
                self.settling.fill(&mut batch, catalog.source).await?;
            }
        }
        self.operator.changed.record(&batch);
        self.progress.dispatched(&batch);
        let last = self.lanes.len().saturating_sub(1);
        let mut batch = Some(batch);
        for i in 0..self.lanes.len() {
            let events = if i == last {
                batch.take()
            } else {
                batch.clone()
            }
            .expect("the batch is kept until the last queue");
            let began = Instant::now();
            tokio::select! {
                sent = self.lanes[i].queue.send(events) => {
                    self.lanes[i].stalled_ms += began.elapsed().as_millis() as u64;
                    if sent.is_err() {
                        // The driver ended; its result says why.
                        return Err(Exit::Failed(self.drivers.first_error().await));
                    }
                }
                _ = stop.changed() => return Err(Exit::Stopped),
            }
        }
        Ok(())
    }
}

/// Control the loop takes: an operator's command or a joining table's copy.
enum Controlled {
    Command(super::control::Request),
    Join(JoinEvent),
}

/// The next command or copy step; never, when there is neither.
async fn next_control(
    commands: &mut Option<mpsc::Receiver<super::control::Request>>,
    catalog: &mut Option<Catalog<'_>>,
    in_txn: bool,
) -> Controlled {
    let join = async {
        match catalog.as_mut() {
            Some(c) => c.joiner.next(in_txn).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        Some(request) = async {
            match commands.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        } => Controlled::Command(request),
        event = join => Controlled::Join(event),
    }
}
