//! The running pipeline's live view ([`LiveView`], what `GET /api/live` serves and the status
//! report embeds), and the admin server as the other commands reach it: one small HTTP/1.1
//! client (`cutover status` reads the live view, `cutover resnapshot` posts an action), and the
//! live view's lines in `cutover status`. The server itself is `crate::admin`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// This process's live view: phase, each table's copy with rate and ETA, each sink's lag, and
/// the lag history. The server serializes it and `cutover status` deserializes the same type;
/// the fields' order is the JSON's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveView {
    pub pipeline: String,
    /// `starting`, `snapshot`, `streaming` or `stopping`.
    pub phase: String,
    pub reader_paused: bool,
    /// The source's WAL position at the last sample, as an LSN.
    pub source_wal: String,
    /// The slot's confirmed position, as an LSN.
    pub confirmed: String,
    pub lag_bytes: u64,
    pub tables: Vec<LiveTable>,
    pub sinks: Vec<LiveSink>,
    /// One sample of every sink's lag every few seconds, oldest first.
    pub history: Vec<LagSample>,
}

/// A table's copy in the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveTable {
    pub name: String,
    pub rows_copied: u64,
    pub rows_estimate: u64,
    pub bytes_copied: u64,
    pub done: bool,
    /// A split table's ranges, numbered from 1.
    pub ranges: Vec<LiveRange>,
    /// Rows per second over the last sample.
    pub rows_per_second: f64,
    /// Seconds left at that rate; `None` when done or not moving.
    pub eta_seconds: Option<f64>,
}

/// One range of a split table's copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRange {
    pub range: usize,
    pub rows_copied: u64,
    pub bytes_copied: u64,
    pub done: bool,
}

/// A sink in the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSink {
    pub name: String,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub changes_applied: u64,
    pub queue_bytes: u64,
    pub dead_letters: u64,
    pub paused: bool,
}

/// One sample of every sink's lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    /// Unix time, seconds.
    pub at: f64,
    /// Per sink, in the order of the status: (bytes, seconds) behind.
    pub sinks: Vec<(u64, f64)>,
}

/// Where a server listening on `listen` is reached: a wildcard address on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Sends one request (`method path`, with `token` as a bearer token when given) to the
/// `cutover run` serving at `listen` (a wildcard address is asked on loopback) and returns the
/// status line's code and the body, or why there is no answer within `wait`.
async fn request(
    listen: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = reachable(listen);
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            format!("no cutover run answers at {addr} ({e}): start `cutover run` for this pipeline first")
        })?;
        let authorization = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let length = if method == "POST" {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}{length}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("cannot read the answer of {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{addr} did not answer in HTTP/1.1"))?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(wait, ask).await.unwrap_or_else(|_| {
        Err(format!(
            "the pipeline at {addr} did not answer within {} s",
            wait.as_secs()
        ))
    })
}

/// The live view (`GET /api/live`) of a `cutover run` serving at `listen`, if one answers
/// within a second.
pub async fn fetch(listen: SocketAddr) -> Option<LiveView> {
    match request(listen, "GET", "/api/live", None, Duration::from_secs(1)).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Posts an action to a `cutover run`'s admin server at `listen` with the admin `token`;
/// returns the server's answer, or why there is none.
pub async fn post_action(listen: SocketAddr, path: &str, token: &str) -> Result<String, String> {
    let (code, body) = request(listen, "POST", path, Some(token), Duration::from_secs(30)).await?;
    if code == 200 {
        Ok(body.trim().to_string())
    } else {
        Err(format!(
            "the pipeline at {} refused: {}",
            reachable(listen),
            body.trim()
        ))
    }
}

/// Lines for `cutover status` from a running pipeline's live view: its phase, each table being
/// copied with rate and ETA, each sink's lag and changes applied.
pub fn lines(live: &LiveView) -> Vec<String> {
    let mut lines = vec![format!(
        "running: {} (live from the pipeline's admin server)",
        live.phase
    )];
    for t in live.tables.iter().filter(|t| !t.done) {
        let eta = t
            .eta_seconds
            .map_or("?".to_string(), |s| format!("{s:.0} s"));
        lines.push(format!(
            "  copying {}: {} of ~{} rows, {:.0} rows/s, ETA {eta}",
            t.name, t.rows_copied, t.rows_estimate, t.rows_per_second,
        ));
    }
    for s in &live.sinks {
        lines.push(format!(
            "  sink {}: {} bytes ({:.1} s) behind, {} changes applied this run{}",
            s.name,
            s.lag_bytes,
            s.lag_seconds,
            s.changes_applied,
            if s.paused { ", PAUSED" } else { "" }
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LiveView {
        LiveView {
            pipeline: "shop".into(),
            phase: "snapshot".into(),
            reader_paused: false,
            source_wal: "0/3000060".into(),
            confirmed: "0/3000000".into(),
            lag_bytes: 96,
            tables: vec![
                LiveTable {
                    name: "public.orders".into(),
                    rows_copied: 250,
                    rows_estimate: 1000,
                    bytes_copied: 8192,
                    done: false,
                    ranges: vec![LiveRange {
                        range: 1,
                        rows_copied: 250,
                        bytes_copied: 8192,
                        done: false,
                    }],
                    rows_per_second: 50.0,
                    eta_seconds: Some(15.0),
                },
                LiveTable {
                    name: "public.items".into(),
                    rows_copied: 10,
                    rows_estimate: 10,
                    bytes_copied: 100,
                    done: true,
                    ranges: Vec::new(),
                    rows_per_second: 0.0,
                    eta_seconds: None,
                },
            ],
            sinks: vec![LiveSink {
                name: "target".into(),
                lag_bytes: 96,
                lag_seconds: 0.3,
                changes_applied: 7,
                queue_bytes: 0,
                dead_letters: 0,
                paused: true,
            }],
            history: vec![LagSample {
                at: 1.5,
                sinks: vec![(96, 0.3)],
            }],
        }
    }

    #[test]
    fn the_live_view_reads_back_as_it_was_written() {
        let json = serde_json::to_string(&view()).unwrap();
        assert_eq!(serde_json::from_str::<LiveView>(&json).unwrap(), view());
        // The console reads these names.
        for key in [
            "\"rows_per_second\"",
            "\"eta_seconds\"",
            "\"history\"",
            "\"lag_seconds\"",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
    }

    #[test]
    fn status_shows_the_tables_still_copying_and_every_sink() {
        assert_eq!(
            lines(&view()),
            [
                "running: snapshot (live from the pipeline's admin server)",
                "  copying public.orders: 250 of ~1000 rows, 50 rows/s, ETA 15 s",
                "  sink target: 96 bytes (0.3 s) behind, 7 changes applied this run, PAUSED",
            ]
        );
    }
}
