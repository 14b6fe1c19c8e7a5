//! The MongoDB sink: one collection per table, one document per row, keyed by `_id`.
//!
//! Rows become documents as [`mapping`] describes: `_id` from the row key, every column by name.
//! Changes are applied with ordered client-level `bulkWrite` commands (MongoDB 8.0 or later), in
//! the order they were buffered: an insert or an update becomes a replace (upsert) of the whole
//! document, an update that did not send a TOAST value sets only the columns it sent (`$set`,
//! upsert), an update that changed the key deletes the old `_id` and writes the new one (reading
//! the old document first when the update left a TOAST value out), a delete deletes by `_id`, a
//! truncate deletes every document of the collection. All of these are idempotent, so a replay
//! after a crash (delivery is at-least-once) leaves the same documents.
//!
//! MongoDB does not apply a source transaction atomically here: each document changes
//! atomically, and a reader may see part of a source transaction until the rest is written.
//!
//! The sink's state is one document in the collection `cutover_state` of the same database, with
//! `_id` `"<pipeline>/<sink name>"`: the last source transaction applied and the tables whose
//! snapshot copy is complete ([`cutover_core::SinkState`] as JSON text, field `state`), and the
//! copies started and not finished (field `copying`). It is saved with write concern `majority`
//! and journaling, after the data it covers is written, so a checkpoint is reported only once
//! everything up to it is durable.
//!
//! A table's collection must hold nothing cutover did not write before its snapshot copy: `open`
//! refuses it otherwise. A copy that did not finish is taken over by the next copy of the same
//! snapshot, or emptied before a copy of a newer snapshot (it may hold rows deleted since).

mod batch;
mod error;
pub mod mapping;
mod sink;
pub mod target;
pub mod verify;

use std::fmt;

use cutover_core::naming::Template;

pub use sink::{replay_dead_letters, MongoSink};

/// The collection that holds each sink's state document, in the sink's database.
pub(crate) const STATE_COLLECTION: &str = "cutover_state";

/// How a MongoDB sink connects and where it writes.
#[derive(Clone)]
pub struct MongoSinkOptions {
    /// The sink's name, for logs and as part of its state document's `_id`.
    pub name: String,
    /// The pipeline's name, the other part of the state document's `_id`.
    pub pipeline: String,
    /// A `mongodb://` or `mongodb+srv://` connection string. It may hold a password: the sink
    /// never prints it (messages name servers by host and port; `Debug` shows `***`).
    pub url: String,
    /// The database written to (documents and the state document).
    pub database: String,
    /// The collection name of each table (`{pipeline}`, `{schema}`, `{table}`); `$` and NUL in
    /// the substituted names become `_`.
    pub collection: Template,
    /// Where writes the server refuses for good (a collection validator, a document over 16
    /// MiB) are parked; `None`: such a write stops the sink.
    pub dead_letter_file: Option<std::path::PathBuf>,
    /// Streams the other way after a switch: the state document is this direction's own
    /// (see [`cutover_core::TargetContext::reverse`]).
    pub reverse: bool,
    /// After a switch of direction: every collection is complete up to this position, so
    /// documents the sink has no copy record of are taken over, not refused (see
    /// [`cutover_core::TargetContext::adopt_at`]).
    pub adopt_at: Option<cutover_core::Lsn>,
    /// Fed by `cutover apply` (see [`cutover_core::TargetContext::applying`]): collections
    /// are never refused for holding documents.
    pub applying: bool,
}

impl fmt::Debug for MongoSinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoSinkOptions")
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .field("url", &error::redacted_url(&self.url))
            .field("database", &self.database)
            .field("collection", &self.collection.as_str())
            .finish()
    }
}

/// The longest namespace (`database.collection`) MongoDB accepts, in bytes.
pub(crate) const MAX_NAMESPACE_BYTES: usize = 255;

/// Checks a collection name MongoDB would refuse, or that cutover keeps for itself, so that the
/// configuration can be refused before anything starts. The error says what is wrong and the fix.
pub fn check_collection_name(name: &str) -> Result<(), String> {
    let fix =
        "Fix: change the sink's collection template (placeholders {pipeline}, {schema}, {table})";
    let problem = if name.is_empty() {
        "is empty".to_string()
    } else if name.contains('$') {
        "contains '$', which MongoDB does not allow in collection names".to_string()
    } else if name.contains('\0') {
        "contains a NUL character".to_string()
    } else if name.starts_with('.') {
        "starts with '.'".to_string()
    } else if name.starts_with("system.") {
        "starts with \"system.\", which MongoDB keeps for its own collections".to_string()
    } else if name == STATE_COLLECTION {
        format!("is {STATE_COLLECTION:?}, the collection cutover keeps its state in")
    } else if name.len() >= MAX_NAMESPACE_BYTES {
        format!(
            "is {} bytes long; MongoDB allows at most {MAX_NAMESPACE_BYTES} bytes for database and collection name together",
            name.len()
        )
    } else {
        return Ok(());
    };
    Err(format!("the collection name {name:?} {problem}. {fix}."))
}

/// Checks a database name MongoDB would refuse.
pub(crate) fn check_database_name(name: &str) -> Result<(), String> {
    let fix = "Fix: set the sink's database to a name of letters, digits, '_' and '-'";
    let problem = if name.is_empty() {
        "is empty".to_string()
    } else if let Some(c) = name.chars().find(|c| "/\\. \"$*<>:|?\0".contains(*c)) {
        format!("contains {c:?}, which MongoDB does not allow in database names")
    } else if name.len() >= 64 {
        format!("is {} bytes long; MongoDB allows at most 63", name.len())
    } else {
        return Ok(());
    };
    Err(format!("the database name {name:?} {problem}. {fix}."))
}

/// Replaces the characters MongoDB refuses in collection names (`$` and NUL) with `_`.
pub(crate) fn clean_name_part(part: &str) -> String {
    cutover_core::naming::replace_disallowed(part, |c| c != '$' && c != '\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_mongodb_refuses_are_refused_with_a_fix() {
        assert!(check_collection_name("shop.public.orders").is_ok());
        for bad in ["", "a$b", "a\0b", ".a", "system.users", "cutover_state"] {
            let e = check_collection_name(bad).unwrap_err();
            assert!(e.contains("Fix:"), "{e}");
        }
        assert!(check_collection_name(&"x".repeat(300))
            .unwrap_err()
            .contains("300 bytes"));
        assert!(check_database_name("shop_1").is_ok());
        for bad in ["", "a.b", "a b", "a/b", &"d".repeat(64)] {
            assert!(check_database_name(bad).is_err(), "{bad}");
        }
        assert_eq!(clean_name_part("a$b\0c"), "a_b_c");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let options = MongoSinkOptions {
            name: "docs".into(),
            pipeline: "shop".into(),
            url: "mongodb://app:hunter2@db:27017/?authSource=admin".into(),
            database: "shop".into(),
            collection: Template::parse("{table}").unwrap(),
            dead_letter_file: None,
            reverse: false,
            adopt_at: None,
            applying: false,
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("app:***@db:27017"),
            "{shown}"
        );
    }
}
