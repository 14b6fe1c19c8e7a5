//! Writes outside the stream: repairs, and the sink's dead letters listed and replayed.

use std::sync::Arc;

use cutover_core::{Change, ConnectorError, ErrorKind, Result, Row, Sink, TableName, TableSchema};
use rustc_hash::FxHashMap;

use super::fold::Op;
use super::write::write_table;
use super::PgSink;
use crate::error::classify;

impl PgSink {
    /// Writes repairs to one table (rows to upsert; key rows to delete) in one target
    /// transaction, through the same set-based path as streamed changes, leaving the checkpoint
    /// where it is. Idempotent: writing the same repair twice leaves the same rows. The table
    /// must be one the sink was opened with.
    pub async fn repair(
        &mut self,
        table: &Arc<TableSchema>,
        upserts: Vec<Row>,
        deletes: Vec<Row>,
    ) -> Result<()> {
        if !self.segments.is_empty() || self.txn_open {
            return Err(ConnectorError::fatal(
                "a repair needs a sink with no write in progress",
            ));
        }
        self.in_source_txn = true;
        for key in deletes {
            self.record(table, Change::Delete { key })?;
        }
        for row in upserts {
            self.record(table, Change::Insert { row })?;
        }
        self.seal().await?;
        self.in_source_txn = false;
        self.txn_open = false;
        self.exec("COMMIT").await
    }

    /// The sink's parked changes, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<crate::dead_letters::DeadLetter>> {
        if !self.state_tables_exist().await? {
            return Ok(Vec::new());
        }
        self.create_state_tables().await?;
        crate::dead_letters::list(&self.client, &self.options.pipeline, &self.options.name).await
    }

    /// Applies the sink's parked changes again, oldest first, in one target transaction: each
    /// that now applies is removed; one that still fails stays (with the new reason) and holds
    /// back the later changes of its key. Returns (applied, still parked). The sink must have
    /// been opened with the tables the changes belong to.
    pub async fn replay_dead_letters(&mut self) -> Result<(u64, u64)> {
        let client = self.client.clone();
        let ctx = format!("target {}", self.options.name);
        let exec = |sql: &'static str| {
            let client = client.clone();
            let ctx = ctx.clone();
            async move {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(|e| classify(e, &ctx))
            }
        };
        exec("BEGIN").await?;
        let stored =
            crate::dead_letters::lock_all(&client, &self.options.pipeline, &self.options.name)
                .await?;
        let mut blocked: std::collections::HashSet<(TableName, Vec<u8>)> = Default::default();
        let (mut applied, mut still) = (0u64, 0u64);
        for d in stored {
            let id = (d.layout.name.clone(), d.key_bytes.clone());
            if blocked.contains(&id) {
                still += 1;
                continue;
            }
            let Some(table) = self.tables.get(&d.layout.name).cloned() else {
                exec("ROLLBACK").await?;
                return Err(ConnectorError::fatal(format!(
                    "a parked change belongs to table {}, which the pipeline no longer writes to sink {}",
                    d.layout.name, self.options.name
                ))
                .with_hint("add the table back to the pipeline, or delete its rows from cutover.dead_letters"));
            };
            let op = if d.op == "delete" {
                Op::Delete(d.row)
            } else {
                Op::Upsert(d.row)
            };
            let one: FxHashMap<Vec<u8>, Op> = [(d.key_bytes, op)].into_iter().collect();
            exec("SAVEPOINT cutover_replay").await?;
            match write_table(&client, &table, &d.layout, &one, false).await {
                Ok(()) => {
                    crate::dead_letters::remove(&client, d.id).await?;
                    exec("RELEASE SAVEPOINT cutover_replay").await?;
                    applied += 1;
                }
                Err(e) if e.kind == ErrorKind::Poison => {
                    exec("ROLLBACK TO SAVEPOINT cutover_replay").await?;
                    crate::dead_letters::failed_again(&client, d.id, &e.message).await?;
                    blocked.insert(id);
                    still += 1;
                }
                Err(e) => {
                    let _ = exec("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
        exec("COMMIT").await?;
        Ok((applied, still))
    }
}
