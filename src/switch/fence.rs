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
//! Fencing closes the gate (one small transaction), then locks the tables in `SHARE ROW
//! EXCLUSIVE` mode (reads go on), a batch per transaction, releasing each at once: each lock
//! waits for the transactions that wrote to its tables before the gate closed, and every later
//! write meets the closed gate, so afterwards the database's WAL position is past every
//! application write it will ever take. No transaction locks more than a batch of tables, so
//! the fence works at any table count. The lock waits are bounded
//! (`cutover.fence_lock_timeout_ms`): a long transaction makes the switch stop and undo, naming
//! where to look, instead of stalling the application. The triggers are created once, in
//! batches, ahead of the fence where the switch can, and then kept. Opening the gate replaces a
//! function and locks no table, so it never queues behind a long read nor makes reads queue
//! behind it.
//!
//! Why locking after the gate closed is enough: a writer's statement takes its table's lock
//! before the trigger runs, so one that passed the open gate holds the lock the fence waits
//! for; a statement that takes its lock after the gate closed reads the gate as it is now (a
//! lock taken anew makes the session read the catalog's changes).
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
    format!("cutover.{}", gate_proname(pipeline))
}

/// The gate's function name without its schema.
fn gate_proname(pipeline: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pipeline.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fence_{hash:016x}")
}

/// The gate's oid, from its name without schema as `$1` (to_regproc would fail, on older
/// servers, while the schema does not exist).
const GATE_OID: &str = "(SELECT p.oid FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
                         WHERE s.nspname = 'cutover' AND p.proname = $1)";

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

/// Tables per transaction when the fence creates triggers or waits for writers: no step takes
/// a lock per table in one transaction (thousands of tables would exceed the server's lock
/// table, `max_locks_per_transaction` x `max_connections`).
const BATCH: usize = 200;

/// Gives each of `tables` the fence's trigger where it lacks it (idempotent), `BATCH` tables
/// per transaction, each bounded by `lock_timeout_ms`. A gate made here is open: this changes
/// nothing for the application, so it can run ahead of the switch.
pub async fn ensure_triggers(
    client: &Client,
    pipeline: &str,
    tables: &[TableName],
    lock_timeout_ms: u64,
) -> Result<()> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| sql_error(e, "cannot read the server version"))?
        .get(0);
    let caps = cutover_postgres::version::Capabilities::new(version.max(0) as u32);
    let exists: bool = client
        .query_one(
            &format!("SELECT EXISTS {GATE_OID}"),
            &[&gate_proname(pipeline)],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read the fence's gate"))?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS cutover; {}",
                gate_sql(pipeline, false)
            ))
            .await
            .map_err(|e| sql_error(e, "cannot create the fence's gate"))?;
    }
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    // The tables whose trigger is missing, calls another function, or is not ALWAYS.
    let lacking: Vec<String> = client
        .query(
            "SELECT n FROM unnest($1::text[]) n
              WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
                                 WHERE t.tgrelid = to_regclass(n) AND t.tgname = 'cutover_fence'
                                   AND t.tgfoid = (SELECT p.oid FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
                                                    WHERE s.nspname = 'cutover' AND p.proname = $2)
                                   AND t.tgenabled = 'A')",
            &[&names, &gate_proname(pipeline)],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read pg_trigger"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for batch in lacking.chunks(BATCH) {
        let mut sql = format!("BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms};");
        for q in batch {
            // CREATE OR REPLACE TRIGGER (PostgreSQL 14+) keeps the table readable; before 14
            // the trigger is dropped first, which locks reads out for the batch's short
            // transaction.
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
        with_deadlock_retries(client, &sql)
            .await
            .map_err(|e| lock_error(e, lock_timeout_ms, "give the tables the fence's trigger"))?;
    }
    Ok(())
}

/// Fences `tables` (idempotent) and returns the WAL position after the fence, which is
/// flushed: every application commit to them before the fence lies at or before it. A lock
/// held longer than `lock_timeout_ms` by another transaction is an error naming where to look.
///
/// The triggers are made where missing ([`ensure_triggers`]); the gate is closed, in a
/// transaction of its own that commits synchronously; then the tables are locked in `SHARE
/// ROW EXCLUSIVE` mode (reads go on), `BATCH` per transaction, each lock released at once:
/// every lock waits for the transactions that wrote to its tables before the gate closed,
/// and every later write meets the closed gate. A deadlock with a writer is retried.
pub async fn install(
    client: &Client,
    pipeline: &str,
    tables: &[TableName],
    lock_timeout_ms: u64,
) -> Result<Lsn> {
    ensure_triggers(client, pipeline, tables, lock_timeout_ms).await?;
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; {}; COMMIT;",
            gate_sql(pipeline, true)
        ))
        .await
        .map_err(|e| sql_error(e, "cannot close the fence's gate"))?;
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    for batch in names.chunks(BATCH) {
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms}; \
             LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE; COMMIT;",
            batch.join(", ")
        );
        with_deadlock_retries(client, &sql)
            .await
            .map_err(|e| lock_error(e, lock_timeout_ms, "fence the tables"))?;
    }
    // A lock alone writes no WAL, so its commit flushes nothing: one transaction with an xid,
    // committed synchronously, flushes the WAL through every commit the locks waited for
    // (with synchronous_commit = off they could lie past the position read otherwise).
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT;")
        .await
        .map_err(|e| sql_error(e, "cannot flush the WAL through the fence"))?;
    wal_position(client).await
}

/// Runs one transaction, again while it ends in a deadlock with a writer (PostgreSQL ends one
/// of them, possibly ours, after `deadlock_timeout`).
async fn with_deadlock_retries(
    client: &Client,
    sql: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match client.batch_execute(sql).await {
            Err(e)
                if tries < DEADLOCK_TRIES
                    && e.as_db_error().is_some_and(|d| d.code().code() == "40P01") =>
            {
                let _ = client.batch_execute("ROLLBACK").await;
                tracing::info!(tries, "the fence deadlocked with a writer; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(tries))).await;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// The error of a fence transaction that failed: a lock timeout names where to look.
fn lock_error(e: tokio_postgres::Error, lock_timeout_ms: u64, what: &str) -> ConnectorError {
    if e.as_db_error().is_some_and(|d| d.code().code() == "55P03") {
        return ConnectorError::fatal(format!(
            "cannot {what}: a transaction held a lock on one of the tables for more than {lock_timeout_ms} ms"
        ))
        .with_hint("find it in pg_stat_activity (state 'idle in transaction' or a long write) or in pg_prepared_xacts (a prepared transaction holds its locks until COMMIT PREPARED or ROLLBACK PREPARED), end it, and switch again; or raise cutover.fence_lock_timeout_ms");
    }
    sql_error(e, &format!("cannot {what}"))
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
            "SELECT (SELECT p.prosrc LIKE '%-- cutover: fenced%' FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
                      WHERE s.nspname = 'cutover' AND p.proname = $1)",
            &[&gate_proname(pipeline)],
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
              WHERE tgname = 'cutover_fence' AND tgfoid IN (SELECT p.oid FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
                                                             WHERE s.nspname = 'cutover' AND p.proname = $1)",
            &[&gate_proname(pipeline)],
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
