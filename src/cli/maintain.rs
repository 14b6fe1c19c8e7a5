//! The commands that repair or remove a pipeline's state: `teardown`, `forget`, `recover`,
//! `resnapshot`.

use std::path::Path;
use std::process::ExitCode;

use cutover::lock::{self, Hold};
use cutover::switch::{self, Direction};
use cutover::{config, say, targets};

use super::{load, load_current, Failure, Outcome};

pub(super) async fn resnapshot(path: &Path, table: &str) -> Outcome {
    let cfg = load(path)?;
    let table = if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    };
    let Some(listen) = cfg.admin.listen.filter(|l| l.port() != 0) else {
        return Err(Failure::Input(format!(
            "{}: resnapshot asks the running pipeline through its admin server, and [admin] listen is not set. Fix: set [admin] listen and token, and restart `cutover run`.",
            path.display()
        )));
    };
    let Some(token) = cfg.admin.token.as_deref() else {
        return Err(Failure::Input(format!(
            "{}: resnapshot is an admin action and [admin] token is not set{}. Fix: set [admin] token (e.g. token = \"${{CUTOVER_ADMIN_TOKEN}}\") and restart `cutover run`.",
            path.display(),
            cfg.admin
                .token_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    };
    let query: String = table
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    cutover::live::post_action(listen, &format!("/api/resnapshot?table={query}"), token).await?;
    say!("{table}: the running pipeline copies it again into every sink; `cutover status` shows the copy, the log says \"table copied into every sink\" when it is done");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn teardown(path: &Path, target_state: bool) -> Outcome {
    let cfg = load(path)?;
    let _lock = lock::take(&cfg, &[Hold::Run, Hold::Change], "teardown").await?;
    let source = cutover::connect::source(&cfg).await?;
    let (slot, publication) = source.teardown().await?;
    say!(
        "replication slot {}: {}",
        cfg.slot,
        if slot { "dropped" } else { "did not exist" }
    );
    say!(
        "publication {}: {}",
        cfg.publication,
        if publication {
            "dropped"
        } else {
            "did not exist"
        }
    );
    remove_open_fences(&cfg).await?;
    if target_state {
        let ctx = cutover::connect::target_context(&cfg, "");
        for sink in &cfg.sinks {
            let deleted = sink.forget_state(&ctx).await?;
            say!("sink {}: {deleted}", sink.name());
        }
        forget_switch_state(&cfg).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the switch's fence (its triggers and gate) from the source and the primary target
/// where it is open; a database whose gate is closed (it must not take writes) keeps it, and
/// is named.
async fn remove_open_fences(cfg: &config::Pipeline) -> Result<(), Failure> {
    let mut databases = vec![("source", cfg.source_url.clone())];
    if let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) {
        databases.push(("primary target", back.source_url));
    }
    for (what, url) in databases {
        let endpoint = cutover_postgres::PgEndpoint::parse(&url, what)?;
        let client = endpoint.connect().await?;
        match switch::fence::drop_if_open(&client, &cfg.name, 5000)
            .await
            ?
        {
            Some(0) => {}
            Some(n) => say!("switch fence on the {what}: removed from {n} table(s)"),
            None => say!(
                "switch fence on the {what}: kept, it is closed (this database must not take the application's writes); \
                 `cutover rollback` moves them back, or drop the cutover_fence triggers by hand"
            ),
        }
    }
    Ok(())
}

/// What `teardown --target-state` removes besides the forward sinks' progress: the way back
/// (its slot and publication on the primary target, its sinks' progress, the original
/// source's checkpoints among them), the saved checks and changed keys of both directions, and
/// the switch record. A migration tried again with the same file then starts at the first
/// epoch, and nothing saved of the databases it ran on before opens a gate or sets a position.
async fn forget_switch_state(cfg: &config::Pipeline) -> Result<(), Failure> {
    let mut files = vec![cfg.verify.report_path.clone()];
    if let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) {
        let primary = cutover_postgres::PgEndpoint::parse(&back.source_url, "target")?;
        switch::steps::drop_slot_and_publication(
            &primary,
            &back.slot,
            &back.publication,
            std::time::Duration::from_secs(5),
        )
        .await?;
        say!(
            "the way back: slot {} and publication {} on the primary target: dropped if they existed",
            back.slot,
            back.publication
        );
        let ctx = cutover::connect::target_context(&back, "");
        for sink in &back.sinks {
            let deleted = sink.forget_state(&ctx).await?;
            say!("sink {} (the way back): {deleted}", sink.name());
        }
        files.push(back.verify.report_path.clone());
    }
    for report in files {
        for path in [cutover::state::Journal::path(&report), report.clone()] {
            if path.exists() {
                switch::steps::forget_file(&path)?;
                say!("{}: removed", path.display());
            }
        }
    }
    if let Some(store) = switch::Store::open(cfg).await? {
        if store.forget().await? {
            say!("switch record: removed (the next run is the first epoch)");
        }
    }
    Ok(())
}

pub(super) async fn forget(path: &Path, name: &str) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Run, Hold::Change], "forget").await?;
    let cfg = load_current(path).await?;
    let Some(sink) = cfg.sinks.iter().find(|s| s.name() == name) else {
        let names: Vec<_> = cfg.sinks.iter().map(|s| s.name().to_string()).collect();
        return Err(Failure::Input(format!(
            "{}: no sink is named {name:?}; the sinks are: {}",
            path.display(),
            names.join(", ")
        )));
    };
    let source = cutover::connect::source(&cfg).await?;
    if matches!(source.slot_activity().await?, Some((true, _))) {
        return Err(Failure::Refused(format!(
            "replication slot {} is in use: stop `cutover run` for this pipeline first, then forget the sink",
            cfg.slot
        )));
    }
    let deleted = sink
        .forget_state(&cutover::connect::target_context(&cfg, ""))
        .await?;
    say!("sink {name}: {deleted}; the next run copies its tables again");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn recover(path: &Path) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Run, Hold::Change], "recover").await?;
    let cfg = load_current(path).await?;
    let source = cutover::connect::source(&cfg).await?;
    match source.slot_wal_status().await? {
        Some(Some(status)) if status == "lost" => {
            source.drop_slot().await?;
            say!(
                "replication slot {}: dropped (the source had invalidated it: wal_status = lost)",
                cfg.slot
            );
        }
        Some(status) => {
            return Err(Failure::Refused(format!(
                "replication slot {} is healthy (wal_status = {}): no change was lost, and recovering would copy every table again for nothing. \
                 To copy one sink again, use `cutover forget --sink NAME {}`",
                cfg.slot,
                status.as_deref().unwrap_or("unknown"),
                path.display()
            )));
        }
        None => say!(
            "replication slot {}: does not exist (dropped while cutover was down, or never created); the next run creates it",
            cfg.slot
        ),
    }
    let ctx = cutover::connect::target_context(&cfg, "");
    for sink in &cfg.sinks {
        let done = sink.prepare_recopy(&ctx).await?;
        say!("sink {}: {done}", targets::label(&**sink));
    }
    say!(
        "next: `cutover run {}` copies every table under a new slot and streams on; then `cutover verify {}`",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
