//! What the pipeline is doing, shared between the runtime and the progress display.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_core::Lsn;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Snapshot,
    Streaming,
    Stopping,
}

#[derive(Debug, Clone, Default)]
pub struct TableProgress {
    pub name: String,
    pub rows_copied: u64,
    pub rows_estimate: u64,
    /// Bytes of the rows copied (their binary values), for progress.
    pub bytes_copied: u64,
    pub done: bool,
    /// The key ranges of a split table's copy (empty: copied in one piece).
    pub ranges: Vec<RangeProgress>,
}

/// One key range of a split table's copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeProgress {
    pub rows_copied: u64,
    pub bytes_copied: u64,
    /// Copied, in this run or (resumed) an earlier one.
    pub done: bool,
}

/// A distribution in fixed buckets (seconds), as Prometheus histograms are exposed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Per bound of [`Histogram::BOUNDS`]: observations at or below it (not cumulative).
    pub buckets: [u64; 13],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds (and +Inf beyond the last).
    pub const BOUNDS: [f64; 13] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];

    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = Self::BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// Cumulative counts per bound, as `le` buckets want them.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut total = 0;
        Self::BOUNDS.iter().zip(self.buckets).map(move |(b, n)| {
            total += n;
            (*b, total)
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct SinkProgress {
    pub name: String,
    /// End LSN of the last transaction the sink made durable.
    pub durable: Lsn,
    pub changes_applied: u64,
    /// Approximate bytes of the changed rows handed to the sink (as held in memory).
    pub bytes_applied: u64,
    /// How long each write of the sink took (seal to done).
    pub write_seconds: Histogram,
    /// From a transaction's commit on the source to its durability in the sink, per write.
    pub commit_to_durable_seconds: Histogram,
    /// Change events queued for the sink.
    pub queue_depth: usize,
    /// Bytes queued for or buffered in the sink.
    pub queue_bytes: usize,
    /// Total time the source reader waited because this sink's queue was full: the sink is
    /// the pipeline's bottleneck while this grows.
    pub stalled_ms: u64,
    /// Total time this sink's rate limits held changes back.
    pub throttled_ms: u64,
    /// Changes the target rejected for good and this run parked as dead letters.
    pub parked: u64,
    /// Commit time (µs since the Unix epoch) of the last durable transaction.
    pub last_commit_micros: Option<i64>,
    /// Paused by an operator: the sink takes nothing from its queue until resumed.
    pub paused: bool,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub tables: Vec<TableProgress>,
    pub sinks: Vec<SinkProgress>,
    /// The source's WAL write position at the last sample.
    pub source_wal: Lsn,
    /// The slot position confirmed to the source.
    pub confirmed: Lsn,
    /// The last periodic check: when it ended, rows of confirmed drift, rows in flight.
    pub last_verify: Option<VerifySummary>,
    /// Paused by an operator: the source is not read until resumed.
    pub reader_paused: bool,
    /// When the stream last sampled the source (once a second while streaming).
    pub sampled_at: Option<SystemTime>,
    /// Retries of an interrupted run, by cause (a SQLSTATE, `connection` or `other`).
    pub retries: std::collections::BTreeMap<String, u64>,
}

/// The outcome of the last periodic consistency check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub at: SystemTime,
    pub drift_rows: u64,
    pub in_flight_rows: u64,
    /// When a check last found every table equal.
    pub last_clean: Option<SystemTime>,
}

impl Status {
    pub fn new() -> Self {
        Status {
            phase: Phase::Starting,
            tables: Vec::new(),
            sinks: Vec::new(),
            source_wal: Lsn::ZERO,
            confirmed: Lsn::ZERO,
            last_verify: None,
            reader_paused: false,
            sampled_at: None,
            retries: std::collections::BTreeMap::new(),
        }
    }

    /// WAL bytes the slowest sink is behind the source.
    pub fn lag_bytes(&self) -> u64 {
        self.source_wal.0.saturating_sub(self.confirmed.0)
    }

    /// Age of the newest change the slowest sink holds, while it is behind.
    pub fn lag_time(&self) -> Option<Duration> {
        if self.lag_bytes() == 0 {
            return Some(Duration::ZERO);
        }
        let oldest = self
            .sinks
            .iter()
            .map(|s| s.last_commit_micros)
            .min()
            .flatten()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_micros() as i64;
        Some(Duration::from_micros(
            now.saturating_sub(oldest).max(0) as u64
        ))
    }

    /// The tables being copied, with their rows so far (and a percentage of the estimate).
    fn copying(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter(|t| !t.done && t.rows_copied > 0)
            .map(|t| {
                let pct = (t.rows_copied * 100)
                    .checked_div(t.rows_estimate)
                    .map(|p| format!(" {}%", p.min(99)))
                    .unwrap_or_default();
                let ranges = ranges_done(t)
                    .map(|(done, all)| format!(" (ranges {done}/{all})"))
                    .unwrap_or_default();
                format!("{} {} rows{pct}{ranges}", t.name, t.rows_copied)
            })
            .collect()
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        match self.phase {
            Phase::Starting => "starting: checking source and targets".to_string(),
            Phase::Snapshot => {
                let done = self.tables.iter().filter(|t| t.done).count();
                let rows: u64 = self.tables.iter().map(|t| t.rows_copied).sum();
                let active = self.copying();
                format!(
                    "snapshot: {done}/{} tables, {rows} rows copied{}{}",
                    self.tables.len(),
                    if active.is_empty() { "" } else { "; copying " },
                    active.join(", ")
                )
            }
            Phase::Streaming | Phase::Stopping => {
                let sinks: Vec<String> = self
                    .sinks
                    .iter()
                    .map(|s| {
                        let mut text = format!(
                            "{}: {} changes, queue {} events ({} KiB), {} bytes behind",
                            s.name,
                            s.changes_applied,
                            s.queue_depth,
                            s.queue_bytes / 1024,
                            // Everything up to the confirmed position is in every sink.
                            self.source_wal
                                .0
                                .saturating_sub(s.durable.max(self.confirmed).0)
                        );
                        if s.stalled_ms > 0 {
                            text.push_str(&format!(
                                ", reader stalled {:.1} s",
                                s.stalled_ms as f64 / 1e3
                            ));
                        }
                        if s.paused {
                            text.push_str(", PAUSED");
                        }
                        if s.parked > 0 {
                            text.push_str(&format!(", {} PARKED (cutover dlq list)", s.parked));
                        }
                        if s.throttled_ms > 0 {
                            text.push_str(&format!(
                                ", throttled {:.1} s",
                                s.throttled_ms as f64 / 1e3
                            ));
                        }
                        text
                    })
                    .collect();
                let lag = match self.lag_time() {
                    Some(t) => format!("{} bytes ({:.1} s)", self.lag_bytes(), t.as_secs_f64()),
                    None => format!("{} bytes", self.lag_bytes()),
                };
                let verified = match &self.last_verify {
                    None => String::new(),
                    Some(v) if v.drift_rows > 0 => {
                        format!("; verify: DRIFT {} rows", v.drift_rows)
                    }
                    Some(v) if v.in_flight_rows > 0 => {
                        format!("; verify: {} rows in flight", v.in_flight_rows)
                    }
                    Some(v) => format!(
                        "; verify: equal ({} s ago)",
                        v.at.elapsed().map_or(0, |d| d.as_secs())
                    ),
                };
                // A table joining while streaming: the slot waits at its copy's start.
                let joining = self.copying();
                let joining = if joining.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; copying new table {} (slot held until every sink has it)",
                        joining.join(", ")
                    )
                };
                format!(
                    "{}: lag {lag}; source WAL {}, confirmed {}; {}{verified}{joining}",
                    match (self.phase, self.reader_paused) {
                        (Phase::Stopping, _) => "stopping",
                        (_, true) => "streaming (reader PAUSED)",
                        _ => "streaming",
                    },
                    self.source_wal,
                    self.confirmed,
                    sinks.join("; ")
                )
            }
        }
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress bars for the tables being copied, with each one's rate and ETA (rates measured
/// between two draws).
#[derive(Default)]
pub struct Bars {
    /// Per table: rows copied at the last draw, and when.
    previous: std::collections::HashMap<String, (u64, std::time::Instant)>,
    /// Per table: rows per second, smoothed.
    rates: std::collections::HashMap<String, f64>,
}

/// A split table's ranges copied and in all; `None` for a table copied in one piece.
fn ranges_done(t: &TableProgress) -> Option<(usize, usize)> {
    (!t.ranges.is_empty()).then(|| (t.ranges.iter().filter(|r| r.done).count(), t.ranges.len()))
}

/// Width of a bar, in characters.
const BAR: usize = 24;

impl Bars {
    /// One line per table still copying, then the status line; rates taken as of `now`.
    pub fn lines(&mut self, status: &Status, now: std::time::Instant) -> Vec<String> {
        let copying: Vec<&TableProgress> = status.tables.iter().filter(|t| !t.done).collect();
        let width = copying.iter().map(|t| t.name.len()).max().unwrap_or(0);
        let mut lines = Vec::new();
        for t in copying {
            if let Some((rows, at)) = self.previous.get(&t.name) {
                let dt = now.duration_since(*at).as_secs_f64();
                if dt > 0.0 {
                    let rate = t.rows_copied.saturating_sub(*rows) as f64 / dt;
                    let smoothed = match self.rates.get(&t.name) {
                        Some(r) => 0.7 * r + 0.3 * rate,
                        None => rate,
                    };
                    self.rates.insert(t.name.clone(), smoothed);
                }
            }
            self.previous.insert(t.name.clone(), (t.rows_copied, now));
            let share = if t.rows_estimate > 0 {
                (t.rows_copied as f64 / t.rows_estimate as f64).min(0.99)
            } else {
                0.0
            };
            let filled = (share * BAR as f64).round() as usize;
            let rate = self.rates.get(&t.name).copied().unwrap_or(0.0);
            let left = t.rows_estimate.saturating_sub(t.rows_copied) as f64;
            let eta = if rate > 0.0 && left > 0.0 {
                format_duration(Duration::from_secs_f64(left / rate))
            } else {
                "?".to_string()
            };
            lines.push(format!(
                "{:<width$} [{}{}] {:>3}% {} rows, {:.0} rows/s, ETA {eta}{}",
                t.name,
                "#".repeat(filled),
                "-".repeat(BAR - filled),
                (share * 100.0) as u32,
                t.rows_copied,
                rate,
                ranges_done(t)
                    .map(|(done, all)| format!(", ranges {done}/{all}"))
                    .unwrap_or_default(),
            ));
        }
        lines.push(status.line());
        lines
    }
}

/// `1 h 2 min`, `3 min 4 s`, `5 s`.
fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// Prints progress: on a terminal, a bar per table being copied (rate, ETA) above a status line,
/// redrawn every second; otherwise a log line every 10 s.
pub async fn report(status: watch::Receiver<Status>, terminal: bool) {
    let period = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut bars = Bars::default();
    let mut drawn = 0usize;
    loop {
        tick.tick().await;
        let s = status.borrow().clone();
        if terminal {
            let lines = bars.lines(&s, std::time::Instant::now());
            // Back to the first line drawn last time, clear down, draw again.
            let up = if drawn > 1 {
                format!("\x1b[{}A", drawn - 1)
            } else {
                String::new()
            };
            eprint!("{up}\r\x1b[J{}", lines.join("\n"));
            drawn = lines.len();
        } else {
            tracing::info!(
                phase = ?s.phase,
                lag_bytes = s.lag_bytes(),
                source_wal = %s.source_wal,
                confirmed = %s.confirmed,
                "{}",
                s.line()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_once_and_cumulates_by_bound() {
        let mut h = Histogram::default();
        for s in [0.001, 0.02, 0.02, 3.0, 120.0] {
            h.observe(s);
        }
        assert_eq!(h.count, 5);
        assert!((h.sum - 123.041).abs() < 1e-9);
        let cumulative: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(cumulative[0], (0.005, 1));
        assert_eq!(cumulative[2], (0.025, 3));
        assert_eq!(cumulative[9], (5.0, 4));
        assert_eq!(cumulative.last(), Some(&(60.0, 4)), "120 s is only in +Inf");
    }

    #[test]
    fn a_copying_table_gets_a_bar_with_its_rate_and_eta() {
        let mut status = Status::new();
        status.phase = Phase::Snapshot;
        status.tables = vec![
            TableProgress {
                name: "public.orders".into(),
                rows_copied: 100_000,
                rows_estimate: 1_000_000,
                done: false,
                ..TableProgress::default()
            },
            TableProgress {
                name: "public.done".into(),
                rows_copied: 10,
                rows_estimate: 10,
                done: true,
                ..TableProgress::default()
            },
        ];
        let mut bars = Bars::default();
        let t0 = std::time::Instant::now();
        let first = bars.lines(&status, t0);
        assert_eq!(
            first.len(),
            2,
            "one bar (the finished table has none), then the line"
        );
        assert!(first[0].contains("ETA ?"), "no rate yet: {}", first[0]);
        status.tables[0].rows_copied = 300_000;
        let second = bars.lines(&status, t0 + Duration::from_secs(2));
        let bar = &second[0];
        assert!(bar.starts_with("public.orders ["), "{bar}");
        assert!(
            bar.contains(" 30% 300000 rows, 100000 rows/s, ETA 7 s"),
            "{bar}"
        );
        assert_eq!(bar.matches('#').count(), 7, "30% of 24: {bar}");
        assert!(
            second[1].starts_with("snapshot: 1/2 tables"),
            "{}",
            second[1]
        );
        // A split table shows its ranges, in the bar and in the line.
        status.tables[0].ranges = vec![
            RangeProgress {
                done: true,
                ..RangeProgress::default()
            },
            RangeProgress::default(),
            RangeProgress::default(),
        ];
        let third = bars.lines(&status, t0 + Duration::from_secs(3));
        assert!(third[0].ends_with(", ranges 1/3"), "{}", third[0]);
        assert!(
            third[1].contains("public.orders 300000 rows 30% (ranges 1/3)"),
            "{}",
            third[1]
        );
    }

    #[test]
    fn a_table_joining_while_streaming_shows_its_progress() {
        let mut status = Status::new();
        status.phase = Phase::Streaming;
        status.tables = vec![
            TableProgress {
                name: "public.orders".into(),
                rows_copied: 10,
                rows_estimate: 10,
                done: true,
                ..TableProgress::default()
            },
            TableProgress {
                name: "public.big".into(),
                rows_copied: 500,
                rows_estimate: 1000,
                done: false,
                ..TableProgress::default()
            },
        ];
        let line = status.line();
        assert!(
            line.contains("copying new table public.big 500 rows 50%")
                && !line.contains("public.orders"),
            "{line}"
        );
        status.tables[1].done = true;
        assert!(!status.line().contains("copying"), "{}", status.line());
    }
}
