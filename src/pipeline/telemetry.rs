//! The pipeline's live status: the one writer of [`Status`], and a subscription to it.
//!
//! Every stage reports through a [`Telemetry`] handle; nothing else changes the status. Readers
//! (the progress line, the periodic check, an operator surface) [`Telemetry::subscribe`] and see
//! each change as it happens, or take a [`Telemetry::snapshot`].

use std::sync::Arc;

use cutover_core::Lsn;
use tokio::sync::watch;

use crate::status::{Phase, SinkProgress, Status, TableProgress, VerifySummary};

/// A handle on the pipeline's status; clones share it.
#[derive(Clone)]
pub struct Telemetry(Arc<watch::Sender<Status>>);

/// A sink's figures at a durable checkpoint.
pub struct SinkFigures {
    pub changes_applied: u64,
    pub bytes_applied: u64,
    /// Source commit time (µs since the Unix epoch) of the last transaction made durable.
    pub last_commit_micros: Option<i64>,
    pub parked: u64,
}

/// One sink's queue and backpressure figures at a sample.
pub struct QueueSample {
    pub events: usize,
    pub bytes: usize,
    pub stalled_ms: u64,
    pub throttled_ms: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry(Arc::new(watch::Sender::new(Status::new())))
    }

    /// Live status: the receiver sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }

    /// The status as it is now.
    pub fn snapshot(&self) -> Status {
        self.0.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        self.0.send_modify(f);
    }

    pub fn phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }

    /// The snapshot starts, copying these tables.
    pub fn snapshot_started(&self, tables: Vec<TableProgress>) {
        self.update(|s| {
            s.phase = Phase::Snapshot;
            s.tables = tables;
        });
    }

    /// A table joins while streaming; returns its line's index for [`Telemetry::rows_copied`].
    pub fn table_joining(&self, table: TableProgress) -> usize {
        let mut index = 0;
        self.update(|s| {
            s.tables.push(table);
            index = s.tables.len() - 1;
        });
        index
    }

    /// `rows` (of `bytes`) more copied of table line `table`, in key range `range` if split.
    pub fn rows_copied(&self, table: usize, range: Option<usize>, rows: u64, bytes: u64) {
        self.update(|s| {
            if let Some(t) = s.tables.get_mut(table) {
                t.rows_copied += rows;
                t.bytes_copied += bytes;
                if let Some(r) = range.and_then(|r| t.ranges.get_mut(r)) {
                    r.rows_copied += rows;
                    r.bytes_copied += bytes;
                }
            }
        });
    }

    /// Key range `range` of table line `table` is copied.
    pub fn range_done(&self, table: usize, range: usize) {
        self.update(|s| {
            if let Some(r) = s
                .tables
                .get_mut(table)
                .and_then(|t| t.ranges.get_mut(range))
            {
                r.done = true;
            }
        });
    }

    pub fn table_done(&self, table: usize) {
        self.update(|s| {
            if let Some(t) = s.tables.get_mut(table) {
                t.done = true;
            }
        });
    }

    /// Streaming starts at `start`, with these sinks.
    pub fn streaming(&self, start: Lsn, sinks: Vec<SinkProgress>) {
        self.update(|s| {
            s.phase = Phase::Streaming;
            s.confirmed = start;
            s.sinks = sinks;
        });
    }

    /// The slot was confirmed up to `lsn`.
    pub fn confirmed(&self, lsn: Lsn) {
        self.update(|s| {
            s.confirmed = lsn;
            s.source_wal = s.source_wal.max(lsn);
        });
    }

    /// The source's WAL position and each sink's queue, sampled.
    pub fn sampled(&self, source_wal: Lsn, queues: &[QueueSample]) {
        self.update(|s| {
            s.sampled_at = Some(std::time::SystemTime::now());
            s.source_wal = source_wal.max(s.confirmed);
            for (p, q) in s.sinks.iter_mut().zip(queues) {
                p.queue_depth = q.events;
                p.queue_bytes = q.bytes;
                p.stalled_ms = q.stalled_ms;
                p.throttled_ms = q.throttled_ms;
            }
        });
    }

    /// Sink `index` made everything up to `durable` durable.
    pub fn sink_durable(&self, index: usize, durable: Lsn, figures: SinkFigures) {
        self.update(|s| {
            if let Some(p) = s.sinks.get_mut(index) {
                p.durable = durable;
                p.changes_applied = figures.changes_applied;
                p.bytes_applied = figures.bytes_applied;
                p.last_commit_micros = figures.last_commit_micros;
                p.parked = figures.parked;
                if let Some(micros) = figures.last_commit_micros {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    let latency = now.saturating_sub(micros).max(0) as f64 / 1e6;
                    p.commit_to_durable_seconds.observe(latency);
                }
            }
        });
    }

    /// Sink `index` finished a write that took `seconds`.
    pub fn sink_wrote(&self, index: usize, seconds: f64) {
        self.update(|s| {
            if let Some(p) = s.sinks.get_mut(index) {
                p.write_seconds.observe(seconds);
            }
        });
    }

    /// A run was interrupted by `cause` and is retried.
    pub fn retried(&self, cause: &str) {
        self.update(|s| *s.retries.entry(cause.to_string()).or_default() += 1);
    }

    /// Sink `index` was paused or resumed by an operator.
    pub fn sink_paused(&self, index: usize, paused: bool) {
        self.update(|s| {
            if let Some(p) = s.sinks.get_mut(index) {
                p.paused = paused;
            }
        });
    }

    /// The source reader was paused or resumed by an operator.
    pub fn reader_paused(&self, paused: bool) {
        self.update(|s| s.reader_paused = paused);
    }

    /// A periodic consistency check ended.
    pub fn verified(&self, summary: VerifySummary) {
        self.update(|s| s.last_verify = Some(summary));
    }
}
