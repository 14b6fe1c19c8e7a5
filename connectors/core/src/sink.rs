use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::change::{Row, StreamEvent};
use crate::error::Result;
use crate::position::{Checkpoint, Lsn};
use crate::schema::{TableName, TableSchema};

/// A sealed write to a target: completes when the data is written (and, at a transaction
/// boundary, durable, with the new checkpoint).
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<Option<Checkpoint>>> + Send>>;

/// What a sink has made durable, read back when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkState {
    /// The last source transaction applied, if streaming has applied any.
    pub checkpoint: Option<Checkpoint>,
    /// Tables whose snapshot copy is complete, with the LSN of the snapshot they were copied at.
    /// A streamed change to such a table applies only if its commit LSN is at or past that LSN.
    /// Tables not listed need a snapshot copy.
    pub copied_tables: BTreeMap<TableName, Lsn>,
}

/// A target store.
///
/// Contract: delivery is at-least-once. After a crash the runtime replays from the lowest
/// checkpoint over all sinks, so [`Sink::apply`] must be idempotent by row key. The runtime never
/// hands a sink a transaction at or before the sink's own checkpoint, nor a change to a table
/// whose snapshot copy already contains it. Changes of one key arrive in source order and must be
/// applied in that order. A sink reports a checkpoint only when everything up to it is durable in
/// the target.
#[async_trait]
pub trait Sink: Send {
    /// A short name for logs and status (`target`, `kafka-orders`).
    fn name(&self) -> &str;

    /// Prepares the target for these tables (creating or validating them) and reads back what it
    /// has made durable before.
    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState>;

    /// Starts the snapshot copy of one table taken at `snapshot_lsn`. Nothing it writes is
    /// visible as "copied" until [`TableCopy::finish`] returns; a copy that never finishes is
    /// started again from scratch after a restart.
    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>>;

    /// Takes the next stream event. The sink may buffer; it must not split a source transaction
    /// across two target commits.
    async fn apply(&mut self, event: StreamEvent) -> Result<()>;

    /// Takes several stream events in order; the same as calling [`Sink::apply`] for each, in
    /// one call (sinks override it to avoid per-event overhead).
    async fn apply_all(&mut self, events: Vec<StreamEvent>) -> Result<()> {
        for event in events {
            self.apply(event).await?;
        }
        Ok(())
    }

    /// Seals everything applied since the last seal into one write, and returns that write to
    /// run. The runtime runs at most one write of a sink at a time, in seal order, and may apply
    /// further events while it runs. When the last event applied before sealing was a `Commit`,
    /// the write makes everything durable and returns the new checkpoint; in the middle of a
    /// source transaction it writes without committing and returns `None`.
    fn seal(&mut self) -> PendingWrite;

    /// Bytes applied and not yet sealed; the runtime seals a write when this passes its batch bound.
    fn buffered_bytes(&self) -> usize;
}

/// One table's snapshot copy into one sink.
#[async_trait]
pub trait TableCopy: Send {
    /// Writes rows (in the table's column order). Rows of one copy never repeat a key.
    async fn write(&mut self, rows: &[Row]) -> Result<()>;

    /// Makes the copy durable and records the table as copied at its snapshot LSN, atomically.
    /// Returns the number of rows written.
    async fn finish(self: Box<Self>) -> Result<u64>;
}
