//! The report `cutover status` prints and the admin server's `/api/status` serves: where the
//! pipeline is (slot, sinks, switch), its last consistency check, and the switch's readiness
//! gates, read from the source, the targets and the saved state (not from a running process).

use cutover_core::Result;

use crate::config::Pipeline;
use crate::{switch, targets};

/// The running pipeline's live view, when its admin server (`[admin] listen`) answers. Another
/// pipeline may hold the port: only this pipeline's answer counts.
pub async fn live_of(file: &Pipeline) -> Option<crate::live::LiveView> {
    match file.admin.listen {
        Some(listen) if listen.port() != 0 => crate::live::fetch(listen)
            .await
            .filter(|l| l.pipeline == file.name),
        _ => None,
    }
}

/// One status report: its text lines, the same as one JSON document, and the verdict.
pub struct StatusReport {
    pub lines: Vec<String>,
    /// The document `cutover status --format json` prints.
    pub doc: serde_json::Value,
    /// Every readiness gate open.
    pub ready: bool,
    gates_text: String,
}

impl StatusReport {
    /// Reads everything the report shows, for the pipeline file `file` (in the direction its
    /// switch record says).
    /// `live` is the running pipeline's live view (see [`live_of`]), or `None` when none
    /// answers.
    pub async fn collect(file: &Pipeline, live: Option<crate::live::LiveView>) -> Result<Self> {
        let rec = switch::load(file).await?;
        let cfg = switch::current(file, &rec)?;
        let mut lines = Vec::new();
        if rec.epoch > 0 || rec.step != switch::Step::Idle {
            lines.push(format!(
                "direction: {} (epoch {}{})",
                rec.direction,
                rec.epoch,
                if rec.step == switch::Step::Idle {
                    String::new()
                } else {
                    format!(
                        "; a switch is in progress at step {}: finish with --resume or undo with --abort",
                        rec.step.as_str()
                    )
                }
            ));
        }
        let source = crate::connect::source(&cfg).await?;
        let wal = source.current_wal_lsn().await?;
        let confirmed = source.confirmed_lsn().await?;
        let retained = source.retained_wal_bytes().await?;
        let wal_status = source.slot_wal_status().await?.flatten();
        lines.push(match confirmed {
            Some(confirmed) => format!(
                "slot {}: confirmed {confirmed}, source WAL {wal}, lag {} bytes, {} bytes of WAL retained",
                cfg.slot,
                wal.0.saturating_sub(confirmed.0),
                retained.unwrap_or(0)
            ),
            None if wal_status.as_deref() == Some("lost") => format!("slot {}: exists", cfg.slot),
            None => format!("slot {}: does not exist (source WAL {wal})", cfg.slot),
        });
        match wal_status.as_deref() {
            Some("lost") => lines.push(
                "  LOST: the source invalidated the slot (wal_status = lost; past max_slot_wal_keep_size): \
                 its changes cannot be streamed. Fix: cutover recover, then cutover run"
                    .to_string(),
            ),
            Some("unreserved") => lines.push(
                "  WARNING: the slot is past max_slot_wal_keep_size (wal_status = unreserved): the next \
                 checkpoint can remove WAL it needs and lose it. Fix: keep cutover running so it catches up, \
                 or raise max_slot_wal_keep_size"
                    .to_string(),
            ),
            _ => {}
        }
        let ctx = crate::connect::target_context(&cfg, "");
        let mut sinks = Vec::new();
        for sink in &cfg.sinks {
            let state = sink.saved_state(&ctx).await?;
            let label = targets::label(&**sink);
            lines.push(sink_state_line(&label, &state));
            sinks.push(serde_json::json!({
                "name": sink.name(),
                "kind": sink.kind(),
                "applied_through": state.checkpoint.map(|c| c.end_lsn.to_string()),
                "tables_copied": state.copied_tables.len(),
            }));
        }
        match &live {
            Some(live) => lines.extend(crate::live::lines(live)),
            None => lines.push(
                "running: no `cutover run` answers on [admin] listen; the figures come from the source and the saved state"
                    .to_string(),
            ),
        }
        let saved = match crate::state::Identity::of(&cfg).await {
            Ok(now) => crate::state::SavedCheck::load_for(&cfg.verify.report_path, &now),
            Err(e) => Err(format!("cannot read which databases the pipeline has: {e}")),
        };
        lines.push(match &saved {
            Ok(check) => consistency_line(check.as_ref()),
            Err(why) => format!("consistency: {why}; run `cutover verify` on these databases"),
        });
        let saved = saved.ok().flatten();
        let readiness = switch::gates::check(file, &rec).await?;
        let doc = serde_json::json!({
            "pipeline": file.name,
            "epoch": rec.epoch,
            "direction": rec.direction,
            "switch_step": rec.step,
            "switch_log": rec.log,
            "slot": {
                "name": cfg.slot,
                "confirmed": confirmed.map(|c| c.to_string()),
                "source_wal": wal.to_string(),
                "lag_bytes": confirmed.map(|c| wal.0.saturating_sub(c.0)),
                "retained_wal_bytes": retained,
                "wal_status": wal_status,
            },
            "sinks": sinks,
            "last_verify": saved,
            "ready": readiness.ready,
            "gates": readiness.gates,
            "live": live,
        });
        Ok(StatusReport {
            lines,
            doc,
            ready: readiness.ready,
            gates_text: readiness.text(),
        })
    }

    /// The text `cutover status` prints: the lines, then the gates and the verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&self.gates_text);
        out
    }
}

fn sink_state_line(name: &str, state: &cutover_core::SinkState) -> String {
    match state.checkpoint {
        Some(cp) => format!(
            "sink {name}: applied through {} ({} tables copied)",
            cp.end_lsn,
            state.copied_tables.len()
        ),
        None => format!(
            "sink {name}: no streamed transaction applied yet ({} tables copied)",
            state.copied_tables.len()
        ),
    }
}

fn consistency_line(check: Option<&crate::state::SavedCheck>) -> String {
    let Some(check) = check else {
        return "consistency: no check saved (run `cutover verify`, or set verify.interval_s)"
            .to_string();
    };
    let ago = |t: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{} s ago", now.saturating_sub(t))
    };
    let clean = check.last_clean_at.map_or("never".to_string(), &ago);
    if check.drift_rows > 0 {
        format!(
            "consistency: DRIFT at the last check ({}): {} rows ({}); last clean check: {clean}",
            ago(check.checked_at),
            check.drift_rows,
            check
                .drift_by_table
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "consistency: no drift at the last check ({}, {} rows in flight); last clean check: {clean}",
            ago(check.checked_at),
            check.in_flight_rows
        )
    }
}
