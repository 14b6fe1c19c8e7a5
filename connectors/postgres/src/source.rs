//! The PostgreSQL source: publication and slot, snapshot copy, change stream.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::ranges::{KeyRange, Split};
use cutover_core::{
    quote_ident, Change, ChangeEvent, ConnectorError, Lsn, Position, Result, Row, Source,
    StreamEvent, StreamItem, TableName, TableSchema, Value,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::catalog::{self, SourceTable};
use crate::conn::PgEndpoint;
use crate::copy_binary::CopyParser;
use crate::error::{classify, classify_replication};
use crate::partitions;
use crate::pgoutput::{Decoder, Message};
use crate::preflight::{self, Finding};
use crate::replication::{ReplicationError, ReplicationSession, WalEvent, WalStream};
use crate::version::Capabilities;

/// Raw messages the replication client holds for the feed (see [`Feed`]): few, so that what
/// waits between the socket and the decoder is bounded by the feed's bytes, not by a count of
/// messages that may each be a large row.
const RAW_EVENTS: usize = 16;

/// Microseconds between the PostgreSQL epoch (2000-01-01) and the Unix epoch.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// What the source replicates and under which names.
#[derive(Debug, Clone)]
pub struct PgSourceOptions {
    /// Table selection patterns (`schema.table`, `schema.*`).
    pub tables: Vec<String>,
    /// Patterns of sequences that move with the switch besides those the tables' columns use.
    pub sequences: Vec<String>,
    pub slot: String,
    pub publication: String,
    /// Shown as `application_name` in `pg_stat_activity` and `pg_stat_replication`.
    pub application_name: String,
    /// Bytes of raw replication messages buffered between the socket and the decoder (one
    /// message larger than this is still taken, alone).
    pub stream_buffer_bytes: usize,
}

/// How the replication slot was found.
pub enum SlotStart {
    /// Created now, with an exported snapshot that is consistent with the slot's start.
    Created(SnapshotSession),
    /// Already there from an earlier run.
    Existing,
}

/// A replication session holding an exported snapshot: tables read with
/// `SET TRANSACTION SNAPSHOT name` see exactly the data committed before `lsn`, and the slot
/// streams exactly the transactions committed from `lsn` on. The snapshot lives as long as this
/// value; a temporary slot behind it is dropped with it.
pub struct SnapshotSession {
    _session: ReplicationSession,
    pub snapshot_name: String,
    pub lsn: Lsn,
}

impl SnapshotSession {
    /// The statements that open a read-only transaction on this snapshot.
    fn setup(&self) -> String {
        format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            self.snapshot_name.replace('\'', "''")
        )
    }
}

/// A connected PostgreSQL source with its resolved tables.
pub struct PgSource {
    endpoint: PgEndpoint,
    options: PgSourceOptions,
    client: Client,
    /// What the source server's version can do.
    caps: Capabilities,
    tables: Vec<SourceTable>,
    /// The leaf partitions of each selected partitioned table when this source connected.
    partitions: BTreeMap<TableName, BTreeSet<TableName>>,
}

impl PgSource {
    /// Connects and resolves the table selection against the catalog.
    pub async fn connect(endpoint: PgEndpoint, options: PgSourceOptions) -> Result<Self> {
        let client = endpoint.connect().await?;
        let caps = crate::version::read(&client, "source").await?;
        let tables = catalog::resolve_tables(&client, &options.tables).await?;
        let mut source = PgSource {
            endpoint,
            options,
            client,
            caps,
            tables,
            partitions: BTreeMap::new(),
        };
        source.partitions = source.current_partitions().await?;
        Ok(source)
    }

    /// The leaf partitions of each selected partitioned table now.
    async fn current_partitions(&self) -> Result<BTreeMap<TableName, BTreeSet<TableName>>> {
        let mut out = BTreeMap::new();
        for t in self.tables.iter().filter(|t| t.relkind == 'p') {
            out.insert(
                t.schema.name.clone(),
                partitions::leaves(&self.client, &t.schema.name).await?,
            );
        }
        Ok(out)
    }

    /// Partitions attached to a selected partitioned table since this source connected, as
    /// (root, partition).
    pub async fn new_partitions(&self) -> Result<Vec<(TableName, TableName)>> {
        let now = self.current_partitions().await?;
        let mut out = Vec::new();
        for (root, leaves) in now {
            let before = self.partitions.get(&root);
            for leaf in leaves {
                if !before.is_some_and(|b| b.contains(&leaf)) {
                    out.push((root.clone(), leaf));
                }
            }
        }
        Ok(out)
    }

    /// The partitions whose rows must be merged into the sinks (attached since their root was
    /// copied, by the record on the publication), and the record to write once they are. See
    /// [`partitions`].
    pub async fn partition_plan(
        &self,
    ) -> Result<(Vec<(TableName, TableName)>, partitions::PartitionMap)> {
        if self.partitions.is_empty() {
            return Ok((Vec::new(), partitions::PartitionMap::new()));
        }
        let recorded = partitions::recorded(&self.client, &self.options.publication).await?;
        Ok(partitions::plan(&self.partitions, recorded.as_ref()))
    }

    /// Records which partitions the sinks hold (see [`PgSource::partition_plan`]).
    pub async fn record_partitions(&self, map: &partitions::PartitionMap) -> Result<()> {
        if map.is_empty() {
            return Ok(());
        }
        partitions::record(&self.client, &self.options.publication, map).await
    }

    pub fn tables(&self) -> &[SourceTable] {
        &self.tables
    }

    pub fn schemas(&self) -> Vec<Arc<TableSchema>> {
        self.tables.iter().map(|t| t.schema.clone()).collect()
    }

    pub fn endpoint(&self) -> &PgEndpoint {
        &self.endpoint
    }

    pub fn options(&self) -> &PgSourceOptions {
        &self.options
    }

    /// What the source server's version can do.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Runs the preflight checks against this source.
    pub async fn preflight(&self) -> Result<Vec<Finding>> {
        preflight::check_source(
            &self.client,
            self.caps,
            &self.tables,
            &self.options.slot,
            &self.options.publication,
        )
        .await
    }

    /// Creates the publication for the selected tables, or makes an existing one publish exactly
    /// them. Partitioned tables publish through their root.
    pub async fn ensure_publication(&self) -> Result<()> {
        let list = self
            .published_tables()
            .iter()
            .map(TableName::quoted)
            .collect::<Vec<_>>()
            .join(", ");
        let publication = quote_ident(&self.options.publication);
        let exists = self.publication_exists().await?;
        let sql = if exists {
            format!("ALTER PUBLICATION {publication} SET TABLE {list}")
        } else if self.caps.publish_via_root() {
            format!(
                "CREATE PUBLICATION {publication} FOR TABLE {list} WITH (publish_via_partition_root = true)"
            )
        } else {
            format!("CREATE PUBLICATION {publication} FOR TABLE {list}")
        };
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| classify(e, &format!("cannot set up publication {publication}")))
    }

    /// Whether a catalog query with one text parameter returns a row.
    async fn row_exists(&self, sql: &str, param: &str, catalog: &str) -> Result<bool> {
        Ok(self
            .client
            .query_opt(sql, &[&param])
            .await
            .map_err(|e| classify(e, &format!("cannot read {catalog}")))?
            .is_some())
    }

    /// The tables the publication holds: the selected ones, where the server cannot publish a
    /// partitioned table (before 13) each partitioned one by its partitions.
    fn published_tables(&self) -> Vec<TableName> {
        let mut out = Vec::new();
        for t in &self.tables {
            match self.partitions.get(&t.schema.name) {
                Some(leaves) if !self.caps.publish_via_root() => out.extend(leaves.iter().cloned()),
                _ => out.push(t.schema.name.clone()),
            }
        }
        out
    }

    /// Each published partition's root, where partitions are published by themselves (before
    /// 13): the stream names the partition, and the changes belong to the root.
    fn partition_roots(&self) -> Vec<(TableName, TableName)> {
        if self.caps.publish_via_root() {
            return Vec::new();
        }
        self.partitions
            .iter()
            .flat_map(|(root, leaves)| leaves.iter().map(move |l| (l.clone(), root.clone())))
            .collect()
    }

    async fn publication_exists(&self) -> Result<bool> {
        self.row_exists(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &self.options.publication,
            "pg_publication",
        )
        .await
    }

    /// A walsender session on the source.
    async fn replication_session(
        &self,
    ) -> std::result::Result<ReplicationSession, ReplicationError> {
        ReplicationSession::connect(&self.endpoint, &self.options.application_name).await
    }

    /// Whether the slot exists.
    pub async fn slot_exists(&self) -> Result<bool> {
        self.row_exists(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &self.options.slot,
            "pg_replication_slots",
        )
        .await
    }

    /// Creates the slot with an exported snapshot if it does not exist.
    pub async fn ensure_slot(&self) -> Result<SlotStart> {
        if self.slot_exists().await? {
            return Ok(SlotStart::Existing);
        }
        let slot = self.options.slot.clone();
        Ok(SlotStart::Created(self.create_slot(&slot, false).await?))
    }

    /// Exports a fresh snapshot through a temporary slot, for copying tables after the main slot
    /// already exists (a restart during the snapshot, or tables added later).
    pub async fn export_snapshot(&self) -> Result<SnapshotSession> {
        let name = format!("{}_copy_{}", self.options.slot, std::process::id());
        self.create_slot(&name, true).await
    }

    async fn create_slot(&self, name: &str, temporary: bool) -> Result<SnapshotSession> {
        let mut session = self
            .replication_session()
            .await
            .map_err(|e| classify_replication(e, "cannot open a replication session"))?;
        let sql = self.caps.create_slot_command(&quote_ident(name), temporary);
        let rows = session.simple_query(&sql).await.map_err(|e| {
            classify_replication(e, &format!("cannot create replication slot {name}"))
        })?;
        let text = |i: usize| -> Option<String> {
            rows.first()
                .and_then(|r| r.get(i).cloned().flatten())
                .map(|b: Bytes| String::from_utf8_lossy(&b).into_owned())
        };
        let (Some(lsn), Some(snapshot_name)) = (text(1), text(2)) else {
            return Err(ConnectorError::fatal(format!(
                "creating replication slot {name} returned no consistent point or snapshot"
            )));
        };
        let lsn = lsn
            .parse()
            .map_err(|e| ConnectorError::fatal(format!("slot {name}: {e}")))?;
        tracing::info!(slot = name, %lsn, temporary, "created replication slot");
        Ok(SnapshotSession {
            _session: session,
            snapshot_name,
            lsn,
        })
    }

    /// Copies one table as of `snapshot`, sending rows in chunks of about `chunk_bytes` to
    /// `out`. Memory stays within a few chunks whatever the table's size. Returns the rows read.
    pub async fn copy_table(
        &self,
        table: &SourceTable,
        snapshot: &SnapshotSession,
        chunk_bytes: usize,
        out: mpsc::Sender<Vec<Row>>,
    ) -> Result<u64> {
        self.copy_out(table, None, &snapshot.setup(), None, chunk_bytes, out)
            .await
    }

    /// Split points that cut `table`'s key space into at most `count` ranges of about equal
    /// size, from a sample of its keys (`TABLESAMPLE SYSTEM`, about 100 keys per range, read in
    /// the source's own key order). Fewer ranges come back when the sample has fewer distinct
    /// keys; an empty split (one range) when the table is too small to sample.
    pub async fn split_points(&self, table: &SourceTable, count: u32) -> Result<Split> {
        let name = &table.schema.name;
        let ctx = format!("cannot sample the keys of {name} to split its copy");
        let keys = table.key_columns();
        if count < 2 || keys.is_empty() {
            return Ok(Split::default());
        }
        let wanted = (count as f64 * 100.0).max(1000.0);
        let percent = (wanted * 100.0 / table.rows_estimate.max(1) as f64).clamp(0.0001, 100.0);
        // Aliased, so that ORDER BY sorts by the columns (not by their text).
        let text_list = keys
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}::text AS cutover_key_{i}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let order = keys
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {text_list} FROM {} TABLESAMPLE SYSTEM ({percent}) ORDER BY {order}",
            name.quoted()
        );
        let client = self.endpoint.connect().await?;
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| classify(e, &ctx))?;
        let sample: Vec<Vec<String>> = rows
            .iter()
            .map(|r| (0..keys.len()).map(|i| r.get::<_, String>(i)).collect())
            .collect();
        let mut points: Vec<Vec<String>> = Vec::new();
        for i in 1..count as usize {
            let Some(point) = sample.get(sample.len() * i / count as usize) else {
                break;
            };
            if points.last() != Some(point) && sample.first() != Some(point) {
                points.push(point.clone());
            }
        }
        Ok(Split { points })
    }

    /// Copies one key range of `table` as of `snapshot` (see [`PgSource::copy_table`] and
    /// [`cutover_core::ranges`]): the rows whose key is at or past the range's lower bound and
    /// before its upper bound, compared as row values in the source's key order.
    pub async fn copy_range(
        &self,
        table: &SourceTable,
        snapshot: &SnapshotSession,
        range: &KeyRange,
        chunk_bytes: usize,
        out: mpsc::Sender<Vec<Row>>,
    ) -> Result<u64> {
        let filter = range_filter(&table.key_columns(), range);
        self.copy_out(
            table,
            None,
            &snapshot.setup(),
            Some(&filter),
            chunk_bytes,
            out,
        )
        .await
    }

    /// The row the source holds now under the key of `key` (a row of `table`'s layout whose
    /// key columns are set), with `table`'s columns in binary form; `None` when it has none.
    /// Read outside any snapshot: a row newer than the stream's position, which the changes
    /// still to come bring back in step (see `src/pipeline/settling.rs`).
    pub async fn current_row(&self, table: &TableSchema, key: &Row) -> Result<Option<Row>> {
        let columns = table.quoted_columns();
        let conds = table.key_equals(1);
        let keys: Vec<usize> = table.key_indexes().collect();
        let params: Vec<crate::verify::RawParam> = keys
            .iter()
            .map(|&i| match &key.0[i] {
                Value::Binary(b) => crate::verify::RawParam(Some(b)),
                _ => crate::verify::RawParam(None),
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let ctx = format!("cannot read a row of {} from the source", table.name);
        let sql = format!(
            "SELECT {columns} FROM {} WHERE {conds}",
            table.name.quoted()
        );
        let Some(found) = self
            .client
            .query_opt(&sql, &refs)
            .await
            .map_err(|e| classify(e, &ctx))?
        else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(table.columns.len());
        for i in 0..table.columns.len() {
            let raw = found
                .try_get::<_, Option<crate::verify::RawValue>>(i)
                .map_err(|e| classify(e, &ctx))?;
            values.push(raw.map_or(Value::Null, |v| {
                Value::Binary(bytes::Bytes::copy_from_slice(v.0))
            }));
        }
        Ok(Some(Row(values)))
    }

    /// Streams the rows of `partition` (a partition of `table`), with `table`'s columns, read in
    /// a repeatable-read transaction of its own (see [`partitions`] for why no exported
    /// snapshot is needed).
    pub async fn copy_partition(
        &self,
        table: &SourceTable,
        partition: &TableName,
        chunk_bytes: usize,
        out: mpsc::Sender<Vec<Row>>,
    ) -> Result<u64> {
        let setup = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        self.copy_out(table, Some(partition), setup, None, chunk_bytes, out)
            .await
            .map_err(|e| partitions::unreadable(&table.schema.name, partition, e))
    }

    /// Streams the rows of `table` (or of one of its partitions, `from`) after running `setup`,
    /// only those that pass `filter` (a SQL condition) if given.
    async fn copy_out(
        &self,
        table: &SourceTable,
        from: Option<&TableName>,
        setup: &str,
        filter: Option<&str>,
        chunk_bytes: usize,
        out: mpsc::Sender<Vec<Row>>,
    ) -> Result<u64> {
        let name = from.unwrap_or(&table.schema.name);
        let ctx = format!("cannot copy {name} from the source");
        let client = self.endpoint.connect().await?;
        client
            .batch_execute(setup)
            .await
            .map_err(|e| classify(e, &ctx))?;
        let columns = table.schema.quoted_columns();
        let sql = if table.relkind == 'p' || from.is_some() || filter.is_some() {
            format!(
                "COPY (SELECT {columns} FROM {}{}) TO STDOUT (FORMAT binary)",
                name.quoted(),
                filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
            )
        } else {
            format!(
                "COPY {} ({columns}) TO STDOUT (FORMAT binary)",
                name.quoted()
            )
        };
        let stream = client.copy_out(&sql).await.map_err(|e| classify(e, &ctx))?;
        futures::pin_mut!(stream);
        let mut parser = CopyParser::new(table.schema.columns.len());
        let mut rows = Vec::new();
        let mut chunk_size = 0usize;
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e, &ctx))?;
            chunk_size += chunk.len();
            parser
                .feed(chunk, &mut rows)
                .map_err(|e| ConnectorError::fatal(format!("{ctx}: {e}")).with_source(e.clone()))?;
            if chunk_size >= chunk_bytes {
                total += rows.len() as u64;
                if out.send(std::mem::take(&mut rows)).await.is_err() {
                    return Ok(total);
                }
                chunk_size = 0;
            }
        }
        parser
            .finish()
            .map_err(|e| ConnectorError::retryable(format!("{ctx}: {e}")))?;
        total += rows.len() as u64;
        if !rows.is_empty() {
            let _ = out.send(rows).await;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &ctx))?;
        Ok(total)
    }

    /// Opens the change stream at `start` (a position every sink has made durable; the server
    /// starts at the slot's confirmed position if that is later).
    pub async fn stream(&self, start: Lsn) -> Result<PgStream> {
        let session = self
            .replication_session()
            .await
            .map_err(|e| classify_replication(e, "cannot start replication"))?;
        let options = self.caps.pgoutput_options(&self.options.publication);
        let wal = session
            .start(&self.options.slot, start, &options)
            .await
            .map_err(|e| {
                classify_replication(
                    e,
                    &format!("cannot start replication from slot {}", self.options.slot),
                )
            })?;
        let catalog = self.endpoint.connect().await?;
        let mut decoder =
            Decoder::with_catalog(self.schemas()).with_partition_roots(self.partition_roots());
        // Text values (sources before 14) of enums, domains and ranges convert by the catalog.
        decoder.learn_types(crate::text_values::UserTypes::load(&catalog).await?);
        Ok(PgStream {
            feed: Feed::start(wal, start, self.options.stream_buffer_bytes),
            decoder,
            pending: VecDeque::new(),
            txn: None,
            confirmed: start,
            catalog,
            incomplete: Vec::new(),
        })
    }

    /// The source's current WAL write position.
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let text: String = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| classify(e, "cannot read the source's WAL position"))?
            .get(0);
        text.parse()
            .map_err(|e: cutover_core::ParseLsnError| ConnectorError::fatal(e.to_string()))
    }

    /// The slot's confirmed position, if the slot exists.
    pub async fn confirmed_lsn(&self) -> Result<Option<Lsn>> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.options.slot],
            )
            .await
            .map_err(|e| classify(e, "cannot read pg_replication_slots"))?;
        Ok(row
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| t.parse().ok()))
    }

    /// Tables that match the selection now but were not there when this source connected
    /// (created since), by name.
    pub async fn new_tables(&self) -> Result<Vec<cutover_core::TableName>> {
        let now = catalog::resolve_tables(&self.client, &self.options.tables).await?;
        Ok(now
            .into_iter()
            .map(|t| t.schema.name.clone())
            .filter(|n| !self.tables.iter().any(|t| &t.schema.name == n))
            .collect())
    }

    /// A table that matches the selection now, resolved as at connect time (`None` if it no
    /// longer exists or matches).
    pub async fn resolve_table(&self, name: &TableName) -> Result<Option<SourceTable>> {
        let now = catalog::resolve_tables(&self.client, &self.options.tables).await?;
        Ok(now.into_iter().find(|t| &t.schema.name == name))
    }

    /// Adds a table to the publication while streaming: its changes reach the stream from
    /// this statement's commit on. A table already published is left as it is.
    pub async fn publish_table(&self, name: &TableName) -> Result<()> {
        let publication = quote_ident(&self.options.publication);
        let sql = format!(
            "ALTER PUBLICATION {publication} ADD TABLE {}",
            name.quoted()
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                Ok(())
            }
            Err(e) => Err(classify(
                e,
                &format!("cannot add {name} to publication {publication}"),
            )),
        }
    }

    /// Whether `table` has `REPLICA IDENTITY FULL` (updates then carry the whole old row).
    pub async fn replica_identity_full(&self, table: &cutover_core::TableName) -> Result<bool> {
        self.client
            .query_one(
                "SELECT c.relreplident = 'f' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| classify(e, &format!("cannot read the replica identity of {table}")))
    }

    /// The sequences behind the selected tables' columns, with their current values.
    pub async fn sequences(&self) -> Result<Vec<crate::sequences::SourceSequence>> {
        let names: Vec<_> = self.tables.iter().map(|t| t.schema.name.clone()).collect();
        crate::sequences::source_sequences(&self.client, &names, &self.options.sequences).await
    }

    /// WAL the source keeps for the slot (from its restart position to the current one), in
    /// bytes; `None` when the slot does not exist.
    pub async fn retained_wal_bytes(&self) -> Result<Option<i64>> {
        let row = self
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.options.slot],
            )
            .await
            .map_err(|e| classify(e, "cannot read pg_replication_slots"))?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
    }

    /// Whether a session streams from the slot now, and the slot's confirmed position; `None`
    /// when the slot does not exist.
    pub async fn slot_activity(&self) -> Result<Option<(bool, Option<Lsn>)>> {
        let row = self
            .client
            .query_opt(
                "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.options.slot],
            )
            .await
            .map_err(|e| classify(e, "cannot read pg_replication_slots"))?;
        Ok(row.map(|r| {
            (
                r.get::<_, bool>(0),
                r.get::<_, Option<String>>(1).and_then(|t| t.parse().ok()),
            )
        }))
    }

    /// Confirms the slot up to `lsn` after streaming stopped (the walsender may take a moment to
    /// let go of the slot). Positions at or before the slot's are left alone.
    pub async fn confirm_stopped(&self, lsn: Lsn) -> Result<()> {
        for _ in 0..100 {
            match self.confirmed_lsn().await? {
                None => return Ok(()),
                Some(confirmed) if confirmed >= lsn => return Ok(()),
                Some(_) => {}
            }
            if !self.slot_active().await? {
                if let Err(e) = self
                    .client
                    .query_opt(
                        "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                        &[&self.options.slot, &lsn.to_string()],
                    )
                    .await
                {
                    if e.as_db_error().is_none() {
                        return Err(classify(e, "cannot confirm the slot position"));
                    }
                    tracing::debug!(error = %e, "slot not released yet");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(slot = %self.options.slot, %lsn, "the slot stayed in use; its position will be confirmed on the next run");
        Ok(())
    }

    /// Waits up to `timeout` for another session to release the slot: after a crash, the old
    /// walsender holds it until it notices its client is gone. Returns whether it is free.
    pub async fn wait_slot_free(&self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut logged = false;
        loop {
            if !self.slot_active().await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            if !logged {
                tracing::info!(slot = %self.options.slot, "replication slot is still held by an earlier session; waiting for it");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn slot_active(&self) -> Result<bool> {
        self.row_exists(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &self.options.slot,
            "pg_replication_slots",
        )
        .await
    }

    /// The slot's `wal_status` (`reserved`, `extended`, `unreserved` or `lost`), `Some(None)`
    /// when the server reports none, and `None` when the slot does not exist.
    pub async fn slot_wal_status(&self) -> Result<Option<Option<String>>> {
        let row = self
            .client
            .query_opt(
                if self.caps.slot_wal_status() {
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1"
                } else {
                    "SELECT NULL::text FROM pg_replication_slots WHERE slot_name = $1"
                },
                &[&self.options.slot],
            )
            .await
            .map_err(|e| classify(e, "cannot read pg_replication_slots"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Drops the slot. Returns whether it existed.
    pub async fn drop_slot(&self) -> Result<bool> {
        Ok(self
            .client
            .query_opt(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.options.slot],
            )
            .await
            .map_err(|e| {
                classify(e, &format!("cannot drop replication slot {}", self.options.slot))
            })?
            .is_some())
    }

    /// Drops the slot and the publication. Returns which of them existed.
    pub async fn teardown(&self) -> Result<(bool, bool)> {
        let slot = self.drop_slot().await?;
        let publication = self.publication_exists().await?;
        if publication {
            self.client
                .batch_execute(&format!(
                    "DROP PUBLICATION {}",
                    quote_ident(&self.options.publication)
                ))
                .await
                .map_err(|e| classify(e, "cannot drop the publication"))?;
        }
        Ok((slot, publication))
    }
}

/// One raw replication message, or the end of the stream.
type Raw = std::result::Result<Option<WalEvent>, ReplicationError>;

/// Raw messages taken from the client together, holding their share of the feed's byte budget
/// until the last of them is decoded.
type Fed = (Vec<Raw>, OwnedSemaphorePermit);

/// The replication client's messages on their way to the decoder, bounded in bytes: a task
/// takes the client's messages as soon as the byte budget has room for them, and forwards the
/// applied position and the stop to the client meanwhile. With the client holding only
/// [`RAW_EVENTS`] messages, memory between the socket and the decoder stays within the budget
/// plus a few messages, whatever the size of the rows.
struct Feed {
    rx: mpsc::UnboundedReceiver<Fed>,
    /// The batch being decoded, and its share of the budget.
    current: std::collections::vec_deque::IntoIter<Raw>,
    held: Option<OwnedSemaphorePermit>,
    applied: watch::Sender<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::result::Result<(), ReplicationError>>>,
}

impl Feed {
    fn start(client: WalStream, start: Lsn, budget_bytes: usize) -> Self {
        let budget = budget_bytes.clamp(1, u32::MAX as usize) as u32;
        let (tx, rx) = mpsc::unbounded_channel();
        let (applied, applied_rx) = watch::channel(start);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(pump(
            client,
            tx,
            Arc::new(Semaphore::new(budget as usize)),
            budget,
            applied_rx,
            stop_rx,
        ));
        Feed {
            rx,
            current: VecDeque::new().into_iter(),
            held: None,
            applied,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The next message; the stream's end when the task is gone. Cancel-safe.
    async fn recv(&mut self) -> Raw {
        loop {
            if let Some(raw) = self.current.next() {
                return raw;
            }
            self.held = None;
            match self.rx.recv().await {
                Some((batch, permit)) => {
                    self.current = VecDeque::from(batch).into_iter();
                    self.held = Some(permit);
                }
                None => return Ok(None),
            }
        }
    }

    async fn shutdown(&mut self) -> std::result::Result<(), ReplicationError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rx.close();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                Err(ReplicationError::Io(format!(
                    "the replication feed failed: {e}"
                )))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The task drops the client (which stops its worker) once it sees the feed gone.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Bytes a message counts for in the feed's budget.
fn fed_size(raw: &Raw) -> usize {
    match raw {
        Ok(Some(event)) => event.size(),
        _ => 64,
    }
}

/// The feed's task (see [`Feed`]): waits for a message and budget for it, takes every other
/// message the client already holds while the budget has room, hands the batch on. The message
/// that finds the budget full waits for what the budget can still give beside what the batch
/// holds (never for permits the batch itself holds), then goes with the batch: besides the
/// budget, the task holds at most that one message.
async fn pump(
    mut client: WalStream,
    tx: mpsc::UnboundedSender<Fed>,
    budget: Arc<Semaphore>,
    max_permits: u32,
    mut applied: watch::Receiver<Lsn>,
    mut stop: oneshot::Receiver<()>,
) -> std::result::Result<(), ReplicationError> {
    let share = |raw: &Raw| fed_size(raw).min(max_permits as usize) as u32;
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut stop => return client.shutdown().await,
            Ok(()) = applied.changed() => {
                forward_applied(&client, &mut applied);
                continue;
            }
            raw = client.recv() => raw,
        };
        let mut last = !matches!(first, Ok(Some(_)));
        let Some(mut held) =
            permits(&budget, share(&first), &client, &mut applied, &mut stop).await
        else {
            return client.shutdown().await;
        };
        let mut batch = vec![first];
        while !last && batch.len() < RAW_EVENTS * 4 {
            let Some(raw) = client.try_recv() else {
                break;
            };
            let raw = raw.map(Some);
            last = !matches!(raw, Ok(Some(_)));
            let size = share(&raw);
            batch.push(raw);
            if let Ok(p) = budget.clone().try_acquire_many_owned(size) {
                held.merge(p);
                continue;
            }
            let room = max_permits.saturating_sub(held.num_permits() as u32);
            let Some(p) = permits(&budget, size.min(room), &client, &mut applied, &mut stop).await
            else {
                return client.shutdown().await;
            };
            held.merge(p);
            break;
        }
        if tx.send((batch, held)).is_err() || last {
            return Ok(());
        }
    }
}

/// Reports the newest applied position to the client.
fn forward_applied(client: &WalStream, applied: &mut watch::Receiver<Lsn>) {
    let lsn = *applied.borrow_and_update();
    client.set_applied(lsn);
}

/// Waits for `n` permits of the feed's budget, forwarding the applied position meanwhile;
/// `None` when a stop is requested first.
async fn permits(
    budget: &Arc<Semaphore>,
    n: u32,
    client: &WalStream,
    applied: &mut watch::Receiver<Lsn>,
    stop: &mut oneshot::Receiver<()>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        tokio::select! {
            biased;
            _ = &mut *stop => return None,
            Ok(()) = applied.changed() => forward_applied(client, applied),
            permit = budget.clone().acquire_many_owned(n) => {
                return Some(permit.expect("the feed's budget is never closed"));
            }
        }
    }
}

/// The pgoutput change stream of one slot.
pub struct PgStream {
    feed: Feed,
    decoder: Decoder,
    pending: VecDeque<StreamItem>,
    /// The open transaction's commit LSN and the next change ordinal in it.
    txn: Option<(Lsn, u32)>,
    confirmed: Lsn,
    /// An SQL session on the source, to read the types and defaults of columns that a Relation
    /// message announces and the catalog read at start did not know (schema changes).
    catalog: Client,
    /// Relations announced with such columns, completed before the next message is decoded.
    incomplete: Vec<(u32, Arc<TableSchema>)>,
}

/// How long a new layout's columns are read again from the source's catalog before a column
/// it does not show (with the stream's type) is left without a type name: the moment a commit
/// takes to become visible, with room for a loaded machine.
const CATALOG_CATCH_UP: Duration = Duration::from_secs(5);

impl PgStream {
    /// Completes relations whose new columns lack a type name from the source's catalog (SQL
    /// type, nullability, default), so a target can add them as the source has them. The
    /// catalog is read now, which can be later than the stream's position: a name whose type
    /// no longer matches the stream's OID is left without a type name.
    ///
    /// The walsender may send a transaction a moment before the source shows its commit to
    /// other sessions (the commit record is flushed before the transaction leaves the running
    /// list), so a catalog read at once can still see the layout from before the stream's
    /// change (seen under load: a retyped column's old type, and the change stopped as "could
    /// not be read from the source's catalog"). A column left unmatched is read again, for up
    /// to [`CATALOG_CATCH_UP`], before it is given up.
    ///
    /// Cancel-safe: a relation leaves the list only once it is completed, and [`Source::next`]
    /// completes what is listed before it reads on (the runtime may drop a `next` call at any
    /// await).
    async fn complete_relations(&mut self) -> Result<()> {
        while let Some((oid, table)) = self.incomplete.first().cloned() {
            let started = std::time::Instant::now();
            let mut pause = Duration::from_millis(10);
            let mut reads = 1;
            let completed = loop {
                let (completed, unmatched) = self.read_new_columns(oid, &table).await?;
                if unmatched == 0 || started.elapsed() >= CATALOG_CATCH_UP {
                    break completed;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
                reads += 1;
            };
            tracing::info!(table = %table.name, columns = ?completed.columns.iter().map(|c| &c.name).collect::<Vec<_>>(), catalog_reads = reads, "the source announced a new layout");
            self.decoder.set_relation(oid, Arc::new(completed));
            self.incomplete.remove(0);
        }
        Ok(())
    }

    /// `table` with its untyped columns completed from the catalog as it is now, and how many
    /// of them the catalog does not show with the stream's type.
    async fn read_new_columns(
        &self,
        oid: u32,
        table: &TableSchema,
    ) -> Result<(TableSchema, usize)> {
        let rows = self
            .catalog
            .query(
                "SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_attribute a
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oid],
            )
            .await
            .map_err(|e| classify(e, &format!("cannot read the new columns of {}", table.name)))?;
        let mut completed = table.clone();
        let mut unmatched = 0;
        for c in completed
            .columns
            .iter_mut()
            .filter(|c| c.type_name.is_empty())
        {
            let found = rows
                .iter()
                .find(|r| r.get::<_, String>(0) == c.name && r.get::<_, u32>(1) == c.type_oid);
            match found {
                Some(r) => {
                    c.type_name = r.get(2);
                    c.nullable = !r.get::<_, bool>(3);
                    c.default = r.get(4);
                }
                None => unmatched += 1,
            }
        }
        Ok((completed, unmatched))
    }

    fn change(&mut self, table: &Arc<TableSchema>, change: Change) -> Result<StreamEvent> {
        let Some((commit_lsn, ordinal)) = self.txn.as_mut() else {
            return Err(ConnectorError::fatal(format!(
                "the replication stream sent a change to {} outside a transaction",
                table.name
            )));
        };
        let position = Position {
            commit_lsn: *commit_lsn,
            ordinal: *ordinal,
        };
        *ordinal += 1;
        Ok(StreamEvent::Change(ChangeEvent {
            position,
            table: table.clone(),
            change,
        }))
    }

    fn decode(&mut self, data: &Bytes) -> Result<()> {
        let message = self.decoder.decode(data).map_err(|e| {
            ConnectorError::fatal(format!("cannot decode the replication stream: {e}"))
                .with_source(e)
        })?;
        match message {
            Message::Insert { table, row } => {
                let ev = self.change(&table, Change::Insert { row })?;
                self.pending.push_back(StreamItem::Event(ev));
            }
            Message::Update {
                table,
                old_key,
                row,
            } => {
                let ev = self.change(&table, Change::Update { old_key, row })?;
                self.pending.push_back(StreamItem::Event(ev));
            }
            Message::Delete { table, key } => {
                let ev = self.change(&table, Change::Delete { key })?;
                self.pending.push_back(StreamItem::Event(ev));
            }
            Message::Truncate { tables } => {
                for table in tables {
                    let ev = self.change(&table, Change::Truncate)?;
                    self.pending.push_back(StreamItem::Event(ev));
                }
            }
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let commit_lsn = Lsn(final_lsn);
                self.txn = Some((commit_lsn, 0));
                self.pending
                    .push_back(StreamItem::Event(StreamEvent::Begin {
                        commit_lsn,
                        xid,
                        commit_time_micros: commit_time + PG_EPOCH_OFFSET_MICROS,
                    }));
            }
            Message::Commit {
                lsn,
                end_lsn,
                commit_time,
            } => {
                self.txn = None;
                self.pending
                    .push_back(StreamItem::Event(StreamEvent::Commit {
                        commit_lsn: Lsn(lsn),
                        end_lsn: Lsn(end_lsn),
                        commit_time_micros: commit_time + PG_EPOCH_OFFSET_MICROS,
                    }));
            }
            Message::Relation(oid, table) => {
                if table.columns.iter().any(|c| c.type_name.is_empty()) {
                    self.incomplete.push((oid, table));
                }
            }
            Message::Ignored => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Source for PgStream {
    async fn next(&mut self) -> Result<Option<StreamItem>> {
        loop {
            if !self.incomplete.is_empty() {
                self.complete_relations().await?;
            }
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let event = self
                .feed
                .recv()
                .await
                .map_err(|e| classify_replication(e, "the replication stream failed"))?;
            match event {
                None => return Ok(None),
                Some(WalEvent::XLogData { data, .. }) => self.decode(&data)?,
                Some(WalEvent::KeepAlive { wal_end }) if self.txn.is_none() => {
                    return Ok(Some(StreamItem::Idle { wal_end }));
                }
                Some(WalEvent::KeepAlive { .. }) => {}
            }
        }
    }

    /// Completes this stream's Relation messages for `table` from its catalog definition (a
    /// table added to the publication while streaming), as for the tables it started with.
    fn learn_table(&mut self, table: Arc<TableSchema>) {
        self.decoder.learn(table);
    }

    /// Stops streaming cleanly.
    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        self.feed
            .shutdown()
            .await
            .map_err(|e| classify_replication(e, "error while stopping replication"))
    }

    fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.feed.applied.send_replace(lsn);
        }
    }
}

/// The SQL condition that selects `range`'s keys: comparisons of the key columns `keys` (in
/// the order the split was sampled in) with the split points as typed literals.
fn range_filter(keys: &[&cutover_core::Column], range: &KeyRange) -> String {
    let list = keys
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let columns = if keys.len() == 1 {
        list
    } else {
        format!("({list})")
    };
    let values = |point: &[String]| {
        let literals = keys
            .iter()
            .zip(point)
            .map(|(c, v)| {
                let literal = format!("'{}'", v.replace('\'', "''"));
                if c.type_name.is_empty() {
                    literal
                } else {
                    format!("{literal}::{}", c.type_name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        // One column compares as a scalar (so its index serves the range as for any
        // comparison); several as a row value, in the key's column order.
        if keys.len() == 1 {
            literals
        } else {
            format!("({literals})")
        }
    };
    let mut parts = Vec::new();
    if let Some(lower) = range.lower() {
        parts.push(format!("{columns} >= {}", values(lower)));
    }
    if let Some(upper) = range.upper() {
        parts.push(format!("{columns} < {}", values(upper)));
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use cutover_core::Column;

    fn column(name: &str, type_name: &str, key: bool) -> Column {
        Column {
            type_name: type_name.into(),
            ..Column::new(name, 25, key)
        }
    }

    #[test]
    fn a_range_filter_quotes_its_bounds_and_compares_keys_in_order() {
        let (region, n) = (column("Region", "text", true), column("n", "integer", true));
        let keys = [&region, &n];
        let split = Arc::new(Split {
            points: vec![
                vec!["it's".into(), "5".into()],
                vec!["z".into(), "1".into()],
            ],
        });
        let ranges = split.ranges();
        assert_eq!(
            range_filter(&keys, &ranges[0]),
            r#"("Region", "n") < ('it''s'::text, '5'::integer)"#
        );
        assert_eq!(
            range_filter(&keys, &ranges[1]),
            r#"("Region", "n") >= ('it''s'::text, '5'::integer) AND ("Region", "n") < ('z'::text, '1'::integer)"#
        );
        let id = Column::new("id", 20, true);
        let split = Arc::new(Split {
            points: vec![vec!["10".into()]],
        });
        assert_eq!(range_filter(&[&id], &split.ranges()[1]), r#""id" >= '10'"#);
    }
}
