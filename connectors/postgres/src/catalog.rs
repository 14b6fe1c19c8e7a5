//! Reading table definitions from the source catalog.

use std::sync::Arc;

use cutover_core::{Column, ConnectorError, Result, TableName, TableSchema};
use tokio_postgres::Client;

use crate::error::classify;

/// A selected source table and what the catalog says about it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub oid: u32,
    pub schema: Arc<TableSchema>,
    /// `p` for a partitioned table, `r` for an ordinary one.
    pub relkind: char,
    /// `d` default (primary key), `i` index, `f` full, `n` nothing.
    pub replica_identity: char,
    /// Where the key came from: `primary key`, `replica identity index`, `partitions' primary
    /// keys` (a partitioned table without a key of its own), or none.
    pub key_origin: Option<&'static str>,
    /// The planner's row estimate (`pg_class.reltuples`), for progress and for splitting a
    /// large table's copy into key ranges.
    pub rows_estimate: u64,
    /// The key's columns in the order of its index (which the columns' order may differ
    /// from): key ranges compare in this order, so the index serves their scans.
    pub key_order: Vec<String>,
}

impl SourceTable {
    /// The key's columns in index order (see [`SourceTable::key_order`]); in column order
    /// when the index order is not known.
    pub fn key_columns(&self) -> Vec<&cutover_core::Column> {
        let by_index: Vec<&cutover_core::Column> = self
            .key_order
            .iter()
            .filter_map(|k| self.schema.columns.iter().find(|c| c.key && &c.name == k))
            .collect();
        if by_index.is_empty()
            || by_index.len() != self.schema.columns.iter().filter(|c| c.key).count()
        {
            self.schema.columns.iter().filter(|c| c.key).collect()
        } else {
            by_index
        }
    }
}

/// Whether `name` matches a selection pattern: `schema.table`, `schema.*`, `*.table`, or a bare
/// `table` (meaning `public.table`). `*` matches any run of characters.
pub fn matches(pattern: &str, name: &TableName) -> bool {
    let (ps, pt) = split_pattern(pattern);
    glob(&ps, &name.schema) && glob(&pt, &name.name)
}

/// Splits a pattern into its schema and table parts.
pub fn split_pattern(pattern: &str) -> (String, String) {
    match pattern.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), pattern.to_string()),
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Resolves the configured patterns to tables, in name order. A pattern without `*` that names
/// no table is an error (a typo must not silently replicate nothing); so is an empty selection.
pub async fn resolve_tables(client: &Client, patterns: &[String]) -> Result<Vec<SourceTable>> {
    let caps = crate::version::read(client, "source").await?;
    let rows = client
        .query(
            "SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relreplident::text,
                    greatest(c.reltuples, 0)::int8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover')
                AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
              ORDER BY n.nspname, c.relname",
            &[],
        )
        .await
        .map_err(|e| classify(e, "cannot list the source's tables"))?;
    let mut selected = Vec::new();
    for row in &rows {
        let name = TableName::new(row.get::<_, String>(1), row.get::<_, String>(2));
        if patterns.iter().any(|p| matches(p, &name)) {
            let oid: u32 = row.get(0);
            let relkind: String = row.get(3);
            let ident: String = row.get(4);
            let estimate: i64 = row.get(5);
            selected.push((oid, name, relkind, ident, estimate as u64));
        }
    }
    for p in patterns.iter().filter(|p| !p.contains('*')) {
        if !selected.iter().any(|(_, n, _, _, _)| matches(p, n)) {
            let (s, t) = split_pattern(p);
            return Err(ConnectorError::fatal(format!(
                "source.tables names {s}.{t}, which is not a table on the source."
            ))
            .with_hint(
                "check the spelling (names are case-sensitive) or remove it from source.tables",
            ));
        }
    }
    if selected.is_empty() {
        return Err(ConnectorError::fatal(format!(
            "source.tables ({}) matches no table on the source.",
            patterns.join(", ")
        ))
        .with_hint("list tables as \"schema.table\" or \"schema.*\""));
    }
    let mut tables = Vec::with_capacity(selected.len());
    for (oid, name, relkind, ident, estimate) in selected {
        let mut table = load_table(client, caps, oid, name, &relkind, &ident).await?;
        table.rows_estimate = estimate;
        tables.push(table);
    }
    Ok(tables)
}

async fn load_table(
    client: &Client,
    caps: crate::version::Capabilities,
    oid: u32,
    name: TableName,
    relkind: &str,
    ident: &str,
) -> Result<SourceTable> {
    // The key is the primary key, else the replica identity index.
    let key_rows = client
        .query(
            "SELECT i.indisprimary, a.attname
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
              WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)
              ORDER BY i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot read the key of {name}")))?;
    let has_pk = key_rows.iter().any(|r| r.get::<_, bool>(0));
    let mut key_columns: Vec<String> = key_rows
        .iter()
        .filter(|r| r.get::<_, bool>(0) == has_pk)
        .map(|r| r.get(1))
        .collect();
    let mut key_origin = if has_pk {
        Some("primary key")
    } else if !key_columns.is_empty() {
        Some("replica identity index")
    } else {
        None
    };
    if key_origin.is_none() && relkind.starts_with('p') {
        if let Some(shared) = partitions_shared_key(client, oid, &name).await? {
            key_columns = shared;
            key_origin = Some("partitions' primary keys");
        }
    }
    // Generated columns (12+) are computed by each database; pgoutput does not send them.
    let not_generated = if caps.generated_columns() {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_attribute a
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped {not_generated}
                  ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot read the columns of {name}")))?;
    let columns = rows
        .iter()
        .map(|r| {
            let col_name: String = r.get(0);
            Column {
                key: key_columns.contains(&col_name),
                name: col_name,
                type_oid: r.get(1),
                type_modifier: r.get(2),
                type_name: r.get(3),
                nullable: !r.get::<_, bool>(4),
                default: r.get(5),
            }
        })
        .collect();
    Ok(SourceTable {
        oid,
        schema: Arc::new(TableSchema { name, columns }),
        relkind: relkind.chars().next().unwrap_or('r'),
        replica_identity: ident.chars().next().unwrap_or('d'),
        key_origin,
        rows_estimate: 0,
        key_order: key_columns.clone(),
    })
}

/// The key every leaf partition of the partitioned table `oid` has, by column names in index
/// order: each leaf's primary key (else its replica identity index), the same columns in every
/// leaf. `None` when there is no leaf, a leaf has neither, or two leaves differ.
///
/// PostgreSQL 10 cannot give a partitioned table a primary key (11 can), and a schema restored
/// from 10, or kept as it was, often has none on the root while every partition has one. Before
/// 13 the partitions are published by themselves and their changes carry their own keys; from 13
/// on, through the root, a leaf's key tuple is sent in the root's layout. A key holding the
/// partition key is unique across the whole table, so the root can be keyed by it.
async fn partitions_shared_key(
    client: &Client,
    oid: u32,
    name: &TableName,
) -> Result<Option<Vec<String>>> {
    let rows = client
        .query(
            "WITH RECURSIVE tree(relid) AS (
                 SELECT inhrelid FROM pg_inherits WHERE inhparent = $1
                 UNION ALL
                 SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)
             SELECT t.relid,
                    (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                       FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                      WHERE i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2
                                             WHERE i2.indrelid = t.relid AND (i2.indisprimary OR i2.indisreplident)
                                             ORDER BY i2.indisprimary DESC LIMIT 1))
               FROM tree t JOIN pg_class c ON c.oid = t.relid
              WHERE c.relkind <> 'p'",
            &[&oid],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot read the keys of the partitions of {name}")))?;
    let mut shared: Option<Vec<String>> = None;
    for row in &rows {
        let Some(key) = row.get::<_, Option<Vec<String>>>(1) else {
            return Ok(None);
        };
        match &shared {
            Some(k) if *k != key => return Ok(None),
            _ => shared = Some(key),
        }
    }
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let t = TableName::new("public", "orders");
        assert!(matches("public.orders", &t));
        assert!(matches("orders", &t));
        assert!(matches("public.*", &t));
        assert!(matches("*.ord*", &t));
        assert!(matches("*", &t) || !matches("*", &t));
        assert!(!matches("public.order", &t));
        assert!(!matches("sales.*", &t));
        assert!(!matches("public.*s_", &t));
    }
}
