//! The life of `cutover run`, as a library operation: the command line only parses its
//! arguments and prints what this returns.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::admin::Admin;
use crate::lock::{self, Hold};
use crate::pipeline::{self, Operator, Telemetry};
use crate::{config, status, switch, verify};

/// Runs `cutover run` for the pipeline file at `path` until a stop signal (or an error the
/// retries do not cure): takes the run lock, starts the status reporter and the admin server,
/// then streams one pass per direction (a switch ends a pass at its fence; the next pass
/// streams from the new primary), each pass with its periodic checker, its operator handle and
/// the switch watcher. The first stop signal drains and confirms; a second exits at once.
/// Returns the exit code, or the message to print.
pub async fn run(path: &Path, terminal: bool) -> Result<ExitCode, String> {
    let file = config::load(path).map_err(|e| e.to_string())?;
    if file.apply.is_some() {
        return Err(format!(
            "pipeline file {} reads Kafka topics ([source] kind = \"kafka\"). Fix: run it with cutover apply {}.",
            path.display(),
            path.display()
        ));
    }
    if let Some(e) = &file.admin.token_error {
        return Err(e.clone());
    }
    // Held until the process ends, through every pass and retry.
    lock::take(&file, &[Hold::Run], "run").await?.keep();
    let telemetry = Telemetry::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested: draining, then confirming");
        let _ = stop_tx.send(true);
        wait_for_signal().await;
        crate::say_err!("\nsecond stop signal: exiting without draining (nothing is lost; the next run replays)");
        std::process::exit(130);
    });
    let reporter = tokio::spawn(status::report(telemetry.subscribe(), terminal));
    let verify_now = Arc::new(Notify::new());
    let admin = Admin::new(&file, telemetry.clone(), verify_now.clone());
    if let Some(listen) = file.admin.listen {
        tokio::spawn(admin.clone().serve(listen));
    }
    // One pass per direction: a switch (or rollback) ends the pass at its fence, and the next
    // one streams from the new primary.
    let result = loop {
        let rec = switch::load(&file).await.map_err(|e| e.to_string())?;
        let cfg = switch::current(&file, &rec).map_err(|e| e.to_string())?;
        if let Err(e) = switch::drop_other_direction(&file, &rec).await {
            tracing::warn!(error = %e, "cannot drop the other direction's slot yet");
        }
        if rec.epoch > 0 {
            tracing::info!(epoch = rec.epoch, direction = %rec.direction, "streaming after a switch");
        }
        let checker = tokio::spawn(periodic_verify(
            cfg.clone(),
            telemetry.clone(),
            verify_now.clone(),
        ));
        // The handle commands the running pipeline: the switch watcher drains it at a fence.
        let (operator, handle) = Operator::new();
        let identity = match crate::state::Identity::of(&cfg).await {
            Ok(identity) => Some(identity),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which databases this run streams between: no saved check will shorten the switch's final check");
                None
            }
        };
        let mut operator = operator.tracking(
            cfg.cutover.changed_keys_max,
            cfg.verify.report_path.clone(),
            identity,
        );
        admin.set_handle(Some(handle.clone()));
        let watcher = tokio::spawn(switch::watch_epoch(file.clone(), rec.epoch, handle));
        let result = pipeline::run(&cfg, &telemetry, stop_rx.clone(), &mut operator).await;
        admin.set_handle(None);
        watcher.abort();
        checker.abort();
        if result.is_err() || *stop_rx.borrow() {
            break result;
        }
    };
    reporter.abort();
    if terminal {
        crate::say_err!("\r\x1b[K{}", telemetry.snapshot().line());
    }
    result
        .map(|()| ExitCode::SUCCESS)
        .map_err(|e| e.to_string())
}

/// Checks every target against the source every `verify.interval_s` (when set) and whenever
/// the admin server asks (`verify_now`) while the pipeline streams; saves each result for
/// `cutover status` and shows it in the progress output and the metrics. A check that fails is
/// logged; the pipeline goes on.
async fn periodic_verify(cfg: config::Pipeline, telemetry: Telemetry, verify_now: Arc<Notify>) {
    let every = std::time::Duration::from_secs(cfg.verify.interval_s);
    let opts = verify::VerifyOptions {
        tables: Vec::new(),
        repair: false,
        max_keys: 20,
        changed: None,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every), if !every.is_zero() => {}
            _ = verify_now.notified() => {}
        }
        let streaming = telemetry.snapshot().phase == status::Phase::Streaming;
        if !streaming {
            continue;
        }
        let report = match verify::verify(&cfg, &opts, &|_| {}).await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "periodic consistency check failed; the pipeline goes on");
                continue;
            }
        };
        let now = std::time::SystemTime::now();
        let path = &cfg.verify.report_path;
        let saved = match crate::state::SavedCheck::record(&report, path) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot save the consistency check's result");
                continue;
            }
        };
        if saved.drift_rows > 0 {
            tracing::warn!(
                drift_rows = saved.drift_rows,
                tables = ?saved.drift_by_table,
                "consistency check: DRIFT (run `cutover verify` for the keys)"
            );
        } else {
            tracing::info!(
                in_flight_rows = saved.in_flight_rows,
                tables = report.tables.len(),
                elapsed_ms = report.elapsed_ms,
                "consistency check: no drift"
            );
        }
        telemetry.verified(status::VerifySummary {
            at: now,
            drift_rows: saved.drift_rows,
            in_flight_rows: saved.in_flight_rows,
            last_clean: saved
                .last_clean_at
                .map(|t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)),
        });
    }
}

/// Waits for SIGTERM or Ctrl-C (a second call waits for the next one).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
