//! Each sink's durable position and the slot's confirmed position.
//!
//! The rule this stage enforces: the slot is confirmed only to the lowest transaction end that
//! every sink has made durable, never backwards, so no sink's saved position is ever behind the
//! slot (a restart that finds one behind knows changes were lost to it; see
//! [`super::wiring::open_sinks`]). A quiet source still moves on: while the server reports WAL
//! beyond the last transaction handed on, the reader hands every sink a heartbeat (an empty
//! transaction ending at that WAL end), and the slot follows once the sinks recorded it. While a
//! table joins the stream, the slot is held at or before the position its copy started from.

use cutover_core::{Lsn, StreamEvent};

/// The reader's view of what is dispatched and what every sink has made durable.
#[derive(Debug)]
pub struct Progress {
    /// Per sink: the end of the last transaction it made durable (or where streaming started).
    durable: Vec<Lsn>,
    start: Lsn,
    confirmed: Lsn,
    /// End of the last whole transaction handed to the sinks.
    last_dispatched: Lsn,
    /// The highest idle WAL end seen with no transaction open: everything before it was read.
    idle_seen: Lsn,
    in_txn: bool,
    /// While a table joins: the slot stays at or before this position.
    cap: Option<Lsn>,
}

impl Progress {
    /// Streaming from `start`, with each sink durable at `durable[i]`.
    pub fn new(start: Lsn, durable: Vec<Lsn>) -> Self {
        Progress {
            durable,
            start,
            confirmed: start,
            last_dispatched: start,
            idle_seen: start,
            in_txn: false,
            cap: None,
        }
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Whether the reader is inside a source transaction (between a `Begin` and its `Commit`).
    pub fn in_txn(&self) -> bool {
        self.in_txn
    }

    fn min_durable(&self) -> Lsn {
        self.durable.iter().copied().min().unwrap_or(self.start)
    }

    fn capped(&self, lsn: Lsn) -> Lsn {
        self.cap.map_or(lsn, |c| lsn.min(c))
    }

    /// Notes a batch handed to every sink.
    pub fn dispatched(&mut self, events: &[StreamEvent]) {
        for event in events {
            match event {
                StreamEvent::Begin { .. } => self.in_txn = true,
                StreamEvent::Commit { end_lsn, .. } => {
                    self.in_txn = false;
                    self.last_dispatched = *end_lsn;
                }
                StreamEvent::Change(_) => {}
            }
        }
    }

    /// Sink `sink` made everything up to `end_lsn` durable. Returns the position to confirm
    /// the slot to, when it moves.
    pub fn durable(&mut self, sink: usize, end_lsn: Lsn) -> Option<Lsn> {
        if let Some(d) = self.durable.get_mut(sink) {
            *d = (*d).max(end_lsn);
        }
        let min = self.capped(self.min_durable());
        (min > self.confirmed).then(|| {
            self.confirmed = min;
            min
        })
    }

    /// The source is idle up to `wal_end` (everything before it was read). Returns whether a
    /// heartbeat there would move the sinks on: no transaction open, no table joining, and
    /// `wal_end` past the last transaction handed on.
    pub fn idle(&mut self, wal_end: Lsn) -> bool {
        if self.in_txn {
            return false;
        }
        self.idle_seen = self.idle_seen.max(wal_end);
        self.cap.is_none() && wal_end > self.last_dispatched
    }

    /// A table starts joining: hold the slot at what is confirmed or dispatched so far.
    pub fn hold(&mut self) {
        self.cap = Some(self.confirmed.max(self.last_dispatched));
    }

    /// The joining table is in every sink: the slot may move on.
    pub fn release(&mut self) {
        self.cap = None;
    }

    /// Whether every transaction that ended at or before `target` has been handed to the sinks
    /// and no transaction is open: reading may stop there.
    pub fn read_past(&self, target: Lsn) -> bool {
        self.read_through().is_some_and(|read| read >= target)
    }

    /// Between source transactions, the position up to which every change has been handed to
    /// the sinks (the last transaction's end, or the idle source's WAL end); None inside one.
    pub fn read_through(&self) -> Option<Lsn> {
        (!self.in_txn).then(|| self.last_dispatched.max(self.idle_seen))
    }

    /// Where the slot is confirmed when the pipeline stops, every sink having ended.
    pub fn final_position(&self) -> Lsn {
        self.capped(self.min_durable()).max(self.confirmed)
    }
}

/// A heartbeat at `wal_end`: an empty transaction that ends there, for the sinks to record as
/// their position while the source writes nothing they take. Its commit position is one before
/// `wal_end`, so a real transaction whose commit record starts exactly at `wal_end` is still
/// newer than what the sinks recorded (a sink skips transactions at or before its checkpoint).
pub fn heartbeat(wal_end: Lsn, now_micros: i64) -> [StreamEvent; 2] {
    let commit_lsn = Lsn(wal_end.0.saturating_sub(1));
    [
        StreamEvent::Begin {
            commit_lsn,
            xid: 0,
            commit_time_micros: now_micros,
        },
        StreamEvent::Commit {
            commit_lsn,
            end_lsn: wal_end,
            commit_time_micros: now_micros,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(lsn: u64) -> StreamEvent {
        StreamEvent::Begin {
            commit_lsn: Lsn(lsn),
            xid: 1,
            commit_time_micros: 0,
        }
    }

    fn commit(lsn: u64, end: u64) -> StreamEvent {
        StreamEvent::Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(end),
            commit_time_micros: 0,
        }
    }

    #[test]
    fn confirms_only_what_every_sink_has_made_durable() {
        let mut p = Progress::new(Lsn(10), vec![Lsn(10), Lsn(10), Lsn(10)]);
        p.dispatched(&[begin(20), commit(20, 21), begin(30), commit(30, 31)]);
        assert_eq!(p.durable(0, Lsn(31)), None, "two sinks still at 10");
        assert_eq!(p.durable(1, Lsn(21)), None, "sink 2 still at 10");
        assert_eq!(
            p.durable(2, Lsn(31)),
            Some(Lsn(21)),
            "the slowest sink has 21"
        );
        assert_eq!(p.durable(1, Lsn(31)), Some(Lsn(31)));
        // A late, older report never moves the slot back.
        assert_eq!(p.durable(1, Lsn(21)), None);
        assert_eq!(p.confirmed(), Lsn(31));
    }

    #[test]
    fn an_idle_source_moves_the_slot_only_through_a_heartbeat_every_sink_recorded() {
        let mut p = Progress::new(Lsn(10), vec![Lsn(10), Lsn(10)]);
        p.dispatched(&[begin(20), commit(20, 21)]);
        assert!(p.idle(Lsn(50)), "WAL beyond what was handed on");
        p.durable(0, Lsn(21));
        assert_eq!(
            p.durable(1, Lsn(21)),
            Some(Lsn(21)),
            "idle WAL alone never moves the slot past what the sinks hold"
        );
        p.dispatched(&heartbeat(Lsn(50), 0));
        assert!(!p.idle(Lsn(50)), "the heartbeat is on its way");
        assert_eq!(p.durable(0, Lsn(50)), None, "one sink recorded it");
        assert_eq!(p.durable(1, Lsn(50)), Some(Lsn(50)), "every sink did");
        p.dispatched(&[begin(60)]);
        assert!(!p.idle(Lsn(70)), "inside a transaction");
        p.dispatched(&[commit(60, 61)]);
        assert!(p.idle(Lsn(70)));
        assert_eq!(
            p.read_through(),
            Some(Lsn(70)),
            "everything before 70 was read"
        );
    }

    #[test]
    fn a_heartbeat_is_older_than_a_transaction_committed_at_its_position() {
        let [StreamEvent::Begin { commit_lsn, .. }, StreamEvent::Commit { end_lsn, .. }] =
            heartbeat(Lsn(50), 0)
        else {
            panic!("a heartbeat is a begin and a commit");
        };
        assert!(commit_lsn < Lsn(50) && end_lsn == Lsn(50));
    }

    #[test]
    fn a_joining_table_holds_the_slot_at_its_start() {
        let mut p = Progress::new(Lsn(10), vec![Lsn(10)]);
        p.dispatched(&[begin(20), commit(20, 21)]);
        p.hold();
        p.dispatched(&[begin(30), commit(30, 31)]);
        assert_eq!(
            p.durable(0, Lsn(31)),
            Some(Lsn(21)),
            "held at the copy's start"
        );
        assert!(!p.idle(Lsn(40)), "no heartbeat while a table joins");
        assert_eq!(p.final_position(), Lsn(21));
        p.release();
        assert_eq!(p.final_position(), Lsn(31));
        assert_eq!(p.durable(0, Lsn(31)), Some(Lsn(31)), "released");
        assert!(p.idle(Lsn(40)));
    }

    #[test]
    fn reading_may_stop_once_past_the_target_at_a_boundary() {
        let mut p = Progress::new(Lsn(10), vec![Lsn(10)]);
        assert!(!p.read_past(Lsn(30)));
        p.dispatched(&[begin(29), commit(29, 30), begin(40)]);
        assert!(!p.read_past(Lsn(30)), "a transaction is open");
        p.dispatched(&[commit(40, 41)]);
        assert!(p.read_past(Lsn(30)));
        let mut q = Progress::new(Lsn(10), vec![Lsn(10)]);
        q.idle(Lsn(35));
        assert!(
            q.read_past(Lsn(30)),
            "idle past the target: nothing before it is unread"
        );
    }
}
