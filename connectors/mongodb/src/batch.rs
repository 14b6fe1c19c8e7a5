//! Folding buffered changes into the writes that reach MongoDB.
//!
//! A batch is a list of operations applied in order. Consecutive changes of one document are
//! folded into one operation where the result is exactly the same: a replace or a delete after
//! anything is that replace or delete; an update that left TOAST values out is merged into an
//! earlier replace of the same document (and stays a full replace), or into an earlier partial
//! update. Changes of different documents commute, so folding one document never reorders what
//! another sees. A truncate is a barrier: nothing after it is folded into anything before it.

use std::collections::HashMap;
use std::sync::Arc;

use cutover_core::{Change, ConnectorError, Result, Row, TableName, TableSchema, Value};
use mongodb::bson::{Bson, Document};
use mongodb::Namespace;

use crate::mapping::{document_id, row_fields, with_id};

/// Where one table's documents go.
#[derive(Debug)]
pub(crate) struct Target {
    /// Distinguishes targets in the fold's index (cheaper than the name).
    pub(crate) index: u32,
    pub(crate) table: TableName,
    pub(crate) ns: Namespace,
}

/// One write, in batch order.
#[derive(Debug)]
pub(crate) enum Op {
    /// `replaceOne({_id}, doc, upsert)`: the whole document.
    Replace { target: Arc<Target>, doc: Document },
    /// The document with `id` gets `fields` and keeps its other fields (a TOAST value the update
    /// did not send): `updateOne({_id}, {$set: fields}, upsert)`, or, for field names `$set`
    /// would read as paths, a read of the document and a replace.
    Patch {
        target: Arc<Target>,
        id: Bson,
        fields: Document,
    },
    /// `deleteOne({_id})`.
    Delete { target: Arc<Target>, id: Bson },
    /// `deleteMany({})`: a table truncate.
    Truncate { target: Arc<Target> },
    /// A key change of an update that left TOAST values out: the document at `from` is read, its
    /// fields overlaid with `fields`, written at `id`, and deleted at `from`. When there is no
    /// document at `from` (the move was already applied), it is a [`Op::Patch`] of `id`.
    Move {
        target: Arc<Target>,
        from: Bson,
        id: Bson,
        fields: Document,
    },
}

/// Buffered changes, folded.
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<Op>,
    /// The last operation of each document since the last barrier: (target, key bytes) -> index.
    last: HashMap<(u32, Vec<u8>), usize>,
}

impl Batch {
    /// The operations to write, in order; the batch is empty afterwards.
    pub(crate) fn take(&mut self) -> Vec<Op> {
        self.last.clear();
        std::mem::take(&mut self.ops)
    }

    /// Adds one change of `layout`'s table.
    pub(crate) fn push(
        &mut self,
        target: &Arc<Target>,
        layout: &TableSchema,
        change: Change,
    ) -> Result<()> {
        match change {
            Change::Insert { row } => self.put_row(target, layout, &row),
            Change::Update { old_key, row } => {
                let key = key_bytes(layout, &row);
                match old_key {
                    Some(old) if key_bytes(layout, &old) != key => {
                        self.move_row(target, layout, &old, &row, key)
                    }
                    _ => self.put_row(target, layout, &row),
                }
            }
            Change::Delete { key } => {
                let id = document_id(layout, &key)?;
                let k = (target.index, key_bytes(layout, &key));
                self.put(
                    k,
                    Op::Delete {
                        target: target.clone(),
                        id,
                    },
                );
                Ok(())
            }
            Change::Truncate => {
                self.ops.push(Op::Truncate {
                    target: target.clone(),
                });
                self.last.clear();
                Ok(())
            }
        }
    }

    /// An insert or an update that keeps its key.
    fn put_row(&mut self, target: &Arc<Target>, layout: &TableSchema, row: &Row) -> Result<()> {
        let id = document_id(layout, row)?;
        let fields = row_fields(layout, row, &id)?;
        let k = (target.index, key_bytes(layout, row));
        if !row.0.contains(&Value::Unchanged) {
            self.put(
                k,
                Op::Replace {
                    target: target.clone(),
                    doc: with_id(id, fields),
                },
            );
            return Ok(());
        }
        match self.last.get(&k).map(|&i| &mut self.ops[i]) {
            Some(Op::Replace { doc, .. }) => overlay(doc, fields),
            Some(Op::Patch {
                fields: earlier, ..
            }) => overlay(earlier, fields),
            _ => {
                self.ops.push(Op::Patch {
                    target: target.clone(),
                    id,
                    fields,
                });
                self.last.insert(k, self.ops.len() - 1);
            }
        }
        Ok(())
    }

    /// An update that changed the row's key.
    fn move_row(
        &mut self,
        target: &Arc<Target>,
        layout: &TableSchema,
        old: &Row,
        row: &Row,
        key: Vec<u8>,
    ) -> Result<()> {
        let from = document_id(layout, old)?;
        let id = document_id(layout, row)?;
        let mut fields = row_fields(layout, row, &id)?;
        let old_k = (target.index, key_bytes(layout, old));
        let new_k = (target.index, key);
        let complete = !row.0.contains(&Value::Unchanged);
        let earlier = self.last.get(&old_k).map(|&i| &self.ops[i]);
        if let (false, Some(Op::Replace { doc, .. })) = (complete, earlier) {
            // The old document is in this batch: take the values the update left out from it.
            let mut full = doc.clone();
            overlay(&mut full, fields);
            fields = full;
        } else if !complete {
            self.ops.push(Op::Move {
                target: target.clone(),
                from,
                id,
                fields,
            });
            let i = self.ops.len() - 1;
            self.last.insert(old_k, i);
            self.last.insert(new_k, i);
            return Ok(());
        }
        self.put(
            old_k,
            Op::Delete {
                target: target.clone(),
                id: from,
            },
        );
        self.put(
            new_k,
            Op::Replace {
                target: target.clone(),
                doc: with_id(id, fields),
            },
        );
        Ok(())
    }

    /// Records an operation that sets the whole outcome of a document (a replace or a delete):
    /// it takes the place of the document's last operation when that one touched only this
    /// document, and otherwise runs after it.
    fn put(&mut self, k: (u32, Vec<u8>), op: Op) {
        if let Some(&i) = self.last.get(&k) {
            if !matches!(self.ops[i], Op::Move { .. } | Op::Truncate { .. }) {
                self.ops[i] = op;
                return;
            }
        }
        self.ops.push(op);
        self.last.insert(k, self.ops.len() - 1);
    }
}

/// Sets `fields` on `doc` (existing fields keep their place; `_id` is never changed).
pub(crate) fn overlay(doc: &mut Document, fields: Document) {
    for (k, v) in fields {
        if k != "_id" {
            doc.insert(k, v);
        }
    }
}

/// The key's values of `row`, length-prefixed, as an index key. Equal binary values are equal
/// keys, and so equal `_id`s.
fn key_bytes(layout: &TableSchema, row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for i in layout.key_indexes() {
        match row.0.get(i) {
            Some(Value::Binary(b)) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            _ => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

/// Refuses a table whose documents cannot be given an `_id`.
pub(crate) fn check_table(layout: &TableSchema) -> Result<()> {
    if !layout.has_key() {
        return Err(ConnectorError::fatal(format!(
            "table {} has no primary key or replica identity index, so its rows cannot be given a MongoDB _id",
            layout.name
        ))
        .with_hint(format!(
            "add a primary key to {0} (or ALTER TABLE {0} REPLICA IDENTITY USING INDEX on a unique index of NOT NULL columns), or leave the table out of this sink",
            layout.name.quoted()
        )));
    }
    let keys: Vec<usize> = layout.key_indexes().collect();
    if let Some(i) = layout.columns.iter().position(|c| c.name == "_id") {
        if keys != [i] {
            return Err(ConnectorError::fatal(format!(
                "table {} has a column named _id that is not its only key column; in MongoDB _id is the document's key",
                layout.name
            ))
            .with_hint("rename the column on the way (a rename transform), or make it the table's primary key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cutover_core::datum::oid;
    use cutover_core::Column;
    use mongodb::bson::doc;

    fn layout() -> TableSchema {
        let col = Column::new;
        TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![
                col("id", oid::INT4, true),
                col("v", oid::TEXT, false),
                col("big", oid::TEXT, false),
            ],
        }
    }

    fn target() -> Arc<Target> {
        Arc::new(Target {
            index: 0,
            table: TableName::new("public", "t"),
            ns: Namespace::new("db", "t"),
        })
    }

    fn row(id: i32, v: &str, big: Option<&str>) -> Row {
        Row(vec![
            Value::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            Value::Binary(Bytes::copy_from_slice(v.as_bytes())),
            match big {
                Some(b) => Value::Binary(Bytes::copy_from_slice(b.as_bytes())),
                None => Value::Unchanged,
            },
        ])
    }

    fn key(id: i32) -> Row {
        Row(vec![
            Value::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            Value::Null,
            Value::Null,
        ])
    }

    fn show(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Replace { doc, .. } => format!("replace {doc}"),
                Op::Patch { id, fields, .. } => format!("patch {id} {fields}"),
                Op::Delete { id, .. } => format!("delete {id}"),
                Op::Truncate { .. } => "truncate".to_string(),
                Op::Move {
                    from, id, fields, ..
                } => format!("move {from}->{id} {fields}"),
            })
            .collect()
    }

    fn fold(changes: Vec<Change>) -> Vec<String> {
        let (t, l) = (target(), layout());
        let mut batch = Batch::default();
        for c in changes {
            batch.push(&t, &l, c).unwrap();
        }
        show(&batch.take())
    }

    fn doc_text(d: Document) -> String {
        d.to_string()
    }

    #[test]
    fn the_last_full_change_of_a_document_wins() {
        let ops = fold(vec![
            Change::Insert {
                row: row(1, "a", Some("B")),
            },
            Change::Insert {
                row: row(2, "x", Some("Y")),
            },
            Change::Update {
                old_key: None,
                row: row(1, "b", Some("B2")),
            },
            Change::Delete { key: key(2) },
        ]);
        assert_eq!(
            ops,
            [
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 1, "id": 1, "v": "b", "big": "B2"})
                ),
                "delete 2".to_string(),
            ]
        );
    }

    #[test]
    fn updates_without_toast_values_merge_or_patch() {
        // Onto an earlier replace: still a full replace, with the earlier TOAST value.
        let ops = fold(vec![
            Change::Insert {
                row: row(1, "a", Some("B")),
            },
            Change::Update {
                old_key: None,
                row: row(1, "b", None),
            },
        ]);
        assert_eq!(
            ops,
            [format!(
                "replace {}",
                doc_text(doc! {"_id": 1, "id": 1, "v": "b", "big": "B"})
            )]
        );
        // Alone: a patch of the sent fields only; two patches merge.
        let ops = fold(vec![
            Change::Update {
                old_key: None,
                row: row(1, "b", None),
            },
            Change::Update {
                old_key: None,
                row: row(1, "c", None),
            },
        ]);
        assert_eq!(
            ops,
            [format!("patch 1 {}", doc_text(doc! {"id": 1, "v": "c"}))]
        );
        // After a delete: the delete stays, the patch follows.
        let ops = fold(vec![
            Change::Delete { key: key(1) },
            Change::Update {
                old_key: None,
                row: row(1, "c", None),
            },
        ]);
        assert_eq!(
            ops,
            [
                "delete 1".to_string(),
                format!("patch 1 {}", doc_text(doc! {"id": 1, "v": "c"}))
            ]
        );
    }

    #[test]
    fn key_changes_delete_then_write() {
        let ops = fold(vec![Change::Update {
            old_key: Some(key(1)),
            row: row(2, "a", Some("B")),
        }]);
        assert_eq!(
            ops,
            [
                "delete 1".to_string(),
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 2, "id": 2, "v": "a", "big": "B"})
                )
            ]
        );
        // Without the TOAST value and without the old document in the batch: a move.
        let ops = fold(vec![
            Change::Update {
                old_key: Some(key(1)),
                row: row(2, "a", None),
            },
            Change::Insert {
                row: row(1, "new", Some("N")),
            },
            Change::Update {
                old_key: None,
                row: row(2, "b", Some("C")),
            },
        ]);
        assert_eq!(
            ops,
            [
                format!("move 1->2 {}", doc_text(doc! {"id": 2, "v": "a"})),
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 1, "id": 1, "v": "new", "big": "N"})
                ),
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 2, "id": 2, "v": "b", "big": "C"})
                ),
            ]
        );
        // With the old document in the batch: its TOAST value is carried over.
        let ops = fold(vec![
            Change::Insert {
                row: row(1, "a", Some("B")),
            },
            Change::Update {
                old_key: Some(key(1)),
                row: row(2, "a2", None),
            },
        ]);
        assert_eq!(
            ops,
            [
                "delete 1".to_string(),
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 2, "id": 2, "v": "a2", "big": "B"})
                )
            ]
        );
        // An old key equal to the new one (REPLICA IDENTITY FULL) is a plain update.
        let ops = fold(vec![Change::Update {
            old_key: Some(key(1)),
            row: row(1, "a", Some("B")),
        }]);
        assert_eq!(ops.len(), 1);
        assert!(ops[0].starts_with("replace"));
    }

    #[test]
    fn truncate_is_a_barrier() {
        let ops = fold(vec![
            Change::Insert {
                row: row(1, "a", Some("B")),
            },
            Change::Truncate,
            Change::Insert {
                row: row(1, "b", Some("C")),
            },
            Change::Update {
                old_key: None,
                row: row(1, "c", None),
            },
        ]);
        assert_eq!(
            ops,
            [
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 1, "id": 1, "v": "a", "big": "B"})
                ),
                "truncate".to_string(),
                format!(
                    "replace {}",
                    doc_text(doc! {"_id": 1, "id": 1, "v": "c", "big": "C"})
                ),
            ]
        );
    }

    #[test]
    fn tables_without_a_usable_key_are_refused() {
        let mut l = layout();
        assert!(check_table(&l).is_ok());
        l.columns[1].name = "_id".into();
        assert!(check_table(&l).unwrap_err().hint.is_some());
        for c in &mut l.columns {
            c.key = false;
        }
        assert!(check_table(&l)
            .unwrap_err()
            .message
            .contains("no primary key"));
    }
}
