//! The sink's state in the target: its checkpoint and copy records (created, read, forgotten),
//! and which asynchronously committed checkpoints the target has flushed.

use std::collections::BTreeMap;
use std::sync::Arc;

use cutover_core::ranges::{RangesCopied, Split};
use cutover_core::{Checkpoint, ConnectorError, Lsn, Result, SinkState, TableName};
use tokio_postgres::Client;

use super::{PgSink, STATE_SCHEMA};
use crate::error::classify;

impl PgSink {
    pub(super) async fn state_tables_exist(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one("SELECT to_regclass('cutover.checkpoints') IS NOT NULL", &[])
            .await
            .map_err(|e| classify(e, "cannot read the target's state tables"))?
            .get(0))
    }

    /// Deletes this sink's checkpoint and copy records (used by `teardown --target-state`).
    pub async fn forget_state(&self) -> Result<()> {
        self.delete_own(
            &["checkpoints", "copied_tables", "copied_ranges"],
            "cannot delete the target's state",
        )
        .await
    }

    /// Deletes this sink's rows from those of the named state tables that exist (a target
    /// whose state tables an older cutover made may lack the newer ones).
    async fn delete_own(&self, tables: &[&str], ctx: &str) -> Result<()> {
        for table in tables {
            let exists: bool = self
                .client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("{STATE_SCHEMA}.{table}")],
                )
                .await
                .map_err(|e| classify(e, ctx))?
                .get(0);
            if exists {
                self.client
                    .execute(
                        &format!(
                            "DELETE FROM {STATE_SCHEMA}.{table} WHERE pipeline = $1 AND sink = $2"
                        ),
                        &[&self.options.pipeline, &self.options.name],
                    )
                    .await
                    .map_err(|e| classify(e, ctx))?;
            }
        }
        Ok(())
    }

    /// Marks every table this sink copied to be copied again, and deletes its checkpoint: after
    /// a lost slot (`cutover recover`). A marked table counts as not copied, but its rows are
    /// cutover's own: the next copy replaces them in its transaction (readers see the old rows
    /// until it commits) and records the table as copied again. Returns the tables marked.
    pub async fn mark_for_recopy(&self) -> Result<u64> {
        if !self.state_tables_exist().await? {
            return Ok(0);
        }
        // State tables an older cutover made lack `copied_ranges`.
        self.create_state_tables().await?;
        let ctx = "cannot mark the sink's tables to be copied again";
        let marked = self
            .client
            .execute(
                &format!(
                    "UPDATE {STATE_SCHEMA}.copied_tables SET snapshot_lsn = '0/0', rows = 0, copied_at = now(), settled_lsn = NULL
                      WHERE pipeline = $1 AND sink = $2"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        // A table copied in part (some key ranges) holds cutover's rows too: it is marked the
        // same way, and its range records go.
        let partly = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {STATE_SCHEMA}.copied_tables (pipeline, sink, table_schema, table_name, snapshot_lsn, rows)
                     SELECT DISTINCT pipeline, sink, table_schema, table_name, '0/0'::pg_lsn, 0
                       FROM {STATE_SCHEMA}.copied_ranges WHERE pipeline = $1 AND sink = $2
                     ON CONFLICT (pipeline, sink, table_schema, table_name) DO UPDATE
                        SET snapshot_lsn = '0/0', rows = 0, copied_at = now()"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        self.delete_own(&["checkpoints", "copied_ranges"], ctx)
            .await?;
        Ok(marked + partly)
    }

    /// The tables marked by [`PgSink::mark_for_recopy`] and not yet copied again.
    pub(super) async fn recopy_tables(&self) -> Result<std::collections::HashSet<TableName>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT table_schema, table_name FROM {STATE_SCHEMA}.copied_tables
                      WHERE pipeline = $1 AND sink = $2 AND snapshot_lsn = '0/0'"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, "cannot read the tables to copy again"))?;
        Ok(rows
            .iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    pub(super) async fn create_state_tables(&self) -> Result<()> {
        // Workers that open at the same moment (`cutover apply`) race on IF NOT EXISTS, which
        // is not atomic: the loser fails with a duplicate; the second try finds everything.
        let first = self.create_state_tables_once().await;
        match &first {
            Err(e) if e.to_string().contains("already exists") => {
                self.create_state_tables_once().await
            }
            _ => first,
        }
    }

    async fn create_state_tables_once(&self) -> Result<()> {
        self.exec(&format!(
            "CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
             CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.checkpoints (
                 pipeline text NOT NULL, sink text NOT NULL,
                 commit_lsn pg_lsn NOT NULL, end_lsn pg_lsn NOT NULL,
                 commit_time timestamptz, updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, sink));
             CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.copied_tables (
                 pipeline text NOT NULL, sink text NOT NULL,
                 table_schema text NOT NULL, table_name text NOT NULL,
                 snapshot_lsn pg_lsn NOT NULL, rows bigint NOT NULL,
                 copied_at timestamptz NOT NULL DEFAULT now(), settled_lsn pg_lsn,
                 PRIMARY KEY (pipeline, sink, table_schema, table_name));
             CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.copied_ranges (
                 pipeline text NOT NULL, sink text NOT NULL,
                 table_schema text NOT NULL, table_name text NOT NULL,
                 range_index int NOT NULL, split jsonb NOT NULL,
                 snapshot_lsn pg_lsn NOT NULL, rows bigint NOT NULL,
                 copied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, sink, table_schema, table_name, range_index));
             {}",
            crate::dead_letters::create_sql()
        ))
        .await?;
        // State tables an older cutover made lack `settled_lsn`; the look first spares the
        // ALTER's exclusive lock when it is there.
        let has_settled: bool = self
            .client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM pg_attribute
                      WHERE attrelid = '{STATE_SCHEMA}.copied_tables'::regclass
                        AND attname = 'settled_lsn' AND NOT attisdropped)"
                ),
                &[],
            )
            .await
            .map_err(|e| classify(e, "cannot read the target's state tables"))?
            .get(0);
        if has_settled {
            return Ok(());
        }
        self.exec(&format!(
            "ALTER TABLE {STATE_SCHEMA}.copied_tables ADD COLUMN IF NOT EXISTS settled_lsn pg_lsn"
        ))
        .await
    }

    /// The key ranges of split tables this sink recorded as copied (see
    /// [`cutover_core::ranges`]), per table with the split they belong to.
    pub(super) async fn read_ranges(&self) -> Result<BTreeMap<TableName, RangesCopied>> {
        let ctx = "cannot read the sink's copied key ranges";
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT table_schema, table_name, range_index, split::text, snapshot_lsn::text
                       FROM {STATE_SCHEMA}.copied_ranges WHERE pipeline = $1 AND sink = $2
                      ORDER BY table_schema, table_name, range_index"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        let mut ranges: BTreeMap<TableName, RangesCopied> = BTreeMap::new();
        for row in rows {
            let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
            let split = Split::from_json(row.get(3)).map_err(|e| {
                ConnectorError::fatal(format!("{ctx}: {table}: {e}")).with_hint(
                    "delete this sink's rows of cutover.copied_ranges for the table and TRUNCATE it on the target, then run again",
                )
            })?;
            let entry = ranges.entry(table.clone()).or_insert_with(|| RangesCopied {
                split: split.clone(),
                done: BTreeMap::new(),
            });
            if entry.split != split {
                return Err(ConnectorError::fatal(format!(
                    "{ctx}: the ranges of {table} on sink {} belong to two different splits",
                    self.options.name
                ))
                .with_hint("TRUNCATE the table on the target, delete this sink's rows of cutover.copied_ranges for it, and run again"));
            }
            entry
                .done
                .insert(row.get::<_, i32>(2) as u32, parse_lsn(row.get(4))?);
        }
        Ok(ranges)
    }

    /// Records `table` as copied at `snapshot_lsn` and deletes its range records, in one
    /// transaction (see [`cutover_core::Sink::finish_ranges`]).
    pub(super) async fn record_ranges_done(
        &self,
        table: &TableName,
        snapshot_lsn: Lsn,
        rows: u64,
    ) -> Result<()> {
        let ctx = format!("cannot record {table} as copied in {}", self.options.name);
        let client = self.endpoint.connect().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(e, &ctx))?;
        client
            .execute(
                &super::copy::record_copied_sql(),
                &[
                    &self.options.pipeline,
                    &self.options.name,
                    &table.schema,
                    &table.name,
                    &snapshot_lsn.to_string(),
                    &(rows as i64),
                ],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        let this_table: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &self.options.pipeline,
            &self.options.name,
            &table.schema,
            &table.name,
        ];
        // Ranges copied under later snapshots than `snapshot_lsn` (a resumed copy): the
        // latest, until which the stream may move a key out of a range the target holds at a
        // later state (see `SinkState::settling`).
        client
            .execute(
                &format!(
                    "UPDATE {STATE_SCHEMA}.copied_tables t
                        SET settled_lsn = (SELECT max(snapshot_lsn) FROM {STATE_SCHEMA}.copied_ranges r
                                            WHERE r.pipeline = t.pipeline AND r.sink = t.sink
                                              AND r.table_schema = t.table_schema
                                              AND r.table_name = t.table_name
                                              AND r.snapshot_lsn > t.snapshot_lsn)
                      WHERE pipeline = $1 AND sink = $2 AND table_schema = $3 AND table_name = $4"
                ),
                &this_table,
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        client
            .execute(
                &format!(
                    "DELETE FROM {STATE_SCHEMA}.copied_ranges
                      WHERE pipeline = $1 AND sink = $2 AND table_schema = $3 AND table_name = $4"
                ),
                &this_table,
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &ctx))
    }

    /// Reads the sink's checkpoint and copy records without changing anything.
    pub async fn read_checkpoint(&self) -> Result<SinkState> {
        let exists = self.state_tables_exist().await?;
        if exists {
            self.read_state().await
        } else {
            Ok(SinkState::default())
        }
    }

    pub(super) async fn read_state(&self) -> Result<SinkState> {
        let ctx = "cannot read the sink's checkpoint";
        let mut state = SinkState::default();
        if let Some(row) = self
            .client
            .query_opt(
                &format!(
                    "SELECT commit_lsn::text, end_lsn::text FROM {STATE_SCHEMA}.checkpoints
                      WHERE pipeline = $1 AND sink = $2"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?
        {
            state.checkpoint = Some(Checkpoint {
                commit_lsn: parse_lsn(row.get(0))?,
                end_lsn: parse_lsn(row.get(1))?,
            });
        }
        for row in self
            .client
            .query(
                &format!(
                    // `settled_lsn` through to_jsonb: state tables an older cutover made lack it.
                    "SELECT table_schema, table_name, snapshot_lsn::text, to_jsonb(c)->>'settled_lsn'
                       FROM {STATE_SCHEMA}.copied_tables c
                      WHERE pipeline = $1 AND sink = $2 AND snapshot_lsn <> '0/0'"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?
        {
            let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
            if let Some(settled) = row.get::<_, Option<String>>(3) {
                state.settling.insert(table.clone(), parse_lsn(settled)?);
            }
            state.copied_tables.insert(table, parse_lsn(row.get(2))?);
        }
        Ok(state)
    }
}

/// Checkpoints this sink committed asynchronously (`synchronous_commit = off`, as native
/// logical replication's apply worker does), each with the target's WAL position after its
/// commit record, in commit order. A checkpoint is reported durable only once the target's WAL
/// is flushed past that position, so the slot is never confirmed past what a target crash
/// could lose. Every write's commit reads the flush position in the same round trip;
/// [`Sink::settle`] forces a flush when the stream goes quiet.
#[derive(Debug, Default)]
pub(super) struct Unflushed(pub(super) std::collections::VecDeque<(Lsn, Checkpoint)>);

impl Unflushed {
    /// Records a commit that ends before target WAL position `wal_end`.
    pub(super) fn committed(&mut self, wal_end: Lsn, cp: Checkpoint) {
        self.0.push_back((wal_end, cp));
    }

    /// Forgets the checkpoints the target has flushed (its WAL is flushed up to `flushed`) and
    /// returns the newest of them.
    pub(super) fn flushed_to(&mut self, flushed: Lsn) -> Option<Checkpoint> {
        let mut newest = None;
        while self.0.front().is_some_and(|(end, _)| *end <= flushed) {
            newest = self.0.pop_front().map(|(_, cp)| cp);
        }
        newest
    }

    /// Forgets every checkpoint (all are flushed) and returns the newest.
    fn all_flushed(&mut self) -> Option<Checkpoint> {
        self.0.drain(..).next_back().map(|(_, cp)| cp)
    }
}

/// Makes every commit of the sink durable on the target with one synchronous commit (which
/// flushes the WAL up to it, and so every earlier commit), and returns the newest checkpoint
/// that was waiting for it.
pub(super) async fn settle(
    client: Arc<Client>,
    pipeline: String,
    sink: String,
    unflushed: Arc<std::sync::Mutex<Unflushed>>,
) -> Result<Option<Checkpoint>> {
    let ctx = format!("target {sink}");
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await
        .map_err(|e| classify(e, &ctx))?;
    // A row the earlier commits wrote, so this transaction has an id and its commit flushes.
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.checkpoints SET updated_at = now() WHERE pipeline = $1 AND sink = $2"
            ),
            &[&pipeline, &sink],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| classify(e, &ctx))?;
    Ok(unflushed.lock().expect("never poisoned").all_flushed())
}

fn parse_lsn(text: String) -> Result<Lsn> {
    text.parse()
        .map_err(|e: cutover_core::ParseLsnError| ConnectorError::fatal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(end: u64) -> Checkpoint {
        Checkpoint {
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
        }
    }

    #[test]
    fn a_checkpoint_is_durable_once_the_target_flushed_past_its_commit() {
        let mut unflushed = Unflushed::default();
        unflushed.committed(Lsn(100), cp(10));
        assert_eq!(unflushed.flushed_to(Lsn(99)), None);
        unflushed.committed(Lsn(200), cp(20));
        unflushed.committed(Lsn(300), cp(30));
        // Flushed through the second commit: the newest flushed one is reported, in order.
        assert_eq!(unflushed.flushed_to(Lsn(250)), Some(cp(20)));
        assert_eq!(unflushed.flushed_to(Lsn(250)), None);
        assert_eq!(unflushed.flushed_to(Lsn(300)), Some(cp(30)));
        unflushed.committed(Lsn(400), cp(40));
        unflushed.committed(Lsn(500), cp(50));
        assert_eq!(unflushed.all_flushed(), Some(cp(50)));
        assert_eq!(unflushed.all_flushed(), None);
    }
}
