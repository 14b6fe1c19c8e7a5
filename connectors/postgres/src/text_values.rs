//! Text-format pgoutput values into PostgreSQL's binary send format.
//!
//! cutover carries every value as its type's binary send format
//! ([`cutover_core::Value::Binary`]). pgoutput sends values as text when it cannot send them in
//! binary: always before PostgreSQL 14 (the `binary` option came with 14), and later for a type
//! without a binary send function. The decoder converts such a value here into the exact bytes
//! the type's send function would have produced, so nothing downstream can tell the two apart.
//!
//! The text is read as the replication session prints it ([`crate::replication`] fixes the
//! settings): `DateStyle` ISO, `IntervalStyle` postgres, `extra_float_digits` 3 (so a float
//! prints with every digit it needs to read back to the same bits, on every version),
//! `bytea_output` hex (escape is read too), client encoding UTF-8; timestamptz values carry
//! their zone offset, whatever `TimeZone` is. money is read as the C (and `en_US`) locale
//! prints it (`-$1,234.56`).
//!
//! Covered: the built-in scalar types cutover decodes ([`cutover_core::datum`]) plus bit,
//! varbit, macaddr8, pg_lsn, tid, xid, xid8, cid and the geometric types; one- and
//! multi-dimensional arrays of all of them (with lower bounds); the built-in ranges; and, with
//! what [`UserTypes`] knows of the source's catalog, enums, domains, user ranges and arrays of
//! them. Any other type is an [`TextValueError::Unsupported`] error naming it.
//!
//! What text cannot say, so the bytes differ from the server's (the value does not): a NaN
//! float with its sign bit set (`'Infinity' * 0` on x86) prints as `NaN` and converts to the
//! positive NaN; an array that lost its last NULL by an element update keeps the null bitmap
//! on the server (has-nulls flag 1), while text shows no NULL (flag 0). Both decode and verify
//! the same ([`cutover_core::datum`] and the verify hash ignore them).
//!
//! Nothing here panics on bad text: every malformed value is a [`TextValueError::Malformed`].

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use cutover_core::datum::oid::*;
use cutover_core::encode;
use tokio_postgres::Client;

use crate::error::classify;

const POINT: u32 = 600;
const LSEG: u32 = 601;
const PATH: u32 = 602;
const BOX: u32 = 603;
const POLYGON: u32 = 604;
const LINE: u32 = 628;
const CIRCLE: u32 = 718;
const MACADDR8: u32 = 774;
const BIT: u32 = 1560;
const VARBIT: u32 = 1562;
const PG_LSN: u32 = 3220;
const TID: u32 = 27;
const XID: u32 = 28;
const CID: u32 = 29;
const XID8: u32 = 5069;

/// Built-in scalar types converted here: OID, name (as pgoutput's Type message and
/// `pg_type.typname` spell it) and the OID of its array type.
const SCALARS: &[(u32, &str, u32)] = &[
    (BOOL, "bool", 1000),
    (BYTEA, "bytea", 1001),
    (CHAR, "char", 1002),
    (NAME, "name", 1003),
    (INT8, "int8", 1016),
    (INT2, "int2", 1005),
    (INT4, "int4", 1007),
    (TEXT, "text", 1009),
    (OID, "oid", 1028),
    (TID, "tid", 1010),
    (XID, "xid", 1011),
    (CID, "cid", 1012),
    (JSON, "json", 199),
    (XML, "xml", 143),
    (POINT, "point", 1017),
    (LSEG, "lseg", 1018),
    (PATH, "path", 1019),
    (BOX, "box", 1020),
    (POLYGON, "polygon", 1027),
    (LINE, "line", 629),
    (CIDR, "cidr", 651),
    (FLOAT4, "float4", 1021),
    (FLOAT8, "float8", 1022),
    (CIRCLE, "circle", 719),
    (MACADDR8, "macaddr8", 775),
    (MONEY, "money", 791),
    (MACADDR, "macaddr", 1040),
    (INET, "inet", 1041),
    (BPCHAR, "bpchar", 1014),
    (VARCHAR, "varchar", 1015),
    (DATE, "date", 1182),
    (TIME, "time", 1183),
    (TIMESTAMP, "timestamp", 1115),
    (TIMESTAMPTZ, "timestamptz", 1185),
    (INTERVAL, "interval", 1187),
    (TIMETZ, "timetz", 1270),
    (BIT, "bit", 1561),
    (VARBIT, "varbit", 1563),
    (NUMERIC, "numeric", 1231),
    (UUID, "uuid", 2951),
    (PG_LSN, "pg_lsn", 3221),
    (JSONB, "jsonb", 3807),
    (XID8, "xid8", 271),
];

/// Built-in range types: OID, name, subtype OID, array OID.
const RANGES: &[(u32, &str, u32, u32)] = &[
    (3904, "int4range", INT4, 3905),
    (3906, "numrange", NUMERIC, 3907),
    (3908, "tsrange", TIMESTAMP, 3909),
    (3910, "tstzrange", TIMESTAMPTZ, 3911),
    (3912, "daterange", DATE, 3913),
    (3926, "int8range", INT8, 3927),
];

/// Domains nest at most this deep here (PostgreSQL has no limit; real schemas use one or two).
const MAX_DOMAIN_DEPTH: usize = 32;
/// PostgreSQL's `MAXDIM`.
const MAX_ARRAY_DIMS: usize = 6;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a text value could not be converted; both variants name the type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextValueError {
    /// cutover has no conversion from text for this type (a composite, an extension's type, a
    /// type without a binary send function, or a user type [`UserTypes`] was not told about).
    #[error("cutover has no conversion from text to the binary format of type {type_name} (it converts built-in scalar types, their arrays and ranges, and enums, domains and ranges of the source's catalog)")]
    Unsupported { type_name: String },
    /// The text is not what PostgreSQL prints for the type under the replication session's
    /// settings.
    #[error(
        "the text of a value of type {type_name} is not what PostgreSQL prints for it: {reason}"
    )]
    Malformed { type_name: String, reason: String },
}

impl TextValueError {
    /// The type the error is about.
    pub fn type_name(&self) -> &str {
        match self {
            TextValueError::Unsupported { type_name }
            | TextValueError::Malformed { type_name, .. } => type_name,
        }
    }
}

/// What a type of the source's own catalog is, as far as text conversion cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserTypeKind {
    /// An enum: a value's binary form is its label.
    Enum,
    /// A domain: values are its base type's.
    Domain { base: u32 },
    /// An array type of `element` (whose OID the binary form carries, a domain's own included).
    Array { element: u32 },
    /// A range type over `subtype`.
    Range { subtype: u32 },
}

/// A type of the source's catalog: its name (for messages) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserType {
    /// The name messages show (`format_type`'s, for example `public.mood` or `mood`).
    pub name: String,
    pub kind: UserTypeKind,
}

/// What cutover knows of the source's own types (OIDs of enums, domains, ranges and arrays of
/// them), from the catalog ([`UserTypes::load`]) and from pgoutput's Type messages
/// ([`UserTypes::type_message`]); it converts their text values as it does built-in ones.
/// Types not listed here that are not built in are [`TextValueError::Unsupported`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserTypes {
    types: HashMap<u32, UserType>,
    /// Names announced by Type messages for types of unknown kind, for error messages.
    names: HashMap<u32, String>,
}

/// How a type's text converts, after following domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Scalar(u32),
    Enum,
    Array(u32),
    Range(u32),
}

/// The binary send format of a value of the built-in type `type_oid` (a scalar type, an array
/// or a range of one, see the module doc), from the text PostgreSQL prints for it. The bytes
/// are exactly what the type's send function produces for the value.
pub fn to_binary(type_oid: u32, text: &str) -> Result<Bytes, TextValueError> {
    UserTypes::default().to_binary(type_oid, text)
}

/// The name of a built-in type converted here, for messages (`int4`, `int4[]`, `int4range`).
pub fn builtin_name(type_oid: u32) -> Option<String> {
    SCALARS
        .iter()
        .find_map(|(oid, name, array)| {
            if *oid == type_oid {
                Some(name.to_string())
            } else if *array == type_oid {
                Some(format!("{name}[]"))
            } else {
                None
            }
        })
        .or_else(|| {
            RANGES.iter().find_map(|(oid, name, _, array)| {
                if *oid == type_oid {
                    Some(name.to_string())
                } else if *array == type_oid {
                    Some(format!("{name}[]"))
                } else {
                    None
                }
            })
        })
}

/// The OID of a built-in type converted here, by the name pgoutput's Type message gives.
fn builtin_oid(name: &str) -> Option<u32> {
    let (array, base) = match name.strip_prefix('_') {
        Some(b) => (true, b),
        None => (false, name),
    };
    SCALARS
        .iter()
        .find(|(_, n, _)| *n == base)
        .map(|(oid, _, arr)| if array { *arr } else { *oid })
        .or_else(|| {
            RANGES
                .iter()
                .find(|(_, n, _, _)| *n == base)
                .map(|(oid, _, _, arr)| if array { *arr } else { *oid })
        })
}

impl UserTypes {
    /// Knows no type of the source's own: converts built-in types only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) what type `oid` is.
    pub fn insert(&mut self, oid: u32, name: impl Into<String>, kind: UserTypeKind) {
        self.types.insert(
            oid,
            UserType {
                name: name.into(),
                kind,
            },
        );
    }

    /// What is known of type `oid`.
    pub fn get(&self, oid: u32) -> Option<&UserType> {
        self.types.get(&oid)
    }

    /// Adds everything `other` knows; its entries win.
    pub fn extend(&mut self, other: UserTypes) {
        self.types.extend(other.types);
        self.names.extend(other.names);
    }

    /// Learns from a pgoutput Type message (type OID, namespace, name; pgoutput names a
    /// domain's base type and writes `pg_catalog` as an empty namespace). A domain over a
    /// built-in type is recognised by its base type's name; other types are only named (an
    /// enum cannot be told from a composite here: [`UserTypes::load`] knows). What the catalog
    /// told is kept.
    pub fn type_message(&mut self, oid: u32, namespace: &str, name: &str) {
        if self.types.contains_key(&oid) {
            return;
        }
        let builtin = if namespace.is_empty() || namespace == "pg_catalog" {
            builtin_oid(name).filter(|b| *b != oid)
        } else {
            None
        };
        match builtin {
            Some(base) => self.insert(
                oid,
                format!("domain over {name}"),
                UserTypeKind::Domain { base },
            ),
            None => {
                let qualified = if namespace.is_empty() {
                    name.to_string()
                } else {
                    format!("{namespace}.{name}")
                };
                self.names.insert(oid, qualified);
            }
        }
    }

    /// Reads the source's enums, domains and ranges (user-defined, OID 16384 and above) and
    /// the array types of each, from `pg_type` and `pg_range`.
    pub async fn load(client: &Client) -> cutover_core::Result<UserTypes> {
        let rows = client
            .query(
                "SELECT t.oid, format_type(t.oid, NULL), t.typtype::text, t.typbasetype,
                        t.typelem, coalesce(r.rngsubtype, 0::oid)
                   FROM pg_type t
                   LEFT JOIN pg_range r ON r.rngtypid = t.oid
                  WHERE t.oid >= 16384
                    AND (t.typtype IN ('e', 'd', 'r')
                         OR (t.typcategory = 'A' AND t.typelem <> 0 AND EXISTS (
                               SELECT 1 FROM pg_type e
                                WHERE e.oid = t.typelem AND e.typtype IN ('e', 'd', 'r'))))",
                &[],
            )
            .await
            .map_err(|e| classify(e, "cannot read the source's enum, domain and range types"))?;
        let mut types = UserTypes::new();
        for row in &rows {
            let oid: u32 = row.get(0);
            let name: String = row.get(1);
            let typtype: String = row.get(2);
            let (base, element, subtype): (u32, u32, u32) = (row.get(3), row.get(4), row.get(5));
            let kind = match typtype.as_str() {
                "e" => UserTypeKind::Enum,
                "d" => UserTypeKind::Domain { base },
                "r" => UserTypeKind::Range { subtype },
                _ => UserTypeKind::Array { element },
            };
            types.insert(oid, name, kind);
        }
        Ok(types)
    }

    /// The name of type `oid` for messages: its catalog or built-in name, else `type OID n`.
    pub fn type_name(&self, oid: u32) -> String {
        self.types
            .get(&oid)
            .map(|t| t.name.clone())
            .or_else(|| builtin_name(oid))
            .or_else(|| self.names.get(&oid).cloned())
            .unwrap_or_else(|| format!("type OID {oid}"))
    }

    /// Like [`to_binary`], for built-in types and the types listed here.
    pub fn to_binary(&self, type_oid: u32, text: &str) -> Result<Bytes, TextValueError> {
        let malformed = |reason: String| TextValueError::Malformed {
            type_name: self.type_name(type_oid),
            reason,
        };
        match self.resolve(type_oid)? {
            Resolved::Scalar(oid) => scalar(oid, text).map_err(malformed),
            Resolved::Enum => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Resolved::Array(element) => self.array(type_oid, element, text),
            Resolved::Range(subtype) => self.range(type_oid, subtype, text),
        }
    }

    /// Like [`UserTypes::to_binary`], for the bytes pgoutput sent: UTF-8 text, except that a
    /// `"char"` value above 127 arrives from PostgreSQL before 15 as its raw byte.
    pub fn raw_to_binary(&self, type_oid: u32, raw: &[u8]) -> Result<Bytes, TextValueError> {
        match std::str::from_utf8(raw) {
            Ok(text) => self.to_binary(type_oid, text),
            Err(_) if raw.len() == 1 && self.resolve(type_oid)? == Resolved::Scalar(CHAR) => {
                Ok(Bytes::copy_from_slice(raw))
            }
            Err(_) => Err(TextValueError::Malformed {
                type_name: self.type_name(type_oid),
                reason: "the text is not UTF-8".into(),
            }),
        }
    }

    /// Follows domains to the type whose text form a value has.
    fn resolve(&self, type_oid: u32) -> Result<Resolved, TextValueError> {
        let mut at = type_oid;
        for _ in 0..MAX_DOMAIN_DEPTH {
            if let Some((oid, ..)) = SCALARS.iter().find(|(oid, ..)| *oid == at) {
                return Ok(Resolved::Scalar(*oid));
            }
            if let Some((oid, ..)) = SCALARS.iter().find(|(_, _, array)| *array == at) {
                return Ok(Resolved::Array(*oid));
            }
            if let Some((_, _, subtype, _)) = RANGES.iter().find(|(oid, ..)| *oid == at) {
                return Ok(Resolved::Range(*subtype));
            }
            if let Some((oid, ..)) = RANGES.iter().find(|(.., array)| *array == at) {
                return Ok(Resolved::Array(*oid));
            }
            match self.types.get(&at).map(|t| t.kind) {
                Some(UserTypeKind::Enum) => return Ok(Resolved::Enum),
                Some(UserTypeKind::Domain { base }) => at = base,
                Some(UserTypeKind::Array { element }) => return Ok(Resolved::Array(element)),
                Some(UserTypeKind::Range { subtype }) => return Ok(Resolved::Range(subtype)),
                None => {
                    return Err(TextValueError::Unsupported {
                        type_name: self.type_name(at),
                    })
                }
            }
        }
        Err(TextValueError::Unsupported {
            type_name: format!(
                "{} (domains nested over {MAX_DOMAIN_DEPTH} deep)",
                self.type_name(type_oid)
            ),
        })
    }

    /// An array from `array_out`'s text: `{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={1,2}`.
    fn array(&self, type_oid: u32, element: u32, text: &str) -> Result<Bytes, TextValueError> {
        let malformed = |reason: String| TextValueError::Malformed {
            type_name: self.type_name(type_oid),
            reason,
        };
        // Only box separates its elements with `;` among the types converted here.
        let delimiter = if self.resolve(element) == Ok(Resolved::Scalar(BOX)) {
            b';'
        } else {
            b','
        };
        let (bounds, body) = match text.strip_prefix('[') {
            Some(_) => {
                let (decoration, body) = text.split_once('=').ok_or_else(|| {
                    malformed(format!("expected `=` after the bounds in {}", shown(text)))
                })?;
                (Some(parse_bounds(decoration).map_err(malformed)?), body)
            }
            None => (None, text),
        };
        let mut parser = ArrayText {
            s: body.as_bytes(),
            at: 0,
            delimiter,
            shape: Vec::new(),
            leaf_depth: None,
            items: Vec::new(),
        };
        parser.level(0).map_err(malformed)?;
        parser.skip_space();
        if parser.at != parser.s.len() {
            return Err(malformed(format!(
                "unexpected text after the array's closing brace in {}",
                shown(text)
            )));
        }
        let ArrayText { shape, items, .. } = parser;
        let shape: Vec<usize> = shape.into_iter().map(|len| len.unwrap_or(0)).collect();
        let dims: Vec<(usize, i32)> = if items.is_empty() {
            if bounds.is_some() {
                return Err(malformed("an empty array cannot have bounds".into()));
            }
            Vec::new()
        } else {
            match bounds {
                None => shape.iter().map(|len| (*len, 1)).collect(),
                Some(bounds) => {
                    let lengths: Vec<usize> = bounds.iter().map(|(len, _)| *len).collect();
                    if lengths != shape {
                        return Err(malformed(format!(
                            "the bounds in {} do not match its elements",
                            shown(text)
                        )));
                    }
                    bounds
                }
            }
        };
        let mut binary = Vec::with_capacity(items.len());
        for item in items {
            binary.push(match item {
                Some(t) => Some(self.to_binary(element, &t)?),
                None => None,
            });
        }
        encode::array_send(element, &dims, &binary).map_err(malformed)
    }

    /// A range from `range_out`'s text: `empty`, `[1,10)`, `(,5]`, `["a b","c")`.
    fn range(&self, type_oid: u32, subtype: u32, text: &str) -> Result<Bytes, TextValueError> {
        const EMPTY: u8 = 0x01;
        const LB_INC: u8 = 0x02;
        const UB_INC: u8 = 0x04;
        const LB_INF: u8 = 0x08;
        const UB_INF: u8 = 0x10;
        let malformed = |reason: String| TextValueError::Malformed {
            type_name: self.type_name(type_oid),
            reason,
        };
        if text == "empty" {
            return Ok(Bytes::from_static(&[EMPTY]));
        }
        let bad = || {
            malformed(format!(
                "expected a range such as [1,10) or empty, got {}",
                shown(text)
            ))
        };
        let mut flags = 0u8;
        let inner = match (text.as_bytes().first(), text.as_bytes().last()) {
            (Some(open @ (b'[' | b'(')), Some(close @ (b']' | b')'))) if text.len() >= 2 => {
                if *open == b'[' {
                    flags |= LB_INC;
                }
                if *close == b']' {
                    flags |= UB_INC;
                }
                &text[1..text.len() - 1]
            }
            _ => return Err(bad()),
        };
        let (lower, rest) = range_bound(inner).ok_or_else(bad)?;
        let rest = rest.strip_prefix(',').ok_or_else(bad)?;
        let (upper, rest) = range_bound(rest).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let mut b = BytesMut::new();
        let mut bounds = Vec::new();
        match lower {
            Some(l) => bounds.push(l),
            None => {
                flags = (flags & !LB_INC) | LB_INF;
            }
        }
        match upper {
            Some(u) => bounds.push(u),
            None => {
                flags = (flags & !UB_INC) | UB_INF;
            }
        }
        b.put_u8(flags);
        for bound in bounds {
            let value = self.to_binary(subtype, &bound)?;
            b.put_i32(i32::try_from(value.len()).map_err(|_| bad())?);
            b.put_slice(&value);
        }
        Ok(b.freeze())
    }
}

/// The text quoted for a message, cut after 60 characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{:?}...", &text[..at]),
        None => format!("{text:?}"),
    }
}

/// The bounds decoration of an array, `[1:2][0:3]`, as (length, lower bound) pairs.
fn parse_bounds(decoration: &str) -> Result<Vec<(usize, i32)>, String> {
    let bad = || {
        format!(
            "expected array bounds such as [0:1]=, got {}",
            shown(decoration)
        )
    };
    let mut out = Vec::new();
    let mut rest = decoration;
    while let Some(after) = rest.strip_prefix('[') {
        let (inside, next) = after.split_once(']').ok_or_else(bad)?;
        let (lower, upper) = match inside.split_once(':') {
            Some((l, u)) => (
                l.parse::<i32>().map_err(|_| bad())?,
                u.parse::<i32>().map_err(|_| bad())?,
            ),
            None => (1, inside.parse::<i32>().map_err(|_| bad())?),
        };
        let len = i64::from(upper) - i64::from(lower) + 1;
        out.push((usize::try_from(len).map_err(|_| bad())?, lower));
        rest = next;
    }
    if !rest.is_empty() || out.is_empty() || out.len() > MAX_ARRAY_DIMS {
        return Err(bad());
    }
    Ok(out)
}

/// A reader of `array_out`'s brace syntax, collecting elements in row-major order.
struct ArrayText<'a> {
    s: &'a [u8],
    at: usize,
    delimiter: u8,
    /// Elements per level, outermost first (inner levels are finished first, so a level's
    /// entry is set by whichever of its sub-arrays ends first; the others must match it).
    shape: Vec<Option<usize>>,
    /// The level scalars are at (every one must be at the same level).
    leaf_depth: Option<usize>,
    items: Vec<Option<String>>,
}

impl ArrayText<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// One `{...}` at `depth`.
    fn level(&mut self, depth: usize) -> Result<(), String> {
        if depth >= MAX_ARRAY_DIMS {
            return Err(format!("more than {MAX_ARRAY_DIMS} array dimensions"));
        }
        self.skip_space();
        if self.peek() != Some(b'{') {
            return Err(format!("expected `{{` at byte {}", self.at));
        }
        self.at += 1;
        let mut count = 0usize;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_space();
                if self.peek() == Some(b'{') {
                    if self.leaf_depth.is_some_and(|d| d <= depth) {
                        return Err("sub-arrays and elements are mixed on one level".into());
                    }
                    self.level(depth + 1)?;
                } else {
                    if self.leaf_depth.is_some_and(|d| d != depth) {
                        return Err("elements are at different depths".into());
                    }
                    self.leaf_depth = Some(depth);
                    let item = self.element()?;
                    self.items.push(item);
                }
                count += 1;
                self.skip_space();
                match self.peek() {
                    Some(c) if c == self.delimiter => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    _ => {
                        return Err(format!(
                            "expected `{}` or `}}` at byte {}",
                            self.delimiter as char, self.at
                        ))
                    }
                }
            }
        }
        if self.shape.len() <= depth {
            self.shape.resize(depth + 1, None);
        }
        match self.shape[depth] {
            Some(len) if len != count => {
                Err("sub-arrays of one level have different lengths".into())
            }
            Some(_) => Ok(()),
            None => {
                self.shape[depth] = Some(count);
                Ok(())
            }
        }
    }

    /// One element: quoted (`"a \"b\""`), `NULL`, or bare (up to the delimiter or `}`).
    fn element(&mut self) -> Result<Option<String>, String> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.at += 1;
            loop {
                match self.peek() {
                    None => return Err("a quoted array element is not closed".into()),
                    Some(b'"') => {
                        self.at += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = self
                            .s
                            .get(self.at + 1)
                            .copied()
                            .ok_or("a backslash ends the array")?;
                        out.push(c);
                        self.at += 2;
                    }
                    Some(c) => {
                        out.push(c);
                        self.at += 1;
                    }
                }
            }
        } else {
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err("the array ends inside an element".into()),
                    Some(c) if c == self.delimiter || c == b'}' => break,
                    Some(b'{' | b'"') => {
                        return Err(format!("unexpected `{{` or `\"` at byte {}", self.at))
                    }
                    Some(b'\\') => {
                        let c = self
                            .s
                            .get(self.at + 1)
                            .copied()
                            .ok_or("a backslash ends the array")?;
                        out.push(c);
                        escaped = true;
                        self.at += 2;
                    }
                    Some(c) => {
                        out.push(c);
                        self.at += 1;
                    }
                }
            }
            while out.last().is_some_and(|c| c.is_ascii_whitespace()) {
                out.pop();
            }
            if out.is_empty() {
                return Err(format!("an empty bare array element at byte {}", self.at));
            }
            if !escaped && out.eq_ignore_ascii_case(b"NULL") {
                return Ok(None);
            }
        }
        String::from_utf8(out)
            .map(Some)
            .map_err(|_| "an array element is not UTF-8".into())
    }
}

/// One bound of a range's text and the rest after it: `None` for an empty (infinite) bound.
/// Quoted bounds double `"` or escape with `\`.
fn range_bound(s: &str) -> Option<(Option<String>, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    let mut quoted = false;
    while at < b.len() {
        match b[at] {
            b'"' if quoted && b.get(at + 1) == Some(&b'"') => {
                out.push(b'"');
                at += 2;
            }
            b'"' => {
                quoted = !quoted;
                at += 1;
            }
            b'\\' => {
                out.push(*b.get(at + 1)?);
                at += 2;
            }
            b',' if !quoted => break,
            c => {
                out.push(c);
                at += 1;
            }
        }
    }
    if quoted {
        return None;
    }
    let value = if at == 0 {
        None
    } else {
        Some(String::from_utf8(out).ok()?)
    };
    Some((value, &s[at..]))
}

/// A built-in scalar type's binary form; the error is the reason.
fn scalar(oid: u32, t: &str) -> Result<Bytes, String> {
    fn int<T: std::str::FromStr>(t: &str, what: &str) -> Result<T, String> {
        t.parse()
            .map_err(|_| format!("expected {what}, got {}", shown(t)))
    }
    let be = |b: &[u8]| Bytes::copy_from_slice(b);
    Ok(match oid {
        BOOL => match t {
            "t" | "true" => be(&[1]),
            "f" | "false" => be(&[0]),
            _ => return Err(format!("expected t or f, got {}", shown(t))),
        },
        INT2 => be(&int::<i16>(t, "a smallint")?.to_be_bytes()),
        INT4 => be(&int::<i32>(t, "an integer")?.to_be_bytes()),
        INT8 => be(&int::<i64>(t, "a bigint")?.to_be_bytes()),
        OID | XID | CID => be(&int::<u32>(t, "an unsigned 32-bit number")?.to_be_bytes()),
        XID8 => be(&int::<u64>(t, "an unsigned 64-bit number")?.to_be_bytes()),
        FLOAT4 => be(&float4(t)?.to_be_bytes()),
        FLOAT8 => be(&float8(t)?.to_be_bytes()),
        NUMERIC => encode::numeric(t)?,
        MONEY => be(&money(t)?.to_be_bytes()),
        TEXT | VARCHAR | BPCHAR | NAME | XML | JSON => be(t.as_bytes()),
        JSONB => {
            let mut b = BytesMut::with_capacity(t.len() + 1);
            b.put_u8(1);
            b.put_slice(t.as_bytes());
            b.freeze()
        }
        CHAR => be(&[char_byte(t)?]),
        BYTEA => Bytes::from(bytea(t)?),
        UUID => be(&encode::uuid(t)?),
        DATE => be(&date(t)?.to_be_bytes()),
        TIME => {
            let micros = encode::time(t)?;
            if !(0..=MICROS_PER_DAY).contains(&micros) {
                return Err(format!("time {} is out of range", shown(t)));
            }
            be(&micros.to_be_bytes())
        }
        TIMETZ => {
            let (micros, east) = encode::time_tz(t)?;
            let mut b = BytesMut::with_capacity(12);
            b.put_i64(micros);
            // PostgreSQL keeps the zone as seconds west of UTC.
            b.put_i32(-east);
            b.freeze()
        }
        TIMESTAMP | TIMESTAMPTZ => be(&timestamp(t, oid == TIMESTAMPTZ)?.to_be_bytes()),
        INTERVAL => {
            let (months, days, micros) = interval(t)?;
            let mut b = BytesMut::with_capacity(16);
            b.put_i64(micros);
            b.put_i32(days);
            b.put_i32(months);
            b.freeze()
        }
        INET | CIDR => encode::inet(t, oid == CIDR)?,
        MACADDR => be(&encode::macaddr(t)?),
        MACADDR8 => be(&macaddr8(t)?),
        BIT | VARBIT => bits(t)?,
        PG_LSN => be(&lsn(t)?.to_be_bytes()),
        TID => {
            let inner = t
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','));
            let (block, offset) =
                inner.ok_or_else(|| format!("expected (block,offset), got {}", shown(t)))?;
            let mut b = BytesMut::with_capacity(6);
            b.put_u32(int(block, "a block number")?);
            b.put_u16(int(offset, "a tuple offset")?);
            b.freeze()
        }
        POINT | LSEG | BOX | LINE | CIRCLE | PATH | POLYGON => geometric(oid, t)?,
        // Every type in SCALARS has an arm above.
        other => return Err(format!("type OID {other} has no conversion")),
    })
}

fn float8(t: &str) -> Result<f64, String> {
    match t {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => t
            .parse()
            .map_err(|_| format!("expected a double precision number, got {}", shown(t))),
    }
}

/// Parsed as `f32` directly: through `f64` a decimal could round twice.
fn float4(t: &str) -> Result<f32, String> {
    match t {
        "NaN" => Ok(f32::NAN),
        "Infinity" => Ok(f32::INFINITY),
        "-Infinity" => Ok(f32::NEG_INFINITY),
        _ => t
            .parse()
            .map_err(|_| format!("expected a real number, got {}", shown(t))),
    }
}

/// money as the C locale prints it: `$1,234.56`, `-$1,234.56` (two fraction digits always).
fn money(t: &str) -> Result<i64, String> {
    let digits_after_point = t.rsplit_once('.').map(|(_, f)| f.len());
    if digits_after_point != Some(2)
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'$' | b',' | b'.' | b'-'))
    {
        return Err(format!(
            "expected money as the C locale prints it ($1,234.56), got {} (set lc_monetary to C on the source)",
            shown(t)
        ));
    }
    encode::money(t)
}

/// `"char"`: one byte; PostgreSQL prints NUL as nothing and (from 15) a byte above 127 as
/// `\ooo`.
fn char_byte(t: &str) -> Result<u8, String> {
    let b = t.as_bytes();
    match b {
        [] => Ok(0),
        [c] => Ok(*c),
        [b'\\', d @ ..]
            if d.len() == 3 && d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)) =>
        {
            Ok(d.iter().fold(0u8, |n, c| (n << 3) | (c - b'0')))
        }
        _ => Err(format!("expected one character or \\ooo, got {}", shown(t))),
    }
}

/// bytea in hex (`\x0aff`) or escape (`a\\\001`) output.
fn bytea(t: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = t.strip_prefix("\\x") {
        let hex = hex.as_bytes();
        if hex.len() % 2 != 0 {
            return Err("expected an even number of hex digits after \\x".into());
        }
        return hex
            .chunks(2)
            .map(|pair| {
                let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
                match (nibble(pair[0]), nibble(pair[1])) {
                    (Some(h), Some(l)) => Ok((h << 4) | l),
                    _ => Err("expected hex digits after \\x".to_string()),
                }
            })
            .collect();
    }
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut at = 0;
    while at < b.len() {
        if b[at] != b'\\' {
            out.push(b[at]);
            at += 1;
        } else if b.get(at + 1) == Some(&b'\\') {
            out.push(b'\\');
            at += 2;
        } else {
            let octal = b
                .get(at + 1..at + 4)
                .filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
            let d = octal.ok_or("expected \\\\ or \\ooo in escaped bytea")?;
            out.push(d.iter().fold(0u8, |n, c| (n << 3) | (c - b'0')));
            at += 4;
        }
    }
    Ok(out)
}

/// Text with a ` BC` suffix rewritten to a signed astronomical year (`0044-03-15 BC` is
/// `-43-03-15`), as [`encode::date`] reads dates.
fn astronomical(t: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    let Some(ad) = t.strip_suffix(" BC") else {
        return Ok(t.into());
    };
    let (year, rest) = ad
        .split_once('-')
        .filter(|(y, _)| !y.is_empty() && y.bytes().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| format!("expected a BC date YYYY-MM-DD BC, got {}", shown(t)))?;
    let year: i64 = year
        .parse()
        .map_err(|_| format!("year out of range in {}", shown(t)))?;
    Ok(format!("{}-{rest}", 1 - year).into())
}

/// Days since 2000-01-01: `2024-05-01`, `0044-03-15 BC`, `infinity`.
fn date(t: &str) -> Result<i32, String> {
    encode::date(&astronomical(t)?)
}

/// Microseconds since 2000-01-01 of `2024-05-01 12:30:00.25[+05:30][ BC]` or an infinity.
fn timestamp(t: &str, with_zone: bool) -> Result<i64, String> {
    encode::timestamp(&astronomical(t)?, with_zone)
}

/// Months, days and microseconds of an interval in the postgres style:
/// `1 year 2 mons -3 days +04:05:06.789`, `-00:00:01`, `00:00:00`.
fn interval(t: &str) -> Result<(i32, i32, i64), String> {
    let bad = || {
        format!(
            "expected an interval as IntervalStyle postgres prints it (1 year 2 mons 3 days 04:05:06), got {}",
            shown(t)
        )
    };
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i128);
    let mut tokens = t.split(' ').filter(|s| !s.is_empty());
    let mut any = false;
    while let Some(token) = tokens.next() {
        any = true;
        if token.contains(':') {
            micros = interval_time(token).ok_or_else(bad)?;
            if tokens.next().is_some() {
                return Err(bad());
            }
            break;
        }
        let n: i64 = token.parse().map_err(|_| bad())?;
        let unit = tokens.next().ok_or_else(bad)?;
        let (field, scale) = match unit {
            "year" | "years" => (&mut months, 12),
            "mon" | "mons" => (&mut months, 1),
            "day" | "days" => (&mut days, 1),
            _ => return Err(bad()),
        };
        *field = n
            .checked_mul(scale)
            .and_then(|v| field.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !any {
        return Err(bad());
    }
    Ok((
        i32::try_from(months).map_err(|_| bad())?,
        i32::try_from(days).map_err(|_| bad())?,
        i64::try_from(micros).map_err(|_| bad())?,
    ))
}

/// Microseconds of an interval's time part, `[+-]H+:MM:SS[.ffffff]`.
fn interval_time(token: &str) -> Option<i128> {
    let (negative, body) = match token.as_bytes().first()? {
        b'-' => (true, &token[1..]),
        b'+' => (false, &token[1..]),
        _ => (false, token),
    };
    let mut parts = body.splitn(3, ':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let (s, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !digits(h)
        || !digits(m)
        || !digits(s)
        || frac.len() > 6
        || !(frac.is_empty() || digits(frac))
    {
        return None;
    }
    let (h, m, s): (i128, i128, i128) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    if m >= 60 || s >= 60 || h > i128::from(i64::MAX) {
        return None;
    }
    let frac: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + frac;
    Some(if negative { -total } else { total })
}

fn macaddr8(t: &str) -> Result<[u8; 8], String> {
    let bad = || {
        format!(
            "expected a macaddr8 such as 08:00:2b:01:02:03:04:05, got {}",
            shown(t)
        )
    };
    let mut out = [0u8; 8];
    let parts: Vec<&str> = t.split([':', '-']).collect();
    if parts.len() != 8 {
        return Err(bad());
    }
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// bit and varbit: the length in bits, then the bits packed from the high bit of the first
/// byte, the last byte padded with zeros.
fn bits(t: &str) -> Result<Bytes, String> {
    if !t.bytes().all(|c| c == b'0' || c == b'1') {
        return Err(format!("expected a string of 0 and 1, got {}", shown(t)));
    }
    let len = i32::try_from(t.len()).map_err(|_| "bit string too long".to_string())?;
    let mut b = BytesMut::with_capacity(4 + t.len().div_ceil(8));
    b.put_i32(len);
    for chunk in t.as_bytes().chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |n, (i, c)| n | (u8::from(*c == b'1') << (7 - i)));
        b.put_u8(byte);
    }
    Ok(b.freeze())
}

/// pg_lsn: `16/B374D848`.
fn lsn(t: &str) -> Result<u64, String> {
    let bad = || format!("expected an LSN such as 16/B374D848, got {}", shown(t));
    let (hi, lo) = t.split_once('/').ok_or_else(bad)?;
    let half = |h: &str| {
        if h.is_empty() || h.len() > 8 {
            None
        } else {
            u32::from_str_radix(h, 16).ok()
        }
    };
    match (half(hi), half(lo)) {
        (Some(hi), Some(lo)) => Ok((u64::from(hi) << 32) | u64::from(lo)),
        _ => Err(bad()),
    }
}

/// The geometric types: their float8 coordinates in print order (which is their send order),
/// with path's open/closed flag and the point count of path and polygon first.
fn geometric(oid: u32, t: &str) -> Result<Bytes, String> {
    let (shape, count) = match oid {
        POINT => ("a point (x,y)", Some(2)),
        LSEG => ("a line segment [(x1,y1),(x2,y2)]", Some(4)),
        BOX => ("a box (x1,y1),(x2,y2)", Some(4)),
        LINE => ("a line {A,B,C}", Some(3)),
        CIRCLE => ("a circle <(x,y),r>", Some(3)),
        PATH => ("a path [(x1,y1),...] or ((x1,y1),...)", None),
        _ => ("a polygon ((x1,y1),...)", None),
    };
    let bad = || format!("expected {shape}, got {}", shown(t));
    let expected_open = match oid {
        POINT | BOX => b'(',
        LSEG => b'[',
        LINE => b'{',
        CIRCLE => b'<',
        PATH => *t
            .as_bytes()
            .first()
            .filter(|c| matches!(c, b'[' | b'('))
            .ok_or_else(bad)?,
        _ => b'(',
    };
    if t.as_bytes().first() != Some(&expected_open) {
        return Err(bad());
    }
    let numbers = t
        .split(|c: char| "()[]{}<>,".contains(c))
        .filter(|s| !s.is_empty())
        .map(|s| float8(s).map_err(|_| bad()))
        .collect::<Result<Vec<f64>, String>>()?;
    match count {
        Some(n) if numbers.len() != n => return Err(bad()),
        None if numbers.is_empty() || numbers.len() % 2 != 0 => return Err(bad()),
        _ => {}
    }
    let mut b = BytesMut::with_capacity(5 + numbers.len() * 8);
    if oid == PATH {
        b.put_u8(u8::from(expected_open == b'('));
    }
    if count.is_none() {
        b.put_i32(i32::try_from(numbers.len() / 2).map_err(|_| bad())?);
    }
    for n in numbers {
        b.put_f64(n);
    }
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|c| format!("{c:02x}")).collect()
    }

    fn ok(oid: u32, t: &str) -> String {
        hex(&to_binary(oid, t).unwrap_or_else(|e| panic!("{oid} {t:?}: {e}")))
    }

    fn malformed(oid: u32, t: &str) -> String {
        match to_binary(oid, t) {
            Err(e @ TextValueError::Malformed { .. }) => e.to_string(),
            other => panic!("{oid} {t:?}: expected a malformed-text error, got {other:?}"),
        }
    }

    #[test]
    fn the_tables_agree_with_datum_on_array_types() {
        for (oid, name, array) in SCALARS {
            if let Some(element) = cutover_core::datum::array_element_oid(*array) {
                assert_eq!(element, *oid, "{name}");
            }
            assert_eq!(builtin_oid(name), Some(*oid));
            assert_eq!(builtin_oid(&format!("_{name}")), Some(*array));
        }
        for array in 0..6000 {
            if let Some(element) = cutover_core::datum::array_element_oid(array) {
                assert!(
                    SCALARS.iter().any(|(o, _, a)| *o == element && *a == array),
                    "datum's array {array} of {element} is missing here"
                );
            }
        }
    }

    #[test]
    fn scalars_convert_to_their_send_format() {
        assert_eq!(ok(BOOL, "t"), "01");
        assert_eq!(ok(INT2, "-2"), "fffe");
        assert_eq!(ok(INT8, "7"), "0000000000000007");
        assert_eq!(ok(OID, "4294967295"), "ffffffff");
        assert_eq!(ok(FLOAT8, "-0"), "8000000000000000");
        assert_eq!(ok(FLOAT8, "NaN"), "7ff8000000000000");
        assert_eq!(ok(FLOAT4, "0.1"), hex(&0.1f32.to_be_bytes()));
        assert_eq!(ok(NUMERIC, "-12.50"), "0002000040000002000c1388");
        assert_eq!(ok(CHAR, ""), "00");
        assert_eq!(ok(CHAR, "\\303"), "c3");
        assert_eq!(ok(BYTEA, "\\x0aFF"), "0aff");
        assert_eq!(ok(BYTEA, "a\\\\\\001"), "615c01");
        assert_eq!(ok(JSONB, "{}"), "017b7d");
        assert_eq!(ok(DATE, "2000-01-02"), "00000001");
        assert_eq!(ok(DATE, "0001-12-31 BC"), hex(&(-730_120i32).to_be_bytes()));
        assert_eq!(
            ok(INTERVAL, "-00:00:01"),
            "fffffffffff0bdc00000000000000000"
        );
        assert_eq!(
            ok(INTERVAL, "1 year 2 mons -3 days +04:05:06.789"),
            format!("{}fffffffd0000000e", hex(&14_706_789_000i64.to_be_bytes()))
        );
        assert_eq!(ok(BIT, "101000001"), "00000009a080");
        assert_eq!(ok(MONEY, "-$1,234.50"), hex(&(-123_450i64).to_be_bytes()));
        assert_eq!(ok(PG_LSN, "16/B374D848"), "00000016b374d848");
        assert_eq!(ok(TID, "(1,2)"), "000000010002");
    }

    #[test]
    fn arrays_keep_shape_bounds_nulls_and_quoting() {
        let int4 = |v: i32| hex(&v.to_be_bytes());
        assert_eq!(ok(1007, "{}"), "0000000000000000".to_string() + "00000017");
        assert_eq!(
            ok(1007, "[0:1]={1,NULL}"),
            format!(
                "{}{}{}{}{}{}{}",
                int4(1),
                int4(1),
                int4(23),
                int4(2),
                int4(0),
                "0000000400000001",
                "ffffffff"
            )
        );
        let text = to_binary(1009, r#"{"a b","c\"d",NULL,"NULL","",x}"#).unwrap();
        let d = cutover_core::datum::decode(1009, &text).unwrap();
        assert_eq!(
            format!("{d:?}"),
            r#"Array([Text("a b"), Text("c\"d"), Null, Text("NULL"), Text(""), Text("x")])"#
        );
        let two = to_binary(1007, "{{1,2},{3,4}}").unwrap();
        assert_eq!(&two[..4], &2i32.to_be_bytes());
    }

    #[test]
    fn ranges_carry_flags_and_bounds() {
        assert_eq!(ok(3904, "empty"), "01");
        assert_eq!(ok(3904, "[1,10)"), "020000000400000001000000040000000a");
        assert_eq!(ok(3904, "(,5]"), "0c0000000400000005");
        assert_eq!(ok(3904, "(,)"), "18");
    }

    #[test]
    fn enums_and_domains_convert_through_user_types() {
        let mut types = UserTypes::new();
        types.insert(16389, "mood", UserTypeKind::Enum);
        types.insert(16388, "mood[]", UserTypeKind::Array { element: 16389 });
        types.type_message(16385, "", "int4");
        assert_eq!(
            types.to_binary(16389, "happy ish").unwrap(),
            &b"happy ish"[..]
        );
        assert_eq!(
            types.to_binary(16385, "5").unwrap(),
            &5i32.to_be_bytes()[..]
        );
        let arr = types.to_binary(16388, "{sad}").unwrap();
        assert_eq!(&arr[8..12], &16389u32.to_be_bytes());
        // A user type the Type message cannot describe is refused with its name.
        types.type_message(16400, "public", "complex");
        assert_eq!(
            types.to_binary(16400, "(1,2)"),
            Err(TextValueError::Unsupported {
                type_name: "public.complex".into()
            })
        );
    }

    #[test]
    fn unknown_types_are_unsupported_and_named() {
        let e = to_binary(1033, "postgres=arwdDxt/postgres").unwrap_err();
        assert_eq!(
            e,
            TextValueError::Unsupported {
                type_name: "type OID 1033".into()
            }
        );
        assert!(e.to_string().contains("type OID 1033"), "{e}");
        let mut types = UserTypes::new();
        types.insert(20000, "loop", UserTypeKind::Domain { base: 20000 });
        assert!(matches!(
            types.to_binary(20000, "x"),
            Err(TextValueError::Unsupported { .. })
        ));
    }

    #[test]
    fn malformed_text_is_a_clear_error() {
        assert!(malformed(INT4, "12x").contains("expected an integer"));
        assert!(malformed(INT2, "70000").contains("int2"));
        assert!(malformed(BOOL, "yes").contains("expected t or f"));
        assert!(malformed(FLOAT8, "1,5").contains("double precision"));
        assert!(malformed(NUMERIC, "1.2.3").contains("decimal"));
        assert!(malformed(MONEY, "1.234,50 EUR").contains("lc_monetary"));
        assert!(malformed(DATE, "05/01/2024").contains("expected a date"));
        assert!(malformed(DATE, "x-01-01 BC").contains("BC date"));
        assert!(malformed(TIMESTAMPTZ, "Wed May 01 12:00:00 2024 UTC").contains("timestamptz"));
        assert!(malformed(INTERVAL, "P1Y2M").contains("IntervalStyle"));
        assert!(malformed(INTERVAL, "1 fortnight").contains("IntervalStyle"));
        assert!(malformed(INTERVAL, "00:61:00").contains("IntervalStyle"));
        assert!(malformed(BYTEA, "\\x0").contains("even number"));
        assert!(malformed(BYTEA, "\\9").contains("escaped bytea"));
        assert!(malformed(CHAR, "ab").contains("one character"));
        assert!(malformed(UUID, "nope").contains("UUID"));
        assert!(malformed(1007, "{1,2").contains("int4[]"));
        assert!(malformed(1007, "{{1},{2,3}}").contains("different lengths"));
        assert!(malformed(1007, "{{1},2}").contains("depths"));
        assert!(malformed(1007, "[1:3]={1,2}").contains("do not match"));
        assert!(malformed(1007, "{1,x}").contains("expected an integer"));
        assert!(malformed(3904, "[1,").contains("range"));
        assert!(malformed(POINT, "(1)").contains("point"));
        assert!(malformed(TIME, "25:00:00").contains("time"));
        let long = "9".repeat(500);
        assert!(
            malformed(INT4, &long).len() < 200,
            "long values are cut in messages"
        );
        assert!(matches!(
            UserTypes::new().raw_to_binary(TEXT, &[0xff]),
            Err(TextValueError::Malformed { .. })
        ));
        assert_eq!(
            UserTypes::new().raw_to_binary(CHAR, &[0xe9]).unwrap(),
            &[0xe9][..]
        );
    }

    proptest! {
        #[test]
        fn garbage_text_never_panics(
            pick in 0usize..(SCALARS.len() * 2 + RANGES.len()),
            text in "\\PC{0,40}",
        ) {
            let oid = if pick < SCALARS.len() {
                SCALARS[pick].0
            } else if pick < SCALARS.len() * 2 {
                SCALARS[pick - SCALARS.len()].2
            } else {
                RANGES[pick - SCALARS.len() * 2].0
            };
            let _ = to_binary(oid, &text);
        }

        #[test]
        fn structured_garbage_never_panics(
            pick in 0usize..SCALARS.len(),
            text in "[-+0-9:.,{}()\\[\\]\"\\\\ NULBCxe]{0,30}",
        ) {
            let _ = to_binary(SCALARS[pick].0, &text);
            let _ = to_binary(SCALARS[pick].2, &text);
        }
    }
}
