//! `cutover dlq`: the changes a target rejected for good.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use cutover::lock::{self, Hold};
use cutover::say;
use cutover_core::Sink as _;

use super::{load, load_current, Failure, Outcome};

/// What `cutover dlq` does.
#[derive(Subcommand)]
pub enum DlqAction {
    /// List every parked change: sink, table, key, operation, position, reason, attempts.
    List { pipeline: PathBuf },
    /// Apply the parked changes again, oldest first (after fixing the cause on the target).
    /// Those that apply are removed; one that still fails stays, with its new reason, and
    /// holds back the later changes of its key. Safe while `cutover run` is running.
    Replay { pipeline: PathBuf },
}

/// Lists or replays every sink's parked changes; exit code 1 while any stays parked.
pub(super) async fn run(action: DlqAction) -> Outcome {
    let (path, replay) = match &action {
        DlqAction::List { pipeline } => (pipeline, false),
        DlqAction::Replay { pipeline } => (pipeline, true),
    };
    let file = load(path)?;
    if let Some(apply) = &file.apply {
        return super::apply::letters(path, apply, replay).await;
    }
    let _lock = if replay {
        Some(lock::take(&file, &[Hold::Change], "dlq replay").await?)
    } else {
        None
    };
    let cfg = load_current(path).await?;
    let mut parked_total = 0u64;
    let schemas = if replay {
        let source = cutover::connect::source(&cfg).await?;
        source.schemas()
    } else {
        Vec::new()
    };
    for mut sink in cutover::connect::pg_sinks(&cfg).await? {
        let name = sink.name().to_string();
        if replay {
            let rules = cfg
                .sinks
                .iter()
                .find(|s| s.name() == name)
                .map(|s| s.rules.clone())
                .unwrap_or_default();
            let tables: Vec<_> = cfg
                .transforms
                .compile_all(&rules, &schemas)
                .map_err(|e| Failure::Input(format!("sink {name}: {e}")))?
                .iter()
                .map(|t| t.output().clone())
                .collect();
            cutover_core::Sink::open(&mut sink, &tables).await?;
            let (applied, still) = sink.replay_dead_letters().await?;
            say!("sink {name}: {applied} parked change(s) applied, {still} still parked");
            parked_total += still;
        } else {
            let letters = sink.dead_letters().await?;
            say!("sink {name}: {} parked change(s)", letters.len());
            for d in &letters {
                say!(
                    "  #{} {} {} key {} at {} (parked {}, {} attempt(s))\n      row: {}\n      reason: {}",
                    d.id,
                    d.table,
                    d.op,
                    d.key,
                    d.commit_lsn.as_deref().unwrap_or("-"),
                    d.parked_at,
                    d.attempts,
                    d.row,
                    d.reason
                );
            }
            parked_total += letters.len() as u64;
        }
    }
    // Kafka, NATS and MongoDB sinks park in a file of their own (Kafka: or a topic).
    for sink in &cfg.sinks {
        let Some(store) = sink.letter_store().await? else {
            continue;
        };
        let name = sink.name();
        if replay {
            let (sent, still) = sink.replay_letters().await?;
            say!("sink {name}: {sent} parked change(s) sent, {still} still parked");
            parked_total += still;
            continue;
        }
        let letters = cutover_core::dead_letters::blocking(|| store.open()?.read())?;
        say!("sink {name}: {} parked change(s)", letters.len());
        for l in &letters {
            say!(
                "  #{} {}.{} {} key {} to {} at {} (parked at {} s since the epoch, {} attempt(s))\n      reason: {}",
                l.id,
                l.schema,
                l.table,
                l.op,
                l.key,
                l.destination,
                l.commit_lsn,
                l.parked_at,
                l.attempts,
                l.reason
            );
        }
        parked_total += letters.len() as u64;
    }
    Ok(if parked_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
