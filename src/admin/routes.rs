//! The admin server's routes (see the table in [`super`]): reads of the running pipeline, and
//! the actions behind the token layer.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::metrics::{phase_name, render_metrics};
use super::{json, text, Admin, CONSOLE, STALE_SAMPLE, SWITCH_FRESH};
use crate::pipeline::Command;
use crate::status::Phase;

/// Every route, behind the guard; the actions behind the token too.
pub(super) fn router(admin: Admin) -> Router {
    // Actions change the run: each needs the admin token, checked once, here.
    let actions = Router::new()
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .route("/api/verify", post(verify_now))
        .route("/api/rate", post(set_rate))
        .route("/api/resnapshot", post(resnapshot))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            super::require_token,
        ));
    Router::new()
        .route("/", get(console))
        .route("/api/live", get(live))
        .route("/api/switch", get(switch_record))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .merge(actions)
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            super::guard,
        ))
        .with_state(admin)
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
    json(StatusCode::OK, &admin.live_view())
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
