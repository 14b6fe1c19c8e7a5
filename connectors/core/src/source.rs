use async_trait::async_trait;

use crate::change::StreamEvent;
use crate::error::Result;
use crate::position::Lsn;
use crate::schema::TableSchema;

/// One item of a source's change stream.
#[derive(Debug)]
pub enum StreamItem {
    /// A transaction boundary or change, in commit order.
    Event(StreamEvent),
    /// The source is idle up to `wal_end`: every transaction that committed before it has been
    /// delivered. When nothing is in flight the runtime may confirm up to it.
    Idle { wal_end: Lsn },
}

/// A change stream from a replication log.
///
/// Contract: transactions arrive whole and in commit order, starting at or after the position
/// the stream was opened at; after a restart, transactions past the last
/// [`Source::confirm`]ed position are delivered again.
#[async_trait]
pub trait Source: Send {
    /// The next item; `None` when the stream ended cleanly.
    async fn next(&mut self) -> Result<Option<StreamItem>>;

    /// Tells the source that every sink has made everything up to `lsn` durable, so the log up
    /// to there may be released. Only ever called with transaction end positions (or idle WAL
    /// ends with nothing in flight), and never moving backwards.
    fn confirm(&mut self, lsn: Lsn);

    /// Learns the definition of a table added to the stream while it runs, before its first
    /// change arrives. Sources that carry definitions in the stream need nothing here.
    fn learn_table(&mut self, table: std::sync::Arc<TableSchema>) {
        let _ = table;
    }

    /// Ends the stream cleanly, after the last [`Source::confirm`].
    async fn shutdown(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
