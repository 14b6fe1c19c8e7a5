//! A sink seen through its transform rules: it opens, copies and applies the transformed
//! tables, rows and changes, and reports progress under the source's table names.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{SinkRules, TableTransform, TransformSet};
use crate::change::{ChangeEvent, Row, StreamEvent};
use crate::error::{ConnectorError, Result};
use crate::position::Lsn;
use crate::ranges::{KeyRange, RangesCopied};
use crate::schema::{TableName, TableSchema};
use crate::sink::{PendingWrite, Sink, SinkState, TableCopy};

/// Wraps a sink so that everything it receives has passed the pipeline's and the sink's rules.
pub struct TransformSink {
    inner: Box<dyn Sink>,
    set: Arc<TransformSet>,
    rules: SinkRules,
    /// Per source table: the layout the transform was compiled for, and the transform (`None`
    /// when the table is excluded from this sink).
    compiled: HashMap<TableName, (Arc<TableSchema>, Option<Arc<TableTransform>>)>,
}

impl TransformSink {
    pub fn new(inner: Box<dyn Sink>, set: Arc<TransformSet>, rules: SinkRules) -> Self {
        TransformSink {
            inner,
            set,
            rules,
            compiled: HashMap::new(),
        }
    }

    /// The transform for `table` in its current layout, compiled again when the layout changed
    /// (a schema change on the source).
    fn transform(&mut self, table: &Arc<TableSchema>) -> Result<Option<Arc<TableTransform>>> {
        if let Some((layout, t)) = self.compiled.get(&table.name) {
            if Arc::ptr_eq(layout, table) || **layout == **table {
                return Ok(t.clone());
            }
        }
        let t = self
            .set
            .compile(&self.rules, table)
            .map_err(|e| {
                ConnectorError::fatal(format!("sink {}: {e}", self.inner.name())).with_hint(
                    "a schema change on the source no longer fits the transform rules; change the rules and run again",
                )
            })?
            .map(Arc::new);
        self.compiled
            .insert(table.name.clone(), (table.clone(), t.clone()));
        Ok(t)
    }

    /// Whether the rules compiled at open leave `table` unchanged for this sink.
    fn identity(&self, table: &TableName) -> bool {
        self.compiled
            .get(table)
            .is_some_and(|(_, t)| t.as_ref().is_some_and(|t| t.is_identity()))
    }

    fn map_event(&mut self, event: StreamEvent) -> Result<Option<StreamEvent>> {
        let StreamEvent::Change(c) = event else {
            return Ok(Some(event));
        };
        let Some(t) = self.transform(&c.table)? else {
            return Ok(None);
        };
        if t.is_identity() {
            return Ok(Some(StreamEvent::Change(c)));
        }
        Ok(t.change(c.change).map(|change| {
            StreamEvent::Change(ChangeEvent {
                position: c.position,
                table: t.output().clone(),
                change,
            })
        }))
    }
}

#[async_trait]
impl Sink for TransformSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState> {
        let transforms = self
            .set
            .compile_all(&self.rules, tables)
            .map_err(|e| ConnectorError::fatal(format!("sink {}: {e}", self.inner.name())))?;
        let outputs: Vec<Arc<TableSchema>> =
            transforms.iter().map(|t| t.output().clone()).collect();
        // The compiled rules serve the stream too; tables without any are excluded.
        for table in tables {
            self.compiled
                .insert(table.name.clone(), (table.clone(), None));
        }
        for t in transforms {
            let source = t.source().clone();
            self.compiled
                .insert(source.name.clone(), (source, Some(Arc::new(t))));
        }
        let mut state = self.inner.open(&outputs).await?;
        // Progress is kept under the names the sink sees; the runtime speaks the source's.
        let mut copied = std::collections::BTreeMap::new();
        let started = state.checkpoint.is_some() || !state.copied_tables.is_empty();
        for table in tables {
            match &self.compiled[&table.name].1 {
                Some(t) => {
                    if let Some(lsn) = state.copied_tables.get(&t.output().name) {
                        copied.insert(table.name.clone(), *lsn);
                    }
                }
                // An excluded table needs no copy; on a first run it passes through an empty
                // one like the others (the runtime records it then).
                None if started => {
                    copied.insert(table.name.clone(), Lsn::ZERO);
                }
                None => {}
            }
        }
        state.copied_tables = copied;
        Ok(state)
    }

    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        match self.transform(&table)? {
            Some(t) => self.inner.add_table(t.output().clone()).await,
            None => Ok(()),
        }
    }

    async fn copy_again(&mut self, table: Arc<TableSchema>) -> Result<()> {
        match self.transform(&table)? {
            Some(t) => self.inner.copy_again(t.output().clone()).await,
            None => Ok(()),
        }
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        // Copies may start in parallel (`&self`): compile here rather than through the cache.
        let t = self
            .set
            .compile(&self.rules, &table)
            .map_err(|e| ConnectorError::fatal(format!("sink {}: {e}", self.inner.name())))?;
        Ok(match t {
            None => Box::new(SkippedCopy),
            Some(t) if t.is_identity() => self.inner.begin_copy(table, snapshot_lsn).await?,
            Some(t) => {
                let inner = self
                    .inner
                    .begin_copy(t.output().clone(), snapshot_lsn)
                    .await?;
                Box::new(TransformedCopy {
                    inner,
                    t: Arc::new(t),
                })
            }
        })
    }

    fn copies_ranges(&self, table: &TableName) -> bool {
        // Only a table the rules leave as it is: its keys and name are the sink's own.
        self.identity(table) && self.inner.copies_ranges(table)
    }

    fn copied_ranges(&self) -> std::collections::BTreeMap<TableName, RangesCopied> {
        let mut ranges = self.inner.copied_ranges();
        ranges.retain(|table, _| self.identity(table));
        ranges
    }

    async fn begin_range_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
        range: KeyRange,
    ) -> Result<Box<dyn TableCopy>> {
        self.inner
            .begin_range_copy(table, snapshot_lsn, range)
            .await
    }

    async fn finish_ranges(&self, table: &TableName, snapshot_lsn: Lsn, rows: u64) -> Result<()> {
        self.inner.finish_ranges(table, snapshot_lsn, rows).await
    }

    async fn apply(&mut self, event: StreamEvent) -> Result<()> {
        match self.map_event(event)? {
            Some(e) => self.inner.apply(e).await,
            None => Ok(()),
        }
    }

    async fn apply_all(&mut self, events: Vec<StreamEvent>) -> Result<()> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if let Some(e) = self.map_event(e)? {
                out.push(e);
            }
        }
        self.inner.apply_all(out).await
    }

    fn seal(&mut self) -> PendingWrite {
        self.inner.seal()
    }

    fn unsettled(&self) -> bool {
        self.inner.unsettled()
    }

    fn settle(&mut self) -> PendingWrite {
        self.inner.settle()
    }

    fn buffered_bytes(&self) -> usize {
        self.inner.buffered_bytes()
    }

    fn parked(&self) -> u64 {
        self.inner.parked()
    }
}

/// The copy of a table this sink does not take.
struct SkippedCopy;

#[async_trait]
impl TableCopy for SkippedCopy {
    async fn write(&mut self, _rows: &[Row]) -> Result<()> {
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        Ok(0)
    }
}

struct TransformedCopy {
    inner: Box<dyn TableCopy>,
    t: Arc<TableTransform>,
}

#[async_trait]
impl TableCopy for TransformedCopy {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let rows: Vec<Row> = rows.iter().filter_map(|r| self.t.row(r.clone())).collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.inner.write(&rows).await
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        self.inner.finish().await
    }
}
