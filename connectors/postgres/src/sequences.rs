//! Sequences: logical replication does not carry them, so before traffic moves to the target
//! every sequence behind a replicated column is set past the source's current value.

use cutover_core::{quote_ident, ConnectorError, Result, TableName};
use tokio_postgres::Client;

use crate::error::classify;

/// A sequence that feeds a column of a replicated table (a `serial` default or an identity
/// column), as the source has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSequence {
    pub sequence: TableName,
    pub table: TableName,
    pub column: String,
    /// `smallint`, `integer` or `bigint`.
    pub data_type: String,
    pub increment: i64,
    /// The value the next `nextval` builds on: `last_value` if it was called, else one step
    /// before `start_value`.
    pub last_value: i64,
    pub identity: bool,
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
    /// The target column had no default and was given `nextval` of the sequence.
    pub default_added: bool,
}

/// The sequences behind the columns of `tables` on the source, with their current values.
pub async fn source_sequences(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<SourceSequence>> {
    let ctx = "cannot read the source's sequences";
    let mut out = Vec::new();
    for table in tables {
        let rows = client
            .query(
                "SELECT sn.nspname, s.relname, a.attname, format_type(seq.seqtypid, NULL),
                        seq.seqincrement, seq.seqstart, a.attidentity <> ''
                   FROM pg_depend d
                   JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                   JOIN pg_namespace sn ON sn.oid = s.relnamespace
                   JOIN pg_sequence seq ON seq.seqrelid = s.oid
                   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                    AND d.deptype IN ('a', 'i') AND d.refobjid = $1::text::regclass
                  ORDER BY a.attnum",
                &[&table.quoted()],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        for r in rows {
            let sequence = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let increment: i64 = r.get(4);
            let start: i64 = r.get(5);
            let state = client
                .query_one(
                    &format!("SELECT last_value, is_called FROM {}", sequence.quoted()),
                    &[],
                )
                .await
                .map_err(|e| classify(e, ctx))?;
            let last: i64 = state.get(0);
            let called: bool = state.get(1);
            out.push(SourceSequence {
                table: table.clone(),
                column: r.get(2),
                data_type: r.get(3),
                increment,
                last_value: if called { last } else { start - increment },
                identity: r.get(6),
                sequence,
            });
        }
    }
    Ok(out)
}

/// Sets the target's copy of `seq` to at least the source's value plus `margin` steps, so ids
/// handed out on the target never collide with rows copied from the source. A sequence the
/// target lacks is created (same type and increment, owned by the same column) and the column
/// gets `DEFAULT nextval(...)` when it has no default. A target sequence already further along
/// is left where it is. Idempotent.
pub async fn sync_sequence(
    target: &Client,
    seq: &SourceSequence,
    margin: i64,
) -> Result<SequenceSync> {
    let ctx = format!("cannot set sequence {} on the target", seq.sequence);
    let wanted = seq
        .last_value
        .saturating_add(seq.increment.saturating_mul(margin));
    let exists: bool = target
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&seq.sequence.quoted()],
        )
        .await
        .map_err(|e| classify(e, &ctx))?
        .get(0);
    let table_exists: bool = target
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&seq.table.quoted()],
        )
        .await
        .map_err(|e| classify(e, &ctx))?
        .get(0);
    if !table_exists {
        return Err(ConnectorError::fatal(format!(
            "table {} does not exist on the target, so sequence {} has nothing to feed",
            seq.table, seq.sequence
        ))
        .with_hint("run the pipeline first (it creates the target tables)"));
    }
    let before = if exists {
        let row = target
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    seq.sequence.quoted()
                ),
                &[],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        let (last, called): (i64, bool) = (row.get(0), row.get(1));
        Some(if called { last } else { last - seq.increment })
    } else {
        target
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE SEQUENCE IF NOT EXISTS {} AS {} INCREMENT BY {} OWNED BY {}.{}",
                quote_ident(&seq.sequence.schema),
                seq.sequence.quoted(),
                seq.data_type,
                seq.increment,
                seq.table.quoted(),
                quote_ident(&seq.column)
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
    let has_default: bool = target
        .query_one(
            "SELECT a.atthasdef OR a.attidentity <> '' FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
            &[&seq.table.quoted(), &seq.column],
        )
        .await
        .map_err(|e| classify(e, &ctx))?
        .get(0);
    if !has_default {
        target
            .batch_execute(&format!(
                "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT nextval('{}'::regclass)",
                seq.table.quoted(),
                quote_ident(&seq.column),
                seq.sequence.quoted().replace('\'', "''")
            ))
            .await
            .map_err(|e| classify(e, &ctx))?;
    }
    Ok(SequenceSync {
        sequence: seq.sequence.clone(),
        source_value: seq.last_value,
        target_before: before,
        target_after: after,
        default_added: !has_default,
    })
}
