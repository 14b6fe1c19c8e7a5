//! The canonical row encoding the checker hashes (specified in `docs/verify.md`).
//!
//! A value is encoded from its typed form ([`Datum`]), never from a store's own bytes, so the
//! same value encodes the same whether it was read from PostgreSQL (binary format), a MongoDB
//! document or a JSON message. Every value is a one-byte tag followed by a fixed-width or
//! length-prefixed payload, so a row's encoding is unambiguous when columns are concatenated.
//!
//! Alongside, [`push_sort_key`] writes an order-preserving ("memcomparable") encoding of key
//! values: byte order of sort keys equals PostgreSQL's order of the values (text compared
//! under the `C` collation), which lets the checker merge two key-ordered streams.

use crate::datum::Datum;

/// Tags of the canonical encoding (one byte before each value).
pub mod tag {
    pub const NULL: u8 = 0x00;
    pub const BOOL: u8 = 0x01;
    pub const INT: u8 = 0x02;
    pub const FLOAT: u8 = 0x03;
    pub const NUMERIC: u8 = 0x04;
    pub const MONEY: u8 = 0x05;
    pub const TEXT: u8 = 0x06;
    pub const BYTES: u8 = 0x07;
    pub const UUID: u8 = 0x08;
    pub const DATE: u8 = 0x09;
    pub const TIME: u8 = 0x0A;
    pub const TIMETZ: u8 = 0x0B;
    pub const TIMESTAMP: u8 = 0x0C;
    pub const TIMESTAMPTZ: u8 = 0x0D;
    pub const INTERVAL: u8 = 0x0E;
    pub const JSON: u8 = 0x0F;
    pub const ARRAY: u8 = 0x10;
    pub const OPAQUE: u8 = 0x11;
    /// A float4 value: its own tag, since widening to double is exact but a store may keep it
    /// as either width.
    pub const FLOAT4: u8 = 0x12;
    /// A field the target's document does not have at all (not even as null): never equal
    /// to any source value, so a dropped field is reported as a difference in its column.
    pub const ABSENT: u8 = 0x13;
}

/// What a target can hold, so values are compared at the precision the target keeps.
/// PostgreSQL and the JSON envelopes keep every value exactly; MongoDB's Date keeps
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Precision {
    /// Timestamps (with and without zone) are compared in whole milliseconds (rounded toward
    /// the past, as the MongoDB sink writes them).
    pub timestamp_millis: bool,
    /// Intervals are compared as one number of microseconds, a month counting 30.4375 days
    /// (what Debezium's envelope keeps).
    pub interval_micros: bool,
    /// Columns of user-defined and extension types are read in their text form. Between two
    /// PostgreSQL clusters the binary form of an array or composite of such a type embeds a
    /// type OID that differs from cluster to cluster; the text form does not.
    pub user_types_as_text: bool,
}

impl Precision {
    /// What a message target keeps of each value in this envelope: everything exactly, except
    /// Debezium's intervals (one number of microseconds).
    pub fn of_envelope(format: crate::envelope::EnvelopeFormat) -> Precision {
        Precision {
            interval_micros: format == crate::envelope::EnvelopeFormat::Debezium,
            ..Precision::default()
        }
    }
}

/// The first OID of objects created after `initdb` (user-defined and extension types).
pub const FIRST_USER_OID: u32 = 16_384;

/// The canonical NaN bit pattern: every NaN encodes the same.
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

fn push_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn truncate_millis(micros: i64, precision: Precision) -> i64 {
    if precision.timestamp_millis && micros != i64::MAX && micros != i64::MIN {
        micros.div_euclid(1000) * 1000
    } else {
        micros
    }
}

/// Appends the canonical encoding of one value.
pub fn push_value(out: &mut Vec<u8>, datum: &Datum<'_>, precision: Precision) {
    match datum {
        Datum::Null => out.push(tag::NULL),
        Datum::Bool(b) => {
            out.push(tag::BOOL);
            out.push(u8::from(*b));
        }
        Datum::Int(i) => {
            out.push(tag::INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Datum::Float4(f) => {
            out.push(tag::FLOAT4);
            let bits = if f.is_nan() { 0x7fc0_0000 } else { f.to_bits() };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Datum::Float8(f) => {
            out.push(tag::FLOAT);
            let bits = if f.is_nan() {
                CANONICAL_NAN
            } else {
                f.to_bits()
            };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Datum::Numeric(n) => {
            out.push(tag::NUMERIC);
            push_len(out, n.len());
            out.extend_from_slice(n.as_bytes());
        }
        Datum::Money(m) => {
            out.push(tag::MONEY);
            out.extend_from_slice(&m.to_be_bytes());
        }
        Datum::Text(t) => {
            out.push(tag::TEXT);
            push_len(out, t.len());
            out.extend_from_slice(t.as_bytes());
        }
        Datum::Bytes(b) => {
            out.push(tag::BYTES);
            push_len(out, b.len());
            out.extend_from_slice(b);
        }
        Datum::Uuid(u) => {
            out.push(tag::UUID);
            out.extend_from_slice(u);
        }
        Datum::Date(d) => {
            out.push(tag::DATE);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Datum::Time(t) => {
            out.push(tag::TIME);
            out.extend_from_slice(&t.to_be_bytes());
        }
        Datum::TimeTz {
            micros,
            offset_secs,
        } => {
            out.push(tag::TIMETZ);
            out.extend_from_slice(&micros.to_be_bytes());
            out.extend_from_slice(&offset_secs.to_be_bytes());
        }
        Datum::Timestamp(t) => {
            out.push(tag::TIMESTAMP);
            out.extend_from_slice(&truncate_millis(*t, precision).to_be_bytes());
        }
        Datum::TimestampTz(t) => {
            out.push(tag::TIMESTAMPTZ);
            out.extend_from_slice(&truncate_millis(*t, precision).to_be_bytes());
        }
        Datum::Interval {
            months,
            days,
            micros,
        } if precision.interval_micros => {
            let month_micros = (f64::from(*months) * 30.4375 * 86_400e6) as i64;
            let total = month_micros + i64::from(*days) * 86_400_000_000 + micros;
            out.push(tag::INTERVAL);
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
        }
        Datum::Interval {
            months,
            days,
            micros,
        } => {
            out.push(tag::INTERVAL);
            out.extend_from_slice(&months.to_be_bytes());
            out.extend_from_slice(&days.to_be_bytes());
            out.extend_from_slice(&micros.to_be_bytes());
        }
        Datum::Json(text) => {
            out.push(tag::JSON);
            let canonical = canonical_json_text(text);
            push_len(out, canonical.len());
            out.extend_from_slice(canonical.as_bytes());
        }
        Datum::Array(items) => {
            out.push(tag::ARRAY);
            push_len(out, items.len());
            for item in items {
                push_value(out, item, precision);
            }
        }
        Datum::Opaque(b) => {
            out.push(tag::OPAQUE);
            push_len(out, b.len());
            out.extend_from_slice(b);
        }
    }
}

/// A JSON document in canonical form: object keys sorted by their UTF-8 bytes,
/// no insignificant whitespace, integers as integers and every other number as the shortest
/// text that reads back as the same double. Text that is not JSON is kept as it is.
pub fn canonical_json_text(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => canonical_json(&value),
        Err(_) => text.to_string(),
    }
}

/// The canonical text of a parsed JSON value (see [`canonical_json_text`]).
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut s = String::new();
    write_json(&mut s, value);
    s
}

fn write_json(s: &mut String, value: &serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::Null | J::Bool(_) | J::String(_) => s.push_str(&value.to_string()),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                s.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                s.push_str(&u.to_string());
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    s.push_str(&(f as i64).to_string());
                } else {
                    s.push_str(&f.to_string());
                }
            }
        }
        J::Array(items) => {
            s.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_json(s, item);
            }
            s.push(']');
        }
        J::Object(map) => {
            // Sorted here: serde_json keeps insertion order when a dependency turns on its
            // `preserve_order` feature.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            s.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&serde_json::Value::String(k.clone()).to_string());
                s.push(':');
                write_json(s, v);
            }
            s.push('}');
        }
    }
}

/// A key value the checker cannot order (its type has no order-preserving encoding here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key of this type cannot be ordered by the checker")]
pub struct UnorderedKey;

/// Appends the order-preserving encoding of one key value. Byte-wise comparison of the
/// results orders values as PostgreSQL does (text and bytea byte-wise, as under `COLLATE "C"`).
pub fn push_sort_key(out: &mut Vec<u8>, datum: &Datum<'_>) -> Result<(), UnorderedKey> {
    match datum {
        // NULL sorts last, as in PostgreSQL's default ascending order.
        Datum::Null => out.push(0xFF),
        Datum::Bool(b) => {
            out.push(0x01);
            out.push(u8::from(*b));
        }
        Datum::Int(i) | Datum::Time(i) | Datum::Money(i) => {
            out.push(0x01);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Datum::Timestamp(i) | Datum::TimestampTz(i) => {
            out.push(0x01);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Datum::Date(d) => {
            out.push(0x01);
            out.extend_from_slice(&((*d as u32) ^ (1 << 31)).to_be_bytes());
        }
        Datum::Float4(f) => push_float_key(out, f64::from(*f)),
        Datum::Float8(f) => push_float_key(out, *f),
        Datum::Uuid(u) => {
            out.push(0x01);
            out.extend_from_slice(u);
        }
        Datum::Text(t) => push_bytes_key(out, t.as_bytes()),
        Datum::Bytes(b) => push_bytes_key(out, b),
        Datum::Numeric(n) => push_numeric_key(out, n)?,
        _ => return Err(UnorderedKey),
    }
    Ok(())
}

fn push_float_key(out: &mut Vec<u8>, f: f64) {
    out.push(0x01);
    // PostgreSQL: -0 = 0, and NaN is equal to itself and above every other value.
    let bits = if f.is_nan() {
        CANONICAL_NAN
    } else if f == 0.0 {
        0
    } else {
        f.to_bits()
    };
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    out.extend_from_slice(&ordered.to_be_bytes());
}

/// Bytes with 0x00 escaped as 0x00 0xFF and a 0x00 0x00 terminator, so that a prefix sorts
/// first and composite keys compare column by column.
fn push_bytes_key(out: &mut Vec<u8>, b: &[u8]) {
    out.push(0x01);
    for &byte in b {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// numeric in decimal text (`-12.50`, `NaN`, `Infinity`) as an order-preserving key. Equal
/// numbers of different scale (1.5, 1.50) give the same key, as they are the same key in
/// PostgreSQL.
fn push_numeric_key(out: &mut Vec<u8>, text: &str) -> Result<(), UnorderedKey> {
    // Classes: 0x01 -Infinity, 0x02 negative, 0x03 zero, 0x04 positive, 0x05 Infinity, 0x06 NaN.
    match text {
        "NaN" => {
            out.push(0x06);
            return Ok(());
        }
        "Infinity" => {
            out.push(0x05);
            return Ok(());
        }
        "-Infinity" => {
            out.push(0x01);
            return Ok(());
        }
        _ => {}
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|c| c.is_ascii_digit())
    {
        return Err(UnorderedKey);
    }
    let digits: String = format!("{int_part}{frac_part}");
    let leading = digits.bytes().take_while(|&c| c == b'0').count();
    let significant = digits[leading..].trim_end_matches('0');
    if significant.is_empty() {
        out.push(0x03);
        return Ok(());
    }
    // The decimal exponent of the first significant digit.
    let exponent = int_part.len() as i64 - leading as i64;
    let mut body = Vec::with_capacity(significant.len() + 9);
    body.extend_from_slice(&((exponent as u64) ^ (1 << 63)).to_be_bytes());
    body.extend(significant.bytes());
    body.push(0); // a shorter mantissa sorts before a longer one with the same prefix
    if negative {
        out.push(0x02);
        out.extend(body.iter().map(|b| !b));
    } else {
        out.push(0x04);
        out.extend(body);
    }
    Ok(())
}

/// Reads one canonically encoded value from the front of `b`, returning its display text and
/// the bytes it used. For reports; `None` for bytes that are not a canonical value.
pub fn render_value(b: &[u8]) -> Option<(String, usize)> {
    let (&t, rest) = b.split_first()?;
    let fixed = |n: usize| rest.get(..n);
    let be64 = |s: &[u8]| i64::from_be_bytes(s.try_into().expect("8 bytes"));
    let be32 = |s: &[u8]| i32::from_be_bytes(s.try_into().expect("4 bytes"));
    let sized = || -> Option<(&[u8], usize)> {
        let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        Some((rest.get(4..4 + n)?, 4 + n))
    };
    let quoted = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let hex = |s: &[u8]| {
        let mut h = String::from("\"\\\\x");
        for byte in s {
            h.push_str(&format!("{byte:02x}"));
        }
        h.push('"');
        h
    };
    let (text, used) = match t {
        tag::NULL => ("null".to_string(), 0),
        tag::ABSENT => ("(absent)".to_string(), 0),
        tag::BOOL => ((fixed(1)?[0] != 0).to_string(), 1),
        tag::INT => (be64(fixed(8)?).to_string(), 8),
        tag::FLOAT => (
            Datum::Float8(f64::from_bits(be64(fixed(8)?) as u64)).render()?,
            8,
        ),
        tag::FLOAT4 => (
            Datum::Float4(f32::from_bits(be32(fixed(4)?) as u32)).render()?,
            4,
        ),
        tag::MONEY => (Datum::Money(be64(fixed(8)?)).render()?, 8),
        tag::NUMERIC | tag::TEXT | tag::JSON => {
            let (s, n) = sized()?;
            let s = std::str::from_utf8(s).ok()?;
            (
                if t == tag::JSON {
                    s.to_string()
                } else {
                    quoted(s)
                },
                n,
            )
        }
        tag::BYTES | tag::OPAQUE => {
            let (s, n) = sized()?;
            (hex(s), n)
        }
        tag::UUID => (
            quoted(&Datum::Uuid(fixed(16)?.try_into().ok()?).render()?),
            16,
        ),
        tag::DATE => (quoted(&Datum::Date(be32(fixed(4)?)).render()?), 4),
        tag::TIME => (quoted(&Datum::Time(be64(fixed(8)?)).render()?), 8),
        tag::TIMETZ => {
            let f = fixed(12)?;
            let d = Datum::TimeTz {
                micros: be64(&f[..8]),
                offset_secs: be32(&f[8..]),
            };
            (quoted(&d.render()?), 12)
        }
        tag::TIMESTAMP => (quoted(&Datum::Timestamp(be64(fixed(8)?)).render()?), 8),
        tag::TIMESTAMPTZ => (quoted(&Datum::TimestampTz(be64(fixed(8)?)).render()?), 8),
        tag::INTERVAL => {
            let f = fixed(16)?;
            let d = Datum::Interval {
                months: be32(&f[..4]),
                days: be32(&f[4..8]),
                micros: be64(&f[8..]),
            };
            (quoted(&d.render()?), 16)
        }
        tag::ARRAY => {
            let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let mut pos = 4;
            let mut parts = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let (text, used) = render_value(rest.get(pos..)?)?;
                parts.push(text);
                pos += used;
            }
            (format!("[{}]", parts.join(",")), pos)
        }
        _ => return None,
    };
    Some((text, used + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn key(d: Datum) -> Vec<u8> {
        let mut out = Vec::new();
        push_sort_key(&mut out, &d).unwrap();
        out
    }

    #[test]
    fn integer_keys_order_numerically() {
        let ks: Vec<_> = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX]
            .into_iter()
            .map(|i| key(Datum::Int(i)))
            .collect();
        assert!(ks.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn float_keys_order_as_postgres() {
        let vals = [
            f64::NEG_INFINITY,
            -1e300,
            -1.5,
            -0.0,
            1e-300,
            2.5,
            f64::INFINITY,
            f64::NAN,
        ];
        let ks: Vec<_> = vals.iter().map(|f| key(Datum::Float8(*f))).collect();
        assert!(ks.windows(2).all(|w| w[0] < w[1]), "{ks:?}");
        assert_eq!(key(Datum::Float8(-0.0)), key(Datum::Float8(0.0)));
    }

    #[test]
    fn text_keys_order_bytewise_and_prefixes_first() {
        let t = |s: &'static str| key(Datum::Text(Cow::Borrowed(s)));
        assert!(t("") < t("a"));
        assert!(t("a") < t("ab"));
        assert!(t("ab") < t("b"));
        assert!(t("Z") < t("a"));
        // Composite keys: ("a", 2) < ("ab", 1) because "a" < "ab".
        let mut k1 = t("a");
        k1.extend(key(Datum::Int(2)));
        let mut k2 = t("ab");
        k2.extend(key(Datum::Int(1)));
        assert!(k1 < k2);
        let b = |s: &'static [u8]| key(Datum::Bytes(s));
        assert!(b(b"a") < b(b"a\0"));
        assert!(b(b"a\0") < b(b"a\0\0"));
        assert!(b(b"a\0\xff") < b(b"a\x01"));
    }

    #[test]
    fn numeric_keys_order_by_value_and_ignore_scale() {
        let n = |s: &str| {
            let mut out = Vec::new();
            push_numeric_key(&mut out, s).unwrap();
            out
        };
        let ordered = [
            "-Infinity",
            "-100",
            "-99.5",
            "-1",
            "-0.001",
            "0",
            "0.0005",
            "0.001",
            "1",
            "1.05",
            "1.5",
            "9.99",
            "10",
            "100.25",
            "Infinity",
            "NaN",
        ];
        for w in ordered.windows(2) {
            assert!(n(w[0]) < n(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(n("1.50"), n("1.5"));
        assert_eq!(n("0.000"), n("0"));
        assert_eq!(n("-0.00"), n("0"));
        assert_eq!(n("0010.0"), n("10"));
    }

    #[test]
    fn values_of_different_types_never_collide() {
        let enc = |d: Datum| {
            let mut out = Vec::new();
            push_value(&mut out, &d, Precision::default());
            out
        };
        assert_ne!(enc(Datum::Int(1)), enc(Datum::Money(1)));
        assert_ne!(
            enc(Datum::Text(Cow::Borrowed("1"))),
            enc(Datum::Numeric("1".into()))
        );
        assert_ne!(enc(Datum::Null), enc(Datum::Text(Cow::Borrowed(""))));
        assert_eq!(enc(Datum::Float8(f64::NAN)), enc(Datum::Float8(-f64::NAN)));
        assert_ne!(
            enc(Datum::Numeric("1.5".into())),
            enc(Datum::Numeric("1.50".into()))
        );
    }

    #[test]
    fn millisecond_precision_truncates_toward_the_past() {
        let enc = |d: Datum, p| {
            let mut out = Vec::new();
            push_value(&mut out, &d, p);
            out
        };
        let ms = Precision {
            timestamp_millis: true,
            ..Precision::default()
        };
        assert_eq!(
            enc(Datum::TimestampTz(1_234_567), ms),
            enc(Datum::TimestampTz(1_234_000), Precision::default())
        );
        assert_eq!(
            enc(Datum::Timestamp(-1), ms),
            enc(Datum::Timestamp(-1000), Precision::default())
        );
    }

    #[test]
    fn json_is_compared_by_content() {
        assert_eq!(
            canonical_json_text("{\"b\": 1, \"a\": [1.0, 2.5, \"x\"]}"),
            "{\"a\":[1,2.5,\"x\"],\"b\":1}"
        );
    }

    #[test]
    fn rendering_reads_back_every_tag() {
        let mut out = Vec::new();
        let p = Precision::default();
        push_value(&mut out, &Datum::Int(-4), p);
        push_value(&mut out, &Datum::Text(Cow::Borrowed("a\"b")), p);
        push_value(
            &mut out,
            &Datum::Array(vec![Datum::Null, Datum::Bool(true)]),
            p,
        );
        push_value(&mut out, &Datum::TimestampTz(0), p);
        let mut pos = 0;
        let mut parts = Vec::new();
        while pos < out.len() {
            let (text, used) = render_value(&out[pos..]).unwrap();
            parts.push(text);
            pos += used;
        }
        assert_eq!(
            parts,
            [
                "-4",
                "\"a\\\"b\"",
                "[null,true]",
                "\"2000-01-01T00:00:00Z\""
            ]
        );
        assert!(render_value(&[0x99]).is_none());
        assert!(render_value(&[tag::TEXT, 0, 0, 0, 9, b'x']).is_none());
    }
}
