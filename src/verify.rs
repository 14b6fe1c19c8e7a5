//! `cutover verify`: proves that every target holds what the source holds, or names the rows
//! that differ.
//!
//! Each table is cut into key ranges (bounds sampled from the source). Both sides of a range are
//! read at once, every row put in canonical form and hashed with BLAKE3; a range's digest is its
//! row count and the sum of its row hashes. Equal digests end the range; differing ones are
//! compared row by row, or split and read again when too large (see
//! [`cutover_core::verify::compare_range`]). While the pipeline runs, a differing row is drift
//! only if it still differs after the pipeline has applied past the source position it was
//! read at, and the source row did not change meanwhile; otherwise it is "in flight".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::transform::TableTransform;
use cutover_core::verify::{
    compare_range, compare_rows, Bound, CanonRow, KeyBound, RowDiff, TableSide,
};
use cutover_core::{ConnectorError, Lsn, Result, Sink as _, TableSchema, Target};
use cutover_postgres::catalog;
use cutover_postgres::verify::PgTableSide;
use cutover_postgres::PgSource;
use serde::Serialize;

use crate::config::Pipeline;
use crate::state::{Identity, Journal, SavedCheck, Scope, SHOWN_KEYS};

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Table patterns (`schema.table`, `schema.*`); empty compares every selected table.
    pub tables: Vec<String>,
    /// Re-send confirmed drift from the source through the sink, then check it again.
    pub repair: bool,
    /// Differing keys listed per kind and table (all are counted).
    pub max_keys: usize,
    /// Compare only the keys changed after a clean check that began at the position given,
    /// in the tables whose changed keys the journal knows (the others in full). For a source
    /// that no longer changes (the switch's final check): differences are not re-checked.
    pub changed: Option<(Arc<Journal>, Lsn)>,
}

/// Progress of a running check, for a terminal line.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub sink: String,
    pub table: String,
    pub range: usize,
    pub ranges: usize,
    pub rows: u64,
    pub started: Option<Instant>,
}

/// Called with the progress after every range.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// The result of a check, as printed (text) or emitted (`--format json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pipeline: String,
    /// The source's WAL position when the check began (a clean check proves every row equal
    /// as of then or later).
    #[serde(skip)]
    pub source_lsn_at_start: Option<Lsn>,
    /// Whether the pipeline was streaming from its slot during the check.
    pub pipeline_running: bool,
    pub elapsed_ms: u64,
    pub tables: Vec<TableReport>,
    /// The databases compared (None when they could not be read: the check then does not
    /// count for the switch).
    #[serde(skip)]
    pub identity: Option<Identity>,
}

/// One table on one sink.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub sink: String,
    pub kind: &'static str,
    pub table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub ranges: usize,
    pub range_reads: u32,
    /// Confirmed drift, by kind; `*_count` counts all, the lists hold at most `max_keys`.
    pub missing_count: u64,
    pub extra_count: u64,
    pub different_count: u64,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<Difference>,
    /// Rows that differed but were still changing on the source (not drift, not proven equal).
    pub in_flight_count: u64,
    pub in_flight: Vec<String>,
    /// Rows re-sent by `--repair`, and how many still differ after it.
    pub repaired: u64,
    pub still_differing_after_repair: u64,
    pub elapsed_ms: u64,
    /// Only the keys changed since the last clean check were compared (`source_rows` and
    /// `target_rows` count those rows).
    pub keys_only: bool,
}

/// A row present on both sides with different values.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub key: String,
    pub columns: Vec<ColumnDifference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnDifference {
    pub column: String,
    pub source: String,
    pub target: String,
}

impl TableReport {
    /// Rows proven to differ.
    pub fn drift(&self) -> u64 {
        self.missing_count + self.extra_count + self.different_count
    }
}

impl Report {
    /// Every table equal on every sink, with nothing left in flight.
    pub fn equal(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.drift() == 0 && t.in_flight_count == 0)
    }

    /// The report as text, one block per table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let verdict = if t.drift() > 0 {
                format!(
                    "DRIFT: {} missing, {} extra, {} different",
                    t.missing_count, t.extra_count, t.different_count
                )
            } else if t.in_flight_count > 0 {
                format!("not proven: {} row(s) still changing", t.in_flight_count)
            } else {
                "equal".to_string()
            };
            out.push_str(&format!(
                "sink {} ({}): {}: source {} rows, target {} rows, {} ranges ({} reads), {:.1} s: {verdict}\n",
                t.sink,
                t.kind,
                t.table,
                t.source_rows,
                t.target_rows,
                t.ranges,
                t.range_reads,
                t.elapsed_ms as f64 / 1000.0
            ));
            for k in &t.missing {
                out.push_str(&format!("    missing    {k}\n"));
            }
            for k in &t.extra {
                out.push_str(&format!("    extra      {k}\n"));
            }
            for d in &t.different {
                let cols: Vec<String> = d
                    .columns
                    .iter()
                    .map(|c| format!("{} (source {}, target {})", c.column, c.source, c.target))
                    .collect();
                out.push_str(&format!("    different  {}: {}\n", d.key, cols.join("; ")));
            }
            for k in &t.in_flight {
                out.push_str(&format!("    in flight  {k}\n"));
            }
            let listed = (t.missing.len() + t.extra.len() + t.different.len()) as u64;
            if listed < t.drift() {
                out.push_str(&format!(
                    "    ... and {} more (raise --max-keys to list them)\n",
                    t.drift() - listed
                ));
            }
            if t.repaired > 0 {
                out.push_str(&format!(
                    "    repaired {} row(s) from the source; {} still differ\n",
                    t.repaired, t.still_differing_after_repair
                ));
            }
        }
        let drift: u64 = self.tables.iter().map(TableReport::drift).sum();
        let in_flight: u64 = self.tables.iter().map(|t| t.in_flight_count).sum();
        let drifting = self.tables.iter().filter(|t| t.drift() > 0).count();
        out.push_str(&if drift > 0 {
            format!(
                "result: DRIFT in {drifting} of {} table(s): {drift} row(s) differ\n",
                self.tables.len()
            )
        } else if in_flight > 0 {
            format!("result: no confirmed drift, but {in_flight} row(s) kept changing during the check; run it again\n")
        } else {
            format!(
                "result: equal: {} table(s), {} rows compared\n",
                self.tables.len(),
                self.tables.iter().map(|t| t.source_rows).sum::<u64>()
            )
        });
        out
    }
}

impl SavedCheck {
    /// The saved check after `report`, carrying the last clean time over from `previous` when
    /// both describe the same databases.
    pub fn after(report: &Report, previous: Option<&SavedCheck>, now: u64) -> SavedCheck {
        let previous = previous.filter(|p| p.identity.is_some() && p.identity == report.identity);
        let drift_keys = report
            .tables
            .iter()
            .filter(|t| t.drift() > 0)
            .map(|t| {
                let keys = t
                    .missing
                    .iter()
                    .map(|k| format!("missing {k}"))
                    .chain(t.extra.iter().map(|k| format!("extra {k}")))
                    .chain(t.different.iter().map(|d| {
                        let columns: Vec<&str> =
                            d.columns.iter().map(|c| c.column.as_str()).collect();
                        format!("differs {} ({})", d.key, columns.join(", "))
                    }))
                    .take(SHOWN_KEYS)
                    .collect();
                (format!("{}/{}", t.sink, t.table), keys)
            })
            .collect();
        let drift_by_table = report
            .tables
            .iter()
            .filter(|t| t.drift() > 0)
            .map(|t| (format!("{}/{}", t.sink, t.table), t.drift()))
            .collect();
        SavedCheck {
            checked_at: now,
            last_clean_at: if report.equal() {
                Some(now)
            } else {
                previous.and_then(|p| p.last_clean_at)
            },
            drift_rows: report.tables.iter().map(TableReport::drift).sum(),
            in_flight_rows: report.tables.iter().map(|t| t.in_flight_count).sum(),
            drift_by_table,
            drift_keys,
            elapsed_ms: Some(report.elapsed_ms),
            clean_from: if report.equal() {
                report.source_lsn_at_start.map(|l| l.0)
            } else {
                previous.and_then(|p| p.clean_from)
            },
            identity: report.identity.clone(),
        }
    }

    /// Saves the check after `report` at `path` (carrying the last clean time over) and
    /// returns it.
    pub fn record(report: &Report, path: &std::path::Path) -> std::io::Result<SavedCheck> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let saved = SavedCheck::after(report, SavedCheck::load(path).as_ref(), now);
        saved.save(path)?;
        Ok(saved)
    }
}

/// Checks every target of the pipeline against the source.
pub async fn verify(
    cfg: &Pipeline,
    opts: &VerifyOptions,
    progress: ProgressFn<'_>,
) -> Result<Report> {
    let started = Instant::now();
    if cfg.apply.is_some() && (cfg.source_url.is_empty() || cfg.tables.is_empty()) {
        return Err(ConnectorError::fatal(format!(
            "pipeline {} reads Kafka topics and names no database to compare its targets with",
            cfg.name
        ))
        .with_hint("set [source] url to the original PostgreSQL database the topics were captured from, and tables to the tables to compare"));
    }
    let identity = match Identity::of(cfg).await {
        Ok(identity) => Some(identity),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which databases this check compares: it will not count for the switch");
            None
        }
    };
    let source = crate::connect::source(cfg).await?;
    let source_lsn_at_start = source.current_wal_lsn().await.ok();
    let tables = select_tables(&source, &opts.tables)?;
    // An apply pipeline's workers are not seen from the source: rows that differ are checked
    // again, as while a pipeline streams.
    let running = cfg.apply.is_some() || matches!(source.slot_activity().await?, Some((true, _)));
    let run = Checking {
        cfg,
        source: &source,
        opts,
        running,
        progress,
    };
    let mut checks = Vec::new();
    for (index, sink) in cfg.sinks.iter().enumerate() {
        let specs = &sink.rules;
        for table in &tables {
            // The sink's rules, compiled for the table as it is on the source; the target holds
            // the shaped table, and the source's rows are shaped the same way before they are
            // compared.
            let compiled = cfg
                .transforms
                .compile(specs, table)
                .map_err(|e| ConnectorError::fatal(format!("sink {}: {e}", sink.name())))?;
            let Some(compiled) = compiled else {
                continue; // the sink does not take this table
            };
            let (target_table, shaped) = if compiled.is_identity() {
                (table.clone(), None)
            } else {
                (compiled.output().clone(), Some(Arc::new(compiled)))
            };
            checks.push(check_table(&run, index, table, target_table, shaped));
        }
    }
    // Checks of changed keys are short and wait on round trips: they run at once. Checks of
    // every row read whole tables: one at a time.
    let reports = if opts.changed.is_some() {
        futures::future::try_join_all(checks).await?
    } else {
        let mut reports = Vec::with_capacity(checks.len());
        for check in checks {
            reports.push(check.await?);
        }
        reports
    };
    Ok(Report {
        pipeline: cfg.name.clone(),
        source_lsn_at_start,
        pipeline_running: running,
        elapsed_ms: started.elapsed().as_millis() as u64,
        tables: reports,
        identity,
    })
}

/// What every table's check in one `verify` shares.
struct Checking<'a> {
    cfg: &'a Pipeline,
    source: &'a PgSource,
    opts: &'a VerifyOptions,
    /// Whether the pipeline streams while the check runs.
    running: bool,
    progress: ProgressFn<'a>,
}

/// Compares one table of sink `index`: `target_table` is the table as the sink holds it, and
/// `shaped` the sink's transform rules for it (None: the target holds the source's table).
async fn check_table(
    run: &Checking<'_>,
    index: usize,
    table: &Arc<TableSchema>,
    target_table: Arc<TableSchema>,
    shaped: Option<Arc<TableTransform>>,
) -> Result<TableReport> {
    let Checking {
        cfg,
        source,
        opts,
        running,
        progress,
    } = *run;
    let sink = &*cfg.sinks[index];
    if let Some((journal, clean_from)) = &opts.changed {
        if journal.scope(&table.name, *clean_from) == Scope::Keys(Vec::new()) {
            // Nothing changed since the clean check: nothing to read (a message target's side
            // would fold its whole topic or stream first).
            let mut report = blank_report(sink, table, shaped.as_ref());
            report.keys_only = true;
            return Ok(report);
        }
    }
    let (target, precision) = sink.table_side(target_table.clone()).await?;
    let mut src = PgTableSide::open(source.endpoint(), table.clone(), precision).await?;
    if shaped.is_some() {
        // Compiled again for the layout the source is read in (user types as text).
        let read = cfg
            .transforms
            .compile(&cfg.sinks[index].rules, src.table())
            .map_err(|e| ConnectorError::fatal(format!("sink {}: {e}", sink.name())))?;
        if let Some(read) = read {
            src = src.with_transform(read);
        }
    }
    let check = TableCheck {
        cfg,
        source,
        src: &src,
        tgt: target.as_ref(),
        sink,
        table,
        shaped,
        opts,
        running,
    };
    let report = check.run(progress).await;
    target.close().await;
    report
}

fn select_tables(source: &PgSource, patterns: &[String]) -> Result<Vec<Arc<TableSchema>>> {
    let all = source.schemas();
    if patterns.is_empty() {
        return Ok(all);
    }
    for p in patterns {
        if !all.iter().any(|t| catalog::matches(p, &t.name)) {
            return Err(ConnectorError::fatal(format!(
                "--table {p} matches none of the pipeline's tables ({})",
                all.iter()
                    .map(|t| t.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_hint("name a table the pipeline replicates, as schema.table"));
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| patterns.iter().any(|p| catalog::matches(p, &t.name)))
        .collect())
}

/// One table compared between the source and one sink.
struct TableCheck<'a> {
    cfg: &'a Pipeline,
    source: &'a PgSource,
    src: &'a PgTableSide,
    tgt: &'a dyn TableSide,
    sink: &'a dyn Target,
    table: &'a Arc<TableSchema>,
    /// The sink's transform rules for the table, if it has any.
    shaped: Option<Arc<TableTransform>>,
    opts: &'a VerifyOptions,
    running: bool,
}

impl TableCheck<'_> {
    async fn run(&self, progress: ProgressFn<'_>) -> Result<TableReport> {
        let started = Instant::now();
        let mut report = self.empty_report();
        let (confirmed, in_flight) = match self.changed_keys() {
            Some(keys) => (self.compare_keys(keys, &mut report).await?, Vec::new()),
            None => self.compare_ranges(&mut report, progress).await?,
        };
        self.tally(&mut report, &confirmed, &in_flight);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    fn empty_report(&self) -> TableReport {
        blank_report(self.sink, self.table, self.shaped.as_ref())
    }

    /// The keys to compare instead of every row, when the options limit this table to them.
    fn changed_keys(&self) -> Option<Vec<Vec<Option<bytes::Bytes>>>> {
        let (journal, clean_from) = self.opts.changed.as_ref()?;
        match journal.scope(&self.table.name, *clean_from) {
            Scope::Keys(keys) => Some(keys),
            Scope::Full => None,
        }
    }

    /// Compares the rows of `keys` on both sides; the source must no longer change.
    async fn compare_keys(
        &self,
        keys: Vec<Vec<Option<bytes::Bytes>>>,
        report: &mut TableReport,
    ) -> Result<Vec<RowDiff>> {
        const CHUNK: usize = 1000;
        report.keys_only = true;
        let bounds: Vec<Arc<KeyBound>> = keys
            .into_iter()
            .map(|k| KeyBound::of_values(self.table, k).map(Arc::new))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                ConnectorError::fatal(format!("table {}: a changed key: {e}", self.table.name))
            })?;
        let mut diffs = Vec::new();
        for chunk in bounds.chunks(CHUNK) {
            let (s, t) = futures::try_join!(self.src.fetch(chunk), self.tgt.fetch(chunk))?;
            report.range_reads += 1;
            report.source_rows += s.iter().flatten().count() as u64;
            report.target_rows += t.iter().flatten().count() as u64;
            diffs.extend(s.into_iter().zip(t).filter_map(|(s, t)| diff_between(s, t)));
        }
        Ok(diffs)
    }

    /// Compares every row, range by range; differing rows are checked again while changes
    /// flow, and repaired when asked. Returns the confirmed drift and the rows in flight.
    async fn compare_ranges(
        &self,
        report: &mut TableReport,
        progress: ProgressFn<'_>,
    ) -> Result<(Vec<RowDiff>, Vec<CanonRow>)> {
        let TableCheck {
            cfg,
            source,
            src,
            tgt,
            sink,
            table,
            shaped: _,
            opts,
            running,
        } = *self;
        let settings = &cfg.verify;
        let (estimate, bounds) = src.sample_bounds(settings.rows_per_range).await?;
        let mut ranges = Vec::with_capacity(bounds.len() + 1);
        let mut low = Bound::Unbounded;
        for b in bounds {
            let high = Bound::Key(b);
            ranges.push((low, high.clone()));
            low = high;
        }
        ranges.push((low, Bound::Unbounded));
        let per_range = estimate / ranges.len() as u64 + 1;
        report.ranges = ranges.len();
        let mut shown = Progress {
            sink: sink.name().to_string(),
            table: table.name.to_string(),
            ranges: ranges.len(),
            started: Some(Instant::now()),
            ..Progress::default()
        };
        let mut diffs = Vec::new();
        for (i, (low, high)) in ranges.into_iter().enumerate() {
            let outcome = compare_range(src, tgt, low, high, settings.keep_rows, per_range).await?;
            report.source_rows += outcome.source_rows;
            report.target_rows += outcome.target_rows;
            report.range_reads += outcome.reads;
            diffs.extend(outcome.diffs);
            shown.range = i + 1;
            shown.rows = report.source_rows;
            progress(&shown);
        }
        let (mut confirmed, in_flight) = recheck(source, src, tgt, diffs, cfg, running).await?;
        if opts.repair && !confirmed.is_empty() {
            let keys: Vec<Arc<KeyBound>> = confirmed.iter().map(diff_key).collect();
            report.repaired = keys.len() as u64;
            repair(cfg, sink, table, self.shaped.as_ref(), src, &keys).await?;
            let (s, t) = futures::try_join!(src.fetch(&keys), tgt.fetch(&keys))?;
            confirmed = s
                .into_iter()
                .zip(t)
                .filter_map(|(s, t)| diff_between(s, t))
                .collect();
            report.still_differing_after_repair = confirmed.len() as u64;
        }
        Ok((confirmed, in_flight))
    }

    /// Counts the confirmed drift and the rows in flight into `report`, listing at most
    /// `max_keys` of each kind.
    fn tally(&self, report: &mut TableReport, confirmed: &[RowDiff], in_flight: &[CanonRow]) {
        let max_keys = self.opts.max_keys;
        // Columns are reported under the target's names (after the sink's rules).
        let shown = self.shaped.as_ref().map_or(self.table, |t| t.output());
        let names: Vec<String> = shown.columns.iter().map(|c| c.name.clone()).collect();
        for diff in confirmed {
            match diff {
                RowDiff::Missing(row) => {
                    report.missing_count += 1;
                    if report.missing.len() < max_keys {
                        report.missing.push(row.key_text(&names));
                    }
                }
                RowDiff::Extra(row) => {
                    report.extra_count += 1;
                    if report.extra.len() < max_keys {
                        report.extra.push(row.key_text(&names));
                    }
                }
                RowDiff::Different {
                    source,
                    target,
                    columns,
                } => {
                    report.different_count += 1;
                    if report.different.len() < max_keys {
                        report.different.push(Difference {
                            key: source.key_text(&names),
                            columns: columns
                                .iter()
                                .map(|&c| ColumnDifference {
                                    column: names.get(c).cloned().unwrap_or_default(),
                                    source: render(source, c),
                                    target: render(target, c),
                                })
                                .collect(),
                        });
                    }
                }
            }
        }
        report.in_flight_count = in_flight.len() as u64;
        report.in_flight = in_flight
            .iter()
            .take(max_keys)
            .map(|r| r.key_text(&names))
            .collect();
    }
}

/// A report of nothing compared yet for `table` on `sink`.
fn blank_report(
    sink: &dyn Target,
    table: &TableSchema,
    shaped: Option<&Arc<TableTransform>>,
) -> TableReport {
    TableReport {
        sink: sink.name().to_string(),
        kind: sink.kind(),
        table: match shaped.map(|t| &t.output().name) {
            Some(out) if *out != table.name => format!("{} (as {out})", table.name),
            _ => table.name.to_string(),
        },
        source_rows: 0,
        target_rows: 0,
        ranges: 0,
        range_reads: 0,
        missing_count: 0,
        extra_count: 0,
        different_count: 0,
        missing: Vec::new(),
        extra: Vec::new(),
        different: Vec::new(),
        in_flight_count: 0,
        in_flight: Vec::new(),
        repaired: 0,
        still_differing_after_repair: 0,
        elapsed_ms: 0,
        keys_only: false,
    }
}

fn render(row: &CanonRow, column: usize) -> String {
    const MAX: usize = 80;
    let text = cutover_core::verify::canonical::render_value(row.column(column))
        .map(|(t, _)| t)
        .unwrap_or_else(|| "?".into());
    if text.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}... ({} bytes)", &text[..cut], text.len())
    } else {
        text
    }
}

fn diff_key(diff: &RowDiff) -> Arc<KeyBound> {
    Arc::new(match diff {
        RowDiff::Missing(r) | RowDiff::Extra(r) => KeyBound::of(r),
        RowDiff::Different { source, .. } => KeyBound::of(source),
    })
}

/// The difference between a source row and a target row of one key, if any.
fn diff_between(source: Option<CanonRow>, target: Option<CanonRow>) -> Option<RowDiff> {
    match (source, target) {
        (None, None) => None,
        (Some(s), None) => Some(RowDiff::Missing(s)),
        (None, Some(t)) => Some(RowDiff::Extra(t)),
        (Some(s), Some(t)) => compare_rows(&[s], &[t]).pop(),
    }
}

fn same(a: &Option<CanonRow>, b: &Option<CanonRow>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.hash == b.hash,
        _ => false,
    }
}

/// Sorts differences found by the scan into confirmed drift and rows in flight.
///
/// Each round reads the suspect rows on the source (S1), notes the source's WAL position,
/// waits until the slot is confirmed past it (every sink has applied everything S1 saw), reads
/// the target (T) and the source again (S2). A row equal in S2 and T is in step. A row whose
/// source did not change (S1 = S2) but whose target differs is drift. A row whose source
/// changed is read again in the next round, up to `rounds`; what is left is in flight.
async fn recheck(
    source: &PgSource,
    src: &PgTableSide,
    tgt: &dyn TableSide,
    diffs: Vec<RowDiff>,
    cfg: &Pipeline,
    running: bool,
) -> Result<(Vec<RowDiff>, Vec<CanonRow>)> {
    let mut confirmed = Vec::new();
    let mut first_seen: HashMap<Box<[u8]>, CanonRow> = HashMap::new();
    let mut pending: Vec<Arc<KeyBound>> = Vec::with_capacity(diffs.len());
    for d in &diffs {
        let row = match d {
            RowDiff::Missing(r) | RowDiff::Extra(r) => r,
            RowDiff::Different { source, .. } => source,
        };
        first_seen.insert(row.sort_key.clone(), row.clone());
        pending.push(diff_key(d));
    }
    if !running {
        // Nothing is applying changes: what differs now is drift.
        let mut all = diffs;
        all.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
        return Ok((all, Vec::new()));
    }
    let settle = Duration::from_secs(cfg.verify.settle_timeout_s);
    for _ in 0..cfg.verify.rounds {
        if pending.is_empty() {
            break;
        }
        let s1 = src.fetch(&pending).await?;
        let read_at = src.current_wal_lsn().await?;
        if cfg.apply.is_some() {
            // The workers of an apply pipeline report no source position: give them the time
            // a change takes through the topics, then compare.
            tokio::time::sleep(settle.min(APPLY_SETTLE)).await;
        } else if !wait_applied(source, read_at, settle).await? {
            tracing::warn!(
                %read_at,
                "the pipeline did not apply past the position rows were read at within {} s; the differing rows are reported in flight",
                settle.as_secs()
            );
            break;
        }
        let t = tgt.fetch(&pending).await?;
        let s2 = src.fetch(&pending).await?;
        let mut next = Vec::new();
        for (((key, s1), t), s2) in pending.into_iter().zip(s1).zip(t).zip(s2) {
            if same(&s2, &t) {
                continue;
            }
            if same(&s1, &s2) {
                confirmed.extend(diff_between(s2, t));
            } else {
                next.push(key);
            }
        }
        pending = next;
    }
    let in_flight = pending
        .iter()
        .filter_map(|k| first_seen.get(&k.sort_key).cloned())
        .collect();
    confirmed.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
    Ok((confirmed, in_flight))
}

/// How long a re-check of an apply pipeline's target waits before it reads the target again
/// (at most `verify.settle_timeout_s`).
const APPLY_SETTLE: Duration = Duration::from_secs(5);

/// Waits until the slot is confirmed at or past `lsn`: every sink has made durable every
/// transaction committed before it. `false` when `timeout` passes first.
async fn wait_applied(source: &PgSource, lsn: Lsn, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((_, Some(confirmed))) = source.slot_activity().await? {
            if confirmed >= lsn {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Re-sends the rows of `keys` from the source through the sink (upserts, and deletes for
/// keys the source no longer has), in one target transaction. PostgreSQL sinks only for now.
async fn repair(
    cfg: &Pipeline,
    sink: &dyn Target,
    table: &Arc<TableSchema>,
    shaped: Option<&Arc<TableTransform>>,
    src: &PgTableSide,
    keys: &[Arc<KeyBound>],
) -> Result<()> {
    let sink_name = sink.name();
    if crate::targets::postgres(sink).is_none() {
        return Err(ConnectorError::fatal(format!(
            "--repair writes through PostgreSQL sinks only; sink {sink_name} is {}",
            sink.kind()
        ))
        .with_hint("run without --repair, or with --table naming tables whose drift is on PostgreSQL sinks"));
    }
    let mut sink = crate::connect::pg_sinks(cfg)
        .await?
        .into_iter()
        .find(|s| s.name() == sink_name)
        .ok_or_else(|| ConnectorError::fatal(format!("sink {sink_name} is not in the pipeline")))?;
    // Rows go to the target as the sink's rules shape them (a row a filter leaves out is
    // deleted there).
    let target_table = shaped.map_or_else(|| table.clone(), |t| t.output().clone());
    sink.open(std::slice::from_ref(&target_table)).await?;
    let rows = src.fetch_rows(keys).await?;
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (key, row) in keys.iter().zip(rows) {
        let shaped_row = match (row, shaped) {
            (Some(row), Some(t)) => t.row(row),
            (row, _) => row,
        };
        match (shaped_row, shaped) {
            (Some(row), _) => upserts.push(row),
            (None, Some(t)) => deletes.push(t.key_row(src.key_row(key))),
            (None, None) => deletes.push(src.key_row(key)),
        }
    }
    tracing::info!(
        sink = sink_name,
        table = %table.name,
        upserts = upserts.len(),
        deletes = deletes.len(),
        "repairing from the source"
    );
    sink.repair(&target_table, upserts, deletes).await
}
