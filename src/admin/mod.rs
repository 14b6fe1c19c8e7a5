//! The admin HTTP server of `cutover run` (`[admin] listen`): Prometheus metrics, health and
//! readiness probes, the status report as JSON, and actions an operator posts with the admin
//! token.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the web console (one page, embedded in the binary, refreshing itself) |
//! | `GET /api/live` | this process's live view: phase, tables with rate and ETA, sinks, the last hour of lag |
//! | `GET /api/switch` | the switch record read now: direction, epoch, step, the timed steps |
//! | `GET /metrics` | Prometheus text format, every name under `cutover_` (see [`render_metrics`]) |
//! | `GET /healthz` | 200 while the process runs and, when streaming, samples its source; else 503 |
//! | `GET /readyz` | 200 when every readiness gate of the switch is open, else 503; the gates as JSON |
//! | `GET /api/status` | the document `cutover status --format json` prints |
//! | `POST /api/pause`, `/api/resume` | the source reader, or one sink with `?sink=NAME` |
//! | `POST /api/verify` | a consistency check now (its result lands in the status and metrics) |
//! | `POST /api/rate?sink=NAME&changes_per_s=N&bytes_per_s=M` | a sink's rate limits until the process ends (absent or 0: none) |
//! | `POST /api/resnapshot?table=SCHEMA.TABLE` | copy one table again into every sink beside the stream (`cutover resnapshot`) |
//!
//! Every request must name, in its `Host` header, an IP address, `localhost` or a name of
//! `[admin] allowed_hosts` (else 403: a page cannot reach the server by DNS rebinding); its
//! headers must arrive within `HEADER_READ_TIMEOUT` and its answer is cut at
//! `REQUEST_TIMEOUT`; at most `MAX_CONNECTIONS` connections are served at once; request bodies
//! are never read. Actions need `Authorization: Bearer TOKEN` with `[admin] token`; without a
//! configured token they are refused. The report behind `/readyz`, `/api/status` and the gate metrics reads the
//! source and every target, so it is refreshed in the background (every `REFRESH`), not per
//! request; each answer says how old it is. Nothing served holds a secret: URLs are shown
//! without passwords and every body passes through [`cutover_core::secrets::scrub`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Pipeline;
use crate::pipeline::{Command, Handle, Telemetry};
use crate::report::StatusReport;
use crate::status::{Phase, SinkProgress, Status};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a request is worked on before it is answered 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// How long a switch record read for `GET /api/switch` is served to the next requests.
const SWITCH_FRESH: Duration = Duration::from_secs(1);

/// How often the status report (gates, slot, saved state) is read again.
const REFRESH: Duration = Duration::from_secs(10);

/// A streaming pipeline whose source was not sampled for this long is unhealthy.
const STALE_SAMPLE: Duration = Duration::from_secs(30);

/// How often the live view samples the status (rates, the lag history).
const SAMPLE: Duration = Duration::from_secs(5);

/// Samples of lag kept for the console's chart: one hour.
const HISTORY: usize = 720;

/// The console page, served as is.
const CONSOLE: &str = include_str!("admin/console.html");

/// One sample of every sink's lag.
#[derive(Clone, serde::Serialize)]
struct LagSample {
    /// Unix time, seconds.
    at: f64,
    /// Per sink, in the order of the status: (bytes, seconds) behind.
    sinks: Vec<(u64, f64)>,
}

/// What the live view keeps between samples.
#[derive(Default)]
struct Live {
    history: std::collections::VecDeque<LagSample>,
    /// Rows copied per table at the previous sample, and when.
    copied: HashMap<String, u64>,
    sampled: Option<SystemTime>,
    /// Rows per second per table over the last sample.
    rates: HashMap<String, f64>,
}

/// The last status report read in the background.
struct Cached {
    at: SystemTime,
    report: std::result::Result<(serde_json::Value, bool), String>,
}

/// What the admin server shares with the running pipeline.
#[derive(Clone)]
pub struct Admin {
    file: Arc<Pipeline>,
    telemetry: Telemetry,
    /// The running pass's command handle (a switch starts a new pass, with a new handle).
    handle: Arc<Mutex<Option<Handle>>>,
    verify_now: Arc<Notify>,
    token: Option<String>,
    cached: Arc<RwLock<Option<Cached>>>,
    live: Arc<Mutex<Live>>,
    /// Host names a request may be addressed to besides IP addresses and `localhost`.
    allowed_hosts: Arc<Vec<String>>,
    /// The switch record last read (or why it could not be), and when: requests within
    /// [`SWITCH_FRESH`] share it, and one read runs at a time (a console per browser tab polls
    /// it).
    switch_read: SwitchRead,
}

type SwitchRead =
    Arc<tokio::sync::Mutex<Option<(std::time::Instant, Result<serde_json::Value, String>)>>>;

impl Admin {
    pub fn new(file: &Pipeline, telemetry: Telemetry, verify_now: Arc<Notify>) -> Self {
        Admin {
            file: Arc::new(file.clone()),
            telemetry,
            handle: Arc::new(Mutex::new(None)),
            verify_now,
            token: file.admin.token.clone(),
            cached: Arc::new(RwLock::new(None)),
            live: Arc::new(Mutex::new(Live::default())),
            allowed_hosts: Arc::new(file.admin.allowed_hosts.clone()),
            switch_read: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The handle of the pass that runs now (`None` between passes).
    pub fn set_handle(&self, handle: Option<Handle>) {
        *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = handle;
    }

    /// Binds `listen` and serves until the process ends. A port in use is logged and the
    /// pipeline runs on without the server: the migration matters more than its dashboard.
    pub async fn serve(self, listen: SocketAddr) {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%listen, error = %e, "admin server not started ([admin] listen); the pipeline runs without it");
                return;
            }
        };
        let bound = listener.local_addr().unwrap_or(listen);
        tracing::info!(listen = %bound, "admin server listening (/metrics, /healthz, /readyz, /api/status)");
        tokio::spawn(self.clone().refresh());
        tokio::spawn(self.clone().sample());
        // Actions change the run: each needs the admin token, checked once, here.
        let actions = Router::new()
            .route("/api/pause", post(pause))
            .route("/api/resume", post(resume))
            .route("/api/verify", post(verify_now))
            .route("/api/rate", post(set_rate))
            .route("/api/resnapshot", post(resnapshot))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_token,
            ));
        let app = Router::new()
            .route("/", get(console))
            .route("/api/live", get(live))
            .route("/api/switch", get(switch_record))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/api/status", get(api_status))
            .merge(actions)
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self);
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = open.clone().try_acquire_owned() else {
                tracing::debug!("admin server: {MAX_CONNECTIONS} connections open; one refused");
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "admin server: connection ended");
                }
                drop(slot);
            });
        }
    }

    /// Reads the status report every [`REFRESH`].
    async fn refresh(self) {
        loop {
            let report = StatusReport::collect(&self.file, Some(self.live_doc()))
                .await
                .map(|r| (r.doc, r.ready))
                .map_err(|e| e.to_string());
            *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
                at: SystemTime::now(),
                report,
            });
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Samples the status every [`SAMPLE`]: table copy rates and the lag history.
    async fn sample(self) {
        loop {
            self.sample_once();
            tokio::time::sleep(SAMPLE).await;
        }
    }

    fn sample_once(&self) {
        let status = self.telemetry.snapshot();
        let now = SystemTime::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = live
            .sampled
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        for t in &status.tables {
            let before = live.copied.insert(t.name.clone(), t.rows_copied);
            if let (Some(before), Some(dt)) = (before, elapsed.filter(|d| *d > 0.0)) {
                let rate = t.rows_copied.saturating_sub(before) as f64 / dt;
                live.rates.insert(t.name.clone(), rate);
            }
        }
        live.sampled = Some(now);
        live.history.push_back(LagSample {
            at: unix_seconds(now),
            sinks: status
                .sinks
                .iter()
                .map(|s| (sink_lag_bytes(s, &status), sink_lag_seconds(s, &status)))
                .collect(),
        });
        while live.history.len() > HISTORY {
            live.history.pop_front();
        }
    }

    /// This process's live view: phase, each table's copy with rate and ETA, each sink's lag,
    /// and the lag history (what `/api/live` serves and the status report embeds).
    fn live_doc(&self) -> serde_json::Value {
        let status = self.telemetry.snapshot();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let tables: Vec<_> = status
            .tables
            .iter()
            .map(|t| {
                let rate = live.rates.get(&t.name).copied().unwrap_or(0.0);
                let left = t.rows_estimate.saturating_sub(t.rows_copied) as f64;
                let eta = (!t.done && rate > 0.0).then(|| left / rate);
                serde_json::json!({
                    "name": t.name,
                    "rows_copied": t.rows_copied,
                    "rows_estimate": t.rows_estimate,
                    "bytes_copied": t.bytes_copied,
                    "done": t.done,
                    "ranges": t.ranges.iter().enumerate().map(|(i, r)| serde_json::json!({
                        "range": i + 1,
                        "rows_copied": r.rows_copied,
                        "bytes_copied": r.bytes_copied,
                        "done": r.done,
                    })).collect::<Vec<_>>(),
                    "rows_per_second": rate,
                    "eta_seconds": eta,
                })
            })
            .collect();
        let sinks: Vec<_> = status
            .sinks
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "lag_bytes": sink_lag_bytes(s, &status),
                    "lag_seconds": sink_lag_seconds(s, &status),
                    "changes_applied": s.changes_applied,
                    "queue_bytes": s.queue_bytes,
                    "dead_letters": s.parked,
                    "paused": s.paused,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "pipeline": self.file.name,
            "phase": phase_name(status.phase),
            "reader_paused": status.reader_paused,
            "source_wal": status.source_wal.to_string(),
            "confirmed": status.confirmed.to_string(),
            "lag_bytes": status.lag_bytes(),
            "tables": tables,
            "sinks": sinks,
            "history": live.history,
        });
        doc
    }

    /// The cached report: (document, ready, age in seconds), or why there is none.
    fn report(&self) -> std::result::Result<(serde_json::Value, bool, f64), String> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        let Some(c) = cached.as_ref() else {
            return Err("the first status report is still being read".into());
        };
        let age = c.at.elapsed().map_or(0.0, |d| d.as_secs_f64());
        c.report.clone().map(|(doc, ready)| (doc, ready, age))
    }

    /// The refusal of an action without the configured token; `None` lets it through.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            return Some(text(
                StatusCode::FORBIDDEN,
                "actions are off: set [admin] token (e.g. token = \"${CUTOVER_ADMIN_TOKEN}\") and restart".into(),
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            None
        } else {
            Some(text(
                StatusCode::UNAUTHORIZED,
                "send the admin token as `Authorization: Bearer TOKEN`".into(),
            ))
        }
    }

    async fn command(&self, command: Command) -> Response {
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(handle) = handle else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is between passes; try again".into(),
            );
        };
        match handle.send(command).await {
            Ok(()) => text(StatusCode::OK, "done\n".into()),
            Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        cutover_core::secrets::scrub(&body).into_owned(),
    )
        .into_response()
}

fn json(status: StatusCode, doc: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(doc).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        cutover_core::secrets::scrub(&body).into_owned(),
    )
        .into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let status = admin.telemetry.snapshot();
    let body = render_metrics(&admin.file.name, &status, admin.report().ok());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        cutover_core::secrets::scrub(&body).into_owned(),
    )
        .into_response()
}

async fn console() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CONSOLE,
    )
        .into_response()
}

/// The console's live view of this process (see the module's table).
async fn live(State(admin): State<Admin>) -> Response {
    json(StatusCode::OK, &admin.live_doc())
}

/// What every request passes first: its `Host` must be one the server answers to (see the
/// module's text), and its answer must come within [`REQUEST_TIMEOUT`].
async fn guard(
    State(admin): State<Admin>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    if let Some(host) = host {
        if !host_allowed(&host, &admin.allowed_hosts) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "this server does not answer to the host {:?}. Fix: address it by IP or as localhost, or add the name to [admin] allowed_hosts\n",
                    host.chars().take(100).collect::<String>()
                ),
            );
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no answer within {} s; try again\n",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// The admin token's check, the one layer in front of every action.
async fn require_token(
    State(admin): State<Admin>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match admin.refusal(request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// Whether a `Host` header (`name[:port]`) names an IP address, `localhost`, or one of
/// `allowed` (lower-case names).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal, with or without a port.
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.trim_end_matches('.') == name)
}

/// The switch record, read from the primary target (the console follows a switch's steps
/// with it): requests within [`SWITCH_FRESH`] of a read share it, one read at a time.
async fn switch_record(State(admin): State<Admin>) -> Response {
    let mut last = admin.switch_read.lock().await;
    let fresh = last
        .as_ref()
        .filter(|(at, _)| at.elapsed() < SWITCH_FRESH)
        .map(|(_, read)| read.clone());
    let read = match fresh {
        Some(read) => read,
        None => {
            let read = crate::switch::load(&admin.file)
                .await
                .map(|rec| {
                    serde_json::json!({
                        "epoch": rec.epoch,
                        "direction": rec.direction,
                        "step": rec.step,
                        "log": rec.log,
                    })
                })
                .map_err(|e| e.to_string());
            *last = Some((std::time::Instant::now(), read.clone()));
            read
        }
    };
    drop(last);
    match read {
        Ok(doc) => json(StatusCode::OK, &doc),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn healthz(State(admin): State<Admin>) -> Response {
    let status = admin.telemetry.snapshot();
    let age = status
        .sampled_at
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs_f64());
    let stale =
        status.phase == Phase::Streaming && age.is_none_or(|a| a > STALE_SAMPLE.as_secs_f64());
    let doc = serde_json::json!({
        "healthy": !stale,
        "phase": phase_name(status.phase),
        "last_source_sample_seconds_ago": age,
    });
    json(
        if stale {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        &doc,
    )
}

async fn readyz(State(admin): State<Admin>) -> Response {
    match admin.report() {
        Ok((doc, ready, age)) => json(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            &serde_json::json!({
                "ready": ready,
                "gates": doc.get("gates"),
                "report_age_seconds": age,
            }),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn api_status(State(admin): State<Admin>) -> Response {
    match admin.report() {
        Ok((mut doc, _, age)) => {
            if let Some(map) = doc.as_object_mut() {
                map.insert("report_age_seconds".into(), age.into());
            }
            json(StatusCode::OK, &doc)
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[derive(Deserialize)]
struct Target {
    sink: Option<String>,
}

async fn pause(State(admin): State<Admin>, Query(t): Query<Target>) -> Response {
    pause_or_resume(admin, t, true).await
}

async fn resume(State(admin): State<Admin>, Query(t): Query<Target>) -> Response {
    pause_or_resume(admin, t, false).await
}

/// Pauses (or resumes) the source reader, or the sink `t.sink`.
async fn pause_or_resume(admin: Admin, t: Target, pause: bool) -> Response {
    let command = match (t.sink, pause) {
        (Some(name), true) => Command::PauseSink(name),
        (Some(name), false) => Command::ResumeSink(name),
        (None, true) => Command::PauseReader,
        (None, false) => Command::ResumeReader,
    };
    admin.command(command).await
}

#[derive(Deserialize)]
struct Rate {
    sink: Option<String>,
    changes_per_s: Option<u32>,
    bytes_per_s: Option<u32>,
}

async fn set_rate(State(admin): State<Admin>, Query(r): Query<Rate>) -> Response {
    let Some(sink) = r.sink else {
        return text(
            StatusCode::BAD_REQUEST,
            "name the sink: /api/rate?sink=NAME&changes_per_s=N&bytes_per_s=M (absent or 0: no limit)\n".into(),
        );
    };
    let limits = crate::config::RateLimits {
        changes_per_s: r.changes_per_s.filter(|n| *n > 0),
        bytes_per_s: r.bytes_per_s.filter(|n| *n > 0),
    };
    admin.command(Command::SetRate(sink, limits)).await
}

#[derive(Deserialize)]
struct TableQuery {
    table: Option<String>,
}

async fn resnapshot(State(admin): State<Admin>, Query(q): Query<TableQuery>) -> Response {
    let Some(name) = q.table.as_deref().and_then(|t| t.split_once('.')) else {
        return text(
            StatusCode::BAD_REQUEST,
            "name the table: /api/resnapshot?table=SCHEMA.TABLE\n".into(),
        );
    };
    if admin.telemetry.snapshot().phase != Phase::Streaming {
        return text(
            StatusCode::CONFLICT,
            "a table is copied again while the pipeline streams; try again once the copy is done\n"
                .into(),
        );
    }
    let table = cutover_core::TableName::new(name.0, name.1);
    admin.command(Command::Resnapshot(table)).await
}

async fn verify_now(State(admin): State<Admin>) -> Response {
    if admin.telemetry.snapshot().phase != Phase::Streaming {
        return text(
            StatusCode::CONFLICT,
            "consistency checks run while the pipeline streams; try again once the copy is done\n"
                .into(),
        );
    }
    admin.verify_now.notify_one();
    text(
        StatusCode::ACCEPTED,
        "a consistency check starts now; its result shows in /api/status and /metrics\n".into(),
    )
}

fn phase_name(phase: Phase) -> &'static str {
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
fn sink_lag_bytes(sink: &SinkProgress, status: &Status) -> u64 {
    status.source_wal.0.saturating_sub(sink.durable.0)
}

/// Age of the newest transaction `sink` made durable while it is behind; 0 when caught up.
fn sink_lag_seconds(sink: &SinkProgress, status: &Status) -> f64 {
    if sink_lag_bytes(sink, status) == 0 {
        return 0.0;
    }
    let now = unix_seconds(SystemTime::now());
    sink.last_commit_micros
        .map_or(0.0, |c| (now - c as f64 / 1e6).max(0.0))
}

fn unix_seconds(t: SystemTime) -> f64 {
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
    type SinkHistogram = fn(&SinkProgress) -> &crate::status::Histogram;
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
    m.family("cutover_retries_total", "counter", "Runs interrupted and retried from the last durable position, by cause (a SQLSTATE, connection, other).");
    for (cause, n) in &status.retries {
        m.sample("cutover_retries_total", &[("cause", cause)], *n as f64);
    }
    m.family(
        "cutover_snapshot_rows_copied_total",
        "counter",
        "Rows of the table this run's snapshot has copied.",
    );
    for t in &status.tables {
        m.sample(
            "cutover_snapshot_rows_copied_total",
            &[("table", &t.name)],
            t.rows_copied as f64,
        );
    }
    m.family(
        "cutover_snapshot_rows_estimated",
        "gauge",
        "The table's row count as the source's statistics estimate it.",
    );
    for t in &status.tables {
        m.sample(
            "cutover_snapshot_rows_estimated",
            &[("table", &t.name)],
            t.rows_estimate as f64,
        );
    }
    m.family(
        "cutover_snapshot_table_done",
        "gauge",
        "1 once the table's copy is in every sink.",
    );
    for t in &status.tables {
        m.sample(
            "cutover_snapshot_table_done",
            &[("table", &t.name)],
            if t.done { 1.0 } else { 0.0 },
        );
    }
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
    if let Some((doc, ready, age)) = report {
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
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_addresses_localhost_and_named_hosts_are_answered() {
        let allowed = vec!["cutover.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9187",
            "10.1.2.3:80",
            "[::1]:9187",
            "[::1]",
            "localhost:9187",
            "LOCALHOST",
            "cutover.internal:9187",
            "Cutover.Internal.",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok} refused");
        }
        for refused in [
            "evil.example",
            "evil.example:9187",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[evil]:80",
            "cutover.internal.evil.example",
            "",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused} answered");
        }
    }
}
