//! The consistency checker's store-independent half: the canonical row encoding, row hashes,
//! range digests and the comparison of two ranges. Readers for each store turn what they read
//! into [`CanonRow`]s; the checker compares digests of key ranges and, where they differ, the
//! rows. The encoding is specified in `docs/verify.md`.

pub mod canonical;
mod digest;
pub mod fold;
pub mod keys;
mod range;
pub mod rendered;
mod sorted;

use std::sync::Arc;

pub use canonical::Precision;
pub use digest::{compare_rows, push_raw_key_value, split_raw_key, CanonRow, RangeDigest, RowDiff};
pub use range::{
    compare_range, Bound, KeyBound, RangeOutcome, RangeScan, ScanLimits, TableSide, SPLIT_WAYS,
};
pub use sorted::SortedRows;

use crate::datum::{self, DecodeError};
use crate::{Row, TableSchema, Value};

/// Why a row could not be put in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    #[error("column {column}: {source}")]
    Decode {
        column: String,
        #[source]
        source: DecodeError,
    },
    #[error("key column {column} has a type the checker cannot order ({type_name})")]
    UnorderedKey { column: String, type_name: String },
    #[error("column {column} holds an unchanged-TOAST marker, which is not a value")]
    Unchanged { column: String },
}

/// The positions of a table's key columns, shared by every row of the table.
pub fn key_columns(table: &TableSchema) -> Arc<[usize]> {
    table.key_indexes().collect::<Vec<_>>().into()
}

/// Puts a row of binary values (PostgreSQL's send format, in `table`'s column order) in
/// canonical form.
pub fn canon_row(
    table: &TableSchema,
    keys: &Arc<[usize]>,
    row: &Row,
    precision: Precision,
) -> Result<CanonRow, CanonError> {
    if let Some(i) = row.0.iter().position(|v| *v == Value::Unchanged) {
        return Err(CanonError::Unchanged {
            column: table.columns[i].name.clone(),
        });
    }
    canon_values(
        table,
        keys,
        row.0.iter().map(|v| match v {
            Value::Binary(b) => Some(&b[..]),
            _ => None,
        }),
        precision,
    )
}

/// Puts one row given as binary values (`None` for NULL, in `table`'s column order) in
/// canonical form.
pub fn canon_values<'a>(
    table: &TableSchema,
    keys: &Arc<[usize]>,
    values: impl Iterator<Item = Option<&'a [u8]>>,
    precision: Precision,
) -> Result<CanonRow, CanonError> {
    let mut bytes = Vec::with_capacity(16 * table.columns.len());
    let mut ends = Vec::with_capacity(table.columns.len());
    let mut sort_key = Vec::with_capacity(16 * keys.len());
    let mut key_raw = Vec::with_capacity(16 * keys.len());
    for (i, (column, value)) in table.columns.iter().zip(values).enumerate() {
        let datum = match value {
            None => datum::Datum::Null,
            Some(b) => datum::decode(column.type_oid, b).map_err(|source| CanonError::Decode {
                column: column.name.clone(),
                source,
            })?,
        };
        canonical::push_value(&mut bytes, &datum, precision);
        ends.push(bytes.len() as u32);
        if keys.contains(&i) {
            canonical::push_sort_key(&mut sort_key, &datum).map_err(|_| {
                CanonError::UnorderedKey {
                    column: column.name.clone(),
                    type_name: column.type_name.clone(),
                }
            })?;
            digest::push_raw_key_value(&mut key_raw, value);
        }
    }
    Ok(CanonRow::new(sort_key, bytes, ends, keys.clone(), key_raw))
}

/// Whether the checker can order keys of this type (see [`canonical::push_sort_key`]).
pub fn orderable_key_type(type_oid: u32) -> bool {
    use datum::oid::*;
    matches!(
        type_oid,
        BOOL | INT2
            | INT4
            | INT8
            | OID
            | FLOAT4
            | FLOAT8
            | NUMERIC
            | MONEY
            | TEXT
            | VARCHAR
            | BPCHAR
            | NAME
            | BYTEA
            | UUID
            | DATE
            | TIME
            | TIMESTAMP
            | TIMESTAMPTZ
    )
}

/// Whether keys of this type compare as text (and so need `COLLATE "C"` in an `ORDER BY` to
/// match the checker's byte order).
pub fn text_key_type(type_oid: u32) -> bool {
    use datum::oid::*;
    matches!(type_oid, TEXT | VARCHAR | BPCHAR | NAME)
}
