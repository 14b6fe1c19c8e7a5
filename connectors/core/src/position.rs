use std::fmt;
use std::str::FromStr;

/// A PostgreSQL write-ahead-log position (`pg_lsn`), ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The zero position, before any WAL.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The text was not an LSN of the form `16/B374D848`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a WAL position (expected the form 16/B374D848)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Where one change sits in the source's history: the LSN of its transaction's commit record and
/// its ordinal inside that transaction. Positions order changes exactly as the source committed
/// them, including several changes that share one commit LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// LSN of the commit record of the change's transaction.
    pub commit_lsn: Lsn,
    /// 0-based index of the change inside its transaction.
    pub ordinal: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.ordinal)
    }
}

/// A whole source transaction that a sink has made durable. The replication slot may be
/// confirmed up to `end_lsn` once every sink reports a checkpoint at or past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Checkpoint {
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where streaming resumes.
    pub end_lsn: Lsn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/2".parse::<Lsn>().unwrap(), Lsn((1 << 32) | 2));
    }

    #[test]
    fn lsn_rejects_garbage() {
        for text in ["", "12", "x/1", "1/", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn positions_order_by_commit_then_ordinal() {
        let a = Position {
            commit_lsn: Lsn(5),
            ordinal: 9,
        };
        let b = Position {
            commit_lsn: Lsn(6),
            ordinal: 0,
        };
        let c = Position {
            commit_lsn: Lsn(6),
            ordinal: 1,
        };
        assert!(a < b && b < c);
    }
}
