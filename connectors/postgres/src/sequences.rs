//! Sequences: logical replication does not carry them, so before traffic moves to the target
//! every sequence the application uses is set past the source's current value: those owned by
//! a replicated column (`serial`, identity), those a replicated column's default calls
//! (`nextval('invoice_no')`, free-standing or shared by several tables), and those that
//! `[source] sequences` patterns select (Hibernate's `hibernate_sequence`, sequences only the
//! application's code calls).

use std::collections::BTreeMap;

use cutover_core::{quote_ident, ConnectorError, Result, TableName};
use tokio_postgres::Client;

use crate::error::classify;

/// A sequence the application uses, as the source has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSequence {
    pub sequence: TableName,
    /// The replicated columns (table, column) that own it or whose default calls it.
    pub used_by: Vec<(TableName, String)>,
    /// The column that owns it (`serial`, identity, `OWNED BY`), when that column is replicated.
    pub owner: Option<(TableName, String)>,
    /// `smallint`, `integer` or `bigint`.
    pub data_type: String,
    pub increment: i64,
    /// The value the next `nextval` builds on: `last_value` if it was called, else one step
    /// before `start_value`.
    pub last_value: i64,
    pub identity: bool,
}

impl SourceSequence {
    /// Why it moves, for output: the columns that use it, or the pattern that selected it.
    pub fn reason(&self) -> String {
        if self.used_by.is_empty() {
            "selected by source.sequences".to_string()
        } else {
            self.used_by
                .iter()
                .map(|(t, c)| format!("{t}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The value the next `nextval` of `sequence` builds on: `last_value` once called, one step
/// before it while not (then it holds the start, or what `setval(..., false)` set).
async fn position(
    client: &Client,
    sequence: &TableName,
    increment: i64,
) -> std::result::Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT last_value, is_called FROM {}", sequence.quoted()),
            &[],
        )
        .await?;
    let (last, called): (i64, bool) = (row.get(0), row.get(1));
    Ok(if called { last } else { last - increment })
}

/// What [`sync_sequence`] did to one sequence on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSync {
    pub sequence: TableName,
    pub source_value: i64,
    /// The target's value before, `None` when the sequence had to be created.
    pub target_before: Option<i64>,
    /// The target's value now (never moved backwards).
    pub target_after: i64,
    /// Columns that had no default on the target and were given `nextval` of the sequence.
    pub defaults_added: Vec<String>,
}

/// Every sequence the application uses on the source, with its current value: those owned by
/// or called in a default of a column of `tables`, and those whose name matches one of
/// `patterns` (`schema.name`, `schema.*`, a bare `name` in `public`). Each appears once.
pub async fn source_sequences(
    client: &Client,
    tables: &[TableName],
    patterns: &[String],
) -> Result<Vec<SourceSequence>> {
    let ctx = "cannot read the source's sequences";
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    // Owned (auto/internal dependency of the sequence on the column) or called by a default
    // (normal dependency of the column's default on the sequence).
    let rows = client
        .query(
            "WITH t AS (SELECT unnest($1::text[])::regclass::oid AS oid),
                  used AS (
                    SELECT d.objid AS seq, a.attrelid, a.attnum, true AS owned
                      FROM pg_depend d
                      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                       AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT oid FROM t)
                    UNION
                    SELECT d.refobjid, ad.adrelid, ad.adnum, false
                      FROM pg_attrdef ad
                      JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                                      AND d.refclassid = 'pg_class'::regclass
                     WHERE ad.adrelid IN (SELECT oid FROM t))
             SELECT sn.nspname, s.relname, tn.nspname, tc.relname, a.attname, u.owned,
                    format_type(seq.seqtypid, NULL), seq.seqincrement, a.attidentity <> ''
               FROM used u
               JOIN pg_class s ON s.oid = u.seq AND s.relkind = 'S'
               JOIN pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_sequence seq ON seq.seqrelid = s.oid
               JOIN pg_class tc ON tc.oid = u.attrelid
               JOIN pg_namespace tn ON tn.oid = tc.relnamespace
               JOIN pg_attribute a ON a.attrelid = u.attrelid AND a.attnum = u.attnum
              ORDER BY 1, 2, 3, 4, a.attnum",
            &[&names],
        )
        .await
        .map_err(|e| classify(e, ctx))?;
    let mut found: BTreeMap<TableName, SourceSequence> = BTreeMap::new();
    for r in rows {
        let sequence = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let column = (
            TableName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            r.get::<_, String>(4),
        );
        let owned: bool = r.get(5);
        let entry = found
            .entry(sequence.clone())
            .or_insert_with(|| SourceSequence {
                sequence,
                used_by: Vec::new(),
                owner: None,
                data_type: r.get(6),
                increment: r.get(7),
                last_value: 0,
                identity: false,
            });
        entry.identity |= r.get::<_, bool>(8);
        if owned {
            entry.owner = Some(column.clone());
        }
        if !entry.used_by.contains(&column) {
            entry.used_by.push(column);
        }
    }
    if !patterns.is_empty() {
        let rows = client
            .query(
                "SELECT n.nspname, c.relname, format_type(seq.seqtypid, NULL), seq.seqincrement
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_sequence seq ON seq.seqrelid = c.oid
                  WHERE c.relkind = 'S' ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        for r in rows {
            let sequence = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
            if !patterns
                .iter()
                .any(|p| crate::catalog::matches(p, &sequence))
            {
                continue;
            }
            found
                .entry(sequence.clone())
                .or_insert_with(|| SourceSequence {
                    sequence,
                    used_by: Vec::new(),
                    owner: None,
                    data_type: r.get(2),
                    increment: r.get(3),
                    last_value: 0,
                    identity: false,
                });
        }
    }
    let mut out: Vec<SourceSequence> = found.into_values().collect();
    for seq in &mut out {
        seq.last_value = position(client, &seq.sequence, seq.increment)
            .await
            .map_err(|e| classify(e, ctx))?;
    }
    Ok(out)
}

/// Sets the target's copy of `seq` to at least the source's value plus `margin` steps, so ids
/// handed out on the target never collide with rows copied from the source. A sequence the
/// target lacks is created (same type and increment, owned by the same column if a column owns
/// it), and every column that uses it and has no default on the target gets
/// `DEFAULT nextval(...)`. A target sequence already further along is left where it is.
/// Idempotent.
pub async fn sync_sequence(
    target: &Client,
    seq: &SourceSequence,
    margin: i64,
) -> Result<SequenceSync> {
    let ctx = format!("cannot set sequence {} on the target", seq.sequence);
    let wanted = seq
        .last_value
        .saturating_add(seq.increment.saturating_mul(margin));
    let regclass = |name: &TableName| {
        let name = name.quoted();
        async move {
            target
                .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&name])
                .await
                .map(|r| r.get::<_, bool>(0))
        }
    };
    let exists = regclass(&seq.sequence)
        .await
        .map_err(|e| classify(e, &ctx))?;
    for (table, _) in &seq.used_by {
        if !regclass(table).await.map_err(|e| classify(e, &ctx))? {
            return Err(ConnectorError::fatal(format!(
                "table {table} does not exist on the target, so sequence {} has nothing to feed",
                seq.sequence
            ))
            .with_hint("run the pipeline first (it creates the target tables)"));
        }
    }
    let before = if exists {
        Some(
            position(target, &seq.sequence, seq.increment)
                .await
                .map_err(|e| classify(e, &ctx))?,
        )
    } else {
        let owned_by = match &seq.owner {
            Some((table, column)) => {
                format!(" OWNED BY {}.{}", table.quoted(), quote_ident(column))
            }
            None => String::new(),
        };
        target
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE SEQUENCE IF NOT EXISTS {} AS {} INCREMENT BY {}{owned_by}",
                quote_ident(&seq.sequence.schema),
                seq.sequence.quoted(),
                seq.data_type,
                seq.increment,
            ))
            .await
            .map_err(|e| classify(e, &ctx))?;
        None
    };
    let ahead = before.is_some_and(|b| {
        if seq.increment > 0 {
            b >= wanted
        } else {
            b <= wanted
        }
    });
    let after = if ahead {
        before.unwrap_or(wanted)
    } else {
        target
            .query_one(
                "SELECT setval($1::text::regclass, $2, true)",
                &[&seq.sequence.quoted(), &wanted],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        wanted
    };
    let mut defaults_added = Vec::new();
    for (table, column) in &seq.used_by {
        let has_default: bool = target
            .query_one(
                "SELECT a.atthasdef OR a.attidentity <> '' FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                &[&table.quoted(), column],
            )
            .await
            .map_err(|e| classify(e, &ctx))?
            .get(0);
        if !has_default {
            target
                .batch_execute(&format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT nextval('{}'::regclass)",
                    table.quoted(),
                    quote_ident(column),
                    seq.sequence.quoted().replace('\'', "''")
                ))
                .await
                .map_err(|e| classify(e, &ctx))?;
            defaults_added.push(format!("{table}.{column}"));
        }
    }
    Ok(SequenceSync {
        sequence: seq.sequence.clone(),
        source_value: seq.last_value,
        target_before: before,
        target_after: after,
        defaults_added,
    })
}
