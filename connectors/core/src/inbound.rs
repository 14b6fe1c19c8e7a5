//! Change messages read back into changes, for `cutover apply`: the cutover envelope and
//! Debezium's PostgreSQL connector envelope, with schemas on (`{"schema", "payload"}`) or off.
//!
//! [`read`] parses one message into an [`Inbound`] (its table, what happened, the row or key as
//! JSON, and Debezium's field schemas when the message carries them); [`Inbound::change`] turns
//! it into a [`Change`] in a target table's column layout, encoding each value with
//! [`crate::encode`]. [`table_from_schema`] builds a table definition from Debezium's field
//! schemas, for targets that create missing tables.
//!
//! Every error is one sentence saying what the message lacked or held instead; the caller parks
//! the message with it.

use serde_json::{Map, Value as Json};

use crate::change::{Change, Row, Value};
use crate::datum::oid;
use crate::encode::{json_value, DecimalForm, JsonStyle, TimeUnit};
use crate::envelope::{EnvelopeFormat, DEBEZIUM_UNAVAILABLE};
use crate::schema::{Column, TableName, TableSchema};

/// What a message says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOp {
    /// A snapshot row, an insert or an update: the row as it now is. `unchanged` lists columns
    /// the source did not send (unchanged TOAST values): the target keeps what it has.
    Upsert {
        row: Map<String, Json>,
        unchanged: Vec<String>,
    },
    /// The row with this key is gone.
    Delete { key: Map<String, Json> },
    /// Every row of the table is gone.
    Truncate,
}

/// One Kafka Connect field schema (Debezium with `schemas.enable=true`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSchema {
    pub field: String,
    /// Connect type: `int32`, `int64`, `string`, `bytes`, `struct`, `array`, ...
    pub kind: String,
    /// Logical type name (`io.debezium.time.MicroTimestamp`, `org.apache.kafka.connect.data.Decimal`).
    pub logical: Option<String>,
    /// `parameters.scale` of a decimal.
    pub scale: Option<u32>,
    /// `parameters."connect.decimal.precision"` of a decimal.
    pub precision: Option<u32>,
    pub optional: bool,
    /// The element schema of an array.
    pub items: Option<Box<FieldSchema>>,
}

/// One change message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The table the change belongs to, as the message names it.
    pub table: TableName,
    pub op: InboundOp,
    /// The row's field schemas, when the message carries them.
    pub fields: Option<Vec<FieldSchema>>,
    /// The key's field names, when the message carries a key schema or a key object.
    pub key_fields: Vec<String>,
    /// The producer sends a truncate to every partition of the table's topic, ahead of what
    /// follows it there (cutover's Kafka sink: its own envelope, or Debezium's with
    /// `source.version` "cutover-..."). Debezium itself sends it to one partition.
    pub truncate_everywhere: bool,
}

/// How `apply` reads values of one envelope format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    pub format: EnvelopeFormat,
    /// How Debezium wrote decimals without a schema saying so (`decimal.handling.mode`).
    pub decimal: DecimalHandling,
    /// How Debezium wrote times and timestamps without a schema saying so
    /// (`time.precision.mode`).
    pub time_precision: TimePrecision,
    /// The value Debezium writes for a column it did not receive (an unchanged TOAST value):
    /// its `unavailable.value.placeholder`.
    pub placeholder: String,
}

impl ReadOptions {
    /// The options of `format` with Debezium's defaults.
    pub fn of(format: EnvelopeFormat) -> ReadOptions {
        ReadOptions {
            format,
            decimal: DecimalHandling::default(),
            time_precision: TimePrecision::default(),
            placeholder: DEBEZIUM_UNAVAILABLE.to_string(),
        }
    }
}

/// Debezium's `time.precision.mode`, for messages without schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecision {
    /// `time` and `timestamp` of precision 0-3 in milliseconds, others in microseconds.
    #[default]
    Adaptive,
    /// `time` always in microseconds; `timestamp` as in `adaptive`.
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's own types: `time` and `timestamp` in milliseconds.
    Connect,
}

/// Debezium's `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecimalHandling {
    /// Base64 of the unscaled integer; the scale is the column's (or the schema's).
    #[default]
    Precise,
    /// A decimal string.
    String,
    /// A JSON number.
    Double,
}

fn object<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>, String> {
    v.as_object()
        .ok_or_else(|| format!("expected {what} to be a JSON object"))
}

/// The source transaction a message belongs to, as text that differs between transactions:
/// the cutover envelope's `lsn` (its commit position), Debezium's `source.txId` (or
/// `source.lsn`). `None` when the message does not say.
pub fn transaction_of(format: EnvelopeFormat, payload: &[u8]) -> Option<String> {
    let doc: Json = serde_json::from_slice(payload).ok()?;
    let text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match format {
        EnvelopeFormat::Cutover => doc.get("lsn").and_then(text),
        EnvelopeFormat::Debezium => {
            let env = match doc.get("payload") {
                Some(p) if doc.get("schema").is_some() => p,
                _ => &doc,
            };
            let source = env.get("source")?;
            source
                .get("txId")
                .and_then(text)
                .or_else(|| source.get("lsn").and_then(text))
        }
    }
}

/// Parses one message: `key` and `payload` as they came from Kafka. `Ok(None)` for a message
/// that changes nothing: a tombstone (no payload) or a Debezium transaction or heartbeat
/// message.
pub fn read(
    options: &ReadOptions,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Option<Inbound>, String> {
    let Some(payload) = payload else {
        return Ok(None);
    };
    let doc: Json =
        serde_json::from_slice(payload).map_err(|e| format!("the message is not JSON: {e}"))?;
    let key: Option<Json> = match key {
        Some(k) if !k.is_empty() => Some(
            serde_json::from_slice(k).map_err(|e| format!("the message key is not JSON: {e}"))?,
        ),
        _ => None,
    };
    match options.format {
        EnvelopeFormat::Cutover => read_cutover(&doc).map(Some),
        EnvelopeFormat::Debezium => read_debezium(&doc, key.as_ref(), &options.placeholder),
    }
}

/// Whether `v` is Debezium's placeholder for a value it did not receive, in the shape it
/// gives that column's type: the text itself (text, json, numeric as string, ...), its bytes
/// in base64 (`bytea`), a one-element array of it (arrays), or a map from it to itself
/// (`hstore`).
fn is_placeholder(v: &Json, placeholder: &str) -> bool {
    use base64::Engine as _;
    match v {
        Json::String(s) => {
            s == placeholder || *s == base64::engine::general_purpose::STANDARD.encode(placeholder)
        }
        Json::Array(items) => items.len() == 1 && items[0].as_str() == Some(placeholder),
        Json::Object(map) => {
            map.len() == 1 && map.get(placeholder).and_then(Json::as_str) == Some(placeholder)
        }
        _ => false,
    }
}

fn read_cutover(doc: &Json) -> Result<Inbound, String> {
    let doc = object(doc, "the message")?;
    let op = doc
        .get("op")
        .and_then(Json::as_str)
        .ok_or("the message has no \"op\"")?;
    let table = doc
        .get("table")
        .and_then(Json::as_str)
        .ok_or("the message has no \"table\"")?;
    let (schema, name) = table
        .split_once('.')
        .ok_or_else(|| format!("\"table\" is {table:?}, expected schema.table"))?;
    let table = TableName::new(schema, name);
    let key = match doc.get("key") {
        Some(Json::Object(k)) => Some(k.clone()),
        _ => None,
    };
    let op = match op {
        "snapshot" | "insert" | "update" => {
            let row = object(
                doc.get("row").ok_or("the message has no \"row\"")?,
                "\"row\"",
            )?
            .clone();
            let unchanged = match doc.get("unchanged") {
                Some(Json::Array(cols)) => cols
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("\"unchanged\" is not a list of column names")?,
                _ => Vec::new(),
            };
            InboundOp::Upsert { row, unchanged }
        }
        "delete" => InboundOp::Delete {
            key: key.clone().ok_or("the delete message has no \"key\"")?,
        },
        "truncate" => InboundOp::Truncate,
        other => {
            return Err(format!(
                "unknown op {other:?} (expected snapshot, insert, update, delete or truncate)"
            ))
        }
    };
    Ok(Inbound {
        table,
        op,
        fields: None,
        key_fields: key.map(|k| k.keys().cloned().collect()).unwrap_or_default(),
        truncate_everywhere: true,
    })
}

fn read_debezium(
    doc: &Json,
    key: Option<&Json>,
    placeholder: &str,
) -> Result<Option<Inbound>, String> {
    // Schemas on: {"schema": {...}, "payload": {...}}.
    let (envelope, schema) = match doc.get("payload") {
        Some(p) if doc.get("schema").is_some() => (p, doc.get("schema")),
        _ => (doc, None),
    };
    if envelope.is_null() {
        return Ok(None);
    }
    let env = object(envelope, "the message payload")?;
    let Some(op) = env.get("op").and_then(Json::as_str) else {
        // Transaction metadata and heartbeats carry no op.
        if env.contains_key("status") || env.contains_key("ts_ms") && !env.contains_key("source") {
            return Ok(None);
        }
        return Err("the message has no \"op\"".into());
    };
    let source = object(
        env.get("source").ok_or("the message has no \"source\"")?,
        "\"source\"",
    )?;
    let table = source
        .get("table")
        .and_then(Json::as_str)
        .ok_or("\"source\" has no \"table\"")?;
    // Databases without schemas (MySQL) go to `public`.
    let schema_name = source
        .get("schema")
        .and_then(Json::as_str)
        .unwrap_or("public");
    let (key_obj, key_schema) = match key {
        Some(k @ Json::Object(o)) if o.contains_key("payload") && o.contains_key("schema") => (
            o.get("payload").and_then(Json::as_object).cloned(),
            o.get("schema").or(Some(k)),
        ),
        Some(Json::Object(o)) => (Some(o.clone()), None),
        _ => (None, None),
    };
    let mut key_fields: Vec<String> = match key_schema.and_then(|s| s.get("fields")) {
        Some(Json::Array(fs)) => fs
            .iter()
            .filter_map(|f| f.get("field").and_then(Json::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if key_fields.is_empty() {
        key_fields = key_obj
            .as_ref()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
    }
    let fields = match schema {
        Some(s) => Some(envelope_fields(s)?),
        None => None,
    };
    let row_of = |name: &str| -> Result<Map<String, Json>, String> {
        match env.get(name) {
            Some(Json::Object(o)) => Ok(o.clone()),
            _ => Err(format!("the \"{}\" message has no \"{name}\" row", op)),
        }
    };
    let op = match op {
        "r" | "c" | "u" => {
            let row = row_of("after")?;
            let unchanged = row
                .iter()
                .filter(|(_, v)| is_placeholder(v, placeholder))
                .map(|(k, _)| k.clone())
                .collect();
            InboundOp::Upsert { row, unchanged }
        }
        "d" => {
            let key = match (key_obj, env.get("before")) {
                (Some(k), _) => k,
                (None, Some(Json::Object(before))) => before.clone(),
                _ => return Err("the delete message has no key and no \"before\" row".into()),
            };
            InboundOp::Delete { key }
        }
        "t" => InboundOp::Truncate,
        "m" => return Ok(None),
        other => return Err(format!("unknown op {other:?} (expected r, c, u, d or t)")),
    };
    Ok(Some(Inbound {
        table: TableName::new(schema_name, table),
        op,
        fields,
        key_fields,
        truncate_everywhere: source
            .get("version")
            .and_then(Json::as_str)
            .is_some_and(|v| v.starts_with("cutover-")),
    }))
}

/// The field schemas of the `after` (or `before`) struct of an envelope schema.
fn envelope_fields(schema: &Json) -> Result<Vec<FieldSchema>, String> {
    let fields = schema
        .get("fields")
        .and_then(Json::as_array)
        .ok_or("the message schema has no \"fields\"")?;
    let row = fields
        .iter()
        .find(|f| f.get("field").and_then(Json::as_str) == Some("after"))
        .or_else(|| {
            fields
                .iter()
                .find(|f| f.get("field").and_then(Json::as_str) == Some("before"))
        })
        .ok_or("the message schema has no \"after\" field")?;
    row.get("fields")
        .and_then(Json::as_array)
        .ok_or("the message schema's \"after\" has no \"fields\"")?
        .iter()
        .map(field_schema)
        .collect()
}

fn field_schema(f: &Json) -> Result<FieldSchema, String> {
    let kind = f
        .get("type")
        .and_then(Json::as_str)
        .ok_or("a field schema has no \"type\"")?
        .to_string();
    let param = |name: &str| {
        f.get("parameters")
            .and_then(|p| p.get(name))
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
            .and_then(|n| u32::try_from(n).ok())
    };
    Ok(FieldSchema {
        field: f
            .get("field")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        logical: f.get("name").and_then(Json::as_str).map(str::to_string),
        scale: param("scale"),
        precision: param("connect.decimal.precision"),
        optional: f.get("optional").and_then(Json::as_bool).unwrap_or(true),
        items: match f.get("items") {
            Some(items) => Some(Box::new(field_schema(items)?)),
            None => None,
        },
        kind,
    })
}

impl Inbound {
    /// The change in `table`'s column layout. A field the table lacks is an error; a column
    /// the message lacks is NULL when the column allows it (an error otherwise, and always for
    /// a key column).
    pub fn change(&self, table: &TableSchema, options: &ReadOptions) -> Result<Change, String> {
        match &self.op {
            InboundOp::Truncate => Ok(Change::Truncate),
            InboundOp::Upsert { row, unchanged } => {
                self.no_unknown_fields(row, table)?;
                let mut values = Vec::with_capacity(table.columns.len());
                let mut any_unchanged = false;
                for column in &table.columns {
                    let value = if unchanged.iter().any(|c| c == &column.name) {
                        any_unchanged = true;
                        Value::Unchanged
                    } else {
                        match row.get(&column.name) {
                            Some(v) => self.value(column, v, options)?,
                            None if column.nullable && !column.key => Value::Null,
                            None => {
                                return Err(format!(
                                    "the message has no value for column {} of {}, which cannot be NULL",
                                    column.name, table.name
                                ))
                            }
                        }
                    };
                    values.push(value);
                }
                let row = Row(values);
                Ok(if any_unchanged {
                    Change::Update { old_key: None, row }
                } else {
                    Change::Insert { row }
                })
            }
            InboundOp::Delete { key } => {
                let mut values = Vec::with_capacity(table.columns.len());
                for column in &table.columns {
                    values.push(if column.key {
                        let v = key.get(&column.name).ok_or_else(|| {
                            format!(
                                "the delete has no value for key column {} of {}",
                                column.name, table.name
                            )
                        })?;
                        self.value(column, v, options)?
                    } else {
                        Value::Null
                    });
                }
                Ok(Change::Delete { key: Row(values) })
            }
        }
    }

    fn no_unknown_fields(
        &self,
        row: &Map<String, Json>,
        table: &TableSchema,
    ) -> Result<(), String> {
        match row
            .keys()
            .find(|f| !table.columns.iter().any(|c| &c.name == *f))
        {
            Some(field) => Err(format!(
                "field {field:?} is not a column of target table {}",
                table.name
            )),
            None => Ok(()),
        }
    }

    fn value(&self, column: &Column, v: &Json, options: &ReadOptions) -> Result<Value, String> {
        let style = self.style(column, options);
        let bytes = json_value(column.type_oid, v, &style)
            .map_err(|e| format!("column {}: {e}", column.name))?;
        if bytes.is_none() && !column.nullable {
            return Err(format!("column {} cannot be NULL", column.name));
        }
        Ok(bytes.map_or(Value::Null, Value::Binary))
    }

    /// The conventions one column's value follows: the envelope's, refined by the field's
    /// schema when the message carries one, else by the column's declared precision and scale
    /// (what Debezium's default `time.precision.mode=adaptive` and `decimal.handling.mode`
    /// derive from).
    fn style(&self, column: &Column, options: &ReadOptions) -> JsonStyle {
        if options.format == EnvelopeFormat::Cutover {
            return JsonStyle::CUTOVER;
        }
        let field = self
            .fields
            .as_ref()
            .and_then(|fs| fs.iter().find(|f| f.field == column.name));
        let typmod = column.type_modifier;
        let time_unit = match field.and_then(|f| f.logical.as_deref()) {
            Some(
                "io.debezium.time.Time"
                | "io.debezium.time.Timestamp"
                | "org.apache.kafka.connect.data.Time"
                | "org.apache.kafka.connect.data.Timestamp",
            ) => TimeUnit::Millis,
            Some("io.debezium.time.NanoTime" | "io.debezium.time.NanoTimestamp") => TimeUnit::Nanos,
            Some(_) => TimeUnit::Micros,
            None => schemaless_time_unit(options.time_precision, column.type_oid, typmod),
        };
        let column_scale = match column.type_oid {
            oid::MONEY => Some(2),
            oid::NUMERIC if typmod >= 4 => Some(((typmod - 4) & 0xffff) as u32),
            _ => None,
        };
        let decimal = match field {
            Some(f) if f.logical.as_deref() == Some("org.apache.kafka.connect.data.Decimal") => {
                DecimalForm::Precise {
                    scale: f.scale.or(column_scale).unwrap_or(0),
                }
            }
            Some(_) => DecimalForm::Text,
            None => match (options.decimal, column_scale) {
                (DecimalHandling::Precise, Some(scale)) => DecimalForm::Precise { scale },
                _ => DecimalForm::Text,
            },
        };
        JsonStyle {
            opaque_base64: false,
            json_as_string: true,
            time_unit,
            decimal,
        }
    }
}

/// The unit of a `time` or `timestamp` value written without a schema, by Debezium's
/// `time.precision.mode` and the column's precision (`typmod`, -1 when none is declared).
fn schemaless_time_unit(mode: TimePrecision, type_oid: u32, typmod: i32) -> TimeUnit {
    let low_precision = (0..=3).contains(&typmod);
    match (mode, type_oid) {
        (TimePrecision::Connect, oid::TIME | oid::TIMESTAMP) => TimeUnit::Millis,
        (TimePrecision::AdaptiveTimeMicroseconds, oid::TIME) => TimeUnit::Micros,
        (_, oid::TIME | oid::TIMESTAMP) if low_precision => TimeUnit::Millis,
        _ => TimeUnit::Micros,
    }
}

/// A table definition from Debezium's field schemas, for a target that creates missing tables:
/// each Connect type and logical name mapped to the PostgreSQL type Debezium's PostgreSQL
/// connector reads it from; `key_fields` form the key.
pub fn table_from_schema(
    name: TableName,
    fields: &[FieldSchema],
    key_fields: &[String],
) -> Result<TableSchema, String> {
    if key_fields.is_empty() {
        return Err(format!(
            "cannot create {name} from the message schema: the message has no key to make its primary key"
        ));
    }
    let mut columns = Vec::with_capacity(fields.len());
    for f in fields {
        let (type_oid, type_name) = pg_type(f).ok_or_else(|| {
            format!(
                "cannot create {name} from the message schema: field {} has type {}{} with no PostgreSQL mapping here",
                f.field,
                f.kind,
                f.logical.as_deref().map(|l| format!(" ({l})")).unwrap_or_default()
            )
        })?;
        let key = key_fields.contains(&f.field);
        columns.push(Column {
            name: f.field.clone(),
            type_oid,
            type_modifier: -1,
            type_name,
            nullable: f.optional && !key,
            key,
            default: None,
        });
    }
    if let Some(k) = key_fields
        .iter()
        .find(|k| !columns.iter().any(|c| &c.name == *k))
    {
        return Err(format!(
            "cannot create {name} from the message schema: key field {k} is not in the row"
        ));
    }
    Ok(TableSchema { name, columns })
}

/// The PostgreSQL type (OID and SQL name) a Connect field schema stands for.
fn pg_type(f: &FieldSchema) -> Option<(u32, String)> {
    let named = |o: u32, n: &str| Some((o, n.to_string()));
    match (f.kind.as_str(), f.logical.as_deref()) {
        ("int32", Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date")) => {
            named(oid::DATE, "date")
        }
        ("int32", Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time")) => {
            named(oid::TIME, "time(3)")
        }
        ("int64", Some("io.debezium.time.MicroTime" | "io.debezium.time.NanoTime")) => {
            named(oid::TIME, "time")
        }
        (
            "int64",
            Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp"),
        ) => named(oid::TIMESTAMP, "timestamp(3)"),
        ("int64", Some("io.debezium.time.MicroTimestamp" | "io.debezium.time.NanoTimestamp")) => {
            named(oid::TIMESTAMP, "timestamp")
        }
        ("int64", Some("io.debezium.time.MicroDuration")) => named(oid::INTERVAL, "interval"),
        ("string", Some("io.debezium.time.ZonedTimestamp")) => {
            named(oid::TIMESTAMPTZ, "timestamptz")
        }
        ("string", Some("io.debezium.time.ZonedTime")) => named(oid::TIMETZ, "timetz"),
        ("string", Some("io.debezium.time.Interval")) => named(oid::INTERVAL, "interval"),
        ("string", Some("io.debezium.data.Uuid")) => named(oid::UUID, "uuid"),
        ("string", Some("io.debezium.data.Json")) => named(oid::JSONB, "jsonb"),
        ("string", Some("io.debezium.data.Xml")) => named(oid::XML, "xml"),
        ("bytes", Some("org.apache.kafka.connect.data.Decimal")) => Some((
            oid::NUMERIC,
            match (f.precision, f.scale) {
                (Some(p), Some(s)) => format!("numeric({p},{s})"),
                _ => "numeric".to_string(),
            },
        )),
        ("struct", Some("io.debezium.data.VariableScaleDecimal")) => named(oid::NUMERIC, "numeric"),
        ("int8" | "int16", _) => named(oid::INT2, "smallint"),
        ("int32", _) => named(oid::INT4, "integer"),
        ("int64", _) => named(oid::INT8, "bigint"),
        // Kafka Connect's JSON converter writes FLOAT32 and FLOAT64 as "float" and "double".
        ("float" | "float32", _) => named(oid::FLOAT4, "real"),
        ("double" | "float64", _) => named(oid::FLOAT8, "double precision"),
        ("boolean", _) => named(oid::BOOL, "boolean"),
        ("string", _) => named(oid::TEXT, "text"),
        ("bytes", _) => named(oid::BYTEA, "bytea"),
        ("array", _) => {
            let (element, element_name) = pg_type(f.items.as_ref()?)?;
            let array = array_oid(element)?;
            Some((array, format!("{element_name}[]")))
        }
        _ => None,
    }
}

/// The array type of a built-in element type.
fn array_oid(element: u32) -> Option<u32> {
    Some(match element {
        oid::BOOL => 1000,
        oid::BYTEA => 1001,
        oid::INT2 => 1005,
        oid::INT4 => 1007,
        oid::TEXT => 1009,
        oid::INT8 => 1016,
        oid::FLOAT4 => 1021,
        oid::FLOAT8 => 1022,
        oid::TIMESTAMP => 1115,
        oid::DATE => 1182,
        oid::TIME => 1183,
        oid::TIMESTAMPTZ => 1185,
        oid::INTERVAL => 1187,
        oid::NUMERIC => 1231,
        oid::UUID => 2951,
        oid::JSONB => 3807,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::{decode, Datum};

    fn debezium() -> ReadOptions {
        ReadOptions::of(EnvelopeFormat::Debezium)
    }

    /// A create event with schemas on, written after the example in Debezium's PostgreSQL
    /// connector documentation, with a decimal, a timestamp and a date added.
    const CREATE_WITH_SCHEMA: &str = r#"{
      "schema": {"type": "struct", "name": "shop.public.customers.Envelope", "optional": false, "fields": [
        {"type": "struct", "optional": true, "name": "shop.public.customers.Value", "field": "before", "fields": [
          {"type": "int32", "optional": false, "field": "id"}]},
        {"type": "struct", "optional": true, "name": "shop.public.customers.Value", "field": "after", "fields": [
          {"type": "int32", "optional": false, "field": "id"},
          {"type": "string", "optional": false, "field": "first_name"},
          {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
           "parameters": {"scale": "2", "connect.decimal.precision": "8"}, "field": "balance"},
          {"type": "int64", "optional": true, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "seen"},
          {"type": "int32", "optional": true, "name": "io.debezium.time.Date", "version": 1, "field": "born"}]},
        {"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source", "fields": []},
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"}]},
      "payload": {
        "before": null,
        "after": {"id": 1, "first_name": "Anne", "balance": "BOI=", "seen": 1714566600250000, "born": 19844},
        "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1559033904863,
                   "snapshot": "false", "db": "postgres", "schema": "public", "table": "customers", "txId": 555,
                   "lsn": 24023128, "xmin": null},
        "op": "c", "ts_ms": 1559033904863}}"#;

    const KEY_WITH_SCHEMA: &str = r#"{"schema": {"type": "struct", "name": "shop.public.customers.Key", "optional": false,
        "fields": [{"type": "int32", "optional": false, "field": "id"}]}, "payload": {"id": 1}}"#;

    fn rendered(table: &TableSchema, change: &Change) -> Vec<Option<String>> {
        let row = match change {
            Change::Insert { row } | Change::Update { row, .. } | Change::Delete { key: row } => {
                row
            }
            Change::Truncate => return vec![],
        };
        table
            .columns
            .iter()
            .zip(&row.0)
            .map(|(c, v)| match v {
                Value::Binary(b) => decode(c.type_oid, b).unwrap().render(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_debezium_create_with_schemas_makes_its_table_and_row() {
        let m = read(
            &ReadOptions::of(EnvelopeFormat::Debezium),
            Some(KEY_WITH_SCHEMA.as_bytes()),
            Some(CREATE_WITH_SCHEMA.as_bytes()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.table, TableName::new("public", "customers"));
        assert_eq!(m.key_fields, vec!["id".to_string()]);
        let table =
            table_from_schema(m.table.clone(), m.fields.as_ref().unwrap(), &m.key_fields).unwrap();
        let types: Vec<&str> = table.columns.iter().map(|c| c.type_name.as_str()).collect();
        assert_eq!(
            types,
            ["integer", "text", "numeric(8,2)", "timestamp", "date"]
        );
        assert!(table.columns[0].key && !table.columns[0].nullable);
        let change = m.change(&table, &debezium()).unwrap();
        assert!(matches!(change, Change::Insert { .. }));
        assert_eq!(
            rendered(&table, &change),
            [
                Some("1"),
                Some("Anne"),
                Some("12.50"),
                Some("2024-05-01T12:30:00.25"),
                Some("2024-05-01")
            ]
            .map(|s| s.map(str::to_string))
        );
    }

    #[test]
    fn debezium_without_schemas_reads_decimals_as_configured_and_deletes_by_key() {
        let table = TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![
                Column::new("id", oid::INT4, true),
                Column {
                    type_modifier: (10 << 16) + 2 + 4,
                    ..Column::new("price", oid::NUMERIC, false)
                },
            ],
        };
        let msg = |price: &str| {
            format!(
                r#"{{"before": null, "after": {{"id": 7, "price": {price}}}, "source": {{"schema": "public", "table": "t"}}, "op": "u"}}"#
            )
        };
        let read_with = |price: &str, decimal| {
            let m = read(
                &ReadOptions::of(EnvelopeFormat::Debezium),
                Some(b"{\"id\":7}"),
                Some(msg(price).as_bytes()),
            )
            .unwrap()
            .unwrap();
            let change = m
                .change(
                    &table,
                    &ReadOptions {
                        decimal,
                        ..debezium()
                    },
                )
                .unwrap();
            rendered(&table, &change)[1].clone().unwrap()
        };
        assert_eq!(read_with("\"BOI=\"", DecimalHandling::Precise), "12.50");
        assert_eq!(read_with("\"12.50\"", DecimalHandling::String), "12.50");
        assert_eq!(read_with("12.5", DecimalHandling::Double), "12.5");
        let delete = br#"{"before": {"id": 7, "price": null}, "after": null, "source": {"schema": "public", "table": "t"}, "op": "d"}"#;
        let m = read(
            &ReadOptions::of(EnvelopeFormat::Debezium),
            None,
            Some(delete),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.op,
            InboundOp::Delete {
                key: serde_json::from_str(r#"{"id": 7, "price": null}"#).unwrap()
            }
        );
        let change = m.change(&table, &debezium()).unwrap();
        assert_eq!(rendered(&table, &change), vec![Some("7".to_string()), None]);
        // A tombstone changes nothing.
        assert_eq!(
            read(
                &ReadOptions::of(EnvelopeFormat::Debezium),
                Some(b"{\"id\":7}"),
                None
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn cutover_envelopes_read_back_with_unchanged_columns() {
        let table = TableSchema {
            name: TableName::new("public", "items"),
            columns: vec![
                Column::new("id", oid::INT8, true),
                Column::new("doc", oid::JSONB, false),
                Column::new("note", oid::TEXT, false),
            ],
        };
        let payload = br#"{"op": "update", "table": "public.items", "key": {"id": 3}, "row": {"id": 3, "doc": {"a": [1]}}, "unchanged": ["note"], "lsn": "0/1", "ordinal": 0, "txid": 1, "commit_ts": "2026-01-01T00:00:00Z"}"#;
        let m = read(
            &ReadOptions::of(EnvelopeFormat::Cutover),
            Some(b"{\"id\":3}"),
            Some(payload),
        )
        .unwrap()
        .unwrap();
        let change = m
            .change(
                &table,
                &ReadOptions {
                    format: EnvelopeFormat::Cutover,
                    decimal: DecimalHandling::Precise,
                    ..ReadOptions::of(EnvelopeFormat::Cutover)
                },
            )
            .unwrap();
        match change {
            Change::Update { old_key: None, row } => {
                assert_eq!(row.0[2], Value::Unchanged);
                assert_eq!(
                    decode(
                        oid::JSONB,
                        match &row.0[1] {
                            Value::Binary(b) => b,
                            _ => panic!(),
                        }
                    )
                    .unwrap(),
                    Datum::Json("{\"a\":[1]}")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let cut =
            |p: &[u8]| read(&ReadOptions::of(EnvelopeFormat::Cutover), None, Some(p)).unwrap_err();
        assert!(cut(b"not json").contains("not JSON"));
        assert!(cut(br#"{"op": "upsert", "table": "public.t"}"#).contains("unknown op"));
        assert!(
            cut(br#"{"op": "delete", "table": "public.t", "key": null}"#).contains("no \"key\"")
        );
        let dbz = read(
            &ReadOptions::of(EnvelopeFormat::Debezium),
            None,
            Some(br#"{"op": "x", "source": {"table": "t"}}"#),
        )
        .unwrap_err();
        assert!(dbz.contains("unknown op"));
        let table = TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![Column::new("id", oid::INT4, true)],
        };
        let m = read(
            &ReadOptions::of(EnvelopeFormat::Cutover),
            None,
            Some(br#"{"op": "insert", "table": "public.t", "row": {"id": 1, "extra": 2}}"#),
        )
        .unwrap()
        .unwrap();
        let opts = ReadOptions {
            format: EnvelopeFormat::Cutover,
            decimal: DecimalHandling::Precise,
            ..ReadOptions::of(EnvelopeFormat::Cutover)
        };
        assert!(m
            .change(&table, &opts)
            .unwrap_err()
            .contains("\"extra\" is not a column"));
        let m = read(
            &ReadOptions::of(EnvelopeFormat::Cutover),
            None,
            Some(br#"{"op": "insert", "table": "public.t", "row": {"id": "x"}}"#),
        )
        .unwrap()
        .unwrap();
        assert!(m
            .change(&table, &opts)
            .unwrap_err()
            .contains("column id: expected an integer"));
    }

    #[test]
    fn debeziums_placeholder_is_known_in_every_shape_it_takes() {
        use base64::Engine as _;
        let p = DEBEZIUM_UNAVAILABLE;
        let b64 = base64::engine::general_purpose::STANDARD.encode(p);
        let after = format!(
            r#"{{"id": 1, "t": "{p}", "b": "{b64}", "a": ["{p}"], "h": {{"{p}": "{p}"}}, "real": "x", "one": ["x"]}}"#
        );
        let msg = format!(
            r#"{{"before": null, "after": {after}, "source": {{"table": "t", "schema": "public"}}, "op": "u"}}"#
        );
        let m = read(&debezium(), None, Some(msg.as_bytes()))
            .unwrap()
            .unwrap();
        let InboundOp::Upsert { mut unchanged, .. } = m.op else {
            panic!("an upsert")
        };
        unchanged.sort();
        assert_eq!(unchanged, ["a", "b", "h", "t"]);
        // A connector with its own placeholder.
        let own = ReadOptions {
            placeholder: "<toasted>".into(),
            ..debezium()
        };
        let msg = r#"{"before": null, "after": {"id": 1, "t": "<toasted>", "u": "__debezium_unavailable_value"}, "source": {"table": "t"}, "op": "u"}"#;
        let m = read(&own, None, Some(msg.as_bytes())).unwrap().unwrap();
        let InboundOp::Upsert { unchanged, .. } = m.op else {
            panic!("an upsert")
        };
        assert_eq!(unchanged, ["t"]);
    }

    #[test]
    fn schemaless_times_follow_the_time_precision_mode() {
        use TimePrecision::*;
        let (time, ts) = (oid::TIME, oid::TIMESTAMP);
        // adaptive: precision 0-3 in ms, else us.
        assert_eq!(schemaless_time_unit(Adaptive, ts, 3), TimeUnit::Millis);
        assert_eq!(schemaless_time_unit(Adaptive, ts, -1), TimeUnit::Micros);
        assert_eq!(schemaless_time_unit(Adaptive, time, 0), TimeUnit::Millis);
        // adaptive_time_microseconds: every time in us.
        assert_eq!(
            schemaless_time_unit(AdaptiveTimeMicroseconds, time, 0),
            TimeUnit::Micros
        );
        assert_eq!(
            schemaless_time_unit(AdaptiveTimeMicroseconds, ts, 2),
            TimeUnit::Millis
        );
        // connect: every time and timestamp in ms, whatever its precision.
        assert_eq!(schemaless_time_unit(Connect, ts, -1), TimeUnit::Millis);
        assert_eq!(schemaless_time_unit(Connect, time, 6), TimeUnit::Millis);
        assert_eq!(
            schemaless_time_unit(Connect, oid::TIMESTAMPTZ, -1),
            TimeUnit::Micros
        );
    }
}
