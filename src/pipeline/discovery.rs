//! Looks for tables that newly match `source.tables`, and for partitions attached to replicated
//! partitioned tables, while the pipeline streams.

use cutover_core::TableName;
use cutover_postgres::catalog::SourceTable;
use cutover_postgres::PgSource;

/// What a look found.
#[derive(Default)]
pub struct Found {
    /// Keyed plain tables: they join beside the stream.
    pub join: Vec<SourceTable>,
    /// Tables or partitions that need a run of their own (partitioned, keyless, attached
    /// partitions): the pipeline drains, and the next run copies them or refuses them with the fix.
    pub restart_for: Vec<TableName>,
}

/// Looks for new tables and attached partitions; `known` tells the tables already joining or
/// joined. Lookup failures are logged and the stream goes on.
pub async fn look(source: &PgSource, known: impl Fn(&TableName) -> bool) -> Found {
    let mut found = Found::default();
    let names = match source.new_tables().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for new tables; streaming goes on");
            Vec::new()
        }
    };
    for name in names.into_iter().filter(|n| !known(n)) {
        match source.resolve_table(&name).await {
            Ok(Some(table)) if table.schema.has_key() && table.relkind != 'p' => {
                found.join.push(table)
            }
            // Keyless (refused by the preflight with its fix), gone, or partitioned (its
            // partitions are tracked from the start of a run): the next run takes it.
            Ok(_) => found.restart_for.push(name),
            Err(e) => {
                tracing::warn!(error = %e, table = %name, "cannot read a new table's definition; looking again at the next tick")
            }
        }
    }
    if !found.restart_for.is_empty() {
        tracing::info!(tables = ?found.restart_for.iter().map(ToString::to_string).collect::<Vec<_>>(), "new partitioned or keyless tables match source.tables: draining, then copying them under a snapshot of their own (or refusing them with the fix)");
        return found;
    }
    let attached = match source.new_partitions().await {
        Ok(attached) => attached,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for attached partitions; streaming goes on");
            Vec::new()
        }
    };
    if !attached.is_empty() {
        tracing::info!(partitions = ?attached.iter().map(|(r, p)| format!("{p} of {r}")).collect::<Vec<_>>(), "partitions attached to replicated tables: draining, then copying the rows they held");
        found.restart_for = attached.into_iter().map(|(_, p)| p).collect();
    }
    found
}
