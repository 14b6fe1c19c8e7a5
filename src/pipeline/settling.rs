//! Tables whose key ranges were copied under different snapshots: a split copy resumed after a
//! crash copies the ranges the target lacked under a new snapshot, and records the table at
//! the earliest range's snapshot, so the stream replays from there.
//!
//! Replaying a change onto a range copied later is harmless for every change but one: an
//! update that moves a row's key and leaves a TOASTed value unsent (`Value::Unchanged`). A
//! PostgreSQL target applies it by moving the row it holds to the new key, keeping the unsent
//! value. But when the old key lies in a range copied later, the target never had that row
//! (the copy saw it moved already), so the row would be lost; and when the new key lies in a
//! range copied later, the target already holds it, and the move collides with it.
//!
//! So while the stream is before the table's latest range snapshot ([`SinkState::settling`]),
//! such an update gets its unsent values from the row the source holds now under the new key:
//! the target then deletes the old key and writes the new one whole, whichever range each lies
//! in. The source row may be newer than the change; the changes still to come carry the table
//! through the same states after it, so the target ends where the source is. When the source
//! no longer has the new key, the row left it by a later change (a delete, or another key
//! move): the update becomes a delete of the old key, and the new key is watched, so that a
//! later move of it is filled the same way even past the settling position.

use std::collections::{HashMap, HashSet};

use cutover_core::{
    Change, ChangeEvent, Lsn, Result, Row, SinkState, StreamEvent, TableName, Value,
};
use cutover_postgres::PgSource;

/// The tables still settling and the keys of rows the stream moved to where the source no
/// longer had them.
#[derive(Debug, Default)]
pub struct Settling {
    /// Per table, the latest snapshot its ranges were copied at.
    until: HashMap<TableName, Lsn>,
    /// Per table, keys the target does not hold because the source no longer did when a
    /// move to them was filled.
    watched: HashMap<TableName, HashSet<Vec<Value>>>,
}

impl Settling {
    /// The settling tables of every sink's state, at the latest position any sink gives, as
    /// far as they lie past `start` (where the stream begins).
    pub fn of<'s>(states: impl IntoIterator<Item = &'s SinkState>, start: Lsn) -> Settling {
        let mut until: HashMap<TableName, Lsn> = HashMap::new();
        for state in states {
            for (table, &lsn) in &state.settling {
                if lsn > start {
                    let end = until.entry(table.clone()).or_insert(lsn);
                    *end = (*end).max(lsn);
                }
            }
        }
        Settling {
            until,
            watched: HashMap::new(),
        }
    }

    /// Whether nothing settles: the stream passes its events on untouched.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty() && self.watched.is_empty()
    }

    /// Fills, in `batch`, the unsent values of key moves that need them (see the module
    /// comment) from `source`, and forgets tables the stream has passed.
    pub async fn fill(&mut self, batch: &mut [StreamEvent], source: &PgSource) -> Result<()> {
        for event in batch.iter_mut() {
            match event {
                StreamEvent::Change(change) => self.settle(change, source).await?,
                StreamEvent::Commit { commit_lsn, .. } => {
                    let at = *commit_lsn;
                    self.until.retain(|_, until| *until > at);
                }
                StreamEvent::Begin { .. } => {}
            }
        }
        Ok(())
    }

    async fn settle(&mut self, event: &mut ChangeEvent, source: &PgSource) -> Result<()> {
        let table = &event.table;
        let key_of =
            |row: &Row| -> Vec<Value> { table.key_indexes().map(|i| row.0[i].clone()).collect() };
        let settling = self
            .until
            .get(&table.name)
            .is_some_and(|&until| event.position.commit_lsn <= until);
        let watched = self.watched.get_mut(&table.name);
        match &mut event.change {
            Change::Update {
                old_key: Some(old),
                row,
            } if row.0.contains(&Value::Unchanged) => {
                let (from, to) = (key_of(old), key_of(row));
                if from == to {
                    return Ok(());
                }
                let from_watched = watched.is_some_and(|w| w.remove(&from));
                if !settling && !from_watched {
                    return Ok(());
                }
                match source.current_row(table, row).await? {
                    Some(now) => {
                        for (value, current) in row.0.iter_mut().zip(now.0) {
                            if *value == Value::Unchanged {
                                *value = current;
                            }
                        }
                    }
                    None => {
                        tracing::debug!(table = %table.name, "a key move whose row the source no longer has: the old key is deleted and the new one watched");
                        let old = old.clone();
                        self.watched
                            .entry(table.name.clone())
                            .or_default()
                            .insert(to);
                        event.change = Change::Delete { key: old };
                    }
                }
            }
            Change::Insert { row } | Change::Update { row, .. } => {
                // Written whole (or at least present from here on): no longer missing.
                if let Some(w) = watched {
                    let key = key_of(row);
                    if !row.0.contains(&Value::Unchanged) {
                        w.remove(&key);
                    }
                }
            }
            Change::Delete { key } => {
                if let Some(w) = watched {
                    w.remove(&key_of(key));
                }
            }
            Change::Truncate => {
                self.watched.remove(&table.name);
            }
        }
        if self.watched.get(&table.name).is_some_and(HashSet::is_empty) {
            self.watched.remove(&table.name);
        }
        Ok(())
    }
}
