//! The snapshot copy of a table into the target: binary COPY in segments under savepoints, the
//! rows the target refuses found by halving and parked.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cutover_core::{
    quote_ident, ConnectorError, ErrorKind, Lsn, Result, Row, TableCopy, TableSchema,
};
use futures::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::fold::key_bytes;
use super::{COPY_CHUNK, STATE_SCHEMA};
use crate::copy_binary::{put_header, put_row, put_trailer};
use crate::error::classify;

/// Bytes of snapshot rows written by one COPY under one savepoint: a row the target refuses
/// costs a search in this much, and it is held in memory until the COPY is done.
const COPY_SEGMENT: usize = 8 << 20;

/// A snapshot copy of one table into the target, in its own transaction. Rows stream to the
/// server as they come, in segments of `COPY_SEGMENT` bytes, one COPY each under a savepoint;
/// the segment's encoded rows are kept (shared, not copied) until its COPY is done. When the
/// target refuses a segment for good (a constraint or type only the target has), the segment
/// is halved until the refused rows are found; each is parked in `cutover.dead_letters` (op
/// `upsert`, in this transaction) and the rest are copied. Later changes of a parked key wait
/// behind it.
pub(super) struct PgTableCopy {
    pub(super) client: Client,
    /// The COPY of the current segment (`None` before its first row, or once the target
    /// refused it: its rows are then only kept, for the search).
    pub(super) copy: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// Whether the target refused the current segment.
    pub(super) refused: bool,
    /// Tuples being encoded, not yet sent.
    pub(super) chunk: BytesMut,
    /// The current segment's tuples already sent, and their length.
    pub(super) kept: Vec<Bytes>,
    pub(super) kept_len: usize,
    /// Where each tuple of the current segment starts.
    pub(super) starts: Vec<usize>,
    pub(super) table: Arc<TableSchema>,
    pub(super) snapshot_lsn: Lsn,
    /// The key range copied, when the table's copy is split; `None`: the whole table.
    pub(super) range: Option<cutover_core::ranges::KeyRange>,
    pub(super) rows: u64,
    pub(super) pipeline: String,
    pub(super) sink_name: String,
    pub(super) ctx: String,
    pub(super) any_parked: Arc<std::sync::atomic::AtomicBool>,
    pub(super) parked: Arc<std::sync::atomic::AtomicU64>,
}

impl PgTableCopy {
    /// Starts a COPY of the table's columns; the header is sent.
    async fn open_copy(&self) -> Result<Pin<Box<CopyInSink<Bytes>>>> {
        let list = self
            .table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        open_binary_copy(&self.client, &self.table.name.quoted(), &list, &self.ctx).await
    }

    async fn close_copy(&self, sink: Pin<Box<CopyInSink<Bytes>>>) -> Result<()> {
        close_binary_copy(sink, &self.ctx).await
    }

    /// Sends the tuples in `data` as one COPY.
    async fn copy_tuples(&self, data: Bytes) -> Result<()> {
        let mut sink = self.open_copy().await?;
        let mut at = 0;
        while at < data.len() {
            let end = (at + COPY_CHUNK).min(data.len());
            sink.send(data.slice(at..end))
                .await
                .map_err(|e| classify(e, &self.ctx))?;
            at = end;
        }
        self.close_copy(sink).await
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, &self.ctx))
    }

    /// A refusal for good marks the segment refused (its COPY is dropped, which aborts it);
    /// any other error is the caller's.
    fn refusal(&mut self, result: Result<()>) -> Result<()> {
        match result {
            Err(e) if e.kind == ErrorKind::Poison => {
                if !self.refused {
                    tracing::info!(sink = %self.sink_name, table = %self.table.name, error = %e, "the target refused snapshot rows; halving the segment to find them");
                }
                self.refused = true;
                self.copy = None;
                Ok(())
            }
            other => other,
        }
    }

    /// Sends the encoded tuples (unless the segment was refused) and keeps them.
    async fn ship(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = self.chunk.split().freeze();
        if let Some(copy) = self.copy.as_mut() {
            let sent = copy
                .send(chunk.clone())
                .await
                .map_err(|e| classify(e, &self.ctx));
            self.refusal(sent)?;
        }
        self.kept_len += chunk.len();
        self.kept.push(chunk);
        Ok(())
    }

    /// Ends the current segment: its COPY is completed, or, if the target refused it, rolled
    /// back and the refused rows searched for and parked.
    async fn end_segment(&mut self) -> Result<()> {
        if self.starts.is_empty() {
            return Ok(());
        }
        self.ship().await?;
        if let Some(copy) = self.copy.take() {
            let closed = self.close_copy(copy).await;
            self.refusal(closed)?;
        }
        let starts = std::mem::take(&mut self.starts);
        let kept = std::mem::take(&mut self.kept);
        self.kept_len = 0;
        if !std::mem::take(&mut self.refused) {
            return self.exec("RELEASE SAVEPOINT cutover_copy").await;
        }
        self.exec("ROLLBACK TO SAVEPOINT cutover_copy").await?;
        let mut whole = BytesMut::with_capacity(kept.iter().map(Bytes::len).sum());
        for chunk in &kept {
            whole.extend_from_slice(chunk);
        }
        drop(kept);
        self.search(whole.freeze(), &starts).await
    }

    /// Writes the tuples of a refused segment (`data`, tuples starting at `starts`) in halves
    /// until the refused ones are single; parks those.
    async fn search(&mut self, data: Bytes, starts: &[usize]) -> Result<()> {
        let bytes = |rows: &std::ops::Range<usize>| {
            let end = starts.get(rows.end).copied().unwrap_or(data.len());
            data.slice(starts[rows.start]..end)
        };
        // Row ranges still to write, the next on top; the whole segment is known refused.
        let mut todo = Vec::with_capacity(32);
        let mid = starts.len() / 2;
        if mid == 0 {
            todo.push(0..starts.len());
        } else {
            todo.push(mid..starts.len());
            todo.push(0..mid);
        }
        while let Some(rows) = todo.pop() {
            self.exec("SAVEPOINT cutover_copy").await?;
            match self.copy_tuples(bytes(&rows)).await {
                Ok(()) => self.exec("RELEASE SAVEPOINT cutover_copy").await?,
                Err(e) if e.kind == ErrorKind::Poison => {
                    self.exec("ROLLBACK TO SAVEPOINT cutover_copy").await?;
                    if rows.len() == 1 {
                        self.park(bytes(&rows), e.message).await?;
                    } else {
                        let mid = rows.start + rows.len() / 2;
                        todo.push(mid..rows.end);
                        todo.push(rows.start..mid);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Parks one refused snapshot row (its encoded tuple) with the target's reason.
    async fn park(&self, tuple: Bytes, reason: String) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut framed = BytesMut::with_capacity(tuple.len() + 32);
        put_header(&mut framed);
        framed.extend_from_slice(&tuple);
        put_trailer(&mut framed);
        let mut rows = Vec::with_capacity(1);
        crate::copy_binary::CopyParser::new(self.table.columns.len())
            .feed(framed.freeze(), &mut rows)
            .ok()
            .filter(|()| rows.len() == 1)
            .ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "a refused row of {} could not be read back to park it",
                    self.table.name
                ))
            })?;
        let row = &rows[0];
        crate::dead_letters::park(
            &self.client,
            &self.pipeline,
            &self.sink_name,
            crate::dead_letters::Parked {
                layout: &self.table,
                key_bytes: &key_bytes(&self.table, row),
                op: "upsert",
                row,
                commit_lsn: Some(self.snapshot_lsn.to_string()),
                reason,
            },
        )
        .await?;
        self.any_parked.store(true, Relaxed);
        self.parked.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[async_trait]
impl TableCopy for PgTableCopy {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        for row in rows {
            if self.starts.is_empty() {
                self.exec("SAVEPOINT cutover_copy").await?;
                let copy = self.open_copy().await;
                match copy {
                    Ok(c) => self.copy = Some(c),
                    Err(e) => self.refusal(Err(e))?,
                }
            }
            self.starts.push(self.kept_len + self.chunk.len());
            put_row(&mut self.chunk, row.0.iter());
            if self.chunk.len() >= COPY_CHUNK {
                self.ship().await?;
                if self.kept_len >= COPY_SEGMENT {
                    self.end_segment().await?;
                }
            }
        }
        self.rows += rows.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        self.end_segment().await?;
        let lsn = self.snapshot_lsn.to_string();
        let rows = self.rows as i64;
        let recorded = match &self.range {
            None => {
                self.client
                    .execute(
                        &record_copied_sql(),
                        &[
                            &self.pipeline,
                            &self.sink_name,
                            &self.table.name.schema,
                            &self.table.name.name,
                            &lsn,
                            &rows,
                        ],
                    )
                    .await
            }
            Some(range) => {
                self.client
                    .execute(
                        &format!(
                            "INSERT INTO {STATE_SCHEMA}.copied_ranges (pipeline, sink, table_schema, table_name, range_index, split, snapshot_lsn, rows)
                             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::pg_lsn, $8)"
                        ),
                        &[
                            &self.pipeline,
                            &self.sink_name,
                            &self.table.name.schema,
                            &self.table.name.name,
                            &(range.index as i32),
                            &range.split.to_json(),
                            &lsn,
                            &rows,
                        ],
                    )
                    .await
            }
        };
        recorded.map_err(|e| classify(e, &self.ctx))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &self.ctx))?;
        Ok(self.rows)
    }
}

/// Records a table as copied: `$1` pipeline, `$2` sink, `$3`/`$4` the table's schema and name,
/// `$5` the snapshot LSN as text, `$6` the rows.
pub(super) fn record_copied_sql() -> String {
    format!(
        "INSERT INTO {STATE_SCHEMA}.copied_tables (pipeline, sink, table_schema, table_name, snapshot_lsn, rows)
         VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6)
         ON CONFLICT (pipeline, sink, table_schema, table_name) DO UPDATE
            SET snapshot_lsn = EXCLUDED.snapshot_lsn, rows = EXCLUDED.rows, copied_at = now(),
                settled_lsn = NULL"
    )
}

/// Starts `COPY table (list) FROM STDIN (FORMAT binary)`; the header is queued.
pub(super) async fn open_binary_copy(
    client: &Client,
    table: &str,
    list: &str,
    ctx: &str,
) -> Result<Pin<Box<CopyInSink<Bytes>>>> {
    let sink: CopyInSink<Bytes> = client
        .copy_in(&format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| classify(e, ctx))?;
    let mut sink = Box::pin(sink);
    let mut head = BytesMut::with_capacity(32);
    put_header(&mut head);
    sink.feed(head.freeze())
        .await
        .map_err(|e| classify(e, ctx))?;
    Ok(sink)
}

/// Sends the trailer and waits for the server to take every row.
pub(super) async fn close_binary_copy(
    mut sink: Pin<Box<CopyInSink<Bytes>>>,
    ctx: &str,
) -> Result<()> {
    let mut tail = BytesMut::with_capacity(2);
    put_trailer(&mut tail);
    sink.send(tail.freeze())
        .await
        .map_err(|e| classify(e, ctx))?;
    sink.as_mut().finish().await.map_err(|e| classify(e, ctx))?;
    Ok(())
}
