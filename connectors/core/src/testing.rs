//! In-memory [`Source`] and [`Sink`] for fast, deterministic tests of the engine's rules
//! (behind the `testing` feature; never in a release build).
//!
//! [`MemorySink`] keeps what a target would hold: each committed write, in order, and its
//! checkpoint. It commits a write only up to its last `Commit` (what follows stays open, like
//! a target transaction), and can be held shut to stall its writes. [`MemorySource`] streams
//! what a test sends it and records every confirmation.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::change::{Change, ChangeEvent, Row, StreamEvent, Value};
use crate::error::Result;
use crate::position::{Checkpoint, Lsn, Position};
use crate::schema::{Column, TableName, TableSchema};
use crate::sink::{PendingWrite, Sink, SinkState, TableCopy};
use crate::source::{Source, StreamItem};

/// What a [`MemorySink`] holds, shared with the test.
#[derive(Debug, Default)]
pub struct MemoryTarget {
    /// Each commit's events, in commit order.
    pub commits: Vec<Vec<StreamEvent>>,
    /// The checkpoint of the last commit.
    pub checkpoint: Option<Checkpoint>,
    /// Tables whose copy finished, with their snapshot LSN, and their rows.
    pub copied: Vec<(TableName, Lsn, Vec<Row>)>,
    /// Tables added while streaming.
    pub added: Vec<TableName>,
    /// Writes sealed (committing or not).
    pub seals: usize,
}

impl MemoryTarget {
    /// Every committed change, in order.
    pub fn changes(&self) -> Vec<ChangeEvent> {
        self.commits
            .iter()
            .flatten()
            .filter_map(|e| match e {
                StreamEvent::Change(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A sink that keeps what it commits in memory.
pub struct MemorySink {
    name: String,
    state: SinkState,
    target: Arc<Mutex<MemoryTarget>>,
    buffered: Vec<StreamEvent>,
    /// Applied and written, but not committed (a seal in the middle of a transaction).
    open: Vec<StreamEvent>,
    /// While `false`, writes wait.
    gate: watch::Receiver<bool>,
}

/// Opens and shuts a [`MemorySink`]'s writes.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    pub fn shut(&self) {
        self.0.send_replace(false);
    }
}

impl MemorySink {
    /// A sink named `name` holding `state` from an earlier run; the target it writes, shared;
    /// and its gate (open).
    pub fn new(name: &str, state: SinkState) -> (Self, Arc<Mutex<MemoryTarget>>, Gate) {
        let target = Arc::new(Mutex::new(MemoryTarget {
            checkpoint: state.checkpoint,
            ..MemoryTarget::default()
        }));
        let (gate_tx, gate) = watch::channel(true);
        (
            MemorySink {
                name: name.to_string(),
                state,
                target: target.clone(),
                buffered: Vec::new(),
                open: Vec::new(),
                gate,
            },
            target,
            Gate(gate_tx),
        )
    }
}

async fn wait_open(gate: &mut watch::Receiver<bool>) {
    // A dropped gate counts as open.
    let _ = gate.wait_for(|open| *open).await;
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&mut self, _tables: &[Arc<TableSchema>]) -> Result<SinkState> {
        Ok(self.state.clone())
    }

    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        self.target.lock().unwrap().added.push(table.name.clone());
        Ok(())
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        Ok(Box::new(MemoryCopy {
            table: table.name.clone(),
            lsn: snapshot_lsn,
            rows: Vec::new(),
            target: self.target.clone(),
        }))
    }

    async fn apply(&mut self, event: StreamEvent) -> Result<()> {
        self.buffered.push(event);
        Ok(())
    }

    fn seal(&mut self) -> PendingWrite {
        let mut events = std::mem::take(&mut self.open);
        events.append(&mut self.buffered);
        let commit_at = events
            .iter()
            .rposition(|e| matches!(e, StreamEvent::Commit { .. }));
        let (done, open) = match commit_at {
            Some(i) => {
                let rest = events.split_off(i + 1);
                (events, rest)
            }
            None => (Vec::new(), events),
        };
        self.open = open;
        let target = self.target.clone();
        let mut gate = self.gate.clone();
        Box::pin(async move {
            wait_open(&mut gate).await;
            let mut t = target.lock().unwrap();
            t.seals += 1;
            let checkpoint = done.iter().rev().find_map(|e| match e {
                StreamEvent::Commit {
                    commit_lsn,
                    end_lsn,
                    ..
                } => Some(Checkpoint {
                    commit_lsn: *commit_lsn,
                    end_lsn: *end_lsn,
                }),
                _ => None,
            });
            if let Some(cp) = checkpoint {
                t.commits.push(done);
                t.checkpoint = Some(cp);
            }
            Ok(checkpoint)
        })
    }

    fn buffered_bytes(&self) -> usize {
        self.buffered.iter().map(StreamEvent::size).sum()
    }
}

struct MemoryCopy {
    table: TableName,
    lsn: Lsn,
    rows: Vec<Row>,
    target: Arc<Mutex<MemoryTarget>>,
}

#[async_trait]
impl TableCopy for MemoryCopy {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        self.rows.extend_from_slice(rows);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let n = self.rows.len() as u64;
        self.target
            .lock()
            .unwrap()
            .copied
            .push((self.table, self.lsn, self.rows));
        Ok(n)
    }
}

/// A source that streams what the test sends, and records each confirmation.
pub struct MemorySource {
    items: mpsc::UnboundedReceiver<StreamItem>,
    probe: Arc<SourceProbe>,
}

/// What a [`MemorySource`] saw: the positions confirmed to it, in order, and the items read.
#[derive(Debug, Default)]
pub struct SourceProbe {
    pub confirmed: Mutex<Vec<Lsn>>,
    pub taken: std::sync::atomic::AtomicUsize,
}

impl SourceProbe {
    /// The last position confirmed, if any.
    pub fn last_confirmed(&self) -> Option<Lsn> {
        self.confirmed.lock().unwrap().last().copied()
    }

    pub fn taken(&self) -> usize {
        self.taken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl MemorySource {
    /// The source, the sender that feeds it (dropping it ends the stream), and its probe.
    pub fn new() -> (Self, mpsc::UnboundedSender<StreamItem>, Arc<SourceProbe>) {
        let (tx, items) = mpsc::unbounded_channel();
        let probe = Arc::new(SourceProbe::default());
        (
            MemorySource {
                items,
                probe: probe.clone(),
            },
            tx,
            probe,
        )
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn next(&mut self) -> Result<Option<StreamItem>> {
        let item = self.items.recv().await;
        if item.is_some() {
            self.probe
                .taken
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(item)
    }

    fn confirm(&mut self, lsn: Lsn) {
        self.probe.confirmed.lock().unwrap().push(lsn);
    }
}

/// A table `public.<name>` with a bigint key `id` and a text column `v`.
pub fn table(name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: TableName::new("public", name),
        columns: vec![Column::new("id", 20, true), Column::new("v", 25, false)],
    })
}

/// A row of [`table`]: `id` and a `v` of `pad` bytes.
pub fn row(id: i64, pad: usize) -> Row {
    Row(vec![
        Value::Binary(id.to_be_bytes().to_vec().into()),
        Value::Binary(vec![b'x'; pad].into()),
    ])
}

/// One source transaction committed at `commit_lsn` (ending at `commit_lsn + 1`) inserting
/// `ids` into `table`.
pub fn transaction(table: &Arc<TableSchema>, commit_lsn: u64, ids: &[i64]) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::Begin {
        commit_lsn: Lsn(commit_lsn),
        xid: commit_lsn as u32,
        commit_time_micros: 0,
    }];
    for (n, &id) in ids.iter().enumerate() {
        events.push(StreamEvent::Change(ChangeEvent {
            position: Position {
                commit_lsn: Lsn(commit_lsn),
                ordinal: n as u32,
            },
            table: table.clone(),
            change: Change::Insert { row: row(id, 16) },
        }));
    }
    events.push(StreamEvent::Commit {
        commit_lsn: Lsn(commit_lsn),
        end_lsn: Lsn(commit_lsn + 1),
        commit_time_micros: 0,
    });
    events
}
