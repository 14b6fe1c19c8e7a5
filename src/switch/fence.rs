//! The write fence: how a database refuses application writes to the replicated tables while
//! cutover's own sessions still write.
//!
//! A statement-level `BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE` trigger, `cutover_fence`,
//! on each table, calling `cutover.fence()`, which raises SQLSTATE 25006
//! (`read_only_sql_transaction`) unless the session has set `cutover.apply = on` (every cutover
//! session does; see `cutover_postgres::conn::SESSION_SETTINGS`). The fence first locks every
//! table in `SHARE ROW EXCLUSIVE` mode in one statement (reads go on), so its commit waits for
//! the transactions writing to them and every later write sees it: after the commit, the database's WAL position
//! is past every application write it will ever take. The lock wait is bounded
//! (`cutover.fence_lock_timeout_ms`): a long transaction makes the switch stop and undo, naming
//! it, instead of stalling the application.
//!
//! Chosen over the other ways of refusing writes: a role's `default_transaction_read_only` is
//! read at connection start (sessions already open keep writing) and any session can turn it
//! off; revoking privileges misses owners and superusers and must be restored exactly; a lock
//! held by cutover ends with cutover's session (a crash would reopen the old primary). The
//! trigger is durable, survives crashes of cutover and restarts of the database, and is undone
//! by dropping it. It does not stop a superuser who sets `cutover.apply` or disables triggers,
//! and, on a partitioned table, writes that name a partition directly.

use cutover_core::{ConnectorError, Lsn, Result, TableName};
use tokio_postgres::Client;

use super::sql_error;

const FUNCTION: &str = "CREATE SCHEMA IF NOT EXISTS cutover;
CREATE OR REPLACE FUNCTION cutover.fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
BEGIN
    IF current_setting('cutover.apply', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = '25006',
        MESSAGE = format('cutover: %I.%I does not take writes here: pipeline %s moved the application to the other database',
                         TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
        HINT = 'connect to the current primary (`cutover status` names it)';
END
$fence$";

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
    // The fence commits synchronously whatever the server's default: its commit flushes the
    // WAL through every application commit before it, so the position read after it covers
    // them (with synchronous_commit = off they could lie past the written position).
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms}; SET LOCAL synchronous_commit = on; {FUNCTION};"
    );
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
        sql.push_str(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;",
            list.join(", ")
        ));
    }
    for t in tables {
        let q = t.quoted();
        // CREATE OR REPLACE TRIGGER (PostgreSQL 14+) keeps the table readable; before 14 the
        // trigger is dropped first, which locks reads out for the fence's short transaction.
        let create = if caps.replace_trigger() {
            "CREATE OR REPLACE TRIGGER".to_string()
        } else {
            format!("DROP TRIGGER IF EXISTS cutover_fence ON {q}; CREATE TRIGGER")
        };
        sql.push_str(&format!(
            "{create} cutover_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {q} \
             FOR EACH STATEMENT EXECUTE {} cutover.fence({});",
            caps.execute_trigger_keyword(),
            quote_literal(pipeline)
        ));
    }
    sql.push_str("COMMIT;");
    let mut tries = 0;
    let outcome = loop {
        tries += 1;
        match client.batch_execute(&sql).await {
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

/// Removes the fence from `tables` (idempotent).
pub async fn remove(client: &Client, tables: &[TableName]) -> Result<()> {
    let mut sql = String::from("BEGIN;");
    for t in tables {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS cutover_fence ON {};",
            t.quoted()
        ));
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| sql_error(e, "cannot remove the fence"))
}

/// How many of `tables` carry the fence.
pub async fn fenced(client: &Client, tables: &[TableName]) -> Result<usize> {
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger
             WHERE tgname = 'cutover_fence' AND tgrelid = ANY (SELECT to_regclass(n)::oid FROM unnest($1::text[]) n)",
            &[&names],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read pg_trigger"))?
        .get(0);
    Ok(n as usize)
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
