//! A table's rows held in memory in key order, for targets that cannot be read by key range
//! (a folded topic or stream, a document collection): they are read once and served by range.

use std::collections::BTreeMap;
use std::ops::Bound as RangeEnd;

use super::digest::CanonRow;
use super::range::{Bound, RangeScan, ScanLimits};

/// Rows by sort key. Memory grows with the table: about the canonical row size plus 150
/// bytes a row.
#[derive(Debug, Default)]
pub struct SortedRows {
    rows: BTreeMap<Box<[u8]>, CanonRow>,
}

impl SortedRows {
    pub fn new() -> SortedRows {
        SortedRows::default()
    }

    /// Adds or replaces the row with this key.
    pub fn insert(&mut self, row: CanonRow) {
        self.rows.insert(row.sort_key.clone(), row);
    }

    /// The row with this key.
    pub fn get(&self, sort_key: &[u8]) -> Option<&CanonRow> {
        self.rows.get(sort_key)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows of `(low, high]`, as a store's range read would return them.
    pub fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> RangeScan {
        let lo = match low {
            Bound::Unbounded => RangeEnd::Unbounded,
            Bound::Key(k) => RangeEnd::Excluded(k.sort_key.clone()),
        };
        let hi = match high {
            Bound::Unbounded => RangeEnd::Unbounded,
            Bound::Key(k) => RangeEnd::Included(k.sort_key.clone()),
        };
        let mut scan = RangeScan::new();
        if let (RangeEnd::Excluded(a), RangeEnd::Included(b)) = (&lo, &hi) {
            if a >= b {
                return scan;
            }
        }
        for row in self.rows.range::<Box<[u8]>, _>((lo, hi)).map(|(_, r)| r) {
            scan.push(row.clone(), &limits);
        }
        scan
    }
}
