//! The initial snapshot: every table some sink has not copied yet, read under the slot's
//! exported snapshot (binary COPY) and written into those sinks, `snapshot.workers` copies at a
//! time.
//!
//! A large table (row estimate at least twice `snapshot.range_rows`) is split into key ranges
//! (see [`cutover_core::ranges`]) copied as separate units under the same snapshot. A sink that
//! copies ranges (PostgreSQL) records each range with its rows in one transaction; after a crash
//! the next run reuses the recorded split and copies only the missing ranges, under its new
//! snapshot. Once every range is in, the table is recorded as copied at the earliest of its
//! ranges' snapshot positions, so the stream replays from there over the whole table: a range
//! copied later already holds those changes, and replaying them is idempotent (the sink
//! contract), so every range converges to the same point. Other sinks take a split table
//! through one copy fed by every range, recorded when the last range is read, as before.
//!
//! A table's copy (or a range's) is recorded as done in a sink only when all of it was read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cutover_core::ranges::{KeyRange, Split};
use cutover_core::{ConnectorError, Lsn, Result, Row, Sink, SinkState, TableCopy, TableName};
use cutover_postgres::catalog::SourceTable;
use cutover_postgres::source::SnapshotSession;
use cutover_postgres::PgSource;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, Mutex};

use super::telemetry::Telemetry;
use crate::config::Pipeline;
use crate::rate;
use crate::status::{RangeProgress, TableProgress};

/// A table to copy, and the sinks (by index) that need it.
pub type Need<'a> = (&'a SourceTable, Vec<usize>);

/// The tables some sink has not copied yet.
pub fn plan<'a>(source: &'a PgSource, states: &[SinkState]) -> Vec<Need<'a>> {
    source
        .tables()
        .iter()
        .map(|t| {
            let sinks: Vec<usize> = (0..states.len())
                .filter(|&i| !states[i].copied_tables.contains_key(&t.schema.name))
                .collect();
            (t, sinks)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// Where each (table, sink) copy was recorded: the snapshot position the stream must replay
/// that table from in that sink.
pub type CopiedAt = Vec<Copied>;

/// One table recorded as copied in one sink (by index), at a snapshot's position, and, for a
/// split copy whose ranges were taken under later snapshots too, the latest of those (see
/// [`cutover_core::SinkState::settling`]).
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: TableName,
    pub sink: usize,
    pub at: Lsn,
    pub settling: Option<Lsn>,
}

/// What every copy shares.
struct Copying<'a> {
    source: &'a PgSource,
    sinks: &'a [Box<dyn Sink>],
    session: &'a SnapshotSession,
    cfg: &'a Pipeline,
    telemetry: &'a Telemetry,
    limit: Option<rate::Limit>,
}

/// A sink (by index) taking a split table in one copy, fed by every range; the copy is taken
/// out when the last range finishes it.
type WholeCopy = (usize, Mutex<Option<Box<dyn TableCopy>>>);

/// One table split into key ranges, shared by its ranges' copies.
struct SplitTable<'a> {
    table: &'a SourceTable,
    progress_index: usize,
    /// Sinks that record each range (with the ranges they already hold).
    by_range: Vec<(usize, BTreeMap<u32, Lsn>)>,
    /// Sinks that take the table in one copy, fed by every range; finished (and taken) with
    /// the last.
    whole: Vec<WholeCopy>,
    /// How many ranges the split has.
    ranges: usize,
    /// Ranges not yet read in this run.
    left: AtomicUsize,
    rows: AtomicU64,
}

/// One unit of copying work.
enum Unit<'a> {
    Table(&'a SourceTable, &'a [usize], usize),
    Range(Arc<SplitTable<'a>>, KeyRange),
}

/// Copies tables (whole, or split into key ranges) into the sinks that need them,
/// `snapshot.workers` copies at a time; returns where each copy was recorded.
pub async fn copy_tables(
    source: &PgSource,
    sinks: &[Box<dyn Sink>],
    needs: &[Need<'_>],
    session: &SnapshotSession,
    cfg: &Pipeline,
    telemetry: &Telemetry,
) -> Result<CopiedAt> {
    let copying = Copying {
        source,
        sinks,
        session,
        cfg,
        telemetry,
        limit: rate::Limit::per_second(cfg.snapshot_rows_per_s),
    };
    let mut lines = Vec::new();
    let mut units = Vec::new();
    let mut copied_at = Vec::new();
    for (n, (table, idxs)) in needs.iter().enumerate() {
        let mut line = TableProgress {
            name: table.schema.name.to_string(),
            rows_estimate: table.rows_estimate,
            ..TableProgress::default()
        };
        match copying.split(table, idxs, n).await? {
            None => units.push(Unit::Table(table, idxs, n)),
            Some((split, shared)) => {
                line.ranges = vec![RangeProgress::default(); split.count() as usize];
                let mut pending = 0;
                for range in split.ranges() {
                    let held = shared
                        .by_range
                        .iter()
                        .all(|(_, done)| done.contains_key(&range.index));
                    if held && shared.whole.is_empty() {
                        line.ranges[range.index as usize].done = true;
                        continue;
                    }
                    pending += 1;
                    units.push(Unit::Range(shared.clone(), range));
                }
                shared.left.store(pending, Ordering::SeqCst);
                let skipped = split.count() as usize - pending;
                if skipped > 0 {
                    tracing::info!(table = %table.schema.name, ranges = split.count(), copied_before = skipped, "resuming a split copy: only the ranges no sink holds yet are copied");
                }
                if pending == 0 {
                    // Every range was in, but the run stopped before the table was recorded.
                    copied_at.extend(copying.finish_split(&shared).await?);
                    line.done = true;
                }
            }
        }
        lines.push(line);
    }
    telemetry.snapshot_started(lines);
    let copying = &copying;
    // Parents before children where a sink checks foreign keys (see `Sink::copy_depth`): each
    // depth's copies all commit before the next depth starts.
    let mut by_depth: BTreeMap<usize, Vec<Unit>> = BTreeMap::new();
    for unit in units {
        let name = match &unit {
            Unit::Table(table, ..) => &table.schema.name,
            Unit::Range(shared, _) => &shared.table.schema.name,
        };
        let depth = sinks.iter().map(|s| s.copy_depth(name)).max().unwrap_or(0);
        by_depth.entry(depth).or_default().push(unit);
    }
    if by_depth.len() > 1 {
        tracing::info!(
            depths = by_depth.len(),
            "copying in the targets' foreign-key order: referenced tables first, one depth at a time"
        );
    }
    for (_, units) in by_depth {
        let done: Vec<CopiedAt> = futures::stream::iter(units.into_iter().map(|unit| async move {
            match unit {
                Unit::Table(table, idxs, n) => copying.table(table, idxs, n).await,
                Unit::Range(shared, range) => copying.range(shared, range).await,
            }
        }))
        .buffer_unordered(cfg.snapshot_workers)
        .try_collect()
        .await?;
        copied_at.extend(done.into_iter().flatten());
    }
    Ok(copied_at)
}

impl<'a> Copying<'a> {
    /// Rows of one chunk channel: the queue's bytes shared by the copies running at once.
    fn channel_depth(&self) -> usize {
        let cfg = self.cfg;
        (cfg.queue_bytes / cfg.snapshot_workers.max(1) / cfg.chunk_bytes.max(1)).clamp(2, 64)
    }

    /// Whether `table` is copied in key ranges, and how: the split some sink already recorded
    /// (a resumed copy), or a new one when the table is large enough. `None`: in one piece.
    async fn split(
        &self,
        table: &'a SourceTable,
        idxs: &[usize],
        progress_index: usize,
    ) -> Result<Option<(Arc<Split>, Arc<SplitTable<'a>>)>> {
        let name = &table.schema.name;
        let range_sinks: Vec<usize> = idxs
            .iter()
            .copied()
            .filter(|&i| self.sinks[i].copies_ranges(name))
            .collect();
        let mut recorded: Option<Split> = None;
        let mut by_range = Vec::new();
        for &i in &range_sinks {
            let held = self.sinks[i].copied_ranges().remove(name);
            if let Some(held) = &held {
                match &recorded {
                    Some(split) if *split != held.split => {
                        return Err(ConnectorError::fatal(format!(
                            "sinks {} and others hold ranges of {name} under different key splits",
                            self.sinks[i].name()
                        ))
                        .with_hint("TRUNCATE the table on that target, delete its rows of cutover.copied_ranges for the table, and run again"));
                    }
                    _ => recorded = Some(held.split.clone()),
                }
            }
            by_range.push((i, held.map(|h| h.done).unwrap_or_default()));
        }
        let split = match recorded {
            Some(split) => split,
            None => {
                let range_rows = self.cfg.snapshot_range_rows.max(1);
                let large = table.rows_estimate >= range_rows.saturating_mul(2);
                if !large || table.relkind != 'r' || !table.schema.has_key() {
                    return Ok(None);
                }
                let count = table.rows_estimate.div_ceil(range_rows).clamp(2, 10_000) as u32;
                let split = self.source.split_points(table, count).await?;
                if split.points.is_empty() {
                    return Ok(None);
                }
                tracing::info!(table = %name, ranges = split.count(), rows_estimate = table.rows_estimate, "copying in key ranges");
                split
            }
        };
        let split = Arc::new(split);
        let mut whole = Vec::new();
        for &i in idxs.iter().filter(|i| !range_sinks.contains(i)) {
            let copy = self.sinks[i]
                .begin_copy(table.schema.clone(), self.session.lsn)
                .await?;
            whole.push((i, Mutex::new(Some(copy))));
        }
        let shared = Arc::new(SplitTable {
            table,
            progress_index,
            by_range,
            whole,
            ranges: split.count() as usize,
            left: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
        });
        Ok(Some((split, shared)))
    }

    /// A channel for one copy's row chunks.
    fn channel(&self) -> (mpsc::Sender<Vec<Row>>, mpsc::Receiver<Vec<Row>>) {
        mpsc::channel(self.channel_depth())
    }

    /// Hands every chunk that arrives on `rx` to `copies` and to the split table's whole-table
    /// copies, at the snapshot's rate limit, counting progress on status line `line` (and key
    /// range `range`).
    async fn drain(
        &self,
        rx: &mut mpsc::Receiver<Vec<Row>>,
        copies: &mut [Box<dyn TableCopy>],
        whole: &[WholeCopy],
        line: usize,
        range: Option<usize>,
    ) -> Result<()> {
        while let Some(rows) = rx.recv().await {
            if let Some(limit) = &self.limit {
                limit.take(rows.len() as u64).await;
            }
            for copy in copies.iter_mut() {
                copy.write(&rows).await?;
            }
            for (_, copy) in whole {
                if let Some(copy) = copy.lock().await.as_mut() {
                    copy.write(&rows).await?;
                }
            }
            self.telemetry
                .rows_copied(line, range, rows.len() as u64, bytes(&rows));
        }
        Ok(())
    }

    /// Copies one whole table into the sinks `idxs`; its status line is `progress_index`.
    async fn table(
        &self,
        table: &'a SourceTable,
        idxs: &[usize],
        progress_index: usize,
    ) -> Result<CopiedAt> {
        let mut copies: Vec<Box<dyn TableCopy>> = Vec::with_capacity(idxs.len());
        for &i in idxs {
            copies.push(
                self.sinks[i]
                    .begin_copy(table.schema.clone(), self.session.lsn)
                    .await?,
            );
        }
        let (tx, mut rx) = self.channel();
        let read = self
            .source
            .copy_table(table, self.session, self.cfg.chunk_bytes, tx);
        let write = self.drain(&mut rx, &mut copies, &[], progress_index, None);
        let (read, write) = tokio::join!(read, write);
        write?;
        let rows = read?;
        // Finish (commit) only when the whole table was read: a failed read rolls every copy back.
        for copy in copies {
            copy.finish().await?;
        }
        self.telemetry.table_done(progress_index);
        tracing::info!(table = %table.schema.name, rows, "table copied");
        Ok(idxs
            .iter()
            .map(|&i| Copied {
                table: table.schema.name.clone(),
                sink: i,
                at: self.session.lsn,
                settling: None,
            })
            .collect())
    }

    /// Copies one key range of a split table into the sinks that lack it (and into the
    /// whole-table copies); the last range to finish records the table.
    async fn range(&self, shared: Arc<SplitTable<'a>>, range: KeyRange) -> Result<CopiedAt> {
        let table = shared.table;
        let name = &table.schema.name;
        let mut copies: Vec<Box<dyn TableCopy>> = Vec::new();
        for (i, done) in &shared.by_range {
            if !done.contains_key(&range.index) {
                copies.push(
                    self.sinks[*i]
                        .begin_range_copy(table.schema.clone(), self.session.lsn, range.clone())
                        .await?,
                );
            }
        }
        let line = shared.progress_index;
        let (tx, mut rx) = self.channel();
        let read = self
            .source
            .copy_range(table, self.session, &range, self.cfg.chunk_bytes, tx);
        let write = self.drain(
            &mut rx,
            &mut copies,
            &shared.whole,
            line,
            Some(range.index as usize),
        );
        let (read, write) = tokio::join!(read, write);
        write?;
        let rows = read?;
        for copy in copies {
            copy.finish().await?;
        }
        shared.rows.fetch_add(rows, Ordering::SeqCst);
        self.telemetry.range_done(line, range.index as usize);
        tracing::info!(table = %name, range = %range, rows, "range copied");
        if shared.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let copied_at = self.finish_split(&shared).await?;
            self.telemetry.table_done(line);
            tracing::info!(table = %name, ranges = range.split.count(), rows = shared.rows.load(Ordering::SeqCst), "table copied");
            return Ok(copied_at);
        }
        Ok(Vec::new())
    }

    /// Records a split table as copied in every sink that needed it: range sinks at the
    /// earliest snapshot of their ranges, whole-table copies at this run's snapshot.
    async fn finish_split(&self, shared: &SplitTable<'a>) -> Result<CopiedAt> {
        let name = &shared.table.schema.name;
        let mut copied_at = Vec::new();
        for (i, done) in &shared.by_range {
            let snapshots = || {
                done.values()
                    .copied()
                    .chain((done.len() < shared.ranges).then_some(self.session.lsn))
            };
            let earliest = snapshots().min().unwrap_or(self.session.lsn);
            let latest = snapshots().max().unwrap_or(self.session.lsn);
            self.sinks[*i]
                .finish_ranges(name, earliest, shared.rows.load(Ordering::SeqCst))
                .await?;
            copied_at.push(Copied {
                table: name.clone(),
                sink: *i,
                at: earliest,
                settling: (latest > earliest).then_some(latest),
            });
        }
        for (i, copy) in &shared.whole {
            // The last range reaches here alone: each whole copy is finished once.
            if let Some(copy) = copy.lock().await.take() {
                copy.finish().await?;
                copied_at.push(Copied {
                    table: name.clone(),
                    sink: *i,
                    at: self.session.lsn,
                    settling: None,
                });
            }
        }
        Ok(copied_at)
    }
}

/// The bytes of a chunk of rows, for progress.
fn bytes(rows: &[Row]) -> u64 {
    rows.iter().map(|r| r.size() as u64).sum()
}
