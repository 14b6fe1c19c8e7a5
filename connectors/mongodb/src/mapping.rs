//! How PostgreSQL rows become MongoDB documents.
//!
//! # Documents
//!
//! Each row becomes one document in its table's collection: `_id` first, then every column by
//! its PostgreSQL name, in column order (key columns included, so `_id` repeats them).
//!
//! - **`_id`**: with a one-column key, the key column's value (`{_id: 42, id: 42, ...}`); with a
//!   composite key, an embedded document of the key columns in column order
//!   (`{_id: {order_id: 7, line: 2}, order_id: 7, line: 2, ...}`). The key is the primary key, or
//!   the replica identity index.
//! - A column named `_id` is allowed only when it is the table's one key column.
//! - SQL `NULL` becomes BSON `null`. A TOASTed value an update did not send is not written at all:
//!   the document keeps the value it has.
//!
//! # Types
//!
//! The BSON type follows the column's PostgreSQL type (its type OID), never the value:
//!
//! | PostgreSQL | BSON | Notes |
//! |---|---|---|
//! | `boolean` | Boolean | |
//! | `smallint`, `integer` | 32-bit integer | |
//! | `bigint`, `oid` | 64-bit integer | always 64-bit, even for small values |
//! | `real`, `double precision` | Double | `real` is widened exactly; `NaN`, `Infinity`, `-Infinity` are kept |
//! | `numeric` | Decimal128 | exact, with its scale (`12.50` stays `12.50`); `NaN`, `Infinity`, `-Infinity` become Decimal128 NaN / ±Infinity. More than 34 significant digits (after dropping trailing zeros of the fraction), or an exponent outside Decimal128's range, cannot be held: the change is refused as poison, naming table, column and key |
//! | `money` | Decimal128 | the amount with two decimal places (PostgreSQL's binary form is in minor units; the two places assume a two-digit currency) |
//! | `text`, `varchar`, `char(n)`, `"char"`, `name`, `xml` | String | `char(n)` keeps its padding |
//! | `inet`, `cidr` | String | `10.0.0.1`, `10.0.0.0/8` (the prefix length is shown for `cidr` and for an `inet` that is not a single host) |
//! | `macaddr` | String | `08:00:2b:01:02:03` |
//! | `bytea` | Binary, subtype 0 (generic) | |
//! | `uuid` | Binary, subtype 4 (UUID) | the 16 bytes in network order |
//! | `date` | Date | midnight UTC of that day |
//! | `timestamp`, `timestamptz` | Date | milliseconds since the Unix epoch; `timestamp` (no zone) is read as UTC. PostgreSQL's microseconds are truncated toward negative infinity (`…00.1239` becomes `…00.123`, and 1 µs before the epoch becomes 1 ms before it) |
//! | `date`, `timestamp`, `timestamptz` `infinity` / `-infinity` | String | `"infinity"` / `"-infinity"` |
//! | `time` | String | ISO 8601, `13:45:00.25` |
//! | `timetz` | String | ISO 8601 with offset, `13:45:00+02:00` (`Z` for UTC) |
//! | `interval` | String | ISO 8601 duration, `P1Y2M3DT4H5M6.5S` (`PT0S` when zero) |
//! | `json`, `jsonb` | the JSON value as BSON | objects become embedded documents (key order kept; a repeated key in `json` keeps its last value; keys such as `$oid` are plain keys, never extended JSON), arrays become arrays, strings, booleans and `null` map directly. Integers become 32-bit integers when they fit, else 64-bit integers, else (up to 2^64 - 1) Decimal128; larger integers and all other numbers become Double. A number outside the Double range cannot be held (poison). |
//! | arrays of the built-in types above | Array | elements mapped as above, `NULL` elements as `null`; a multi-dimensional array is an array of arrays (row-major); an empty array is `[]` |
//! | anything else (enums, ranges, composites, `bit`, geometric and extension types, and arrays of those) | Binary, subtype 0x80 (user defined) | PostgreSQL's binary send format of the value, unchanged |

use cutover_core::datum::{self, oid, Datum};
use cutover_core::{ConnectorError, ErrorKind, Row, TableSchema, Value};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Decimal128, Document};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

const MILLIS_PER_DAY: i64 = 86_400_000;
/// `int2[]` and `int4[]`: their elements are 32-bit integers.
const INT2_ARRAY: u32 = 1005;
const INT4_ARRAY: u32 = 1007;

/// The BSON value of one non-NULL column value of type `type_oid` (in PostgreSQL's binary send
/// format). The error says what is wrong with the value; the caller adds table, column and key.
pub(crate) fn value_to_bson(type_oid: u32, bytes: &[u8]) -> Result<Bson, String> {
    let datum = datum::decode(type_oid, bytes).map_err(|e| e.to_string())?;
    let int32 = matches!(type_oid, oid::INT2 | oid::INT4 | INT2_ARRAY | INT4_ARRAY);
    datum_to_bson(&datum, int32)
}

/// Maps a decoded value. `int32` says the column's integers are 32-bit (int2, int4 and their
/// arrays), so an `Int` becomes a 32-bit integer whatever its size.
fn datum_to_bson(datum: &Datum<'_>, int32: bool) -> Result<Bson, String> {
    Ok(match datum {
        Datum::Null => Bson::Null,
        Datum::Bool(b) => Bson::Boolean(*b),
        Datum::Int(i) => match i32::try_from(*i) {
            Ok(small) if int32 => Bson::Int32(small),
            _ => Bson::Int64(*i),
        },
        Datum::Float4(f) => Bson::Double(f64::from(*f)),
        Datum::Float8(f) => Bson::Double(*f),
        Datum::Numeric(text) => Bson::Decimal128(decimal(text)?),
        Datum::Money(_) => Bson::Decimal128(decimal(&render(datum))?),
        Datum::Text(t) => Bson::String(t.to_string()),
        Datum::Bytes(b) => binary(BinarySubtype::Generic, b),
        Datum::Uuid(u) => binary(BinarySubtype::Uuid, u),
        Datum::Date(d) => match *d {
            i32::MAX => Bson::String("infinity".into()),
            i32::MIN => Bson::String("-infinity".into()),
            d => Bson::DateTime(DateTime::from_millis(
                datum::unix_millis(0) + i64::from(d) * MILLIS_PER_DAY,
            )),
        },
        Datum::Timestamp(t) | Datum::TimestampTz(t) => match *t {
            i64::MAX => Bson::String("infinity".into()),
            i64::MIN => Bson::String("-infinity".into()),
            t => Bson::DateTime(DateTime::from_millis(datum::unix_millis(t))),
        },
        Datum::Time(_) | Datum::TimeTz { .. } | Datum::Interval { .. } => {
            Bson::String(render(datum))
        }
        Datum::Json(text) => json_to_bson(text)?,
        Datum::Array(items) => Bson::Array(
            items
                .iter()
                .map(|item| datum_to_bson(item, int32))
                .collect::<Result<_, _>>()?,
        ),
        Datum::Opaque(b) => binary(BinarySubtype::UserDefined(0x80), b),
    })
}

fn render(datum: &Datum<'_>) -> String {
    datum.render().unwrap_or_default()
}

fn binary(subtype: BinarySubtype, bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype,
        bytes: bytes.to_vec(),
    })
}

/// Decimal text (`-12.50`, `NaN`, `Infinity`) as an exact Decimal128. Trailing zeros of the
/// fraction are dropped only when the value has more than 34 digits; a value that still does not
/// fit is an error, never a rounding.
fn decimal(text: &str) -> Result<Decimal128, String> {
    text.parse::<Decimal128>().map_err(|e| {
        let digits = text.chars().filter(char::is_ascii_digit).count();
        format!(
            "the numeric value {} ({digits} digits) does not fit MongoDB's Decimal128 \
             (34 significant digits, exponent -6176..6111): {e}",
            abbreviate(text)
        )
    })
}

/// Long values shortened for error messages.
fn abbreviate(text: &str) -> String {
    if text.len() <= 60 {
        text.to_string()
    } else {
        let head: String = text.chars().take(28).collect();
        let tail: String = text
            .chars()
            .rev()
            .take(28)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{head}…{tail}")
    }
}

/// JSON text as the BSON value it denotes. Keys keep their order; keys that look like MongoDB's
/// extended JSON (`$oid`, `$numberLong`) are plain keys here, never interpreted.
pub(crate) fn json_to_bson(text: &str) -> Result<Bson, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = JsonValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| format!("the JSON value cannot be read: {e}"))?;
    Ok(value)
}

/// Builds BSON directly from the JSON parser's events, in document order.
struct JsonValue;

impl<'de> DeserializeSeed<'de> for JsonValue {
    type Value = Bson;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Bson, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonValue {
    type Value = Bson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Bson, E> {
        Ok(Bson::Null)
    }

    fn visit_none<E>(self) -> Result<Bson, E> {
        Ok(Bson::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Bson, E> {
        Ok(Bson::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Bson, E> {
        Ok(i32::try_from(v).map_or(Bson::Int64(v), Bson::Int32))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Bson, E> {
        if let Ok(small) = i64::try_from(v) {
            return self.visit_i64(small);
        }
        v.to_string()
            .parse::<Decimal128>()
            .map(Bson::Decimal128)
            .map_err(E::custom)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Bson, E> {
        Ok(Bson::Double(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Bson, E> {
        Ok(Bson::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Bson, E> {
        Ok(Bson::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bson, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonValue)? {
            items.push(item);
        }
        Ok(Bson::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bson, A::Error> {
        let mut doc = Document::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonValue)?;
            doc.insert(key, value);
        }
        Ok(Bson::Document(doc))
    }
}

/// A value that cannot be written, as a poison error naming where it is.
fn poison(table: &TableSchema, column: usize, id: Option<&Bson>, reason: &str) -> ConnectorError {
    let c = &table.columns[column];
    let at = match id {
        Some(id) => format!("the row with _id {id}"),
        None => "a row".to_string(),
    };
    ConnectorError::new(
        ErrorKind::Poison,
        format!(
            "table {}, column {} (type OID {}), {at}: {reason}",
            table.name, c.name, c.type_oid
        ),
    )
}

/// The BSON value of column `i` of `row`; `None` for a value the update did not send.
fn column_value(
    table: &TableSchema,
    row: &Row,
    i: usize,
    id: Option<&Bson>,
) -> Result<Option<Bson>, ConnectorError> {
    match row.0.get(i) {
        Some(Value::Null) => Ok(Some(Bson::Null)),
        Some(Value::Unchanged) => Ok(None),
        Some(Value::Binary(b)) => value_to_bson(table.columns[i].type_oid, b)
            .map(Some)
            .map_err(|reason| poison(table, i, id, &reason)),
        None => Err(ConnectorError::fatal(format!(
            "a row of {} has {} values but the table has {} columns",
            table.name,
            row.0.len(),
            table.columns.len()
        ))),
    }
}

/// The `_id` of `row` (a full row or a key row: only the key columns are read): the key column's
/// value, or an embedded document of the key columns in column order.
pub(crate) fn document_id(table: &TableSchema, row: &Row) -> Result<Bson, ConnectorError> {
    let mut parts = Vec::with_capacity(1);
    for i in table.key_indexes() {
        let value = column_value(table, row, i, None)?.ok_or_else(|| {
            poison(
                table,
                i,
                None,
                "the key value is missing (sent as an unchanged TOAST value)",
            )
        })?;
        parts.push((table.columns[i].name.clone(), value));
    }
    match parts.len() {
        0 => Err(ConnectorError::fatal(format!(
            "table {} has no key to give its documents an _id",
            table.name
        ))),
        1 => Ok(parts.pop().expect("one part").1),
        _ => Ok(Bson::Document(parts.into_iter().collect())),
    }
}

/// The columns of `row` that carry a value (every column but unchanged TOAST values), by name,
/// in column order. `id` is only for error messages.
pub(crate) fn row_fields(
    table: &TableSchema,
    row: &Row,
    id: &Bson,
) -> Result<Document, ConnectorError> {
    let mut doc = Document::new();
    for i in 0..table.columns.len() {
        if let Some(value) = column_value(table, row, i, Some(id))? {
            doc.insert(table.columns[i].name.clone(), value);
        }
    }
    Ok(doc)
}

/// A whole document: `_id` first, then `fields`.
pub(crate) fn with_id(id: Bson, fields: Document) -> Document {
    let mut doc = Document::new();
    doc.insert("_id", id);
    for (k, v) in fields {
        if k != "_id" {
            doc.insert(k, v);
        }
    }
    doc
}

/// Whether `name` can be used as a field path in `$set` (MongoDB reads `.` as nesting and a
/// leading `$` as an operator).
pub(crate) fn plain_field_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('.') && !name.starts_with('$')
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cutover_core::{Column, TableName};

    fn col(name: &str, type_oid: u32, key: bool) -> Column {
        Column::new(name, type_oid, key)
    }

    fn bin(b: &[u8]) -> Value {
        Value::Binary(Bytes::copy_from_slice(b))
    }

    /// numeric's binary form from base-10000 digits.
    fn numeric(digits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(s.parse().unwrap())
    }

    #[test]
    fn integers_follow_the_column_type_not_the_value() {
        assert_eq!(
            value_to_bson(oid::INT2, &7i16.to_be_bytes()),
            Ok(Bson::Int32(7))
        );
        assert_eq!(
            value_to_bson(oid::INT4, &(-7i32).to_be_bytes()),
            Ok(Bson::Int32(-7))
        );
        assert_eq!(
            value_to_bson(oid::INT8, &7i64.to_be_bytes()),
            Ok(Bson::Int64(7))
        );
        assert_eq!(
            value_to_bson(oid::OID, &u32::MAX.to_be_bytes()),
            Ok(Bson::Int64(u32::MAX.into()))
        );
        assert_eq!(value_to_bson(oid::BOOL, &[1]), Ok(Bson::Boolean(true)));
        assert!(value_to_bson(oid::INT4, &[0, 1]).is_err());
    }

    #[test]
    fn floats_keep_nan_and_infinities() {
        let f8 = |v: f64| value_to_bson(oid::FLOAT8, &v.to_be_bytes()).unwrap();
        assert!(matches!(f8(f64::NAN), Bson::Double(d) if d.is_nan()));
        assert_eq!(f8(f64::INFINITY), Bson::Double(f64::INFINITY));
        assert_eq!(f8(f64::NEG_INFINITY), Bson::Double(f64::NEG_INFINITY));
        assert_eq!(f8(-0.5), Bson::Double(-0.5));
        let f4 = value_to_bson(oid::FLOAT4, &0.1f32.to_be_bytes()).unwrap();
        assert_eq!(f4, Bson::Double(f64::from(0.1f32)));
        let nan4 = value_to_bson(oid::FLOAT4, &f32::NAN.to_be_bytes()).unwrap();
        assert!(matches!(nan4, Bson::Double(d) if d.is_nan()));
    }

    #[test]
    fn numerics_become_exact_decimals() {
        let n = |d: &[i16], w, s, sc| value_to_bson(oid::NUMERIC, &numeric(d, w, s, sc));
        assert_eq!(n(&[12, 5000], 0, 0x4000, 2), Ok(dec("-12.50")));
        assert_eq!(n(&[5], -2, 0, 8), Ok(dec("0.00000005")));
        assert_eq!(n(&[], 0, 0xC000, 0), Ok(dec("NaN")));
        assert_eq!(n(&[], 0, 0xD000, 0), Ok(dec("Infinity")));
        assert_eq!(n(&[], 0, 0xF000, 0), Ok(dec("-Infinity")));
        // The scale is kept: 12.50 is not 12.5.
        assert_ne!(dec("12.50"), dec("12.5"));
        // 34 significant digits fit exactly; 35 do not.
        let d34 = [12, 3456, 7890, 1234, 5678, 9012, 3456, 7890, 1234];
        assert_eq!(
            n(&d34, 8, 0, 0),
            Ok(dec("1234567890123456789012345678901234"))
        );
        assert!(n(
            &[123, 3456, 7890, 1234, 5678, 9012, 3456, 7890, 1234],
            8,
            0,
            0
        )
        .is_err());
        // 36 significant digits cannot be held: an error, never a rounding.
        let e = n(
            &[1, 2345, 6789, 123, 4567, 8901, 2345, 6789, 123, 4567],
            9,
            0,
            0,
        )
        .unwrap_err();
        assert!(e.contains("Decimal128"), "{e}");
        let e = n(
            &[1, 2345, 6789, 123, 4567, 8901, 2345, 6789, 123, 4567],
            4,
            0,
            20,
        );
        assert!(e.is_err());
        // Trailing zeros of the fraction beyond 34 digits are dropped, not refused.
        let v = n(&[1], 0, 0, 40).unwrap();
        assert_eq!(v, dec("1.000000000000000000000000000000000"));
    }

    #[test]
    fn money_is_a_two_place_decimal() {
        assert_eq!(
            value_to_bson(oid::MONEY, &(-1234i64).to_be_bytes()),
            Ok(dec("-12.34"))
        );
    }

    #[test]
    fn text_like_types_are_strings() {
        assert_eq!(
            value_to_bson(oid::TEXT, "héllo".as_bytes()),
            Ok(Bson::String("héllo".into()))
        );
        assert_eq!(
            value_to_bson(oid::INET, &[2, 32, 0, 4, 10, 0, 0, 1]),
            Ok(Bson::String("10.0.0.1".into()))
        );
        assert_eq!(
            value_to_bson(oid::MACADDR, &[8, 0, 0x2b, 1, 2, 3]),
            Ok(Bson::String("08:00:2b:01:02:03".into()))
        );
        assert!(value_to_bson(oid::TEXT, &[0xff]).is_err());
    }

    #[test]
    fn bytes_uuids_and_unknown_types_are_binaries() {
        let bytes = value_to_bson(oid::BYTEA, &[0, 1, 2]).unwrap();
        assert_eq!(bytes, binary(BinarySubtype::Generic, &[0, 1, 2]));
        let u: [u8; 16] = *b"0123456789abcdef";
        assert_eq!(
            value_to_bson(oid::UUID, &u),
            Ok(binary(BinarySubtype::Uuid, &u))
        );
        // An enum value (unknown OID): PostgreSQL's send format, subtype 0x80.
        assert_eq!(
            value_to_bson(99_999, b"happy"),
            Ok(binary(BinarySubtype::UserDefined(0x80), b"happy"))
        );
    }

    #[test]
    fn dates_and_timestamps_are_utc_milliseconds() {
        let epoch_2000 = 946_684_800_000;
        assert_eq!(
            value_to_bson(oid::DATE, &1i32.to_be_bytes()),
            Ok(Bson::DateTime(DateTime::from_millis(
                epoch_2000 + 86_400_000
            )))
        );
        assert_eq!(
            value_to_bson(oid::DATE, &(-10_957i32).to_be_bytes()),
            Ok(Bson::DateTime(DateTime::from_millis(0)))
        );
        // Microseconds are truncated toward negative infinity.
        assert_eq!(
            value_to_bson(oid::TIMESTAMPTZ, &1_999i64.to_be_bytes()),
            Ok(Bson::DateTime(DateTime::from_millis(epoch_2000 + 1)))
        );
        assert_eq!(
            value_to_bson(oid::TIMESTAMP, &(-1i64).to_be_bytes()),
            Ok(Bson::DateTime(DateTime::from_millis(epoch_2000 - 1)))
        );
        for (type_oid, bytes, text) in [
            (oid::TIMESTAMP, i64::MAX.to_be_bytes().to_vec(), "infinity"),
            (
                oid::TIMESTAMPTZ,
                i64::MIN.to_be_bytes().to_vec(),
                "-infinity",
            ),
            (oid::DATE, i32::MAX.to_be_bytes().to_vec(), "infinity"),
            (oid::DATE, i32::MIN.to_be_bytes().to_vec(), "-infinity"),
        ] {
            assert_eq!(
                value_to_bson(type_oid, &bytes),
                Ok(Bson::String(text.into()))
            );
        }
        // The latest date PostgreSQL allows does not overflow.
        assert!(value_to_bson(oid::DATE, &(i32::MAX - 1).to_be_bytes()).is_ok());
    }

    #[test]
    fn times_and_intervals_are_iso_strings() {
        assert_eq!(
            value_to_bson(oid::TIME, &3_723_250_000i64.to_be_bytes()),
            Ok(Bson::String("01:02:03.25".into()))
        );
        let mut timetz = 3_600_000_000i64.to_be_bytes().to_vec();
        timetz.extend((-7200i32).to_be_bytes());
        assert_eq!(
            value_to_bson(oid::TIMETZ, &timetz),
            Ok(Bson::String("01:00:00+02:00".into()))
        );
        let mut interval = 3_723_500_000i64.to_be_bytes().to_vec();
        interval.extend(3i32.to_be_bytes());
        interval.extend(14i32.to_be_bytes());
        assert_eq!(
            value_to_bson(oid::INTERVAL, &interval),
            Ok(Bson::String("P1Y2M3DT1H2M3.5S".into()))
        );
    }

    #[test]
    fn json_becomes_documents_in_key_order() {
        let text = r#"{"z": 1, "a": [true, null, 2.5, "s", 5000000000], "$oid": {"n": 18446744073709551615}}"#;
        let mut jsonb = vec![1u8];
        jsonb.extend(text.as_bytes());
        let v = value_to_bson(oid::JSONB, &jsonb).unwrap();
        let expected = Bson::Document(mongodb::bson::doc! {
            "z": 1i32,
            "a": [true, Bson::Null, 2.5, "s", 5_000_000_000i64],
            "$oid": {"n": dec("18446744073709551615")},
        });
        assert_eq!(v, expected);
        let keys: Vec<&String> = v.as_document().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "$oid"]);
        assert_eq!(
            value_to_bson(oid::JSON, b"[1, {\"k\": \"v\"}]"),
            Ok(Bson::Array(vec![
                Bson::Int32(1),
                Bson::Document(mongodb::bson::doc! {"k": "v"})
            ]))
        );
        assert_eq!(
            value_to_bson(oid::JSON, b"\"s\""),
            Ok(Bson::String("s".into()))
        );
        assert_eq!(
            value_to_bson(oid::JSON, br#"{"k": 1, "k": 2}"#),
            Ok(Bson::Document(mongodb::bson::doc! {"k": 2i32}))
        );
        assert!(value_to_bson(oid::JSON, b"{\"k\": ").is_err());
        assert!(value_to_bson(oid::JSON, b"1e400").is_err());
        assert_eq!(
            value_to_bson(oid::JSON, b"123456789012345678901234567890"),
            Ok(Bson::Double(1.2345678901234568e29))
        );
        assert!(value_to_bson(oid::JSON, b"1 2").is_err());
        assert!(value_to_bson(oid::JSONB, b"\x02{}").is_err());
    }

    /// A PostgreSQL array in binary send format: `dims` lengths, `None` for NULL elements.
    fn array(element: u32, dims: &[i32], items: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((dims.len() as i32).to_be_bytes());
        b.extend(i32::from(items.iter().any(Option::is_none)).to_be_bytes());
        b.extend(element.to_be_bytes());
        for d in dims {
            b.extend(d.to_be_bytes());
            b.extend(1i32.to_be_bytes());
        }
        for item in items {
            match item {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(v);
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn arrays_nest_and_keep_element_types() {
        let int4 = |v: i32| Some(v.to_be_bytes().to_vec());
        let b = array(oid::INT4, &[2, 2], &[int4(1), None, int4(3), int4(4)]);
        assert_eq!(
            value_to_bson(INT4_ARRAY, &b),
            Ok(Bson::Array(vec![
                Bson::Array(vec![Bson::Int32(1), Bson::Null]),
                Bson::Array(vec![Bson::Int32(3), Bson::Int32(4)]),
            ]))
        );
        let b = array(oid::INT8, &[1], &[Some(1i64.to_be_bytes().to_vec())]);
        assert_eq!(
            value_to_bson(1016, &b),
            Ok(Bson::Array(vec![Bson::Int64(1)]))
        );
        let b = array(oid::TEXT, &[2], &[Some(b"a".to_vec()), Some(b"b".to_vec())]);
        assert_eq!(
            value_to_bson(1009, &b),
            Ok(Bson::Array(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            value_to_bson(INT4_ARRAY, &array(oid::INT4, &[], &[])),
            Ok(Bson::Array(vec![]))
        );
        // A numeric element that does not fit fails the whole value.
        let big = numeric(
            &[1, 2345, 6789, 123, 4567, 8901, 2345, 6789, 123, 4567],
            9,
            0,
            0,
        );
        assert!(value_to_bson(1231, &array(oid::NUMERIC, &[1], &[Some(big)])).is_err());
    }

    fn table(columns: Vec<Column>) -> TableSchema {
        TableSchema {
            name: TableName::new("public", "t"),
            columns,
        }
    }

    #[test]
    fn ids_are_the_key_value_or_a_document_of_key_columns() {
        let one = table(vec![col("id", oid::INT4, true), col("v", oid::TEXT, false)]);
        let row = Row(vec![bin(&7i32.to_be_bytes()), bin(b"x")]);
        let id = document_id(&one, &row).unwrap();
        assert_eq!(id, Bson::Int32(7));
        let fields = row_fields(&one, &row, &id).unwrap();
        assert_eq!(
            with_id(id, fields),
            mongodb::bson::doc! {"_id": 7, "id": 7, "v": "x"}
        );

        let two = table(vec![
            col("v", oid::TEXT, false),
            col("b", oid::TEXT, true),
            col("a", oid::INT8, true),
        ]);
        let row = Row(vec![Value::Unchanged, bin(b"k"), bin(&1i64.to_be_bytes())]);
        let id = document_id(&two, &row).unwrap();
        assert_eq!(
            id,
            Bson::Document(mongodb::bson::doc! {"b": "k", "a": 1i64})
        );
        // The unchanged column is left out, not written as null.
        assert_eq!(
            row_fields(&two, &row, &id).unwrap(),
            mongodb::bson::doc! {"b": "k", "a": 1i64}
        );
        let row = Row(vec![Value::Null, bin(b"k"), bin(&1i64.to_be_bytes())]);
        assert_eq!(
            row_fields(&two, &row, &id).unwrap().get("v"),
            Some(&Bson::Null)
        );
    }

    #[test]
    fn bad_values_are_poison_naming_table_column_and_key() {
        let t = table(vec![
            col("id", oid::INT4, true),
            col("amount", oid::NUMERIC, false),
        ]);
        let big = numeric(
            &[1, 2345, 6789, 123, 4567, 8901, 2345, 6789, 123, 4567],
            9,
            0,
            0,
        );
        let row = Row(vec![bin(&7i32.to_be_bytes()), bin(&big)]);
        let id = document_id(&t, &row).unwrap();
        let e = row_fields(&t, &row, &id).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Poison);
        for part in ["public.t", "amount", "_id 7", "Decimal128"] {
            assert!(e.message.contains(part), "{part} missing in {}", e.message);
        }
        let row = Row(vec![Value::Unchanged, Value::Null]);
        assert_eq!(document_id(&t, &row).unwrap_err().kind, ErrorKind::Poison);
        let short = Row(vec![bin(&7i32.to_be_bytes())]);
        assert_eq!(
            row_fields(&t, &short, &id).unwrap_err().kind,
            ErrorKind::Fatal
        );
    }

    #[test]
    fn field_names_that_are_paths_are_spotted() {
        assert!(plain_field_name("amount"));
        assert!(!plain_field_name("a.b"));
        assert!(!plain_field_name("$x"));
        assert!(plain_field_name("x$"));
    }
}
