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
/// boundary, committed), with the newest checkpoint that is now durable, if any.
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<Option<Checkpoint>>> + Send>>;

/// What a sink says of a write that has not finished (see [`Sink::stuck`]).
pub type StuckReport = Pin<Box<dyn Future<Output = String> + Send>>;

/// What a sink has made durable, read back when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkState {
    /// The last source transaction applied, if streaming has applied any.
    pub checkpoint: Option<Checkpoint>,
    /// Tables whose snapshot copy is complete, with the LSN of the snapshot they were copied at.
    /// A streamed change to such a table applies only if its commit LSN is at or past that LSN.
    /// Tables not listed need a snapshot copy.
    pub copied_tables: BTreeMap<TableName, Lsn>,
    /// Tables copied in key ranges under different snapshots (a split copy resumed after a
    /// crash), with the latest of those snapshots. The table is recorded at the earliest, so
    /// the stream replays from there onto ranges copied later, which already hold those
    /// changes; until it passes this position, an update that moves a row's key out of such a
    /// range while leaving a TOASTed value unsent names a row the target never had, and the
    /// stream fills the value from the source first (see `src/pipeline/settling.rs`).
    pub settling: BTreeMap<TableName, Lsn>,
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
pub trait Sink: Send + Sync {
    /// A short name for logs and status (`target`, `kafka-orders`).
    fn name(&self) -> &str;

    /// Lets go of the target's connections now, in the caller's task, for a sink that was only
    /// connected to be checked. Sinks whose client cleans up in a background task of its own
    /// on drop (one that could still be running when the process exits) end it here; the
    /// default does nothing.
    async fn close(self: Box<Self>) {}

    /// Prepares the target for these tables (creating or validating them) and reads back what it
    /// has made durable before.
    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState>;

    /// Prepares the target for a table that joined the pipeline while it streams (created on
    /// the source, or newly matching `source.tables`), as [`Sink::open`] does for its tables.
    /// The runtime calls it with no write in flight and outside a source transaction, before
    /// the table's copy and its first change. Sinks that set up a table on first sight need
    /// nothing here.
    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        let _ = table;
        Ok(())
    }

    /// Makes the next [`Sink::begin_copy`] of `table`, a table the sink has, replace the
    /// table's rows (`cutover resnapshot`): in the copy's transaction where the sink has one,
    /// before the copy's first row otherwise. Sinks whose copy already starts by clearing the
    /// table (a truncate message) need nothing here.
    async fn copy_again(&mut self, table: Arc<TableSchema>) -> Result<()> {
        let _ = table;
        Ok(())
    }

    /// Starts the snapshot copy of one table taken at `snapshot_lsn`. Nothing it writes is
    /// visible as "copied" until [`TableCopy::finish`] returns; a copy that never finishes is
    /// started again from scratch after a restart.
    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>>;

    /// Whether this sink can copy `table` range by range, recording each range durably with its
    /// rows ([`Sink::begin_range_copy`]); otherwise a split table reaches it through one
    /// [`Sink::begin_copy`] fed by every range.
    fn copies_ranges(&self, table: &TableName) -> bool {
        let _ = table;
        false
    }

    /// Where `table` stands among the tables this sink's foreign keys link: 0 for a table
    /// that references none of them, else one more than the deepest table it references. The
    /// snapshot copies (and commits) every table of one depth before the next, so a sink whose
    /// foreign keys are checked (a PostgreSQL target the role cannot make a replica) never
    /// takes a child row before its parent's. 0 where nothing is checked.
    fn copy_depth(&self, table: &TableName) -> usize {
        let _ = table;
        0
    }

    /// The ranges of split tables this sink has recorded as copied, read when it opened.
    fn copied_ranges(&self) -> BTreeMap<TableName, crate::ranges::RangesCopied> {
        BTreeMap::new()
    }

    /// Starts the copy of one key range of `table` taken at `snapshot_lsn`; its
    /// [`TableCopy::finish`] records the range (not the table) as copied, atomically with its
    /// rows. Called only when [`Sink::copies_ranges`] says yes.
    async fn begin_range_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
        range: crate::ranges::KeyRange,
    ) -> Result<Box<dyn TableCopy>> {
        let _ = (snapshot_lsn, range);
        Err(crate::ConnectorError::fatal(format!(
            "sink {} cannot copy {} by key range",
            self.name(),
            table.name
        )))
    }

    /// Records `table` as copied at `snapshot_lsn` once every range is, and forgets its range
    /// records, atomically. `snapshot_lsn` is the earliest of its ranges' snapshots: the stream
    /// from there brings every range to the same point.
    async fn finish_ranges(&self, table: &TableName, snapshot_lsn: Lsn, rows: u64) -> Result<()> {
        let _ = (snapshot_lsn, rows);
        Err(crate::ConnectorError::fatal(format!(
            "sink {} cannot copy {table} by key range",
            self.name()
        )))
    }

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
    /// the write commits everything and returns the newest checkpoint that is durable: the new
    /// one, or an earlier one (or `None`) while the target has not made it durable yet (see
    /// [`Sink::unsettled`]). In the middle of a source transaction it writes without committing.
    fn seal(&mut self) -> PendingWrite;

    /// Whether a write of this sink has committed a checkpoint it has not reported yet because
    /// the target has not made it durable (a target that commits without waiting for its own
    /// flush). The runtime then calls [`Sink::settle`] once the stream is quiet.
    fn unsettled(&self) -> bool {
        false
    }

    /// Makes every committed write durable and returns the newest checkpoint not reported yet.
    /// Called with no write in flight. Sinks whose commits are durable when they return have
    /// nothing to settle.
    fn settle(&mut self) -> PendingWrite {
        Box::pin(async { Ok(None) })
    }

    /// Bytes applied and not yet sealed; the runtime seals a write when this passes its batch bound.
    fn buffered_bytes(&self) -> usize;

    /// Called while a write has run for long without finishing: what the sink's session waits
    /// on, in one line for the log (for a database: its wait event, the lock it waits for and
    /// who holds it), never a value of the data or a secret. With `give_up`, the runtime is
    /// about to abandon the write and retry; the sink also ends the stuck session on the
    /// target, so the retry does not queue behind it. `None`: this sink has nothing to say,
    /// and the runtime still abandons the write at its deadline.
    fn stuck(&self, give_up: bool) -> Option<StuckReport> {
        let _ = give_up;
        None
    }

    /// Changes this sink has parked as dead letters since it was connected (rejected by the
    /// target for a reason retrying cannot fix). Sinks without a dead-letter store park
    /// nothing: a rejected change stops them.
    fn parked(&self) -> u64 {
        0
    }
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

impl SinkState {
    /// The state as a small JSON document, for sinks that keep it in a document store, a
    /// key-value bucket or a file: `{"checkpoint":{"commit_lsn":"0/1","end_lsn":"0/2"},
    /// "copied":[[["public","t"],"0/1"]]}`.
    pub fn to_json(&self) -> Vec<u8> {
        let checkpoint = self.checkpoint.map(|cp| {
            serde_json::json!({"commit_lsn": cp.commit_lsn.to_string(), "end_lsn": cp.end_lsn.to_string()})
        });
        let copied: Vec<serde_json::Value> = self
            .copied_tables
            .iter()
            .map(|(t, lsn)| serde_json::json!([[t.schema, t.name], lsn.to_string()]))
            .collect();
        serde_json::to_vec(&serde_json::json!({"checkpoint": checkpoint, "copied": copied}))
            .expect("a JSON value always serializes")
    }

    /// Reads a document written by [`SinkState::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let bad = |what: &str| {
            crate::ConnectorError::fatal(format!("the sink's saved state is damaged: {what}"))
                .with_hint("remove the saved state and copy the tables again (cutover teardown --target-state)")
        };
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let lsn = |v: &serde_json::Value| -> Result<Lsn> {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a position is not of the form 16/B374D848"))
        };
        let checkpoint = match &doc["checkpoint"] {
            serde_json::Value::Null => None,
            cp => Some(Checkpoint {
                commit_lsn: lsn(&cp["commit_lsn"])?,
                end_lsn: lsn(&cp["end_lsn"])?,
            }),
        };
        let mut copied_tables = BTreeMap::new();
        for entry in doc["copied"]
            .as_array()
            .ok_or_else(|| bad("no table list"))?
        {
            let (schema, name) = match (entry[0][0].as_str(), entry[0][1].as_str()) {
                (Some(s), Some(n)) => (s, n),
                _ => return Err(bad("a table name is not [schema, name]")),
            };
            copied_tables.insert(TableName::new(schema, name), lsn(&entry[1])?);
        }
        Ok(SinkState {
            checkpoint,
            copied_tables,
            settling: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let state = SinkState {
            checkpoint: Some(Checkpoint {
                commit_lsn: Lsn(5),
                end_lsn: Lsn(0x1_0000_0006),
            }),
            copied_tables: [(TableName::new("my.schema", "t\"x"), Lsn(3))].into(),
            ..SinkState::default()
        };
        assert_eq!(SinkState::from_json(&state.to_json()).unwrap(), state);
        assert_eq!(
            SinkState::from_json(&SinkState::default().to_json()).unwrap(),
            SinkState::default()
        );
        assert!(SinkState::from_json(b"{\"checkpoint\":{\"commit_lsn\":\"x\"}}").is_err());
    }
}
