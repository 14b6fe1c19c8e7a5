//! `cutover apply` and the other commands of a pipeline that reads Kafka topics (`check`,
//! `status`, `dlq`).

use std::path::Path;
use std::process::ExitCode;

use cutover::{config, say, say_err};
use tokio::sync::watch;

use super::{load, Failure, Outcome, ReportFormat};

/// `cutover apply`: one consumer-group worker (see [`cutover::apply`]).
pub(super) async fn run(path: &Path) -> Outcome {
    let cfg = load(path)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        cutover::service::wait_for_signal().await;
        let _ = stop_tx.send(true);
        cutover::service::wait_for_signal().await;
        say_err!("\nsecond stop signal: exiting without applying what was read (nothing is lost; the partitions' next owner reads it again)");
        std::process::exit(130);
    });
    let applied = cutover::apply::run(&cfg, stop_rx).await?;
    say!(
        "applied {} messages ({} changes) in {} batches; {} parked",
        applied.messages,
        applied.changes,
        applied.batches,
        applied.parked
    );
    Ok(ExitCode::SUCCESS)
}

/// `cutover status` of an apply pipeline: each partition's next offset as each PostgreSQL
/// target stored it.
pub(super) async fn status(cfg: &config::Pipeline, format: ReportFormat) -> Outcome {
    let offsets = cutover::apply::stored_offsets(cfg).await?;
    match format {
        ReportFormat::Json => say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "pipeline": cfg.name,
                "stored_offsets": offsets.iter().map(|(sink, parts)| (sink.clone(), parts.iter().map(|(p, o)| (p.clone(), *o)).collect::<std::collections::BTreeMap<_, _>>())).collect::<std::collections::BTreeMap<_, _>>(),
            }))
            .map_err(|e| Failure::Refused(e.to_string()))?
        ),
        ReportFormat::Text => {
            say!("pipeline {} (cutover apply, group {})", cfg.name, cfg.apply.as_ref().map_or("", |a| a.group.as_str()));
            for (sink, parts) in &offsets {
                say!("  sink {sink}: {} partitions applied", parts.len());
                for (partition, next) in parts {
                    say!("    {partition}: next offset {next}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cutover dlq list` of an apply pipeline: the messages its workers parked, with where they
/// were read; `replay`: applies them again (see [`cutover::apply::replay`]), then lists what
/// stays.
pub(super) async fn letters(path: &Path, apply: &config::ApplySettings, replay: bool) -> Outcome {
    use cutover_core::dead_letters::{blocking, FileStore, LetterStore};
    if replay && apply.dead_letter_file.exists() {
        let cfg = load(path)?;
        let done = cutover::apply::replay(&cfg).await?;
        say!(
            "replayed: {} applied, {} still parked{}",
            done.applied,
            done.still,
            if done.truncates > 0 {
                format!(
                    ", {} truncate(s) left parked (truncate the target table by hand if meant)",
                    done.truncates
                )
            } else {
                String::new()
            }
        );
    }
    let store = FileStore::new(apply.dead_letter_file.clone());
    let letters = if apply.dead_letter_file.exists() {
        blocking(|| store.open()?.read())?
    } else {
        Vec::new()
    };
    say!("{}: {} parked message(s)", store.describe(), letters.len());
    for l in &letters {
        let at = l.read_from.as_ref().map_or(l.destination.clone(), |r| {
            format!("{}/{}@{}", r.topic, r.partition, r.offset)
        });
        let table = if l.table.is_empty() {
            "-".to_string()
        } else {
            format!("{}.{}", l.schema, l.table)
        };
        say!(
            "  #{} {at} table {table} key {}\n      payload: {}\n      reason: {}",
            l.id,
            if l.key.is_empty() { "-" } else { &l.key },
            l.payload.as_deref().unwrap_or("(none)"),
            l.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
