//! Inspecting target tables against the source's definitions, without changing anything: their
//! columns and keys, their own layout, and rows cutover did not copy.

use std::collections::HashMap;
use std::sync::Arc;

use cutover_core::{ConnectorError, Result, TableName, TableSchema};

use super::PgSink;
use crate::error::classify;

impl PgSink {
    /// Refuses a target table that holds rows cutover did not copy: they would be mixed with the
    /// copy, and cutover never overwrites data it does not own.
    pub(super) async fn refuse_foreign_rows(&self, table: &TableSchema) -> Result<()> {
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

    /// Records `table` as copied at `at` (see [`cutover_core::TargetContext::adopt_at`]).
    pub(super) async fn adopt(&mut self, table: &TableSchema, at: cutover_core::Lsn) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO {}.copied_tables (pipeline, sink, table_schema, table_name, snapshot_lsn, rows)
                     VALUES ($1, $2, $3, $4, $5::text::pg_lsn, 0)
                     ON CONFLICT (pipeline, sink, table_schema, table_name) DO NOTHING",
                    crate::dead_letters::STATE_SCHEMA
                ),
                &[
                    &self.options.pipeline,
                    &self.options.name,
                    &table.name.schema,
                    &table.name.name,
                    &at.to_string(),
                ],
            )
            .await
            .map_err(|e| classify(e, "cannot record a table taken over after a switch"))?;
        self.state.copied_tables.insert(table.name.clone(), at);
        tracing::info!(table = %table.name, sink = %self.options.name, %at, "table taken over as copied after the switch");
        Ok(())
    }

    /// Everything `run` would refuse about this target, checked without changing anything:
    /// table compatibility, then rows that cutover did not copy.
    pub async fn preflight(&self, tables: &[Arc<TableSchema>]) -> Result<()> {
        self.check_tables(tables).await?;
        let copied = self.read_checkpoint().await?.copied_tables;
        let recopy = if self.state_tables_exist().await? {
            self.recopy_tables().await?
        } else {
            Default::default()
        };
        for table in tables {
            if !copied.contains_key(&table.name)
                && !recopy.contains(&table.name)
                && self.options.adopt_at.is_none()
                && self.inspect_table(table).await? == TableCheck::Ready
            {
                self.refuse_foreign_rows(table).await?;
            }
        }
        Ok(())
    }

    /// Whether this sink's sessions apply as replicas: user triggers and foreign keys stay
    /// quiet for replicated rows.
    pub fn apply_role(&self) -> crate::conn::ApplyRole {
        self.role
    }

    /// What fires on the target for replicated rows: the user triggers of `tables` that fire
    /// for this sink's sessions (see [`PgSink::triggers_firing_on_apply`]: `ENABLE ALWAYS` and
    /// `ENABLE REPLICA` ones even when the sink applies as a replica), and, when it cannot apply
    /// as a replica ([`PgSink::apply_role`] is `Origin`), the foreign keys among them, as
    /// `table: foreign key name` lines. Foreign keys in a cycle (tables referencing each other)
    /// are marked: the copy and the batches cannot put a parent first there.
    pub async fn fires_on_apply(&self, tables: &[Arc<TableSchema>]) -> Result<Firing> {
        let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
        let triggers = self.triggers_firing_on_apply(&names).await?;
        if self.role == crate::conn::ApplyRole::Replica {
            return Ok(Firing {
                triggers,
                foreign_keys: Vec::new(),
            });
        }
        let quoted: Vec<String> = names.iter().map(TableName::quoted).collect();
        let rows = self
            .client
            .query(
                "WITH t AS (SELECT to_regclass(n) AS oid FROM unnest($1::text[]) AS n)
                 SELECT conrelid::regclass::text, conname::text, confrelid::regclass::text
                   FROM pg_constraint
                  WHERE conrelid IN (SELECT oid FROM t) AND contype = 'f'
                  ORDER BY 1, 2",
                &[&quoted],
            )
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!(
                        "cannot read the foreign keys of target {}",
                        self.options.name
                    ),
                )
            })?;
        let edges: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(2)))
            .filter(|(c, p)| c != p)
            .collect();
        let in_cycle = super::fold::in_cycles(&edges);
        let foreign_keys = rows
            .iter()
            .map(|r| {
                let (child, name, parent): (String, String, String) =
                    (r.get(0), r.get(1), r.get(2));
                let cycle = if in_cycle.contains(&(child.clone(), parent.clone())) {
                    " (in a cycle of foreign keys: no order puts every parent first)"
                } else {
                    ""
                };
                format!("{child}: foreign key {name} to {parent}{cycle}")
            })
            .collect();
        Ok(Firing {
            triggers,
            foreign_keys,
        })
    }

    /// The triggers of `tables` that fire for this sink's sessions, cutover's fence excepted:
    /// `ENABLE ALWAYS` and `ENABLE REPLICA` ones when the sink applies as a replica, ordinary and
    /// `ALWAYS` ones when it cannot; one `table: trigger` line each. Rows such a trigger writes
    /// (in its table or any other) never pass through the stream, so the switch's final check
    /// cannot limit itself to the keys the stream changed.
    pub async fn triggers_firing_on_apply(&self, tables: &[TableName]) -> Result<Vec<String>> {
        let fire: &[&str] = match self.role {
            crate::conn::ApplyRole::Replica => &["A", "R"],
            crate::conn::ApplyRole::Origin => &["A", "O"],
        };
        let fire: Vec<String> = fire.iter().map(|s| s.to_string()).collect();
        let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
        let rows = self
            .client
            .query(
                "SELECT tgrelid::regclass::text || ': ' || tgname FROM pg_trigger
                  WHERE tgrelid IN (SELECT to_regclass(n) FROM unnest($1::text[]) n)
                    AND NOT tgisinternal AND tgenabled::text = ANY ($2) AND tgname <> 'cutover_fence'
                  ORDER BY 1",
                &[&names, &fire],
            )
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("cannot read the triggers of target {}", self.options.name),
                )
            })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The target table's own columns, in its order, with the source's key flags: the layout
    /// rows are written in until the stream announces the source's newer one.
    pub(super) async fn target_layout(&self, table: &TableSchema) -> Result<Arc<TableSchema>> {
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
        let arbiter = unique_keys.contains(&key);
        self.arbiters
            .lock()
            .expect("not poisoned")
            .insert(table.name.clone(), arbiter);
        if !arbiter && !self.partitions_keyed(oid, &key, &ctx).await? {
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

    /// Whether `oid` is a partitioned table whose leaf partitions (one at least) each have a
    /// unique index on exactly the `key` columns (sorted): keyed by its partitions, as
    /// PostgreSQL 10 keys a partitioned table (its root cannot have one).
    async fn partitions_keyed(&self, oid: u32, key: &[String], ctx: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "WITH RECURSIVE tree(relid) AS (
                     SELECT inhrelid FROM pg_inherits WHERE inhparent = $1
                     UNION ALL
                     SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid),
                 leaves AS (
                     SELECT t.relid FROM tree t JOIN pg_class c ON c.oid = t.relid WHERE c.relkind <> 'p')
                 SELECT (SELECT relkind = 'p' FROM pg_class WHERE oid = $1)
                    AND EXISTS (SELECT 1 FROM leaves)
                    AND NOT EXISTS (
                        SELECT 1 FROM leaves l
                         WHERE NOT EXISTS (
                             SELECT 1 FROM pg_index i
                              WHERE i.indrelid = l.relid AND i.indisunique AND i.indpred IS NULL
                                AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2))",
                &[&oid, &key],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
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
}

/// What fires on a target for replicated rows ([`PgSink::fires_on_apply`]).
#[derive(Debug, Default)]
pub struct Firing {
    /// `table: trigger` lines.
    pub triggers: Vec<String>,
    /// `table: foreign key name to parent` lines (only when the sink cannot apply as a replica).
    pub foreign_keys: Vec<String>,
}

impl Firing {
    /// Whether any foreign key lies in a cycle.
    pub fn cyclic(&self) -> bool {
        self.foreign_keys.iter().any(|f| f.contains("(in a cycle"))
    }
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
