//! Row hashes, range digests and the row-by-row comparison of two key ranges.

use std::cmp::Ordering;

/// One row in canonical form: its order-preserving key, the canonical bytes of every column
/// (in the source's column order), and the BLAKE3 hash of key and row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonRow {
    /// Order-preserving encoding of the key columns ([`super::canonical::push_sort_key`]).
    pub sort_key: Box<[u8]>,
    /// Canonical encoding of every column, concatenated.
    pub bytes: Box<[u8]>,
    /// End offset of each column's encoding in `bytes`.
    pub ends: Box<[u32]>,
    /// Positions of the key columns among the columns.
    pub key_columns: std::sync::Arc<[usize]>,
    /// The key columns' values in PostgreSQL's binary send format, each as a 4-byte length
    /// (-1 for NULL) and its bytes, so a row can be looked up again by key.
    pub key_raw: Box<[u8]>,
    pub hash: [u8; 32],
}

/// Appends one key column's binary value (`None`: NULL) to a raw key: its length as a
/// big-endian i32 (-1 for NULL), then its bytes.
pub fn push_raw_key_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// The key columns' binary values of a raw key built by [`push_raw_key_value`].
pub fn split_raw_key(raw: &[u8]) -> Vec<Option<bytes::Bytes>> {
    let mut values = Vec::new();
    let mut rest = raw;
    while rest.len() >= 4 {
        let len = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
        } else {
            let n = (len as usize).min(rest.len());
            values.push(Some(bytes::Bytes::copy_from_slice(&rest[..n])));
            rest = &rest[n..];
        }
    }
    values
}

impl CanonRow {
    /// Builds a row from its sort key and the canonical encodings of its columns; the hash is
    /// BLAKE3 over the key columns' encodings followed by every column's.
    pub fn new(
        sort_key: Vec<u8>,
        bytes: Vec<u8>,
        ends: Vec<u32>,
        key_columns: std::sync::Arc<[usize]>,
        key_raw: Vec<u8>,
    ) -> CanonRow {
        let mut hasher = blake3::Hasher::new();
        for &k in key_columns.iter() {
            hasher.update(column_slice(&bytes, &ends, k));
        }
        hasher.update(&bytes);
        CanonRow {
            sort_key: sort_key.into_boxed_slice(),
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            key_columns,
            key_raw: key_raw.into_boxed_slice(),
            hash: *hasher.finalize().as_bytes(),
        }
    }

    /// The key columns' binary values (see [`CanonRow::key_raw`]).
    pub fn key_values(&self) -> Vec<Option<bytes::Bytes>> {
        split_raw_key(&self.key_raw)
    }

    /// The canonical bytes of column `i`.
    pub fn column(&self, i: usize) -> &[u8] {
        column_slice(&self.bytes, &self.ends, i)
    }

    /// The key as JSON-like text for reports: `{"id": 42}`.
    pub fn key_text(&self, names: &[String]) -> String {
        let parts: Vec<String> = self
            .key_columns
            .iter()
            .map(|&k| {
                let value = super::canonical::render_value(self.column(k))
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| "?".into());
                format!(
                    "{}: {value}",
                    serde_json::Value::String(names.get(k).cloned().unwrap_or_default())
                )
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }

    /// Bytes held, for memory bounds.
    pub fn size(&self) -> usize {
        self.sort_key.len() + self.bytes.len() + self.key_raw.len() + self.ends.len() * 4 + 112
    }
}

fn column_slice<'a>(bytes: &'a [u8], ends: &[u32], i: usize) -> &'a [u8] {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
}

/// The digest of a key range: the row count and the sum of the rows' hashes modulo 2^256.
/// Order-independent and updatable (a row can be added or taken out), and unlike XOR, two
/// identical rows do not cancel out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeDigest {
    pub rows: u64,
    /// Little-endian 64-bit limbs of the 256-bit sum.
    pub sum: [u64; 4],
}

impl RangeDigest {
    /// Adds one row hash (read as a little-endian 256-bit number).
    pub fn add(&mut self, hash: &[u8; 32]) {
        self.rows += 1;
        let mut carry = false;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let h = u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (s1, c1) = limb.overflowing_add(h);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *limb = s2;
            carry = c1 || c2;
        }
    }

    /// Takes one row hash out (the inverse of [`RangeDigest::add`]).
    pub fn remove(&mut self, hash: &[u8; 32]) {
        self.rows = self.rows.wrapping_sub(1);
        let mut borrow = false;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let h = u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (d1, b1) = limb.overflowing_sub(h);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *limb = d2;
            borrow = b1 || b2;
        }
    }

    /// The digest as 64 hex digits after the row count, for logs and JSON reports.
    pub fn to_hex(&self) -> String {
        let mut s = format!("{}:", self.rows);
        for limb in self.sum.iter().rev() {
            s.push_str(&format!("{limb:016x}"));
        }
        s
    }
}

/// How one key differs between source and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowDiff {
    /// In the source, not in the target.
    Missing(CanonRow),
    /// In the target, not in the source.
    Extra(CanonRow),
    /// In both, with different values in `columns` (indexes in the source's column order).
    Different {
        source: CanonRow,
        target: CanonRow,
        columns: Vec<usize>,
    },
}

impl RowDiff {
    /// The row's sort key (the same on both sides).
    pub fn sort_key(&self) -> &[u8] {
        match self {
            RowDiff::Missing(r) | RowDiff::Extra(r) => &r.sort_key,
            RowDiff::Different { source, .. } => &source.sort_key,
        }
    }

    /// `missing`, `extra` or `different`.
    pub fn kind(&self) -> &'static str {
        match self {
            RowDiff::Missing(_) => "missing",
            RowDiff::Extra(_) => "extra",
            RowDiff::Different { .. } => "different",
        }
    }
}

/// Compares two key-ordered lists of rows of one range and returns every difference, in key
/// order.
pub fn compare_rows(source: &[CanonRow], target: &[CanonRow]) -> Vec<RowDiff> {
    let mut diffs = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < source.len() || j < target.len() {
        let order = match (source.get(i), target.get(j)) {
            (Some(s), Some(t)) => s.sort_key.cmp(&t.sort_key),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                diffs.push(RowDiff::Missing(source[i].clone()));
                i += 1;
            }
            Ordering::Greater => {
                diffs.push(RowDiff::Extra(target[j].clone()));
                j += 1;
            }
            Ordering::Equal => {
                let (s, t) = (&source[i], &target[j]);
                if s.hash != t.hash {
                    let columns = (0..s.ends.len().max(t.ends.len()))
                        .filter(|&c| {
                            c >= s.ends.len() || c >= t.ends.len() || s.column(c) != t.column(c)
                        })
                        .collect();
                    diffs.push(RowDiff::Different {
                        source: s.clone(),
                        target: t.clone(),
                        columns,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn row(key: u8, value: u8) -> CanonRow {
        let mut bytes = Vec::new();
        bytes.extend([0x02, 0, 0, 0, 0, 0, 0, 0, key]);
        bytes.extend([0x02, 0, 0, 0, 0, 0, 0, 0, value]);
        CanonRow::new(
            vec![key],
            bytes,
            vec![9, 18],
            Arc::from(vec![0usize]),
            Vec::new(),
        )
    }

    #[test]
    fn digest_is_order_independent_and_duplicates_do_not_cancel() {
        let (a, b, c) = (row(1, 1), row(2, 2), row(3, 3));
        let mut d1 = RangeDigest::default();
        for r in [&a, &b, &c] {
            d1.add(&r.hash);
        }
        let mut d2 = RangeDigest::default();
        for r in [&c, &a, &b] {
            d2.add(&r.hash);
        }
        assert_eq!(d1, d2);
        let mut twice = RangeDigest::default();
        twice.add(&a.hash);
        twice.add(&a.hash);
        assert_ne!(twice, RangeDigest::default());
        assert_ne!(twice.sum, [0; 4]);
        d2.remove(&b.hash);
        let mut d3 = RangeDigest::default();
        d3.add(&a.hash);
        d3.add(&c.hash);
        assert_eq!(d2, d3);
    }

    #[test]
    fn digest_sum_carries_across_limbs() {
        let mut d = RangeDigest::default();
        d.add(&[0xFF; 32]);
        d.add(&{
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        });
        assert_eq!(d.sum, [0; 4], "2^256 - 1 + 1 wraps to 0");
        assert_eq!(d.rows, 2);
    }

    #[test]
    fn comparison_finds_missing_extra_and_changed_columns() {
        let source = vec![row(1, 1), row(2, 2), row(4, 4)];
        let target = vec![row(2, 9), row(3, 3), row(4, 4)];
        let diffs = compare_rows(&source, &target);
        let kinds: Vec<_> = diffs.iter().map(|d| (d.kind(), d.sort_key()[0])).collect();
        assert_eq!(
            kinds,
            [("missing", 1), ("different", 2), ("extra", 3)],
            "{diffs:?}"
        );
        match &diffs[1] {
            RowDiff::Different { columns, .. } => assert_eq!(columns, &[1]),
            other => panic!("{other:?}"),
        }
        let names = vec!["id".to_string(), "v".to_string()];
        assert_eq!(diffs[0].sort_key(), &[1]);
        if let RowDiff::Missing(r) = &diffs[0] {
            assert_eq!(r.key_text(&names), "{\"id\": 1}");
        }
    }
}
