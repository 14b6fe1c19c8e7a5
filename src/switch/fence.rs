//! The write fence: how a database refuses application writes to the replicated tables while
//! cutover's own sessions still write.
//!
//! A statement-level `BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE` trigger, `cutover_fence`,
//! on each table, `ENABLE ALWAYS` (so it fires in sessions with `session_replication_role =
//! replica` too), calling the pipeline's gate, `cutover.fence_<hash of the pipeline's name>()`.
//! The gate is switched by replacing its body: fenced, it raises SQLSTATE 25006
//! (`read_only_sql_transaction`) unless the session has set `cutover.apply = on` (every cutover
//! session does; see `cutover_postgres::conn::SESSION_SETTINGS`); open, it does nothing.
//!
//! Fencing locks every table in `SHARE ROW EXCLUSIVE` mode in one statement (reads go on) and
//! closes the gate in the same transaction, so its commit waits for the transactions writing to
//! them and every later write sees it: after the commit, the database's WAL position is past
//! every application write it will ever take. The lock wait is bounded
//! (`cutover.fence_lock_timeout_ms`): a long transaction makes the switch stop and undo, naming
//! it, instead of stalling the application. The triggers are created by the first fence and
//! then kept. Opening the gate replaces a function and locks no table, so it never queues
//! behind a long read nor makes reads queue behind it.
//!
//! The gate's state is its body, not a row of a table: a function is looked up in the catalog
//! as it is now (after the lock a writer waited for), while a row would be read with the
//! writer's snapshot, which for a `REPEATABLE READ` transaction begun before the fence still
//! says "open".
//!
//! Chosen over the other ways of refusing writes: a role's `default_transaction_read_only` is
//! read at connection start (sessions already open keep writing) and any session can turn it
//! off; revoking privileges misses owners and superusers and must be restored exactly; a lock
//! held by cutover ends with cutover's session (a crash would reopen the old primary). The
//! trigger is durable, survives crashes of cutover and restarts of the database. It does not
//! stop a session that sets `cutover.apply` (what cutover's own sessions do), a superuser who
//! disables triggers, nor, on a partitioned table, writes that name a partition directly.

use cutover_core::{ConnectorError, Lsn, Result, TableName};
use tokio_postgres::Client;

use super::sql_error;

/// The gate's name for `pipeline`: `cutover.fence_` and 16 hex digits of its name's FNV-1a
/// hash (any pipeline name fits an identifier this way).
pub fn gate(pipeline: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pipeline.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("cutover.fence_{hash:016x}")
}

/// The gate's definition, fenced or open.
fn gate_sql(pipeline: &str, fenced: bool) -> String {
    let body = if fenced {
        "BEGIN
    -- cutover: fenced
    IF current_setting('cutover.apply', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = '25006',
        MESSAGE = format('cutover: %I.%I does not take writes here: pipeline %s moved the application to the other database',
                         TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
        HINT = 'connect to the current primary (`cutover status` names it)';
END"
    } else {
        "BEGIN
    -- cutover: open
    RETURN NULL;
END"
    };
    format!(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $fence$\n{body}\n$fence$",
        gate(pipeline)
    )
}

/// Times the fence is tried again when its transaction and writers deadlock (PostgreSQL ends
/// one of them, possibly the fence's, after `deadlock_timeout`).
const DEADLOCK_TRIES: u32 = 10;

/// Fences `tables` (idempotent) and returns the WAL position after the fence's commit, which
/// is flushed (`synchronous_commit = on` for it): every application commit before the fence
/// lies at or before that position. A lock held longer than `lock_timeout_ms` by another
/// transaction is an error naming the table.
///
/// The tables are locked first, all in one statement, in `SHARE ROW EXCLUSIVE` mode (what
/// creating a trigger takes; reads go on), so the fence never waits holding some tables while
/// a writer holds others longer than needed; a deadlock with a writer is retried.
pub async fn install(
    client: &Client,
    pipeline: &str,
    tables: &[TableName],
    lock_timeout_ms: u64,
) -> Result<Lsn> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| sql_error(e, "cannot read the server version"))?
        .get(0);
    let caps = cutover_postgres::version::Capabilities::new(version.max(0) as u32);
    let mut tries = 0;
    let outcome = loop {
        tries += 1;
        match close_gate(client, pipeline, tables, lock_timeout_ms, &caps).await {
            Err(e)
                if tries < DEADLOCK_TRIES
                    && e.as_db_error().is_some_and(|d| d.code().code() == "40P01") =>
            {
                let _ = client.batch_execute("ROLLBACK").await;
                tracing::info!(tries, "the fence deadlocked with a writer; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(tries))).await;
            }
            other => break other,
        }
    };
    if let Err(e) = outcome {
        let _ = client.batch_execute("ROLLBACK").await;
        let lock = e.as_db_error().is_some_and(|d| d.code().code() == "55P03");
        if lock {
            return Err(ConnectorError::fatal(format!(
                "cannot fence the old primary's tables: a transaction held a lock on one of them for more than {lock_timeout_ms} ms"
            ))
            .with_hint("find it in pg_stat_activity (state 'idle in transaction' or a long write) or in pg_prepared_xacts (a prepared transaction holds its locks until COMMIT PREPARED or ROLLBACK PREPARED), end it, and switch again; or raise cutover.fence_lock_timeout_ms"));
        }
        return Err(sql_error(e, "cannot fence the tables"));
    }
    wal_position(client).await
}

/// One try of the fence's transaction: lock the tables, close the gate, and give the tables
/// that lack it the trigger (created once, then kept).
async fn close_gate(
    client: &Client,
    pipeline: &str,
    tables: &[TableName],
    lock_timeout_ms: u64,
    caps: &cutover_postgres::version::Capabilities,
) -> std::result::Result<(), tokio_postgres::Error> {
    // The fence commits synchronously whatever the server's default: its commit flushes the
    // WAL through every application commit before it, so the position read after it covers
    // them (with synchronous_commit = off they could lie past the written position).
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms}; SET LOCAL synchronous_commit = on; \
         CREATE SCHEMA IF NOT EXISTS cutover;"
    );
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    if !tables.is_empty() {
        sql.push_str(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;",
            names.join(", ")
        ));
    }
    sql.push_str(&gate_sql(pipeline, true));
    client.batch_execute(&sql).await?;
    // The tables whose trigger is missing, calls another function, or is not ALWAYS.
    let lacking: Vec<String> = client
        .query(
            "SELECT n FROM unnest($1::text[]) n
              WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
                                 WHERE t.tgrelid = to_regclass(n) AND t.tgname = 'cutover_fence'
                                   AND t.tgfoid = to_regproc($2)::oid AND t.tgenabled = 'A')",
            &[&names, &gate(pipeline)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sql = String::new();
    for q in &lacking {
        // CREATE OR REPLACE TRIGGER (PostgreSQL 14+) keeps the table readable; before 14 the
        // trigger is dropped first, which locks reads out for the fence's short transaction.
        let create = if caps.replace_trigger() {
            "CREATE OR REPLACE TRIGGER".to_string()
        } else {
            format!("DROP TRIGGER IF EXISTS cutover_fence ON {q}; CREATE TRIGGER")
        };
        sql.push_str(&format!(
            "{create} cutover_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {q} \
             FOR EACH STATEMENT EXECUTE {} {}({}); \
             ALTER TABLE {q} ENABLE ALWAYS TRIGGER cutover_fence;",
            caps.execute_trigger_keyword(),
            gate(pipeline),
            quote_literal(pipeline)
        ));
    }
    sql.push_str("COMMIT;");
    client.batch_execute(&sql).await
}

/// Opens the pipeline's gate (idempotent): its tables take writes again. Replaces a function
/// and locks no table; the triggers stay for the next fence.
pub async fn open(client: &Client, pipeline: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS cutover; {}",
            gate_sql(pipeline, false)
        ))
        .await
        .map_err(|e| sql_error(e, "cannot remove the fence"))
}

/// Whether the pipeline's gate is closed on this database (`false` when it was never made).
pub async fn is_fenced(client: &Client, pipeline: &str) -> Result<bool> {
    let fenced: Option<bool> = client
        .query_one(
            "SELECT (SELECT prosrc LIKE '%-- cutover: fenced%' FROM pg_proc WHERE oid = to_regproc($1)::oid)",
            &[&gate(pipeline)],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read the fence's gate"))?
        .get(0);
    Ok(fenced.unwrap_or(false))
}

/// Drops the pipeline's fence from this database, when its gate is open: the triggers
/// (each a short lock of its table, bounded by `lock_timeout_ms`) and the gate. A closed gate
/// is left as it is (the database must not take writes). Returns the tables it was removed
/// from, or `None` when the gate is closed.
pub async fn drop_if_open(
    client: &Client,
    pipeline: &str,
    lock_timeout_ms: u64,
) -> Result<Option<usize>> {
    if is_fenced(client, pipeline).await? {
        return Ok(None);
    }
    let tables: Vec<String> = client
        .query(
            "SELECT tgrelid::regclass::text FROM pg_trigger
              WHERE tgname = 'cutover_fence' AND tgfoid = to_regproc($1)::oid",
            &[&gate(pipeline)],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read pg_trigger"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sql = format!("BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms};");
    for t in &tables {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS cutover_fence ON {t};"));
    }
    sql.push_str(&format!(
        "DROP FUNCTION IF EXISTS {}(); COMMIT;",
        gate(pipeline)
    ));
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(sql_error(e, "cannot remove the fence's triggers"));
    }
    Ok(Some(tables.len()))
}

/// The database's WAL write position.
pub async fn wal_position(client: &Client) -> Result<Lsn> {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| sql_error(e, "cannot read the WAL position"))?
        .get(0);
    text.parse()
        .map_err(|e: cutover_core::ParseLsnError| ConnectorError::fatal(e.to_string()))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
