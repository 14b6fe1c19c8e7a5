//! The checker's MongoDB reader: a table's collection read once and held in key order, every
//! document put back in the canonical form of the PostgreSQL row the sink wrote it from, and
//! look-ups by `_id` for re-checks.
//!
//! A document is read as the inverse of [`crate::mapping`], by the source column's type: a field
//! the document lacks is [`tag::ABSENT`] (never equal to a value, not even NULL), and a field of
//! a BSON type the sink never writes for that column type is encoded as an opaque value holding
//! its extended JSON, so that the row differs in that column instead of failing the check.
//!
//! The key of a document is read from its `_id` (the sink builds it from the key columns), the
//! key columns' values from their own fields. A document whose `_id` is not a key of the table
//! as the sink writes it (another BSON type, a composite `_id` with other fields) is kept as an
//! extra row sorted after every key; see [`MongoTableSide`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cutover_core::datum::{self, oid, Datum};
use cutover_core::verify::canonical::{self, tag};
use cutover_core::verify::{
    key_columns, keys, orderable_key_type, rendered, Bound, CanonRow, KeyBound, Precision,
    RangeScan, ScanLimits, SortedRows, TableSide,
};
use cutover_core::{ConnectorError, Result, Row, TableSchema, Value};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Decimal128, Document, RawDocumentBuf};
use mongodb::{Collection, Cursor};

use crate::error::classify;
use crate::mapping::document_id;
use crate::{check_collection_name, check_database_name, clean_name_part, MongoSinkOptions};

/// `_id`s asked for per `find` when rows are fetched by key.
const FETCH_BATCH: usize = 1000;

const MILLIS_PER_DAY: i64 = 86_400_000;
/// 2000-01-01 (PostgreSQL's epoch) in milliseconds after the Unix epoch.
const PG_EPOCH_MILLIS: i64 = 946_684_800_000;

/// A row's sort key and its key columns' binary values.
type SeenKey = (Box<[u8]>, Box<[u8]>);

/// One table's collection on a MongoDB target, as the checker reads it.
///
/// Contract: [`MongoTableSide::open`] reads every document once and keeps it in canonical form
/// (memory grows with the collection); [`TableSide::scan`] serves key ranges from that copy and
/// [`TableSide::fetch`] reads documents again by `_id`, so re-checks see the collection as it is
/// now. Values compare at [`MongoTableSide::precision`]. A document whose `_id` is not a key of
/// the table sorts after every key (as an extra row) and carries, as its key values, those of
/// the greatest proper key in the collection, so ranges split at it read the same source rows.
pub struct MongoTableSide {
    collection: Collection<RawDocumentBuf>,
    table: Arc<TableSchema>,
    keys: Arc<[usize]>,
    rows: SortedRows,
    /// Documents whose `_id` is not a key of the table: their `_id`, by the sort key given them.
    foreign: HashMap<Box<[u8]>, Bson>,
    /// The key values given to those documents.
    foreign_key_raw: Vec<u8>,
    /// `database.collection on host:port`, for messages (never the url).
    place: String,
}

impl MongoTableSide {
    /// Reads every document of the table's collection (named by the options' collection
    /// template, as the sink names it) once and keeps them as canonical rows. Fails on a table
    /// without a key or with a key type the checker cannot order, and on a server it cannot
    /// reach or read (errors name the server by host and port, never the url).
    pub async fn open(
        options: &MongoSinkOptions,
        table: Arc<TableSchema>,
    ) -> Result<MongoTableSide> {
        let keys = key_columns(&table);
        if keys.is_empty() {
            return Err(ConnectorError::fatal(format!(
                "table {} has no primary key or replica identity index, so its documents cannot be matched by key",
                table.name
            ))
            .with_hint("add a primary key (see cutover check)"));
        }
        for &k in keys.iter() {
            let c = &table.columns[k];
            if !orderable_key_type(c.type_oid) {
                return Err(ConnectorError::fatal(format!(
                    "key column {} of {} has type {}, which the checker cannot order yet",
                    c.name, table.name, c.type_name
                ))
                .with_hint("leave the table out with --table, or compare it with another tool"));
            }
        }
        check_database_name(&options.database)
            .map_err(|e| ConnectorError::fatal(format!("MongoDB sink {}: {e}", options.name)))?;
        let coll = options
            .collection
            .render(&options.pipeline, &table.name, &clean_name_part);
        check_collection_name(&coll).map_err(|e| {
            ConnectorError::fatal(format!(
                "MongoDB sink {}: table {} cannot be checked: {e}",
                options.name, table.name
            ))
        })?;
        let (client, servers, _) = crate::sink::open_client(options).await?;
        let collection = client
            .database(&options.database)
            .collection::<RawDocumentBuf>(&coll);
        let place = format!("{}.{coll} on {servers}", options.database);
        let ctx = format!(
            "MongoDB sink {}: cannot read collection {place}",
            options.name
        );
        let mut cursor = collection
            .find(doc! {})
            .await
            .map_err(|e| classify(e, &ctx))?;
        let mut rows = SortedRows::new();
        let mut strays = Vec::new();
        // The greatest proper key seen: its sort key and binary values.
        let mut greatest: Option<SeenKey> = None;
        while let Some(doc) = next_document(&mut cursor, &ctx).await? {
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            match id_key(&table, &keys, &id) {
                // Two documents cannot have one key (MongoDB compares `_id`s by value), but
                // if they did, the second is not lost: it is kept as a stray.
                Some((sort_key, key_raw)) if rows.get(&sort_key).is_none() => {
                    let (bytes, ends) = canon_columns(&table, &doc);
                    let row = CanonRow::new(sort_key, bytes, ends, keys.clone(), key_raw);
                    if greatest.as_ref().is_none_or(|(k, _)| *k < row.sort_key) {
                        greatest = Some((row.sort_key.clone(), row.key_raw.clone()));
                    }
                    rows.insert(row);
                }
                _ => strays.push((id, doc)),
            }
        }
        let foreign_key_raw = match greatest {
            Some((_, key_raw)) => key_raw.into_vec(),
            None => (0..keys.len())
                .flat_map(|_| (-1i32).to_be_bytes())
                .collect(),
        };
        let mut foreign = HashMap::new();
        for (id, doc) in strays {
            let sort_key = foreign_sort_key(keys.len(), &id);
            let (bytes, ends) = canon_columns(&table, &doc);
            rows.insert(CanonRow::new(
                sort_key.clone(),
                bytes,
                ends,
                keys.clone(),
                foreign_key_raw.clone(),
            ));
            foreign.insert(sort_key.into_boxed_slice(), id);
        }
        if !foreign.is_empty() {
            tracing::warn!(
                table = %table.name,
                collection = %place,
                documents = foreign.len(),
                "documents whose _id is not a key of the table are reported as extra rows"
            );
        }
        Ok(MongoTableSide {
            collection,
            table,
            keys,
            rows,
            foreign,
            foreign_key_raw,
            place,
        })
    }

    /// The precision a MongoDB target keeps (its Date holds milliseconds): the source side
    /// must be read with it.
    pub fn precision() -> Precision {
        Precision {
            timestamp_millis: true,
            ..Precision::default()
        }
    }

    /// The schema rows are read in (the source's).
    pub fn table(&self) -> &Arc<TableSchema> {
        &self.table
    }

    /// Documents read by [`MongoTableSide::open`].
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the collection held no document when it was read.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `_id` the sink gives the row with this key; `None` when no document can have it.
    fn id_of(&self, key: &KeyBound) -> Option<Bson> {
        if let Some(id) = self.foreign.get(&key.sort_key) {
            return Some(id.clone());
        }
        if key.values.len() != self.keys.len() {
            return None;
        }
        let mut row = Row(vec![Value::Null; self.table.columns.len()]);
        for (&k, value) in self.keys.iter().zip(&key.values) {
            if let Some(b) = value {
                row.0[k] = Value::Binary(b.clone());
            }
        }
        document_id(&self.table, &row).ok()
    }

    /// A document read by `_id`, in canonical form (as [`MongoTableSide::open`] reads it).
    fn canon(&self, doc: &Document) -> CanonRow {
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        let foreign_key = foreign_sort_key(self.keys.len(), &id);
        let (sort_key, key_raw) = match id_key(&self.table, &self.keys, &id) {
            Some(key) if !self.foreign.contains_key(&foreign_key[..]) => key,
            _ => (foreign_key, self.foreign_key_raw.clone()),
        };
        let (bytes, ends) = canon_columns(&self.table, doc);
        CanonRow::new(sort_key, bytes, ends, self.keys.clone(), key_raw)
    }
}

#[async_trait]
impl TableSide for MongoTableSide {
    /// Shuts the client down here rather than in the task its drop would spawn, which could
    /// still be running when `cutover verify` exits.
    async fn close(self: Box<Self>) {
        let client = self.collection.client().clone();
        drop(self);
        client.shutdown().await;
    }

    async fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> Result<RangeScan> {
        Ok(self.rows.scan(low, high, limits))
    }

    async fn fetch(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<CanonRow>>> {
        let ctx = format!(
            "cannot read documents of {} by _id from {}",
            self.table.name, self.place
        );
        let ids: Vec<Bson> = keys.iter().filter_map(|k| self.id_of(k)).collect();
        let mut found: HashMap<Box<[u8]>, CanonRow> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(FETCH_BATCH) {
            let mut cursor = self
                .collection
                .find(doc! {"_id": {"$in": Bson::Array(chunk.to_vec())}})
                .await
                .map_err(|e| classify(e, &ctx))?;
            while let Some(doc) = next_document(&mut cursor, &ctx).await? {
                let row = self.canon(&doc);
                found.insert(row.sort_key.clone(), row);
            }
        }
        Ok(keys
            .iter()
            .map(|k| found.get(&k.sort_key).cloned())
            .collect())
    }
}

/// The next document of a cursor, read from its raw bytes (a `Document` read through serde
/// would take keys such as `$oid` in JSON values for extended JSON).
async fn next_document(cursor: &mut Cursor<RawDocumentBuf>, ctx: &str) -> Result<Option<Document>> {
    if !cursor.advance().await.map_err(|e| classify(e, ctx))? {
        return Ok(None);
    }
    Document::try_from(cursor.current())
        .map(Some)
        .map_err(|e| ConnectorError::fatal(format!("{ctx}: a document is not valid BSON: {e}")))
}

/// The sort key of a document whose `_id` is not a key: after every key (the sort key of NULL
/// in every key column, which a source key never is, then the `_id`'s extended JSON, so that
/// it is unique).
fn foreign_sort_key(keys: usize, id: &Bson) -> Vec<u8> {
    let mut sort_key = vec![0xFF; keys];
    sort_key.extend_from_slice(extended_json(id).as_bytes());
    sort_key
}

fn extended_json(v: &Bson) -> String {
    v.clone().into_canonical_extjson().to_string()
}

/// The sort key and key columns' binary values of a document's `_id`; `None` when the `_id`
/// is not one the sink writes for a key of this table.
fn id_key(table: &TableSchema, keys: &[usize], id: &Bson) -> Option<(Vec<u8>, Vec<u8>)> {
    let parts: Vec<&Bson> = if keys.len() == 1 {
        vec![id]
    } else {
        // An embedded document of exactly the key columns, in column order.
        let Bson::Document(d) = id else {
            return None;
        };
        if d.len() != keys.len() {
            return None;
        }
        let mut parts = Vec::with_capacity(keys.len());
        for ((name, value), &k) in d.iter().zip(keys) {
            if *name != table.columns[k].name {
                return None;
            }
            parts.push(value);
        }
        parts
    };
    let mut sort_key = Vec::with_capacity(16 * keys.len());
    let mut key_raw = Vec::with_capacity(16 * keys.len());
    for (&k, value) in keys.iter().zip(parts) {
        let type_oid = table.columns[k].type_oid;
        // A source key is never NULL: a null in `_id` makes it a stray.
        let datum = scalar_datum(type_oid, value)
            .ok()
            .filter(|d| *d != Datum::Null)?;
        canonical::push_sort_key(&mut sort_key, &datum).ok()?;
        let b = keys::binary_key_value(type_oid, &datum)?;
        key_raw.extend_from_slice(&(b.len() as i32).to_be_bytes());
        key_raw.extend_from_slice(&b);
    }
    Some((sort_key, key_raw))
}

/// The canonical encoding of every column of `table` read from a document's fields.
fn canon_columns(table: &TableSchema, doc: &Document) -> (Vec<u8>, Vec<u32>) {
    let precision = MongoTableSide::precision();
    let mut bytes = Vec::with_capacity(16 * table.columns.len());
    let mut ends = Vec::with_capacity(table.columns.len());
    let mut one = Vec::new();
    for column in &table.columns {
        match doc.get(&column.name) {
            None => bytes.push(tag::ABSENT),
            Some(value) => {
                one.clear();
                if push_bson(&mut one, column.type_oid, value, precision).is_ok() {
                    bytes.extend_from_slice(&one);
                } else {
                    // Not a value the sink writes for this type: different from any source value.
                    let text = extended_json(value);
                    canonical::push_value(&mut bytes, &Datum::Opaque(text.as_bytes()), precision);
                }
            }
        }
        ends.push(bytes.len() as u32);
    }
    (bytes, ends)
}

/// A value of a BSON type the sink does not write for the column's type.
#[derive(Debug)]
struct WrongType;

/// Pushes the canonical encoding of a field, read as a value of the source type `type_oid`.
fn push_bson(
    out: &mut Vec<u8>,
    type_oid: u32,
    value: &Bson,
    precision: Precision,
) -> std::result::Result<(), WrongType> {
    if *value == Bson::Null {
        canonical::push_value(out, &Datum::Null, precision);
        return Ok(());
    }
    if let Some(element) = datum::array_element_oid(type_oid) {
        let Bson::Array(items) = value else {
            return Err(WrongType);
        };
        out.push(tag::ARRAY);
        out.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            // Inner levels of a multi-dimensional array are arrays of the same type. (An array
            // inside a json[] is read as a JSON value: the document cannot tell them apart.)
            let json = matches!(element, oid::JSON | oid::JSONB);
            let t = if matches!(item, Bson::Array(_)) && !json {
                type_oid
            } else {
                element
            };
            push_bson(out, t, item, precision)?;
        }
        return Ok(());
    }
    match (type_oid, value) {
        (oid::JSON | oid::JSONB, v) => {
            let text = canonical::canonical_json(&bson_to_json(v)?);
            canonical::push_value(out, &Datum::Json(&text), precision);
        }
        (t, Bson::String(s)) if string_value(t, s) => {
            rendered::push_rendered(out, t, s, precision).map_err(|_| WrongType)?
        }
        (t, v) => canonical::push_value(out, &scalar_datum(t, v)?, precision),
    }
    Ok(())
}

/// Types the sink writes as their text (a BSON string read back as the same text).
fn text_type(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::CHAR
            | oid::XML
            | oid::INET
            | oid::CIDR
            | oid::MACADDR
    )
}

/// Whether the sink writes values of this type as this string.
fn string_value(type_oid: u32, s: &str) -> bool {
    match type_oid {
        t if text_type(t) => true,
        oid::TIME | oid::TIMETZ | oid::INTERVAL => true,
        oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ => s == "infinity" || s == "-infinity",
        _ => false,
    }
}

/// The typed value of a field of a scalar column (every type but JSON and arrays; strings only
/// for the text types, `time` and infinite dates and timestamps).
fn scalar_datum(type_oid: u32, value: &Bson) -> std::result::Result<Datum<'_>, WrongType> {
    let int = |v: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&v) {
            Ok(Datum::Int(v))
        } else {
            Err(WrongType)
        }
    };
    let whole = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    Ok(match (type_oid, value) {
        (_, Bson::Null) => Datum::Null,
        (oid::BOOL, Bson::Boolean(b)) => Datum::Bool(*b),
        (oid::INT2, v) => int(whole(v).ok_or(WrongType)?, i16::MIN.into(), i16::MAX.into())?,
        (oid::INT4, v) => int(whole(v).ok_or(WrongType)?, i32::MIN.into(), i32::MAX.into())?,
        (oid::INT8, v) => Datum::Int(whole(v).ok_or(WrongType)?),
        (oid::OID, v) => int(whole(v).ok_or(WrongType)?, 0, u32::MAX.into())?,
        (oid::FLOAT4, Bson::Double(d)) => {
            let f = *d as f32;
            // Exactly a float4 widened, or another value than the sink wrote.
            if !d.is_nan() && f64::from(f) != *d {
                return Err(WrongType);
            }
            Datum::Float4(f)
        }
        (oid::FLOAT8, Bson::Double(d)) => Datum::Float8(*d),
        (oid::NUMERIC, Bson::Decimal128(d)) => Datum::Numeric(decimal_text(d)),
        (oid::MONEY, Bson::Decimal128(d)) => Datum::Money(money_units(d).ok_or(WrongType)?),
        (t, Bson::String(s)) if text_type(t) => Datum::Text(Cow::Borrowed(s)),
        (oid::TIME, Bson::String(s)) => Datum::Time(rendered::parse_time(s).ok_or(WrongType)?),
        (
            oid::BYTEA,
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes,
            }),
        ) => Datum::Bytes(bytes),
        (
            oid::UUID,
            Bson::Binary(Binary {
                subtype: BinarySubtype::Uuid,
                bytes,
            }),
        ) => Datum::Uuid(bytes[..].try_into().map_err(|_| WrongType)?),
        (oid::DATE, Bson::DateTime(at)) => {
            let millis = at.timestamp_millis();
            if millis.rem_euclid(MILLIS_PER_DAY) != 0 {
                return Err(WrongType);
            }
            let days = (millis - PG_EPOCH_MILLIS).div_euclid(MILLIS_PER_DAY);
            match i32::try_from(days) {
                Ok(d) if d != i32::MAX && d != i32::MIN => Datum::Date(d),
                _ => return Err(WrongType),
            }
        }
        (oid::TIMESTAMP | oid::TIMESTAMPTZ, Bson::DateTime(at)) => {
            let micros = at
                .timestamp_millis()
                .checked_mul(1000)
                .and_then(|m| m.checked_sub(PG_EPOCH_MILLIS * 1000))
                .ok_or(WrongType)?;
            if type_oid == oid::TIMESTAMP {
                Datum::Timestamp(micros)
            } else {
                Datum::TimestampTz(micros)
            }
        }
        (oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ, Bson::String(s)) => {
            let future = match s.as_str() {
                "infinity" => true,
                "-infinity" => false,
                _ => return Err(WrongType),
            };
            match (type_oid, future) {
                (oid::DATE, true) => Datum::Date(i32::MAX),
                (oid::DATE, false) => Datum::Date(i32::MIN),
                (oid::TIMESTAMP, true) => Datum::Timestamp(i64::MAX),
                (oid::TIMESTAMP, false) => Datum::Timestamp(i64::MIN),
                (_, true) => Datum::TimestampTz(i64::MAX),
                (_, false) => Datum::TimestampTz(i64::MIN),
            }
        }
        (
            t,
            Bson::Binary(Binary {
                subtype: BinarySubtype::UserDefined(0x80),
                bytes,
            }),
        ) if opaque_type(t) => Datum::Opaque(bytes),
        _ => return Err(WrongType),
    })
}

/// Whether values of this type have no typed decoding (the sink writes their binary send
/// format as is).
fn opaque_type(type_oid: u32) -> bool {
    // Every typed decoding refuses an empty value, but for bytea and the text types.
    matches!(datum::decode(type_oid, &[]), Ok(Datum::Opaque(_)))
}

/// A JSON column's BSON value as the JSON value it was written from.
fn bson_to_json(value: &Bson) -> std::result::Result<serde_json::Value, WrongType> {
    use serde_json::Value as J;
    Ok(match value {
        Bson::Null => J::Null,
        Bson::Boolean(b) => J::Bool(*b),
        Bson::Int32(i) => J::from(*i),
        Bson::Int64(i) => J::from(*i),
        Bson::Double(d) => serde_json::Number::from_f64(*d)
            .map(J::Number)
            .ok_or(WrongType)?,
        // Integers beyond 64-bit signed (up to 2^64 - 1) are written as Decimal128.
        Bson::Decimal128(d) => {
            let text = decimal_text(d);
            if let Ok(u) = text.parse::<u64>() {
                J::from(u)
            } else if let Ok(i) = text.parse::<i64>() {
                J::from(i)
            } else {
                let f: f64 = text.parse().map_err(|_| WrongType)?;
                serde_json::Number::from_f64(f)
                    .map(J::Number)
                    .ok_or(WrongType)?
            }
        }
        Bson::String(s) => J::String(s.clone()),
        Bson::Array(items) => J::Array(
            items
                .iter()
                .map(bson_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Bson::Document(d) => J::Object(
            d.iter()
                .map(|(k, v)| Ok((k.clone(), bson_to_json(v)?)))
                .collect::<std::result::Result<_, WrongType>>()?,
        ),
        _ => return Err(WrongType),
    })
}

/// A finite Decimal128: sign, exponent and coefficient (`-1250E-2` is `(true, -2, 1250)`);
/// `None` for NaN and the infinities. Read from the bits (IEEE 754 decimal128 with a binary
/// integer significand), never from the scientific notation of its display.
fn decimal_parts(d: &Decimal128) -> Option<(bool, i64, u128)> {
    const MAX_COEFFICIENT: u128 = 10u128.pow(34) - 1;
    let bits = u128::from_le_bytes(d.bytes());
    let negative = bits >> 127 == 1;
    if (bits >> 122) & 0x1E == 0x1E {
        return None;
    }
    let (exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        // The significand would be 2^113 or more: above the largest, so it reads as zero.
        (((bits >> 111) & 0x3FFF) as i64, 0)
    } else {
        let c = bits & ((1u128 << 113) - 1);
        (
            ((bits >> 113) & 0x3FFF) as i64,
            if c > MAX_COEFFICIENT { 0 } else { c },
        )
    };
    Some((negative, exponent - 6176, coefficient))
}

/// A Decimal128 as PostgreSQL writes the numeric it holds: plain digits with as many fraction
/// digits as the exponent says (`12.50` for 1250E-2, `0.0005` for 5E-4, `1000` for 1E+3),
/// `NaN`, `Infinity`, `-Infinity`.
fn decimal_text(d: &Decimal128) -> String {
    let Some((negative, exponent, coefficient)) = decimal_parts(d) else {
        let bits = u128::from_le_bytes(d.bytes());
        return match ((bits >> 122) & 0x1F, bits >> 127) {
            (0x1F, _) => "NaN",
            (_, 1) => "-Infinity",
            _ => "Infinity",
        }
        .into();
    };
    let digits = coefficient.to_string();
    let mut s = String::with_capacity(digits.len() + exponent.unsigned_abs() as usize + 3);
    // PostgreSQL's numeric has no negative zero.
    if negative && coefficient != 0 {
        s.push('-');
    }
    if exponent >= 0 {
        s.push_str(&digits);
        if coefficient != 0 {
            s.extend(std::iter::repeat_n('0', exponent as usize));
        }
    } else {
        let scale = exponent.unsigned_abs() as usize;
        if digits.len() <= scale {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', scale - digits.len()));
            s.push_str(&digits);
        } else {
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            s.push_str(whole);
            s.push('.');
            s.push_str(fraction);
        }
    }
    s
}

/// A Decimal128 amount as money's minor units (hundredths); `None` when it is not a whole
/// number of hundredths or does not fit.
fn money_units(d: &Decimal128) -> Option<i64> {
    let (negative, exponent, coefficient) = decimal_parts(d)?;
    let shift = exponent + 2;
    let magnitude: u128 = if coefficient == 0 {
        0
    } else if shift >= 0 {
        coefficient.checked_mul(10u128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let divisor = 10u128.checked_pow(u32::try_from(-shift).ok()?)?;
        if coefficient % divisor != 0 {
            return None;
        }
        coefficient / divisor
    };
    let signed = i128::try_from(magnitude).ok()?;
    i64::try_from(if negative { -signed } else { signed }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal128 {
        s.parse().unwrap()
    }

    #[test]
    fn decimals_read_back_as_postgres_writes_numerics() {
        for text in [
            "12.50",
            "0.0005",
            "-3",
            "0",
            "0.00",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.00000005",
            "-0.000000000123",
            "1234567890123456789012345678901234",
            "123456789012345678901234.5678901234",
            "100",
            "-12.34",
        ] {
            assert_eq!(decimal_text(&dec(text)), text, "{}", dec(text));
        }
        // Forms the sink does not write read as the number they denote.
        assert_eq!(decimal_text(&dec("1.250E+1")), "12.50");
        assert_eq!(decimal_text(&dec("5E-4")), "0.0005");
        assert_eq!(decimal_text(&dec("1E+3")), "1000");
        assert_eq!(decimal_text(&dec("-0.00")), "0.00");
        // 41 digits: the parser drops trailing zeros to fit 34 (a positive exponent).
        let big = format!("1{}", "0".repeat(40));
        assert_eq!(decimal_text(&dec(&big)), big);
    }

    #[test]
    fn decimal_keys_become_postgres_binary() {
        for text in [
            "12.50",
            "0.0005",
            "-3",
            "0.00",
            "NaN",
            "1000",
            "-0.000000000123",
        ] {
            let b = keys::binary_key_value(oid::NUMERIC, &Datum::Numeric(decimal_text(&dec(text))));
            assert_eq!(
                datum::decode(oid::NUMERIC, &b.unwrap()),
                Ok(Datum::Numeric(text.to_string())),
                "{text}"
            );
        }
    }

    #[test]
    fn money_is_read_in_exact_hundredths() {
        for (text, units) in [
            ("-12.34", Some(-1234)),
            ("12.3", Some(1230)),
            ("1E+2", Some(10_000)),
            ("0.00", Some(0)),
            ("-92233720368547758.08", Some(i64::MIN)),
            ("92233720368547758.07", Some(i64::MAX)),
            ("92233720368547758.08", None),
            ("1.234", None),
            ("1.230", Some(123)),
            ("NaN", None),
            ("-Infinity", None),
        ] {
            assert_eq!(money_units(&dec(text)), units, "{text}");
        }
    }

    #[test]
    fn wrong_types_are_refused_not_misread() {
        let f4 = |d: f64| scalar_datum(oid::FLOAT4, &Bson::Double(d)).is_ok();
        assert!(f4(f64::from(1.1f32)) && f4(f64::NAN) && f4(f64::INFINITY));
        assert!(!f4(1.1));
        assert!(scalar_datum(oid::INT2, &Bson::Int32(40_000)).is_err());
        assert!(scalar_datum(oid::INT4, &Bson::String("5".into())).is_err());
        assert!(scalar_datum(oid::NUMERIC, &Bson::Double(1.5)).is_err());
        let noon = mongodb::bson::DateTime::from_millis(PG_EPOCH_MILLIS + MILLIS_PER_DAY / 2);
        assert!(scalar_datum(oid::DATE, &Bson::DateTime(noon)).is_err());
        assert!(scalar_datum(oid::DATE, &Bson::String("2024-01-01".into())).is_err());
        assert!(opaque_type(99_999) && !opaque_type(oid::BYTEA) && !opaque_type(oid::TEXT));
        assert!(!opaque_type(1007));
        assert!(bson_to_json(&Bson::Double(f64::NAN)).is_err());
    }
}
