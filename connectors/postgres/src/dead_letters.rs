//! Dead letters of a PostgreSQL sink: changes the target rejects for a reason retrying cannot
//! fix (a constraint only the target has, a value its column type cannot hold). They are
//! parked in `cutover.dead_letters` on the target, in the same transaction that moves the
//! checkpoint past them, so a parked change is never lost and never parked twice.
//!
//! Order per key is kept by parking: while a key has a parked change, its later changes are
//! parked behind it (reason `waiting behind ...`), and [`replay`] applies a key's parked changes
//! oldest first, stopping at the first that still fails.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use cutover_core::{datum, Column, ConnectorError, Result, Row, TableName, TableSchema, Value};
use tokio_postgres::Client;

use crate::error::classify;

/// Schema in the target that holds cutover's own state.
pub const STATE_SCHEMA: &str = "cutover";

/// Creates the dead-letter table (idempotent).
pub fn create_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.dead_letters (
             id bigserial PRIMARY KEY,
             pipeline text NOT NULL, sink text NOT NULL,
             table_schema text NOT NULL, table_name text NOT NULL,
             key_bytes bytea NOT NULL, key_text text NOT NULL,
             op text NOT NULL, columns jsonb NOT NULL, payload bytea NOT NULL, row_text jsonb,
             commit_lsn pg_lsn, reason text NOT NULL, attempts int NOT NULL DEFAULT 1,
             parked_at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX IF NOT EXISTS dead_letters_by_key
             ON {STATE_SCHEMA}.dead_letters (pipeline, sink, table_schema, table_name, key_bytes);"
    )
}

/// A change as it is parked.
pub struct Parked<'a> {
    pub layout: &'a TableSchema,
    pub key_bytes: &'a [u8],
    /// `upsert` or `delete`.
    pub op: &'static str,
    pub row: &'a Row,
    pub commit_lsn: Option<String>,
    pub reason: String,
}

/// Values as `len (i32, -1 NULL, -2 unchanged) ‖ bytes`, in column order.
fn encode_row(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.size());
    for v in &row.0 {
        match v {
            Value::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Value::Unchanged => out.extend_from_slice(&(-2i32).to_be_bytes()),
            Value::Binary(b) => {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

fn decode_row(mut b: &[u8]) -> Option<Row> {
    let mut values = Vec::new();
    while !b.is_empty() {
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = &b[4..];
        values.push(match len {
            -1 => Value::Null,
            -2 => Value::Unchanged,
            n => {
                let n = usize::try_from(n).ok()?;
                let v = Value::Binary(Bytes::copy_from_slice(b.get(..n)?));
                b = &b[n..];
                v
            }
        });
    }
    Some(Row(values))
}

/// The row as readable JSON (`{"column": "text"}`), for `cutover dlq list`.
fn row_text(layout: &TableSchema, row: &Row) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (c, v) in layout.columns.iter().zip(&row.0) {
        let text = match v {
            Value::Null => serde_json::Value::Null,
            Value::Unchanged => serde_json::Value::String("(unchanged)".into()),
            Value::Binary(b) => serde_json::Value::String(
                datum::decode(c.type_oid, b)
                    .ok()
                    .and_then(|d| d.render())
                    .unwrap_or_else(|| format!("({} bytes)", b.len())),
            ),
        };
        map.insert(c.name.clone(), text);
    }
    serde_json::Value::Object(map)
}

fn key_text(layout: &TableSchema, row: &Row) -> String {
    let text = row_text(layout, row);
    let keys: serde_json::Map<String, serde_json::Value> = layout
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| (c.name.clone(), text[&c.name].clone()))
        .collect();
    serde_json::Value::Object(keys).to_string()
}

/// Parks one change, inside the caller's transaction.
pub async fn park(client: &Client, pipeline: &str, sink: &str, p: Parked<'_>) -> Result<()> {
    let columns: Vec<serde_json::Value> = p
        .layout
        .columns
        .iter()
        .map(|c| serde_json::json!([c.name, c.type_oid, c.key]))
        .collect();
    tracing::warn!(
        sink,
        table = %p.layout.name,
        key = %key_text(p.layout, p.row),
        reason = %p.reason,
        "change parked as a dead letter; other keys go on (see `cutover dlq list`)"
    );
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.dead_letters
                   (pipeline, sink, table_schema, table_name, key_bytes, key_text, op, columns,
                    payload, row_text, commit_lsn, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10::text::jsonb,
                         $11::text::pg_lsn, $12)"
            ),
            &[
                &pipeline,
                &sink,
                &p.layout.name.schema,
                &p.layout.name.name,
                &p.key_bytes,
                &key_text(p.layout, p.row),
                &p.op,
                &serde_json::Value::Array(columns).to_string(),
                &encode_row(p.row),
                &row_text(p.layout, p.row).to_string(),
                &p.commit_lsn,
                &p.reason,
            ],
        )
        .await
        .map_err(|e| classify(e, &format!("target {sink}: cannot park a dead letter")))?;
    Ok(())
}

/// The keys of `table` that have parked changes.
pub async fn parked_keys(
    client: &Client,
    pipeline: &str,
    sink: &str,
    table: &TableName,
) -> Result<HashSet<Vec<u8>>> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT key_bytes FROM {STATE_SCHEMA}.dead_letters
                 WHERE pipeline = $1 AND sink = $2 AND table_schema = $3 AND table_name = $4"
            ),
            &[&pipeline, &sink, &table.schema, &table.name],
        )
        .await
        .map_err(|e| classify(e, &format!("target {sink}: cannot read dead letters")))?;
    Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
}

/// Whether the sink has any parked change.
pub async fn any(client: &Client, pipeline: &str, sink: &str) -> Result<bool> {
    client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.dead_letters WHERE pipeline = $1 AND sink = $2)"
            ),
            &[&pipeline, &sink],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| classify(e, &format!("target {sink}: cannot read dead letters")))
}

/// One parked change, as `cutover dlq list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub table: TableName,
    pub key: String,
    pub op: String,
    pub row: String,
    pub commit_lsn: Option<String>,
    pub reason: String,
    pub attempts: i32,
    pub parked_at: String,
}

/// Every parked change of the sink, oldest first.
pub async fn list(client: &Client, pipeline: &str, sink: &str) -> Result<Vec<DeadLetter>> {
    let rows = client
        .query(
            &format!(
                "SELECT id, table_schema, table_name, key_text, op, coalesce(row_text::text, ''),
                        commit_lsn::text, reason, attempts, parked_at::text
                 FROM {STATE_SCHEMA}.dead_letters WHERE pipeline = $1 AND sink = $2 ORDER BY id"
            ),
            &[&pipeline, &sink],
        )
        .await
        .map_err(|e| classify(e, &format!("target {sink}: cannot read dead letters")))?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            table: TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            key: r.get(3),
            op: r.get(4),
            row: r.get(5),
            commit_lsn: r.get(6),
            reason: r.get(7),
            attempts: r.get(8),
            parked_at: r.get(9),
        })
        .collect())
}

/// A parked change read back for replay.
pub struct Stored {
    pub id: i64,
    pub layout: Arc<TableSchema>,
    pub key_bytes: Vec<u8>,
    pub op: String,
    pub row: Row,
}

/// Locks and reads every parked change of the sink, oldest first (inside the caller's
/// transaction).
pub async fn lock_all(client: &Client, pipeline: &str, sink: &str) -> Result<Vec<Stored>> {
    let rows = client
        .query(
            &format!(
                "SELECT id, table_schema, table_name, key_bytes, op, columns::text, payload
                 FROM {STATE_SCHEMA}.dead_letters WHERE pipeline = $1 AND sink = $2
                 ORDER BY id FOR UPDATE"
            ),
            &[&pipeline, &sink],
        )
        .await
        .map_err(|e| classify(e, &format!("target {sink}: cannot read dead letters")))?;
    let damaged = |id: i64| {
        ConnectorError::fatal(format!("dead letter {id} of sink {sink} is damaged")).with_hint(
            "delete it from cutover.dead_letters and repair the row with cutover verify --repair",
        )
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.get(0);
        let cols: Vec<(String, u32, bool)> =
            serde_json::from_str(r.get::<_, &str>(5)).map_err(|_| damaged(id))?;
        let layout = Arc::new(TableSchema {
            name: TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            columns: cols
                .into_iter()
                .map(|(name, oid, key)| Column::new(name, oid, key))
                .collect(),
        });
        let row = decode_row(r.get::<_, &[u8]>(6)).ok_or_else(|| damaged(id))?;
        if row.0.len() != layout.columns.len() {
            return Err(damaged(id));
        }
        out.push(Stored {
            id,
            layout,
            key_bytes: r.get(3),
            op: r.get(4),
            row,
        });
    }
    Ok(out)
}

/// Marks a replayed change as applied (deletes it), inside the caller's transaction.
pub async fn remove(client: &Client, id: i64) -> Result<()> {
    client
        .execute(
            &format!("DELETE FROM {STATE_SCHEMA}.dead_letters WHERE id = $1"),
            &[&id],
        )
        .await
        .map(|_| ())
        .map_err(|e| classify(e, "cannot remove a replayed dead letter"))
}

/// Records another failed attempt of a parked change.
pub async fn failed_again(client: &Client, id: i64, reason: &str) -> Result<()> {
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.dead_letters SET attempts = attempts + 1, reason = $2 WHERE id = $1"
            ),
            &[&id, &reason],
        )
        .await
        .map(|_| ())
        .map_err(|e| classify(e, "cannot update a dead letter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_the_payload() {
        let row = Row(vec![
            Value::Binary(Bytes::from_static(b"\x00\x00\x00\x07")),
            Value::Null,
            Value::Unchanged,
            Value::Binary(Bytes::new()),
        ]);
        assert_eq!(decode_row(&encode_row(&row)), Some(row));
        assert_eq!(decode_row(&[0, 0, 0, 9, 1]), None);
    }
}
