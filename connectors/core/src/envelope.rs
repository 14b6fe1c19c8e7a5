//! Message envelopes for event-stream sinks (Kafka, NATS): one keyed JSON message per row change.
//!
//! Two formats, documented for consumers in `docs/targets.md` ("Envelopes"):
//! - [`EnvelopeFormat::Cutover`]: an object with `op`, `table`, `key`, `row`, `unchanged`, `lsn`,
//!   `ordinal`, `txid` and `commit_ts`; values rendered by [`crate::datum`]'s text forms (ISO 8601 times, exact
//!   decimal strings, base64 bytes, embedded JSON documents).
//! - [`EnvelopeFormat::Debezium`]: the envelope Debezium's PostgreSQL connector writes with
//!   schemas disabled (`before`, `after`, `source`, `op` c/u/d/r/t, `ts_ms`), values in Debezium's
//!   default mappings (dates as epoch days, timestamps as epoch microseconds, timestamptz as ISO
//!   strings) except numeric, which is a decimal string (Debezium's `decimal.handling.mode=string`).
//!
//! The message key is the row key as a JSON object (`{"id":42}`) in both formats, so every change
//! of one row lands in the same partition. A key change becomes a delete of the old key followed
//! by an insert of the new one, so a consumer that folds by key never keeps the old row.

use base64::Engine as _;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::change::{Change, ChangeEvent, Row, Value};
use crate::datum::{self, Datum};
use crate::error::{ConnectorError, ErrorKind, Result};
use crate::position::Lsn;
use crate::schema::TableSchema;

/// Marks a TOASTed column the update did not send, in the Debezium format (Debezium's own
/// placeholder, which its consumers already recognise). The cutover format lists such columns
/// in `unchanged` instead and leaves them out of `row`.
pub const DEBEZIUM_UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Which JSON envelope a sink writes (`format = "cutover"` or `"debezium"` in a sink's table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvelopeFormat {
    /// cutover's envelope: op, table, key, row, unchanged, lsn, ordinal, txid, commit_ts.
    #[default]
    Cutover,
    /// Debezium's PostgreSQL connector envelope (before, after, source, op, ts_ms).
    Debezium,
}

/// How a message sink publishes a truncate (`truncates = ...` in a Kafka sink's table). A
/// truncate is sent to every partition of the table's topic, ahead of what follows it there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncateMessages {
    /// With no key, as Debezium sends it. A compacted topic on Apache Kafka refuses such a
    /// record (`cleanup.policy=compact` needs a key), so use `keyed` or `skip` there.
    #[default]
    Unkeyed,
    /// With the key [`truncate_key`] (the table's name as a JSON string, which no row's key,
    /// a JSON object, can equal): accepted by compacted topics, and compaction keeps the
    /// latest truncate of each table.
    Keyed,
    /// Not published, like Debezium's default `skipped.operations=t`. A truncate on the source,
    /// and the truncate that starts a table's copy (which drops what an earlier, interrupted
    /// copy published), then leave rows in the topic that the source no longer has: `cutover
    /// verify` reports them as extra rows.
    Skip,
}

/// The key of a table's truncate messages under [`TruncateMessages::Keyed`]: the table's
/// qualified name as a JSON string (`"public.orders"`).
pub fn truncate_key(table: &TableSchema) -> Vec<u8> {
    serde_json::to_vec(&table.name.to_string()).expect("a string serialises")
}

/// What a message says happened to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row read by the snapshot copy.
    Snapshot,
    Insert,
    Update,
    Delete,
    /// Every row of the table was removed (the message has no key unless the sink's
    /// `truncates = "keyed"`).
    Truncate,
}

impl Op {
    /// The op's name in the cutover envelope (and in the sinks' `op` headers).
    pub fn name(self) -> &'static str {
        match self {
            Op::Snapshot => "snapshot",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
    fn debezium(self) -> &'static str {
        match self {
            Op::Snapshot => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// One message to publish: its key (`None` for a truncate), its payload (`None` for a Kafka
/// tombstone) and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub op: Op,
}

/// Where a change came from, as the envelope reports it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// Commit LSN of the transaction (the snapshot's LSN for snapshot rows).
    pub lsn: Lsn,
    /// Index of the change inside its transaction (0 for snapshot rows).
    pub ordinal: u32,
    /// Source transaction id (0 for snapshot rows).
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch (the copy's start for snapshot rows).
    pub commit_time_micros: i64,
}

/// Encodes row changes as messages in one format.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub format: EnvelopeFormat,
    /// Follow every delete with a tombstone (a message with the key and no payload), so Kafka's
    /// log compaction can drop the key.
    pub tombstones: bool,
    /// The logical server name Debezium envelopes carry in `source.name`.
    pub source_name: String,
    /// The source database name, for Debezium's `source.db`.
    pub database: String,
    /// How truncates are published.
    pub truncates: TruncateMessages,
}

impl Encoder {
    /// Messages for one snapshot row.
    pub fn snapshot(&self, table: &TableSchema, row: &Row, origin: Origin) -> Result<Message> {
        self.message(table, Op::Snapshot, None, Some(row), origin)
    }

    /// Messages for one streamed change, in the order they must be published.
    pub fn change(&self, event: &ChangeEvent, origin: Origin) -> Result<Vec<Message>> {
        let table = &event.table;
        let mut out = Vec::with_capacity(2);
        match &event.change {
            Change::Insert { row } => {
                out.push(self.message(table, Op::Insert, None, Some(row), origin)?)
            }
            Change::Update { old_key, row } => {
                let moved = old_key
                    .as_ref()
                    .is_some_and(|old| table.key_indexes().any(|i| old.0[i] != row.0[i]));
                if moved {
                    let old = old_key.as_ref().expect("moved implies an old key");
                    self.delete(table, old, origin, &mut out)?;
                    out.push(self.message(table, Op::Insert, None, Some(row), origin)?);
                } else {
                    out.push(self.message(
                        table,
                        Op::Update,
                        old_key.as_ref(),
                        Some(row),
                        origin,
                    )?);
                }
            }
            Change::Delete { key } => self.delete(table, key, origin, &mut out)?,
            Change::Truncate => match self.truncates {
                TruncateMessages::Skip => {}
                keyed => out.push(Message {
                    key: (keyed == TruncateMessages::Keyed).then(|| truncate_key(table)),
                    payload: Some(self.payload(table, Op::Truncate, None, None, origin)?),
                    op: Op::Truncate,
                }),
            },
        }
        Ok(out)
    }

    fn delete(
        &self,
        table: &TableSchema,
        key: &Row,
        origin: Origin,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let message = self.message(table, Op::Delete, Some(key), None, origin)?;
        let key_bytes = message.key.clone();
        out.push(message);
        if self.tombstones {
            out.push(Message {
                key: key_bytes,
                payload: None,
                op: Op::Delete,
            });
        }
        Ok(())
    }

    fn message(
        &self,
        table: &TableSchema,
        op: Op,
        before: Option<&Row>,
        after: Option<&Row>,
        origin: Origin,
    ) -> Result<Message> {
        let keyed = after.or(before).expect("a keyed message has a row");
        Ok(Message {
            key: Some(encode_key(table, keyed, self.format)?),
            payload: Some(self.payload(table, op, before, after, origin)?),
            op,
        })
    }

    fn payload(
        &self,
        table: &TableSchema,
        op: Op,
        before: Option<&Row>,
        after: Option<&Row>,
        origin: Origin,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::new(&mut out);
        let result = match self.format {
            EnvelopeFormat::Cutover => CutoverEnvelope {
                table,
                op,
                key: before.or(after),
                row: after,
                origin,
            }
            .serialize(&mut ser),
            EnvelopeFormat::Debezium => DebeziumEnvelope {
                encoder: self,
                table,
                op,
                before,
                after,
                origin,
            }
            .serialize(&mut ser),
        };
        result.map_err(|e| value_error(table, e))?;
        Ok(out)
    }
}

/// The row key of `row` as a JSON object, the message key in both formats.
pub fn encode_key(table: &TableSchema, row: &Row, format: EnvelopeFormat) -> Result<Vec<u8>> {
    serde_json::to_vec(&Fields {
        table,
        row,
        format,
        keys_only: true,
    })
    .map_err(|e| value_error(table, e))
}

fn value_error(table: &TableSchema, e: serde_json::Error) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Poison,
        format!("a value of table {} cannot be encoded: {e}", table.name),
    )
}

struct CutoverEnvelope<'a> {
    table: &'a TableSchema,
    op: Op,
    key: Option<&'a Row>,
    row: Option<&'a Row>,
    origin: Origin,
}

impl Serialize for CutoverEnvelope<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let format = EnvelopeFormat::Cutover;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("op", self.op.name())?;
        m.serialize_entry("table", &self.table.name.to_string())?;
        match self.key {
            Some(row) => m.serialize_entry(
                "key",
                &Fields {
                    table: self.table,
                    row,
                    format,
                    keys_only: true,
                },
            )?,
            None => m.serialize_entry("key", &())?,
        }
        match self.row {
            Some(row) => {
                m.serialize_entry(
                    "row",
                    &Fields {
                        table: self.table,
                        row,
                        format,
                        keys_only: false,
                    },
                )?;
                let unchanged: Vec<&str> = self
                    .table
                    .columns
                    .iter()
                    .zip(&row.0)
                    .filter(|(_, v)| matches!(v, Value::Unchanged))
                    .map(|(c, _)| c.name.as_str())
                    .collect();
                if !unchanged.is_empty() {
                    m.serialize_entry("unchanged", &unchanged)?;
                }
            }
            None => m.serialize_entry("row", &())?,
        }
        m.serialize_entry("lsn", &self.origin.lsn.to_string())?;
        m.serialize_entry("ordinal", &self.origin.ordinal)?;
        m.serialize_entry("txid", &self.origin.xid)?;
        m.serialize_entry(
            "commit_ts",
            &Datum::TimestampTz(self.origin.commit_time_micros - unix_to_pg_micros())
                .render()
                .unwrap_or_default(),
        )?;
        m.end()
    }
}

fn unix_to_pg_micros() -> i64 {
    datum::unix_millis(0) * 1000
}

struct DebeziumEnvelope<'a> {
    encoder: &'a Encoder,
    table: &'a TableSchema,
    op: Op,
    before: Option<&'a Row>,
    after: Option<&'a Row>,
    origin: Origin,
}

impl<'a> Serialize for DebeziumEnvelope<'a> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let format = EnvelopeFormat::Debezium;
        let table = self.table;
        let fields = |row: Option<&'a Row>| {
            row.map(|row| Fields {
                table,
                row,
                format,
                keys_only: false,
            })
        };
        let mut m = s.serialize_map(Some(8))?;
        m.serialize_entry("before", &fields(self.before))?;
        m.serialize_entry("after", &fields(self.after))?;
        m.serialize_entry(
            "source",
            &DebeziumSource {
                encoder: self.encoder,
                table: self.table,
                op: self.op,
                origin: self.origin,
            },
        )?;
        m.serialize_entry("op", self.op.debezium())?;
        // When the message was made, in Debezium 2.x's three precisions.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        m.serialize_entry("ts_ms", &now_ns.div_euclid(1_000_000))?;
        m.serialize_entry("ts_us", &now_ns.div_euclid(1000))?;
        m.serialize_entry("ts_ns", &now_ns)?;
        // Debezium's transaction block is present only with provide.transaction.metadata.
        m.serialize_entry("transaction", &())?;
        m.end()
    }
}

struct DebeziumSource<'a> {
    encoder: &'a Encoder,
    table: &'a TableSchema,
    op: Op,
    origin: Origin,
}

impl Serialize for DebeziumSource<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("version", concat!("cutover-", env!("CARGO_PKG_VERSION")))?;
        m.serialize_entry("connector", "postgresql")?;
        m.serialize_entry("name", &self.encoder.source_name)?;
        let commit_us = self.origin.commit_time_micros;
        m.serialize_entry("ts_ms", &commit_us.div_euclid(1000))?;
        m.serialize_entry("ts_us", &commit_us)?;
        m.serialize_entry("ts_ns", &commit_us.saturating_mul(1000))?;
        m.serialize_entry(
            "snapshot",
            if self.op == Op::Snapshot {
                "true"
            } else {
                "false"
            },
        )?;
        m.serialize_entry("db", &self.encoder.database)?;
        m.serialize_entry("schema", &self.table.name.schema)?;
        m.serialize_entry("table", &self.table.name.name)?;
        m.serialize_entry("txId", &self.origin.xid)?;
        m.serialize_entry("lsn", &self.origin.lsn.0)?;
        // Debezium's [last committed LSN, this event's LSN], a JSON array of decimal strings in
        // a string, which orders events: the first element grows from one transaction to the
        // next, the second inside one. cutover knows each change by its transaction's commit
        // LSN and its index in it, so it writes [commit LSN, commit LSN + index]: the same
        // order, and no two changes of a transaction share a sequence (a consumer that drops
        // what is not past the last sequence it saw keeps them all).
        let lsn = self.origin.lsn.0;
        let event = lsn.saturating_add(u64::from(self.origin.ordinal));
        m.serialize_entry("sequence", &format!("[\"{lsn}\",\"{event}\"]"))?;
        // Debezium fills xmin only with its slot.xmin setting.
        m.serialize_entry("xmin", &())?;
        m.end()
    }
}

/// A row's columns (or only its key columns) as a JSON object.
struct Fields<'a> {
    table: &'a TableSchema,
    row: &'a Row,
    format: EnvelopeFormat,
    keys_only: bool,
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (column, value) in self.table.columns.iter().zip(&self.row.0) {
            if self.keys_only && !column.key {
                continue;
            }
            match value {
                Value::Null => m.serialize_entry(&column.name, &())?,
                Value::Unchanged => {
                    if self.format == EnvelopeFormat::Debezium {
                        m.serialize_entry(&column.name, DEBEZIUM_UNAVAILABLE)?;
                    }
                }
                Value::Binary(bytes) => {
                    let datum = datum::decode(column.type_oid, bytes)
                        .map_err(|e| S::Error::custom(format!("column {}: {e}", column.name)))?;
                    m.serialize_entry(
                        &column.name,
                        &JsonDatum {
                            datum: &datum,
                            format: self.format,
                        },
                    )?;
                }
            }
        }
        m.end()
    }
}

/// One value in an envelope's JSON mapping.
struct JsonDatum<'a, 'b> {
    datum: &'a Datum<'b>,
    format: EnvelopeFormat,
}

impl Serialize for JsonDatum<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let debezium = self.format == EnvelopeFormat::Debezium;
        match self.datum {
            Datum::Null => s.serialize_unit(),
            Datum::Bool(b) => s.serialize_bool(*b),
            Datum::Int(i) => s.serialize_i64(*i),
            Datum::Float4(f) if f.is_finite() => s.serialize_f32(*f),
            Datum::Float8(f) if f.is_finite() => s.serialize_f64(*f),
            Datum::Bytes(b) | Datum::Opaque(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Datum::Json(text) => {
                if debezium {
                    // Debezium's io.debezium.data.Json: the document as a string.
                    s.serialize_str(text)
                } else {
                    let raw: &serde_json::value::RawValue =
                        serde_json::from_str(text).map_err(S::Error::custom)?;
                    raw.serialize(s)
                }
            }
            Datum::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsonDatum {
                        datum: item,
                        format: self.format,
                    })?;
                }
                seq.end()
            }
            Datum::Date(d) if debezium && *d != i32::MAX && *d != i32::MIN => {
                s.serialize_i64(i64::from(*d) + 10_957)
            }
            Datum::Time(t) if debezium => s.serialize_i64(*t),
            Datum::Timestamp(t) if debezium && *t != i64::MAX && *t != i64::MIN => {
                s.serialize_i64(t + unix_to_pg_micros())
            }
            Datum::Interval {
                months,
                days,
                micros,
            } if debezium => {
                // Debezium's MicroDuration: a month counts as 30.4375 days.
                let month_micros = (f64::from(*months) * 30.4375 * 86_400e6) as i64;
                s.serialize_i64(month_micros + i64::from(*days) * 86_400_000_000 + micros)
            }
            other => s.serialize_str(&other.render().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;
    use crate::schema::{Column, TableName};
    use bytes::Bytes;
    use std::sync::Arc;

    fn table() -> Arc<TableSchema> {
        let col = Column::new;
        Arc::new(TableSchema {
            name: TableName::new("public", "items"),
            columns: vec![
                col("id", datum::oid::INT4, true),
                col("name", datum::oid::TEXT, false),
                col("doc", datum::oid::JSONB, false),
            ],
        })
    }

    fn row(id: i32, name: Option<&str>, doc: Value) -> Row {
        Row(vec![
            Value::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            name.map_or(Value::Null, |n| {
                Value::Binary(Bytes::copy_from_slice(n.as_bytes()))
            }),
            doc,
        ])
    }

    fn origin() -> Origin {
        Origin {
            lsn: Lsn(0x1_0000_0010),
            ordinal: 2,
            xid: 77,
            commit_time_micros: 946_684_800_000_000,
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn encoder(format: EnvelopeFormat) -> Encoder {
        Encoder {
            format,
            tombstones: true,
            source_name: "shop".into(),
            database: "app".into(),
            truncates: TruncateMessages::Unkeyed,
        }
    }

    fn event(change: Change) -> ChangeEvent {
        ChangeEvent {
            position: Position::default(),
            table: table(),
            change,
        }
    }

    #[test]
    fn cutover_envelope_carries_row_position_and_unchanged_columns() {
        let doc = Value::Binary(Bytes::from_static(b"\x01{\"a\": [1, 2.5]}"));
        let m = encoder(EnvelopeFormat::Cutover)
            .change(
                &event(Change::Insert {
                    row: row(7, Some("é😀"), doc),
                }),
                origin(),
            )
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            json(m[0].key.as_ref().unwrap()),
            serde_json::json!({"id": 7})
        );
        assert_eq!(
            json(m[0].payload.as_ref().unwrap()),
            serde_json::json!({"op": "insert", "table": "public.items", "key": {"id": 7},
                "row": {"id": 7, "name": "é😀", "doc": {"a": [1, 2.5]}},
                "lsn": "1/10", "ordinal": 2, "txid": 77, "commit_ts": "2000-01-01T00:00:00Z"})
        );
        let m = encoder(EnvelopeFormat::Cutover)
            .change(
                &event(Change::Update {
                    old_key: None,
                    row: row(7, None, Value::Unchanged),
                }),
                origin(),
            )
            .unwrap();
        let p = json(m[0].payload.as_ref().unwrap());
        assert_eq!(p["row"], serde_json::json!({"id": 7, "name": null}));
        assert_eq!(p["unchanged"], serde_json::json!(["doc"]));
    }

    #[test]
    fn a_key_change_is_a_delete_then_an_insert() {
        let m = encoder(EnvelopeFormat::Debezium)
            .change(
                &event(Change::Update {
                    old_key: Some(row(1, None, Value::Null)),
                    row: row(2, Some("x"), Value::Null),
                }),
                origin(),
            )
            .unwrap();
        let ops: Vec<_> = m.iter().map(|m| (m.op, m.payload.is_some())).collect();
        assert_eq!(
            ops,
            [(Op::Delete, true), (Op::Delete, false), (Op::Insert, true)]
        );
        assert_eq!(
            json(m[0].key.as_ref().unwrap()),
            serde_json::json!({"id": 1})
        );
        assert_eq!(
            json(m[2].key.as_ref().unwrap()),
            serde_json::json!({"id": 2})
        );
        let p = json(m[2].payload.as_ref().unwrap());
        assert_eq!(p["op"], "c");
        assert_eq!(p["after"]["name"], "x");
        assert_eq!(p["source"]["table"], "items");
        assert_eq!(p["source"]["lsn"], 0x1_0000_0010u64);
        // Debezium 2.x's timestamps in three precisions, agreeing with each other.
        let commit_us = p["source"]["ts_us"].as_i64().unwrap();
        assert_eq!(p["source"]["ts_ms"].as_i64().unwrap(), commit_us / 1000);
        assert_eq!(p["source"]["ts_ns"].as_i64().unwrap(), commit_us * 1000);
        let made_ns = p["ts_ns"].as_i64().unwrap();
        assert_eq!(p["ts_us"].as_i64().unwrap(), made_ns / 1000);
        assert_eq!(p["ts_ms"].as_i64().unwrap(), made_ns / 1_000_000);
        assert!(p["transaction"].is_null() && p["source"]["xmin"].is_null());
        let sequence: Vec<String> =
            serde_json::from_str(p["source"]["sequence"].as_str().unwrap()).unwrap();
        // origin(): commit LSN 0x1_0000_0010, the change's index 2.
        assert_eq!(sequence, ["4294967312", "4294967314"]);
    }

    #[test]
    fn truncates_are_unkeyed_keyed_or_skipped_as_the_sink_says() {
        let mut enc = encoder(EnvelopeFormat::Debezium);
        let truncate = |enc: &Encoder| enc.change(&event(Change::Truncate), origin()).unwrap();
        let m = truncate(&enc);
        assert_eq!((m.len(), m[0].key.as_ref()), (1, None));
        assert_eq!(json(m[0].payload.as_ref().unwrap())["op"], "t");
        enc.truncates = TruncateMessages::Keyed;
        let m = truncate(&enc);
        assert_eq!(m[0].op, Op::Truncate);
        assert_eq!(
            json(m[0].key.as_ref().unwrap()),
            serde_json::json!("public.items")
        );
        enc.truncates = TruncateMessages::Skip;
        assert!(truncate(&enc).is_empty());
        // Rows are published as before whatever the setting.
        let rows = enc
            .change(
                &event(Change::Insert {
                    row: row(1, None, Value::Null),
                }),
                origin(),
            )
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_bad_value_is_poison_naming_table_and_column() {
        let bad = Row(vec![
            Value::Binary(Bytes::from_static(b"\x01")),
            Value::Null,
            Value::Null,
        ]);
        let e = encoder(EnvelopeFormat::Cutover)
            .change(&event(Change::Insert { row: bad }), origin())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Poison);
        assert!(
            e.message.contains("public.items") && e.message.contains("column id"),
            "{e}"
        );
    }
}
