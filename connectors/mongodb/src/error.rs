//! MongoDB driver errors as cutover's error kinds, and connection strings without their secrets.

use cutover_core::{ConnectorError, ErrorKind};
use mongodb::error::{
    Error, ErrorKind as DriverKind, WriteFailure, RETRYABLE_WRITE_ERROR,
    TRANSIENT_TRANSACTION_ERROR,
};

/// Server error codes that name a value the server refuses, whatever the retry: the change is
/// poison. Duplicate key (11000, 11001, 12582), document or key too large (10334, 17419, 17280),
/// document validation failed (121), a bad value or field name (2 BadValue, 52
/// DollarPrefixedFieldName, 53 InvalidIdField, 55 InvalidDBRef, 56 EmptyFieldName, 57
/// DottedFieldName, 66 ImmutableField), an update that would make a document invalid (28), and
/// one too deeply nested (15 Overflow).
const POISON_CODES: &[i32] = &[
    2, 15, 28, 52, 53, 55, 56, 57, 66, 121, 10334, 11000, 11001, 12582, 17280, 17419,
];

/// Server error codes that pass with time: the server is stepping down, shutting down,
/// unreachable or busy.
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 112, 117, 133, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 16500,
];

/// Server error codes for a missing privilege or failed login.
const AUTH_CODES: &[i32] = &[13, 18];

const AUTH_HINT: &str = "check the user name, password and authSource in the sink's url, and \
     that the user may read and write the sink's database (role readWrite)";

/// Classifies a driver error at the connector boundary. `what` says what failed (it names the
/// server by host and port, the database, the collection or the table, never the url). Network
/// errors, timeouts, failed server selection and errors labelled retryable are
/// [`ErrorKind::Retryable`]; failed logins and missing privileges are [`ErrorKind::Fatal`] with
/// a hint; a write the server refuses for its value (duplicate key, document too large,
/// validation failure) is [`ErrorKind::Poison`]; anything else is fatal. The driver error is
/// kept as the source.
pub(crate) fn classify(e: Error, what: &str) -> ConnectorError {
    let (kind, detail) = kind_of(&e);
    let mut err = ConnectorError::new(kind, format!("{what}: {detail}"));
    if AUTH_CODES.contains(&code(&e).unwrap_or(0))
        || matches!(*e.kind, DriverKind::Authentication { .. })
    {
        err = err.with_hint(AUTH_HINT);
    } else if matches!(*e.kind, DriverKind::IncompatibleServer { .. }) {
        err = err.with_hint(
            "cutover writes with the bulkWrite command of MongoDB 8.0: upgrade the server to 8.0 or later",
        );
    }
    err.with_source(e)
}

/// The most specific server error code an error carries.
fn code(e: &Error) -> Option<i32> {
    match &*e.kind {
        DriverKind::Command(c) => Some(c.code),
        DriverKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        DriverKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        DriverKind::BulkWrite(b) => b
            .write_errors
            .iter()
            .min_by_key(|(i, _)| **i)
            .map(|(_, w)| w.code)
            .or_else(|| b.write_concern_errors.first().map(|w| w.code)),
        _ => None,
    }
}

/// The driver errors in `e`'s chain, `e` first.
fn chain(e: &Error) -> impl Iterator<Item = &Error> {
    std::iter::successors(Some(e), |e| {
        std::error::Error::source(*e).and_then(|s| s.downcast_ref::<Error>())
    })
}

fn kind_of(e: &Error) -> (ErrorKind, String) {
    use ErrorKind::*;
    let labelled = e.contains_label(RETRYABLE_WRITE_ERROR)
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || e.contains_label("RetryableError");
    match &*e.kind {
        DriverKind::Io(io) => (Retryable, format!("network error: {io}")),
        DriverKind::ConnectionPoolCleared { message, .. }
        | DriverKind::ServerSelection { message, .. }
        | DriverKind::DnsResolve { message, .. } => (Retryable, message.clone()),
        DriverKind::Authentication { message, .. } => {
            (Fatal, format!("authentication failed: {message}"))
        }
        DriverKind::Write(WriteFailure::WriteError(w)) => {
            (by_code(w.code, labelled), describe(w.code, &w.message))
        }
        DriverKind::Write(WriteFailure::WriteConcernError(w)) => (
            Retryable,
            format!("write concern not met: {}", describe(w.code, &w.message)),
        ),
        DriverKind::Command(c) => (by_code(c.code, labelled), describe(c.code, &c.message)),
        DriverKind::BulkWrite(b) => {
            if let Some((_, w)) = b.write_errors.iter().min_by_key(|(i, _)| **i) {
                (by_code(w.code, labelled), describe(w.code, &w.message))
            } else if let Some(w) = b.write_concern_errors.first() {
                (
                    Retryable,
                    format!("write concern not met: {}", describe(w.code, &w.message)),
                )
            } else if let Some(cause) = chain(e).nth(1) {
                // The batch failed as a whole (lost connection...): the cause decides.
                kind_of(cause)
            } else {
                (if labelled { Retryable } else { Fatal }, e.kind.to_string())
            }
        }
        DriverKind::InvalidArgument { message, .. }
            if message.contains("exceeds the maximum size") =>
        {
            (
                Poison,
                format!("a document is too large for MongoDB: {message}"),
            )
        }
        other => (if labelled { Retryable } else { Fatal }, other.to_string()),
    }
}

fn by_code(code: i32, labelled: bool) -> ErrorKind {
    if POISON_CODES.contains(&code) {
        ErrorKind::Poison
    } else if labelled || RETRYABLE_CODES.contains(&code) {
        ErrorKind::Retryable
    } else {
        ErrorKind::Fatal
    }
}

fn describe(code: i32, message: &str) -> String {
    format!("{message} (code {code})")
}

/// The index (among the models sent) of the first write the server refused, for naming the
/// change in the error.
pub(crate) fn failed_write(e: &Error) -> Option<usize> {
    match &*e.kind {
        DriverKind::BulkWrite(b) => b.write_errors.keys().min().copied(),
        DriverKind::InvalidArgument { message, .. } => index_in_message(message),
        _ => None,
    }
}

/// The driver refuses a document too large to send with "operation at index N exceeds ...".
fn index_in_message(message: &str) -> Option<usize> {
    message
        .strip_prefix("operation at index ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The password in a `mongodb://user:password@host/...` string, as written and percent-decoded,
/// so that messages can be cleaned of it.
fn passwords(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let mut out = vec![password.to_string()];
    let decoded = percent_decode(password);
    if decoded != password {
        out.push(decoded);
    }
    out.retain(|p| !p.is_empty());
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with the password of `url` replaced by `***`.
pub(crate) fn redact(text: &str, url: &str) -> String {
    let mut text = text.to_string();
    for password in passwords(url) {
        text = text.replace(&password, "***");
    }
    text
}

/// The connection string with its password replaced by `***`.
pub(crate) fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?']).next().unwrap_or(rest);
            match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    let after = &rest[authority.len()..];
                    let password = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{password}@{hosts}{after}")
                }
                None => url.to_string(),
            }
        }
        None => redact(url, url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = "mongodb://app:s%40cret@db1:27017,db2/?authSource=admin";
        assert_eq!(
            redacted_url(url),
            "mongodb://app:***@db1:27017,db2/?authSource=admin"
        );
        assert_eq!(redact("bad s%40cret and s@cret", url), "bad *** and ***");
        assert_eq!(redacted_url("mongodb://h:1/"), "mongodb://h:1/");
        assert_eq!(redacted_url("mongodb://u@h/db"), "mongodb://u@h/db");
        assert_eq!(redact("nothing", "mongodb://u:@h"), "nothing");
    }

    #[test]
    fn driver_errors_are_classified() {
        let io: Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(classify(io, "x").kind, ErrorKind::Retryable);
        let io: Error = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
        let e = classify(io, "cannot write to db.c");
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert!(
            e.message.starts_with("cannot write to db.c: "),
            "{}",
            e.message
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            index_in_message("operation at index 3 exceeds the maximum size"),
            Some(3)
        );
        assert_eq!(index_in_message("something else"), None);
        assert_eq!(by_code(11000, false), ErrorKind::Poison);
        assert_eq!(by_code(121, true), ErrorKind::Poison);
        assert_eq!(by_code(91, false), ErrorKind::Retryable);
        assert_eq!(by_code(1234, true), ErrorKind::Retryable);
        assert_eq!(by_code(1234, false), ErrorKind::Fatal);
    }
}
