//! The initial snapshot: every table some sink has not copied yet, read under the slot's
//! exported snapshot (binary COPY) and written into those sinks, up to `parallel_tables` at a
//! time. A table's copy is recorded as done in a sink only when the whole table was read.

use cutover_core::{ConnectorError, Result, Row, Sink, SinkState, TableCopy};
use cutover_postgres::catalog::SourceTable;
use cutover_postgres::source::SnapshotSession;
use cutover_postgres::PgSource;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::telemetry::Telemetry;
use crate::config::Pipeline;
use crate::rate;
use crate::status::TableProgress;

/// A table to copy, and the sinks (by index) that need it.
pub type Need<'a> = (&'a SourceTable, Vec<usize>);

/// The tables some sink has not copied yet.
pub fn plan<'a>(source: &'a PgSource, states: &[SinkState]) -> Vec<Need<'a>> {
    source
        .tables()
        .iter()
        .map(|t| {
            let sinks: Vec<usize> = (0..states.len())
                .filter(|&i| !states[i].copied_tables.contains_key(&t.schema.name))
                .collect();
            (t, sinks)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// What every table's copy shares.
struct Copying<'a> {
    source: &'a PgSource,
    sinks: &'a [Box<dyn Sink>],
    session: &'a SnapshotSession,
    cfg: &'a Pipeline,
    telemetry: &'a Telemetry,
    limit: Option<rate::Limit>,
}

/// Copies tables (up to `parallel_tables` at a time) into the sinks that need them.
pub async fn copy_tables(
    source: &PgSource,
    sinks: &[Box<dyn Sink>],
    needs: &[Need<'_>],
    session: &SnapshotSession,
    cfg: &Pipeline,
    telemetry: &Telemetry,
) -> Result<()> {
    telemetry.snapshot_started(
        needs
            .iter()
            .map(|(t, _)| TableProgress {
                name: t.schema.name.to_string(),
                rows_copied: 0,
                rows_estimate: t.rows_estimate,
                done: false,
            })
            .collect(),
    );
    let copying = Copying {
        source,
        sinks,
        session,
        cfg,
        telemetry,
        limit: rate::Limit::per_second(cfg.snapshot_rows_per_s),
    };
    let copying = &copying;
    futures::stream::iter(
        needs
            .iter()
            .enumerate()
            .map(|(n, (table, idxs))| copying.table(table, idxs, n)),
    )
    .buffer_unordered(cfg.parallel_tables)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

impl Copying<'_> {
    /// Copies one table into the sinks `idxs`; its status line is `progress_index`.
    async fn table(
        &self,
        table: &SourceTable,
        idxs: &[usize],
        progress_index: usize,
    ) -> Result<()> {
        let cfg = self.cfg;
        let depth =
            (cfg.queue_bytes / cfg.parallel_tables.max(1) / cfg.chunk_bytes.max(1)).clamp(2, 64);
        let (tx, mut rx) = mpsc::channel::<Vec<Row>>(depth);
        let read = self
            .source
            .copy_table(table, self.session, cfg.chunk_bytes, tx);
        let write = async {
            let mut copies: Vec<Box<dyn TableCopy>> = Vec::with_capacity(idxs.len());
            for &i in idxs {
                copies.push(
                    self.sinks[i]
                        .begin_copy(table.schema.clone(), self.session.lsn)
                        .await?,
                );
            }
            while let Some(rows) = rx.recv().await {
                if let Some(limit) = &self.limit {
                    limit.take(rows.len() as u64).await;
                }
                for copy in copies.iter_mut() {
                    copy.write(&rows).await?;
                }
                self.telemetry
                    .rows_copied(progress_index, rows.len() as u64);
            }
            Ok::<_, ConnectorError>(copies)
        };
        let (read, write) = tokio::join!(read, write);
        // Finish (commit) only when the whole table was read: a failed read rolls every copy back.
        let copies = write?;
        let rows = read?;
        for copy in copies {
            copy.finish().await?;
        }
        self.telemetry.table_done(progress_index);
        tracing::info!(table = %table.schema.name, rows, "table copied");
        Ok(())
    }
}
