//! The running pipeline's admin server as the other commands reach it: one small HTTP/1.1
//! client (`cutover status` reads the live view, `cutover resnapshot` posts an action), and the
//! live view's lines in `cutover status`. The server itself is `crate::admin`.

use std::net::SocketAddr;
use std::time::Duration;

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
pub async fn fetch(listen: SocketAddr) -> Option<serde_json::Value> {
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
pub fn lines(live: &serde_json::Value) -> Vec<String> {
    let mut lines = vec![format!(
        "running: {} (live from the pipeline's admin server)",
        live["phase"].as_str().unwrap_or("?")
    )];
    for t in live["tables"].as_array().into_iter().flatten() {
        if t["done"].as_bool() == Some(true) {
            continue;
        }
        let eta = t["eta_seconds"]
            .as_f64()
            .map_or("?".to_string(), |s| format!("{s:.0} s"));
        lines.push(format!(
            "  copying {}: {} of ~{} rows, {:.0} rows/s, ETA {eta}",
            t["name"].as_str().unwrap_or("?"),
            t["rows_copied"],
            t["rows_estimate"],
            t["rows_per_second"].as_f64().unwrap_or(0.0),
        ));
    }
    for s in live["sinks"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  sink {}: {} bytes ({:.1} s) behind, {} changes applied this run{}",
            s["name"].as_str().unwrap_or("?"),
            s["lag_bytes"],
            s["lag_seconds"].as_f64().unwrap_or(0.0),
            s["changes_applied"],
            if s["paused"].as_bool() == Some(true) {
                ", PAUSED"
            } else {
                ""
            }
        ));
    }
    lines
}
