//! Key ranges: how one large table's snapshot copy is split so that several connections copy
//! it at once and a crash redoes only the ranges that were not finished.
//!
//! A [`Split`] is an ordered list of split points, each a value of the table's key columns
//! written as PostgreSQL text. Range `i` of `n = points + 1` holds the keys `k` with
//! `points[i-1] <= k < points[i]` in the source's own ordering of the key (the first range has
//! no lower bound, the last no upper bound), so every key falls in exactly one range whatever
//! the snapshot it is read under. A split is kept with every range recorded as copied, and a
//! copy that resumes reuses it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::position::Lsn;

/// The split points of one table's key space (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub points: Vec<Vec<String>>,
}

impl Split {
    /// How many ranges the split makes.
    pub fn count(&self) -> u32 {
        self.points.len() as u32 + 1
    }

    /// Every range of the split, in key order.
    pub fn ranges(self: &Arc<Self>) -> Vec<KeyRange> {
        (0..self.count())
            .map(|index| KeyRange {
                index,
                split: self.clone(),
            })
            .collect()
    }

    /// The split as JSON text (an array of arrays of strings), to store beside a range record.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.points).expect("strings always serialize")
    }

    /// Reads [`Split::to_json`]'s text.
    pub fn from_json(text: &str) -> Result<Split, String> {
        serde_json::from_str(text)
            .map(|points| Split { points })
            .map_err(|e| format!("a stored key split is damaged: {e}"))
    }
}

/// One range of a [`Split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Its place in key order, from 0.
    pub index: u32,
    pub split: Arc<Split>,
}

impl KeyRange {
    /// The key values the range starts at (inclusive); `None` for the first range.
    pub fn lower(&self) -> Option<&[String]> {
        let i = self.index as usize;
        (i > 0).then(|| self.split.points[i - 1].as_slice())
    }

    /// The key values the next range starts at (exclusive); `None` for the last range.
    pub fn upper(&self) -> Option<&[String]> {
        self.split
            .points
            .get(self.index as usize)
            .map(Vec::as_slice)
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.split.count())
    }
}

/// The ranges of one table a sink holds durably, and the split they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangesCopied {
    pub split: Split,
    /// Range index -> the LSN of the snapshot it was copied at.
    pub done: BTreeMap<u32, Lsn>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_key_space_once_and_the_split_round_trips() {
        let split = Arc::new(Split {
            points: vec![
                vec!["10".into(), "a".into()],
                vec!["20".into(), "b'c".into()],
            ],
        });
        let ranges = split.ranges();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].lower(), None);
        assert_eq!(ranges[0].upper(), Some(&split.points[0][..]));
        assert_eq!(ranges[1].lower(), ranges[0].upper());
        assert_eq!(ranges[1].upper(), ranges[2].lower());
        assert_eq!(ranges[2].upper(), None);
        assert_eq!(ranges[1].to_string(), "2/3");
        assert_eq!(Split::from_json(&split.to_json()).unwrap(), *split);
        assert!(Split::from_json("{").is_err());
        assert_eq!(Split::default().count(), 1);
    }
}
