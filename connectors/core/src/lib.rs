//! The vocabulary every cutover connector speaks: positions in the source's log, table schemas,
//! row values, change events, the [`Source`] and [`Sink`] contracts and the error kinds.
//!
//! The rules the contracts encode (see `docs/architecture.md`):
//! - every change travels with its [`Position`]; a sink reports a [`Checkpoint`] only for whole
//!   source transactions it has made durable;
//! - delivery is at-least-once, so every sink applies idempotently by primary key;
//! - errors are classified once, at the connector boundary, into [`ErrorKind`]s.

mod change;
pub mod datum;
pub mod dead_letters;
pub mod encode;
pub mod envelope;
mod error;
pub mod event_sink;
pub mod inbound;
pub mod naming;
pub mod outbox;
mod position;
pub mod ranges;
mod schema;
pub mod secrets;
mod sink;
mod source;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transform;
pub mod verify;

pub use change::{Change, ChangeEvent, Row, StreamEvent, Value};
pub use error::{ConnectorError, ErrorKind, Result};
pub use position::{Checkpoint, Lsn, ParseLsnError, Position};
pub use schema::{quote_ident, Column, TableName, TableSchema};
pub use sink::{PendingWrite, Sink, SinkState, StuckReport, TableCopy};
pub use source::{Source, StreamItem};
pub use target::{BuildContext, Target, TargetConfig, TargetContext};
