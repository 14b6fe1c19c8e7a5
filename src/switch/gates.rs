//! Readiness: the gates a switch must pass, each with its value and threshold. `cutover status`
//! prints them, `cutover switch` refuses to start unless every one is open.

use std::time::{SystemTime, UNIX_EPOCH};

use cutover_core::{Result, Sink as _};
use cutover_postgres::{PgEndpoint, PgSource};
use serde::Serialize;

use super::{pgbouncer, pipeline_for, primary_target, Record, Step};
use crate::config::Pipeline;
use crate::state::{Identity, SavedCheck};

/// One gate.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub gate: &'static str,
    pub ok: bool,
    /// What was measured.
    pub value: String,
    /// What it must be.
    pub threshold: String,
    /// What to do when it is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every gate of a switch from the current direction.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub gates: Vec<Gate>,
    /// Seconds of lag, and how long the last clean check took: the plan's estimates.
    #[serde(skip)]
    pub lag_bytes: u64,
    #[serde(skip)]
    pub verify_elapsed_ms: Option<u64>,
}

impl Readiness {
    /// The gates as text, one per line, then READY or NOT READY.
    pub fn text(&self) -> String {
        let mut out = String::from("readiness for the switch:\n");
        for g in &self.gates {
            out.push_str(&format!(
                "  {}  {}: {} (must be {})\n",
                if g.ok { "ok  " } else { "FAIL" },
                g.gate,
                g.value,
                g.threshold
            ));
            if let (false, Some(fix)) = (g.ok, &g.fix) {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        out.push_str(if self.ready { "READY\n" } else { "NOT READY\n" });
        out
    }

    /// The closed gates, for a refusal.
    pub fn closed(&self) -> String {
        self.gates
            .iter()
            .filter(|g| !g.ok)
            .map(|g| {
                format!(
                    "{} ({}; must be {}{})",
                    g.gate,
                    g.value,
                    g.threshold,
                    g.fix
                        .as_ref()
                        .map_or(String::new(), |f| format!("; fix: {f}"))
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn gate(gate: &'static str, ok: bool, value: String, threshold: &str, fix: &str) -> Gate {
    Gate {
        gate,
        ok,
        value,
        threshold: threshold.to_string(),
        fix: (!ok).then(|| fix.to_string()),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Measures every gate of a switch away from the direction `rec` records. A gate that cannot be
/// measured (a server down) is closed, with the error as its value.
pub async fn check(cfg: &Pipeline, rec: &Record) -> Result<Readiness> {
    let settings = &cfg.cutover;
    let mut gates = Vec::new();
    if let Err(why) = primary_target(cfg) {
        gates.push(gate(
            "switch target",
            false,
            why,
            "one PostgreSQL sink named by [cutover] target",
            "add a PostgreSQL sink, or name it in [cutover] target",
        ));
        return Ok(Readiness {
            ready: false,
            gates,
            lag_bytes: 0,
            verify_elapsed_ms: None,
        });
    }
    let cur = pipeline_for(cfg, rec.direction, rec.epoch_start)?;
    let next = pipeline_for(cfg, rec.direction.other(), None)?;
    gates.push(gate(
        "no switch in progress",
        rec.step == Step::Idle,
        format!("step {}", rec.step.as_str()),
        "idle",
        "finish it with `cutover switch --resume` (or `rollback --resume`), or undo it with --abort",
    ));
    let source = crate::connect::source(&cur).await?;
    let lag_bytes = lag_gates(&cur, &source, &mut gates).await?;
    gates.push(copied_gate(&cur, &source).await?);
    let (last_verify, check) = last_verify_gate(&cur).await;
    gates.push(last_verify);
    gates.push(dead_letters_gate(&cur).await?);
    gates.extend(layout_gates(&cur, &source).await?);
    // The way back: the new primary must be able to stream to the old one.
    let primary = PgEndpoint::parse(&next.source_url, "target")?;
    gates.push(reverse_path(cfg, &primary, &cur).await);
    if let Some(p) = &settings.pgbouncer {
        gates.push(pgbouncer_gate(p).await);
    }
    let verify_elapsed_ms = check.ok().flatten().and_then(|c| c.elapsed_ms);
    Ok(Readiness {
        ready: gates.iter().all(|g| g.ok),
        gates,
        lag_bytes,
        verify_elapsed_ms,
    })
}

/// The running pipeline and its lag: streaming, bytes and seconds behind. Returns the bytes.
async fn lag_gates(cur: &Pipeline, source: &PgSource, gates: &mut Vec<Gate>) -> Result<u64> {
    let settings = &cur.cutover;
    let mut lag_bytes = 0;
    let activity = source.slot_activity().await?;
    let wal = source.current_wal_lsn().await?;
    let streaming = matches!(activity, Some((true, _)));
    gates.push(gate(
        "pipeline streaming",
        streaming,
        match activity {
            None => format!("slot {} does not exist", cur.slot),
            Some((false, _)) => format!("slot {} is not in use", cur.slot),
            Some((true, _)) => format!("slot {} in use", cur.slot),
        },
        "a `cutover run` streaming from the slot",
        "start `cutover run PIPELINE` (the switch drains through it)",
    ));
    if let Some((_, Some(confirmed))) = activity {
        lag_bytes = wal.0.saturating_sub(confirmed.0);
    }
    gates.push(gate(
        "lag bytes",
        activity.is_some() && lag_bytes <= settings.max_lag_bytes,
        format!("{lag_bytes} bytes behind"),
        &format!(
            "at most {} ([cutover] max_lag_bytes)",
            settings.max_lag_bytes
        ),
        "wait for the sinks to catch up (`cutover status`), or raise max_lag_bytes",
    ));
    let lag_s = slot_lag_seconds(cur).await.unwrap_or(0.0);
    let lag_s = if lag_bytes == 0 { 0.0 } else { lag_s };
    gates.push(gate(
        "lag seconds",
        lag_s <= settings.max_lag_s,
        format!("{lag_s:.1} s behind"),
        &format!("at most {} s ([cutover] max_lag_s)", settings.max_lag_s),
        "wait for the sinks to catch up, or raise max_lag_s",
    ));

    Ok(lag_bytes)
}

/// Every table copied to every sink.
async fn copied_gate(cur: &Pipeline, source: &PgSource) -> Result<Gate> {
    let ctx = crate::connect::target_context(cur, "");
    let tables: Vec<_> = source
        .tables()
        .iter()
        .map(|t| t.schema.name.clone())
        .collect();
    let mut missing = Vec::new();
    for sink in &cur.sinks {
        let state = sink.saved_state(&ctx).await?;
        if cur.epoch_start.is_some() {
            continue;
        }
        for t in &tables {
            if !state.copied_tables.contains_key(t) {
                missing.push(format!("{}/{t}", sink.name()));
            }
        }
    }
    Ok(gate(
        "tables copied",
        missing.is_empty(),
        if missing.is_empty() {
            format!("{} tables on {} sinks", tables.len(), cur.sinks.len())
        } else {
            format!("not yet copied: {}", missing.join(", "))
        },
        "every table on every sink",
        "let the snapshot finish",
    ))
}

/// The last consistency check of the databases the pipeline has now: clean and recent enough.
/// Returns the check too (its duration estimates the switch's final check).
async fn last_verify_gate(
    cur: &Pipeline,
) -> (Gate, std::result::Result<Option<SavedCheck>, String>) {
    let settings = &cur.cutover;
    let check = match Identity::of(cur).await {
        Ok(now) => SavedCheck::load_for(&cur.verify.report_path, &now),
        Err(e) => Err(format!(
            "cannot read which databases the pipeline has now: {e}"
        )),
    };
    let (ok, value) = match &check {
        Err(why) => (false, format!("{why}: run a check of these databases")),
        Ok(None) => (false, "no check saved".to_string()),
        Ok(Some(c)) if c.drift_rows > 0 => (
            false,
            format!("DRIFT: {} rows at the last check", c.drift_rows),
        ),
        Ok(Some(c)) if c.last_clean_at != Some(c.checked_at) => (
            false,
            format!(
                "the last check was not clean ({} rows in flight)",
                c.in_flight_rows
            ),
        ),
        Ok(Some(c)) => {
            let age = now_secs().saturating_sub(c.checked_at);
            (
                age <= settings.verify_max_age_s,
                format!("clean, {age} s ago"),
            )
        }
    };
    let gate = gate(
        "last verify",
        ok,
        value,
        &format!(
            "clean, at most {} s old ([cutover] verify_max_age_s)",
            settings.verify_max_age_s
        ),
        "run `cutover verify PIPELINE` (or set verify.interval_s) and repair any drift",
    );
    (gate, check)
}

/// No change parked as a dead letter on any sink.
async fn dead_letters_gate(cur: &Pipeline) -> Result<Gate> {
    let mut parked = 0u64;
    for sink in crate::connect::pg_sinks(cur).await? {
        parked += sink.dead_letters().await?.len() as u64;
    }
    for sink in &cur.sinks {
        if let Some(store) = sink.letter_store().await? {
            parked += cutover_core::dead_letters::blocking(|| store.open()?.read())?.len() as u64;
        }
    }
    Ok(gate(
        "dead letters",
        parked == 0,
        format!("{parked} parked"),
        "none",
        "fix their cause and `cutover dlq replay PIPELINE` (list them with `cutover dlq list`)",
    ))
}

/// Every PostgreSQL sink's tables compatible with the source's, and the source's sequences
/// readable.
async fn layout_gates(cur: &Pipeline, source: &PgSource) -> Result<[Gate; 2]> {
    let schemas = source.schemas();
    let mut layout = Vec::new();
    for sink in crate::connect::pg_sinks(cur).await? {
        if let Err(e) = sink.preflight(&schemas).await {
            layout.push(format!("{}: {e}", sink.name()));
        }
    }
    let layouts = gate(
        "target layouts",
        layout.is_empty(),
        if layout.is_empty() {
            "compatible".into()
        } else {
            layout.join("; ")
        },
        "every PostgreSQL sink's tables compatible with the source's",
        "see `cutover check PIPELINE`",
    );
    let found = source.sequences().await;
    let sequences = gate(
        "sequences",
        found.is_ok(),
        match &found {
            Ok(s) => format!("{} to sync", s.len()),
            Err(e) => e.to_string(),
        },
        "readable on the source",
        "grant the pipeline's role SELECT on the sequences",
    );

    Ok([layouts, sequences])
}

/// PgBouncer's admin console reachable, the database entry there and in its config file.
async fn pgbouncer_gate(p: &crate::config::PgBouncerSettings) -> Gate {
    let (ok, value) = match pgbouncer::Console::connect(p).await {
        Ok(c) => match c.knows_database().await {
            Ok(true) => match pgbouncer::check_config(&p.config_file, &p.database) {
                Ok(()) => (
                    true,
                    format!("database {} served, its entry rewritable", p.database),
                ),
                Err(e) => (false, e.to_string()),
            },
            Ok(false) => (false, format!("no database {}", p.database)),
            Err(e) => (false, e.to_string()),
        },
        Err(e) => (false, e.to_string()),
    };
    gate(
        "pgbouncer",
        ok,
        value,
        "the admin console reachable, the database entry there and in config_file (writable)",
        "check [cutover.pgbouncer]",
    )
}

/// Seconds the slot's walsender reports the client behind (`flush_lag`), if it streams.
async fn slot_lag_seconds(cur: &Pipeline) -> Result<f64> {
    let client = PgEndpoint::parse(&cur.source_url, "source")?
        .connect()
        .await?;
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM coalesce(r.flush_lag, interval '0'))::float8
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&cur.slot],
        )
        .await
        .map_err(|e| super::sql_error(e, "cannot read pg_stat_replication"))?;
    Ok(row.map_or(0.0, |r| r.get(0)))
}

/// Whether the new primary can stream the other direction: logical WAL, a role that may
/// replicate, a free slot and walsender; and whether its tables are the source's own (no
/// transform rules on the primary target).
async fn reverse_path(cfg: &Pipeline, primary: &PgEndpoint, cur: &Pipeline) -> Gate {
    let fix = "on the new primary: wal_level = logical (restart), a role WITH REPLICATION, max_replication_slots and max_wal_senders above those in use";
    let index = cfg.cutover.target.unwrap_or(0);
    let rules = cfg
        .sinks
        .get(index)
        .map(|s| s.rules.clone())
        .unwrap_or_default();
    if !cfg.transforms.is_empty_with(&rules) {
        return gate(
            "reverse path",
            false,
            "the primary target has transform rules (its tables are not the source's)".into(),
            "no transform rules on the primary target",
            "switch to a target without rules, or accept no way back",
        );
    }
    let client = match primary.connect().await {
        Ok(c) => c,
        Err(e) => return gate("reverse path", false, e.to_string(), "reachable", fix),
    };
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int",
            &[],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            return gate(
                "reverse path",
                false,
                e.to_string(),
                "readable settings",
                fix,
            )
        }
    };
    let (wal_level, replicate, slots, senders): (String, bool, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let _ = cur;
    gate(
        "reverse path",
        wal_level == "logical" && replicate && slots > 0 && senders > 0,
        format!(
            "new primary {}: wal_level {wal_level}, {} replicate, {slots} free slots, {senders} free walsenders",
            primary,
            if replicate { "may" } else { "may NOT" }
        ),
        "wal_level logical, a role that may replicate, a free slot and walsender",
        fix,
    )
}
