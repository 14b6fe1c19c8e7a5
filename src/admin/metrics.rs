//! `/metrics`: the Prometheus text exposition of the running pipeline, every name under
//! `cutover_`, rendered family group by family group.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::status::{Histogram, Phase, SinkProgress, Status, TableProgress};

pub(crate) fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Starting => "starting",
        Phase::Snapshot => "snapshot",
        Phase::Streaming => "streaming",
        Phase::Stopping => "stopping",
    }
}

/// Prometheus text exposition, one family at a time.
struct Exposition {
    out: String,
    pipeline: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}{{pipeline=\"{}\"", escape(&self.pipeline));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// A family with one sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// WAL bytes between the source's position and what `sink` made durable.
pub(crate) fn sink_lag_bytes(sink: &SinkProgress, status: &Status) -> u64 {
    status.source_wal.0.saturating_sub(sink.durable.0)
}

/// Age of the newest transaction `sink` made durable while it is behind; 0 when caught up.
pub(crate) fn sink_lag_seconds(sink: &SinkProgress, status: &Status) -> f64 {
    if sink_lag_bytes(sink, status) == 0 {
        return 0.0;
    }
    let now = unix_seconds(SystemTime::now());
    sink.last_commit_micros
        .map_or(0.0, |c| (now - c as f64 / 1e6).max(0.0))
}

pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics of pipeline `pipeline`: the live status of this process, and the gates of the
/// last status report (`report`: document, ready, age) when there is one.
pub fn render_metrics(
    pipeline: &str,
    status: &Status,
    report: Option<(serde_json::Value, bool, f64)>,
) -> String {
    let mut m = Exposition {
        out: String::new(),
        pipeline: pipeline.to_string(),
    };
    process(&mut m, status);
    sinks(&mut m, status);
    sink_histograms(&mut m, status);
    retries_and_tables(&mut m, status);
    last_verify(&mut m, status);
    if let Some(report) = report {
        gates(&mut m, report);
    }
    m.out
}

/// The process, its phase and the source's positions.
fn process(m: &mut Exposition, status: &Status) {
    m.one(
        "cutover_up",
        "gauge",
        "1 while cutover run serves this pipeline.",
        1.0,
    );
    m.family(
        "cutover_phase",
        "gauge",
        "1 for the phase the pipeline is in.",
    );
    for phase in [
        Phase::Starting,
        Phase::Snapshot,
        Phase::Streaming,
        Phase::Stopping,
    ] {
        let on = if status.phase == phase { 1.0 } else { 0.0 };
        m.sample("cutover_phase", &[("phase", phase_name(phase))], on);
    }
    m.one(
        "cutover_source_wal_position_bytes",
        "gauge",
        "The source's WAL write position (an LSN as a byte offset) at the last sample.",
        status.source_wal.0 as f64,
    );
    m.one(
        "cutover_slot_confirmed_position_bytes",
        "gauge",
        "The replication slot's confirmed position (an LSN as a byte offset).",
        status.confirmed.0 as f64,
    );
    m.one(
        "cutover_lag_bytes",
        "gauge",
        "WAL bytes between the source's position and the slot's confirmed position.",
        status.lag_bytes() as f64,
    );
    m.one(
        "cutover_reader_paused",
        "gauge",
        "1 while an operator has paused the source reader.",
        if status.reader_paused { 1.0 } else { 0.0 },
    );
}

/// One family per sink value, one sample per sink.
fn sinks(m: &mut Exposition, status: &Status) {
    let now_micros = unix_seconds(SystemTime::now()) * 1e6;
    type SinkValue = fn(&SinkProgress, &Status, f64) -> f64;
    let per_sink: [(&str, &str, &str, SinkValue); 11] = [
        ("cutover_sink_durable_position_bytes", "gauge", "The end of the last transaction the sink made durable (an LSN as a byte offset).", |s, _, _| s.durable.0 as f64),
        ("cutover_sink_lag_bytes", "gauge", "WAL bytes between the source's position and what the sink made durable.", |s, st, _| sink_lag_bytes(s, st) as f64),
        ("cutover_sink_lag_seconds", "gauge", "Age of the newest transaction the sink made durable while it is behind; 0 when caught up.", |s, st, _| sink_lag_seconds(s, st)),
        ("cutover_sink_changes_applied_total", "counter", "Changed rows this run handed to the sink.", |s, _, _| s.changes_applied as f64),
        ("cutover_sink_change_bytes_total", "counter", "Approximate bytes (as held in memory) of the changed rows this run handed to the sink.", |s, _, _| s.bytes_applied as f64),
        ("cutover_sink_queue_events", "gauge", "Change events queued for or buffered in the sink.", |s, _, _| s.queue_depth as f64),
        ("cutover_sink_queue_bytes", "gauge", "Bytes queued for or buffered in the sink.", |s, _, _| s.queue_bytes as f64),
        ("cutover_sink_stalled_seconds_total", "counter", "Time the source reader waited for this sink's full queue.", |s, _, _| s.stalled_ms as f64 / 1e3),
        ("cutover_sink_throttled_seconds_total", "counter", "Time this sink's rate limits held changes back.", |s, _, _| s.throttled_ms as f64 / 1e3),
        ("cutover_sink_dead_letters", "gauge", "Changes the sink's target refused for good and parked as dead letters.", |s, _, _| s.parked as f64),
        ("cutover_sink_paused", "gauge", "1 while an operator has paused the sink.", |s, _, _| if s.paused { 1.0 } else { 0.0 }),
    ];
    for (name, kind, help, value) in per_sink {
        m.family(name, kind, help);
        for s in &status.sinks {
            m.sample(name, &[("sink", &s.name)], value(s, status, now_micros));
        }
    }
}

/// The sinks' latency histograms.
fn sink_histograms(m: &mut Exposition, status: &Status) {
    type SinkHistogram = fn(&SinkProgress) -> &Histogram;
    let histograms: [(&str, &str, SinkHistogram); 2] = [
        ("cutover_sink_write_seconds", "How long each write of the sink took, from its seal to done.", |s| &s.write_seconds),
        ("cutover_sink_commit_to_durable_seconds", "From a transaction's commit on the source to its durability in the sink, per write (a backlog's age while catching up).", |s| &s.commit_to_durable_seconds),
    ];
    for (name, help, of) in histograms {
        m.family(name, "histogram", help);
        for s in &status.sinks {
            let h = of(s);
            for (le, n) in h.cumulative() {
                m.sample(
                    &format!("{name}_bucket"),
                    &[("sink", &s.name), ("le", &le.to_string())],
                    n as f64,
                );
            }
            m.sample(
                &format!("{name}_bucket"),
                &[("sink", &s.name), ("le", "+Inf")],
                h.count as f64,
            );
            m.sample(&format!("{name}_sum"), &[("sink", &s.name)], h.sum);
            m.sample(
                &format!("{name}_count"),
                &[("sink", &s.name)],
                h.count as f64,
            );
        }
    }
}

/// Retries by cause and each table's copy.
fn retries_and_tables(m: &mut Exposition, status: &Status) {
    m.family("cutover_retries_total", "counter", "Runs interrupted and retried from the last durable position, by cause (a SQLSTATE, connection, other).");
    for (cause, n) in &status.retries {
        m.sample("cutover_retries_total", &[("cause", cause)], *n as f64);
    }
    type TableValue = fn(&TableProgress) -> f64;
    let per_table: [(&str, &str, &str, TableValue); 3] = [
        (
            "cutover_snapshot_rows_copied_total",
            "counter",
            "Rows of the table this run's snapshot has copied.",
            |t| t.rows_copied as f64,
        ),
        (
            "cutover_snapshot_rows_estimated",
            "gauge",
            "The table's row count as the source's statistics estimate it.",
            |t| t.rows_estimate as f64,
        ),
        (
            "cutover_snapshot_table_done",
            "gauge",
            "1 once the table's copy is in every sink.",
            |t| if t.done { 1.0 } else { 0.0 },
        ),
    ];
    for (name, kind, help, value) in per_table {
        m.family(name, kind, help);
        for t in &status.tables {
            m.sample(name, &[("table", &t.name)], value(t));
        }
    }
}

/// This run's last consistency check.
fn last_verify(m: &mut Exposition, status: &Status) {
    if let Some(v) = &status.last_verify {
        m.one(
            "cutover_verify_drift_rows",
            "gauge",
            "Rows that differed at the last consistency check of this run.",
            v.drift_rows as f64,
        );
        m.one(
            "cutover_verify_in_flight_rows",
            "gauge",
            "Rows still changing at the last consistency check of this run.",
            v.in_flight_rows as f64,
        );
        m.one(
            "cutover_verify_last_timestamp_seconds",
            "gauge",
            "When this run's last consistency check ended (Unix time).",
            unix_seconds(v.at),
        );
        if let Some(clean) = v.last_clean {
            m.one(
                "cutover_verify_last_clean_timestamp_seconds",
                "gauge",
                "When a consistency check last found every table equal (Unix time).",
                unix_seconds(clean),
            );
        }
    }
}

/// The switch's gates and steps, from the last status report (document, ready, age).
fn gates(m: &mut Exposition, (doc, ready, age): (serde_json::Value, bool, f64)) {
    m.one(
        "cutover_ready",
        "gauge",
        "1 when every readiness gate of the switch is open.",
        if ready { 1.0 } else { 0.0 },
    );
    m.family(
        "cutover_gate_open",
        "gauge",
        "1 when the switch's readiness gate is open.",
    );
    for g in doc
        .get("gates")
        .and_then(|g| g.as_array())
        .into_iter()
        .flatten()
    {
        let name = g.get("gate").and_then(|n| n.as_str()).unwrap_or("");
        let ok = g.get("ok").and_then(|o| o.as_bool()).unwrap_or(false);
        m.sample(
            "cutover_gate_open",
            &[("gate", name)],
            if ok { 1.0 } else { 0.0 },
        );
    }
    if let Some(retained) = doc["slot"]["retained_wal_bytes"].as_f64() {
        m.one("cutover_slot_retained_wal_bytes", "gauge", "WAL the source keeps for the slot (from its restart position), from the status report.", retained);
    }
    if let Some(step) = doc.get("switch_step").and_then(|s| s.as_str()) {
        m.family(
            "cutover_switch_step",
            "gauge",
            "1 for the step the switch record is at (idle: no switch in progress).",
        );
        m.sample("cutover_switch_step", &[("step", step)], 1.0);
    }
    m.family(
        "cutover_switch_step_seconds",
        "gauge",
        "How long each step of the last switch or rollback took.",
    );
    for s in doc["switch_log"].as_array().into_iter().flatten() {
        if let (Some(step), Some(ms)) = (s["step"].as_str(), s["ms"].as_f64()) {
            m.sample("cutover_switch_step_seconds", &[("step", step)], ms / 1e3);
        }
    }
    m.one(
        "cutover_status_report_age_seconds",
        "gauge",
        "Age of the status report behind the gate metrics.",
        age,
    );
}
