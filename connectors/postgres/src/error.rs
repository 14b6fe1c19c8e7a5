//! The one place where PostgreSQL errors become cutover error kinds, and the replication
//! session's own errors (`ReplicationError`, read by `replication.rs`).

use cutover_core::{ConnectorError, ErrorKind};
use tokio_postgres::error::SqlState;

/// Why a replication session failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// The server answered with an ErrorResponse.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The TLS handshake failed or the certificate was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication was refused or cannot be done.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(String),
    /// The server sent something the protocol does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ReplicationError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            ReplicationError::Auth(_)
            | ReplicationError::Tls(_)
            | ReplicationError::Io(_)
            | ReplicationError::Protocol(_) => None,
        }
    }
}

impl From<std::io::Error> for ReplicationError {
    fn from(e: std::io::Error) -> Self {
        ReplicationError::Io(e.to_string())
    }
}

/// An ErrorResponse's fields that cutover shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

/// What recovers a slot that was lost or dropped.
pub const RECOVER_FIX: &str =
    "run `cutover recover PIPELINE`: it drops the lost slot and marks every table to be \
     copied again; the next `cutover run` copies them into the targets under a new slot (replacing \
     the rows on PostgreSQL targets in one transaction per table) and streams on";

/// Classifies a driver error by SQLSTATE (or by the absence of one: I/O and closed connections
/// are retryable) and prefixes `context`.
pub fn classify(err: tokio_postgres::Error, context: &str) -> ConnectorError {
    let (kind, detail, hint) = match err.as_db_error() {
        Some(db) => {
            let code = db.code();
            let (kind, mut hint) = kind_of(code);
            if db.message().contains("no encryption") {
                hint = Some("the server accepts only TLS connections here: add sslmode=require (or verify-full) to the connection string");
            }
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
            if let Some(refused) = tls_refusal(&err) {
                let hint = crate::tls::refused_hint(&refused);
                (ErrorKind::Fatal, detail, Some(hint))
            } else if detail.contains("server does not support TLS") {
                (
                    ErrorKind::Fatal,
                    detail,
                    Some("the server does not offer TLS (ssl = off): turn ssl on, or use sslmode=prefer"),
                )
            } else {
                let hint = if detail.contains("refused") || detail.contains("timed out") {
                    Some("check that the server is running and that host and port are right")
                } else {
                    None
                };
                (ErrorKind::Retryable, detail, hint)
            }
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

/// The message of a TLS handshake refused by cutover's certificate check, if that is the error.
fn tls_refusal(err: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<crate::tls::TlsRefused>() {
            return Some(r.0.clone());
        }
        source = s.source();
    }
    None
}

/// Classifies a replication-connection error. A server error is classified by its SQLSTATE as
/// on the SQL path (a terminated walsender, 57P01, or a server shutting down is retryable), except
/// that no replication error is poison, and WAL the slot needs that is gone (58P01) is fatal.
pub fn classify_replication(err: ReplicationError, context: &str) -> ConnectorError {
    let text = err.to_string();
    let (kind, hint) = if text.contains("has been invalidated") {
        (ErrorKind::Fatal, Some(RECOVER_FIX))
    } else {
        match &err {
            ReplicationError::Tls(m) => (ErrorKind::Fatal, Some(crate::tls::refused_hint(m))),
            ReplicationError::Auth(_) => (
                ErrorKind::Fatal,
                Some("check the user name and password in the source connection string"),
            ),
            ReplicationError::Io(_) => (ErrorKind::Retryable, None),
            ReplicationError::Protocol(_) => (ErrorKind::Fatal, None),
            ReplicationError::Server(e) => {
                let code = SqlState::from_code(&e.code);
                if code == SqlState::UNDEFINED_FILE {
                    (
                        ErrorKind::Fatal,
                        Some("the WAL this slot needs was removed from the source (max_slot_wal_keep_size, or the slot was recreated): copy the tables again under a new slot (cutover teardown --target-state PIPELINE, empty the targets, run again)"),
                    )
                } else {
                    match kind_of(&code) {
                        (ErrorKind::Poison, hint) => (ErrorKind::Fatal, hint),
                        other => other,
                    }
                }
            }
        }
    };
    let mut e = ConnectorError::new(kind, format!("{context}: {text}."));
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e.with_source(err)
}

#[cfg(test)]
mod tests {
    use super::ServerError;
    use super::*;
    fn server(message: &str, code: &str) -> ReplicationError {
        ReplicationError::Server(ServerError {
            code: code.into(),
            message: message.into(),
            detail: None,
        })
    }

    fn kind(message: &str, code: &str) -> ErrorKind {
        classify_replication(server(message, code), "replication").kind
    }

    #[test]
    fn replication_server_errors_are_classified_by_their_sqlstate() {
        let admin = "terminating connection due to administrator command";
        assert_eq!(kind(admin, "57P01"), ErrorKind::Retryable);
        assert_eq!(
            kind("the database system is shutting down", "57P03"),
            ErrorKind::Retryable
        );
        assert_eq!(
            kind("replication slot \"x\" does not exist", "42704"),
            ErrorKind::Fatal
        );
        let gone = "requested WAL segment 000000010000000000000003 has already been removed";
        assert_eq!(kind(gone, "58P01"), ErrorKind::Fatal);
        assert_eq!(kind("invalid input syntax", "22P02"), ErrorKind::Fatal);
        let closed = ReplicationError::Io("the server closed the replication connection".into());
        assert_eq!(classify_replication(closed, "r").kind, ErrorKind::Retryable);
        let refused = ReplicationError::Auth("password authentication failed".into());
        assert_eq!(classify_replication(refused, "r").kind, ErrorKind::Fatal);
    }
}
