//! The PostgreSQL sink.
//!
//! Streamed changes are folded per table into their net effect per row key (the last change of
//! each key wins; an unchanged TOAST value is filled from an earlier change of the same key in
//! the batch when there is one). A flush writes each table's net effect with three set-based
//! statements: binary COPY of the deleted keys into a staging table and one `DELETE ... USING`;
//! binary COPY of the full rows and one `INSERT ... ON CONFLICT DO UPDATE`; binary COPY of rows
//! that still lack an unchanged TOAST value and one `UPDATE ... FROM` that leaves those columns
//! alone. A batch holds whole source transactions (a source transaction larger than the batch
//! bound is written in several flushes inside one open target transaction). The checkpoint row
//! is written in the same target transaction as the data, so after a crash the sink knows
//! exactly which source transactions it has, and skips them when they are replayed.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cutover_core::{
    quote_ident, Change, Checkpoint, ConnectorError, ErrorKind, Lsn, PendingWrite, Result, Row,
    Sink, SinkState, StreamEvent, TableCopy, TableName, TableSchema, Value,
};
use futures::SinkExt;
use rustc_hash::FxHashMap;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, CopyInSink, SimpleQueryMessage};

use crate::conn::PgEndpoint;
use crate::copy_binary::{put_header, put_row, put_trailer};
use crate::error::classify;

/// Schema in the target that holds cutover's own state.
pub const STATE_SCHEMA: &str = "cutover";

/// Bytes of COPY data sent to the server per message.
const COPY_CHUNK: usize = 1 << 20;

/// Bytes of snapshot rows written by one COPY under one savepoint: a row the target refuses
/// costs a search in this much, and it is held in memory until the COPY is done.
const COPY_SEGMENT: usize = 8 << 20;

/// How the sink behaves.
#[derive(Debug, Clone)]
pub struct PgSinkOptions {
    /// This sink's name in the pipeline (part of its checkpoint key).
    pub name: String,
    /// The pipeline's name (part of its checkpoint key).
    pub pipeline: String,
    /// Create missing target tables from the source schema (otherwise a missing table is an
    /// error).
    pub create_tables: bool,
    /// Bytes of changes the runtime buffers before a flush; sizes the session's `temp_buffers`
    /// so that staging a whole batch stays in memory.
    pub batch_bytes: usize,
    /// Apply the source's schema changes (added, dropped, renamed and retyped columns) to the
    /// target in stream order; when false, a schema change stops the pipeline with a fix.
    pub apply_schema_changes: bool,
}

/// A PostgreSQL target.
pub struct PgSink {
    endpoint: PgEndpoint,
    options: PgSinkOptions,
    client: Arc<Client>,
    tables: HashMap<TableName, TargetTable>,
    state: SinkState,
    /// The last sealed write leaves a target transaction open (it ended inside a source
    /// transaction).
    txn_open: bool,
    /// Inside a source transaction (between Begin and Commit).
    in_source_txn: bool,
    /// The last source commit applied since the last seal, with its commit time.
    applied: Option<(Checkpoint, i64)>,
    /// What was applied since the last seal, in the order it must reach the target.
    segments: Vec<Segment>,
    buffered: usize,
    /// Whether the target holds parked changes of this sink (then every write looks for keys
    /// that must wait behind them).
    any_parked: Arc<std::sync::atomic::AtomicBool>,
    /// Changes parked by this process.
    parked: Arc<std::sync::atomic::AtomicU64>,
    /// Checkpoints committed but maybe not yet flushed on the target (see [`Unflushed`]).
    unflushed: Arc<std::sync::Mutex<Unflushed>>,
    /// Commits do not wait for the target's flush (the target reports its WAL positions to
    /// this role); otherwise every commit waits, and is durable when it returns.
    async_commit: bool,
}

/// Checkpoints this sink committed asynchronously (`synchronous_commit = off`, as native
/// logical replication's apply worker does), each with the target's WAL position after its
/// commit record, in commit order. A checkpoint is reported durable only once the target's WAL
/// is flushed past that position, so the slot is never confirmed past what a target crash
/// could lose. Every write's commit reads the flush position in the same round trip;
/// [`Sink::settle`] forces a flush when the stream goes quiet.
#[derive(Debug, Default)]
struct Unflushed(std::collections::VecDeque<(Lsn, Checkpoint)>);

impl Unflushed {
    /// Records a commit that ends before target WAL position `wal_end`.
    fn committed(&mut self, wal_end: Lsn, cp: Checkpoint) {
        self.0.push_back((wal_end, cp));
    }

    /// Forgets the checkpoints the target has flushed (its WAL is flushed up to `flushed`) and
    /// returns the newest of them.
    fn flushed_to(&mut self, flushed: Lsn) -> Option<Checkpoint> {
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

/// One target table and its staging tables.
#[derive(Clone)]
struct TargetTable {
    quoted: String,
    stage_rows: String,
    stage_keys: String,
    /// The column layout rows follow (the stream's Relation for this table).
    layout: Arc<TableSchema>,
    /// The layout came from the stream (not from the catalog when the sink opened): a later
    /// layout that lacks a column, or has it with another type, is a schema change to apply.
    /// A layout from the catalog may be newer than a replayed stream's, so it is never
    /// narrowed back.
    from_stream: bool,
    /// Staging tables are recreated under a new name after each schema change.
    version: u32,
}

/// A run of work that must reach the target in order: folded row changes (net effect per key,
/// written set-based), or one statement that cannot be folded.
enum Segment {
    Changes(FxHashMap<TableName, TableChanges>),
    Truncate(TargetTable),
    /// A key change that kept a TOAST value only the target's old row has: the row is moved in
    /// place.
    MoveRow {
        table: TargetTable,
        old_key: Row,
        row: Row,
    },
    /// A schema change (and the staging tables for the new layout), in stream order.
    Ddl(String),
}

/// One table's folded changes.
struct TableChanges {
    table: TargetTable,
    ops: FxHashMap<Vec<u8>, Op>,
}

enum Op {
    /// A row the source inserted in this batch, with no earlier change of its key in the
    /// batch: normally new to the target, so it is written by COPY straight into the table.
    /// When the target has the key after all (a replay, rows a merged copy put there), the
    /// batch is written again with it as an upsert.
    Insert(Row),
    Upsert(Row),
    Delete(Row),
}

impl Op {
    /// The row to write, unless the op is a delete.
    fn row(&self) -> Option<&Row> {
        match self {
            Op::Insert(row) | Op::Upsert(row) => Some(row),
            Op::Delete(_) => None,
        }
    }
}

impl PgSink {
    pub async fn connect(endpoint: PgEndpoint, options: PgSinkOptions) -> Result<Self> {
        let client = Arc::new(endpoint.connect().await?);
        Ok(PgSink {
            endpoint,
            options,
            client,
            tables: HashMap::new(),
            state: SinkState::default(),
            txn_open: false,
            in_source_txn: false,
            applied: None,
            segments: Vec::new(),
            buffered: 0,
            any_parked: Default::default(),
            parked: Default::default(),
            unflushed: Default::default(),
            async_commit: false,
        })
    }

    async fn state_tables_exist(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one("SELECT to_regclass('cutover.checkpoints') IS NOT NULL", &[])
            .await
            .map_err(|e| classify(e, "cannot read the target's state tables"))?
            .get(0))
    }

    /// Deletes this sink's checkpoint and copy records (used by `teardown --target-state`).
    pub async fn forget_state(&self) -> Result<()> {
        let exists = self.state_tables_exist().await?;
        if exists {
            for table in ["checkpoints", "copied_tables"] {
                self.client
                    .execute(
                        &format!(
                            "DELETE FROM {STATE_SCHEMA}.{table} WHERE pipeline = $1 AND sink = $2"
                        ),
                        &[&self.options.pipeline, &self.options.name],
                    )
                    .await
                    .map_err(|e| classify(e, "cannot delete the target's state"))?;
            }
        }
        Ok(())
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, &format!("target {}", self.options.name)))
    }

    async fn create_state_tables(&self) -> Result<()> {
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
                 copied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, sink, table_schema, table_name));
             {}",
            crate::dead_letters::create_sql()
        ))
        .await
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

    async fn read_state(&self) -> Result<SinkState> {
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
                    "SELECT table_schema, table_name, snapshot_lsn::text FROM {STATE_SCHEMA}.copied_tables
                      WHERE pipeline = $1 AND sink = $2"
                ),
                &[&self.options.pipeline, &self.options.name],
            )
            .await
            .map_err(|e| classify(e, ctx))?
        {
            state.copied_tables.insert(
                TableName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                parse_lsn(row.get(2))?,
            );
        }
        Ok(state)
    }

    /// Refuses a target table that holds rows cutover did not copy: they would be mixed with the
    /// copy, and cutover never overwrites data it does not own.
    /// Creates the session's staging tables for a target table and starts writing to it in
    /// `table`'s layout (`from_stream`: a layout read from the target, which the stream will
    /// bring up to date).
    async fn stage(&mut self, table: &Arc<TableSchema>, from_stream: bool) -> Result<()> {
        let n = self.tables.len();
        let quoted = table.name.quoted();
        let stage_rows = format!("cutover_stage_rows_{n}");
        let stage_keys = format!("cutover_stage_keys_{n}");
        let all = table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        self.exec(&format!(
            "DROP TABLE IF EXISTS pg_temp.{stage_rows}, pg_temp.{stage_keys};
             CREATE TEMP TABLE {stage_rows} AS SELECT {all} FROM {quoted} WITH NO DATA;
             CREATE TEMP TABLE {stage_keys} AS SELECT {keys} FROM {quoted} WITH NO DATA;",
            keys = key_list(table)
        ))
        .await?;
        self.tables.insert(
            table.name.clone(),
            TargetTable {
                quoted,
                stage_rows,
                stage_keys,
                layout: table.clone(),
                from_stream,
                version: 0,
            },
        );
        Ok(())
    }

    async fn refuse_foreign_rows(&self, table: &TableSchema) -> Result<()> {
        let quoted = table.name.quoted();
        let has_rows: bool = self
            .client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {quoted})"), &[])
            .await
            .map_err(|e| classify(e, "cannot inspect a target table"))?
            .get(0);
        if !has_rows {
            return Ok(());
        }
        Err(ConnectorError::fatal(format!(
            "target table {} on {} already holds rows that cutover did not copy, and cutover will not overwrite them.",
            table.name, self.options.name
        ))
        .with_hint(format!(
            "if they can go, run TRUNCATE {quoted}; on the target; otherwise point the sink at another database"
        )))
    }

    /// Everything `run` would refuse about this target, checked without changing anything:
    /// table compatibility, then rows that cutover did not copy.
    pub async fn preflight(&self, tables: &[Arc<TableSchema>]) -> Result<()> {
        self.check_tables(tables).await?;
        let copied = self.read_checkpoint().await?.copied_tables;
        for table in tables {
            if !copied.contains_key(&table.name)
                && self.inspect_table(table).await? == TableCheck::Ready
            {
                self.refuse_foreign_rows(table).await?;
            }
        }
        Ok(())
    }

    /// The target table's own columns, in its order, with the source's key flags: the layout
    /// rows are written in until the stream announces the source's newer one.
    async fn target_layout(&self, table: &TableSchema) -> Result<Arc<TableSchema>> {
        let rows = self
            .client
            .query(
                "SELECT attname::text, atttypid, atttypmod, format_type(atttypid, atttypmod), attnotnull
                   FROM pg_attribute
                  WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                  ORDER BY attnum",
                &[&table.name.quoted()],
            )
            .await
            .map_err(|e| classify(e, &format!("cannot read the columns of target table {}", table.name)))?;
        let columns = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                cutover_core::Column {
                    key: table.columns.iter().any(|c| c.key && c.name == name),
                    name,
                    type_oid: r.get(1),
                    type_modifier: r.get(2),
                    type_name: r.get(3),
                    nullable: !r.get::<_, bool>(4),
                    default: None,
                }
            })
            .collect();
        Ok(Arc::new(TableSchema {
            name: table.name.clone(),
            columns,
        }))
    }

    /// Compares a target table with the source's definition, without changing anything.
    pub async fn inspect_table(&self, table: &TableSchema) -> Result<TableCheck> {
        let quoted = table.name.quoted();
        let ctx = format!("cannot inspect target table {}", table.name);
        let oid: Option<u32> = self
            .client
            .query_one("SELECT to_regclass($1)::oid", &[&quoted])
            .await
            .map_err(|e| classify(e, &ctx))?
            .get(0);
        let Some(oid) = oid else {
            return Ok(TableCheck::Missing);
        };
        let target_columns: HashMap<String, String> = self
            .client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
                  WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(|e| classify(e, &ctx))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut problems = Vec::new();
        for c in &table.columns {
            match target_columns.get(&c.name) {
                None => problems.push(format!("column {} ({}) is missing", c.name, c.type_name)),
                Some(t) if *t != c.type_name => problems.push(format!(
                    "column {} is {t} on the target but {} on the source",
                    c.name, c.type_name
                )),
                Some(_) => {}
            }
        }
        let column_problems = problems.len();
        let mut key: Vec<String> = table
            .key_indexes()
            .map(|i| table.columns[i].name.clone())
            .collect();
        key.sort();
        let unique_keys: Vec<Vec<String>> = self
            .client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY a.attname)
                   FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL
                  GROUP BY i.indexrelid",
                &[&oid],
            )
            .await
            .map_err(|e| classify(e, &ctx))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !unique_keys.contains(&key) {
            problems.push(format!(
                "no primary key or unique index on ({})",
                key.join(", ")
            ));
        }
        Ok(if problems.is_empty() {
            TableCheck::Ready
        } else if problems.len() == column_problems {
            TableCheck::Behind { problems }
        } else {
            TableCheck::Mismatch(problems)
        })
    }

    /// Checks every table without changing anything; the error names every problem at once.
    pub async fn check_tables(&self, tables: &[Arc<TableSchema>]) -> Result<()> {
        let copied = self.read_checkpoint().await?.copied_tables;
        let mut problems = Vec::new();
        for table in tables {
            match self.inspect_table(table).await? {
                TableCheck::Ready => {}
                TableCheck::Missing if self.options.create_tables => {}
                TableCheck::Missing => {
                    problems.push(format!("table {} does not exist", table.name))
                }
                // A table cutover copied whose columns the source changed while it was not
                // streaming is brought forward when the sink opens.
                TableCheck::Behind { .. }
                    if self.options.apply_schema_changes && copied.contains_key(&table.name) => {}
                TableCheck::Mismatch(p) | TableCheck::Behind { problems: p, .. } => {
                    problems.push(format!("table {}: {}", table.name, p.join("; ")))
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::fatal(format!(
            "target {} ({}) cannot take the source's tables: {}.",
            self.options.name,
            self.endpoint,
            problems.join("; ")
        ))
        .with_hint(
            "alter the target tables to match the source, drop them and let cutover create them \
             (create_tables = true), or create the missing ones",
        ))
    }

    async fn create_table(&self, table: &TableSchema) -> Result<()> {
        let mut defs: Vec<String> = table
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(&c.name),
                    c.type_name,
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        defs.push(format!("PRIMARY KEY ({})", key_list(table)));
        self.exec(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({})",
            quote_ident(&table.name.schema),
            table.name.quoted(),
            defs.join(", ")
        ))
        .await
    }

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
            match write_table(
                &client,
                &d.layout,
                &table.quoted,
                &table.stage_rows,
                &table.stage_keys,
                &one,
                false,
            )
            .await
            {
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

    /// Checks that a change's column layout is the one the target table was prepared for.
    fn check_layout(&mut self, layout: &Arc<TableSchema>) -> Result<()> {
        let table = self.tables.get_mut(&layout.name).ok_or_else(|| {
            ConnectorError::fatal(format!(
                "the stream has a change to {}, which this pipeline does not replicate",
                layout.name
            ))
        })?;
        if Arc::ptr_eq(&table.layout, layout) {
            return Ok(());
        }
        let same_shape = table.layout.columns.len() == layout.columns.len()
            && table
                .layout
                .columns
                .iter()
                .zip(&layout.columns)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.type_oid == b.type_oid
                        && a.type_modifier == b.type_modifier
                });
        if !same_shape {
            if !self.options.apply_schema_changes {
                return Err(ConnectorError::fatal(format!(
                    "the columns of {} on the source changed and this pipeline does not apply schema changes",
                    layout.name
                ))
                .with_hint("apply the same change to the target table, then restart the pipeline (or set source.schema_changes = \"apply\")"));
            }
            let statements = schema_change(&table.layout, layout, table.from_stream)?;
            let version = table.version + 1;
            let base = table
                .stage_rows
                .split("_v")
                .next()
                .unwrap_or("")
                .to_string();
            let keys_base = table
                .stage_keys
                .split("_v")
                .next()
                .unwrap_or("")
                .to_string();
            let stage_rows = format!("{base}_v{version}");
            let stage_keys = format!("{keys_base}_v{version}");
            let all = layout
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let quoted = table.quoted.clone();
            let mut sql = statements.join(";\n");
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&format!(
                "DROP TABLE IF EXISTS pg_temp.{stage_rows}, pg_temp.{stage_keys};
                 CREATE TEMP TABLE {stage_rows} AS SELECT {all} FROM {quoted} WITH NO DATA;
                 CREATE TEMP TABLE {stage_keys} AS SELECT {keys} FROM {quoted} WITH NO DATA;",
                keys = key_list(layout)
            ));
            if !statements.is_empty() {
                tracing::info!(table = %layout.name, statements = ?statements, "applying a source schema change to the target");
            }
            *table = TargetTable {
                quoted,
                stage_rows,
                stage_keys,
                layout: layout.clone(),
                from_stream: true,
                version,
            };
            self.segments.push(Segment::Ddl(sql));
            return Ok(());
        }
        table.from_stream = true;
        table.layout = layout.clone();
        Ok(())
    }

    /// The folded changes of `layout`'s table in the current (last) segment.
    fn changes(&mut self, layout: &Arc<TableSchema>) -> &mut TableChanges {
        if !matches!(self.segments.last(), Some(Segment::Changes(_))) {
            self.segments.push(Segment::Changes(FxHashMap::default()));
        }
        let Some(Segment::Changes(map)) = self.segments.last_mut() else {
            unreachable!("a Changes segment was just ensured")
        };
        if !map.contains_key(&layout.name) {
            let table = self.tables[&layout.name].clone();
            map.insert(
                layout.name.clone(),
                TableChanges {
                    table,
                    ops: FxHashMap::default(),
                },
            );
        }
        map.get_mut(&layout.name).expect("inserted above")
    }

    fn record(&mut self, layout: &Arc<TableSchema>, change: Change) -> Result<()> {
        self.check_layout(layout)?;
        self.buffered += match &change {
            Change::Insert { row } | Change::Delete { key: row } => row.size(),
            Change::Update { old_key, row } => row.size() + old_key.as_ref().map_or(0, Row::size),
            Change::Truncate => 0,
        };
        match change {
            Change::Insert { row } => insert(self.changes(layout), layout, row),
            Change::Update { old_key, row } => {
                let new_key = key_bytes(layout, &row);
                match old_key.map(|old| (key_bytes(layout, &old), old)) {
                    Some((old_k, old)) if old_k != new_key => {
                        let mut row = row;
                        let changes = self.changes(layout);
                        if let Some(prev) = changes.ops.get(&old_k).and_then(Op::row) {
                            fill_unchanged(&mut row, prev);
                        }
                        if row.0.contains(&Value::Unchanged) {
                            let table = self.tables[&layout.name].clone();
                            self.segments.push(Segment::MoveRow {
                                table,
                                old_key: old,
                                row,
                            });
                        } else {
                            changes.ops.insert(old_k, Op::Delete(old));
                            upsert(changes, layout, row);
                        }
                    }
                    _ => upsert(self.changes(layout), layout, row),
                }
            }
            Change::Delete { key } => {
                let k = key_bytes(layout, &key);
                self.changes(layout).ops.insert(k, Op::Delete(key));
            }
            Change::Truncate => {
                let table = self.tables[&layout.name].clone();
                self.segments.push(Segment::Truncate(table));
            }
        }
        Ok(())
    }

    /// Folds one event into what is buffered.
    fn take(&mut self, event: StreamEvent) -> Result<()> {
        match event {
            StreamEvent::Begin { .. } => self.in_source_txn = true,
            StreamEvent::Change(change) => self.record(&change.table, change.change)?,
            StreamEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.in_source_txn = false;
                self.applied = Some((
                    Checkpoint {
                        commit_lsn,
                        end_lsn,
                    },
                    commit_time_micros,
                ));
            }
        }
        Ok(())
    }
}

/// The statements that take a target table from layout `old` to layout `new` (columns renamed,
/// added with the source's type and default, dropped, retyped). Drops and type changes are
/// made only when `old` came from the stream itself (`narrow`): a replay after a restart
/// starts from a layout older than the catalog's, and must not undo what was applied. Every
/// statement is idempotent. A change of the key columns is refused.
fn schema_change(old: &TableSchema, new: &TableSchema, narrow: bool) -> Result<Vec<String>> {
    let table = new.name.quoted();
    let keys = |t: &TableSchema| -> Vec<String> {
        t.columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.clone())
            .collect()
    };
    let old_names: Vec<&str> = old.columns.iter().map(|c| c.name.as_str()).collect();
    let new_names: Vec<&str> = new.columns.iter().map(|c| c.name.as_str()).collect();
    let mut statements = Vec::new();
    // A rename keeps its position and type: the old name is gone, the new one is new, and both
    // stand at the same place (columns added at the same time come after them).
    let mut renamed: Vec<(&str, &str)> = Vec::new();
    for (a, b) in old.columns.iter().zip(&new.columns) {
        if a.name != b.name
            && a.type_oid == b.type_oid
            && !new_names.contains(&a.name.as_str())
            && !old_names.contains(&b.name.as_str())
        {
            renamed.push((&a.name, &b.name));
            statements.push(format!(
                "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                quote_ident(&a.name),
                quote_ident(&b.name)
            ));
        }
    }
    let old_keys: Vec<String> = keys(old)
        .into_iter()
        .map(|k| {
            renamed
                .iter()
                .find(|(from, _)| *from == k)
                .map_or(k.clone(), |(_, to)| to.to_string())
        })
        .collect();
    if old_keys != keys(new) {
        return Err(ConnectorError::fatal(format!(
            "the key of {} changed on the source ({} to {}); cutover does not change a target's key while streaming",
            new.name,
            old_keys.join(", "),
            keys(new).join(", ")
        ))
        .with_hint("make the same change on the target table, then restart the pipeline"));
    }
    let was = |name: &str| -> Option<&cutover_core::Column> {
        let original = renamed
            .iter()
            .find(|(_, to)| *to == name)
            .map_or(name, |(from, _)| *from);
        old.columns.iter().find(|c| c.name == original)
    };
    for c in &new.columns {
        match was(&c.name) {
            None => {
                if c.type_name.is_empty() {
                    return Err(ConnectorError::fatal(format!(
                        "column {} was added to {} on the source, and its type could not be read from the source's catalog",
                        c.name, new.name
                    ))
                    .with_hint("add the column to the target table yourself, then restart the pipeline"));
                }
                let default = c
                    .default
                    .as_ref()
                    .map(|d| format!(" DEFAULT {d}"))
                    .unwrap_or_default();
                statements.push(format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}{default}",
                    quote_ident(&c.name),
                    c.type_name
                ));
            }
            Some(o)
                if narrow && (o.type_oid != c.type_oid || o.type_modifier != c.type_modifier) =>
            {
                if c.type_name.is_empty() {
                    return Err(ConnectorError::fatal(format!(
                        "column {} of {} changed type on the source, and the new type could not be read from the source's catalog",
                        c.name, new.name
                    ))
                    .with_hint("change the column on the target table yourself, then restart the pipeline"));
                }
                statements.push(format!(
                    "ALTER TABLE {table} ALTER COLUMN {col} TYPE {ty} USING {col}::{ty}",
                    col = quote_ident(&c.name),
                    ty = c.type_name
                ));
            }
            Some(_) => {}
        }
    }
    if narrow {
        for c in &old.columns {
            let kept = new_names.contains(&c.name.as_str())
                || renamed.iter().any(|(from, _)| *from == c.name);
            if !kept {
                statements.push(format!(
                    "ALTER TABLE {table} DROP COLUMN IF EXISTS {}",
                    quote_ident(&c.name)
                ));
            }
        }
    }
    Ok(statements)
}

/// Moves one row to a new key in place, keeping the columns the source did not resend.
async fn move_row(client: &Client, table: &TargetTable, old_key: &Row, row: &Row) -> Result<()> {
    let layout = &table.layout;
    let present: Vec<usize> = (0..row.0.len())
        .filter(|&i| row.0[i] != Value::Unchanged)
        .collect();
    let keys: Vec<usize> = layout.key_indexes().collect();
    let sets = present
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = ${}", quote_ident(&layout.columns[i].name), n + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let conds = keys
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            format!(
                "{} = ${}",
                quote_ident(&layout.columns[i].name),
                present.len() + n + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let params: Vec<RawParam> = present
        .iter()
        .map(|&i| RawParam(&row.0[i]))
        .chain(keys.iter().map(|&i| RawParam(&old_key.0[i])))
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client
        .execute(
            &format!("UPDATE {} SET {sets} WHERE {conds}", table.quoted),
            &refs,
        )
        .await
        .map(|_| ())
        .map_err(|e| classify(e, &format!("cannot move a row of {}", layout.name)))
}

/// Everything one sealed write needs, owned, so it can run while the sink folds the next batch.
struct Write {
    client: Arc<Client>,
    segments: Vec<Segment>,
    begin: bool,
    commit: Option<(Checkpoint, i64)>,
    pipeline: String,
    sink: String,
    any_parked: Arc<std::sync::atomic::AtomicBool>,
    parked: Arc<std::sync::atomic::AtomicU64>,
    unflushed: Arc<std::sync::Mutex<Unflushed>>,
    async_commit: bool,
}

impl Write {
    /// Writes one table's folded changes. A change the target rejects for good (a data or
    /// integrity error) is found by writing the batch's changes one by one, and parked with
    /// the reason; the others are written. Keys with parked changes wait behind them.
    async fn write_changes(&self, changes: TableChanges) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let client = &self.client;
        let TableChanges { table, mut ops } = changes;
        let t = &table;
        let ctx = format!("target {}", self.sink);
        let exec = |sql: &'static str| async {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| classify(e, &ctx))
        };
        if self.any_parked.load(Relaxed) {
            let parked = crate::dead_letters::parked_keys(
                client,
                &self.pipeline,
                &self.sink,
                &t.layout.name,
            )
            .await?;
            let waiting: Vec<Vec<u8>> = ops
                .keys()
                .filter(|k| parked.contains(*k))
                .cloned()
                .collect();
            for key in waiting {
                let op = ops.remove(&key).expect("listed above");
                self.park(
                    &t.layout,
                    &key,
                    &op,
                    "waiting behind an earlier parked change of this key".into(),
                )
                .await?;
            }
        }
        exec("SAVEPOINT cutover_batch").await?;
        let write = |new_rows_by_copy: bool| {
            write_table(
                client,
                &t.layout,
                &t.quoted,
                &t.stage_rows,
                &t.stage_keys,
                &ops,
                new_rows_by_copy,
            )
        };
        let mut result = write(true).await;
        if result.as_ref().is_err_and(|e| e.kind == ErrorKind::Poison)
            && ops.values().any(|op| matches!(op, Op::Insert(_)))
        {
            // Most often a new row whose key the target has after all (a replay, rows of a
            // merged copy): the batch again, its new rows as upserts.
            exec("ROLLBACK TO SAVEPOINT cutover_batch").await?;
            result = write(false).await;
        }
        match result {
            Ok(()) => exec("RELEASE SAVEPOINT cutover_batch").await,
            Err(e) if e.kind == ErrorKind::Poison => {
                exec("ROLLBACK TO SAVEPOINT cutover_batch").await?;
                tracing::info!(sink = %self.sink, table = %t.layout.name, changes = ops.len(), error = %e, "the target rejected a batch; writing its changes one by one to find the rejected ones");
                for (key, op) in ops {
                    let one: FxHashMap<Vec<u8>, Op> = [(key, op)].into_iter().collect();
                    exec("SAVEPOINT cutover_row").await?;
                    let result = write_table(
                        client,
                        &t.layout,
                        &t.quoted,
                        &t.stage_rows,
                        &t.stage_keys,
                        &one,
                        false,
                    )
                    .await;
                    match result {
                        Ok(()) => exec("RELEASE SAVEPOINT cutover_row").await?,
                        Err(e) if e.kind == ErrorKind::Poison => {
                            exec("ROLLBACK TO SAVEPOINT cutover_row").await?;
                            let (key, op) = one.into_iter().next().expect("one change");
                            self.park(&t.layout, &key, &op, e.message.clone()).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                exec("RELEASE SAVEPOINT cutover_batch").await
            }
            Err(e) => Err(e),
        }
    }

    async fn park(&self, layout: &TableSchema, key: &[u8], op: &Op, reason: String) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let (op, row) = match op {
            Op::Insert(row) | Op::Upsert(row) => ("upsert", row),
            Op::Delete(row) => ("delete", row),
        };
        crate::dead_letters::park(
            &self.client,
            &self.pipeline,
            &self.sink,
            crate::dead_letters::Parked {
                layout,
                key_bytes: key,
                op,
                row,
                commit_lsn: self.commit.map(|(cp, _)| cp.commit_lsn.to_string()),
                reason,
            },
        )
        .await?;
        self.any_parked.store(true, Relaxed);
        self.parked.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn run(mut self) -> Result<Option<Checkpoint>> {
        let ctx = format!("target {}", self.sink);
        let client = &self.client;
        let ctx_ref = &ctx;
        let exec = |sql: String| async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(e, ctx_ref))
        };
        if self.begin {
            exec("BEGIN".to_string()).await?;
        }
        for segment in std::mem::take(&mut self.segments) {
            match segment {
                Segment::Changes(tables) => {
                    for (_, changes) in tables {
                        self.write_changes(changes).await?;
                    }
                }
                Segment::Truncate(table) => exec(format!("TRUNCATE {}", table.quoted)).await?,
                Segment::MoveRow {
                    table,
                    old_key,
                    row,
                } => move_row(client, &table, &old_key, &row).await?,
                Segment::Ddl(sql) => exec(sql).await?,
            }
        }
        let Some((cp, commit_time)) = self.commit else {
            return Ok(None);
        };
        client
            .execute(
                &format!(
                    "INSERT INTO {STATE_SCHEMA}.checkpoints AS c (pipeline, sink, commit_lsn, end_lsn, commit_time)
                     VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, to_timestamp($5::float8 / 1e6))
                     ON CONFLICT (pipeline, sink) DO UPDATE
                        SET commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn,
                            commit_time = EXCLUDED.commit_time, updated_at = now()"
                ),
                &[
                    &self.pipeline,
                    &self.sink,
                    &cp.commit_lsn.to_string(),
                    &cp.end_lsn.to_string(),
                    &(commit_time as f64),
                ],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        if !self.async_commit {
            exec("COMMIT".to_string()).await?;
            return Ok(Some(cp));
        }
        // The commit does not wait for the flush; the same round trip reads where its commit
        // record ends (at or before the insert position after it) and how far the WAL is flushed.
        let replies = client
            .simple_query(
                "COMMIT; SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text",
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        let (wal_end, flushed) = replies
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some((row.get(0), row.get(1))),
                _ => None,
            })
            .and_then(|(a, b)| Some((a?.parse::<Lsn>().ok()?, b?.parse::<Lsn>().ok()?)))
            .ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "{ctx}: the target did not report its WAL positions after a commit"
                ))
            })?;
        let mut unflushed = self.unflushed.lock().expect("never poisoned");
        unflushed.committed(wal_end, cp);
        Ok(unflushed.flushed_to(flushed))
    }
}

/// Makes every commit of the sink durable on the target with one synchronous commit (which
/// flushes the WAL up to it, and so every earlier commit), and returns the newest checkpoint
/// that was waiting for it.
async fn settle(
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

/// How a target table compares with the source's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableCheck {
    Ready,
    /// Only columns differ (missing, or of another type): a table cutover copied is then written
    /// in its own layout until the stream announces the source's change.
    Behind {
        problems: Vec<String>,
    },
    Missing,
    Mismatch(Vec<String>),
}

fn parse_lsn(text: String) -> Result<Lsn> {
    text.parse()
        .map_err(|e: cutover_core::ParseLsnError| ConnectorError::fatal(e.to_string()))
}

fn key_list(table: &TableSchema) -> String {
    table
        .key_indexes()
        .map(|i| quote_ident(&table.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key's values of `row`, length-prefixed, as a map key. Binary equality is value equality
/// for the key types PostgreSQL compares bytewise (integers, text, uuid, dates...).
fn key_bytes(layout: &TableSchema, row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for i in layout.key_indexes() {
        match &row.0[i] {
            Value::Binary(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            _ => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

fn fill_unchanged(row: &mut Row, from: &Row) {
    for (v, prev) in row.0.iter_mut().zip(&from.0) {
        if *v == Value::Unchanged {
            *v = prev.clone();
        }
    }
}

fn upsert(changes: &mut TableChanges, layout: &TableSchema, mut row: Row) {
    let key = key_bytes(layout, &row);
    let prev = changes.ops.get(&key);
    if row.0.contains(&Value::Unchanged) {
        if let Some(prev) = prev.and_then(Op::row) {
            fill_unchanged(&mut row, prev);
        }
    }
    // A row inserted earlier in this batch is still new after its updates.
    let op = if matches!(prev, Some(Op::Insert(_))) {
        Op::Insert(row)
    } else {
        Op::Upsert(row)
    };
    changes.ops.insert(key, op);
}

/// Folds a source INSERT: new to the batch, or, after a change of the same key (a delete and
/// a new row under the old key), an upsert.
fn insert(changes: &mut TableChanges, layout: &TableSchema, row: Row) {
    match changes.ops.entry(key_bytes(layout, &row)) {
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(Op::Insert(row));
        }
        std::collections::hash_map::Entry::Occupied(_) => upsert(changes, layout, row),
    }
}

/// Writes one table's net changes with set-based statements.
async fn write_table(
    client: &Client,
    layout: &TableSchema,
    quoted: &str,
    stage_rows: &str,
    stage_keys: &str,
    pending: &FxHashMap<Vec<u8>, Op>,
    new_rows_by_copy: bool,
) -> Result<()> {
    let ctx = format!("cannot apply changes to {}", layout.name);
    let keys: Vec<usize> = layout.key_indexes().collect();
    let all: Vec<usize> = (0..layout.columns.len()).collect();
    let mut deletes = Vec::new();
    let mut full = Vec::new();
    let mut new_rows = Vec::new();
    let mut partial: BTreeMap<Vec<usize>, Vec<&Row>> = BTreeMap::new();
    for op in pending.values() {
        match op {
            Op::Delete(k) => deletes.push(k),
            Op::Insert(row) if new_rows_by_copy && !row.0.contains(&Value::Unchanged) => {
                new_rows.push(row)
            }
            Op::Insert(row) | Op::Upsert(row) if row.0.contains(&Value::Unchanged) => {
                let present: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&i| row.0[i] != Value::Unchanged)
                    .collect();
                partial.entry(present).or_default().push(row);
            }
            Op::Insert(row) | Op::Upsert(row) => full.push(row),
        }
    }
    let names = |cols: &[usize]| {
        cols.iter()
            .map(|&i| quote_ident(&layout.columns[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key_match = |alias: &str| {
        keys.iter()
            .map(|&i| {
                let c = quote_ident(&layout.columns[i].name);
                format!("t.{c} = {alias}.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // Sets `cols` of the rows whose keys are staged.
    let update_from = |cols: &[usize]| {
        let sets = cols
            .iter()
            .map(|&i| {
                let c = quote_ident(&layout.columns[i].name);
                format!("{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {quoted} t SET {sets} FROM {stage_rows} s WHERE {};",
            key_match("s")
        )
    };
    let mut sql = String::new();
    let t0 = std::time::Instant::now();
    if !deletes.is_empty() {
        copy_rows(client, stage_keys, layout, &keys, &deletes, &ctx).await?;
        sql.push_str(&format!(
            "DELETE FROM {quoted} t USING {stage_keys} s WHERE {}; TRUNCATE {stage_keys};",
            key_match("s")
        ));
    }
    // Deletes land before the rows are written (a key may have moved between rows); all of it
    // runs inside the one target transaction.
    let non_key: Vec<usize> = all.iter().copied().filter(|i| !keys.contains(i)).collect();
    let insert_missing = format!(
        "INSERT INTO {quoted} ({cols}) SELECT {cols} FROM {stage_rows} ON CONFLICT ({keys}) DO NOTHING;",
        cols = names(&all),
        keys = names(&keys),
    );
    let mut updated = None;
    if !full.is_empty() {
        copy_rows(client, stage_rows, layout, &all, &full, &ctx).await?;
        if non_key.is_empty() {
            sql.push_str(&insert_missing);
            sql.push_str(&format!("TRUNCATE {stage_rows};"));
        } else {
            // A full row is almost always one the target has (the source updated it), so it
            // is written by a join update, which costs less per row than `ON CONFLICT DO
            // UPDATE` (measured). The rows it did not find are inserted next.
            sql.push_str(&update_from(&non_key));
            updated = Some(full.len() as u64);
        }
    }
    let copied = t0.elapsed();
    if !sql.is_empty() {
        let done = client
            .simple_query(&sql)
            .await
            .map_err(|e| classify(e, &ctx))?;
        if let Some(expected) = updated {
            // The last statement's count is the update's.
            let found = done
                .iter()
                .rev()
                .find_map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0);
            let rest = if found < expected {
                format!("{insert_missing} TRUNCATE {stage_rows};")
            } else {
                format!("TRUNCATE {stage_rows};")
            };
            client
                .batch_execute(&rest)
                .await
                .map_err(|e| classify(e, &ctx))?;
        }
    }
    // New rows go straight into the table: no staging, no conflict check per row (measured:
    // a 25k-insert, 25k-update batch in 0.25 s instead of 0.30 s). A key the target has after
    // all fails the COPY with a unique violation, and the caller writes the batch again with
    // `new_rows_by_copy` off.
    if !new_rows.is_empty() {
        copy_rows(client, quoted, layout, &all, &new_rows, &ctx).await?;
    }
    tracing::debug!(
        table = %layout.name,
        deletes = deletes.len(),
        inserts = new_rows.len(),
        upserts = full.len(),
        copy_ms = copied.as_secs_f64() * 1e3,
        merge_ms = (t0.elapsed() - copied).as_secs_f64() * 1e3,
        "wrote batch"
    );
    for (present, rows) in partial {
        copy_rows(client, stage_rows, layout, &present, &rows, &ctx).await?;
        let sets: Vec<usize> = present
            .iter()
            .copied()
            .filter(|i| !keys.contains(i))
            .collect();
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str(&update_from(&sets));
        }
        sql.push_str(&format!("TRUNCATE {stage_rows};"));
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| classify(e, &ctx))?;
    }
    Ok(())
}

/// Binary-COPYs the `cols` of `rows` into `table`.
async fn copy_rows(
    client: &Client,
    table: &str,
    layout: &TableSchema,
    cols: &[usize],
    rows: &[&Row],
    ctx: &str,
) -> Result<()> {
    let list = cols
        .iter()
        .map(|&i| quote_ident(&layout.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sink = open_binary_copy(client, table, &list, ctx).await?;
    let mut buf = BytesMut::with_capacity(COPY_CHUNK.min(rows.len() * 64 + 32));
    for row in rows {
        put_row(&mut buf, cols.iter().map(|&i| &row.0[i]));
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze())
                .await
                .map_err(|e| classify(e, ctx))?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.freeze())
            .await
            .map_err(|e| classify(e, ctx))?;
    }
    close_binary_copy(sink, ctx).await
}

/// Starts `COPY table (list) FROM STDIN (FORMAT binary)`; the header is queued.
async fn open_binary_copy(
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
async fn close_binary_copy(mut sink: Pin<Box<CopyInSink<Bytes>>>, ctx: &str) -> Result<()> {
    let mut tail = BytesMut::with_capacity(2);
    put_trailer(&mut tail);
    sink.send(tail.freeze())
        .await
        .map_err(|e| classify(e, ctx))?;
    sink.as_mut().finish().await.map_err(|e| classify(e, ctx))?;
    Ok(())
}

#[async_trait]
impl Sink for PgSink {
    fn name(&self) -> &str {
        &self.options.name
    }

    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState> {
        // Check everything before creating anything, so a mistake leaves no half-made target.
        self.check_tables(tables).await?;
        // Staging a batch in temporary tables that spill to disk costs about a third more
        // (measured); this must be set before the session first touches a temporary table.
        let temp_mib = (self.options.batch_bytes * 3 / (1 << 20)).clamp(32, 1024);
        self.exec(&format!("SET temp_buffers = '{temp_mib}MB'"))
            .await?;
        // Every join this session runs matches a batch's keys against a target table's key
        // index. The staging tables are never analyzed, so without this the planner may hash the
        // whole target table on every flush.
        self.exec("SET enable_hashjoin = off; SET enable_mergejoin = off")
            .await?;
        // A large batch's merge is costed above `jit_above_cost`, so the server would compile
        // it to machine code on every flush: tens of milliseconds that this simple DML never
        // wins back (measured in BENCHMARKS.md).
        self.exec("SET jit = off").await?;
        // Commits do not wait for the target's WAL flush (as native logical replication's apply
        // worker); checkpoints are reported once flushed (see `Unflushed`). That needs the
        // target's WAL positions, which some servers do not show every role; there every commit
        // waits for the flush. Copies commit on connections of their own, synchronously.
        self.async_commit = self
            .client
            .simple_query("SELECT pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()")
            .await
            .is_ok();
        if self.async_commit {
            self.exec("SET synchronous_commit = off").await?;
        } else {
            tracing::info!(sink = %self.options.name, "the target does not show this role its WAL positions: each commit waits for the target's flush");
        }
        self.create_state_tables().await?;
        // A copied table whose columns the source changed while cutover was not streaming is
        // written in the target's own layout until the stream announces the change, which then
        // applies it in stream order (the stream never runs behind what the target applied).
        let mut behind = HashMap::new();
        for table in tables {
            match self.inspect_table(table).await? {
                TableCheck::Missing => self.create_table(table).await?,
                TableCheck::Behind { problems, .. } => {
                    tracing::info!(table = %table.name, differences = ?problems, "the source changed this table's columns while cutover was stopped; the stream will apply the change");
                    behind.insert(table.name.clone(), self.target_layout(table).await?);
                }
                _ => {}
            }
        }
        self.state = self.read_state().await?;
        self.any_parked.store(
            crate::dead_letters::any(&self.client, &self.options.pipeline, &self.options.name)
                .await?,
            std::sync::atomic::Ordering::Relaxed,
        );
        for source_table in tables {
            let from_target = behind.remove(&source_table.name);
            let from_stream = from_target.is_some();
            let table = from_target.as_ref().unwrap_or(source_table);
            if !self.state.copied_tables.contains_key(&table.name) {
                self.refuse_foreign_rows(table).await?;
            }
            self.stage(table, from_stream).await?;
        }
        Ok(self.state.clone())
    }

    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        self.check_tables(std::slice::from_ref(&table)).await?;
        if self.inspect_table(&table).await? == TableCheck::Missing {
            self.create_table(&table).await?;
        }
        self.refuse_foreign_rows(&table).await?;
        self.stage(&table, false).await
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        let client = self.endpoint.connect().await?;
        let ctx = format!("cannot copy {} into {}", table.name, self.options.name);
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(e, &ctx))?;
        Ok(Box::new(PgTableCopy {
            client,
            copy: None,
            refused: false,
            chunk: BytesMut::with_capacity(COPY_CHUNK + (64 << 10)),
            kept: Vec::new(),
            kept_len: 0,
            starts: Vec::new(),
            table,
            snapshot_lsn,
            rows: 0,
            pipeline: self.options.pipeline.clone(),
            sink_name: self.options.name.clone(),
            ctx,
            any_parked: self.any_parked.clone(),
            parked: self.parked.clone(),
        }))
    }

    async fn apply(&mut self, event: StreamEvent) -> Result<()> {
        self.take(event)
    }

    async fn apply_all(&mut self, events: Vec<StreamEvent>) -> Result<()> {
        for event in events {
            self.take(event)?;
        }
        Ok(())
    }

    fn seal(&mut self) -> PendingWrite {
        let segments = std::mem::take(&mut self.segments);
        let commit = if self.in_source_txn {
            None
        } else {
            self.applied.take()
        };
        self.buffered = 0;
        if segments.is_empty() && commit.is_none() {
            return Box::pin(async { Ok(None) });
        }
        let begin = !self.txn_open;
        self.txn_open = commit.is_none();
        Box::pin(
            Write {
                client: self.client.clone(),
                segments,
                begin,
                commit,
                pipeline: self.options.pipeline.clone(),
                sink: self.options.name.clone(),
                any_parked: self.any_parked.clone(),
                parked: self.parked.clone(),
                unflushed: self.unflushed.clone(),
                async_commit: self.async_commit,
            }
            .run(),
        )
    }

    fn unsettled(&self) -> bool {
        !self.txn_open && !self.unflushed.lock().expect("never poisoned").0.is_empty()
    }

    fn settle(&mut self) -> PendingWrite {
        if !self.unsettled() {
            return Box::pin(async { Ok(None) });
        }
        Box::pin(settle(
            self.client.clone(),
            self.options.pipeline.clone(),
            self.options.name.clone(),
            self.unflushed.clone(),
        ))
    }

    fn parked(&self) -> u64 {
        self.parked.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn buffered_bytes(&self) -> usize {
        self.buffered
    }
}

/// A snapshot copy of one table into the target, in its own transaction. Rows stream to the
/// server as they come, in segments of `COPY_SEGMENT` bytes, one COPY each under a savepoint;
/// the segment's encoded rows are kept (shared, not copied) until its COPY is done. When the
/// target refuses a segment for good (a constraint or type only the target has), the segment
/// is halved until the refused rows are found; each is parked in `cutover.dead_letters` (op
/// `upsert`, in this transaction) and the rest are copied. Later changes of a parked key wait
/// behind it.
struct PgTableCopy {
    client: Client,
    /// The COPY of the current segment (`None` before its first row, or once the target
    /// refused it: its rows are then only kept, for the search).
    copy: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// Whether the target refused the current segment.
    refused: bool,
    /// Tuples being encoded, not yet sent.
    chunk: BytesMut,
    /// The current segment's tuples already sent, and their length.
    kept: Vec<Bytes>,
    kept_len: usize,
    /// Where each tuple of the current segment starts.
    starts: Vec<usize>,
    table: Arc<TableSchema>,
    snapshot_lsn: Lsn,
    rows: u64,
    pipeline: String,
    sink_name: String,
    ctx: String,
    any_parked: Arc<std::sync::atomic::AtomicBool>,
    parked: Arc<std::sync::atomic::AtomicU64>,
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
        self.client
            .execute(
                &format!(
                    "INSERT INTO {STATE_SCHEMA}.copied_tables (pipeline, sink, table_schema, table_name, snapshot_lsn, rows)
                     VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6)
                     ON CONFLICT (pipeline, sink, table_schema, table_name) DO UPDATE
                        SET snapshot_lsn = EXCLUDED.snapshot_lsn, rows = EXCLUDED.rows, copied_at = now()"
                ),
                &[
                    &self.pipeline,
                    &self.sink_name,
                    &self.table.name.schema,
                    &self.table.name.name,
                    &self.snapshot_lsn.to_string(),
                    &(self.rows as i64),
                ],
            )
            .await
            .map_err(|e| classify(e, &self.ctx))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &self.ctx))?;
        Ok(self.rows)
    }
}

/// A value already in its type's binary format, passed as a statement parameter unchanged.
#[derive(Debug)]
struct RawParam<'a>(&'a Value);

impl ToSql for RawParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Binary(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            Value::Null | Value::Unchanged => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
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
