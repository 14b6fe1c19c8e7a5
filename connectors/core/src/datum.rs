//! Typed column values, decoded from PostgreSQL's binary send format, for targets that are not
//! PostgreSQL (message envelopes, MongoDB documents).
//!
//! Values travel through the pipeline as raw binary ([`crate::Value::Binary`]); only sinks that
//! need a typed value decode it, with [`decode`]. Decoding checks every length and never panics
//! on bad bytes: it returns a [`DecodeError`] naming the type.
//!
//! Text renderings ([`Datum::render`] and the JSON form) follow ISO 8601 for dates and times and
//! PostgreSQL's own output for numbers, so a consumer can parse them with any standard library.

use std::borrow::Cow;
use std::fmt::Write as _;

/// PostgreSQL epoch (2000-01-01) in days after the Unix epoch (1970-01-01).
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Built-in type OIDs that decode to a typed [`Datum`].
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// A bad binary value: which type, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode a value of type OID {type_oid}: {reason}")]
pub struct DecodeError {
    pub type_oid: u32,
    pub reason: String,
}

/// One decoded column value. Borrowed variants point into the binary value they came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum<'a> {
    Null,
    Bool(bool),
    /// int2, int4, int8 and oid.
    Int(i64),
    Float4(f32),
    Float8(f64),
    /// numeric as exact decimal text (`-12.50`, `NaN`, `Infinity`, `-Infinity`).
    Numeric(String),
    /// money in minor units (cents for two-digit currencies).
    Money(i64),
    /// text, varchar, char, name, xml, inet, cidr, macaddr.
    Text(Cow<'a, str>),
    Bytes(&'a [u8]),
    Uuid([u8; 16]),
    /// Days since 2000-01-01; `i32::MAX` / `i32::MIN` are `infinity` / `-infinity`.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since midnight and the zone's offset east of UTC, in seconds.
    TimeTz {
        micros: i64,
        offset_secs: i32,
    },
    /// Microseconds since 2000-01-01 00:00 (no zone); `i64::MAX` / `i64::MIN` are infinities.
    Timestamp(i64),
    /// Microseconds since 2000-01-01 00:00 UTC; `i64::MAX` / `i64::MIN` are infinities.
    TimestampTz(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    /// json or jsonb document text.
    Json(&'a str),
    /// An array, one level per dimension (a 2-D array is an array of arrays).
    Array(Vec<Datum<'a>>),
    /// A type without a typed decoding here (enums, ranges, composites, extension types): its
    /// binary send format, kept as is.
    Opaque(&'a [u8]),
}

fn err(type_oid: u32, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        type_oid,
        reason: reason.into(),
    }
}

fn fixed<const N: usize>(type_oid: u32, b: &[u8]) -> Result<[u8; N], DecodeError> {
    b.try_into()
        .map_err(|_| err(type_oid, format!("expected {N} bytes, got {}", b.len())))
}

fn utf8(type_oid: u32, b: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| err(type_oid, "text is not valid UTF-8"))
}

/// Decodes one value of type `type_oid` from its binary send format.
pub fn decode(type_oid: u32, b: &[u8]) -> Result<Datum<'_>, DecodeError> {
    use oid::*;
    Ok(match type_oid {
        BOOL => Datum::Bool(fixed::<1>(type_oid, b)?[0] != 0),
        INT2 => Datum::Int(i16::from_be_bytes(fixed(type_oid, b)?).into()),
        INT4 => Datum::Int(i32::from_be_bytes(fixed(type_oid, b)?).into()),
        OID => Datum::Int(u32::from_be_bytes(fixed(type_oid, b)?).into()),
        INT8 => Datum::Int(i64::from_be_bytes(fixed(type_oid, b)?)),
        FLOAT4 => Datum::Float4(f32::from_be_bytes(fixed(type_oid, b)?)),
        FLOAT8 => Datum::Float8(f64::from_be_bytes(fixed(type_oid, b)?)),
        MONEY => Datum::Money(i64::from_be_bytes(fixed(type_oid, b)?)),
        NUMERIC => Datum::Numeric(decode_numeric(b)?),
        TEXT | VARCHAR | BPCHAR | NAME | CHAR | XML => {
            Datum::Text(Cow::Borrowed(utf8(type_oid, b)?))
        }
        BYTEA => Datum::Bytes(b),
        UUID => Datum::Uuid(fixed(type_oid, b)?),
        DATE => Datum::Date(i32::from_be_bytes(fixed(type_oid, b)?)),
        TIME => Datum::Time(i64::from_be_bytes(fixed(type_oid, b)?)),
        TIMETZ => {
            let raw: [u8; 12] = fixed(type_oid, b)?;
            let micros = i64::from_be_bytes(raw[..8].try_into().expect("8 of 12 bytes"));
            // PostgreSQL stores the zone as seconds WEST of UTC.
            let west = i32::from_be_bytes(raw[8..].try_into().expect("4 of 12 bytes"));
            // PostgreSQL keeps zone offsets within +-15:59:59.
            if west.unsigned_abs() >= 16 * 3600 {
                return Err(err(
                    type_oid,
                    format!("time zone offset {west} s is out of range"),
                ));
            }
            Datum::TimeTz {
                micros,
                offset_secs: -west,
            }
        }
        TIMESTAMP => Datum::Timestamp(i64::from_be_bytes(fixed(type_oid, b)?)),
        TIMESTAMPTZ => Datum::TimestampTz(i64::from_be_bytes(fixed(type_oid, b)?)),
        INTERVAL => {
            let raw: [u8; 16] = fixed(type_oid, b)?;
            Datum::Interval {
                micros: i64::from_be_bytes(raw[..8].try_into().expect("8 of 16 bytes")),
                days: i32::from_be_bytes(raw[8..12].try_into().expect("4 of 16 bytes")),
                months: i32::from_be_bytes(raw[12..].try_into().expect("4 of 16 bytes")),
            }
        }
        JSON => Datum::Json(utf8(type_oid, b)?),
        JSONB => match b.split_first() {
            Some((1, text)) => Datum::Json(utf8(type_oid, text)?),
            _ => return Err(err(type_oid, "unknown jsonb version")),
        },
        INET | CIDR => Datum::Text(Cow::Owned(decode_inet(type_oid, b)?)),
        MACADDR => {
            let m: [u8; 6] = fixed(type_oid, b)?;
            Datum::Text(Cow::Owned(format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )))
        }
        _ => match decode_array(type_oid, b) {
            Some(array) => array?,
            None => Datum::Opaque(b),
        },
    })
}

/// Element OID of a built-in array type, by array OID; `None` for other types.
pub fn array_element_oid(type_oid: u32) -> Option<u32> {
    array_element(type_oid)
}

/// Whether values of this type decode to a value with a text form ([`Datum::render`]) that
/// the JSON envelope writes as a string.
pub fn has_text_form(type_oid: u32) -> bool {
    use oid::*;
    matches!(
        type_oid,
        NUMERIC
            | MONEY
            | TEXT
            | VARCHAR
            | BPCHAR
            | NAME
            | CHAR
            | XML
            | UUID
            | DATE
            | TIME
            | TIMETZ
            | TIMESTAMP
            | TIMESTAMPTZ
            | INTERVAL
            | INET
            | CIDR
            | MACADDR
            | FLOAT4
            | FLOAT8
    )
}

/// Element OID of the built-in array types, by array OID.
fn array_element(type_oid: u32) -> Option<u32> {
    use oid::*;
    Some(match type_oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1009 => TEXT,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1028 => OID,
        1040 => MACADDR,
        1041 => INET,
        651 => CIDR,
        791 => MONEY,
        1115 => TIMESTAMP,
        1182 => DATE,
        1183 => TIME,
        1185 => TIMESTAMPTZ,
        1187 => INTERVAL,
        1231 => NUMERIC,
        1270 => TIMETZ,
        199 => JSON,
        143 => XML,
        2951 => UUID,
        3807 => JSONB,
        _ => return None,
    })
}

/// Decodes a built-in array type; `None` when `type_oid` is not one.
fn decode_array(type_oid: u32, b: &[u8]) -> Option<Result<Datum<'_>, DecodeError>> {
    let element = array_element(type_oid)?;
    Some((|| {
        let mut r = Reader { b, type_oid };
        let ndim = r.i32()?;
        let _has_nulls = r.i32()?;
        let sent_element = r.u32()?;
        if sent_element != element {
            return Err(err(
                type_oid,
                format!("array of OID {sent_element}, expected {element}"),
            ));
        }
        if !(0..=6).contains(&ndim) {
            return Err(err(type_oid, format!("{ndim} array dimensions")));
        }
        let mut dims = Vec::with_capacity(ndim as usize);
        for _ in 0..ndim {
            let len = r.i32()?;
            let _lower = r.i32()?;
            if len < 0 {
                return Err(err(type_oid, "negative array dimension"));
            }
            dims.push(len as usize);
        }
        if ndim == 0 {
            return Ok(Datum::Array(Vec::new()));
        }
        let total = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        if total.is_none_or(|t| t > b.len()) {
            return Err(err(type_oid, "array larger than its bytes"));
        }
        let mut flat = Vec::with_capacity(total.unwrap_or(0));
        for _ in 0..total.unwrap_or(0) {
            let len = r.i32()?;
            flat.push(if len < 0 {
                Datum::Null
            } else {
                decode(element, r.take(len as usize)?)?
            });
        }
        if !r.b.is_empty() {
            return Err(err(type_oid, "bytes after the last array element"));
        }
        Ok(nest(flat, &dims))
    })())
}

/// Folds a flat element list into nested arrays, innermost dimension last.
fn nest<'a>(flat: Vec<Datum<'a>>, dims: &[usize]) -> Datum<'a> {
    let mut level = flat;
    for &d in dims[1..].iter().rev() {
        let mut grouped = Vec::with_capacity(level.len() / d.max(1));
        let mut it = level.into_iter().peekable();
        while it.peek().is_some() {
            grouped.push(Datum::Array(it.by_ref().take(d).collect()));
        }
        level = grouped;
    }
    Datum::Array(level)
}

struct Reader<'a> {
    b: &'a [u8],
    type_oid: u32,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(err(self.type_oid, "value ends early"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
}

/// numeric's binary form (base-10000 digits with a weight and a display scale) as decimal text.
fn decode_numeric(b: &[u8]) -> Result<String, DecodeError> {
    let mut r = Reader {
        b,
        type_oid: oid::NUMERIC,
    };
    let ndigits = r.i16()?;
    let weight = i32::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = usize::from(r.u16()?);
    let mut digits = Vec::with_capacity(ndigits.max(0) as usize);
    for _ in 0..ndigits.max(0) {
        let d = r.i16()?;
        if !(0..10_000).contains(&d) {
            return Err(err(oid::NUMERIC, format!("digit {d} out of range")));
        }
        digits.push(d);
    }
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(err(oid::NUMERIC, format!("sign {other:#x}"))),
    }
    let digit = |k: i32| -> i16 {
        if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        }
    };
    let mut s = String::with_capacity(digits.len() * 4 + dscale + 2);
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                let _ = write!(s, "{}", digit(k));
            } else {
                let _ = write!(s, "{:04}", digit(k));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut k = weight + 1;
        while s.len() - start < dscale {
            let _ = write!(s, "{:04}", digit(k));
            k += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

fn decode_inet(type_oid: u32, b: &[u8]) -> Result<String, DecodeError> {
    let mut r = Reader { b, type_oid };
    let head = r.take(4)?;
    let (family, bits, is_cidr, len) = (head[0], head[1], head[2], usize::from(head[3]));
    let addr = r.take(len)?;
    let text = match (family, len) {
        (2, 4) => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
        (3, 16) => {
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).expect("16 bytes")).to_string()
        }
        _ => {
            return Err(err(
                type_oid,
                format!("address family {family} of {len} bytes"),
            ))
        }
    };
    let full = if family == 2 { 32 } else { 128 };
    Ok(if is_cidr != 0 || bits != full {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// Civil date (proleptic Gregorian, astronomical year) from days since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn push_date(s: &mut String, days_since_2000: i64) {
    let (y, m, d) = civil(days_since_2000 + PG_EPOCH_DAYS);
    if (0..=9999).contains(&y) {
        let _ = write!(s, "{y:04}-{m:02}-{d:02}");
    } else {
        let _ = write!(s, "{y:+05}-{m:02}-{d:02}");
    }
}

/// `HH:MM:SS` plus a fraction without trailing zeros.
fn push_time(s: &mut String, micros: i64) {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let _ = write!(
        s,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    push_fraction(s, frac);
}

fn push_fraction(s: &mut String, frac_micros: i64) {
    if frac_micros != 0 {
        let mut f = format!("{frac_micros:06}");
        while f.ends_with('0') {
            f.pop();
        }
        s.push('.');
        s.push_str(&f);
    }
}

fn push_timestamp(s: &mut String, micros: i64) {
    push_date(s, micros.div_euclid(MICROS_PER_DAY));
    s.push('T');
    push_time(s, micros.rem_euclid(MICROS_PER_DAY));
}

fn push_offset(s: &mut String, offset_secs: i32) {
    if offset_secs == 0 {
        s.push('Z');
        return;
    }
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let a = offset_secs.unsigned_abs();
    let _ = write!(s, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60);
    if !a.is_multiple_of(60) {
        let _ = write!(s, ":{:02}", a % 60);
    }
}

/// Milliseconds since the Unix epoch of a timestamp in microseconds since 2000-01-01 (rounded
/// down; what a millisecond-precision store such as MongoDB's Date holds).
pub fn unix_millis(pg_micros: i64) -> i64 {
    pg_micros.div_euclid(1000) + PG_EPOCH_DAYS * 86_400_000
}

impl Datum<'_> {
    /// The value as text: ISO 8601 for dates and times (`2024-05-01T12:30:00.25Z`, intervals as
    /// `P1Y2M3DT4H5M6.5S`), lowercase hyphenated UUIDs, PostgreSQL's rendering otherwise. `None`
    /// for values with no text form here (NULL, bytes, arrays, opaque values).
    pub fn render(&self) -> Option<String> {
        let mut s = String::new();
        match self {
            Datum::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            Datum::Int(i) => {
                let _ = write!(s, "{i}");
            }
            Datum::Float4(f) => push_float(&mut s, f64::from(*f), f.to_string()),
            Datum::Float8(f) => push_float(&mut s, *f, f.to_string()),
            Datum::Numeric(n) => s.push_str(n),
            Datum::Money(m) => {
                let sign = if *m < 0 { "-" } else { "" };
                let a = m.unsigned_abs();
                let _ = write!(s, "{sign}{}.{:02}", a / 100, a % 100);
            }
            Datum::Text(t) => s.push_str(t),
            Datum::Json(t) => s.push_str(t),
            Datum::Uuid(u) => {
                for (i, byte) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        s.push('-');
                    }
                    let _ = write!(s, "{byte:02x}");
                }
            }
            Datum::Date(d) => match *d {
                i32::MAX => s.push_str("infinity"),
                i32::MIN => s.push_str("-infinity"),
                d => push_date(&mut s, i64::from(d)),
            },
            Datum::Time(t) => push_time(&mut s, *t),
            Datum::TimeTz {
                micros,
                offset_secs,
            } => {
                push_time(&mut s, *micros);
                push_offset(&mut s, *offset_secs);
            }
            Datum::Timestamp(t) | Datum::TimestampTz(t) => match *t {
                i64::MAX => s.push_str("infinity"),
                i64::MIN => s.push_str("-infinity"),
                t => {
                    push_timestamp(&mut s, t);
                    if matches!(self, Datum::TimestampTz(_)) {
                        s.push('Z');
                    }
                }
            },
            Datum::Interval {
                months,
                days,
                micros,
            } => {
                s.push('P');
                let (y, m) = (months / 12, months % 12);
                if y != 0 {
                    let _ = write!(s, "{y}Y");
                }
                if m != 0 {
                    let _ = write!(s, "{m}M");
                }
                if *days != 0 {
                    let _ = write!(s, "{days}D");
                }
                if *micros != 0 {
                    s.push('T');
                    let secs = micros / 1_000_000;
                    let (h, mi, se) = (secs / 3600, secs / 60 % 60, secs % 60);
                    if h != 0 {
                        let _ = write!(s, "{h}H");
                    }
                    if mi != 0 {
                        let _ = write!(s, "{mi}M");
                    }
                    let frac = micros % 1_000_000;
                    if se != 0 || frac != 0 {
                        if (se < 0 || frac < 0) && se == 0 {
                            s.push('-');
                        }
                        let _ = write!(s, "{se}");
                        push_fraction(&mut s, frac.abs());
                        s.push('S');
                    }
                }
                if s.len() == 1 {
                    s.push_str("T0S");
                }
            }
            Datum::Null | Datum::Bytes(_) | Datum::Array(_) | Datum::Opaque(_) => return None,
        }
        Some(s)
    }
}

fn push_float(s: &mut String, f: f64, shortest: String) {
    if f.is_nan() {
        s.push_str("NaN");
    } else if f.is_infinite() {
        s.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        s.push_str(&shortest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((ndigits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in ndigits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    /// Found by the `datum` fuzz target: a timetz whose zone offset is `i32::MIN` overflowed
    /// when negated. Offsets PostgreSQL cannot send are refused.
    #[test]
    fn fuzz_a_timetz_offset_out_of_range_is_an_error() {
        let mut b = vec![0u8; 8];
        b.extend(i32::MIN.to_be_bytes());
        assert!(decode(oid::TIMETZ, &b).is_err());
        let mut b = vec![0u8; 8];
        b.extend((-(15 * 3600 + 59 * 60 + 59_i32)).to_be_bytes());
        assert!(decode(oid::TIMETZ, &b).is_ok());
    }

    #[test]
    fn numerics_render_exactly() {
        let n = |d: &[i16], w, s, sc| decode_numeric(&numeric(d, w, s, sc)).unwrap();
        assert_eq!(n(&[1234, 5678], 1, 0, 0), "12345678");
        assert_eq!(n(&[12, 5000], 0, 0x4000, 2), "-12.50");
        assert_eq!(n(&[5], -1, 0, 4), "0.0005");
        assert_eq!(n(&[5], -2, 0, 8), "0.00000005");
        assert_eq!(n(&[], 0, 0, 3), "0.000");
        assert_eq!(n(&[1], 2, 0, 0), "100000000");
        assert_eq!(n(&[], 0, 0xC000, 0), "NaN");
        assert!(decode_numeric(&numeric(&[10_000], 0, 0, 0)).is_err());
        assert!(decode_numeric(&[0, 1]).is_err());
    }

    #[test]
    fn dates_and_times_render_as_iso_8601() {
        let r = |d: Datum| d.render().unwrap();
        assert_eq!(r(Datum::Date(0)), "2000-01-01");
        assert_eq!(r(Datum::Date(-1)), "1999-12-31");
        assert_eq!(r(Datum::Date(60)), "2000-03-01");
        assert_eq!(r(Datum::Date(i32::MAX)), "infinity");
        assert_eq!(r(Datum::TimestampTz(0)), "2000-01-01T00:00:00Z");
        assert_eq!(r(Datum::TimestampTz(-1)), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            r(Datum::Timestamp(MICROS_PER_DAY * 366 + 3_723_250_000)),
            "2001-01-01T01:02:03.25"
        );
        assert_eq!(
            r(Datum::TimeTz {
                micros: 3_600_000_000,
                offset_secs: -5 * 3600 - 1800
            }),
            "01:00:00-05:30"
        );
        assert_eq!(
            r(Datum::Interval {
                months: 14,
                days: 3,
                micros: 3_723_500_000
            }),
            "P1Y2M3DT1H2M3.5S"
        );
        assert_eq!(
            r(Datum::Interval {
                months: 0,
                days: 0,
                micros: 0
            }),
            "PT0S"
        );
        assert_eq!(unix_millis(0), 946_684_800_000);
    }

    #[test]
    fn arrays_nest_by_dimension_and_keep_nulls() {
        // int4[2][2] = {{1,NULL},{3,4}}
        let mut b = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            b.extend(v.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(4)] {
            match v {
                Some(v) => {
                    b.extend(4i32.to_be_bytes());
                    b.extend(v.to_be_bytes());
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            decode(1007, &b).unwrap(),
            Datum::Array(vec![
                Datum::Array(vec![Datum::Int(1), Datum::Null]),
                Datum::Array(vec![Datum::Int(3), Datum::Int(4)]),
            ])
        );
        assert!(decode(1007, &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        for oid in [
            16, 20, 21, 23, 700, 701, 1082, 1114, 1184, 1186, 1266, 2950, 869, 1700, 3802,
        ] {
            for len in 0..20 {
                let _ = decode(oid, &vec![0xff; len]);
            }
        }
        assert!(decode(oid::TEXT, &[0xff]).is_err());
        assert_eq!(decode(99_999, b"x").unwrap(), Datum::Opaque(b"x"));
    }

    #[test]
    fn network_addresses_render_like_postgres() {
        let inet = decode(oid::INET, &[2, 32, 0, 4, 10, 0, 0, 1]).unwrap();
        assert_eq!(inet.render().unwrap(), "10.0.0.1");
        let cidr = decode(oid::CIDR, &[2, 8, 1, 4, 10, 0, 0, 0]).unwrap();
        assert_eq!(cidr.render().unwrap(), "10.0.0.0/8");
    }
}
