//! How the pipeline's sinks open for a run: their saved progress checked against the slot and
//! the switch record, and the preflight findings that stop a run. The connections themselves
//! are made by [`crate::connect`].

use cutover_core::{ConnectorError, Lsn, Result, Sink};

use crate::config::Pipeline;

/// Turns failed preflight findings into one fatal error listing every failure and its fix.
pub fn refuse_failures(findings: &[cutover_postgres::preflight::Finding]) -> Result<()> {
    for f in findings.iter().filter(|f| f.ok && f.fix.is_some()) {
        tracing::warn!(
            check = f.check,
            fix = f.fix.as_deref().unwrap_or("-"),
            "{}",
            f.detail
        );
    }
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

/// Where a sink's saved progress says it is in the source's WAL: its checkpoint, or with none
/// yet the earliest copy of a table it holds; `None` for a sink that holds nothing.
pub fn sink_position(state: &cutover_core::SinkState) -> Option<Lsn> {
    match state.checkpoint {
        Some(cp) => Some(cp.end_lsn),
        // Lsn::ZERO marks a table the sink does not take (excluded by its rules).
        None => state
            .copied_tables
            .values()
            .copied()
            .filter(|&l| l != Lsn::ZERO)
            .min(),
    }
}

/// Opens every sink and reads back what each holds. `slot` is the replication slot's confirmed
/// position (`None`: the slot does not exist; `Some(None)`: it has confirmed nothing yet).
///
/// Refused, because changes may be missing from the sink and the slot cannot give them again:
/// a sink that holds progress while the slot is gone, and a sink whose saved position is
/// behind the slot's (the slot is only ever confirmed to what every sink recorded, heartbeats
/// included, so a sink behind it was restored from a backup, had its state replaced, or the
/// slot was dropped and created again). A sink ahead of the slot replays what it has.
pub async fn open_sinks(
    cfg: &Pipeline,
    sinks: &mut [Box<dyn Sink>],
    schemas: &[std::sync::Arc<cutover_core::TableSchema>],
    slot: Option<Option<Lsn>>,
) -> Result<Vec<cutover_core::SinkState>> {
    let mut states = Vec::with_capacity(sinks.len());
    for sink in sinks.iter_mut() {
        let state = sink.open(schemas).await?;
        if slot.is_none() && (state.checkpoint.is_some() || !state.copied_tables.is_empty()) {
            return Err(ConnectorError::fatal(format!(
                "replication slot {} does not exist on the source, but sink {} holds progress from an earlier run: \
                 changes made since that run may be missing from it, and cutover will not guess.",
                cfg.slot,
                sink.name()
            ))
            .with_hint(
                "run `cutover recover PIPELINE` (it marks every table to be copied again into the targets, replacing \
                 the rows on PostgreSQL targets), then run again",
            ));
        }
        let state = after_switch(cfg, state, schemas);
        if let (Some(Some(confirmed)), Some(at)) = (slot, sink_position(&state)) {
            // From an earlier direction of a switch, a checkpoint is older than this
            // direction's start; the switch's final check vouched for the sink there.
            let at = cfg.epoch_start.map_or(at, |start| at.max(start));
            if at < confirmed {
                return Err(behind_the_slot(cfg, sink.name(), at, confirmed));
            }
        }
        states.push(state);
    }
    Ok(states)
}

fn behind_the_slot(cfg: &Pipeline, sink: &str, at: Lsn, confirmed: Lsn) -> ConnectorError {
    ConnectorError::fatal(format!(
        "sink {sink} saved progress up to {at}, but replication slot {} was confirmed up to {confirmed}: \
         the changes between the two were released by the source and cannot be streamed to it again, \
         so it would miss them without a word (was the target restored from a backup, the sink's state \
         replaced by an older copy, or the slot dropped and created again?). Nothing was written.",
        cfg.slot
    ))
    .with_hint(format!(
        "copy this sink's tables again: empty them on the target (or use a fresh topic, stream or collection), \
         run `cutover forget --sink {sink} PIPELINE`, then run again; the other sinks stream on"
    ))
}

/// After a switch of direction every sink holds everything up to the new slot's start
/// (`epoch_start`): a table it has no copy record of under this direction counts as copied
/// there, and with no checkpoint yet it is at that start. The first transaction it applies
/// saves its own checkpoint; copy records are never written for these tables, so this is
/// applied at every start of the epoch.
fn after_switch(
    cfg: &Pipeline,
    mut state: cutover_core::SinkState,
    schemas: &[std::sync::Arc<cutover_core::TableSchema>],
) -> cutover_core::SinkState {
    let Some(start) = cfg.epoch_start else {
        return state;
    };
    for t in schemas {
        state.copied_tables.entry(t.name.clone()).or_insert(start);
    }
    if state.checkpoint.is_none() {
        state.checkpoint = Some(cutover_core::Checkpoint {
            commit_lsn: start,
            end_lsn: start,
        });
    }
    state
}
