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

mod metrics;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Pipeline;
use crate::live::{LagSample, LiveRange, LiveSink, LiveTable, LiveView};
use crate::pipeline::{Command, Handle, Telemetry};
use crate::report::StatusReport;
use metrics::{phase_name, sink_lag_bytes, sink_lag_seconds, unix_seconds};

pub use metrics::render_metrics;

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
const CONSOLE: &str = include_str!("console.html");

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
        let app = routes::router(self);
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
            let report = StatusReport::collect(&self.file, Some(self.live_view()))
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

    /// This process's live view (what `/api/live` serves and the status report embeds).
    fn live_view(&self) -> LiveView {
        let status = self.telemetry.snapshot();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let tables = status
            .tables
            .iter()
            .map(|t| {
                let rate = live.rates.get(&t.name).copied().unwrap_or(0.0);
                let left = t.rows_estimate.saturating_sub(t.rows_copied) as f64;
                LiveTable {
                    name: t.name.clone(),
                    rows_copied: t.rows_copied,
                    rows_estimate: t.rows_estimate,
                    bytes_copied: t.bytes_copied,
                    done: t.done,
                    ranges: t
                        .ranges
                        .iter()
                        .enumerate()
                        .map(|(i, r)| LiveRange {
                            range: i + 1,
                            rows_copied: r.rows_copied,
                            bytes_copied: r.bytes_copied,
                            done: r.done,
                        })
                        .collect(),
                    rows_per_second: rate,
                    eta_seconds: (!t.done && rate > 0.0).then(|| left / rate),
                }
            })
            .collect();
        let sinks = status
            .sinks
            .iter()
            .map(|s| LiveSink {
                name: s.name.clone(),
                lag_bytes: sink_lag_bytes(s, &status),
                lag_seconds: sink_lag_seconds(s, &status),
                changes_applied: s.changes_applied,
                queue_bytes: s.queue_bytes as u64,
                dead_letters: s.parked,
                paused: s.paused,
            })
            .collect();
        LiveView {
            pipeline: self.file.name.clone(),
            phase: phase_name(status.phase).to_string(),
            reader_paused: status.reader_paused,
            source_wal: status.source_wal.to_string(),
            confirmed: status.confirmed.to_string(),
            lag_bytes: status.lag_bytes(),
            tables,
            sinks,
            history: live.history.iter().cloned().collect(),
        }
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

/// A JSON answer, written once from the value (a document or a typed view), secrets scrubbed.
fn json(status: StatusCode, doc: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string_pretty(doc).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        cutover_core::secrets::scrub(&body).into_owned(),
    )
        .into_response()
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

    /// The routes called in-process, as a request reaches them through the server's layers.
    mod routes_in_process {
        use super::*;
        use tower::ServiceExt as _;

        const TOKEN: &str = "0123456789abcdef-admin";

        fn admin(with_token: bool) -> Admin {
            let text = format!(
                "name = \"shop\"\n[source]\nurl = \"postgres://u@src/db\"\ntables = [\"public.*\"]\n\
                 [[sink]]\nkind = \"postgres\"\nname = \"target\"\nurl = \"postgres://u@tgt/db\"\n{}",
                if with_token {
                    format!("[admin]\ntoken = \"{TOKEN}\"\n")
                } else {
                    String::new()
                }
            );
            let file = crate::config::parse(&text, "shop.toml", &|_| None).expect("a valid file");
            Admin::new(&file, Telemetry::new(), Arc::new(Notify::new()))
        }

        async fn ask(
            admin: Admin,
            method: &str,
            path: &str,
            host: &str,
            token: Option<&str>,
        ) -> (StatusCode, String) {
            let mut request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, host);
            if let Some(t) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let response = routes::router(admin)
                .oneshot(request.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        #[tokio::test]
        async fn actions_need_the_configured_token_and_a_running_pass() {
            let (status, body) = ask(admin(false), "POST", "/api/pause", "localhost", None).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(body.contains("actions are off"), "{body}");
            let (status, _) = ask(admin(true), "POST", "/api/pause", "localhost", None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let wrong = ask(
                admin(true),
                "POST",
                "/api/pause",
                "localhost",
                Some("guess"),
            )
            .await;
            assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
            // The right token, and no pass running to take the command.
            let (status, body) =
                ask(admin(true), "POST", "/api/pause", "localhost", Some(TOKEN)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(body.contains("between passes"), "{body}");
            // Reads need no token.
            let (status, _) = ask(admin(true), "GET", "/metrics", "localhost", None).await;
            assert_eq!(status, StatusCode::OK);
        }

        #[tokio::test]
        async fn a_request_for_another_host_is_refused_before_any_route() {
            let (status, body) = ask(admin(true), "GET", "/api/live", "evil.example", None).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(body.contains("allowed_hosts"), "{body}");
            let (status, _) = ask(
                admin(true),
                "POST",
                "/api/pause",
                "evil.example:9187",
                Some(TOKEN),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN);
        }

        #[tokio::test]
        async fn the_live_view_is_served_as_the_type_status_reads() {
            let (status, body) = ask(admin(false), "GET", "/api/live", "127.0.0.1", None).await;
            assert_eq!(status, StatusCode::OK);
            let view: LiveView = serde_json::from_str(&body).expect("the served live view parses");
            assert_eq!(view.pipeline, "shop");
            assert_eq!(view.phase, "starting");
            assert!(view.tables.is_empty() && view.sinks.is_empty() && view.history.is_empty());
            let (status, body) = ask(admin(false), "GET", "/readyz", "localhost", None).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(body.contains("first status report"), "{body}");
            let (_, metrics) = ask(admin(false), "GET", "/metrics", "localhost", None).await;
            assert!(
                metrics.contains("cutover_up{pipeline=\"shop\"} 1"),
                "{metrics}"
            );
            assert!(
                !metrics.contains("cutover_ready"),
                "no report yet: {metrics}"
            );
        }
    }
}
