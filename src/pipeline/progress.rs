//! Each sink's durable position and the slot's confirmed position.
//!
//! The rule this stage enforces: the slot is confirmed only to the lowest transaction end that
//! every sink has made durable, never backwards; or, with nothing in flight, to the WAL end the
//! server reported while idle (so a quiet source does not pile up WAL). While a table joins the
//! stream, the slot is held at or before the position its copy started from.

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
    /// the slot to, when it moves: once everything dispatched is durable, that is the source's
    /// idle position seen since (rule 6, without waiting for the next keepalive).
    pub fn durable(&mut self, sink: usize, end_lsn: Lsn) -> Option<Lsn> {
        if let Some(d) = self.durable.get_mut(sink) {
            *d = (*d).max(end_lsn);
        }
        let mut min = self.capped(self.min_durable());
        if self.cap.is_none() && !self.in_txn && min >= self.last_dispatched {
            min = min.max(self.idle_seen);
        }
        (min > self.confirmed).then(|| {
            self.confirmed = min;
            min
        })
    }

    /// The source is idle up to `wal_end`. Returns the position to confirm the slot to, when
    /// nothing is in flight and it moves.
    pub fn idle(&mut self, wal_end: Lsn) -> Option<Lsn> {
        if self.in_txn {
            return None;
        }
        self.idle_seen = self.idle_seen.max(wal_end);
        let settled = self.cap.is_none()
            && self.min_durable() >= self.last_dispatched
            && wal_end > self.confirmed;
        settled.then(|| {
            self.confirmed = wal_end;
            wal_end
        })
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
    fn idle_confirms_the_wal_end_only_with_nothing_in_flight() {
        let mut p = Progress::new(Lsn(10), vec![Lsn(10), Lsn(10)]);
        p.dispatched(&[begin(20), commit(20, 21)]);
        assert_eq!(p.idle(Lsn(50)), None, "a sink has not made 21 durable");
        p.durable(0, Lsn(21));
        assert_eq!(
            p.durable(1, Lsn(21)),
            Some(Lsn(50)),
            "everything durable, and the source was idle up to 50"
        );
        p.dispatched(&[begin(60)]);
        assert_eq!(p.idle(Lsn(70)), None, "inside a transaction");
        p.dispatched(&[commit(60, 61)]);
        assert_eq!(p.idle(Lsn(70)), None, "61 is in flight");
        assert_eq!(p.durable(0, Lsn(61)), None, "the other sink is at 21");
        assert_eq!(
            p.durable(1, Lsn(61)),
            Some(Lsn(70)),
            "61 durable everywhere, and the source idle up to 70"
        );
        assert_eq!(p.idle(Lsn(70)), None, "already there");
        assert_eq!(p.idle(Lsn(80)), Some(Lsn(80)));
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
        assert_eq!(
            p.idle(Lsn(40)),
            None,
            "idle confirms nothing while a table joins"
        );
        assert_eq!(p.final_position(), Lsn(21));
        p.release();
        assert_eq!(p.final_position(), Lsn(31));
        assert_eq!(
            p.durable(0, Lsn(31)),
            Some(Lsn(40)),
            "released: 31 durable, and the source idle up to 40 since"
        );
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
