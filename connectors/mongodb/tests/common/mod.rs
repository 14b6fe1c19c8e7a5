//! What the MongoDB crate's tests share: the server's address and unique database names.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::Arc;

use cutover_core::{Change, ChangeEvent, Column, Lsn, Position, StreamEvent, TableSchema};

/// The test server's url: `CUTOVER_TEST_MONGO_URL`, else the env file that
/// `scripts/services.sh start` wrote. Panics with the command to run when neither is there.
pub fn url() -> String {
    if let Ok(url) = std::env::var("CUTOVER_TEST_MONGO_URL") {
        return url;
    }
    let file = std::env::var("CUTOVER_SERVICES_DIR")
        .map(|d| std::path::PathBuf::from(d).join("env"))
        .unwrap_or_else(|_| "/tmp/cutover-services/env".into());
    std::fs::read_to_string(file)
        .ok()
        .and_then(|env| {
            env.lines().find_map(|line| {
                line.strip_prefix("export CUTOVER_TEST_MONGO_URL=")
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "CUTOVER_TEST_MONGO_URL is not set: run scripts/test.sh, which starts the servers \
                 (or set it to mongodb://127.0.0.1:PORT/?directConnection=true)"
            )
        })
}

/// A database name no other test (or test run) uses, starting with `prefix`.
pub fn unique_database(prefix: &str, tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}_{}_{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn column(name: &str, type_oid: u32, key: bool) -> Column {
    Column::new(name, type_oid, key)
}

/// One source transaction committed at `lsn`.
pub fn txn(lsn: u64, table: &Arc<TableSchema>, changes: Vec<Change>) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::Begin {
        commit_lsn: Lsn(lsn),
        xid: lsn as u32,
        commit_time_micros: 0,
    }];
    for (ordinal, change) in changes.into_iter().enumerate() {
        events.push(StreamEvent::Change(ChangeEvent {
            position: Position {
                commit_lsn: Lsn(lsn),
                ordinal: ordinal as u32,
            },
            table: table.clone(),
            change,
        }));
    }
    events.push(StreamEvent::Commit {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 1),
        commit_time_micros: 0,
    });
    events
}
