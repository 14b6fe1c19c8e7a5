//! `cutover switch` and `cutover rollback`: the steps, each recorded before it runs, timed, and
//! undone in reverse order when one fails before the point of no return.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::{ConnectorError, Lsn, Result, Sink as _, TableName};
use cutover_postgres::{PgEndpoint, PgSource, SlotStart};
use tokio_postgres::Client;

use super::gates::{self, Readiness};
use super::{fence, pgbouncer, pipeline_for, sql_error, Direction, Record, Step, StepTime, Store};
use crate::config::{FinalVerify, Pipeline};
use crate::pipeline::crash_point;
use crate::state::Journal;
use crate::verify;

/// What the command was asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Check the gates and print the plan; change nothing.
    pub dry_run: bool,
    /// Finish a switch a crash interrupted.
    pub resume: bool,
    /// Undo a switch a crash interrupted (before its point of no return).
    pub abort: bool,
}

/// The two databases of a switch and the tables between them.
struct Sides {
    /// The pipeline as it runs before the switch (its source is the old primary).
    before: Pipeline,
    /// The pipeline as it runs after (its source is the new primary).
    after: Pipeline,
    old: PgEndpoint,
    new: PgEndpoint,
    tables: Vec<TableName>,
}

impl Sides {
    async fn of(cfg: &Pipeline, rec: &Record, from: Direction) -> Result<Sides> {
        let epoch_start = if rec.direction == from {
            rec.epoch_start
        } else {
            None
        };
        let before = pipeline_for(cfg, from, epoch_start)?;
        let after = pipeline_for(cfg, from.other(), rec.next_start)?;
        let old = PgEndpoint::parse(&before.source_url, "source")?;
        let new = PgEndpoint::parse(&after.source_url, "target")?;
        let source = crate::connect::source(&before).await?;
        let tables = source
            .tables()
            .iter()
            .map(|t| t.schema.name.clone())
            .collect();
        Ok(Sides {
            before,
            after,
            old,
            new,
            tables,
        })
    }
}

/// Runs `cutover switch` (towards [`Direction::Reverse`]) or `cutover rollback` (towards
/// [`Direction::Forward`]). Prints each step; returns the readiness when it refused to start
/// (for the exit code), or an error when a step failed (after undoing what came before).
pub async fn switch(
    cfg: &Pipeline,
    towards: Direction,
    opts: Options,
) -> Result<Option<Readiness>> {
    let command = command_name(towards);
    let store = Store::open(cfg).await?.ok_or_else(|| {
        ConnectorError::fatal(format!(
            "cannot {command}: {}",
            super::primary_target(cfg).err().unwrap_or_default()
        ))
    })?;
    let mut rec = store.load().await?;
    let in_progress = rec.step != Step::Idle;
    // The direction the switch in progress (or the one asked for) starts from.
    let from = match rec.step {
        Step::Moving => rec.direction.other(),
        _ => rec.direction,
    };
    if in_progress && from.other() != towards {
        return Err(ConnectorError::fatal(format!(
            "a {} is in progress (step {}), not a {command}",
            command_name(from.other()),
            rec.step.as_str()
        ))
        .with_hint(format!(
            "finish it with `cutover {} --resume PIPELINE` or undo it with --abort",
            command_name(from.other())
        )));
    }
    if opts.abort {
        return abort(cfg, &store, &mut rec, from, towards).await;
    }
    if in_progress && !opts.resume {
        return Err(ConnectorError::fatal(format!(
            "a {command} was interrupted at step {}",
            rec.step.as_str()
        ))
        .with_hint(format!(
            "finish it with `cutover {command} --resume PIPELINE`, or undo it with `cutover {command} --abort PIPELINE`"
        )));
    }
    if !in_progress {
        if let Begun::Stop(readiness) = begin(cfg, &store, &mut rec, from, towards, opts).await? {
            return Ok(readiness);
        }
    }
    let sides = Sides::of(cfg, &rec, from).await?;
    let began = Instant::now();
    finish(cfg, &store, &mut rec, &sides, command).await?;
    let times: Vec<String> = rec
        .log
        .iter()
        .map(|s| format!("{} {} ms", s.step, s.ms))
        .collect();
    say!(
        "{command} done in {} ms ({}): the application writes to {}; `cutover run` streams {}",
        began.elapsed().as_millis(),
        times.join(", "),
        sides.new,
        towards
    );
    Ok(None)
}

/// How the start of a switch ended: the fence is on the new primary and the record says
/// so, or the command stops here (a dry run, a closed gate, nothing to resume).
enum Begun {
    Started,
    Stop(Option<Readiness>),
}

/// Starts a switch (none is in progress): checks the gates, then fences the new primary and
/// records the first step.
async fn begin(
    cfg: &Pipeline,
    store: &Store,
    rec: &mut Record,
    from: Direction,
    towards: Direction,
    opts: Options,
) -> Result<Begun> {
    let command = command_name(towards);
    if opts.resume {
        say!("no {command} is in progress; nothing to resume");
        return Ok(Begun::Stop(None));
    }
    if rec.direction == towards {
        return Err(
            ConnectorError::fatal(format!("the pipeline already streams {towards}")).with_hint(
                format!(
                    "to move the application the other way, run `cutover {}`",
                    command_name(towards.other())
                ),
            ),
        );
    }
    let readiness = gates::check(cfg, rec).await?;
    say_part!("{}", readiness.text());
    if opts.dry_run {
        let sides = Sides::of(cfg, rec, from).await?;
        say_part!("{}", plan(cfg, &sides, &readiness));
        return Ok(Begun::Stop(Some(readiness)));
    }
    if !readiness.ready {
        return Ok(Begun::Stop(Some(readiness)));
    }
    rec.log.clear();
    // The new primary refuses application writes before the record says a switch is in
    // progress, so that after a crash at any step at most one database takes them.
    let sides = Sides::of(cfg, rec, from).await?;
    fence::install(
        &sides.new.connect().await?,
        &cfg.name,
        &sides.tables,
        new_primary_lock_timeout_ms(cfg),
    )
    .await?;
    rec.step = Step::Pausing;
    store.save(rec).await?;
    Ok(Begun::Started)
}

/// `--abort`: undoes a switch in progress before its point of no return.
async fn abort(
    cfg: &Pipeline,
    store: &Store,
    rec: &mut Record,
    from: Direction,
    towards: Direction,
) -> Result<Option<Readiness>> {
    let command = command_name(towards);
    let in_progress = rec.step != Step::Idle;
    if !in_progress {
        say!("no {command} is in progress; nothing to undo");
        return Ok(None);
    }
    if !rec.step.undoable() {
        return Err(ConnectorError::fatal(format!(
            "the {command} is past its point of no return (step {}): the new primary may already have taken writes",
            rec.step.as_str()
        ))
        .with_hint(format!(
            "finish it with `cutover {command} --resume PIPELINE`; to go back afterwards, run `cutover {}`",
            command_name(towards.other())
        )));
    }
    let sides = Sides::of(cfg, rec, from).await?;
    undo(cfg, store, rec, &sides).await?;
    say!(
        "{command} undone: the application writes to {} again",
        sides.old
    );
    Ok(None)
}

/// Runs the switch's steps from where the record is; a failure before the point of no return
/// undoes the switch (the application writes to the old primary again).
async fn finish(
    cfg: &Pipeline,
    store: &Store,
    rec: &mut Record,
    sides: &Sides,
    command: &str,
) -> Result<()> {
    let Err(e) = run_steps(cfg, store, rec, sides).await else {
        return Ok(());
    };
    if !rec.step.undoable() {
        return Err(e.with_hint(format!(
            "the new primary is live; run `cutover {command} --resume PIPELINE` to finish moving traffic"
        )));
    }
    tracing::warn!(step = rec.step.as_str(), error = %e, "the {command} failed; undoing it");
    if let Err(undo_err) = undo(cfg, store, rec, sides).await {
        return Err(ConnectorError::fatal(format!(
            "the {command} failed ({e}), and undoing it failed too: {undo_err}"
        ))
        .with_hint(format!(
            "run `cutover {command} --abort PIPELINE` once the cause is fixed"
        )));
    }
    Err(ConnectorError::fatal(format!(
        "the {command} failed and was undone (the application writes to {} again): {e}",
        sides.old
    ))
    .with_hint(
        e.hint
            .clone()
            .unwrap_or_else(|| "fix the cause and run it again".into()),
    ))
}

fn command_name(towards: Direction) -> &'static str {
    match towards {
        Direction::Reverse => "switch",
        Direction::Forward => "rollback",
    }
}

/// How long fencing the new primary may wait for a table lock: its only writer is cutover's
/// own apply, and application writes do not wait on it yet (PgBouncer is paused after it), so
/// as long as the drain may take, not `fence_lock_timeout_ms`.
fn new_primary_lock_timeout_ms(cfg: &Pipeline) -> u64 {
    (cfg.cutover.drain_timeout_s * 1000).max(cfg.cutover.fence_lock_timeout_ms)
}

/// The plan `--dry-run` prints, with an estimate of each step.
fn plan(cfg: &Pipeline, sides: &Sides, readiness: &Readiness) -> String {
    let c = &cfg.cutover;
    let verify_s = readiness
        .verify_elapsed_ms
        .map_or("as long as a `cutover verify`".to_string(), |ms| {
            format!("about {:.1} s (the last check's time)", ms as f64 / 1e3)
        });
    let mut out = String::from("plan:\n");
    let mut n = 0;
    let mut step = |text: String| {
        n += 1;
        out.push_str(&format!("  {n}. {text}\n"));
    };
    step(format!(
        "fence {} tables on the new primary {} (it takes no application writes until step 8)",
        sides.tables.len(),
        sides.new
    ));
    if let Some(p) = &c.pgbouncer {
        step(format!(
            "PgBouncer PAUSE {} (new transactions wait; writes are held from here to step 9)",
            p.database
        ));
    }
    step(format!(
        "fence the old primary {}: < 0.1 s unless a transaction holds a table lock (waits at most {} ms)",
        sides.old, c.fence_lock_timeout_ms
    ));
    step(format!(
        "drain every sink to the fence's position: {} bytes behind now (waits at most {} s)",
        readiness.lag_bytes, c.drain_timeout_s
    ));
    step(match c.final_verify {
        FinalVerify::Changed => "check, on every sink, the rows whose keys the stream changed since the last clean check (a table whose changed keys are not all known: every row): well under the last full check's time".to_string(),
        FinalVerify::Full => format!("check every row of every table on every sink: {verify_s}"),
    });
    step(format!(
        "set the new primary's sequences {} steps ahead",
        c.sequence_margin
    ));
    step(format!(
        "create publication {} and slot {} on the new primary: < 0.5 s",
        sides.after.publication, sides.after.slot
    ));
    step("record the next epoch (the point of no return) and unfence the new primary".into());
    if let Some(p) = &c.pgbouncer {
        step(format!(
            "repoint PgBouncer's {} to {}, RELOAD, RESUME",
            p.database, sides.new
        ));
    }
    if let Some(cmd) = &c.switch_command {
        step(format!("run switch_command `{cmd}`"));
    }
    step(format!(
        "`cutover run` drains, drops slot {} and streams from the new primary",
        sides.before.slot
    ));
    out
}

/// Runs the steps from the recorded one to the end.
async fn run_steps(cfg: &Pipeline, store: &Store, rec: &mut Record, sides: &Sides) -> Result<()> {
    let switching = Switching {
        cfg,
        sides,
        old: sides.old.connect().await?,
        new: sides.new.connect().await?,
        bouncer: match &cfg.cutover.pgbouncer {
            Some(p) => Some(pgbouncer::Console::connect(p).await?),
            None => None,
        },
        // Read before anything is fenced, so the final check's window holds no extra
        // connection.
        firing: firing_triggers(&sides.before, &sides.tables).await,
    };
    while rec.step != Step::Idle {
        crash_point(&format!("switch_{}", rec.step.as_str()));
        // The step changes a draft of the record, which replaces the record only once saved:
        // a step that fails (or a save that does) leaves the record as it was for the undo.
        let mut draft = rec.clone();
        let step = draft.step;
        let began = Instant::now();
        let next = switching.take(step, &mut draft).await?;
        let ms = began.elapsed().as_millis() as u64;
        tracing::info!(step = step.as_str(), ms, "switch step done");
        say!("  {:<13} {ms:>6} ms", step.as_str());
        draft.log.push(StepTime {
            step: step.as_str().into(),
            ms,
        });
        draft.step = next;
        if next == Step::Idle {
            draft.next_start = None;
        }
        store.save(&draft).await?;
        *rec = draft;
    }
    // Not part of the switch's time: the old slot goes once `cutover run` lets it go.
    let wait = Duration::from_secs(30);
    if let Err(e) = drop_slot_and_publication(
        &sides.old,
        &sides.before.slot,
        &sides.before.publication,
        wait,
    )
    .await
    {
        tracing::warn!(error = %e, slot = %sides.before.slot, "cannot drop the old direction's slot yet; `cutover run` drops it when it next starts");
    }
    Ok(())
}

/// What the steps of one switch share: the pipeline, both databases' sessions, PgBouncer's
/// console, and the triggers that fire for cutover's own writes (read before the fence).
struct Switching<'a> {
    cfg: &'a Pipeline,
    sides: &'a Sides,
    old: Client,
    new: Client,
    bouncer: Option<pgbouncer::Console>,
    firing: Result<Vec<String>>,
}

impl Switching<'_> {
    /// Takes one step, changing `draft` as the step says; returns the next step.
    async fn take(&self, step: Step, draft: &mut Record) -> Result<Step> {
        let settings = &self.cfg.cutover;
        Ok(match step {
            Step::Idle => Step::Idle,
            Step::Pausing => {
                fence::install(
                    &self.new,
                    &self.cfg.name,
                    &self.sides.tables,
                    new_primary_lock_timeout_ms(self.cfg),
                )
                .await?;
                // The old primary's triggers (its gate open: nothing changes for the
                // application yet), so that fencing it, with PgBouncer paused, only closes the
                // gate and waits for the writers.
                fence::ensure_triggers(
                    &self.old,
                    &self.cfg.name,
                    &self.sides.tables,
                    settings.fence_lock_timeout_ms,
                )
                .await?;
                if let (Some(b), Some(p)) = (&self.bouncer, &settings.pgbouncer) {
                    // What moving will need, checked again before anything is held.
                    pgbouncer::check_config(&p.config_file, &p.database)?;
                    b.pause(p).await?;
                }
                Step::Fencing
            }
            Step::Fencing => {
                // Changed keys a pipeline wrote before this switch (an earlier switch, databases
                // since built again) must not pass for this fence's.
                forget_file(&Journal::path(&self.sides.before.verify.report_path))?;
                let at = fence::install(
                    &self.old,
                    &self.cfg.name,
                    &self.sides.tables,
                    settings.fence_lock_timeout_ms,
                )
                .await?;
                draft.fence_lsn = Some(at);
                Step::Draining
            }
            Step::Draining => {
                let at = draft.fence_lsn.unwrap_or(Lsn::ZERO);
                drain(
                    &self.sides.before,
                    at,
                    Duration::from_secs(settings.drain_timeout_s),
                )
                .await?;
                Step::Verifying
            }
            Step::Verifying => {
                let at = draft.fence_lsn.unwrap_or(Lsn::ZERO);
                let summary =
                    final_verify(&self.sides.before, &self.firing, at, settings.final_verify)
                        .await?;
                say!("  final check: {summary}");
                Step::Sequences
            }
            Step::Sequences => {
                sync_sequences(&self.sides.before, settings.sequence_margin).await?;
                Step::ReverseSlot
            }
            Step::ReverseSlot => {
                if let Some(p) = &settings.pgbouncer {
                    // The last look before the point of no return.
                    pgbouncer::check_config(&p.config_file, &p.database)?;
                }
                let start = create_slot(&self.sides.after).await?;
                // A check saved in an earlier epoch of the next direction says nothing of it:
                // the way back needs a check made after this switch.
                forget_file(&self.sides.after.verify.report_path)?;
                draft.next_start = Some(start);
                // The point of no return: the next epoch is recorded.
                draft.epoch += 1;
                draft.direction = draft.direction.other();
                draft.epoch_start = Some(start);
                Step::Moving
            }
            Step::Moving => {
                fence::open(&self.new, &self.cfg.name).await?;
                move_traffic(
                    self.cfg,
                    self.bouncer.as_ref(),
                    &self.sides.new,
                    draft.direction,
                )
                .await?;
                Step::Idle
            }
        })
    }
}

/// Removes a file of saved state (a check, changed keys), if there is one.
pub fn forget_file(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConnectorError::fatal(format!(
            "cannot remove {}: {e}",
            path.display()
        ))
        .with_hint("remove it by hand (it is cutover's own state), then try again")),
        _ => Ok(()),
    }
}

/// Waits until the running pipeline has confirmed `at`: every sink durable there. The slot
/// shows it within the stream's status interval; the changed keys the pipeline writes for the
/// final check show it at once.
async fn drain(before: &Pipeline, at: Lsn, timeout: Duration) -> Result<()> {
    let source = crate::connect::source(before).await?;
    let deadline = Instant::now() + timeout;
    let journal = Journal::path(&before.verify.report_path);
    let mut seen = None;
    // Since when no walsender has streamed from the slot.
    let mut unstreamed_since: Option<Instant> = None;
    loop {
        // Read again only when rewritten (it may hold many keys).
        let written = std::fs::metadata(&journal).and_then(|m| m.modified()).ok();
        if written.is_some() && written != seen {
            seen = written;
            if Journal::load(&journal).is_some_and(|j| j.confirmed >= at.0) {
                return Ok(());
            }
        }
        match source.slot_activity().await? {
            Some((_, Some(confirmed))) if confirmed >= at => return Ok(()),
            Some((true, _)) => unstreamed_since = None,
            // The running pipeline may be between an error and its retry (a deadlock of one of
            // its writes with the new primary's fence, seen in the switch benchmark): it
            // streams again within a moment. Only a slot left alone longer means no pipeline.
            _ if unstreamed_since.get_or_insert_with(Instant::now).elapsed() < RESTREAM_GRACE => {}
            _ => {
                return Err(ConnectorError::fatal(format!(
                "no `cutover run` streams from slot {} (for {} s), so nothing drains to the fence",
                before.slot,
                RESTREAM_GRACE.as_secs()
            ))
                .with_hint("start `cutover run PIPELINE`, then switch again"))
            }
        }
        if Instant::now() > deadline {
            let confirmed = source.confirmed_lsn().await?.unwrap_or(Lsn::ZERO);
            return Err(ConnectorError::fatal(format!(
                "the sinks did not reach the fence's position {at} within {} s (the slot is at {confirmed})",
                timeout.as_secs()
            ))
            .with_hint("see which sink is behind in `cutover status`; raise [cutover] drain_timeout_s for a slow one"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compares every sink with the old primary, which no longer changes since the fence at
/// `fence`: with [`FinalVerify::Changed`], the rows the stream changed since the last clean
/// check began (see [`crate::pipeline::changed`]), else every row. Anything but equal stops the
/// switch. Returns what was compared, for the operator. Every row is compared, too, when
/// `firing` (the targets' triggers that fire for cutover's writes, read before the fence) is
/// not empty or could not be read: such a trigger may write rows the stream never shows.
async fn final_verify(
    before: &Pipeline,
    firing: &Result<Vec<String>>,
    fence: Lsn,
    how: FinalVerify,
) -> Result<String> {
    let changed = match how {
        FinalVerify::Changed => match firing {
            Ok(firing) if firing.is_empty() => changed_keys(before, fence).await,
            Ok(firing) => {
                tracing::warn!(triggers = ?firing, "triggers on a target fire for replicated rows and may write rows the stream never shows: the final check compares every row");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the targets' triggers: the final check compares every row");
                None
            }
        },
        FinalVerify::Full => None,
    };
    let opts = verify::VerifyOptions {
        tables: Vec::new(),
        repair: false,
        max_keys: 5,
        changed,
    };
    let report = verify::verify(before, &opts, &|_| {}).await?;
    let keyed: Vec<_> = report.tables.iter().filter(|t| t.keys_only).collect();
    let summary =
        format!(
        "{} table(s) by the {} key(s) changed since the last clean check, {} in full ({} rows); {}",
        keyed.len(),
        keyed.iter().map(|t| t.source_rows.max(t.target_rows)).sum::<u64>(),
        report.tables.len() - keyed.len(),
        report
            .tables
            .iter()
            .filter(|t| !t.keys_only)
            .map(|t| t.source_rows)
            .sum::<u64>(),
        if report.equal() { "equal" } else { "DIFFERENT" }
    );
    tracing::info!(%summary, "the switch's final check");
    if keyed.is_empty() {
        // A check of every row proves as much as any `cutover verify`.
        if let Err(e) = crate::state::SavedCheck::record(&report, &before.verify.report_path) {
            tracing::warn!(error = %e, "cannot save the final check's result");
        }
    }
    if report.equal() {
        return Ok(summary);
    }
    let differing: Vec<String> = report
        .tables
        .iter()
        .filter(|t| t.drift() > 0 || t.in_flight_count > 0)
        .map(|t| {
            format!(
                "{}/{}: {} differing rows",
                t.sink,
                t.table,
                t.drift() + t.in_flight_count
            )
        })
        .collect();
    Err(ConnectorError::fatal(format!(
        "the final check found differences: {}",
        differing.join(", ")
    ))
    .with_hint("see `cutover verify PIPELINE` for the keys; repair with `cutover verify --repair PIPELINE`"))
}

/// The triggers of the PostgreSQL targets that fire for cutover's own writes (see
/// `PgSink::triggers_firing_on_apply`), as `sink/table: trigger`.
async fn firing_triggers(before: &Pipeline, tables: &[TableName]) -> Result<Vec<String>> {
    let mut firing = Vec::new();
    for pg in crate::connect::pg_sinks(before).await? {
        for line in pg.triggers_firing_on_apply(tables).await? {
            firing.push(format!("{}/{line}", pg.name()));
        }
    }
    Ok(firing)
}

/// The keys the running pipeline changed up to `fence`, with the position the last clean check
/// began at; None (every row is compared) when either is missing.
async fn changed_keys(before: &Pipeline, fence: Lsn) -> Option<(Arc<Journal>, Lsn)> {
    let report = &before.verify.report_path;
    let saved = match crate::state::Identity::of(before).await {
        Ok(now) => crate::state::SavedCheck::load_for(report, &now),
        Err(e) => Err(e.to_string()),
    };
    let clean_from = match saved {
        Ok(check) => check.and_then(|c| c.clean_from),
        Err(why) => {
            tracing::warn!(%why, "the final check compares every row");
            None
        }
    };
    let Some(clean_from) = clean_from else {
        tracing::info!(
            "no clean check with its start position saved: the final check compares every row"
        );
        return None;
    };
    let path = Journal::path(report);
    let deadline = Instant::now() + CHANGED_KEYS_WAIT;
    loop {
        if let Some(journal) = Journal::load(&path).filter(|j| j.through >= fence.0) {
            return Some((Arc::new(journal), Lsn(clean_from)));
        }
        if Instant::now() > deadline {
            tracing::warn!(path = %path.display(), "the running pipeline wrote no changed keys up to the fence: the final check compares every row");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long the drain waits for a walsender on the slot when none streams (the running
/// pipeline retrying after an error) before it says no pipeline runs.
const RESTREAM_GRACE: Duration = Duration::from_secs(10);

/// How long the final check waits for the running pipeline's changed keys.
const CHANGED_KEYS_WAIT: Duration = Duration::from_secs(5);

/// Sets every PostgreSQL sink's sequences `margin` steps past the source's (what
/// `cutover sync-sequences` does). Prints one line per sequence; returns how many sequences
/// the source has for the pipeline's columns, or `None` when no sink is PostgreSQL.
pub async fn sync_sequences(cfg: &Pipeline, margin: u32) -> Result<Option<usize>> {
    let targets = crate::connect::pg_sinks(cfg).await?;
    if targets.is_empty() {
        return Ok(None);
    }
    let source = crate::connect::source(cfg).await?;
    let sequences = source.sequences().await?;
    for target in &targets {
        let name = target.name();
        let client = target.endpoint().connect().await?;
        for seq in &sequences {
            let done =
                cutover_postgres::sequences::sync_sequence(&client, seq, i64::from(margin)).await?;
            let before = done
                .target_before
                .map_or("created".to_string(), |b| format!("was {b}"));
            let moved = if Some(done.target_after) == done.target_before {
                " (already ahead, left alone)"
            } else {
                ""
            };
            let defaults = if done.defaults_added.is_empty() {
                String::new()
            } else {
                format!(
                    "; default nextval added to {}",
                    done.defaults_added.join(", ")
                )
            };
            say!(
                "sink {name}: {} ({}): source at {}, target set to {} ({before}){moved}{defaults}",
                done.sequence,
                seq.reason(),
                done.source_value,
                done.target_after,
            );
        }
    }
    Ok(Some(sequences.len()))
}

/// Creates the publication and slot the pipeline streams from after the switch, on the new
/// primary; returns the slot's start. A slot of that name already there is dropped first: one
/// left by an earlier epoch would replay that whole epoch, and one this switch made before a
/// crash holds nothing that matters (the new primary takes no application write until moving),
/// so the slot always starts here.
async fn create_slot(after: &Pipeline) -> Result<Lsn> {
    let primary = PgEndpoint::parse(&after.source_url, "target")?;
    let client = primary.connect().await?;
    let stale: Option<(String, bool)> = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&after.slot],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read pg_replication_slots"))?
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1)));
    if let Some((at, active)) = stale {
        if active {
            return Err(ConnectorError::fatal(format!(
                "slot {} on the new primary is in use by another session: it cannot be the start of this switch's way",
                after.slot
            ))
            .with_hint("stop whatever streams from it (pg_stat_replication), then `cutover switch --resume` or `--abort`"));
        }
        tracing::info!(slot = %after.slot, confirmed = %at, "dropping a slot of the next direction left from before this switch");
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&after.slot])
            .await
            .map_err(|e| sql_error(e, "cannot drop the stale slot of the next direction"))?;
    }
    let source: PgSource = crate::connect::source(after).await?;
    source.ensure_publication().await?;
    match source.ensure_slot().await? {
        SlotStart::Created(session) => Ok(session.lsn),
        SlotStart::Existing => source.confirmed_lsn().await?.ok_or_else(|| {
            ConnectorError::fatal(format!(
                "slot {} vanished while the switch created it",
                after.slot
            ))
        }),
    }
}

/// Points the application at the new primary: PgBouncer, then the switch command.
async fn move_traffic(
    cfg: &Pipeline,
    bouncer: Option<&pgbouncer::Console>,
    primary: &PgEndpoint,
    direction: Direction,
) -> Result<()> {
    if let (Some(b), Some(p)) = (bouncer, &cfg.cutover.pgbouncer) {
        pgbouncer::repoint(
            &p.config_file,
            &p.database,
            &primary.host(),
            primary.port(),
            &primary.database(),
        )?;
        b.reload().await?;
        b.resume().await?;
    }
    if let Some(command) = &cfg.cutover.switch_command {
        let limit = Duration::from_secs(cfg.cutover.switch_command_timeout_s);
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .kill_on_drop(true)
            .env("CUTOVER_PIPELINE", &cfg.name)
            .env(
                "CUTOVER_DIRECTION",
                match direction {
                    Direction::Forward => "forward",
                    Direction::Reverse => "reverse",
                },
            )
            .env("CUTOVER_PRIMARY_HOST", primary.host())
            .env("CUTOVER_PRIMARY_PORT", primary.port().to_string())
            .env("CUTOVER_PRIMARY_DATABASE", primary.database())
            .spawn()
            .map_err(|e| {
                ConnectorError::fatal(format!("cannot run [cutover] switch_command: {e}"))
            })?;
        let again = "the new primary takes writes and the old one is fenced: point the application at the new primary by hand, or fix the command and run `cutover switch --resume` (it runs the command again)";
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(waited) => waited.map_err(|e| {
                ConnectorError::fatal(format!("cannot run [cutover] switch_command: {e}"))
            })?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(ConnectorError::fatal(format!(
                    "[cutover] switch_command did not finish within {} s and was killed",
                    limit.as_secs()
                ))
                .with_hint(format!(
                    "{again}; or raise [cutover] switch_command_timeout_s"
                )));
            }
        };
        if !status.success() {
            return Err(ConnectorError::fatal(format!(
                "[cutover] switch_command exited with {status}"
            ))
            .with_hint(again));
        }
    }
    Ok(())
}

/// Undoes a switch before its point of no return: PgBouncer resumed, the old primary
/// unfenced, the next direction's slot and publication dropped. The new primary stays fenced.
async fn undo(cfg: &Pipeline, store: &Store, rec: &mut Record, sides: &Sides) -> Result<()> {
    // The old primary takes writes again before PgBouncer lets the held clients through: in
    // the other order their first statements would meet the fence.
    let old: Client = sides.old.connect().await?;
    fence::open(&old, &cfg.name).await?;
    // Each later part is tried whatever the others did (a PgBouncer error must not leave the
    // slot behind), and the first failure is reported with the record left undoable.
    let mut failed: Option<ConnectorError> = None;
    if let Some(p) = &cfg.cutover.pgbouncer {
        let resumed = match pgbouncer::Console::connect(p).await {
            Ok(console) => console.resume().await,
            Err(e) => Err(e),
        };
        if let Err(e) = resumed {
            failed.get_or_insert(e);
        }
    }
    if let Err(e) = drop_slot_and_publication(
        &sides.new,
        &sides.after.slot,
        &sides.after.publication,
        Duration::from_secs(5),
    )
    .await
    {
        failed.get_or_insert(e);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    rec.step = Step::Idle;
    rec.fence_lsn = None;
    rec.next_start = None;
    rec.log.push(StepTime {
        step: "undone".into(),
        ms: 0,
    });
    store.save(rec).await
}

/// Drops `slot` (once no session streams from it, waiting at most `wait`) and `publication` on
/// the database at `endpoint`; either may be missing.
pub async fn drop_slot_and_publication(
    endpoint: &PgEndpoint,
    slot: &str,
    publication: &str,
    wait: Duration,
) -> Result<()> {
    let client = endpoint.connect().await?;
    let deadline = Instant::now() + wait;
    loop {
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| sql_error(e, "cannot read pg_replication_slots"))?
            .map(|r| r.get(0));
        match active {
            None => break,
            Some(false) => {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(|e| sql_error(e, &format!("cannot drop replication slot {slot}")))?;
                tracing::info!(slot, server = %endpoint, "replication slot of the other direction dropped");
                break;
            }
            Some(true) if Instant::now() > deadline => {
                return Err(ConnectorError::fatal(format!(
                    "replication slot {slot} on {endpoint} is still in use"
                )))
            }
            Some(true) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            cutover_core::quote_ident(publication)
        ))
        .await
        .map_err(|e| sql_error(e, "cannot drop the publication"))
}
