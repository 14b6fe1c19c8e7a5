//! Key ranges, the contract a store's reader implements for the checker ([`TableSide`]), and
//! the bisection that narrows differing ranges down to rows.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::digest::{compare_rows, CanonRow, RangeDigest, RowDiff};
use crate::error::Result;

/// A key value that bounds a range: its order-preserving encoding, and the key columns'
/// values in PostgreSQL's binary send format (for stores queried with parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBound {
    pub sort_key: Box<[u8]>,
    /// One entry per key column; `None` is NULL.
    pub values: Vec<Option<Bytes>>,
}

impl KeyBound {
    /// The bound at a row's key.
    pub fn of(row: &CanonRow) -> KeyBound {
        KeyBound {
            sort_key: row.sort_key.clone(),
            values: row.key_values(),
        }
    }

    /// The bound at a key given as its columns' values in PostgreSQL's binary send format
    /// (`None`: NULL), in the order of `table`'s key columns. The error names the column whose
    /// value cannot be decoded or ordered.
    pub fn of_values(
        table: &crate::TableSchema,
        values: Vec<Option<Bytes>>,
    ) -> std::result::Result<KeyBound, String> {
        let mut sort_key = Vec::with_capacity(16 * values.len());
        let columns: Vec<usize> = table.key_indexes().collect();
        if columns.len() != values.len() {
            return Err(format!(
                "table {} has {} key columns, the key has {} values",
                table.name,
                columns.len(),
                values.len()
            ));
        }
        for (&i, value) in columns.iter().zip(&values) {
            let column = &table.columns[i];
            let datum = match value {
                None => crate::datum::Datum::Null,
                Some(b) => crate::datum::decode(column.type_oid, b)
                    .map_err(|e| format!("key column {}: {e}", column.name))?,
            };
            super::canonical::push_sort_key(&mut sort_key, &datum).map_err(|_| {
                format!(
                    "key column {} of type {} has no order the checker knows",
                    column.name, column.type_name
                )
            })?;
        }
        Ok(KeyBound {
            sort_key: sort_key.into(),
            values,
        })
    }
}

/// One end of a key range. Ranges are `(low, high]`: the low bound is excluded, the high one
/// included, so adjacent ranges share a bound and never a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Unbounded,
    Key(Arc<KeyBound>),
}

impl Bound {
    /// Whether `sort_key` lies above this low bound.
    pub fn below(&self, sort_key: &[u8]) -> bool {
        match self {
            Bound::Unbounded => true,
            Bound::Key(k) => &*k.sort_key < sort_key,
        }
    }

    /// Whether `sort_key` lies at or below this high bound.
    pub fn at_or_above(&self, sort_key: &[u8]) -> bool {
        match self {
            Bound::Unbounded => true,
            Bound::Key(k) => sort_key <= &*k.sort_key,
        }
    }
}

/// How much a scan keeps besides the digest.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Rows kept for a row-by-row comparison; past this a scan keeps only the digest and
    /// split keys (memory stays bounded whatever the range holds).
    pub keep_rows: usize,
    /// Every `split_every`-th row's key is kept as a point to split the range at.
    pub split_every: usize,
}

/// What one side holds in one range.
#[derive(Debug, Default)]
pub struct RangeScan {
    pub digest: RangeDigest,
    /// Every row in key order, unless there were more than [`ScanLimits::keep_rows`].
    pub rows: Option<Vec<CanonRow>>,
    /// Keys to split the range at, in key order.
    pub splits: Vec<Arc<KeyBound>>,
}

impl RangeScan {
    /// An empty scan that will keep rows.
    pub fn new() -> RangeScan {
        RangeScan {
            rows: Some(Vec::new()),
            ..RangeScan::default()
        }
    }

    /// Takes the next row (rows arrive in key order).
    pub fn push(&mut self, row: CanonRow, limits: &ScanLimits) {
        self.digest.add(&row.hash);
        if limits.split_every > 0 && self.digest.rows.is_multiple_of(limits.split_every as u64) {
            self.splits.push(Arc::new(KeyBound::of(&row)));
        }
        if let Some(rows) = &mut self.rows {
            if rows.len() < limits.keep_rows {
                rows.push(row);
            } else {
                self.rows = None;
            }
        }
    }
}

/// One store's view of one table, as the checker reads it.
///
/// Contract: rows come in canonical form with the source's column order and the precision
/// the store keeps; [`TableSide::scan`] returns the rows of `(low, high]` in sort-key order,
/// and an error (never a wrong answer) if the store returns them out of order.
#[async_trait]
pub trait TableSide: Send + Sync {
    /// Reads the range `(low, high]`.
    async fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> Result<RangeScan>;

    /// Reads the rows with these keys (`None` where a key has no row).
    async fn fetch(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<CanonRow>>>;

    /// Lets go of the store's connections now, in the caller's task (see
    /// [`crate::Sink::close`]); the default does nothing.
    async fn close(self: Box<Self>) {}
}

/// The outcome of comparing one range.
#[derive(Debug, Default)]
pub struct RangeOutcome {
    pub source_rows: u64,
    pub target_rows: u64,
    /// Every differing row, in key order.
    pub diffs: Vec<RowDiff>,
    /// Range reads (per side) it took, including bisection.
    pub reads: u32,
}

/// Ranges split into this many parts when their digests differ and they hold too many rows
/// to compare row by row.
pub const SPLIT_WAYS: usize = 32;

/// Compares `(low, high]` on both sides: equal digests end it; otherwise rows are compared
/// one by one when both sides kept them, else the range is split at keys seen while reading
/// and each part is compared again (bisection), down to ranges small enough to hold.
pub async fn compare_range(
    source: &dyn TableSide,
    target: &dyn TableSide,
    low: Bound,
    high: Bound,
    keep_rows: usize,
    expected_rows: u64,
) -> Result<RangeOutcome> {
    let mut outcome = RangeOutcome::default();
    let mut pending = vec![(low, high, expected_rows, true)];
    while let Some((low, high, expected, top)) = pending.pop() {
        let limits = ScanLimits {
            keep_rows,
            split_every: ((expected as usize) / SPLIT_WAYS).max(1),
        };
        let (s, t) = futures::try_join!(
            source.scan(&low, &high, limits),
            target.scan(&low, &high, limits)
        )?;
        outcome.reads += 1;
        if top {
            outcome.source_rows += s.digest.rows;
            outcome.target_rows += t.digest.rows;
        }
        if s.digest == t.digest {
            continue;
        }
        if let (Some(sr), Some(tr)) = (&s.rows, &t.rows) {
            outcome.diffs.extend(compare_rows(sr, tr));
            continue;
        }
        // Split at the keys the larger side saw; each part is re-read on both sides.
        let splits = if s.digest.rows >= t.digest.rows {
            s.splits
        } else {
            t.splits
        };
        let rows = s.digest.rows.max(t.digest.rows);
        let mut parts = Vec::with_capacity(splits.len() + 1);
        let mut lo = low;
        for split in splits {
            let hi = Bound::Key(split);
            if lo != hi {
                parts.push((lo.clone(), hi.clone()));
            }
            lo = hi;
        }
        parts.push((lo, high));
        let each = rows / parts.len() as u64 + 1;
        if parts.len() == 1 {
            // No key to split at: the range holds more rows than can be kept but too few
            // distinct keys to split; compare with an unbounded buffer rather than loop.
            let (low, high) = parts.pop().expect("one part");
            let unbounded = ScanLimits {
                keep_rows: usize::MAX,
                split_every: 0,
            };
            let (s, t) = futures::try_join!(
                source.scan(&low, &high, unbounded),
                target.scan(&low, &high, unbounded)
            )?;
            outcome.reads += 1;
            outcome.diffs.extend(compare_rows(
                s.rows.as_deref().unwrap_or_default(),
                t.rows.as_deref().unwrap_or_default(),
            ));
            continue;
        }
        // Pushed in reverse so parts are compared in key order.
        for (lo, hi) in parts.into_iter().rev() {
            pending.push((lo, hi, each, false));
        }
    }
    outcome.diffs.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
    Ok(outcome)
}
