//! Column values into PostgreSQL's binary send format, from the forms change messages carry:
//! the text forms [`crate::datum`] renders (ISO 8601 dates and times, exact decimal strings,
//! base64 bytes), JSON numbers, booleans and arrays, and Debezium's numeric encodings (epoch
//! days, epoch milli-, micro- or nanoseconds, base64 unscaled decimals). `cutover apply` reads
//! change messages back into rows with it.
//!
//! Contract: the inverse of [`crate::datum::decode`] followed by the envelope's rendering, for
//! every built-in type that has a typed decoding there; other types travel as base64 of their
//! binary send format (the cutover envelope) or as their text (Debezium, which renders enums
//! as strings). Errors are one sentence naming what was expected; nothing here panics on bad
//! input.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value as Json;

use crate::datum::{array_element_oid, oid::*};

/// PostgreSQL epoch (2000-01-01) in days after the Unix epoch.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * MICROS_PER_DAY;

/// What one unit of a number in a time column counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Millis,
    Micros,
    Nanos,
}

impl TimeUnit {
    fn to_micros(self, n: i64) -> Option<i64> {
        match self {
            TimeUnit::Millis => n.checked_mul(1000),
            TimeUnit::Micros => Some(n),
            TimeUnit::Nanos => Some(n.div_euclid(1000)),
        }
    }
}

/// How a decimal (numeric, money) is written in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalForm {
    /// An exact decimal string (`"12.50"`), or a JSON number.
    Text,
    /// Base64 of the unscaled value as a big-endian two's-complement integer, with this scale
    /// (Debezium's `decimal.handling.mode=precise`). A `{"scale": s, "value": "..."}` object
    /// (Debezium's variable-scale decimal) carries its own scale and is read in every form.
    Precise { scale: u32 },
}

/// What a JSON value means beyond its column's type: the envelope's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStyle {
    /// Strings in columns of types without a typed form here are base64 of the binary send
    /// format (cutover); otherwise they are the value's text (Debezium renders enums so).
    pub opaque_base64: bool,
    /// json and jsonb documents arrive as strings holding the document (Debezium's
    /// `io.debezium.data.Json`), not embedded.
    pub json_as_string: bool,
    /// Numbers in date columns count days since 1970-01-01, and numbers in time and timestamp
    /// columns count this unit (since midnight, or since the Unix epoch).
    pub time_unit: TimeUnit,
    pub decimal: DecimalForm,
}

impl JsonStyle {
    /// The cutover envelope's conventions (`docs/targets.md`, "Envelopes").
    pub const CUTOVER: JsonStyle = JsonStyle {
        opaque_base64: true,
        json_as_string: false,
        time_unit: TimeUnit::Micros,
        decimal: DecimalForm::Text,
    };
}

/// The binary send format of `v` for a column of type `type_oid`; `None` for JSON null (SQL
/// NULL). The error says what the value should have been.
pub fn json_value(type_oid: u32, v: &Json, style: &JsonStyle) -> Result<Option<Bytes>, String> {
    if v.is_null() {
        return Ok(None);
    }
    if let Some(element) = array_element_oid(type_oid) {
        return array(element, v, style).map(Some);
    }
    let out = match type_oid {
        BOOL | INT2 | INT4 | OID | INT8 | FLOAT4 | FLOAT8 | NUMERIC | MONEY => {
            json_number(type_oid, v, style)?
        }
        DATE | TIME | TIMETZ | TIMESTAMP | TIMESTAMPTZ | INTERVAL => {
            json_temporal(type_oid, v, style)?
        }
        JSON | JSONB => json_document(type_oid, v, style)?,
        _ => json_textual(type_oid, v, style)?,
    };
    Ok(Some(out))
}

/// `v` as a string, or what it was instead.
fn json_text(v: &Json) -> Result<&str, String> {
    match v {
        Json::String(s) => Ok(s.as_str()),
        _ => Err(format!("expected a string, got {}", kind(v))),
    }
}

/// Booleans, integers, floats, numeric and money.
fn json_number(type_oid: u32, v: &Json, style: &JsonStyle) -> Result<Bytes, String> {
    Ok(match type_oid {
        BOOL => {
            let b = match v {
                Json::Bool(b) => *b,
                Json::String(s) => match s.as_str() {
                    "true" | "t" => true,
                    "false" | "f" => false,
                    _ => return Err(format!("expected true or false, got {s:?}")),
                },
                _ => return Err(format!("expected a boolean, got {}", kind(v))),
            };
            Bytes::copy_from_slice(&[u8::from(b)])
        }
        INT2 => {
            let n = i16::try_from(integer(v)?).map_err(|_| "out of range for smallint")?;
            Bytes::copy_from_slice(&n.to_be_bytes())
        }
        INT4 => {
            let n = i32::try_from(integer(v)?).map_err(|_| "out of range for integer")?;
            Bytes::copy_from_slice(&n.to_be_bytes())
        }
        OID => {
            let n = u32::try_from(integer(v)?).map_err(|_| "out of range for oid")?;
            Bytes::copy_from_slice(&n.to_be_bytes())
        }
        INT8 => Bytes::copy_from_slice(&integer(v)?.to_be_bytes()),
        FLOAT4 => Bytes::copy_from_slice(&(float(v)? as f32).to_be_bytes()),
        FLOAT8 => Bytes::copy_from_slice(&float(v)?.to_be_bytes()),
        NUMERIC => numeric(&decimal_text(v, style.decimal)?)?,
        _ => {
            let text = decimal_text(v, style.decimal)?;
            Bytes::copy_from_slice(&money(&text)?.to_be_bytes())
        }
    })
}

/// Dates, times, timestamps and intervals: as text, or as numbers in the style's unit.
fn json_temporal(type_oid: u32, v: &Json, style: &JsonStyle) -> Result<Bytes, String> {
    Ok(match type_oid {
        DATE => {
            let days = match v {
                Json::String(s) => date(s)?,
                _ => {
                    let unix_days = integer(v)?;
                    i32::try_from(unix_days - PG_EPOCH_DAYS).map_err(|_| "date out of range")?
                }
            };
            Bytes::copy_from_slice(&days.to_be_bytes())
        }
        TIME => {
            let micros = match v {
                Json::String(s) => time(s)?,
                _ => style
                    .time_unit
                    .to_micros(integer(v)?)
                    .ok_or("time out of range")?,
            };
            if !(0..=MICROS_PER_DAY).contains(&micros) {
                return Err("time out of range (00:00:00 to 24:00:00)".into());
            }
            Bytes::copy_from_slice(&micros.to_be_bytes())
        }
        TIMETZ => {
            let (micros, east) = time_tz(json_text(v)?)?;
            let mut b = BytesMut::with_capacity(12);
            b.put_i64(micros);
            // PostgreSQL keeps the zone as seconds west of UTC.
            b.put_i32(-east);
            b.freeze()
        }
        TIMESTAMP | TIMESTAMPTZ => {
            let micros = match v {
                Json::String(s) => timestamp(s, type_oid == TIMESTAMPTZ)?,
                _ => style
                    .time_unit
                    .to_micros(integer(v)?)
                    .and_then(|m| m.checked_sub(PG_EPOCH_MICROS))
                    .ok_or("timestamp out of range")?,
            };
            Bytes::copy_from_slice(&micros.to_be_bytes())
        }
        _ => {
            let (months, days, micros) = match v {
                Json::String(s) => interval(s)?,
                // Debezium's MicroDuration: the whole interval in microseconds.
                _ => (0, 0, integer(v)?),
            };
            let mut b = BytesMut::with_capacity(16);
            b.put_i64(micros);
            b.put_i32(days);
            b.put_i32(months);
            b.freeze()
        }
    })
}

/// A json or jsonb column: an embedded document, or one held in a string.
fn json_document(type_oid: u32, v: &Json, style: &JsonStyle) -> Result<Bytes, String> {
    let doc = match v {
        Json::String(s) if style.json_as_string => {
            serde_json::from_str::<serde::de::IgnoredAny>(s)
                .map_err(|e| format!("expected a JSON document in the string: {e}"))?;
            s.clone()
        }
        other => other.to_string(),
    };
    let mut b = BytesMut::with_capacity(doc.len() + 1);
    if type_oid == JSONB {
        b.put_u8(1);
    }
    b.put_slice(doc.as_bytes());
    Ok(b.freeze())
}

/// Text types, bytea, uuid, network types, and every other type by its text.
fn json_textual(type_oid: u32, v: &Json, style: &JsonStyle) -> Result<Bytes, String> {
    Ok(match type_oid {
        TEXT | VARCHAR | BPCHAR | NAME | CHAR | XML => match v {
            Json::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            Json::Number(_) | Json::Bool(_) => Bytes::from(v.to_string()),
            _ => return Err(format!("expected a string, got {}", kind(v))),
        },
        BYTEA => Bytes::from(base64(json_text(v)?)?),
        UUID => Bytes::copy_from_slice(&uuid(json_text(v)?)?),
        INET | CIDR => inet(json_text(v)?, type_oid == CIDR)?,
        MACADDR => Bytes::copy_from_slice(&macaddr(json_text(v)?)?),
        _ => match v {
            Json::String(s) if style.opaque_base64 => Bytes::from(base64(s)?),
            Json::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            _ => {
                return Err(format!(
                    "expected a string for a column of type OID {type_oid}, got {}",
                    kind(v)
                ))
            }
        },
    })
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn integer(v: &Json) -> Result<i64, String> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("expected an integer, got {n}")),
        Json::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("expected an integer, got {s:?}")),
        _ => Err(format!("expected an integer, got {}", kind(v))),
    }
}

fn float(v: &Json) -> Result<f64, String> {
    match v {
        Json::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("expected a number, got {n}")),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other
                .parse()
                .map_err(|_| format!("expected a number, got {other:?}")),
        },
        _ => Err(format!("expected a number, got {}", kind(v))),
    }
}

fn base64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("expected base64: {e}"))
}

/// The decimal text of a numeric or money value, in whichever form the message wrote it.
fn decimal_text(v: &Json, form: DecimalForm) -> Result<String, String> {
    match (v, form) {
        (Json::Object(o), _) => {
            let scale = o
                .get("scale")
                .and_then(Json::as_u64)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or("expected a variable-scale decimal {\"scale\": n, \"value\": base64}")?;
            let value = o
                .get("value")
                .and_then(Json::as_str)
                .ok_or("expected a variable-scale decimal {\"scale\": n, \"value\": base64}")?;
            unscaled(&base64(value)?, scale)
        }
        (Json::String(s), DecimalForm::Precise { scale }) => unscaled(&base64(s)?, scale),
        (Json::String(s), DecimalForm::Text) => Ok(s.clone()),
        (Json::Number(n), _) => Ok(n.to_string()),
        _ => Err(format!("expected a decimal, got {}", kind(v))),
    }
}

/// The decimal text of a big-endian two's-complement integer divided by 10^scale.
fn unscaled(bytes: &[u8], scale: u32) -> Result<String, String> {
    if bytes.is_empty() {
        return Err("expected the bytes of a decimal, got none".into());
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement: invert and add one.
        for b in magnitude.iter_mut() {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by ten, most significant byte first.
    let mut digits = Vec::new();
    while magnitude.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in magnitude.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    let scale = scale as usize;
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut s = String::with_capacity(digits.len() + 2);
    if negative {
        s.push('-');
    }
    s.push_str(std::str::from_utf8(int).expect("ASCII digits"));
    if scale > 0 {
        s.push('.');
        s.push_str(std::str::from_utf8(frac).expect("ASCII digits"));
    }
    Ok(s)
}

/// Splits decimal text into sign, integer digits and fraction digits, with an exponent applied.
fn decimal_parts(text: &str) -> Result<(bool, String, String), String> {
    let bad = || format!("expected a decimal number, got {text:?}");
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || exp.unsigned_abs() > 100_000
    {
        return Err(bad());
    }
    let mut int = int.to_string();
    let mut frac = frac.to_string();
    if exp > 0 {
        let shift = exp as usize;
        while frac.len() < shift {
            frac.push('0');
        }
        int.push_str(&frac[..shift]);
        frac = frac[shift..].to_string();
    } else if exp < 0 {
        let shift = exp.unsigned_abs() as usize;
        while int.len() < shift {
            int.insert(0, '0');
        }
        frac = format!("{}{frac}", &int[int.len() - shift..]);
        int.truncate(int.len() - shift);
    }
    Ok((negative, int, frac))
}

/// numeric's binary form from decimal text (`-12.50`, `1e-3`, `NaN`, `Infinity`): digits
/// stripped of leading and trailing zero groups as PostgreSQL stores them, and the display
/// scale the text's fraction digits give (`1.50` keeps scale 2).
pub fn numeric(text: &str) -> Result<Bytes, String> {
    // (sign, display scale): numeric_send reads a special value's scale from bits of its
    // stored header, which give 32 for the infinities (and 0 for NaN).
    let special = match text.trim() {
        "NaN" => Some((0xC000u16, 0)),
        "Infinity" | "+Infinity" => Some((0xD000, 32)),
        "-Infinity" => Some((0xF000, 32)),
        _ => None,
    };
    let mut b = BytesMut::with_capacity(16);
    if let Some((sign, dscale)) = special {
        b.put_i16(0);
        b.put_i16(0);
        b.put_u16(sign);
        b.put_u16(dscale);
        return Ok(b.freeze());
    }
    let (negative, int, frac) = decimal_parts(text)?;
    let dscale = u16::try_from(frac.len()).map_err(|_| "too many decimal digits")?;
    // Base-10000 groups aligned on the decimal point.
    let int = int.trim_start_matches('0');
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits_text = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
    let mut groups: Vec<i16> = digits_text
        .as_bytes()
        .chunks(4)
        .map(|c| {
            std::str::from_utf8(c)
                .expect("ASCII")
                .parse()
                .expect("4 digits")
        })
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i32 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let weight = i16::try_from(weight).map_err(|_| "decimal out of range")?;
    b.put_i16(i16::try_from(groups.len()).map_err(|_| "decimal out of range")?);
    b.put_i16(weight);
    b.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    b.put_u16(dscale);
    for g in groups {
        b.put_i16(g);
    }
    Ok(b.freeze())
}

/// money in minor units (two fraction digits) from decimal text; `$` and `,` are ignored.
pub fn money(text: &str) -> Result<i64, String> {
    let cleaned: String = text.chars().filter(|c| !matches!(c, '$' | ',')).collect();
    let (negative, int, frac) = decimal_parts(&cleaned)?;
    if frac.trim_end_matches('0').len() > 2 {
        return Err(format!(
            "expected at most two decimal digits for money, got {text:?}"
        ));
    }
    let cents = format!("{int}{:0<2}", &frac[..frac.len().min(2)]);
    let digits = cents.trim_start_matches('0');
    // Parsed wider than i64: the most negative amount has no positive counterpart.
    let n: i128 = if digits.is_empty() {
        0
    } else if digits.len() > 20 {
        return Err(format!("money out of range: {text:?}"));
    } else {
        digits
            .parse()
            .map_err(|_| format!("money out of range: {text:?}"))?
    };
    i64::try_from(if negative { -n } else { n })
        .map_err(|_| format!("money out of range: {text:?}"))
}

/// The 16 bytes of a UUID in hex (hyphens and braces anywhere are ignored).
pub fn uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b'-' | b'{' | b'}'))
        .collect();
    let mut out = [0u8; 16];
    if hex.len() != 32 {
        return Err(format!("expected a UUID, got {s:?}"));
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| format!("expected a UUID, got {s:?}"))?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| format!("expected a UUID, got {s:?}"))?;
    }
    Ok(out)
}

/// The binary send format of an inet (`cidr` false) or cidr value from `address[/bits]`; an
/// address without bits has all of them.
pub fn inet(s: &str, cidr: bool) -> Result<Bytes, String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (
            a,
            Some(
                b.parse::<u8>()
                    .map_err(|_| format!("expected a network address, got {s:?}"))?,
            ),
        ),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("expected a network address, got {s:?}"))?;
    let (family, octets): (u8, Vec<u8>) = match ip {
        std::net::IpAddr::V4(a) => (2, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (3, a.octets().to_vec()),
    };
    let full = (octets.len() * 8) as u8;
    let bits = bits.unwrap_or(full);
    if bits > full {
        return Err(format!("expected at most {full} network bits, got {s:?}"));
    }
    let mut b = BytesMut::with_capacity(4 + octets.len());
    b.put_u8(family);
    b.put_u8(bits);
    b.put_u8(u8::from(cidr));
    b.put_u8(octets.len() as u8);
    b.put_slice(&octets);
    Ok(b.freeze())
}

/// The 6 bytes of a MAC address written as six hex pairs separated by `:` or `-`.
pub fn macaddr(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut out = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("expected a MAC address, got {s:?}"));
    }
    for (i, p) in parts.iter().enumerate() {
        out[i] =
            u8::from_str_radix(p, 16).map_err(|_| format!("expected a MAC address, got {s:?}"))?;
    }
    Ok(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 2000-01-01 of `YYYY-MM-DD` (a year may carry a sign and more digits), or the
/// infinities.
pub fn date(s: &str) -> Result<i32, String> {
    let bad = || format!("expected a date YYYY-MM-DD, got {s:?}");
    match s {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'-') => (-1, &s[1..]),
        Some(b'+') => (1, &s[1..]),
        _ => (1, s),
    };
    let mut it = rest.splitn(3, '-');
    let (y, m, d) = (
        it.next().ok_or_else(bad)?,
        it.next().ok_or_else(bad)?,
        it.next().ok_or_else(bad)?,
    );
    let y: i64 = y.parse::<i64>().map_err(|_| bad())? * sign;
    let m: u32 = m.parse().map_err(|_| bad())?;
    let d: u32 = d.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    i32::try_from(days_from_civil(y, m, d) - PG_EPOCH_DAYS).map_err(|_| bad())
}

/// Microseconds since midnight of `HH:MM[:SS[.ffffff]]` (digits past microseconds rounded).
pub fn time(s: &str) -> Result<i64, String> {
    let bad = || format!("expected a time HH:MM:SS[.ffffff], got {s:?}");
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let parts: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let num = |p: &str| p.parse::<i64>().map_err(|_| bad());
    let (h, m) = (num(parts[0])?, num(parts[1])?);
    let sec = if parts.len() == 3 { num(parts[2])? } else { 0 };
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&sec) {
        return Err(bad());
    }
    let mut micros_text = format!("{frac:0<6}");
    // Digits past microseconds are rounded, as PostgreSQL does.
    let round = micros_text.len() > 6 && micros_text.as_bytes()[6] >= b'5';
    micros_text.truncate(6);
    let frac_micros: i64 = micros_text.parse().map_err(|_| bad())?;
    Ok(((h * 60 + m) * 60 + sec) * 1_000_000 + frac_micros + i64::from(round))
}

/// Seconds east of UTC of a zone suffix: `Z`, `+02`, `+02:00`, `-0530`, `+01:00:30`.
fn offset(s: &str) -> Result<i32, String> {
    let bad = || format!("expected a zone offset such as Z or +02:00, got {s:?}");
    if s == "Z" || s == "z" {
        return Ok(0);
    }
    let sign = match s.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![2, 4, 6].contains(&digits.len()) {
        return Err(bad());
    }
    let field = |i: usize| -> i32 {
        digits
            .get(i..i + 2)
            .map_or(0, |d| d.parse().expect("two ASCII digits"))
    };
    let secs = field(0) * 3600 + field(2) * 60 + field(4);
    if secs >= 16 * 3600 {
        return Err(bad());
    }
    Ok(sign * secs)
}

/// Splits a zone suffix off a time: `12:00:00+02:00` into `12:00:00` and `+02:00`.
fn split_zone(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(['Z', 'z', '+', '-'])?;
    // A `-` inside the date part is not a zone.
    if s[..i].contains(':') || s.as_bytes()[i] == b'Z' || s.as_bytes()[i] == b'z' {
        Some((&s[..i], &s[i..]))
    } else {
        None
    }
}

/// Microseconds since midnight and the zone's offset in seconds east of UTC of a time with a
/// zone suffix (`12:30:00+02:00`, `23:59:59.5-05:30`, `01:00:00Z`).
pub fn time_tz(s: &str) -> Result<(i64, i32), String> {
    let (t, zone) = split_zone(s)
        .ok_or_else(|| format!("expected a time with a zone such as 12:30:00+02:00, got {s:?}"))?;
    Ok((time(t)?, offset(zone)?))
}

/// Microseconds since 2000-01-01 of `YYYY-MM-DD HH:MM:SS[.ffffff][zone]` (`T` or a space
/// between date and time; UTC when `with_zone`, where a missing zone means UTC), or the
/// infinities.
pub fn timestamp(s: &str, with_zone: bool) -> Result<i64, String> {
    let bad = || {
        format!(
            "expected a timestamp YYYY-MM-DDTHH:MM:SS[.ffffff]{}, got {s:?}",
            if with_zone { "Z" } else { "" }
        )
    };
    match s {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let split = s.find(['T', 't', ' ']).ok_or_else(bad)?;
    let (d, rest) = (&s[..split], &s[split + 1..]);
    let (t, east) = match split_zone(rest) {
        Some((t, zone)) => (t, offset(zone)?),
        None => (rest, 0),
    };
    if !with_zone && east != 0 {
        return Err(bad());
    }
    let days = i64::from(date(d)?);
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|m| m.checked_add(time(t).ok()?))
        .and_then(|m| m.checked_sub(i64::from(east) * 1_000_000))
        .ok_or_else(bad)
}

/// Months, days and microseconds of an ISO 8601 duration (`P1Y2M3DT4H5M6.5S`, `P2W`, parts
/// may be negative).
fn interval(s: &str) -> Result<(i32, i32, i64), String> {
    let bad = || format!("expected an ISO 8601 interval such as P1Y2M3DT4H5M6.5S, got {s:?}");
    let (negate, body) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s),
    };
    let body = body.strip_prefix('P').ok_or_else(bad)?;
    let (date_part, time_part) = body.split_once('T').unwrap_or((body, ""));
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut fields = |part: &str, in_time: bool| -> Result<(), String> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '-' || c == '.' || c == '+' {
                number.push(c);
                continue;
            }
            let n: f64 = number.parse().map_err(|_| bad())?;
            let whole = number.parse::<i64>().ok();
            match (c, in_time) {
                ('Y', false) => months += whole.ok_or_else(bad)? * 12,
                ('M', false) => months += whole.ok_or_else(bad)?,
                ('W', false) => days += whole.ok_or_else(bad)? * 7,
                ('D', false) => days += whole.ok_or_else(bad)?,
                ('H', true) => micros += whole.ok_or_else(bad)? * 3_600_000_000,
                ('M', true) => micros += whole.ok_or_else(bad)? * 60_000_000,
                ('S', true) => micros += (n * 1e6).round() as i64,
                _ => return Err(bad()),
            }
            number.clear();
        }
        if number.is_empty() {
            Ok(())
        } else {
            Err(bad())
        }
    };
    fields(date_part, false)?;
    fields(time_part, true)?;
    let months = i32::try_from(months * negate).map_err(|_| bad())?;
    let days = i32::try_from(days * negate).map_err(|_| bad())?;
    Ok((months, days, micros * negate))
}

/// An array of `element` values from a (nested) JSON array.
fn array(element: u32, v: &Json, style: &JsonStyle) -> Result<Bytes, String> {
    let Json::Array(top) = v else {
        return Err(format!("expected an array, got {}", kind(v)));
    };
    // Dimensions from the first element at each level; every level must match them.
    let mut dims = Vec::new();
    let mut probe = v;
    while let Json::Array(items) = probe {
        dims.push(items.len());
        match items.first() {
            Some(first @ Json::Array(_)) => probe = first,
            _ => break,
        }
    }
    let mut flat = Vec::new();
    flatten(top, &dims, &mut flat)?;
    let items = flat
        .into_iter()
        .map(|item| json_value(element, item, style).map_err(|e| format!("array element: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dims: Vec<(usize, i32)> = if top.is_empty() {
        Vec::new()
    } else {
        dims.iter().map(|d| (*d, 1)).collect()
    };
    array_send(element, &dims, &items)
}

/// An array's binary send format: `dims` are (length, lower bound) pairs, outermost first
/// (none for an empty array), and `items` the elements' binary forms in row-major order
/// (`None` for NULL). The has-nulls flag is set when an item is NULL. The error says which
/// count or size does not fit.
pub fn array_send(
    element: u32,
    dims: &[(usize, i32)],
    items: &[Option<Bytes>],
) -> Result<Bytes, String> {
    let total = dims
        .iter()
        .try_fold(usize::from(!dims.is_empty()), |n, (len, _)| {
            n.checked_mul(*len)
        });
    if total != Some(items.len()) {
        return Err(format!(
            "expected an array of {} elements for its dimensions, got {}",
            total.map_or_else(|| "too many".to_string(), |t| t.to_string()),
            items.len()
        ));
    }
    let body_len: usize = items
        .iter()
        .map(|i| 4 + i.as_ref().map_or(0, Bytes::len))
        .sum();
    let mut b = BytesMut::with_capacity(12 + dims.len() * 8 + body_len);
    b.put_i32(i32::try_from(dims.len()).map_err(|_| "too many array dimensions")?);
    b.put_i32(i32::from(items.iter().any(Option::is_none)));
    b.put_u32(element);
    for (len, lower) in dims {
        b.put_i32(i32::try_from(*len).map_err(|_| "array dimension too large")?);
        b.put_i32(*lower);
    }
    for item in items {
        match item {
            Some(bytes) => {
                b.put_i32(i32::try_from(bytes.len()).map_err(|_| "array element too large")?);
                b.put_slice(bytes);
            }
            None => b.put_i32(-1),
        }
    }
    Ok(b.freeze())
}

fn flatten<'a>(items: &'a [Json], dims: &[usize], out: &mut Vec<&'a Json>) -> Result<(), String> {
    if items.len() != dims[0] {
        return Err("expected a rectangular array (every sub-array of one length)".into());
    }
    for item in items {
        match (item, dims.len() > 1) {
            (Json::Array(inner), true) => flatten(inner, &dims[1..], out)?,
            (Json::Array(_), false) | (_, true) => {
                return Err("expected a rectangular array (every sub-array of one length)".into())
            }
            (scalar, false) => out.push(scalar),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::{decode, Datum};
    use serde_json::json;

    /// Encodes `v`, decodes the bytes and renders them as the cutover envelope would.
    fn round(type_oid: u32, v: Json) -> String {
        let b = json_value(type_oid, &v, &JsonStyle::CUTOVER)
            .unwrap()
            .unwrap();
        let d = decode(type_oid, &b).unwrap();
        match d {
            Datum::Bytes(b) | Datum::Opaque(b) => {
                base64::engine::general_purpose::STANDARD.encode(b)
            }
            Datum::Json(t) => t.to_string(),
            Datum::Array(_) => format!("{d:?}"),
            other => other.render().unwrap(),
        }
    }

    #[test]
    fn text_forms_round_trip_through_the_binary_format() {
        for (oid, v) in [
            (NUMERIC, "-12.50"),
            (NUMERIC, "0.0001"),
            (NUMERIC, "123456789012345678901234567890.123456789"),
            (NUMERIC, "0"),
            (NUMERIC, "0.00"),
            (NUMERIC, "10000"),
            (NUMERIC, "NaN"),
            (NUMERIC, "-Infinity"),
            (MONEY, "-3.05"),
            (MONEY, "1234.50"),
            (DATE, "2024-05-01"),
            (DATE, "1969-12-31"),
            (DATE, "infinity"),
            (TIME, "12:30:00.25"),
            (TIME, "00:00:00"),
            (TIMETZ, "12:30:00+02:00"),
            (TIMETZ, "23:59:59.999999-05:30"),
            (TIMESTAMP, "2024-05-01T12:30:00.25"),
            (TIMESTAMP, "1900-02-28T00:00:00"),
            (TIMESTAMPTZ, "2024-05-01T12:30:00.25Z"),
            (TIMESTAMPTZ, "-infinity"),
            (INTERVAL, "P1Y2M3DT4H5M6.5S"),
            (INTERVAL, "PT-0.5S"),
            (INTERVAL, "P-1M"),
            (UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (INET, "10.0.0.1"),
            (INET, "10.0.0.0/8"),
            (INET, "2001:db8::1"),
            (CIDR, "10.0.0.0/8"),
            (MACADDR, "08:00:2b:01:02:03"),
            (FLOAT8, "NaN"),
            (FLOAT4, "-Infinity"),
            (TEXT, "é😀 'quoted'"),
        ] {
            assert_eq!(round(oid, json!(v)), v, "type {oid}");
        }
        assert_eq!(
            round(TIMESTAMPTZ, json!("2024-05-01T14:30:00+02:00")),
            "2024-05-01T12:30:00Z"
        );
        assert_eq!(round(NUMERIC, json!("1.5e3")), "1500");
        assert_eq!(round(NUMERIC, json!(2.5)), "2.5");
        assert_eq!(
            round(INT8, json!(-9_007_199_254_740_993i64)),
            "-9007199254740993"
        );
        assert_eq!(round(BOOL, json!(true)), "true");
        assert_eq!(round(JSONB, json!({"a": [1, 2.5]})), r#"{"a":[1,2.5]}"#);
        assert_eq!(round(BYTEA, json!("3q2+7w==")), "3q2+7w==");
    }

    #[test]
    fn arrays_nest_and_keep_nulls() {
        let b = json_value(1007, &json!([[1, null], [3, 4]]), &JsonStyle::CUTOVER)
            .unwrap()
            .unwrap();
        assert_eq!(
            decode(1007, &b).unwrap(),
            Datum::Array(vec![
                Datum::Array(vec![Datum::Int(1), Datum::Null]),
                Datum::Array(vec![Datum::Int(3), Datum::Int(4)]),
            ])
        );
        let empty = json_value(1009, &json!([]), &JsonStyle::CUTOVER)
            .unwrap()
            .unwrap();
        assert_eq!(decode(1009, &empty).unwrap(), Datum::Array(vec![]));
        assert!(json_value(1007, &json!([[1], [2, 3]]), &JsonStyle::CUTOVER).is_err());
    }

    #[test]
    fn debezium_numbers_and_precise_decimals() {
        let style = JsonStyle {
            opaque_base64: false,
            json_as_string: true,
            time_unit: TimeUnit::Micros,
            decimal: DecimalForm::Precise { scale: 2 },
        };
        let render = |oid, v: Json, style: &JsonStyle| {
            let b = json_value(oid, &v, style).unwrap().unwrap();
            decode(oid, &b)
                .unwrap()
                .render()
                .unwrap_or_else(|| format!("{:?}", decode(oid, &b)))
        };
        // 1250 as two's complement big-endian: 0x04E2; -1250: 0xFB1E.
        assert_eq!(render(NUMERIC, json!("BOI="), &style), "12.50");
        assert_eq!(render(NUMERIC, json!("+x4="), &style), "-12.50");
        assert_eq!(
            render(NUMERIC, json!({"scale": 3, "value": "BOI="}), &style),
            "1.250"
        );
        assert_eq!(render(MONEY, json!("BOI="), &style), "12.50");
        assert_eq!(render(DATE, json!(19844), &style), "2024-05-01");
        assert_eq!(
            render(TIME, json!(45_000_250_000i64), &style),
            "12:30:00.25"
        );
        assert_eq!(
            render(TIMESTAMP, json!(1_714_566_600_250_000i64), &style),
            "2024-05-01T12:30:00.25"
        );
        let millis = JsonStyle {
            time_unit: TimeUnit::Millis,
            ..style
        };
        assert_eq!(
            render(TIMESTAMP, json!(1_714_566_600_250i64), &millis),
            "2024-05-01T12:30:00.25"
        );
        assert_eq!(render(INTERVAL, json!(1_500_000), &style), "PT1.5S");
        assert_eq!(render(JSON, json!("{\"a\": 1}"), &style), "{\"a\": 1}");
        // An enum travels as its label.
        assert_eq!(
            json_value(99_999, &json!("red"), &style).unwrap().unwrap(),
            Bytes::from_static(b"red")
        );
    }

    #[test]
    fn bad_values_are_errors_that_say_what_was_expected() {
        let e = |oid, v: Json| json_value(oid, &v, &JsonStyle::CUTOVER).unwrap_err();
        assert!(e(INT4, json!("abc")).contains("expected an integer"));
        assert!(e(INT2, json!(70000)).contains("out of range"));
        assert!(e(DATE, json!("2024-13-01")).contains("expected a date"));
        assert!(e(UUID, json!("nope")).contains("expected a UUID"));
        assert!(e(NUMERIC, json!("1.2.3")).contains("expected a decimal"));
        assert!(e(TIMESTAMP, json!("2024-05-01T12:00:00+02:00")).contains("expected a timestamp"));
        assert!(e(BOOL, json!([])).contains("expected a boolean"));
        assert!(e(TIME, json!("25:00:00")).contains("expected a time"));
    }
}
