//! The switch of application traffic from the source to a PostgreSQL target, and back.
//!
//! A pipeline lives in *epochs*. Epoch 0 streams source → targets while the application writes
//! to the source. `cutover switch` ends an epoch: it fences the old primary, drains every sink
//! to the fence's position, verifies, moves sequences, creates the slot of the other direction
//! on the new primary, then records the next epoch, in which `cutover run` streams the new
//! primary → the old one (and every other sink), and the application writes to the new primary.
//! `cutover rollback` is the same switch in the other direction.
//!
//! The switch's progress is one row per pipeline in the primary target's `cutover.switch_state`
//! table, written before each step runs; [`Record`] is that row. A crash leaves the step in
//! progress there, from which `--resume` finishes and `--abort` undoes (until the record moves to
//! the next epoch: past that point the new primary may have taken writes, and the way back is a
//! rollback). The rule that never breaks: no moment when both databases take application
//! writes, because the old primary is fenced before the new one is unfenced
//! ([`fence`]).

pub mod fence;
pub mod gates;
pub mod pgbouncer;
pub mod steps;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{ConnectorError, Lsn, Result};
use cutover_postgres::target::PgTarget;
use cutover_postgres::PgEndpoint;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::{Pipeline, SinkSettings};
use crate::pipeline::{Command, Handle};
use crate::targets;

/// Which way the pipeline streams, and so which database the application writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Source → targets; the application writes to the source.
    Forward,
    /// Primary target → source and the other sinks; the application writes to the target.
    Reverse,
}

impl Direction {
    pub fn other(self) -> Direction {
        match self {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    fn parse(text: &str) -> Result<Direction> {
        match text {
            "forward" => Ok(Direction::Forward),
            "reverse" => Ok(Direction::Reverse),
            other => Err(ConnectorError::fatal(format!(
                "cutover.switch_state holds an unknown direction {other:?}"
            ))),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "source → target (the application writes to the source)",
            Direction::Reverse => "target → source (the application writes to the target)",
        })
    }
}

/// A step of a switch. The record holds the step about to run (or running when a crash came).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// No switch in progress.
    Idle,
    /// Fence the new primary (it must not take writes yet), then pause PgBouncer.
    Pausing,
    /// Fence the old primary; its WAL position then is where every sink must get to.
    Fencing,
    /// Wait until the running pipeline has made every sink durable at the fence's position.
    Draining,
    /// Check every table of every sink: it must be equal.
    Verifying,
    /// Set the new primary's sequences ahead of the old one's.
    Sequences,
    /// Create the publication and slot of the next direction on the new primary.
    ReverseSlot,
    /// Past this point the next epoch is recorded: unfence the new primary, move traffic.
    Moving,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Idle,
        Step::Pausing,
        Step::Fencing,
        Step::Draining,
        Step::Verifying,
        Step::Sequences,
        Step::ReverseSlot,
        Step::Moving,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::Pausing => "pausing",
            Step::Fencing => "fencing",
            Step::Draining => "draining",
            Step::Verifying => "verifying",
            Step::Sequences => "sequences",
            Step::ReverseSlot => "reverse_slot",
            Step::Moving => "moving",
        }
    }

    fn parse(text: &str) -> Result<Step> {
        Step::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "cutover.switch_state holds an unknown step {text:?}"
                ))
            })
    }

    /// Whether the step is before the record moves to the next epoch (so `--abort` can undo).
    pub fn undoable(self) -> bool {
        self < Step::Moving
    }
}

/// One step's time, kept in the record's log and printed at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTime {
    pub step: String,
    pub ms: u64,
}

/// The pipeline's switch state, as stored on the primary target.
#[derive(Debug, Clone)]
pub struct Record {
    /// 0 until the first switch; one more at every switch and rollback.
    pub epoch: i32,
    /// How the current epoch streams.
    pub direction: Direction,
    /// The switch in progress (towards `direction.other()` while before `Moving`; at `Moving`
    /// the epoch has already moved), or `Idle`.
    pub step: Step,
    /// The old primary's position after it was fenced.
    pub fence_lsn: Option<Lsn>,
    /// Where the current epoch's slot started (None in epoch 0).
    pub epoch_start: Option<Lsn>,
    /// The next epoch's slot start, once created.
    pub next_start: Option<Lsn>,
    /// The steps of the last switch, timed.
    pub log: Vec<StepTime>,
}

impl Record {
    fn initial() -> Record {
        Record {
            epoch: 0,
            direction: Direction::Forward,
            step: Step::Idle,
            fence_lsn: None,
            epoch_start: None,
            next_start: None,
            log: Vec::new(),
        }
    }
}

const STATE_TABLE: &str = "cutover.switch_state";

const CREATE_STATE: &str = "CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.switch_state (
    pipeline text PRIMARY KEY,
    epoch integer NOT NULL,
    direction text NOT NULL,
    step text NOT NULL,
    fence_lsn text,
    epoch_start text,
    next_start text,
    log jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
)";

/// The PostgreSQL target traffic moves to, or why the pipeline has none.
pub fn primary_target(cfg: &Pipeline) -> std::result::Result<&PgTarget, String> {
    match cfg.cutover.target {
        Some(i) => targets::postgres(&*cfg.sinks[i]).ok_or_else(|| "not a PostgreSQL sink".into()),
        None => Err(cfg
            .cutover
            .no_target
            .clone()
            .unwrap_or_else(|| "no PostgreSQL target".into())),
    }
}

/// Where the record is kept: the primary target, or None for a pipeline without one.
pub struct Store {
    client: Client,
    pipeline: String,
}

impl Store {
    /// Connects to the primary target; None when the pipeline has no PostgreSQL target.
    pub async fn open(cfg: &Pipeline) -> Result<Option<Store>> {
        let Ok(target) = primary_target(cfg) else {
            return Ok(None);
        };
        let client = target.endpoint()?.connect().await?;
        // Each save is durable when it returns, whatever the server's default.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(|e| sql_error(e, "cannot set synchronous_commit for the switch state"))?;
        Ok(Some(Store {
            client,
            pipeline: cfg.name.clone(),
        }))
    }

    /// Whether the target has the switch state table (no switch was ever recorded there).
    async fn has_table(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&STATE_TABLE])
            .await
            .map_err(|e| sql_error(e, "cannot read the switch state on the target"))?
            .get(0))
    }

    /// The pipeline's record (the initial one when no switch was ever made).
    pub async fn load(&self) -> Result<Record> {
        if !self.has_table().await? {
            return Ok(Record::initial());
        }
        let row = self
            .client
            .query_opt(
                "SELECT epoch, direction, step, fence_lsn, epoch_start, next_start, log::text
                 FROM cutover.switch_state WHERE pipeline = $1",
                &[&self.pipeline],
            )
            .await
            .map_err(|e| sql_error(e, "cannot read the switch state on the target"))?;
        let Some(row) = row else {
            return Ok(Record::initial());
        };
        let lsn = |i: usize| -> Option<Lsn> {
            row.get::<_, Option<String>>(i).and_then(|t| t.parse().ok())
        };
        Ok(Record {
            epoch: row.get(0),
            direction: Direction::parse(row.get(1))?,
            step: Step::parse(row.get(2))?,
            fence_lsn: lsn(3),
            epoch_start: lsn(4),
            next_start: lsn(5),
            log: serde_json::from_str(row.get(6)).unwrap_or_default(),
        })
    }

    /// Writes the record (durably: the target commits synchronously for this session).
    pub async fn save(&self, rec: &Record) -> Result<()> {
        let text = |l: Option<Lsn>| l.map(|l| l.to_string());
        let log = serde_json::to_string(&rec.log).unwrap_or_else(|_| "[]".into());
        self.client
            .batch_execute(CREATE_STATE)
            .await
            .map_err(|e| sql_error(e, "cannot create the switch state table on the target"))?;
        self.client
            .execute(
                "INSERT INTO cutover.switch_state AS s
                     (pipeline, epoch, direction, step, fence_lsn, epoch_start, next_start, log, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, now())
                 ON CONFLICT (pipeline) DO UPDATE SET epoch = EXCLUDED.epoch,
                     direction = EXCLUDED.direction, step = EXCLUDED.step,
                     fence_lsn = EXCLUDED.fence_lsn, epoch_start = EXCLUDED.epoch_start,
                     next_start = EXCLUDED.next_start, log = EXCLUDED.log, updated_at = now()",
                &[
                    &self.pipeline,
                    &rec.epoch,
                    &rec.direction.as_str(),
                    &rec.step.as_str(),
                    &text(rec.fence_lsn),
                    &text(rec.epoch_start),
                    &text(rec.next_start),
                    &log,
                ],
            )
            .await
            .map_err(|e| sql_error(e, "cannot save the switch state on the target"))?;
        // The running pipeline learns of the change at once (see `watch_epoch`).
        self.client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &self.pipeline],
            )
            .await
            .map_err(|e| sql_error(e, "cannot announce the switch state on the target"))?;
        Ok(())
    }

    /// Deletes the pipeline's record (`cutover teardown --target-state`): the next run is the
    /// first epoch again. Returns whether there was one.
    pub async fn forget(&self) -> Result<bool> {
        if !self.has_table().await? {
            return Ok(false);
        }
        let deleted = self
            .client
            .execute(
                "DELETE FROM cutover.switch_state WHERE pipeline = $1",
                &[&self.pipeline],
            )
            .await
            .map_err(|e| sql_error(e, "cannot delete the switch state on the target"))?;
        Ok(deleted > 0)
    }

    /// A session on the primary target that hears each save of any pipeline's record (the
    /// payload names the pipeline); None for a pipeline without a PostgreSQL target or when
    /// the target does not answer.
    async fn listen(
        cfg: &Pipeline,
    ) -> Option<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        let target = primary_target(cfg).ok()?;
        target.endpoint().ok()?.listen(NOTIFY_CHANNEL).await.ok()
    }
}

/// The channel on which a save of the switch record is announced, the payload naming the
/// pipeline.
const NOTIFY_CHANNEL: &str = "cutover_switch";

pub(crate) fn sql_error(e: tokio_postgres::Error, what: &str) -> ConnectorError {
    cutover_postgres::error::classify(e, what)
}

/// The pipeline as it runs in `direction`: forward, the file as written; reverse, the primary
/// target is the source and the original source takes its place among the sinks (under the
/// name `source`), with its own slot and publication (`<slot>_reverse`), its own
/// checkpoints (pipeline `<name>_reverse`) and its own saved consistency check (the report
/// file with `.reverse` appended).
pub fn pipeline_for(
    cfg: &Pipeline,
    direction: Direction,
    epoch_start: Option<Lsn>,
) -> Result<Pipeline> {
    let mut p = cfg.clone();
    p.epoch_start = epoch_start;
    if direction == Direction::Forward {
        return Ok(p);
    }
    let target = primary_target(cfg).map_err(|why| {
        ConnectorError::fatal(format!("the pipeline cannot run in reverse: {why}"))
    })?;
    let index = cfg.cutover.target.unwrap_or(0);
    let source_db = PgEndpoint::parse(&cfg.source_url, "source")?.database();
    p.name = format!("{}_reverse", cfg.name);
    p.source_url = target.url.clone();
    p.slot = reverse_name(&cfg.slot);
    p.publication = reverse_name(&cfg.publication);
    p.source_label = Some(source_db);
    p.reverse = true;
    if let Some(file) = cfg.verify.report_path.file_name() {
        let file = cutover_core::target::directed_state_key(&file.to_string_lossy(), true);
        p.verify.report_path = cfg.verify.report_path.with_file_name(file);
    }
    // The old primary first, fed as the application's database (every table, truncates,
    // no limits, no rules); the other sinks as they were.
    let old = SinkSettings {
        target: Arc::new(PgTarget {
            name: "source".into(),
            url: cfg.source_url.clone(),
            create_tables: false,
        }),
        truncate: true,
        rules: Default::default(),
        rates: Default::default(),
    };
    p.sinks = std::iter::once(old)
        .chain(
            cfg.sinks
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, s)| s.clone()),
        )
        .collect();
    p.cutover.target = Some(0);
    Ok(p)
}

/// The reverse direction's slot or publication name for a forward one.
fn reverse_name(name: &str) -> String {
    let mut n = format!("{name}_reverse");
    n.truncate(63);
    n
}

/// The pipeline as the record says it runs now.
pub fn current(cfg: &Pipeline, rec: &Record) -> Result<Pipeline> {
    pipeline_for(cfg, rec.direction, rec.epoch_start)
}

/// Reads the record, or the initial one for a pipeline without a PostgreSQL target.
pub async fn load(cfg: &Pipeline) -> Result<Record> {
    match Store::open(cfg).await? {
        Some(store) => store.load().await,
        None => Ok(Record::initial()),
    }
}

/// While `cutover run` streams epoch `epoch`: reads the record each time a save of it is
/// announced on the primary target (`LISTEN`), and in any case once a second (every 20 ms
/// while a switch is in progress). Once a switch has fenced the old primary, tells the running
/// pipeline to write the keys it changed up to the fence (the final check reads them); once the
/// switch has moved the record to the next epoch, tells it to drain to the fence's position and
/// stop (`cutover run` then starts the next direction).
pub async fn watch_epoch(cfg: Pipeline, epoch: i32, handle: Handle) {
    let mut store: Option<Store> = None;
    let mut asked_for: Option<Lsn> = None;
    let mut switching = false;
    let mut listener = None;
    let mut listen_at = tokio::time::Instant::now();
    loop {
        let pause = Duration::from_millis(if switching { 20 } else { 1000 });
        if listener.is_none() && tokio::time::Instant::now() >= listen_at {
            listener = Store::listen(&cfg).await;
            listen_at = tokio::time::Instant::now() + Duration::from_secs(1);
        }
        let mut lost = false;
        match &mut listener {
            Some((_, heard)) => tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                said = heard.recv() => match said {
                    // Another pipeline's record: nothing to read.
                    Some(name) if name != cfg.name => continue,
                    Some(_) => {}
                    None => lost = true,
                },
            },
            None => tokio::time::sleep(pause).await,
        }
        if lost {
            listener = None;
        }
        if store.is_none() {
            store = Store::open(&cfg).await.ok().flatten();
        }
        let Some(s) = &store else { continue };
        match s.load().await {
            Ok(rec) if rec.epoch != epoch => {
                let at = rec.fence_lsn.unwrap_or(Lsn::ZERO);
                tracing::info!(epoch = rec.epoch, fence = %at, "the switch moved the pipeline to its next direction: draining to the fence, then restarting");
                let _ = handle.send(Command::DrainTo(at)).await;
                return;
            }
            Ok(rec) => {
                switching = rec.step != Step::Idle;
                if let (Some(fence), true) = (rec.fence_lsn, rec.step >= Step::Draining) {
                    if asked_for != Some(fence) {
                        asked_for = Some(fence);
                        let path = changed_keys_path(&cfg, &rec);
                        let _ = handle
                            .send(Command::WriteChangedKeys {
                                through: fence,
                                path,
                            })
                            .await;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the switch state; trying again");
                store = None;
            }
        }
    }
}

/// Where `cutover run` writes the keys it changed for the final check of a switch from the
/// direction `rec` records.
pub fn changed_keys_path(cfg: &Pipeline, rec: &Record) -> std::path::PathBuf {
    let report = match pipeline_for(cfg, rec.direction, rec.epoch_start) {
        Ok(p) => p.verify.report_path,
        Err(_) => cfg.verify.report_path.clone(),
    };
    crate::state::Journal::path(&report)
}

/// At the start of an epoch with no switch in progress: drops what is left of the other
/// direction (its slot, which would hold WAL back for ever, and its publication), once no
/// session streams from it.
pub async fn drop_other_direction(cfg: &Pipeline, rec: &Record) -> Result<()> {
    if rec.step != Step::Idle || primary_target(cfg).is_err() {
        return Ok(());
    }
    let other = pipeline_for(cfg, rec.direction.other(), None)?;
    let endpoint = PgEndpoint::parse(&other.source_url, "source")?;
    steps::drop_slot_and_publication(
        &endpoint,
        &other.slot,
        &other.publication,
        Duration::from_secs(30),
    )
    .await
}
