//! One sink's driver: takes batches from its queue, drops what the sink already has, applies
//! the rest, seals writes, and reports each new durable checkpoint to the reader.
//!
//! A write is sealed when the sink's buffer passes `batch_bytes`, when the oldest buffered
//! change has waited `flush_interval`, or when the queue has been empty at a transaction
//! boundary for `linger`. While one write runs (a task of its own), the next batch is folded:
//! one write in flight per sink, in seal order. Byte and event permits are released when the
//! write that holds their events has finished, so the queue's bounds cover what the sink
//! buffers too. A sink whose commits become durable later (see `Sink::unsettled`) reports them
//! from later writes, and is settled once its queue has been quiet for `flush_interval`, before
//! a control step, and before the driver ends.

use std::collections::BTreeMap;
use std::time::Duration;

use cutover_core::{
    Change, Checkpoint, ConnectorError, Lsn, Result, Sink, SinkState, StreamEvent, TableName,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::backfill::{self, Backfill};
use super::telemetry::Telemetry;
use crate::queue::{Permit, Queued};

/// What a driver tells the reader.
#[derive(Debug)]
pub enum DriverEvent {
    /// Sink `.0` made everything up to this checkpoint durable.
    Durable(usize, Checkpoint),
    /// Sink `.0` finished the copy of the joining table, and it is durable.
    Joined(usize),
}

/// What connects a driver to the reader.
pub struct DriverLinks {
    pub events: mpsc::UnboundedSender<DriverEvent>,
    pub telemetry: Telemetry,
    /// `true` pauses the sink: it takes nothing from its queue (its write in flight ends).
    pub paused: watch::Receiver<bool>,
}

/// A driver's batching bounds.
#[derive(Debug, Clone, Copy)]
pub struct DriverLimits {
    /// Whether TRUNCATE events reach this sink.
    pub truncate: bool,
    /// Most bytes of a joining table's changes held while it is copied.
    pub hold_bytes: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub linger: Duration,
    /// How long a write may run before it is abandoned (an error to retry); `None`: never.
    pub write_timeout: Option<Duration>,
}

/// How often a write that has not finished is reported, with what the sink says of it.
const STUCK_REPORT_EVERY: Duration = Duration::from_secs(30);
/// How long the driver waits for a sink's account of a stuck write.
const STUCK_LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Feeds one sink from its queue until the queue closes (then writes what it holds, settles
/// and returns `Ok`), or the sink fails.
pub struct SinkDriver {
    index: usize,
    sink: Box<dyn Sink>,
    rx: mpsc::Receiver<Queued>,
    limits: DriverLimits,
    events: mpsc::UnboundedSender<DriverEvent>,
    telemetry: Telemetry,
    /// Set by an operator's pause; `None` once the reader that sets it is gone.
    paused: Option<watch::Receiver<bool>>,
    /// The sink's durable checkpoint, and the tables it has copied (with their snapshot LSN).
    checkpoint: Option<Checkpoint>,
    copied: BTreeMap<TableName, Lsn>,
    backfill: Option<Backfill>,
    /// Skipping a transaction the sink already has.
    skipping: bool,
    in_txn: bool,
    applied: u64,
    applied_bytes: u64,
    last_commit_time: Option<i64>,
    batch: Batching,
    closed: bool,
}

/// What is buffered in the sink and when it is to be written.
#[derive(Default)]
struct Batching {
    /// Permits of the events applied since the last seal.
    held: Vec<Permit>,
    events: usize,
    /// When the oldest buffered change has waited `flush_interval`.
    batch_deadline: Option<Instant>,
    /// When the queue has been quiet at a boundary for `linger`.
    idle_deadline: Option<Instant>,
    seal_wanted: bool,
    /// When a quiet sink makes its committed writes durable (see `Sink::settle`).
    settle_deadline: Option<Instant>,
    settle_wanted: bool,
    writing: Option<InFlight>,
}

impl SinkDriver {
    /// A driver for sink `index`, starting from what the sink holds (`state`).
    pub fn new(
        index: usize,
        sink: Box<dyn Sink>,
        rx: mpsc::Receiver<Queued>,
        state: SinkState,
        limits: DriverLimits,
        links: DriverLinks,
    ) -> Self {
        SinkDriver {
            index,
            sink,
            rx,
            limits,
            events: links.events,
            telemetry: links.telemetry,
            paused: Some(links.paused),
            checkpoint: state.checkpoint,
            copied: state.copied_tables,
            backfill: None,
            skipping: false,
            in_txn: false,
            applied: 0,
            applied_bytes: 0,
            last_commit_time: None,
            batch: Batching::default(),
            closed: false,
        }
    }

    pub async fn run(mut self) -> Result<()> {
        loop {
            self.start_write();
            if self.closed && self.batch.writing.is_none() && !self.batch.seal_wanted {
                if self.sink.unsettled() {
                    self.batch.settle_wanted = true;
                    continue;
                }
                return Ok(());
            }
            let b = &self.batch;
            let deadline = [b.batch_deadline, b.idle_deadline, b.settle_deadline]
                .into_iter()
                .flatten()
                .min();
            let take = !self.closed && !self.paused.as_ref().is_some_and(|p| *p.borrow());
            let look = self.next_look();
            tokio::select! {
                biased;
                result = finish(&mut self.batch.writing) => self.written(result)?,
                _ = sleep_until(look) => self.look_at_the_write().await?,
                _ = sleep_until(deadline), if !self.batch.seal_wanted => {
                    if self.batch.settle_deadline == deadline {
                        self.batch.settle_deadline = None;
                        self.batch.settle_wanted = true;
                    } else {
                        self.batch.seal_wanted = true;
                    }
                }
                _ = pause_changed(&mut self.paused), if !self.closed => {}
                next = self.rx.recv(), if take => match next {
                    None => {
                        self.closed = true;
                        self.batch.seal_wanted = true;
                    }
                    Some(Queued { control: Some(control), permit, .. }) => {
                        self.control(control).await?;
                        drop(permit);
                    }
                    Some(q) => self.take(q).await?,
                },
            }
        }
    }

    /// Starts the write or settle that is wanted, when none is in flight.
    fn start_write(&mut self) {
        let b = &mut self.batch;
        if b.writing.is_some() {
            return;
        }
        if b.seal_wanted {
            b.writing = Some(InFlight {
                write: Spawned(tokio::spawn(self.sink.seal())),
                permits: std::mem::take(&mut b.held),
                events: std::mem::take(&mut b.events),
                began: Instant::now(),
                reports: 0,
            });
            b.seal_wanted = false;
            b.batch_deadline = None;
            b.idle_deadline = None;
            b.settle_deadline = None;
        } else if b.settle_wanted {
            b.writing = Some(InFlight {
                write: Spawned(tokio::spawn(self.sink.settle())),
                permits: Vec::new(),
                events: 0,
                began: Instant::now(),
                reports: 0,
            });
            b.settle_wanted = false;
        }
    }

    /// When the write in flight is next looked at: every [`STUCK_REPORT_EVERY`] it runs, and
    /// at its deadline.
    fn next_look(&self) -> Option<Instant> {
        let w = self.batch.writing.as_ref()?;
        let report = w.began + STUCK_REPORT_EVERY * (w.reports + 1);
        Some(match self.limits.write_timeout {
            Some(timeout) => report.min(w.began + timeout),
            None => report,
        })
    }

    /// The write in flight has run long: says so with what the sink tells of its session, and
    /// past the deadline abandons it as an error to retry (the sink ends its stuck session
    /// first). A write that never completes and never fails would otherwise hold the
    /// pipeline, its permits and the slot, unseen.
    async fn look_at_the_write(&mut self) -> Result<()> {
        let Some(w) = self.batch.writing.as_ref() else {
            return Ok(());
        };
        let waited = w.began.elapsed();
        let give_up = self.limits.write_timeout.is_some_and(|t| waited >= t);
        let evidence = match self.sink.stuck(give_up) {
            Some(look) => tokio::time::timeout(STUCK_LOOK_TIMEOUT, look)
                .await
                .unwrap_or_else(|_| {
                    format!(
                        "no account of its session within {} s",
                        STUCK_LOOK_TIMEOUT.as_secs()
                    )
                }),
            None => "this kind of sink gives no account of its sessions".to_string(),
        };
        let events = w.events;
        if give_up {
            return Err(ConnectorError::retryable(format!(
                "a write of {events} changes to sink {} did not finish within {} s (limits.write_timeout_s): {evidence}",
                self.sink.name(),
                waited.as_secs()
            ))
            .with_hint(
                "it is abandoned and written again from the last durable position; if this repeats, \
                 look at what the session waits on (above) on the target",
            ));
        }
        tracing::warn!(
            sink = self.sink.name(),
            seconds = waited.as_secs(),
            events,
            evidence = %evidence,
            "a write has not finished"
        );
        if let Some(w) = self.batch.writing.as_mut() {
            w.reports += 1;
        }
        Ok(())
    }

    /// The write in flight finished.
    fn written(&mut self, result: Result<Option<Checkpoint>>) -> Result<()> {
        let done = self
            .batch
            .writing
            .take()
            .expect("finish completes only for a write in flight");
        let result = result?;
        tracing::debug!(
            sink = self.sink.name(),
            events = done.events,
            ms = done.began.elapsed().as_secs_f64() * 1e3,
            queued_batches = self.rx.len(),
            "flushed"
        );
        drop(done.permits);
        if done.events > 0 {
            self.telemetry
                .sink_wrote(self.index, done.began.elapsed().as_secs_f64());
        }
        self.report(result);
        let b = &mut self.batch;
        if b.batch_deadline.is_none() && !b.seal_wanted && self.sink.unsettled() {
            b.settle_deadline = Some(Instant::now() + self.limits.flush_interval);
        }
        Ok(())
    }

    /// Whether the sink takes `event`; notes transaction boundaries.
    fn passes(&mut self, event: &StreamEvent) -> bool {
        match event {
            StreamEvent::Begin { commit_lsn, .. } => {
                self.in_txn = true;
                self.skipping = self
                    .checkpoint
                    .is_some_and(|cp| *commit_lsn <= cp.commit_lsn);
                !self.skipping
            }
            StreamEvent::Change(c) => {
                !self.skipping
                    && (self.limits.truncate || c.change != Change::Truncate)
                    && self
                        .copied
                        .get(&c.table.name)
                        .is_none_or(|&at| c.position.commit_lsn >= at)
                    && !self.backfill.as_mut().is_some_and(|b| b.hold(c))
            }
            StreamEvent::Commit {
                commit_time_micros, ..
            } => {
                self.in_txn = false;
                self.last_commit_time = Some(*commit_time_micros);
                !std::mem::take(&mut self.skipping)
            }
        }
    }

    /// Applies a batch of stream events: what the sink already has is dropped.
    async fn take(&mut self, q: Queued) -> Result<()> {
        self.batch.idle_deadline = None;
        let mut passed = Vec::with_capacity(q.events.len());
        for event in q.events {
            if self.passes(&event) {
                if let StreamEvent::Change(c) = &event {
                    self.applied += 1;
                    self.applied_bytes += c.size() as u64;
                }
                passed.push(event);
            }
        }
        if let Some(b) = self
            .backfill
            .as_ref()
            .filter(|b| b.held_bytes > self.limits.hold_bytes)
        {
            return Err(ConnectorError::retryable(format!(
                "table {} changed by more than {} MiB while it was being copied: starting over to copy it with streaming paused",
                b.table.name,
                self.limits.hold_bytes >> 20
            )));
        }
        let b = &mut self.batch;
        if !passed.is_empty() {
            b.settle_deadline = None;
            b.settle_wanted = false;
            b.events += passed.len();
            self.sink.apply_all(passed).await?;
            b.held.push(q.permit);
            b.batch_deadline
                .get_or_insert_with(|| Instant::now() + self.limits.flush_interval);
        }
        if b.batch_deadline.is_some() && !self.in_txn && self.rx.is_empty() {
            b.idle_deadline = Some(Instant::now() + self.limits.linger);
        }
        if b.batch_deadline.is_some() && self.sink.buffered_bytes() >= self.limits.batch_bytes {
            b.seal_wanted = true;
        }
        Ok(())
    }

    /// A step of a joining table's copy, between source transactions: the write in flight and
    /// what is buffered land first, so the step starts from the sink's exact checkpoint.
    async fn control(&mut self, control: crate::queue::Control) -> Result<()> {
        if let Some(mut w) = self.batch.writing.take() {
            let cp = w.result().await?;
            self.report(cp);
        }
        let cp = self.sink.seal().await?;
        self.report(cp);
        let cp = self.sink.settle().await?;
        self.report(cp);
        self.batch = Batching::default();
        let step = backfill::step(
            &mut self.sink,
            control,
            &mut self.backfill,
            self.checkpoint,
            &mut self.copied,
        )
        .await?;
        self.report(step.checkpoint);
        if step.joined {
            let _ = self.events.send(DriverEvent::Joined(self.index));
        }
        Ok(())
    }

    /// Reports a new durable checkpoint to the reader and the status.
    fn report(&mut self, cp: Option<Checkpoint>) {
        let Some(cp) = cp else { return };
        self.checkpoint = Some(cp);
        let _ = self.events.send(DriverEvent::Durable(self.index, cp));
        self.telemetry.sink_durable(
            self.index,
            cp.end_lsn,
            super::telemetry::SinkFigures {
                changes_applied: self.applied,
                bytes_applied: self.applied_bytes,
                last_commit_micros: self.last_commit_time,
                parked: self.sink.parked(),
            },
        );
    }
}

/// A sealed write in flight and the permits of the events it holds.
struct InFlight {
    write: Spawned,
    permits: Vec<Permit>,
    events: usize,
    began: Instant,
    /// How many times it has been reported as not finished.
    reports: u32,
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

/// Completes when an operator pauses or resumes the sink; never, once nobody can.
async fn pause_changed(paused: &mut Option<watch::Receiver<bool>>) {
    match paused {
        Some(p) => {
            if p.changed().await.is_err() {
                *paused = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never, without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
