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

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use cutover_core::{
    Checkpoint, Lsn, PendingWrite, Result, Row, Sink, SinkState, StreamEvent, TableCopy, TableName,
    TableSchema,
};
use rustc_hash::FxHashMap;
use tokio_postgres::Client;

use crate::conn::PgEndpoint;
use crate::error::classify;

mod copy;
mod ddl;
mod fold;
mod inspect;
mod letters;
mod state;
mod write;

pub use crate::dead_letters::STATE_SCHEMA;
pub use inspect::{Firing, TableCheck};

use copy::PgTableCopy;
use fold::TableChanges;
use state::{settle, Unflushed};
use write::Write;

/// Bytes of COPY data sent to the server per message.
const COPY_CHUNK: usize = 1 << 20;

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
    /// See [`cutover_core::TargetContext::adopt_at`].
    pub adopt_at: Option<cutover_core::Lsn>,
    /// See [`cutover_core::TargetContext::applying`]: tables are never refused for holding
    /// rows, and each write's checkpoint is fenced (written only if the stored one has not
    /// moved past the write's first position).
    pub applying: bool,
}

/// A PostgreSQL target.
pub struct PgSink {
    endpoint: PgEndpoint,
    options: PgSinkOptions,
    client: Arc<Client>,
    /// The server process of `client`'s session (what [`Sink::stuck`] looks at).
    backend_pid: i32,
    /// Whether this sink's sessions apply as replicas (see [`crate::conn::connect_applying`]).
    role: crate::conn::ApplyRole,
    /// When the target's foreign keys fire for this sink (it applies as an ordinary session):
    /// each table's depth among the sink's tables linked by foreign keys (a referenced table
    /// is shallower than the tables referencing it), by quoted name; a write then deletes
    /// children first and writes parents first.
    fk_depth: Option<Arc<HashMap<String, usize>>>,
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
    /// Tables marked to be copied again (`cutover recover`): their rows are cutover's, and
    /// the copy replaces them in its transaction.
    recopy: std::collections::HashSet<TableName>,
    /// Key ranges of split tables recorded as copied, read at open (see `copied_ranges`).
    ranges: std::collections::BTreeMap<TableName, cutover_core::ranges::RangesCopied>,
    /// Whether each table inspected has a unique index of its own on the key (see
    /// [`TargetTable::conflict_arbiter`]), as the inspection found it: staging reads it from here
    /// rather than asking again.
    arbiters: std::sync::Mutex<HashMap<TableName, bool>>,
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
    /// The table itself has a unique index on the key, which `INSERT ... ON CONFLICT` needs.
    /// A partitioned table keyed only by its partitions' keys (PostgreSQL 10 cannot key the
    /// root) has none: rows it may hold are then skipped by `NOT EXISTS`.
    conflict_arbiter: bool,
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

impl PgSink {
    /// The target this sink writes to.
    pub fn endpoint(&self) -> &PgEndpoint {
        &self.endpoint
    }

    pub async fn connect(endpoint: PgEndpoint, options: PgSinkOptions) -> Result<Self> {
        let (client, role) = endpoint.connect_applying().await?;
        if role == crate::conn::ApplyRole::Origin {
            tracing::warn!(sink = %options.name, "the target role may not set session_replication_role = replica: the target's triggers and foreign keys fire for replicated rows (cutover check lists them)");
        }
        let backend_pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| classify(e, &format!("target {}", options.name)))?
            .get(0);
        let client = Arc::new(client);
        Ok(PgSink {
            endpoint,
            options,
            client,
            backend_pid,
            role,
            fk_depth: None,
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
            recopy: Default::default(),
            ranges: Default::default(),
            arbiters: Default::default(),
        })
    }

    /// The depths of [`PgSink::fk_depth`], read from the target's catalog; `None` when the
    /// sink applies as a replica (foreign keys do not fire) or no foreign key links its tables.
    async fn foreign_key_depths(&self) -> Result<Option<Arc<HashMap<String, usize>>>> {
        if self.role == crate::conn::ApplyRole::Replica {
            return Ok(None);
        }
        let names: Vec<String> = self.tables.values().map(|t| t.quoted.clone()).collect();
        let edges: Vec<(String, String)> = self
            .client
            .query(
                "SELECT c.n, p.n FROM unnest($1::text[]) c(n), unnest($1::text[]) p(n), pg_constraint k
                  WHERE k.contype = 'f' AND k.conrelid = to_regclass(c.n) AND k.confrelid = to_regclass(p.n)
                    AND c.n <> p.n",
                &[&names],
            )
            .await
            .map_err(|e| classify(e, &format!("target {}: cannot read its foreign keys", self.options.name)))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok((!edges.is_empty()).then(|| Arc::new(fold::depths(&edges))))
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, &format!("target {}", self.options.name)))
    }

    /// Opens a copy of `table` (or of one key `range` of it) in a transaction of its own.
    async fn start_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
        range: Option<cutover_core::ranges::KeyRange>,
    ) -> Result<Box<dyn TableCopy>> {
        let (client, _) = self.endpoint.connect_applying().await?;
        let ctx = match &range {
            Some(r) => format!(
                "cannot copy range {r} of {} into {}",
                table.name, self.options.name
            ),
            None => format!("cannot copy {} into {}", table.name, self.options.name),
        };
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(e, &ctx))?;
        if range.is_none() && self.recopy.contains(&table.name) {
            // Readers see the old rows until the copy commits; a crash keeps them and the mark.
            tracing::info!(sink = %self.options.name, table = %table.name, "copying again: the table's rows are replaced in the copy's transaction");
            client
                .batch_execute(&format!("DELETE FROM {}", table.name.quoted()))
                .await
                .map_err(|e| classify(e, &ctx))?;
        }
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
            range,
            rows: 0,
            pipeline: self.options.pipeline.clone(),
            sink_name: self.options.name.clone(),
            ctx,
            any_parked: self.any_parked.clone(),
            parked: self.parked.clone(),
        }))
    }
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
        // (`jit` came with 11.)
        if crate::version::read(&self.client, "target")
            .await?
            .version_num
            >= 110000
        {
            self.exec("SET jit = off").await?;
        }
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
        self.recopy = self.recopy_tables().await?;
        self.ranges = self.read_ranges().await?;
        self.any_parked.store(
            crate::dead_letters::any(&self.client, &self.options.pipeline, &self.options.name)
                .await?,
            std::sync::atomic::Ordering::Relaxed,
        );
        for source_table in tables {
            let from_target = behind.remove(&source_table.name);
            let from_stream = from_target.is_some();
            let table = from_target.as_ref().unwrap_or(source_table);
            // A table some of whose ranges are copied holds cutover's rows already.
            if !self.options.applying
                && !self.state.copied_tables.contains_key(&table.name)
                && !self.recopy.contains(&table.name)
                && !self.ranges.contains_key(&table.name)
            {
                match self.options.adopt_at {
                    Some(at) => self.adopt(table, at).await?,
                    None => self.refuse_foreign_rows(table).await?,
                }
            }
            self.stage(table, from_stream).await?;
        }
        self.fk_depth = self.foreign_key_depths().await?;
        Ok(self.state.clone())
    }

    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        self.check_tables(std::slice::from_ref(&table)).await?;
        if self.inspect_table(&table).await? == TableCheck::Missing {
            self.create_table(&table).await?;
        }
        if !self.options.applying {
            self.refuse_foreign_rows(&table).await?;
        }
        self.stage(&table, false).await?;
        self.fk_depth = self.foreign_key_depths().await?;
        Ok(())
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        self.start_copy(table, snapshot_lsn, None).await
    }

    async fn copy_again(&mut self, table: Arc<TableSchema>) -> Result<()> {
        // The copy deletes the table's rows in its transaction, as after `cutover recover`.
        self.recopy.insert(table.name.clone());
        Ok(())
    }

    fn copies_ranges(&self, table: &TableName) -> bool {
        // A table marked for a new copy is replaced whole, in one transaction.
        !self.recopy.contains(table)
    }

    fn copy_depth(&self, table: &TableName) -> usize {
        self.fk_depth
            .as_ref()
            .and_then(|d| d.get(&table.quoted()).copied())
            .unwrap_or(0)
    }

    fn copied_ranges(
        &self,
    ) -> std::collections::BTreeMap<TableName, cutover_core::ranges::RangesCopied> {
        self.ranges.clone()
    }

    async fn begin_range_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
        range: cutover_core::ranges::KeyRange,
    ) -> Result<Box<dyn TableCopy>> {
        self.start_copy(table, snapshot_lsn, Some(range)).await
    }

    async fn finish_ranges(&self, table: &TableName, snapshot_lsn: Lsn, rows: u64) -> Result<()> {
        self.record_ranges_done(table, snapshot_lsn, rows).await
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
                fenced: self.options.applying,
                fk_depth: self.fk_depth.clone(),
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

    fn stuck(&self, give_up: bool) -> Option<cutover_core::StuckReport> {
        let endpoint = self.endpoint.clone();
        let pid = self.backend_pid;
        Some(Box::pin(async move {
            crate::conn::what_session_waits_on(&endpoint, pid, give_up).await
        }))
    }
}
