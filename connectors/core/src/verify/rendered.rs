//! Values that a target holds as text or JSON (message envelopes, MongoDB strings) put back in
//! canonical form: the inverse of [`Datum::render`] and of the cutover envelope's JSON mapping,
//! so a value hashes the same wherever it sits.

use std::borrow::Cow;

use base64::Engine as _;

use super::canonical::{push_value, Precision};
use crate::datum::{oid, Datum};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// 1970-01-01 in days after 2000-01-01.
const UNIX_EPOCH_DAYS: i64 = -10_957;

/// Element type of a built-in array type, by array OID (as the envelope maps them).
pub fn array_element(type_oid: u32) -> Option<u32> {
    crate::datum::array_element_oid(type_oid)
}

/// Days since 2000-01-01 of a proleptic Gregorian date (astronomical year).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 + UNIX_EPOCH_DAYS
}

/// `YYYY-MM-DD` (or `+YYYYY-MM-DD` / `-YYYY-MM-DD`) as days since 2000-01-01.
pub fn parse_date(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let mut parts = rest.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(sign * y, m, d))
}

/// `HH:MM:SS[.ffffff]` as microseconds since midnight.
pub fn parse_time(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i64 = whole.parse().ok()?;
    Some((h * 3600 + m * 60 + whole) * 1_000_000 + parse_fraction(frac)?)
}

/// Up to six fraction digits as microseconds.
fn parse_fraction(frac: &str) -> Option<i64> {
    if frac.is_empty() {
        return Some(0);
    }
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.to_string();
    while digits.len() < 6 {
        digits.push('0');
    }
    digits.parse().ok()
}

/// `+HH:MM[:SS]` or `Z` as seconds east of UTC; returns the offset and the text before it.
fn split_offset(s: &str) -> Option<(&str, i32)> {
    if let Some(rest) = s.strip_suffix('Z') {
        return Some((rest, 0));
    }
    let at = s.rfind(['+', '-'])?;
    let (time, zone) = s.split_at(at);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut parts = zone[1..].split(':');
    let h: i32 = parts.next()?.parse().ok()?;
    let m: i32 = parts.next().unwrap_or("0").parse().ok()?;
    let sec: i32 = parts.next().unwrap_or("0").parse().ok()?;
    Some((time, sign * (h * 3600 + m * 60 + sec)))
}

/// `YYYY-MM-DDTHH:MM:SS[.f]` as microseconds since 2000-01-01 (`infinity` handled by callers).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    Some(parse_date(date)? * MICROS_PER_DAY + parse_time(time)?)
}

/// ISO 8601 duration as [`Datum::render`] writes it (`P1Y2M3DT4H5M6.5S`).
pub fn parse_interval(s: &str) -> Option<(i32, i32, i64)> {
    let body = s.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    for_each_designator(date, |unit, num| {
        match unit {
            'Y' => months += 12 * num.parse::<i64>().ok()?,
            'M' => months += num.parse::<i64>().ok()?,
            'D' => days += num.parse::<i64>().ok()?,
            _ => return None,
        }
        Some(())
    })?;
    for_each_designator(time, |unit, num| {
        match unit {
            'H' => micros += num.parse::<i64>().ok()? * 3_600_000_000,
            'M' => micros += num.parse::<i64>().ok()? * 60_000_000,
            'S' => {
                let negative = num.starts_with('-');
                let digits = num.trim_start_matches('-');
                let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
                let v = whole.parse::<i64>().ok()? * 1_000_000 + parse_fraction(frac)?;
                micros += if negative { -v } else { v };
            }
            _ => return None,
        }
        Some(())
    })?;
    Some((
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        micros,
    ))
}

/// Calls `take(unit, number)` for each `<number><unit letter>` of an ISO 8601 duration part;
/// `None` when `take` refuses one or a number has no unit.
fn for_each_designator(part: &str, mut take: impl FnMut(char, &str) -> Option<()>) -> Option<()> {
    let mut num = String::new();
    for c in part.chars() {
        if c.is_ascii_alphabetic() {
            take(c, &num)?;
            num.clear();
        } else {
            num.push(c);
        }
    }
    num.is_empty().then_some(())
}

/// Hyphenated hex UUID text as its 16 bytes.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Exact decimal text (`-12.50`) of a two-decimal currency as minor units.
pub fn parse_money(s: &str) -> Option<i64> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut frac = frac.to_string();
    if frac.len() > 2 {
        return None;
    }
    while frac.len() < 2 {
        frac.push('0');
    }
    // Accumulated with the sign applied, so i64::MIN cents reads back without overflow.
    let whole = whole.parse::<i64>().ok()?.checked_mul(100)?;
    let frac = frac.parse::<i64>().ok()?;
    if negative {
        0i64.checked_sub(whole)?.checked_sub(frac)
    } else {
        whole.checked_add(frac)
    }
}

/// Pushes the canonical encoding of a value that a target holds in [`Datum::render`]'s text
/// form (`type_oid` is the source column's type). Err names what could not be read.
pub fn push_rendered(
    out: &mut Vec<u8>,
    type_oid: u32,
    text: &str,
    precision: Precision,
) -> Result<(), String> {
    let bad = || format!("{text:?} is not a value of type OID {type_oid}");
    let datum = match type_oid {
        oid::DATE => Datum::Date(match text {
            "infinity" => i32::MAX,
            "-infinity" => i32::MIN,
            _ => i32::try_from(parse_date(text).ok_or_else(bad)?).map_err(|_| bad())?,
        }),
        oid::TIME => Datum::Time(parse_time(text).ok_or_else(bad)?),
        oid::TIMETZ => {
            let (time, offset_secs) = split_offset(text).ok_or_else(bad)?;
            Datum::TimeTz {
                micros: parse_time(time).ok_or_else(bad)?,
                offset_secs,
            }
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let micros = match text {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                _ => {
                    let body = if type_oid == oid::TIMESTAMPTZ {
                        let (body, offset) = split_offset(text).ok_or_else(bad)?;
                        return push_timestamp(out, type_oid, body, offset, precision)
                            .ok_or_else(bad);
                    } else {
                        text
                    };
                    parse_timestamp(body).ok_or_else(bad)?
                }
            };
            if type_oid == oid::TIMESTAMP {
                Datum::Timestamp(micros)
            } else {
                Datum::TimestampTz(micros)
            }
        }
        oid::INTERVAL => {
            let (months, days, micros) = parse_interval(text).ok_or_else(bad)?;
            Datum::Interval {
                months,
                days,
                micros,
            }
        }
        oid::UUID => Datum::Uuid(parse_uuid(text).ok_or_else(bad)?),
        oid::NUMERIC => Datum::Numeric(text.to_string()),
        oid::MONEY => Datum::Money(parse_money(text).ok_or_else(bad)?),
        oid::FLOAT4 | oid::FLOAT8 => {
            let f: f64 = match text {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                _ => text.parse().map_err(|_| bad())?,
            };
            if type_oid == oid::FLOAT4 {
                Datum::Float4(f as f32)
            } else {
                Datum::Float8(f)
            }
        }
        oid::JSON | oid::JSONB => Datum::Json(text),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            Datum::Int(text.parse().map_err(|_| bad())?)
        }
        oid::BOOL => Datum::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(bad()),
        }),
        _ => Datum::Text(Cow::Borrowed(text)),
    };
    push_value(out, &datum, precision);
    Ok(())
}

fn push_timestamp(
    out: &mut Vec<u8>,
    type_oid: u32,
    body: &str,
    offset_secs: i32,
    precision: Precision,
) -> Option<()> {
    let micros = parse_timestamp(body)? - i64::from(offset_secs) * 1_000_000;
    let datum = if type_oid == oid::TIMESTAMP {
        Datum::Timestamp(micros)
    } else {
        Datum::TimestampTz(micros)
    };
    push_value(out, &datum, precision);
    Some(())
}

/// Pushes the canonical encoding of a value as the cutover envelope writes it in JSON
/// (`docs/targets.md`), given the source column's type.
pub fn push_json(
    out: &mut Vec<u8>,
    type_oid: u32,
    value: &serde_json::Value,
    precision: Precision,
) -> Result<(), String> {
    use serde_json::Value as J;
    let bad = || format!("{value} is not a value of type OID {type_oid}");
    if let Some(element) = array_element(type_oid) {
        let items = match value {
            J::Null => {
                push_value(out, &Datum::Null, precision);
                return Ok(());
            }
            J::Array(items) => items,
            _ => return Err(bad()),
        };
        out.push(super::canonical::tag::ARRAY);
        out.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            // Inner levels of a multi-dimensional array are arrays of the same type.
            let t = if item.is_array() { type_oid } else { element };
            push_json(out, t, item, precision)?;
        }
        return Ok(());
    }
    match (type_oid, value) {
        (_, J::Null) => push_value(out, &Datum::Null, precision),
        (oid::JSON | oid::JSONB, v) => {
            let text = super::canonical::canonical_json(v);
            push_value(out, &Datum::Json(&text), precision)
        }
        (oid::BOOL, J::Bool(b)) => push_value(out, &Datum::Bool(*b), precision),
        (oid::INT2 | oid::INT4 | oid::INT8 | oid::OID, J::Number(n)) => {
            push_value(out, &Datum::Int(n.as_i64().ok_or_else(bad)?), precision)
        }
        (oid::FLOAT4, J::Number(n)) => push_value(
            out,
            &Datum::Float4(n.as_f64().ok_or_else(bad)? as f32),
            precision,
        ),
        (oid::FLOAT8, J::Number(n)) => {
            push_value(out, &Datum::Float8(n.as_f64().ok_or_else(bad)?), precision)
        }
        (oid::BYTEA, J::String(s)) => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad())?;
            push_value(out, &Datum::Bytes(&b), precision)
        }
        (t, J::String(s)) if crate::datum::has_text_form(t) => push_rendered(out, t, s, precision)?,
        (_, J::String(s)) => {
            // Types without a typed mapping travel as base64 of their binary send format.
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad())?;
            push_value(out, &Datum::Opaque(&b), precision)
        }
        _ => return Err(bad()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::decode;

    /// Every rendered value reads back to the same canonical bytes as the binary value.
    #[test]
    fn rendered_values_read_back_exactly() {
        let cases: Vec<(u32, Vec<u8>)> = vec![
            (oid::DATE, (-1i32).to_be_bytes().to_vec()),
            (oid::DATE, 9000i32.to_be_bytes().to_vec()),
            (oid::DATE, (-800_000i32).to_be_bytes().to_vec()),
            (oid::DATE, i32::MAX.to_be_bytes().to_vec()),
            (oid::TIME, 45_296_789_000i64.to_be_bytes().to_vec()),
            (oid::TIMESTAMP, 1_234_567_890_123i64.to_be_bytes().to_vec()),
            (oid::TIMESTAMP, (-1i64).to_be_bytes().to_vec()),
            (
                oid::TIMESTAMPTZ,
                778_123_456_789_012i64.to_be_bytes().to_vec(),
            ),
            (oid::TIMESTAMPTZ, i64::MIN.to_be_bytes().to_vec()),
            (oid::INTERVAL, {
                let mut b = (-3_723_000_001i64).to_be_bytes().to_vec();
                b.extend((-2i32).to_be_bytes());
                b.extend(14i32.to_be_bytes());
                b
            }),
            (oid::TIMETZ, {
                let mut b = 3_600_000_000i64.to_be_bytes().to_vec();
                b.extend((19_800i32).to_be_bytes());
                b
            }),
            (oid::UUID, (0u8..16).collect()),
            (oid::MONEY, (-1234i64).to_be_bytes().to_vec()),
            (oid::MONEY, i64::MIN.to_be_bytes().to_vec()),
            (oid::MONEY, i64::MAX.to_be_bytes().to_vec()),
            (oid::FLOAT8, 0.1f64.to_be_bytes().to_vec()),
            (oid::FLOAT4, 1.1f32.to_be_bytes().to_vec()),
        ];
        for (type_oid, bin) in cases {
            let datum = decode(type_oid, &bin).unwrap();
            let text = datum.render().unwrap();
            let mut expected = Vec::new();
            push_value(&mut expected, &datum, Precision::default());
            let mut got = Vec::new();
            push_rendered(&mut got, type_oid, &text, Precision::default()).unwrap();
            assert_eq!(got, expected, "type {type_oid}: {text}");
        }
    }

    #[test]
    fn json_values_read_back_by_column_type() {
        let check = |type_oid: u32, bin: Vec<u8>, json: serde_json::Value| {
            let datum = decode(type_oid, &bin).unwrap();
            let mut expected = Vec::new();
            push_value(&mut expected, &datum, Precision::default());
            let mut got = Vec::new();
            push_json(&mut got, type_oid, &json, Precision::default()).unwrap();
            assert_eq!(got, expected, "{type_oid} {json}");
        };
        check(oid::INT4, 7i32.to_be_bytes().to_vec(), serde_json::json!(7));
        check(
            oid::FLOAT4,
            1.1f32.to_be_bytes().to_vec(),
            serde_json::json!(1.1),
        );
        check(
            oid::FLOAT8,
            f64::NAN.to_be_bytes().to_vec(),
            serde_json::json!("NaN"),
        );
        check(oid::BYTEA, vec![0, 255], serde_json::json!("AP8="));
        check(
            oid::JSONB,
            b"\x01{\"b\": 1, \"a\": 2.5}".to_vec(),
            serde_json::json!({"a": 2.5, "b": 1}),
        );
        // int4[] {{1,NULL},{3,4}}
        let mut arr = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            arr.extend(v.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(4)] {
            match v {
                Some(v) => {
                    arr.extend(4i32.to_be_bytes());
                    arr.extend(v.to_be_bytes());
                }
                None => arr.extend((-1i32).to_be_bytes()),
            }
        }
        check(1007, arr, serde_json::json!([[1, null], [3, 4]]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        for (t, s) in [
            (oid::DATE, "2024-13-01"),
            (oid::TIME, "x"),
            (oid::UUID, "zz"),
            (oid::INTERVAL, "P1Q"),
            (oid::MONEY, "1.234"),
            (oid::TIMESTAMPTZ, "2024-01-01"),
        ] {
            assert!(
                push_rendered(&mut out, t, s, Precision::default()).is_err(),
                "{s}"
            );
        }
    }
}
