use std::sync::Arc;

use bytes::Bytes;

use crate::position::{Lsn, Position};
use crate::schema::TableSchema;

/// One column value as it travels through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not touch: the source did not send it and the target must
    /// keep what it has. Never written as a value.
    Unchanged,
    /// The value in its type's PostgreSQL binary send format.
    Binary(Bytes),
}

impl Value {
    /// Bytes this value holds, for memory accounting.
    pub fn size(&self) -> usize {
        match self {
            Value::Binary(b) => b.len(),
            _ => 0,
        }
    }
}

/// A row's values in the column order of its [`TableSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Approximate heap bytes, for channel byte bounds.
    pub fn size(&self) -> usize {
        self.0.iter().map(|v| v.size() + 16).sum::<usize>() + 24
    }
}

/// What happened to one row (or, for `Truncate`, a whole table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        row: Row,
    },
    /// `old_key` is present when the key changed (or the table has REPLICA IDENTITY FULL); it then
    /// holds the old key values (or the whole old row). Values of `row` may be
    /// [`Value::Unchanged`].
    Update {
        old_key: Option<Row>,
        row: Row,
    },
    /// `key` holds the key columns (other columns are NULL unless REPLICA IDENTITY FULL).
    Delete {
        key: Row,
    },
    Truncate,
}

/// A change with the table it applies to and its position.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub position: Position,
    pub table: Arc<TableSchema>,
    pub change: Change,
}

impl ChangeEvent {
    /// Approximate heap bytes, for channel byte bounds.
    pub fn size(&self) -> usize {
        64 + match &self.change {
            Change::Insert { row } | Change::Delete { key: row } => row.size(),
            Change::Update { old_key, row } => row.size() + old_key.as_ref().map_or(0, Row::size),
            Change::Truncate => 0,
        }
    }
}

/// The source's change stream: whole transactions, in commit order, bracketed by `Begin` and
/// `Commit`.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Begin {
        commit_lsn: Lsn,
        xid: u32,
        /// Commit time, microseconds since the Unix epoch (the same as the `Commit`'s).
        commit_time_micros: i64,
    },
    Change(ChangeEvent),
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
}

impl StreamEvent {
    /// Approximate heap bytes, for channel byte bounds.
    pub fn size(&self) -> usize {
        match self {
            StreamEvent::Change(c) => c.size(),
            _ => 48,
        }
    }
}
