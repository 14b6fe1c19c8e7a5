//! Partitions attached to a replicated partitioned table after it was copied.
//!
//! A partitioned table publishes through its root, so rows written after a partition is
//! attached reach every sink as changes of the root. The rows the partition already held when
//! it was attached were never written to the WAL as changes of the root: they must be copied.
//!
//! The partitions each root had when cutover last copied it (or last merged new ones) are kept
//! on the source, as a JSON comment on cutover's own publication, so every run (and every
//! machine) agrees which partitions are new. A partition missing from that list is read (in a
//! repeatable-read transaction) and its rows are written to every sink as inserts (upserts at
//! the targets), then added to the list. Streaming then resumes from the sinks' checkpoints, and
//! replays the changes of those rows made since: each key ends at its latest change, as in a
//! replay after a crash.

use std::collections::{BTreeMap, BTreeSet};

use cutover_core::{quote_ident, ConnectorError, Result, TableName};
use tokio_postgres::Client;

use crate::error::classify;

/// Leaf partitions per partitioned root, by `schema.table` names.
pub type PartitionMap = BTreeMap<String, BTreeSet<String>>;

/// The leaf partitions of `root` now (nested partitions included, the root excluded).
pub async fn leaves(client: &Client, root: &TableName) -> Result<BTreeSet<TableName>> {
    let rows = client
        .query(
            // pg_inherits rather than pg_partition_tree (12+), for every supported version.
            "WITH RECURSIVE tree(relid) AS (
                 SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::text::regclass
                 UNION ALL
                 SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)
             SELECT n.nspname::text, c.relname::text
               FROM tree t
               JOIN pg_class c ON c.oid = t.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind <> 'p'",
            &[&root.quoted()],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot list the partitions of {root}")))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The partitions recorded on the publication (`None`: no record yet, or a comment that is
/// not cutover's).
pub async fn recorded(client: &Client, publication: &str) -> Result<Option<PartitionMap>> {
    let row = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| classify(e, "cannot read the publication's comment"))?;
    let Some(text) = row.and_then(|r| r.get::<_, Option<String>>(0)) else {
        return Ok(None);
    };
    let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_str(&text) else {
        return Ok(None);
    };
    Ok(doc
        .remove("cutover_partitions")
        .and_then(|m| serde_json::from_value(m).ok()))
}

/// Records `map` on the publication.
pub async fn record(client: &Client, publication: &str, map: &PartitionMap) -> Result<()> {
    let text = serde_json::json!({ "cutover_partitions": map }).to_string();
    client
        .batch_execute(&format!(
            "COMMENT ON PUBLICATION {} IS '{}'",
            quote_ident(publication),
            text.replace('\'', "''")
        ))
        .await
        .map_err(|e| {
            classify(
                e,
                &format!("cannot record the partitions on publication {publication}"),
            )
        })
}

/// What a run must merge: for each root, the partitions not in `recorded`. A root without a
/// record has all its partitions recorded as they are now (its copy, before or in this run,
/// holds them). Returns the partitions to merge and the record to write once they are merged.
pub fn plan(
    now: &BTreeMap<TableName, BTreeSet<TableName>>,
    recorded: Option<&PartitionMap>,
) -> (Vec<(TableName, TableName)>, PartitionMap) {
    let mut merge = Vec::new();
    let mut next = PartitionMap::new();
    for (root, leaves) in now {
        let names: BTreeSet<String> = leaves.iter().map(ToString::to_string).collect();
        if let Some(known) = recorded.and_then(|r| r.get(&root.to_string())) {
            for leaf in leaves {
                if !known.contains(&leaf.to_string()) {
                    merge.push((root.clone(), leaf.clone()));
                }
            }
        }
        next.insert(root.to_string(), names);
    }
    (merge, next)
}

/// The error of a partition that cannot be read with its root's columns.
pub fn unreadable(root: &TableName, partition: &TableName, e: ConnectorError) -> ConnectorError {
    ConnectorError {
        message: format!(
            "cannot copy partition {partition}, attached to {root}: {}",
            e.message
        ),
        ..e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_missing_from_the_record_are_merged() {
        let root = TableName::new("public", "orders");
        let p = |n: &str| TableName::new("public", n);
        let now: BTreeMap<_, _> = [(root.clone(), [p("o1"), p("o2"), p("o3")].into())].into();
        // No record: everything there now counts as copied.
        let (merge, next) = plan(&now, None);
        assert!(merge.is_empty());
        assert_eq!(next["public.orders"].len(), 3);
        // o3 attached since the record.
        let recorded: PartitionMap = [(
            "public.orders".to_string(),
            ["public.o1".to_string(), "public.o2".to_string()].into(),
        )]
        .into();
        let (merge, next) = plan(&now, Some(&recorded));
        assert_eq!(merge, vec![(root.clone(), p("o3"))]);
        assert!(next["public.orders"].contains("public.o3"));
        // A detached partition drops out of the record; nothing to merge.
        let now: BTreeMap<_, _> = [(root, [p("o1")].into())].into();
        let (merge, next) = plan(&now, Some(&recorded));
        assert!(merge.is_empty());
        assert_eq!(next["public.orders"].len(), 1);
    }
}
