//! The state a consumer of a message target builds: every message of a table's topic or
//! subject folded to the latest row per key (deletes and tombstones remove the key, a TRUNCATE
//! clears its partition, unchanged-TOAST columns keep the previous value), then put in
//! canonical form for the checker.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value as J};

use super::canonical::{push_value, tag, Precision};
use super::keys::row_from_canonical;
use super::range::{Bound, KeyBound, RangeScan, ScanLimits};
use super::rendered::push_json;
use super::sorted::SortedRows;
use super::CanonRow;
use crate::datum::{oid, Datum};
use crate::envelope::EnvelopeFormat;
use crate::TableSchema;

/// Debezium's marker for a TOASTed value the update did not send.
const DEBEZIUM_UNAVAILABLE: &str = "__debezium_unavailable_value";
/// Microseconds between 1970-01-01 and 2000-01-01.
const UNIX_TO_PG_MICROS: i64 = 946_684_800_000_000;

/// What one envelope says: its op, its row, the old row or key, and unsent columns.
type Parsed<'a> = (
    &'a str,
    Option<&'a Map<String, J>>,
    Option<&'a Map<String, J>>,
    Vec<String>,
);

/// Latest row per key of one table, folded from its messages.
#[derive(Debug)]
pub struct Fold {
    table: Arc<TableSchema>,
    rows: HashMap<String, (i32, Map<String, J>)>,
    /// Messages taken, and messages that could not be read (counted, never fatal).
    pub messages: u64,
    pub unreadable: u64,
}

impl Fold {
    pub fn new(table: Arc<TableSchema>) -> Fold {
        Fold {
            table,
            rows: HashMap::new(),
            messages: 0,
            unreadable: 0,
        }
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The key's identity: its columns in order, as canonical JSON.
    fn key_of(&self, fields: &Map<String, J>) -> Option<String> {
        let mut parts = Vec::new();
        for c in self.table.columns.iter().filter(|c| c.key) {
            parts.push(fields.get(&c.name)?.clone());
        }
        Some(super::canonical::canonical_json(&J::Array(parts)))
    }

    /// Takes one message in log order (`partition` is the Kafka partition; 0 for NATS).
    /// `key` is the message key (Kafka), `payload` the envelope (`None`: a tombstone).
    pub fn take(&mut self, partition: i32, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.messages += 1;
        let key_fields = key
            .and_then(|k| serde_json::from_slice::<J>(k).ok())
            .and_then(|k| k.as_object().cloned());
        let Some(payload) = payload else {
            if let Some(k) = key_fields.as_ref().and_then(|f| self.key_of(f)) {
                self.rows.remove(&k);
            }
            return;
        };
        let Ok(J::Object(env)) = serde_json::from_slice::<J>(payload) else {
            self.unreadable += 1;
            return;
        };
        let debezium = env.contains_key("after") || env.contains_key("before");
        // Several tables may share a topic or subject: keep this table's messages only.
        let named = if debezium {
            env.get("source").and_then(|s| {
                Some(format!(
                    "{}.{}",
                    s.get("schema")?.as_str()?,
                    s.get("table")?.as_str()?
                ))
            })
        } else {
            env.get("table").and_then(J::as_str).map(str::to_string)
        };
        if named.is_some_and(|n| n != self.table.name.to_string()) {
            return;
        }
        let (op, row, old, unchanged): Parsed<'_> = if debezium {
            let op = match env.get("op").and_then(J::as_str) {
                Some("c" | "r") => "insert",
                Some("u") => "update",
                Some("d") => "delete",
                Some("t") => "truncate",
                _ => {
                    self.unreadable += 1;
                    return;
                }
            };
            let after = env.get("after").and_then(J::as_object);
            let unchanged = after
                .map(|a| {
                    a.iter()
                        .filter(|(_, v)| v.as_str() == Some(DEBEZIUM_UNAVAILABLE))
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            (
                op,
                after,
                env.get("before").and_then(J::as_object),
                unchanged,
            )
        } else {
            let op = env.get("op").and_then(J::as_str).unwrap_or("");
            let unchanged = env
                .get("unchanged")
                .and_then(J::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                op,
                env.get("row").and_then(J::as_object),
                env.get("key").and_then(J::as_object),
                unchanged,
            )
        };
        match op {
            "truncate" => self.rows.retain(|_, (p, _)| *p != partition),
            "delete" => {
                let k = key_fields.as_ref().or(old).and_then(|f| self.key_of(f));
                match k {
                    Some(k) => {
                        self.rows.remove(&k);
                    }
                    None => self.unreadable += 1,
                }
            }
            "snapshot" | "insert" | "update" => {
                let Some(row) = row else {
                    self.unreadable += 1;
                    return;
                };
                let Some(k) = self.key_of(row) else {
                    self.unreadable += 1;
                    return;
                };
                let mut row = row.clone();
                for name in &unchanged {
                    row.remove(name);
                }
                if let Some((_, prev)) = self.rows.get(&k) {
                    for name in &unchanged {
                        if let Some(v) = prev.get(name) {
                            row.insert(name.clone(), v.clone());
                        }
                    }
                }
                self.rows.insert(k, (partition, row));
            }
            _ => self.unreadable += 1,
        }
    }

    /// The folded rows in canonical form, in key order. `debezium` says how values are
    /// written (`docs/targets.md`); a value that does not read as its column's type is kept
    /// as its JSON text, so the row shows as different in that column.
    pub fn sorted(&self, precision: Precision, debezium: bool) -> SortedRows {
        let keys = super::key_columns(&self.table);
        let mut sorted = SortedRows::new();
        for (_, row) in self.rows.values() {
            sorted.insert(self.canon(&keys, row, precision, debezium));
        }
        sorted
    }

    /// The row of a key given as canonical JSON of its key columns' values, if held.
    pub fn get(&self, key: &str) -> Option<&Map<String, J>> {
        self.rows.get(key).map(|(_, r)| r)
    }

    fn canon(
        &self,
        keys: &Arc<[usize]>,
        row: &Map<String, J>,
        precision: Precision,
        debezium: bool,
    ) -> super::CanonRow {
        let mut bytes = Vec::with_capacity(16 * self.table.columns.len());
        let mut ends = Vec::with_capacity(self.table.columns.len());
        for c in &self.table.columns {
            match row.get(&c.name) {
                None => bytes.push(tag::ABSENT),
                Some(v) => {
                    let mark = bytes.len();
                    let ok = if debezium {
                        push_debezium(&mut bytes, c.type_oid, v, precision)
                    } else {
                        push_json(&mut bytes, c.type_oid, v, precision)
                    };
                    if ok.is_err() {
                        bytes.truncate(mark);
                        push_value(
                            &mut bytes,
                            &Datum::Opaque(v.to_string().as_bytes()),
                            precision,
                        );
                    }
                }
            }
            ends.push(bytes.len() as u32);
        }
        row_from_canonical(&self.table, keys, bytes, ends)
    }
}

/// A folded table as a checker reads it: the fold, its rows in key order as of the last
/// [`FoldedTable::refresh`], and how the target writes values.
#[derive(Debug)]
pub struct FoldedTable {
    pub fold: Fold,
    sorted: SortedRows,
    precision: Precision,
    debezium: bool,
}

impl FoldedTable {
    /// An empty fold of `table`'s messages, written in the `format` envelope.
    pub fn new(table: Arc<TableSchema>, format: EnvelopeFormat) -> FoldedTable {
        FoldedTable {
            fold: Fold::new(table),
            sorted: SortedRows::new(),
            precision: Precision::of_envelope(format),
            debezium: format == EnvelopeFormat::Debezium,
        }
    }

    /// Puts the rows folded so far in canonical form and key order (after reading messages).
    pub fn refresh(&mut self) {
        self.sorted = self.fold.sorted(self.precision, self.debezium);
    }

    /// The rows of `(low, high]` as of the last refresh.
    pub fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> RangeScan {
        self.sorted.scan(low, high, limits)
    }

    /// The rows with these keys as of the last refresh.
    pub fn lookup(&self, keys: &[Arc<KeyBound>]) -> Vec<Option<CanonRow>> {
        keys.iter()
            .map(|k| self.sorted.get(&k.sort_key).cloned())
            .collect()
    }
}

/// A value as Debezium's envelope writes it: dates as days and times and timestamps as
/// microseconds since the Unix epoch, json as a string, intervals as approximate microseconds;
/// other types as in the cutover envelope.
fn push_debezium(
    out: &mut Vec<u8>,
    type_oid: u32,
    v: &J,
    precision: Precision,
) -> Result<(), String> {
    let int = || v.as_i64().ok_or_else(|| format!("{v} is not an integer"));
    let datum = match (type_oid, v) {
        (oid::DATE, J::Number(_)) => Datum::Date(
            i32::try_from(int()? - 10_957).map_err(|_| "date out of range".to_string())?,
        ),
        (oid::TIME, J::Number(_)) => Datum::Time(int()?),
        (oid::TIMESTAMP, J::Number(_)) => Datum::Timestamp(int()? - UNIX_TO_PG_MICROS),
        (oid::INTERVAL, J::Number(_)) => Datum::Interval {
            months: 0,
            days: 0,
            micros: int()?,
        },
        (oid::JSON | oid::JSONB, J::String(s)) => {
            let text = super::canonical::canonical_json_text(s);
            push_value(out, &Datum::Json(&text), precision);
            return Ok(());
        }
        _ => return push_json(out, type_oid, v, precision),
    };
    push_value(out, &datum, precision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Encoder, EnvelopeFormat, Origin};
    use crate::schema::{Column, TableName};
    use crate::{Change, ChangeEvent, Lsn, Position, Row, Value};
    use bytes::Bytes;

    fn table() -> Arc<TableSchema> {
        let col = Column::new;
        Arc::new(TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![
                col("id", oid::INT8, true),
                col("n", oid::NUMERIC, false),
                col("ts", oid::TIMESTAMP, false),
                col("tz", oid::TIMESTAMPTZ, false),
                col("d", oid::DATE, false),
                col("iv", oid::INTERVAL, false),
                col("j", oid::JSONB, false),
                col("b", oid::BYTEA, false),
                col("big", oid::TEXT, false),
            ],
        })
    }

    fn bin(b: Vec<u8>) -> Value {
        Value::Binary(Bytes::from(b))
    }

    fn row(id: i64, text: &str) -> Row {
        let mut iv = 3_723_000_001i64.to_be_bytes().to_vec();
        iv.extend(2i32.to_be_bytes());
        iv.extend(14i32.to_be_bytes());
        Row(vec![
            bin(id.to_be_bytes().to_vec()),
            bin(crate::verify::keys::binary_numeric("12.50").unwrap()),
            bin(123_456_789_012i64.to_be_bytes().to_vec()),
            bin((-5i64).to_be_bytes().to_vec()),
            bin(9000i32.to_be_bytes().to_vec()),
            bin(iv),
            bin(b"\x01{\"b\": [1, 2.5], \"a\": null}".to_vec()),
            bin(vec![0, 1, 255]),
            bin(text.as_bytes().to_vec()),
        ])
    }

    fn origin() -> Origin {
        Origin {
            lsn: Lsn(16),
            ordinal: 0,
            xid: 1,
            commit_time_micros: 0,
        }
    }

    fn folded(format: EnvelopeFormat) -> (Fold, Precision) {
        let t = table();
        let enc = Encoder {
            format,
            tombstones: true,
            source_name: "s".into(),
            database: "d".into(),
            truncates: Default::default(),
        };
        let mut fold = Fold::new(t.clone());
        let mut send =
            |m: crate::envelope::Message| fold.take(0, m.key.as_deref(), m.payload.as_deref());
        for id in 1..=3 {
            send(enc.snapshot(&t, &row(id, "big value"), origin()).unwrap());
        }
        let event = |change| ChangeEvent {
            position: Position::default(),
            table: t.clone(),
            change,
        };
        // An update that leaves the TOASTed column out keeps the folded value.
        let mut partial = row(2, "");
        partial.0[8] = Value::Unchanged;
        for change in [
            Change::Update {
                old_key: None,
                row: partial,
            },
            Change::Delete { key: row(3, "") },
        ] {
            for m in enc.change(&event(change), origin()).unwrap() {
                send(m);
            }
        }
        let precision = Precision {
            interval_micros: format == EnvelopeFormat::Debezium,
            ..Precision::default()
        };
        (fold, precision)
    }

    #[test]
    fn folded_messages_hash_like_the_source_rows_in_both_envelopes() {
        for format in [EnvelopeFormat::Cutover, EnvelopeFormat::Debezium] {
            let (fold, precision) = folded(format);
            let debezium = format == EnvelopeFormat::Debezium;
            let sorted = fold.sorted(precision, debezium);
            assert_eq!(sorted.len(), 2, "{format:?}: row 3 was deleted");
            let t = table();
            let keys = crate::verify::key_columns(&t);
            for id in [1, 2] {
                let expected =
                    crate::verify::canon_row(&t, &keys, &row(id, "big value"), precision).unwrap();
                let got = sorted.get(&expected.sort_key).expect("row folded");
                assert_eq!(
                    crate::verify::compare_rows(
                        std::slice::from_ref(&expected),
                        std::slice::from_ref(got)
                    ),
                    vec![],
                    "{format:?} row {id}"
                );
                assert_eq!(got.key_values(), expected.key_values());
            }
        }
    }

    #[test]
    fn tombstones_truncates_and_garbage() {
        let t = table();
        let mut fold = Fold::new(t);
        fold.take(0, None, Some(b"{\"op\":\"snapshot\",\"row\":{\"id\":1}}"));
        fold.take(1, None, Some(b"{\"op\":\"snapshot\",\"row\":{\"id\":2}}"));
        assert_eq!(fold.len(), 2);
        fold.take(0, Some(b"{\"id\":1}"), None);
        assert_eq!(fold.len(), 1);
        fold.take(
            1,
            None,
            Some(b"{\"op\":\"truncate\",\"row\":null,\"key\":null}"),
        );
        assert!(fold.is_empty());
        fold.take(0, None, Some(b"not json"));
        fold.take(0, None, Some(b"{\"op\":\"insert\",\"row\":{\"no_key\":1}}"));
        assert_eq!(fold.unreadable, 2);
        // A row missing a column shows that column as absent, not as NULL.
        fold.take(
            0,
            None,
            Some(b"{\"op\":\"insert\",\"row\":{\"id\":5,\"n\":null}}"),
        );
        let sorted = fold.sorted(Precision::default(), false);
        assert_eq!(sorted.len(), 1);
    }
}
