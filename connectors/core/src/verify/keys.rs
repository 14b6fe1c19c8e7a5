//! Keys of rows that were read in a form other than PostgreSQL's binary one (JSON messages,
//! documents): their sort key and their binary send format, rebuilt from the canonical bytes
//! of the key columns, so such a row can be ordered and looked up on the source.

use std::sync::Arc;

use super::canonical::{push_sort_key, tag};
use super::digest::CanonRow;
use crate::datum::{oid, Datum};
use crate::TableSchema;

/// Reads one scalar canonical value back into a [`Datum`]; `None` for arrays, JSON, absent
/// fields and bytes that are not a canonical value.
pub fn decode_canonical(b: &[u8]) -> Option<Datum<'_>> {
    let (&t, rest) = b.split_first()?;
    let be64 = |s: &[u8]| Some(i64::from_be_bytes(s.get(..8)?.try_into().ok()?));
    let be32 = |s: &[u8]| Some(i32::from_be_bytes(s.get(..4)?.try_into().ok()?));
    let sized = || -> Option<&[u8]> {
        let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest.get(4..4 + n)
    };
    Some(match t {
        tag::NULL => Datum::Null,
        tag::BOOL => Datum::Bool(*rest.first()? != 0),
        tag::INT => Datum::Int(be64(rest)?),
        tag::FLOAT => Datum::Float8(f64::from_bits(be64(rest)? as u64)),
        tag::FLOAT4 => Datum::Float4(f32::from_bits(be32(rest)? as u32)),
        tag::MONEY => Datum::Money(be64(rest)?),
        tag::NUMERIC => Datum::Numeric(std::str::from_utf8(sized()?).ok()?.to_string()),
        tag::TEXT => Datum::Text(std::borrow::Cow::Borrowed(
            std::str::from_utf8(sized()?).ok()?,
        )),
        tag::BYTES => Datum::Bytes(sized()?),
        tag::UUID => Datum::Uuid(rest.get(..16)?.try_into().ok()?),
        tag::DATE => Datum::Date(be32(rest)?),
        tag::TIME => Datum::Time(be64(rest)?),
        tag::TIMESTAMP => Datum::Timestamp(be64(rest)?),
        tag::TIMESTAMPTZ => Datum::TimestampTz(be64(rest)?),
        _ => return None,
    })
}

/// PostgreSQL's binary send format of a key value of type `type_oid`; `None` for types a key
/// cannot be rebuilt for.
pub fn binary_key_value(type_oid: u32, datum: &Datum<'_>) -> Option<Vec<u8>> {
    Some(match (type_oid, datum) {
        (oid::INT2, Datum::Int(i)) => i16::try_from(*i).ok()?.to_be_bytes().to_vec(),
        (oid::INT4, Datum::Int(i)) => i32::try_from(*i).ok()?.to_be_bytes().to_vec(),
        (oid::OID, Datum::Int(i)) => u32::try_from(*i).ok()?.to_be_bytes().to_vec(),
        (oid::INT8, Datum::Int(i)) | (oid::MONEY, Datum::Money(i)) => i.to_be_bytes().to_vec(),
        (oid::TIME, Datum::Time(i))
        | (oid::TIMESTAMP, Datum::Timestamp(i))
        | (oid::TIMESTAMPTZ, Datum::TimestampTz(i)) => i.to_be_bytes().to_vec(),
        (oid::DATE, Datum::Date(d)) => d.to_be_bytes().to_vec(),
        (oid::BOOL, Datum::Bool(b)) => vec![u8::from(*b)],
        (oid::FLOAT8, Datum::Float8(f)) => f.to_be_bytes().to_vec(),
        (oid::FLOAT4, Datum::Float4(f)) => f.to_be_bytes().to_vec(),
        (oid::UUID, Datum::Uuid(u)) => u.to_vec(),
        (oid::BYTEA, Datum::Bytes(b)) => b.to_vec(),
        (oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME, Datum::Text(t)) => {
            t.as_bytes().to_vec()
        }
        (oid::NUMERIC, Datum::Numeric(n)) => binary_numeric(n)?,
        _ => return None,
    })
}

/// numeric decimal text as PostgreSQL's binary numeric (base-10000 digits, weight, sign,
/// display scale).
pub fn binary_numeric(text: &str) -> Option<Vec<u8>> {
    let special = match text {
        "NaN" => Some(0xC000u16),
        "Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    let mut out = Vec::new();
    if let Some(sign) = special {
        out.extend(0i16.to_be_bytes());
        out.extend(0i16.to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend(0u16.to_be_bytes());
        return Some(out);
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let dscale = frac_part.len() as u16;
    // Pad the integer part on the left and the fraction on the right to whole groups of 4.
    let int_trim = int_part.trim_start_matches('0');
    let int_pad = (4 - int_trim.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let digits_text = format!(
        "{}{int_trim}{frac_part}{}",
        "0".repeat(int_pad),
        "0".repeat(frac_pad)
    );
    let groups: Vec<i16> = digits_text
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    let int_groups = (int_trim.len() + int_pad) / 4;
    let mut weight = int_groups as i32 - 1;
    // Strip leading and trailing zero groups (PostgreSQL stores none).
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let digits = &groups[start..end];
    if digits.is_empty() {
        weight = 0;
    }
    out.extend((digits.len() as i16).to_be_bytes());
    out.extend((weight as i16).to_be_bytes());
    out.extend(
        (if negative && !digits.is_empty() {
            0x4000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend(dscale.to_be_bytes());
    for d in digits {
        out.extend(d.to_be_bytes());
    }
    Some(out)
}

/// Builds a [`CanonRow`] from the canonical bytes of every column (`ends` as in
/// [`CanonRow::ends`]): the sort key and binary key values are rebuilt from the key columns.
/// A key value of a type that cannot be rebuilt gives an empty binary key (the row can be
/// compared, not looked up on the source).
pub fn row_from_canonical(
    table: &TableSchema,
    keys: &Arc<[usize]>,
    bytes: Vec<u8>,
    ends: Vec<u32>,
) -> CanonRow {
    let mut sort_key = Vec::new();
    let mut key_raw = Vec::new();
    let mut complete = true;
    for &k in keys.iter() {
        let start = if k == 0 { 0 } else { ends[k - 1] as usize };
        let slice = &bytes[start..ends[k] as usize];
        match decode_canonical(slice) {
            Some(datum) => {
                if push_sort_key(&mut sort_key, &datum).is_err() {
                    sort_key.extend_from_slice(slice);
                }
                match binary_key_value(table.columns[k].type_oid, &datum) {
                    Some(b) => {
                        key_raw.extend((b.len() as i32).to_be_bytes());
                        key_raw.extend(b);
                    }
                    None => complete = false,
                }
            }
            None => {
                // Not a scalar (a target wrote something else there): order by its bytes.
                sort_key.push(0xFE);
                sort_key.extend_from_slice(slice);
                complete = false;
            }
        }
    }
    if !complete {
        key_raw.clear();
    }
    CanonRow::new(sort_key, bytes, ends, keys.clone(), key_raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::decode;

    #[test]
    fn numeric_binary_round_trips_through_the_decoder() {
        for text in [
            "0",
            "0.000",
            "1",
            "-1",
            "12.50",
            "0.0005",
            "10000",
            "123456789.000001",
            "-0.01",
            "99990000",
            "NaN",
            "Infinity",
            "-Infinity",
            "1.5",
        ] {
            let b = binary_numeric(text).unwrap();
            match decode(oid::NUMERIC, &b).unwrap() {
                Datum::Numeric(back) => assert_eq!(back, text, "{b:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(binary_numeric("1e5").is_none());
        assert!(binary_numeric("").is_none());
    }

    #[test]
    fn keys_rebuilt_from_canonical_bytes_match_the_binary_ones() {
        use crate::schema::{Column, TableName};
        use crate::{Row, Value};
        let col = Column::new;
        let table = TableSchema {
            name: TableName::new("public", "t"),
            columns: vec![
                col("a", oid::INT4, true),
                col("b", oid::TEXT, true),
                col("n", oid::NUMERIC, true),
                col("v", oid::TEXT, false),
            ],
        };
        let keys = super::super::key_columns(&table);
        let row = Row(vec![
            Value::Binary(7i32.to_be_bytes().to_vec().into()),
            Value::Binary(b"x\0y".to_vec().into()),
            Value::Binary(binary_numeric("-12.50").unwrap().into()),
            Value::Null,
        ]);
        let from_binary = super::super::canon_row(&table, &keys, &row, Default::default()).unwrap();
        let rebuilt = row_from_canonical(
            &table,
            &keys,
            from_binary.bytes.to_vec(),
            from_binary.ends.to_vec(),
        );
        assert_eq!(rebuilt, from_binary);
    }
}
