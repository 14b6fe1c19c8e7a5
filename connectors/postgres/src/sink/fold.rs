//! Folding streamed changes into each table's net effect per row key, in segments that must reach
//! the target in order.

use std::sync::Arc;

use cutover_core::{Change, Checkpoint, Result, Row, StreamEvent, TableSchema, Value};
use rustc_hash::FxHashMap;

use super::{PgSink, Segment, TargetTable};

/// One table's folded changes.
pub(super) struct TableChanges {
    pub(super) table: TargetTable,
    pub(super) ops: FxHashMap<Vec<u8>, Op>,
}

pub(super) enum Op {
    /// A row the source inserted in this batch, with no earlier change of its key in the
    /// batch: normally new to the target, so it is written by COPY straight into the table.
    /// When the target has the key after all (a replay, rows a merged copy put there), the
    /// batch is written again with it as an upsert.
    Insert(Row),
    Upsert(Row),
    Delete(Row),
}

impl Op {
    /// The row to write, unless the op is a delete.
    fn row(&self) -> Option<&Row> {
        match self {
            Op::Insert(row) | Op::Upsert(row) => Some(row),
            Op::Delete(_) => None,
        }
    }
}

impl PgSink {
    /// The folded changes of `layout`'s table in the current (last) segment.
    fn changes(&mut self, layout: &Arc<TableSchema>) -> &mut TableChanges {
        if !matches!(self.segments.last(), Some(Segment::Changes(_))) {
            self.segments.push(Segment::Changes(FxHashMap::default()));
        }
        let Some(Segment::Changes(map)) = self.segments.last_mut() else {
            unreachable!("a Changes segment was just ensured")
        };
        if !map.contains_key(&layout.name) {
            let table = self.tables[&layout.name].clone();
            map.insert(
                layout.name.clone(),
                TableChanges {
                    table,
                    ops: FxHashMap::default(),
                },
            );
        }
        map.get_mut(&layout.name).expect("inserted above")
    }

    pub(super) fn record(&mut self, layout: &Arc<TableSchema>, change: Change) -> Result<()> {
        self.check_layout(layout)?;
        self.buffered += match &change {
            Change::Insert { row } | Change::Delete { key: row } => row.size(),
            Change::Update { old_key, row } => row.size() + old_key.as_ref().map_or(0, Row::size),
            Change::Truncate => 0,
        };
        match change {
            Change::Insert { row } => insert(self.changes(layout), layout, row),
            Change::Update { old_key, row } => {
                let new_key = key_bytes(layout, &row);
                match old_key.map(|old| (key_bytes(layout, &old), old)) {
                    Some((old_k, old)) if old_k != new_key => {
                        let mut row = row;
                        let changes = self.changes(layout);
                        if let Some(prev) = changes.ops.get(&old_k).and_then(Op::row) {
                            fill_unchanged(&mut row, prev);
                        }
                        if row.0.contains(&Value::Unchanged) {
                            let table = self.tables[&layout.name].clone();
                            self.segments.push(Segment::MoveRow {
                                table,
                                old_key: old,
                                row,
                            });
                        } else {
                            changes.ops.insert(old_k, Op::Delete(old));
                            upsert(changes, layout, row);
                        }
                    }
                    _ => upsert(self.changes(layout), layout, row),
                }
            }
            Change::Delete { key } => {
                let k = key_bytes(layout, &key);
                self.changes(layout).ops.insert(k, Op::Delete(key));
            }
            Change::Truncate => {
                let table = self.tables[&layout.name].clone();
                self.segments.push(Segment::Truncate(table));
            }
        }
        Ok(())
    }

    /// Folds one event into what is buffered.
    pub(super) fn take(&mut self, event: StreamEvent) -> Result<()> {
        match event {
            StreamEvent::Begin { .. } => self.in_source_txn = true,
            StreamEvent::Change(change) => self.record(&change.table, change.change)?,
            StreamEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.in_source_txn = false;
                self.applied = Some((
                    Checkpoint {
                        commit_lsn,
                        end_lsn,
                    },
                    commit_time_micros,
                ));
            }
        }
        Ok(())
    }
}

/// The key's values of `row`, length-prefixed, as a map key. Binary equality is value equality
/// for the key types PostgreSQL compares bytewise (integers, text, uuid, dates...).
pub(super) fn key_bytes(layout: &TableSchema, row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for i in layout.key_indexes() {
        match &row.0[i] {
            Value::Binary(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            _ => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

fn fill_unchanged(row: &mut Row, from: &Row) {
    for (v, prev) in row.0.iter_mut().zip(&from.0) {
        if *v == Value::Unchanged {
            *v = prev.clone();
        }
    }
}

fn upsert(changes: &mut TableChanges, layout: &TableSchema, mut row: Row) {
    let key = key_bytes(layout, &row);
    let prev = changes.ops.get(&key);
    if row.0.contains(&Value::Unchanged) {
        if let Some(prev) = prev.and_then(Op::row) {
            fill_unchanged(&mut row, prev);
        }
    }
    // A row inserted earlier in this batch is still new after its updates.
    let op = if matches!(prev, Some(Op::Insert(_))) {
        Op::Insert(row)
    } else {
        Op::Upsert(row)
    };
    changes.ops.insert(key, op);
}

/// Folds a source INSERT: new to the batch, or, after a change of the same key (a delete and
/// a new row under the old key), an upsert.
fn insert(changes: &mut TableChanges, layout: &TableSchema, row: Row) {
    match changes.ops.entry(key_bytes(layout, &row)) {
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(Op::Insert(row));
        }
        std::collections::hash_map::Entry::Occupied(_) => upsert(changes, layout, row),
    }
}

/// Each table's depth in the graph of foreign keys `edges` (child, parent): 0 for a table that
/// references none of the others, else one more than the deepest table it references. A cycle
/// (tables referencing each other) stops deepening after as many rounds as there are tables.
pub(super) fn depths(edges: &[(String, String)]) -> std::collections::HashMap<String, usize> {
    let mut depth: std::collections::HashMap<String, usize> = edges
        .iter()
        .flat_map(|(c, p)| [(c.clone(), 0), (p.clone(), 0)])
        .collect();
    for _ in 0..depth.len() {
        let mut changed = false;
        for (child, parent) in edges {
            let want = depth[parent] + 1;
            if depth[child] < want {
                depth.insert(child.clone(), want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

/// The edges of `edges` (child, parent) that lie on a cycle: the parent reaches the child
/// again by following references.
pub(super) fn in_cycles(edges: &[(String, String)]) -> std::collections::HashSet<(String, String)> {
    let reaches = |from: &str, to: &str| {
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(t) = todo.pop() {
            if t == to {
                return true;
            }
            if seen.insert(t.clone()) {
                todo.extend(
                    edges
                        .iter()
                        .filter(|(c, _)| *c == t)
                        .map(|(_, p)| p.clone()),
                );
            }
        }
        false
    };
    edges
        .iter()
        .filter(|(c, p)| reaches(p, c))
        .cloned()
        .collect()
}

#[cfg(test)]
mod depth_tests {
    use super::depths;

    #[test]
    fn referenced_tables_are_shallower_than_those_that_reference_them() {
        let e = |c: &str, p: &str| (c.to_string(), p.to_string());
        let d = depths(&[
            e("order_lines", "orders"),
            e("orders", "customers"),
            e("order_lines", "items"),
            e("a", "b"),
            e("b", "a"),
        ]);
        assert_eq!(d["customers"], 0);
        assert_eq!(d["items"], 0);
        assert_eq!(d["orders"], 1);
        assert_eq!(d["order_lines"], 2);
        let cycles = super::in_cycles(&[
            e("order_lines", "orders"),
            e("orders", "customers"),
            e("a", "b"),
            e("b", "c"),
            e("c", "a"),
        ]);
        assert_eq!(cycles.len(), 3, "{cycles:?}");
        assert!(!cycles.contains(&e("orders", "customers")));
        // A cycle ends, within as many rounds as there are tables.
        assert!(d["a"] <= 2 * d.len() && d["b"] <= 2 * d.len());
    }
}
