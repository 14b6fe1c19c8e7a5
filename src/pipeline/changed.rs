//! The keys the stream changed: what the switch's final check compares, instead of every row.
//!
//! `cutover run` records, for each table, the key of every change it hands to the sinks and the
//! commit position of its last change ([`ChangedKeys`]). When a switch has fenced the old
//! primary, the running pipeline writes them to a journal file beside the saved consistency
//! check, once it has read past the fence ([`Journal`]). The final check then compares only
//! those keys whose last change came after the start of the last clean check: every other row
//! was proven equal by that check and has not changed on the source since.
//!
//! A table is checked in full instead when its keys are not all known: its rows reached the
//! sinks other than as changes (a copy while streaming, a truncate), more keys changed than
//! `[cutover] changed_keys_max` allows, or tracking (or the table's copy) started after the
//! last clean check began (a new `cutover run` since). Tracking starts again, for such a table, at the next prune after
//! a clean check (see [`ChangedKeys::prune`]).

use std::collections::HashMap;
use std::sync::Arc;

use cutover_core::verify::push_raw_key_value;
use cutover_core::{Change, ChangeEvent, Lsn, Row, StreamEvent, TableName, TableSchema, Value};

use crate::state::journal::hex;
pub use crate::state::{Journal, JournalTable, Scope};

/// One table's tracked keys: an append-only log of raw keys, compacted (each key once, with
/// the position of its last change) when the log grows past the bound and when the journal is
/// written. Appending is a copy of a few bytes: this runs on the reader for every change, where
/// a hash map of a million keys cost a third of the reader's time (cache misses and growth).
#[derive(Debug, Default)]
struct Tracked {
    /// Changes after this position are all recorded (unless `full`).
    from: Lsn,
    /// The keys are not all known: the final check compares the whole table.
    full: bool,
    /// The raw keys (their columns' binary values, length-prefixed), back to back.
    arena: Vec<u8>,
    /// Where each recorded key ends in `arena`, and the commit position of that change; in
    /// recording order, so a key may appear more than once until the log is compacted.
    ends: Vec<(usize, Lsn)>,
    /// The layout of the table's last change.
    layout: Option<Arc<TableSchema>>,
}

impl Tracked {
    fn push(&mut self, key: &[u8], lsn: Lsn) {
        self.arena.extend_from_slice(key);
        self.ends.push((self.arena.len(), lsn));
    }

    /// Each recorded key and the position of that change, in recording order.
    fn entries(&self) -> impl Iterator<Item = (&[u8], Lsn)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(end, lsn)| {
            let key = &self.arena[start..end];
            start = end;
            (key, lsn)
        })
    }

    /// Keeps each key once, with the latest position recorded for it, and only the keys whose
    /// latest position `keep` accepts. Returns how many entries were dropped.
    fn compact(&mut self, keep: impl Fn(Lsn) -> bool) -> usize {
        let mut latest: Vec<(&[u8], Lsn)> = self.entries().collect();
        latest.sort_unstable();
        let before = latest.len();
        let mut arena = Vec::with_capacity(self.arena.len());
        let mut ends = Vec::with_capacity(before);
        for (i, &(key, lsn)) in latest.iter().enumerate() {
            let superseded = latest.get(i + 1).is_some_and(|next| next.0 == key);
            if !superseded && keep(lsn) {
                arena.extend_from_slice(key);
                ends.push((arena.len(), lsn));
            }
        }
        self.arena = arena;
        self.ends = ends;
        before - self.ends.len()
    }

    fn forget(&mut self) -> usize {
        let dropped = self.ends.len();
        self.arena = Vec::new();
        self.ends = Vec::new();
        dropped
    }
}

/// The keys of the changes one pass of `cutover run` handed to its sinks, bounded in count.
#[derive(Debug, Default)]
pub struct ChangedKeys {
    /// A fast hash (foldhash, seeded per process): every change looks its table up.
    tables: HashMap<TableName, Tracked, foldhash::fast::RandomState>,
    /// Where tracking began (the stream's first start in this pass).
    from: Option<Lsn>,
    /// Entries held in all (a key changed twice counts twice until compacted), and the most
    /// distinct keys allowed; the logs are compacted when they hold twice that.
    held: usize,
    max: usize,
    /// The raw key being built, reused from change to change.
    scratch: Vec<u8>,
}

impl ChangedKeys {
    /// Tracking with at most `max` keys held (0: none; every table is then checked in full).
    pub fn new(max: usize) -> ChangedKeys {
        ChangedKeys {
            max,
            ..ChangedKeys::default()
        }
    }

    /// The stream starts at `start`: changes after it are recorded. A later start in the same
    /// pass (a retry) replays from at most where the earlier one read, so the first one stays.
    pub fn begin(&mut self, start: Lsn) {
        self.from.get_or_insert(start);
    }

    /// Records the keys of `events`, as handed to the sinks.
    pub fn record(&mut self, events: &[StreamEvent]) {
        for event in events {
            if let StreamEvent::Change(change) = event {
                self.record_change(change);
            }
        }
        if self.held > self.max.saturating_mul(2) {
            self.bound();
        }
    }

    fn record_change(&mut self, event: &ChangeEvent) {
        let lsn = event.position.commit_lsn;
        let table = &event.table;
        let rows: [Option<&Row>; 2] = match &event.change {
            Change::Insert { row } | Change::Delete { key: row } => [Some(row), None],
            Change::Update { old_key, row } => [Some(row), old_key.as_ref()],
            Change::Truncate => {
                self.mark_full(&table.name);
                return;
            }
        };
        // No allocation for a table already held: this runs for every change.
        if !self.tables.contains_key(&table.name) {
            let from = self.from.unwrap_or(Lsn::ZERO);
            self.tables.insert(
                table.name.clone(),
                Tracked {
                    from,
                    ..Tracked::default()
                },
            );
        }
        let ChangedKeys {
            tables, scratch, ..
        } = self;
        let tracked = tables.get_mut(&table.name).expect("inserted above");
        if tracked.full {
            return;
        }
        if relaid(&mut tracked.layout, table) {
            // A column added, dropped or retyped: the source may have rewritten every row
            // (`ALTER ... TYPE ... USING`, a volatile default) without a change in the stream.
            self.mark_full(&table.name);
            return;
        }
        let mut added = 0;
        for row in rows.into_iter().flatten() {
            scratch.clear();
            if !raw_key(scratch, row, table) {
                // A key value the source did not send: the table cannot be tracked by key.
                self.held += added;
                self.mark_full(&table.name);
                return;
            }
            tracked.push(scratch, lsn);
            added += 1;
        }
        self.held += added;
    }

    /// Compacts every log, then marks the tables with the most keys as checked in full until
    /// at most `max` distinct keys are held.
    fn bound(&mut self) {
        for tracked in self.tables.values_mut() {
            self.held -= tracked.compact(|_| true);
        }
        while self.held > self.max {
            let Some((name, _)) = self
                .tables
                .iter()
                .filter(|(_, t)| !t.full)
                .max_by_key(|(_, t)| t.ends.len())
            else {
                break;
            };
            let name = name.clone();
            self.mark_full(&name);
        }
    }

    /// `table` was copied to the sinks before the stream position `at`: only a check begun
    /// after it covers the copied rows (the keys changed after it are still recorded).
    pub fn copied(&mut self, table: &TableName, at: Lsn) {
        let tracked = self.tables.entry(table.clone()).or_default();
        tracked.from = tracked.from.max(at);
    }

    /// `table`'s keys are not all known from here on (its rows reached the sinks other than
    /// as changes, or too many of them changed).
    pub fn mark_full(&mut self, table: &TableName) {
        let tracked = self.tables.entry(table.clone()).or_default();
        if !tracked.full {
            self.held -= tracked.forget();
            tracked.full = true;
        }
    }

    /// After a clean check that began at `clean_from`: forgets the keys changed before it, and
    /// starts tracking again, from `read`, the tables checked in full (the reader has handed on
    /// every change up to `read`; a later clean check then covers them).
    pub fn prune(&mut self, clean_from: Lsn, read: Lsn) {
        for tracked in self.tables.values_mut() {
            if tracked.full && read > tracked.from {
                tracked.full = false;
                tracked.from = read;
            }
            if tracked.from <= clean_from {
                self.held -= tracked.compact(|lsn| lsn > clean_from);
            }
        }
    }

    /// The journal of what was recorded, complete through `through`, with every sink durable
    /// through `confirmed` (the logs are compacted and bounded first).
    pub fn journal(&mut self, through: Lsn, confirmed: Lsn) -> Journal {
        self.bound();
        Journal {
            from: self.from.unwrap_or(through).0,
            through: through.0,
            confirmed: confirmed.0,
            tables: self
                .tables
                .iter()
                .map(|(name, t)| JournalTable {
                    schema: name.schema.clone(),
                    name: name.name.clone(),
                    from: t.from.0,
                    full: t.full,
                    keys: t.entries().map(|(k, lsn)| (hex(k), lsn.0)).collect(),
                })
                .collect(),
        }
    }
}

/// Puts `row`'s key in its raw form into `out` (see [`push_raw_key_value`]); false when a key
/// value is missing from the row.
/// Whether `table`'s layout differs from the one last seen (which becomes `table`'s): its
/// columns' names or types. The first layout seen differs from nothing.
fn relaid(last: &mut Option<Arc<TableSchema>>, table: &Arc<TableSchema>) -> bool {
    let changed = match last {
        Some(seen) if Arc::ptr_eq(seen, table) => return false,
        Some(seen) => {
            seen.columns.len() != table.columns.len()
                || seen
                    .columns
                    .iter()
                    .zip(&table.columns)
                    .any(|(a, b)| a.name != b.name || a.type_oid != b.type_oid)
        }
        None => false,
    };
    *last = Some(table.clone());
    changed
}

fn raw_key(out: &mut Vec<u8>, row: &Row, table: &TableSchema) -> bool {
    for i in table.key_indexes() {
        match row.0.get(i) {
            Some(Value::Null) => push_raw_key_value(out, None),
            Some(Value::Binary(b)) => push_raw_key_value(out, Some(b)),
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use cutover_core::{Column, Position, TableSchema};

    use super::*;

    fn table() -> Arc<TableSchema> {
        let column = |name: &str, key: bool| Column {
            name: name.into(),
            type_oid: 20,
            type_name: "bigint".into(),
            type_modifier: -1,
            nullable: !key,
            key,
            default: None,
        };
        Arc::new(TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![column("id", true), column("v", false)],
        })
    }

    fn int(v: i64) -> Value {
        Value::Binary(Bytes::copy_from_slice(&v.to_be_bytes()))
    }

    fn change(lsn: u64, change: Change) -> StreamEvent {
        StreamEvent::Change(ChangeEvent {
            position: Position {
                commit_lsn: Lsn(lsn),
                ordinal: 0,
            },
            table: table(),
            change,
        })
    }

    fn keys(scope: Scope) -> Vec<i64> {
        let Scope::Keys(keys) = scope else {
            panic!("a full check")
        };
        let mut ids: Vec<i64> = keys
            .iter()
            .map(|k| i64::from_be_bytes(k[0].as_ref().unwrap()[..].try_into().unwrap()))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_table_whose_layout_changed_is_compared_whole() {
        let mut changed = ChangedKeys::new(100);
        changed.begin(Lsn(10));
        let insert = |id| Change::Insert {
            row: Row(vec![int(id), int(0)]),
        };
        // The same layout again, in another allocation: still tracked by key.
        changed.record(&[change(20, insert(1)), change(25, insert(2))]);
        let t = TableName::new("public", "t");
        assert_eq!(
            keys(changed.journal(Lsn(30), Lsn(30)).scope(&t, Lsn(10))),
            vec![1, 2]
        );
        // `v` retyped (ALTER ... TYPE ... USING rewrote every row, which the stream never shows).
        let mut retyped = (*table()).clone();
        retyped.columns[1].type_oid = 25;
        changed.record(&[StreamEvent::Change(ChangeEvent {
            position: Position {
                commit_lsn: Lsn(40),
                ordinal: 0,
            },
            table: Arc::new(retyped),
            change: insert(3),
        })]);
        assert_eq!(
            changed.journal(Lsn(50), Lsn(50)).scope(&t, Lsn(10)),
            Scope::Full
        );
    }

    #[test]
    fn the_keys_changed_after_a_clean_check_began_are_compared() {
        let mut changed = ChangedKeys::new(100);
        changed.begin(Lsn(10));
        changed.record(&[
            change(
                20,
                Change::Insert {
                    row: Row(vec![int(1), int(0)]),
                },
            ),
            change(
                30,
                Change::Delete {
                    key: Row(vec![int(2), Value::Null]),
                },
            ),
            change(
                40,
                Change::Update {
                    old_key: Some(Row(vec![int(3), Value::Null])),
                    row: Row(vec![int(4), Value::Unchanged]),
                },
            ),
        ]);
        let path = std::env::temp_dir().join(format!("cutover-changed-{}", std::process::id()));
        changed.journal(Lsn(50), Lsn(50)).save(&path).unwrap();
        let journal = Journal::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let t = TableName::new("public", "t");
        assert_eq!(keys(journal.scope(&t, Lsn(10))), vec![1, 2, 3, 4]);
        assert_eq!(keys(journal.scope(&t, Lsn(30))), vec![3, 4]);
        // Another table, not changed: nothing to compare.
        assert_eq!(
            journal.scope(&TableName::new("public", "u"), Lsn(10)),
            Scope::Keys(vec![])
        );
        // A check that began before tracking did: every row.
        assert_eq!(journal.scope(&t, Lsn(5)), Scope::Full);
    }

    #[test]
    fn a_truncate_or_too_many_keys_means_a_full_check_until_a_later_clean_one() {
        let t = TableName::new("public", "t");
        let mut changed = ChangedKeys::new(2);
        changed.begin(Lsn(10));
        let inserts: Vec<StreamEvent> = (1..=3)
            .map(|i| {
                change(
                    20 + i,
                    Change::Insert {
                        row: Row(vec![int(i as i64), int(0)]),
                    },
                )
            })
            .collect();
        changed.record(&inserts);
        assert_eq!(
            changed.journal(Lsn(30), Lsn(30)).scope(&t, Lsn(10)),
            Scope::Full
        );
        assert_eq!(changed.held, 0);
        // A clean check began at 25; tracking starts again where the reader is (30).
        changed.prune(Lsn(25), Lsn(30));
        changed.record(&[change(
            35,
            Change::Insert {
                row: Row(vec![int(9), int(0)]),
            },
        )]);
        assert_eq!(
            changed.journal(Lsn(40), Lsn(40)).scope(&t, Lsn(25)),
            Scope::Full
        );
        assert_eq!(
            keys(changed.journal(Lsn(40), Lsn(40)).scope(&t, Lsn(31))),
            vec![9]
        );
        changed.record(&[change(45, Change::Truncate)]);
        assert_eq!(
            changed.journal(Lsn(50), Lsn(50)).scope(&t, Lsn(31)),
            Scope::Full
        );
        // Pruning drops keys older than the clean check.
        let mut changed = ChangedKeys::new(100);
        changed.begin(Lsn(10));
        changed.record(&inserts);
        changed.prune(Lsn(22), Lsn(30));
        assert_eq!(changed.held, 1);
        assert_eq!(
            keys(changed.journal(Lsn(30), Lsn(30)).scope(&t, Lsn(22))),
            vec![3]
        );
    }

    #[test]
    fn a_key_changed_many_times_is_held_once_with_its_last_position() {
        let t = TableName::new("public", "t");
        let mut changed = ChangedKeys::new(2);
        changed.begin(Lsn(10));
        let update = |lsn: u64, id: i64| {
            change(
                lsn,
                Change::Update {
                    old_key: None,
                    row: Row(vec![int(id), int(lsn as i64)]),
                },
            )
        };
        // Ten changes of key 1 and one of key 2: past twice the bound, so the log is compacted,
        // and two distinct keys stay within it.
        let mut events: Vec<StreamEvent> = (0..10).map(|i| update(20 + i, 1)).collect();
        events.push(update(25, 2));
        changed.record(&events);
        assert_eq!(changed.held, 2);
        let journal = changed.journal(Lsn(40), Lsn(40));
        assert_eq!(keys(journal.scope(&t, Lsn(10))), vec![1, 2]);
        // Key 1's last change (29) is after a check begun at 27; key 2's (25) is not.
        assert_eq!(keys(journal.scope(&t, Lsn(27))), vec![1]);
        // A third distinct key passes the bound: the table is checked in full.
        changed.record(&[update(41, 3)]);
        assert_eq!(
            changed.journal(Lsn(50), Lsn(50)).scope(&t, Lsn(10)),
            Scope::Full
        );
    }

    #[test]
    fn a_table_copied_at_the_stream_start_is_covered_by_a_check_begun_after_it() {
        let t = TableName::new("public", "t");
        let mut changed = ChangedKeys::new(100);
        changed.begin(Lsn(10));
        changed.copied(&t, Lsn(15));
        changed.record(&[change(
            20,
            Change::Insert {
                row: Row(vec![int(7), int(0)]),
            },
        )]);
        let journal = changed.journal(Lsn(30), Lsn(30));
        assert_eq!(journal.scope(&t, Lsn(12)), Scope::Full);
        assert_eq!(keys(journal.scope(&t, Lsn(16))), vec![7]);
    }
}
