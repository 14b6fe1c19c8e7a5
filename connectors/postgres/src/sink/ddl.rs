//! Shaping target tables: creating missing ones, the session's staging tables, and the source's
//! schema changes, applied in stream order.

use std::sync::Arc;

use cutover_core::{quote_ident, ConnectorError, Result, TableSchema};

use super::{PgSink, Segment, TargetTable};

impl PgSink {
    /// Creates the session's staging tables for a target table and starts writing to it in
    /// `table`'s layout (`from_stream`: a layout read from the target, which the stream will
    /// bring up to date).
    pub(super) async fn stage(
        &mut self,
        table: &Arc<TableSchema>,
        from_stream: bool,
    ) -> Result<()> {
        let n = self.tables.len();
        let quoted = table.name.quoted();
        let stage_rows = format!("cutover_stage_rows_{n}");
        let stage_keys = format!("cutover_stage_keys_{n}");
        let all = table.quoted_columns();
        self.exec(&format!(
            "DROP TABLE IF EXISTS pg_temp.{stage_rows}, pg_temp.{stage_keys};
             CREATE TEMP TABLE {stage_rows} AS SELECT {all} FROM {quoted} WITH NO DATA;
             CREATE TEMP TABLE {stage_keys} AS SELECT {keys} FROM {quoted} WITH NO DATA;",
            keys = key_list(table)
        ))
        .await?;
        let inspected = self
            .arbiters
            .lock()
            .expect("not poisoned")
            .get(&table.name)
            .copied();
        let conflict_arbiter = match inspected {
            Some(arbiter) => arbiter,
            // Created by cutover, or never inspected.
            None => self.has_unique_key(table).await?,
        };
        self.tables.insert(
            table.name.clone(),
            TargetTable {
                quoted,
                stage_rows,
                stage_keys,
                layout: table.clone(),
                from_stream,
                version: 0,
                conflict_arbiter,
            },
        );
        Ok(())
    }

    /// Whether the target table itself has a unique index (no predicate) on exactly `table`'s
    /// key columns.
    async fn has_unique_key(&self, table: &TableSchema) -> Result<bool> {
        let mut key: Vec<String> = table
            .key_indexes()
            .map(|i| table.columns[i].name.clone())
            .collect();
        key.sort();
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (
                     SELECT 1 FROM pg_index i
                      WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
                        AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2)",
                &[&table.name.quoted(), &key],
            )
            .await
            .map_err(|e| {
                crate::error::classify(e, &format!("cannot read the key indexes of target table {}", table.name))
            })?;
        Ok(row.get(0))
    }

    pub(super) async fn create_table(&self, table: &TableSchema) -> Result<()> {
        let mut defs: Vec<String> = table
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(&c.name),
                    c.type_name,
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        defs.push(format!("PRIMARY KEY ({})", key_list(table)));
        self.exec(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({})",
            quote_ident(&table.name.schema),
            table.name.quoted(),
            defs.join(", ")
        ))
        .await
    }

    /// Checks that a change's column layout is the one the target table was prepared for.
    pub(super) fn check_layout(&mut self, layout: &Arc<TableSchema>) -> Result<()> {
        let table = self.tables.get_mut(&layout.name).ok_or_else(|| {
            ConnectorError::fatal(format!(
                "the stream has a change to {}, which this pipeline does not replicate",
                layout.name
            ))
        })?;
        if Arc::ptr_eq(&table.layout, layout) {
            return Ok(());
        }
        let same_shape = table.layout.columns.len() == layout.columns.len()
            && table
                .layout
                .columns
                .iter()
                .zip(&layout.columns)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.type_oid == b.type_oid
                        && a.type_modifier == b.type_modifier
                });
        if !same_shape {
            if !self.options.apply_schema_changes {
                return Err(ConnectorError::fatal(format!(
                    "the columns of {} on the source changed and this pipeline does not apply schema changes",
                    layout.name
                ))
                .with_hint("apply the same change to the target table, then restart the pipeline (or set source.schema_changes = \"apply\")"));
            }
            let statements = schema_change(&table.layout, layout, table.from_stream)?;
            let version = table.version + 1;
            let base = table
                .stage_rows
                .split("_v")
                .next()
                .unwrap_or("")
                .to_string();
            let keys_base = table
                .stage_keys
                .split("_v")
                .next()
                .unwrap_or("")
                .to_string();
            let stage_rows = format!("{base}_v{version}");
            let stage_keys = format!("{keys_base}_v{version}");
            let all = layout
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let quoted = table.quoted.clone();
            let mut sql = statements.join(";\n");
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&format!(
                "DROP TABLE IF EXISTS pg_temp.{stage_rows}, pg_temp.{stage_keys};
                 CREATE TEMP TABLE {stage_rows} AS SELECT {all} FROM {quoted} WITH NO DATA;
                 CREATE TEMP TABLE {stage_keys} AS SELECT {keys} FROM {quoted} WITH NO DATA;",
                keys = key_list(layout)
            ));
            if !statements.is_empty() {
                tracing::info!(table = %layout.name, statements = ?statements, "applying a source schema change to the target");
            }
            *table = TargetTable {
                quoted,
                stage_rows,
                stage_keys,
                layout: layout.clone(),
                from_stream: true,
                version,
                conflict_arbiter: table.conflict_arbiter,
            };
            self.segments.push(Segment::Ddl(sql));
            return Ok(());
        }
        table.from_stream = true;
        table.layout = layout.clone();
        Ok(())
    }
}

/// The statements that take a target table from layout `old` to layout `new` (columns renamed,
/// added with the source's type and default, dropped, retyped). Drops and type changes are
/// made only when `old` came from the stream itself (`narrow`): a replay after a restart
/// starts from a layout older than the catalog's, and must not undo what was applied. Every
/// statement is idempotent. A change of the key columns is refused.
fn schema_change(old: &TableSchema, new: &TableSchema, narrow: bool) -> Result<Vec<String>> {
    let table = new.name.quoted();
    let keys = |t: &TableSchema| -> Vec<String> {
        t.columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.clone())
            .collect()
    };
    let old_names: Vec<&str> = old.columns.iter().map(|c| c.name.as_str()).collect();
    let new_names: Vec<&str> = new.columns.iter().map(|c| c.name.as_str()).collect();
    let mut statements = Vec::new();
    // A rename keeps its position and type: the old name is gone, the new one is new, and both
    // stand at the same place (columns added at the same time come after them).
    let mut renamed: Vec<(&str, &str)> = Vec::new();
    for (a, b) in old.columns.iter().zip(&new.columns) {
        if a.name != b.name
            && a.type_oid == b.type_oid
            && !new_names.contains(&a.name.as_str())
            && !old_names.contains(&b.name.as_str())
        {
            renamed.push((&a.name, &b.name));
            statements.push(format!(
                "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                quote_ident(&a.name),
                quote_ident(&b.name)
            ));
        }
    }
    let old_keys: Vec<String> = keys(old)
        .into_iter()
        .map(|k| {
            renamed
                .iter()
                .find(|(from, _)| *from == k)
                .map_or(k.clone(), |(_, to)| to.to_string())
        })
        .collect();
    if old_keys != keys(new) {
        return Err(ConnectorError::fatal(format!(
            "the key of {} changed on the source ({} to {}); cutover does not change a target's key while streaming",
            new.name,
            old_keys.join(", "),
            keys(new).join(", ")
        ))
        .with_hint("make the same change on the target table, then restart the pipeline"));
    }
    let was = |name: &str| -> Option<&cutover_core::Column> {
        let original = renamed
            .iter()
            .find(|(_, to)| *to == name)
            .map_or(name, |(from, _)| *from);
        old.columns.iter().find(|c| c.name == original)
    };
    for c in &new.columns {
        match was(&c.name) {
            None => {
                if c.type_name.is_empty() {
                    return Err(ConnectorError::fatal(format!(
                        "column {} was added to {} on the source, and its type could not be read from the source's catalog",
                        c.name, new.name
                    ))
                    .with_hint("add the column to the target table yourself, then restart the pipeline"));
                }
                let default = c
                    .default
                    .as_ref()
                    .map(|d| format!(" DEFAULT {d}"))
                    .unwrap_or_default();
                statements.push(format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}{default}",
                    quote_ident(&c.name),
                    c.type_name
                ));
            }
            Some(o)
                if narrow && (o.type_oid != c.type_oid || o.type_modifier != c.type_modifier) =>
            {
                if c.type_name.is_empty() {
                    return Err(ConnectorError::fatal(format!(
                        "column {} of {} changed type on the source, and the new type could not be read from the source's catalog",
                        c.name, new.name
                    ))
                    .with_hint("change the column on the target table yourself, then restart the pipeline"));
                }
                statements.push(format!(
                    "ALTER TABLE {table} ALTER COLUMN {col} TYPE {ty} USING {col}::{ty}",
                    col = quote_ident(&c.name),
                    ty = c.type_name
                ));
            }
            Some(_) => {}
        }
    }
    if narrow {
        for c in &old.columns {
            let kept = new_names.contains(&c.name.as_str())
                || renamed.iter().any(|(from, _)| *from == c.name);
            if !kept {
                statements.push(format!(
                    "ALTER TABLE {table} DROP COLUMN IF EXISTS {}",
                    quote_ident(&c.name)
                ));
            }
        }
    }
    Ok(statements)
}

fn key_list(table: &TableSchema) -> String {
    table
        .key_indexes()
        .map(|i| quote_ident(&table.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}
