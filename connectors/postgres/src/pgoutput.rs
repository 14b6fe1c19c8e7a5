//! Decoder for the pgoutput logical replication protocol (version 1), for every message the
//! replication stream ([`crate::replication`]) carries in `XLogData`: Begin, Commit, Relation,
//! Type, Origin, Message, Insert, Update, Delete and Truncate.
//!
//! Every read is bounds-checked: a truncated or garbage frame yields a [`DecodeError`] naming the
//! message and offset, never a panic.
//!
//! Values arrive in binary (`b`) when the stream asks for it (PostgreSQL 14+) and the type has a
//! binary send function; otherwise as text (`t`), which is converted into the same binary send
//! format ([`crate::text_values`]), so every decoded value is [`Value::Binary`]. Text of a type
//! cutover cannot convert is a [`DecodeError::TextValue`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cutover_core::{Column, Row, TableName, TableSchema, Value};

use crate::text_values::{TextValueError, UserTypes};

/// A pgoutput frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput {message} message ends early at byte {offset} (needed {needed} more)")]
    Truncated {
        message: char,
        offset: usize,
        needed: usize,
    },
    #[error("pgoutput {message} message has an unterminated string at byte {offset}")]
    UnterminatedString { message: char, offset: usize },
    #[error("pgoutput {message} message has a string that is not UTF-8 at byte {offset}")]
    NotUtf8 { message: char, offset: usize },
    #[error("pgoutput message type {0:?} is not known")]
    UnknownMessage(char),
    #[error("pgoutput {message} message has unexpected tag {tag:?} at byte {offset}")]
    UnexpectedTag {
        message: char,
        tag: char,
        offset: usize,
    },
    #[error("pgoutput change refers to relation {0}, which no Relation message described")]
    UnknownRelation(u32),
    #[error("pgoutput tuple for {table} has {found} columns, its Relation message has {expected}")]
    ColumnCount {
        table: String,
        expected: usize,
        found: usize,
    },
    #[error("pgoutput {message} message has a negative length {len} at byte {offset}")]
    NegativeLength {
        message: char,
        len: i32,
        offset: usize,
    },
    #[error("empty pgoutput message")]
    Empty,
    /// A value arrived as text (every value before PostgreSQL 14; later, those of types
    /// without a binary send function) and could not be converted to its type's binary send
    /// format, which cutover would then carry wrongly, so it stops instead.
    #[error("pgoutput sent column {column} of {table} as text (PostgreSQL before 14 sends every value so, later versions the values of types without a binary send function), and {source}, so cutover cannot carry its values exactly. Fix: change the column to a type cutover converts from text (for example text, with a cast), or leave the table out of source.tables")]
    TextValue {
        table: String,
        column: String,
        source: TextValueError,
    },
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A relation's schema was (re)announced (with its OID); the cache is updated.
    Relation(u32, Arc<TableSchema>),
    Insert {
        table: Arc<TableSchema>,
        row: Row,
    },
    Update {
        table: Arc<TableSchema>,
        old_key: Option<Row>,
        row: Row,
    },
    Delete {
        table: Arc<TableSchema>,
        key: Row,
    },
    Truncate {
        tables: Vec<Arc<TableSchema>>,
    },
    /// A transaction starts; it commits at `final_lsn`.
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01.
        commit_time: i64,
        xid: u32,
    },
    /// The transaction committed at `lsn`; the next one starts at or after `end_lsn`.
    Commit {
        lsn: u64,
        end_lsn: u64,
        /// Microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// Type messages (kept inside the decoder, for converting text values), and Origin and
    /// logical decoding messages, which carry nothing cutover needs.
    Ignored,
}

/// Decodes pgoutput messages, keeping the relation cache that Relation messages fill.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<TableSchema>>,
    catalog: HashMap<TableName, Arc<TableSchema>>,
    /// The source's enums, domains and ranges, for converting text values.
    types: UserTypes,
    /// Partitions published by themselves (sources before 13), to the root they belong to.
    roots: HashMap<TableName, TableName>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that completes Relation messages from the catalog: the row key is the catalog's
    /// (primary key or replica identity index, also under REPLICA IDENTITY FULL, where pgoutput
    /// flags every column), and SQL type names and nullability are filled in by column name.
    pub fn with_catalog(tables: impl IntoIterator<Item = Arc<TableSchema>>) -> Self {
        Decoder {
            relations: HashMap::new(),
            catalog: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            types: UserTypes::default(),
            roots: HashMap::new(),
        }
    }

    /// Relation messages that name one of these partitions (published by themselves, as a
    /// source before 13 must) describe its root: their changes are the root's.
    pub fn with_partition_roots(
        mut self,
        roots: impl IntoIterator<Item = (TableName, TableName)>,
    ) -> Self {
        self.roots.extend(roots);
        self
    }

    /// Adds what the source's catalog says of its own types ([`UserTypes::load`]), so text
    /// values of enums, domains, ranges and arrays of them convert (without it, only domains
    /// over built-in types do, recognised from pgoutput's Type messages).
    pub fn learn_types(&mut self, types: UserTypes) {
        self.types.extend(types);
    }

    /// Adds a table to the catalog Relation messages are completed from (a table that joined
    /// the publication while streaming).
    pub fn learn(&mut self, table: Arc<TableSchema>) {
        self.catalog.insert(table.name.clone(), table);
    }

    /// The schema announced for a relation OID, if any.
    pub fn relation(&self, oid: u32) -> Option<&Arc<TableSchema>> {
        self.relations.get(&oid)
    }

    /// Replaces the cached schema of a relation (completed from the catalog); changes decoded
    /// afterwards carry it.
    pub fn set_relation(&mut self, oid: u32, table: Arc<TableSchema>) {
        self.relations.insert(oid, table);
    }

    pub fn decode(&mut self, data: &Bytes) -> Result<Message, DecodeError> {
        let tag = *data.first().ok_or(DecodeError::Empty)? as char;
        let mut r = Reader {
            data,
            at: 1,
            message: tag,
        };
        match tag {
            'R' => self.relation_message(&mut r),
            'B' => {
                let final_lsn = r.u64()?;
                let commit_time = r.u64()? as i64;
                let xid = r.u32()?;
                Ok(Message::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }
            'C' => {
                let _flags = r.u8()?;
                let lsn = r.u64()?;
                let end_lsn = r.u64()?;
                let commit_time = r.u64()? as i64;
                Ok(Message::Commit {
                    lsn,
                    end_lsn,
                    commit_time,
                })
            }
            'M' => {
                let _transactional = r.u8()?;
                r.u64()?;
                r.string()?;
                let len = r.u32()? as usize;
                r.take(len)?;
                Ok(Message::Ignored)
            }
            'Y' => {
                let oid = r.u32()?;
                let namespace = r.string()?;
                let name = r.string()?;
                self.types.type_message(oid, &namespace, &name);
                Ok(Message::Ignored)
            }
            'O' => {
                r.u64()?;
                r.string()?;
                Ok(Message::Ignored)
            }
            'I' => {
                let table = self.table(r.u32()?)?;
                r.expect(b'N')?;
                let row = r.tuple(&table, &self.types)?;
                Ok(Message::Insert { table, row })
            }
            'U' => self.update_message(&mut r),
            'D' => {
                let table = self.table(r.u32()?)?;
                let tag = r.u8()?;
                if tag != b'K' && tag != b'O' {
                    return Err(r.unexpected(tag));
                }
                let key = r.tuple(&table, &self.types)?;
                Ok(Message::Delete { table, key })
            }
            'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                let mut tables = Vec::new();
                for _ in 0..count {
                    tables.push(self.table(r.u32()?)?);
                }
                Ok(Message::Truncate { tables })
            }
            other => Err(DecodeError::UnknownMessage(other)),
        }
    }

    /// A Relation message: the columns as announced, completed from the catalog (type names,
    /// nullability, defaults and the key as the catalog has it), under the partition root's
    /// name when the table is a partition.
    fn relation_message(&mut self, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let oid = r.u32()?;
        let schema = r.string()?;
        let name = r.string()?;
        let _replica_identity = r.u8()?;
        let count = r.i16()?;
        let mut columns = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            let flags = r.u8()?;
            let name = r.string()?;
            let type_oid = r.u32()?;
            let type_modifier = r.i32()?;
            columns.push(Column {
                name,
                type_oid,
                type_modifier,
                type_name: String::new(),
                nullable: true,
                key: flags & 1 == 1,
                default: None,
            });
        }
        let mut name = TableName::new(schema, name);
        if let Some(root) = self.roots.get(&name) {
            name = root.clone();
        }
        if let Some(known) = self.catalog.get(&name) {
            for c in &mut columns {
                let from_catalog = known.columns.iter().find(|k| k.name == c.name);
                c.key = from_catalog.is_some_and(|k| k.key);
                if let Some(k) = from_catalog.filter(|k| k.type_oid == c.type_oid) {
                    c.type_name = k.type_name.clone();
                    c.nullable = k.nullable;
                    c.default = k.default.clone();
                }
            }
        }
        let table = Arc::new(TableSchema { name, columns });
        self.relations.insert(oid, table.clone());
        Ok(Message::Relation(oid, table))
    }

    /// An Update message: the old key (or old row) when the key changed or the table's
    /// replica identity is full, then the new row.
    #[inline]
    fn update_message(&mut self, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let table = self.table(r.u32()?)?;
        let mut old_key = None;
        let mut tag = r.u8()?;
        if tag == b'K' || tag == b'O' {
            old_key = Some(r.tuple(&table, &self.types)?);
            tag = r.u8()?;
        }
        if tag != b'N' {
            return Err(r.unexpected(tag));
        }
        let row = r.tuple(&table, &self.types)?;
        Ok(Message::Update {
            table,
            old_key,
            row,
        })
    }

    fn table(&self, oid: u32) -> Result<Arc<TableSchema>, DecodeError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or(DecodeError::UnknownRelation(oid))
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
    message: char,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                message: self.message,
                offset: self.at,
                needed: n - (self.data.len() - self.at.min(self.data.len())),
            }),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.i32()? as u32)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.at;
        let rest = &self.data[start.min(self.data.len())..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                message: self.message,
                offset: start,
            })?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::NotUtf8 {
            message: self.message,
            offset: start,
        })?;
        self.at = start + nul + 1;
        Ok(s.to_string())
    }

    fn expect(&mut self, tag: u8) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got == tag {
            Ok(())
        } else {
            Err(self.unexpected(got))
        }
    }

    fn unexpected(&self, tag: u8) -> DecodeError {
        DecodeError::UnexpectedTag {
            message: self.message,
            tag: tag as char,
            offset: self.at.saturating_sub(1),
        }
    }

    /// One TupleData; text values are converted to binary with `types`.
    fn tuple(&mut self, table: &TableSchema, types: &UserTypes) -> Result<Row, DecodeError> {
        let count = self.i16()?.max(0) as usize;
        if count != table.columns.len() {
            return Err(DecodeError::ColumnCount {
                table: table.name.to_string(),
                expected: table.columns.len(),
                found: count,
            });
        }
        let mut values = Vec::with_capacity(count);
        for column in &table.columns {
            let kind = self.u8()?;
            values.push(match kind {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(DecodeError::NegativeLength {
                            message: self.message,
                            len,
                            offset: self.at - 4,
                        });
                    }
                    let start = self.at;
                    self.take(len as usize)?;
                    let raw = self.data.slice(start..start + len as usize);
                    if kind == b'b' {
                        Value::Binary(raw)
                    } else {
                        let binary = types.raw_to_binary(column.type_oid, &raw).map_err(|e| {
                            DecodeError::TextValue {
                                table: table.name.to_string(),
                                column: column.name.clone(),
                                source: named(e, column),
                            }
                        })?;
                        Value::Binary(binary)
                    }
                }
                other => return Err(self.unexpected(other)),
            });
        }
        Ok(Row(values))
    }
}

/// A text-value error that names the column's type by its SQL name (from the catalog) where
/// the converter knew only its OID.
fn named(mut e: TextValueError, column: &Column) -> TextValueError {
    let unnamed = format!("type OID {}", column.type_oid);
    if !column.type_name.is_empty() {
        match &mut e {
            TextValueError::Unsupported { type_name }
            | TextValueError::Malformed { type_name, .. }
                if *type_name == unnamed =>
            {
                *type_name = column.type_name.clone();
            }
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;

    fn relation_frame() -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0");
        b.put_slice(b"orders\0");
        b.put_u8(b'd');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(20);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"note\0");
        b.put_u32(25);
        b.put_i32(-1);
        b.freeze()
    }

    fn insert_frame() -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(16384);
        b.put_u8(b'N');
        b.put_i16(2);
        b.put_u8(b'b');
        b.put_i32(8);
        b.put_i64(7);
        b.put_u8(b'n');
        b.freeze()
    }

    #[test]
    fn relation_then_insert_decodes() {
        let mut d = Decoder::new();
        let Message::Relation(_, t) = d.decode(&relation_frame()).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(t.name, TableName::new("public", "orders"));
        assert_eq!(t.key_indexes().collect::<Vec<_>>(), vec![0]);
        let Message::Insert { row, .. } = d.decode(&insert_frame()).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(
            row,
            Row(vec![
                Value::Binary(Bytes::from(7i64.to_be_bytes().to_vec())),
                Value::Null
            ])
        );
    }

    #[test]
    fn update_with_old_key_and_unchanged_toast() {
        let mut d = Decoder::new();
        d.decode(&relation_frame()).unwrap();
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'K');
        b.put_i16(2);
        b.put_u8(b'b');
        b.put_i32(1);
        b.put_u8(b'1');
        b.put_u8(b'n');
        b.put_u8(b'N');
        b.put_i16(2);
        b.put_u8(b'b');
        b.put_i32(1);
        b.put_u8(b'2');
        b.put_u8(b'u');
        let Message::Update { old_key, row, .. } = d.decode(&b.freeze()).unwrap() else {
            panic!("not an update")
        };
        assert!(old_key.is_some());
        assert_eq!(row.0[1], Value::Unchanged);
    }

    /// A Relation message for `public.grants`: `id int8` (key) and one more column.
    fn relation_with(column: &str, type_oid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16390);
        b.put_slice(b"public\0grants\0");
        b.put_u8(b'd');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(20);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(column.as_bytes());
        b.put_u8(0);
        b.put_u32(type_oid);
        b.put_i32(-1);
        b.freeze()
    }

    /// An insert into `public.grants` with both values as text.
    fn text_insert(id: &str, value: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(16390);
        b.put_u8(b'N');
        b.put_i16(2);
        for v in [id, value] {
            b.put_u8(b't');
            b.put_i32(v.len() as i32);
            b.put_slice(v.as_bytes());
        }
        b.freeze()
    }

    fn type_frame(oid: u32, namespace: &str, name: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'Y');
        b.put_u32(oid);
        b.put_slice(namespace.as_bytes());
        b.put_u8(0);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.freeze()
    }

    fn inserted(d: &mut Decoder, frame: &Bytes) -> Result<Row, DecodeError> {
        match d.decode(frame)? {
            Message::Insert { row, .. } => Ok(row),
            other => panic!("not an insert: {other:?}"),
        }
    }

    #[test]
    fn text_format_values_are_converted_to_their_binary_format() {
        let mut d = Decoder::new();
        d.decode(&relation_frame()).unwrap();
        let insert = insert_frame();
        let mut b = BytesMut::from(&insert[..insert.len() - 1]);
        b.put_u8(b't');
        b.put_i32(3);
        b.put_slice(b"abc");
        let Message::Insert { row, .. } = d.decode(&b.freeze()).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(row.0[1], Value::Binary(Bytes::from_static(b"abc")));
        let mut d = Decoder::new();
        d.decode(&relation_with("at", 1184)).unwrap();
        let row = inserted(&mut d, &text_insert("-7", "2000-01-01 05:30:00+05:30")).unwrap();
        assert_eq!(
            row,
            Row(vec![
                Value::Binary(Bytes::copy_from_slice(&(-7i64).to_be_bytes())),
                Value::Binary(Bytes::copy_from_slice(&0i64.to_be_bytes())),
            ])
        );
    }

    #[test]
    fn a_text_value_of_a_type_without_a_conversion_is_refused_naming_column_and_type() {
        // aclitem has no binary send function: its text has no binary form to convert to.
        let mut d = Decoder::new();
        d.decode(&relation_with("acl", 1033)).unwrap();
        let e = inserted(&mut d, &text_insert("1", "postgres=arwdDxt/postgres")).unwrap_err();
        let DecodeError::TextValue {
            table,
            column,
            source,
        } = &e
        else {
            panic!("not a text-value refusal: {e}")
        };
        assert_eq!(table, "public.grants");
        assert_eq!(column, "acl");
        assert!(
            matches!(source, TextValueError::Unsupported { .. }),
            "{source:?}"
        );
        let message = e.to_string();
        assert!(message.contains("type OID 1033"), "{message}");
        assert!(message.contains("Fix: "), "{message}");
        // With the catalog's column types, the type is named as SQL names it.
        let mut columns = vec![Column::new("id", 20, true), Column::new("acl", 1033, false)];
        columns[1].type_name = "aclitem".into();
        let table = Arc::new(TableSchema {
            name: TableName::new("public", "grants"),
            columns,
        });
        let mut d = Decoder::with_catalog([table]);
        d.decode(&relation_with("acl", 1033)).unwrap();
        let e = inserted(&mut d, &text_insert("1", "x")).unwrap_err();
        assert!(e.to_string().contains("type aclitem"), "{e}");
        // Malformed text is refused the same way, never read as something else.
        let mut d = Decoder::new();
        d.decode(&relation_with("n", 23)).unwrap();
        let e = inserted(&mut d, &text_insert("1", "12abc")).unwrap_err();
        assert!(
            matches!(
                &e,
                DecodeError::TextValue {
                    source: TextValueError::Malformed { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn domains_come_from_type_messages_and_enums_from_the_catalog() {
        let mut d = Decoder::new();
        // pgoutput names a domain's base type, and pg_catalog as an empty namespace.
        d.decode(&type_frame(16385, "", "int4")).unwrap();
        d.decode(&type_frame(16389, "public", "mood")).unwrap();
        d.decode(&relation_with("score", 16385)).unwrap();
        let row = inserted(&mut d, &text_insert("1", "5")).unwrap();
        assert_eq!(
            row.0[1],
            Value::Binary(Bytes::copy_from_slice(&5i32.to_be_bytes()))
        );
        d.decode(&relation_with("feeling", 16389)).unwrap();
        let e = inserted(&mut d, &text_insert("1", "ok")).unwrap_err();
        assert!(e.to_string().contains("public.mood"), "{e}");
        let mut types = UserTypes::new();
        types.insert(16389, "mood", crate::text_values::UserTypeKind::Enum);
        d.learn_types(types);
        let row = inserted(&mut d, &text_insert("1", "ok")).unwrap();
        assert_eq!(row.0[1], Value::Binary(Bytes::from_static(b"ok")));
    }

    #[test]
    fn change_before_relation_is_a_typed_error() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&insert_frame()),
            Err(DecodeError::UnknownRelation(16384))
        );
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error_not_a_panic() {
        for frame in [relation_frame(), insert_frame()] {
            for cut in 0..frame.len() {
                let mut d = Decoder::new();
                if frame[0] == b'I' {
                    d.decode(&relation_frame()).unwrap();
                }
                assert!(d.decode(&frame.slice(..cut)).is_err(), "cut at {cut}");
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::new();
            let _ = d.decode(&relation_frame());
            let _ = d.decode(&Bytes::from(data));
        }

        #[test]
        fn garbage_after_a_valid_tag_never_panics(
            tag in prop::sample::select(vec![b'R', b'I', b'U', b'D', b'T', b'Y', b'O']),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut d = Decoder::new();
            let _ = d.decode(&relation_frame());
            let mut data = vec![tag];
            data.extend(rest);
            let _ = d.decode(&Bytes::from(data));
        }
    }
}
