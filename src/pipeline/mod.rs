//! The pipeline engine, as named stages with one job each:
//!
//! ```text
//! wiring ─► snapshot ─► partitions ─► reader ──► per-sink bounded queue ──► driver ──► sink
//!                                       ▲  (control: operator commands, backfill)      │
//!                                       └──── progress: confirm(min durable end LSN) ◄─┘
//!                           telemetry: the one writer of the live status
//! ```
//! [`run`] is the whole life of `cutover run`: it retries a run interrupted by a retryable
//! error from the last durable position. [`run_once`] is the assembly of one run. The route of
//! one change and where each rule is enforced: `docs/architecture.md`.

pub mod backfill;
pub mod changed;
pub mod control;
pub mod discovery;
pub mod driver;
pub mod partitions;
pub mod progress;
pub mod reader;
pub mod settling;
pub mod snapshot;
pub mod telemetry;
pub mod wiring;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{Checkpoint, Lsn, Result, Sink, SinkState, Source, StreamEvent};
use cutover_postgres::SlotStart;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use control::{Command, Handle, Operator};
pub use telemetry::Telemetry;
pub use wiring::refuse_failures;

use crate::config::{Pipeline, RateLimits};
use crate::queue;
use crate::rate;
use crate::status::{Phase, SinkProgress};
use driver::{DriverLimits, DriverLinks, SinkDriver};
use progress::Progress;
use reader::{Catalog, Drivers, Reader, SinkLane};

/// How long a starting run waits for an earlier session to release the slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Runs the pipeline until `stop` turns true or an operator's `DrainTo` is reached (then
/// drains, confirms and returns `Ok`), or a fatal error. Retryable errors after the pipeline has
/// started are retried with backoff from the last durable position; errors before it started
/// (a wrong password, an unreachable server) are returned at once.
pub async fn run(
    cfg: &Pipeline,
    telemetry: &Telemetry,
    mut stop: watch::Receiver<bool>,
    operator: &mut Operator,
) -> Result<()> {
    let mut started = false;
    let mut backoff = Duration::from_millis(500);
    let mut retries = 0u32;
    loop {
        let began = Instant::now();
        match run_once(cfg, telemetry, &mut stop, operator, &mut started).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && started && !*stop.borrow() => {
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                    retries = 0;
                }
                retries += 1;
                if cfg.max_retries > 0 && retries > cfg.max_retries {
                    return Err(gave_up(e, cfg.max_retries));
                }
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                let wait = backoff + Duration::from_millis(jitter);
                tracing::warn!(error = %e, retry = retries, retry_in_ms = wait.as_millis() as u64, "pipeline interrupted; resuming from the last durable position");
                telemetry.retried(&retry_cause(&e));
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

/// What interrupted a run, as a metric label: the SQLSTATE a server gave (`sqlstate_57P01`),
/// `connection` for a connection lost or refused without one, `other` otherwise. Bounded: a
/// few dozen values at most.
fn retry_cause(e: &cutover_core::ConnectorError) -> String {
    let text = e.to_string();
    if let Some(at) = text.find("SQLSTATE ") {
        let code: String = text[at + 9..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .take(5)
            .collect();
        if code.len() == 5 {
            return format!("sqlstate_{code}");
        }
    }
    let lower = text.to_ascii_lowercase();
    if [
        "connection",
        "refused",
        "reset",
        "closed",
        "broken pipe",
        "timed out",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        "connection".into()
    } else {
        "other".into()
    }
}

#[cfg(test)]
mod cause_tests {
    use cutover_core::ConnectorError;

    #[test]
    fn a_retry_is_labelled_by_sqlstate_or_connection() {
        let cause = |m: &str| super::retry_cause(&ConnectorError::retryable(m));
        assert_eq!(
            cause("the replication stream failed: terminating connection due to administrator command (SQLSTATE 57P01)."),
            "sqlstate_57P01"
        );
        assert_eq!(
            cause("cannot connect to the target: Connection refused"),
            "connection"
        );
        assert_eq!(cause("a sink task failed: panic"), "other");
    }
}

/// The error a run stops with when its retries are spent: the last error, and how many.
fn gave_up(last: cutover_core::ConnectorError, retries: u32) -> cutover_core::ConnectorError {
    let mut e = cutover_core::ConnectorError::fatal(format!(
        "gave up after {retries} retries in a row; the last error: {}",
        last.message
    ))
    .with_hint(last.hint.clone().unwrap_or_else(|| {
        "fix the cause, then run again (nothing is lost: it resumes from the last durable position); limits.max_retries sets how many retries are made".into()
    }));
    e.source = Some(Box::new(last));
    e
}

/// One run: connect, open the sinks, copy what some sink lacks, merge attached partitions,
/// then stream.
async fn run_once(
    cfg: &Pipeline,
    telemetry: &Telemetry,
    stop: &mut watch::Receiver<bool>,
    operator: &mut Operator,
    started: &mut bool,
) -> Result<()> {
    telemetry.phase(Phase::Starting);
    let source = crate::connect::source(cfg).await?;
    // After a crash the old walsender holds the slot until it notices; give it time to go.
    source.wait_slot_free(SLOT_RELEASE_WAIT).await?;
    refuse_failures(&source.preflight().await?)?;
    let schemas = source.schemas();
    let mut sinks = crate::connect::sinks(cfg, &source.endpoint().database()).await?;
    let slot = if source.slot_exists().await? {
        Some(source.confirmed_lsn().await?)
    } else {
        None
    };
    let mut states = wiring::open_sinks(cfg, &mut sinks, &schemas, slot).await?;
    source.ensure_publication().await?;
    let slot = source.ensure_slot().await?;
    *started = true;

    let needs = snapshot::plan(&source, &states);
    if needs.is_empty() {
        drop(slot);
    } else {
        let session = match slot {
            SlotStart::Created(session) => session,
            SlotStart::Existing => source.export_snapshot().await?,
        };
        tracing::info!(tables = needs.len(), snapshot_lsn = %session.lsn, "copying tables");
        let copy = snapshot::copy_tables(&source, &sinks, &needs, &session, cfg, telemetry);
        let copied_at = tokio::select! {
            r = copy => r?,
            _ = stop.changed() => {
                tracing::info!("stopped during the snapshot; unfinished copies (tables, key ranges) were rolled back and restart on the next run");
                return Ok(());
            }
        };
        for copied in copied_at {
            let state = &mut states[copied.sink];
            if let Some(latest) = copied.settling {
                state.settling.insert(copied.table.clone(), latest);
            }
            state.copied_tables.insert(copied.table, copied.at);
        }
        // The tests crash here: the copies are recorded, the stream has not begun.
        crash_point("copies-recorded");
    }
    for root in partitions::merge_partitions(&source, &mut sinks, &states, cfg).await? {
        // Rows that reached the sinks other than as changes.
        operator.changed.mark_full(&root);
    }

    let start = stream_start(&states);
    for (table, _) in &needs {
        // Copied before the stream starts: a check begun after that start covers its rows.
        operator.changed.copied(&table.schema.name, start);
    }
    let stream = source.stream(start).await?;
    tracing::info!(%start, slot = %cfg.slot, "streaming changes");
    let discover_every = Duration::from_secs(cfg.discover_interval_s);
    let catalog = Catalog {
        source: &source,
        joiner: backfill::Joiner::new(&source, cfg),
        discover_every,
        // The first look comes one interval after streaming starts.
        next_discovery: Instant::now() + discover_every.max(Duration::from_secs(1)),
    };
    let settings = Settings::of(cfg);
    operator.changed.begin(start);
    let reader = start_stream(
        &settings,
        Box::new(stream),
        sinks.into_iter().zip(states).collect(),
        start,
        telemetry,
        Some(catalog),
        operator,
    );
    reader.run(stop).await.map(|_| ())
}

/// What the stream stages take from the pipeline file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue_events: usize,
    pub queue_bytes: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub linger: Duration,
    /// Least time between heartbeats to the sinks while the source is idle.
    pub heartbeat: Duration,
    /// How long a sink's write may run before it is abandoned and retried.
    pub write_timeout: Option<Duration>,
    /// Per sink, in the file's order: whether TRUNCATE reaches it, and its rate limits.
    pub sinks: Vec<(bool, RateLimits)>,
}

impl Settings {
    pub fn of(cfg: &Pipeline) -> Self {
        Settings {
            queue_events: cfg.queue_events,
            queue_bytes: cfg.queue_bytes,
            batch_bytes: cfg.batch_bytes,
            flush_interval: Duration::from_millis(cfg.flush_interval_ms),
            linger: Duration::from_millis(cfg.linger_ms),
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            write_timeout: (cfg.write_timeout_s > 0)
                .then(|| Duration::from_secs(cfg.write_timeout_s)),
            sinks: cfg.sinks.iter().map(|s| (s.truncate, s.rates)).collect(),
        }
    }
}

/// Starts a driver (and, with rate limits, a pacer) per sink, and returns the reader that feeds
/// them from `stream`, which starts at `start`.
pub fn start_stream<'a>(
    settings: &Settings,
    stream: Box<dyn Source + 'a>,
    sinks: Vec<(Box<dyn Sink>, SinkState)>,
    start: Lsn,
    telemetry: &Telemetry,
    catalog: Option<Catalog<'a>>,
    operator: &'a mut Operator,
) -> Reader<'a> {
    let durable: Vec<Lsn> = sinks
        .iter()
        .map(|(_, st)| st.checkpoint.map_or(start, |c| c.end_lsn.max(start)))
        .collect();
    telemetry.streaming(
        start,
        sinks
            .iter()
            .map(|(k, st)| SinkProgress {
                name: k.name().to_string(),
                durable: st.checkpoint.map_or(start, |c| c.end_lsn),
                paused: operator.paused_sinks.contains(k.name()),
                ..SinkProgress::default()
            })
            .collect(),
    );
    let settling = settling::Settling::of(sinks.iter().map(|(_, st)| st), start);
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let mut pacers = JoinSet::new();
    let mut lanes = Vec::with_capacity(sinks.len());
    for (index, (sink, state)) in sinks.into_iter().enumerate() {
        let (tx, mut rx) = queue::bounded(settings.queue_events, settings.queue_bytes);
        let throttled = Arc::new(AtomicU64::new(0));
        let (truncate, limits) = settings.sinks.get(index).copied().unwrap_or_default();
        let name = sink.name().to_string();
        let limits = operator.rates.get(&name).copied().unwrap_or(limits);
        // A pacer between the queue and the driver, also for a sink without limits (an
        // operator may set some while it runs): the driver never waits on a limit with a write
        // in flight, and the byte permits travel on with the batches.
        let (rate_tx, rate_rx) = watch::channel(limits);
        let (paced_tx, paced_rx) = mpsc::channel(1);
        pacers.spawn(rate::pace(rx, paced_tx, rate_rx, throttled.clone()));
        rx = paced_rx;
        let (pause, paused) = watch::channel(operator.paused_sinks.contains(&name));
        let driver = SinkDriver::new(
            index,
            sink,
            rx,
            state,
            DriverLimits {
                truncate,
                hold_bytes: settings.queue_bytes.max(64 << 20),
                batch_bytes: settings.batch_bytes,
                flush_interval: settings.flush_interval,
                linger: settings.linger,
                write_timeout: settings.write_timeout,
            },
            DriverLinks {
                events: events_tx.clone(),
                telemetry: telemetry.clone(),
                paused,
            },
        );
        tasks.spawn(driver.run());
        lanes.push(SinkLane::new(name, tx, pause, rate_tx, throttled));
    }
    telemetry.reader_paused(operator.reader_paused);
    Reader {
        stream,
        lanes,
        drivers: Drivers {
            tasks,
            events,
            pacers,
        },
        progress: Progress::new(start, durable),
        telemetry: telemetry.clone(),
        catalog,
        operator,
        ticks: 0,
        heartbeat_every: settings.heartbeat,
        next_heartbeat: Instant::now(),
        settling,
    }
}

/// Where streaming starts: the lowest position any sink needs.
fn stream_start(states: &[SinkState]) -> Lsn {
    states
        .iter()
        .map(|s| wiring::sink_position(s).unwrap_or(Lsn::ZERO))
        .min()
        .unwrap_or(Lsn::ZERO)
}

/// `changes` wrapped in one transaction stamped with `at`, a position the sink already has:
/// the sink applies them without its checkpoint moving (rows of a merged partition, changes
/// held during a table's copy, or none, to step a checkpoint back).
pub(crate) fn transaction_at(at: Checkpoint, changes: Vec<StreamEvent>) -> Vec<StreamEvent> {
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

/// Ends the process at once, as a crash would, when `CUTOVER_CRASH_AT` names this point: the
/// tests use it to crash between two steps no signal can be timed to fall between. Compiled in
/// only with the `crash-points` feature (the tests' builds); release builds never end here.
#[cfg(feature = "crash-points")]
pub(crate) fn crash_point(point: &str) {
    if std::env::var("CUTOVER_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "CUTOVER_CRASH_AT: ending the process here");
        // No drain, no destructors: the servers see the connections drop, as after SIGKILL.
        std::process::exit(70);
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn crash_point(_point: &str) {}

#[cfg(test)]
mod start_tests {
    use super::*;
    use cutover_core::TableName;

    #[test]
    fn stream_starts_at_the_lowest_position_any_sink_needs() {
        let copied = |lsn| SinkState {
            checkpoint: None,
            copied_tables: [(TableName::new("public", "a"), Lsn(lsn))].into(),
            ..SinkState::default()
        };
        let applied = |end| SinkState {
            checkpoint: Some(Checkpoint {
                commit_lsn: Lsn(end - 1),
                end_lsn: Lsn(end),
            }),
            copied_tables: [(TableName::new("public", "a"), Lsn(10))].into(),
            ..SinkState::default()
        };
        assert_eq!(stream_start(&[applied(50), applied(40)]), Lsn(40));
        assert_eq!(stream_start(&[applied(50), copied(20)]), Lsn(20));
        assert_eq!(stream_start(&[copied(30)]), Lsn(30));
    }
}

#[cfg(test)]
mod tests;
