//! The engine's rules, on an in-memory source and in-memory sinks (no servers): deterministic
//! and fast. The end-to-end tests in `tests/` prove the same on real servers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::testing::{self, Gate, MemorySink, MemorySource, MemoryTarget, SourceProbe};
use cutover_core::{Checkpoint, Lsn, Sink, SinkState, StreamEvent, StreamItem, TableName};
use tokio::sync::{mpsc, watch};

use super::control::{Command, Handle, Operator};
use super::driver::{DriverEvent, DriverLimits, DriverLinks, SinkDriver};
use super::{start_stream, Settings, Telemetry};
use crate::config::RateLimits;
use crate::queue::{self, Control};

const START: Lsn = Lsn(5);

/// A lone driver's bounds, with `write_timeout`.
fn limits(write_timeout: Option<Duration>) -> DriverLimits {
    DriverLimits {
        truncate: true,
        hold_bytes: 1 << 20,
        batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(10),
        linger: Duration::from_millis(1),
        write_timeout,
    }
}

fn settings(sinks: usize) -> Settings {
    Settings {
        queue_events: 10_000,
        queue_bytes: 1 << 20,
        batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(20),
        linger: Duration::from_millis(1),
        heartbeat: Duration::from_millis(10),
        write_timeout: None,
        sinks: vec![(true, RateLimits::default()); sinks],
    }
}

/// What a test sees of a pipeline on memory: the source's feed and probe, each sink's target
/// and gate, the operator's handle and the stop switch.
struct Bench {
    feed: mpsc::UnboundedSender<StreamItem>,
    probe: Arc<SourceProbe>,
    targets: Vec<Arc<Mutex<MemoryTarget>>>,
    gates: Vec<Gate>,
    handle: Handle,
    stop: watch::Sender<bool>,
}

impl Bench {
    fn send(&self, events: Vec<StreamEvent>) {
        for e in events {
            self.feed.send(StreamItem::Event(e)).unwrap();
        }
    }

    fn checkpoint(&self, sink: usize) -> Option<Lsn> {
        self.targets[sink]
            .lock()
            .unwrap()
            .checkpoint
            .map(|c| c.end_lsn)
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&Bench) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs `body` against a pipeline of `sinks` memory sinks, then stops it; returns the position
/// the run confirmed last.
async fn on_memory<F, Fut>(settings: Settings, sinks: &[&str], body: F) -> Lsn
where
    F: FnOnce(Bench) -> Fut,
    Fut: std::future::Future<Output = Bench>,
{
    let (source, feed, probe) = MemorySource::new();
    let mut targets = Vec::new();
    let mut gates = Vec::new();
    let mut boxed: Vec<(Box<dyn Sink>, SinkState)> = Vec::new();
    for name in sinks {
        let (sink, target, gate) = MemorySink::new(name, SinkState::default());
        boxed.push((Box::new(sink), SinkState::default()));
        targets.push(target);
        gates.push(gate);
    }
    let (mut operator, handle) = Operator::new();
    let (stop, mut stop_rx) = watch::channel(false);
    let telemetry = Telemetry::new();
    let reader = start_stream(
        &settings,
        Box::new(source),
        boxed,
        START,
        &telemetry,
        None,
        &mut operator,
    );
    let bench = Bench {
        feed,
        probe,
        targets,
        gates,
        handle,
        stop,
    };
    let run = reader.run(&mut stop_rx);
    let test = async move {
        let bench = body(bench).await;
        let _ = bench.stop.send(true);
        bench
    };
    let (confirmed, _bench) = tokio::join!(run, test);
    confirmed.expect("the run ends cleanly")
}

#[tokio::test]
async fn the_slot_is_confirmed_only_to_what_every_sink_has_made_durable() {
    let t = testing::table("t");
    on_memory(settings(2), &["fast", "slow"], |bench| async move {
        bench.gates[1].shut();
        for lsn in [10, 20, 30] {
            bench.send(testing::transaction(&t, lsn, &[lsn as i64]));
        }
        bench
            .wait_for("the fast sink", |b| b.checkpoint(0) == Some(Lsn(31)))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            bench.probe.last_confirmed().is_none_or(|l| l <= START),
            "confirmed past what the slow sink holds: {:?}",
            bench.probe.confirmed.lock().unwrap()
        );
        bench.gates[1].open();
        bench
            .wait_for("the slot to reach 31", |b| {
                b.probe.last_confirmed() == Some(Lsn(31))
            })
            .await;
        let confirmed = bench.probe.confirmed.lock().unwrap().clone();
        assert!(confirmed.windows(2).all(|w| w[0] < w[1]), "{confirmed:?}");
        // Every confirmation is a transaction end (11, 21, 31), never a position inside one.
        assert!(confirmed.iter().all(|l| l.0 % 10 == 1), "{confirmed:?}");
        bench
    })
    .await;
}

/// An idle source (WAL moving on tables outside the pipeline) moves the slot only through a
/// heartbeat every sink recorded, so no sink's saved position is ever behind the slot; a
/// stalled sink holds the slot at what it has.
#[tokio::test]
async fn an_idle_source_is_confirmed_only_once_every_sink_recorded_the_heartbeat() {
    let t = testing::table("t");
    on_memory(settings(2), &["fast", "slow"], |bench| async move {
        bench.send(testing::transaction(&t, 10, &[1]));
        bench
            .wait_for("both sinks", |b| b.checkpoint(1) == Some(Lsn(11)))
            .await;
        bench.gates[1].shut();
        bench
            .feed
            .send(StreamItem::Idle { wal_end: Lsn(50) })
            .unwrap();
        bench
            .wait_for("the fast sink's heartbeat", |b| {
                b.checkpoint(0) == Some(Lsn(50))
            })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            bench.probe.last_confirmed(),
            Some(Lsn(11)),
            "the slot passed what the stalled sink recorded"
        );
        bench.gates[1].open();
        bench
            .wait_for("the slot at the idle WAL end", |b| {
                b.probe.last_confirmed() == Some(Lsn(50)) && b.checkpoint(1) == Some(Lsn(50))
            })
            .await;
        // A transaction committed right at the heartbeat's position is still applied.
        bench.send(testing::transaction(&t, 50, &[2]));
        bench
            .wait_for("the transaction at 50", |b| {
                b.checkpoint(1) == Some(Lsn(51))
            })
            .await;
        bench
    })
    .await;
}

#[tokio::test]
async fn a_write_never_commits_part_of_a_transaction() {
    let t = testing::table("t");
    let mut s = settings(1);
    // Transactions larger than a dispatch batch (1024 events), and a seal after every batch:
    // most writes end inside a transaction.
    s.batch_bytes = 300;
    let mut sent = Vec::new();
    let (target_changes, seals, commits) = {
        let sent = &mut sent;
        let mut seen = None;
        let seen_in = &mut seen;
        on_memory(s, &["target"], |bench| async move {
            for (n, lsn) in (100..112u64).step_by(2).enumerate() {
                let rows = [1, 1500, 3, 2500, 700, 1200][n];
                let ids: Vec<i64> = (0..rows).map(|i| lsn as i64 * 10_000 + i).collect();
                let txn = testing::transaction(&t, lsn, &ids);
                sent.extend(txn.clone());
                bench.send(txn);
            }
            bench
                .wait_for("every transaction", |b| b.checkpoint(0) == Some(Lsn(111)))
                .await;
            let target = bench.targets[0].lock().unwrap();
            *seen_in = Some((target.changes(), target.seals, target.commits.clone()));
            drop(target);
            bench
        })
        .await;
        seen.unwrap()
    };
    for commit in &commits {
        let begins = commit
            .iter()
            .filter(|e| matches!(e, StreamEvent::Begin { .. }))
            .count();
        let ends = commit
            .iter()
            .filter(|e| matches!(e, StreamEvent::Commit { .. }))
            .count();
        assert_eq!(begins, ends, "a commit holds part of a transaction");
        assert!(matches!(commit.first(), Some(StreamEvent::Begin { .. })));
    }
    assert!(
        seals > commits.len(),
        "no write was sealed inside a transaction ({seals} seals)"
    );
    let expected: Vec<_> = sent
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Change(c) => Some((c.position, c.change.clone())),
            _ => None,
        })
        .collect();
    let got: Vec<_> = target_changes
        .iter()
        .map(|c| (c.position, c.change.clone()))
        .collect();
    assert_eq!(
        got, expected,
        "the target holds every change, in order, once"
    );
}

#[tokio::test]
async fn a_stalled_sink_bounds_the_queue_and_holds_the_reader() {
    let t = testing::table("t");
    let mut s = settings(1);
    s.queue_events = 200;
    let total_txns = 400u64;
    on_memory(s, &["stuck"], |bench| async move {
        bench.gates[0].shut();
        for lsn in 0..total_txns {
            bench.send(testing::transaction(&t, 1000 + lsn * 10, &[lsn as i64]));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let taken = bench.probe.taken();
        // 3 events a transaction: the queue's 200, the write held by the gate, and the batch
        // the reader is trying to queue.
        assert!(
            taken < 200 + 2 * 1024,
            "the reader read {taken} events past a stalled sink"
        );
        assert!(taken < (total_txns * 3) as usize);
        bench.gates[0].open();
        let last = Lsn(1000 + (total_txns - 1) * 10 + 1);
        bench
            .wait_for("the sink to catch up", |b| b.checkpoint(0) == Some(last))
            .await;
        assert_eq!(
            bench.targets[0].lock().unwrap().changes().len(),
            total_txns as usize
        );
        bench
    })
    .await;
}

#[tokio::test]
async fn drain_to_a_position_stops_there_with_everything_durable() {
    let t = testing::table("t");
    let confirmed = on_memory(settings(2), &["a", "b"], |bench| async move {
        bench.handle.send(Command::DrainTo(Lsn(21))).await.unwrap();
        bench.send(testing::transaction(&t, 10, &[1]));
        bench.send(testing::transaction(&t, 20, &[2]));
        bench
            .wait_for("the drain", |b| b.probe.last_confirmed() == Some(Lsn(21)))
            .await;
        // The run has ended by itself and closed the stream: nothing after the target is read.
        bench
            .wait_for("the stream to close", |b| b.feed.is_closed())
            .await;
        assert_eq!(bench.probe.taken(), 6);
        for sink in 0..2 {
            assert_eq!(bench.checkpoint(sink), Some(Lsn(21)));
        }
        bench
    })
    .await;
    assert_eq!(confirmed, Lsn(21));
}

#[tokio::test]
async fn a_paused_sink_holds_the_slot_until_resumed() {
    let t = testing::table("t");
    on_memory(settings(2), &["a", "b"], |bench| async move {
        bench
            .handle
            .send(Command::PauseSink("b".into()))
            .await
            .unwrap();
        assert!(bench
            .handle
            .send(Command::PauseSink("c".into()))
            .await
            .is_err());
        bench.send(testing::transaction(&t, 10, &[1]));
        bench
            .wait_for("sink a", |b| b.checkpoint(0) == Some(Lsn(11)))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bench.checkpoint(1), None, "the paused sink wrote");
        assert!(bench.probe.last_confirmed().is_none_or(|l| l <= START));
        bench
            .handle
            .send(Command::ResumeSink("b".into()))
            .await
            .unwrap();
        bench
            .wait_for("the slot", |b| b.probe.last_confirmed() == Some(Lsn(11)))
            .await;
        bench
    })
    .await;
}

#[tokio::test]
async fn a_paused_reader_reads_nothing_until_resumed() {
    let t = testing::table("t");
    on_memory(settings(1), &["a"], |bench| async move {
        bench.handle.send(Command::PauseReader).await.unwrap();
        bench.send(testing::transaction(&t, 10, &[1]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bench.probe.taken(), 0);
        bench.handle.send(Command::ResumeReader).await.unwrap();
        bench
            .wait_for("the sink", |b| b.checkpoint(0) == Some(Lsn(11)))
            .await;
        bench
    })
    .await;
}

/// A table joins while the sink's checkpoint (100) is past the copy's snapshot (60): the
/// checkpoint is stepped back to 60 before the copy is recorded, then the changes held during
/// the copy (those at or after 60) are applied at the real checkpoint, which moves it back.
#[tokio::test]
async fn a_joining_table_steps_the_checkpoint_back_before_its_copy_is_recorded() {
    let first = testing::table("first");
    let joining = testing::table("joining");
    let state = SinkState {
        checkpoint: Some(Checkpoint {
            commit_lsn: Lsn(99),
            end_lsn: Lsn(100),
        }),
        copied_tables: [(first.name.clone(), Lsn(1))].into(),
        ..SinkState::default()
    };
    let (sink, target, _gate) = MemorySink::new("target", state.clone());
    let (tx, rx) = queue::bounded(1000, 1 << 20);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_pause, paused) = watch::channel(false);
    let driver = SinkDriver::new(
        0,
        Box::new(sink),
        rx,
        state,
        limits(None),
        DriverLinks {
            events: events_tx,
            telemetry: Telemetry::new(),
            paused,
        },
    );
    let driver = tokio::spawn(driver.run());
    tx.send_control(Control::AddTable(joining.clone()), 0)
        .await
        .unwrap();
    // Changes to the joining table: one before the copy's snapshot (in the copy already), one
    // after it; and one to another table.
    let mut events_in = testing::transaction(&joining, 110, &[1]);
    events_in.extend(testing::transaction(&first, 120, &[7]));
    tx.send(events_in).await.unwrap();
    tx.send_control(
        Control::BeginCopy {
            table: joining.name.clone(),
            lsn: Lsn(60),
        },
        0,
    )
    .await
    .unwrap();
    tx.send_control(
        Control::CopyRows {
            table: joining.name.clone(),
            rows: Arc::new(vec![testing::row(1, 4), testing::row(2, 4)]),
        },
        0,
    )
    .await
    .unwrap();
    tx.send(testing::transaction(&joining, 130, &[3]))
        .await
        .unwrap();
    tx.send_control(
        Control::EndCopy {
            table: joining.name.clone(),
            lsn: Lsn(60),
        },
        0,
    )
    .await
    .unwrap();
    let mut joined = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the driver reports")
    {
        if let DriverEvent::Joined(0) = event {
            joined = true;
            break;
        }
    }
    assert!(joined);
    drop(tx);
    driver.await.unwrap().unwrap();

    let t = target.lock().unwrap();
    let ends: Vec<Lsn> = t
        .commits
        .iter()
        .map(|c| match c.last() {
            Some(StreamEvent::Commit { end_lsn, .. }) => *end_lsn,
            _ => panic!("a commit without its end"),
        })
        .collect();
    // The stream's transactions (the last ends at 131), then the empty step back to the
    // snapshot (60), then the held changes at the real checkpoint (131).
    let n = ends.len();
    assert!(n >= 3, "{:?}", t.commits);
    assert_eq!(&ends[n - 3..], &[Lsn(131), Lsn(60), Lsn(131)], "{ends:?}");
    assert_eq!(t.commits[n - 2].len(), 2, "the step back carries no change");
    let held: Vec<i64> = t.commits[n - 1]
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Change(c) => Some(c.position.commit_lsn.0 as i64),
            _ => None,
        })
        .collect();
    assert_eq!(
        held,
        vec![110, 130],
        "the held changes of the joining table, in order"
    );
    assert_eq!(t.added, vec![joining.name.clone()]);
    assert_eq!(
        t.copied
            .iter()
            .map(|(n, l, rows)| (n.clone(), *l, rows.len()))
            .collect::<Vec<(TableName, Lsn, usize)>>(),
        vec![(joining.name.clone(), Lsn(60), 2)]
    );
}

/// A write that never completes and never fails (the sink's gate stays shut) is abandoned at
/// `write_timeout` as an error to retry, naming the sink and the limit; the pipeline's retry
/// then writes it again from the last durable position.
#[tokio::test]
async fn a_write_that_never_finishes_is_abandoned_at_its_deadline() {
    let table = testing::table("t");
    let (sink, target, gate) = MemorySink::new("target", SinkState::default());
    gate.shut();
    let (tx, rx) = queue::bounded(1000, 1 << 20);
    let (events_tx, _events) = mpsc::unbounded_channel();
    let (_pause, paused) = watch::channel(false);
    let driver = SinkDriver::new(
        0,
        Box::new(sink),
        rx,
        SinkState::default(),
        limits(Some(Duration::from_millis(300))),
        DriverLinks {
            events: events_tx,
            telemetry: Telemetry::new(),
            paused,
        },
    );
    let driver = tokio::spawn(driver.run());
    tx.send(testing::transaction(&table, 10, &[1]))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the driver gave up on the write")
        .unwrap();
    let e = ended.expect_err("a stuck write is an error");
    assert!(e.is_retryable(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("sink target") && text.contains("limits.write_timeout_s"),
        "{text}"
    );
    assert!(target.lock().unwrap().commits.is_empty());
    drop(tx);
}
