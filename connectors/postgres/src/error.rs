//! The one place where PostgreSQL errors become cutover error kinds.

use cutover_core::{ConnectorError, ErrorKind};
use tokio_postgres::error::SqlState;

/// Classifies a driver error by SQLSTATE (or by the absence of one: I/O and closed connections
/// are retryable) and prefixes `context`.
pub fn classify(err: tokio_postgres::Error, context: &str) -> ConnectorError {
    let (kind, detail, hint) = match err.as_db_error() {
        Some(db) => {
            let code = db.code();
            let (kind, hint) = kind_of(code);
            let mut detail = format!("{} (SQLSTATE {})", db.message(), code.code());
            if let Some(d) = db.detail() {
                detail.push_str(&format!("; {d}"));
            }
            (kind, detail, hint)
        }
        None => {
            let text = err.to_string();
            let io = std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default();
            let detail = if io.is_empty() {
                text
            } else {
                format!("{text}: {io}")
            };
            let hint = if detail.contains("refused") || detail.contains("timed out") {
                Some("check that the server is running and that host and port are right")
            } else {
                None
            };
            (ErrorKind::Retryable, detail, hint)
        }
    };
    let mut e = ConnectorError::new(kind, format!("{context}: {detail}."));
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e.with_source(err)
}

fn kind_of(code: &SqlState) -> (ErrorKind, Option<&'static str>) {
    let c = code.code();
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        return (
            ErrorKind::Fatal,
            Some("check the user name and password in the connection string"),
        );
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return (
            ErrorKind::Fatal,
            Some("grant the user the privilege named above (see `cutover check`)"),
        );
    }
    if *code == SqlState::INVALID_CATALOG_NAME {
        return (
            ErrorKind::Fatal,
            Some("create the database or fix its name in the connection string"),
        );
    }
    match &c[..2] {
        // connection exceptions, insufficient resources, operator intervention, system errors
        "08" | "53" | "57" | "58" => (ErrorKind::Retryable, None),
        // serialization failure, deadlock
        "40" => (ErrorKind::Retryable, None),
        // lock not available
        "55" if c == "55P03" => (ErrorKind::Retryable, None),
        // data exceptions and integrity violations: this change can never apply as it is
        "22" | "23" => (ErrorKind::Poison, None),
        _ => (ErrorKind::Fatal, None),
    }
}

/// Classifies a replication-transport error.
pub fn classify_replication(err: pgwire_replication::PgWireError, context: &str) -> ConnectorError {
    let kind = if err.is_auth() {
        ErrorKind::Fatal
    } else if err.is_transient() || err.is_io() {
        ErrorKind::Retryable
    } else {
        ErrorKind::Fatal
    };
    let mut e = ConnectorError::new(kind, format!("{context}: {err}."));
    if err.is_auth() {
        e = e.with_hint("check the user name and password in the source connection string");
    }
    e.with_source(err)
}
