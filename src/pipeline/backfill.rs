//! Tables that join while the pipeline streams (created on the source, or newly matching
//! `source.tables`): copied beside the stream, one at a time.
//!
//! Reader side ([`Joiner`]): reads the table under a snapshot of its own and hands the copy's
//! steps ([`Control`]) to every sink between source transactions, taking turns with the stream
//! so that a fast copy does not hold the other tables' changes back. The slot is held at or
//! before the copy's start until every sink has the table (see `Progress::hold`).
//!
//! Sink side ([`step`]): the table's changes are held while its copy runs, then applied at the
//! copy's end in an order that is safe at every crash (see [`step`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{
    Checkpoint, ConnectorError, Lsn, Result, Row, Sink, StreamEvent, TableCopy, TableName,
    TableSchema,
};
use cutover_postgres::catalog::SourceTable;
use cutover_postgres::PgSource;
use tokio::sync::mpsc;

use super::crash_point;
use super::transaction_at;
use crate::config::Pipeline;
use crate::queue::Control;
use crate::rate;
use crate::status::TableProgress;

/// After each step of a joining table's copy the stream gets its turn, or this long to offer
/// something.
const STREAM_TURN: Duration = Duration::from_millis(1);

/// A table joining while the pipeline streams, in one sink: its copy, and its changes held
/// until the copy is complete.
pub struct Backfill {
    pub table: Arc<TableSchema>,
    copy: Option<Box<dyn TableCopy>>,
    held: Vec<StreamEvent>,
    pub held_bytes: usize,
}

impl Backfill {
    /// Holds `change` if it belongs to the joining table; returns whether it did.
    pub fn hold(&mut self, change: &cutover_core::ChangeEvent) -> bool {
        if change.table.name != self.table.name {
            return false;
        }
        let held = StreamEvent::Change(change.clone());
        self.held_bytes += held.size();
        self.held.push(held);
        true
    }
}

/// What one step of a backfill did in a sink.
pub struct StepOutcome {
    /// The checkpoint the step's own write made durable, if it wrote one.
    pub checkpoint: Option<Checkpoint>,
    /// The copy is finished and durable in this sink.
    pub joined: bool,
}

/// One step of a backfill in one sink, with nothing in flight (see [`Control`]).
///
/// The end is ordered for crash safety: the sink's checkpoint is first stepped back to the
/// copy's snapshot position (an empty transaction there), then the copy is finished (the table
/// is recorded as copied at that position), then the held changes made at or after it are
/// applied in one transaction at the sink's real checkpoint, which moves it back. A crash
/// before the copy is finished copies the table again on restart; a crash after it replays
/// the stream from the snapshot position, held changes included. The reader keeps the slot
/// at or before that position until every sink has finished.
pub async fn step(
    sink: &mut Box<dyn Sink>,
    control: Control,
    backfill: &mut Option<Backfill>,
    checkpoint: Option<Checkpoint>,
    copied: &mut std::collections::BTreeMap<TableName, Lsn>,
) -> Result<StepOutcome> {
    let mut outcome = StepOutcome {
        checkpoint: None,
        joined: false,
    };
    match control {
        Control::AddTable(_) | Control::CopyAgain(_) => {
            let table = match control {
                Control::AddTable(table) => {
                    sink.add_table(table.clone()).await?;
                    table
                }
                Control::CopyAgain(table) => {
                    sink.copy_again(table.clone()).await?;
                    table
                }
                _ => unreachable!("matched above"),
            };
            *backfill = Some(Backfill {
                table,
                copy: None,
                held: Vec::new(),
                held_bytes: 0,
            });
        }
        Control::BeginCopy { table, lsn } => {
            let b = backfill_of(backfill, &table)?;
            b.copy = Some(sink.begin_copy(b.table.clone(), lsn).await?);
        }
        Control::CopyRows { table, rows } => {
            let b = backfill_of(backfill, &table)?;
            match b.copy.as_mut() {
                Some(copy) => copy.write(&rows).await?,
                None => {
                    return Err(ConnectorError::fatal(
                        "copy rows arrived before the copy began",
                    ))
                }
            }
        }
        Control::EndCopy { table, lsn } => {
            let b = backfill_of(backfill, &table)?;
            let copy = b
                .copy
                .take()
                .ok_or_else(|| ConnectorError::fatal("a copy ended before it began"))?;
            let at_copy = Checkpoint {
                commit_lsn: Lsn(lsn.0.saturating_sub(1)),
                end_lsn: lsn,
            };
            let real = checkpoint.unwrap_or(at_copy);
            if real.end_lsn > lsn {
                sink.apply_all(transaction_at(at_copy, Vec::new())).await?;
                sink.seal().await?;
            }
            let rows = copy.finish().await?;
            crash_point("joined-table-recorded");
            let held: Vec<StreamEvent> = std::mem::take(&mut b.held)
                .into_iter()
                .filter(|e| matches!(e, StreamEvent::Change(c) if c.position.commit_lsn >= lsn))
                .collect();
            let released = held.len();
            sink.apply_all(transaction_at(real, held)).await?;
            outcome.checkpoint = sink.seal().await?;
            copied.insert(table.clone(), lsn);
            tracing::info!(sink = sink.name(), %table, rows, held_changes = released, snapshot_lsn = %lsn, "table joined: copied, and its changes made during the copy applied");
            *backfill = None;
            outcome.joined = true;
        }
    }
    Ok(outcome)
}

fn backfill_of<'a>(
    backfill: &'a mut Option<Backfill>,
    table: &TableName,
) -> Result<&'a mut Backfill> {
    backfill
        .as_mut()
        .filter(|b| &b.table.name == table)
        .ok_or_else(|| ConnectorError::fatal(format!("no copy of {table} is under way")))
}

/// The reading side of a joining table's copy (see [`copy_joining`]).
type CopyTask<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>>;

/// The tables waiting to join, the one joining, and the ones that joined during this run.
pub struct Joiner<'a> {
    source: &'a PgSource,
    cfg: &'a Pipeline,
    waiting: Vec<(SourceTable, bool)>,
    joined: HashSet<TableName>,
    joining: Option<Joining>,
    copy: Option<CopyTask<'a>>,
    steps: Option<mpsc::Receiver<Control>>,
    /// The stream's turn after a copy step.
    stream_turn: bool,
}

/// The table joining now: how many sinks have finished its copy, and its status line.
struct Joining {
    name: TableName,
    finished: usize,
    progress_index: usize,
}

/// What the joining copy asks of the reader next.
pub enum JoinEvent {
    /// The table's rows are all read (or the read failed).
    Read(Result<u64>),
    /// A step to hand to every sink.
    Step(Control),
    /// Nothing: the stream's turn ended, or the copy's steps ended.
    Nothing,
}

/// A table that starts joining: what the reader prepares before its copy begins.
pub struct Starting {
    pub table: SourceTable,
    pub progress: TableProgress,
    /// A table the sinks have, copied again (`cutover resnapshot`).
    pub again: bool,
}

impl<'a> Joiner<'a> {
    pub fn new(source: &'a PgSource, cfg: &'a Pipeline) -> Self {
        Joiner {
            source,
            cfg,
            waiting: Vec::new(),
            joined: HashSet::new(),
            joining: None,
            copy: None,
            steps: None,
            stream_turn: false,
        }
    }

    /// Whether `name` is joining, waiting, or joined in this run.
    pub fn knows(&self, name: &TableName) -> bool {
        self.joined.contains(name) || self.busy_with(name)
    }

    /// Whether `name` is being copied or waits to be.
    pub fn busy_with(&self, name: &TableName) -> bool {
        self.joining.as_ref().is_some_and(|j| &j.name == name)
            || self.waiting.iter().any(|(t, _)| &t.schema.name == name)
    }

    /// Queues a table to join.
    pub fn wait(&mut self, table: SourceTable) {
        self.waiting.push((table, false));
    }

    /// Queues a table the sinks have to be copied again (`cutover resnapshot`), beside the
    /// stream as a joining table is.
    pub fn again(&mut self, table: SourceTable) {
        self.waiting.push((table, true));
    }

    /// The next table to join, when none is joining.
    pub fn next_table(&mut self) -> Option<Starting> {
        if self.joining.is_some() {
            return None;
        }
        let (table, again) = self.waiting.pop()?;
        let progress = TableProgress {
            name: table.schema.name.to_string(),
            rows_estimate: table.rows_estimate,
            ..TableProgress::default()
        };
        Some(Starting {
            table,
            progress,
            again,
        })
    }

    /// Starts the copy of `table`, whose `AddTable` step every sink has; `progress_index` is
    /// its status line.
    pub fn begin(&mut self, table: SourceTable, progress_index: usize, again: bool) {
        if again {
            tracing::info!(table = %table.schema.name, "copying the table again (resnapshot) beside the stream: each sink's copy replaces its rows; its changes wait in each sink until the copy is complete, the other tables keep streaming");
        } else {
            tracing::info!(table = %table.schema.name, "a new table matches source.tables: copying it beside the stream; its changes wait in each sink until the copy is complete");
        }
        let (steps_tx, steps_rx) = mpsc::channel(2);
        self.joining = Some(Joining {
            name: table.schema.name.clone(),
            finished: 0,
            progress_index,
        });
        self.copy = Some(Box::pin(copy_joining(
            self.source,
            table,
            self.cfg,
            steps_tx,
        )));
        self.steps = Some(steps_rx);
    }

    /// The joining table's status line, while one joins.
    pub fn progress_index(&self) -> Option<usize> {
        self.joining.as_ref().map(|j| j.progress_index)
    }

    /// The stream delivered something: the copy may take its next step.
    pub fn stream_had_turn(&mut self) {
        self.stream_turn = false;
    }

    /// The next thing the copy asks for. Steps come only outside a source transaction, and
    /// after each one the stream has its turn. Never completes when nothing joins.
    pub async fn next(&mut self, in_txn: bool) -> JoinEvent {
        let turn = self.stream_turn;
        tokio::select! {
            biased;
            read = run_copy(&mut self.copy) => {
                self.copy = None;
                JoinEvent::Read(read)
            }
            _ = tokio::time::sleep(STREAM_TURN), if turn => {
                self.stream_turn = false;
                JoinEvent::Nothing
            }
            step = next_step(&mut self.steps), if !in_txn && !turn => match step {
                None => {
                    self.steps = None;
                    JoinEvent::Nothing
                }
                Some(step) => {
                    self.stream_turn = true;
                    JoinEvent::Step(step)
                }
            },
        }
    }

    /// A sink finished the copy; returns the table's status line when every one of `sinks` has.
    pub fn sink_joined(&mut self, sinks: usize) -> Option<usize> {
        let j = self.joining.as_mut()?;
        j.finished += 1;
        if j.finished < sinks {
            return None;
        }
        tracing::info!(table = %j.name, "table copied into every sink; it streams like the others");
        let j = self.joining.take()?;
        self.joined.insert(j.name);
        Some(j.progress_index)
    }
}

/// Reads a joining table under a snapshot of its own and hands the copy's steps to the reader,
/// which passes them to every sink between source transactions. Returns the rows read.
async fn copy_joining(
    source: &PgSource,
    table: SourceTable,
    cfg: &Pipeline,
    steps: mpsc::Sender<Control>,
) -> Result<u64> {
    let gone = || ConnectorError::retryable("the pipeline stopped during a table's copy");
    // The temporary slot behind the snapshot lives until the whole table is read.
    let session = source.export_snapshot().await?;
    let name = table.schema.name.clone();
    let lsn = session.lsn;
    steps
        .send(Control::BeginCopy {
            table: name.clone(),
            lsn,
        })
        .await
        .map_err(|_| gone())?;
    let (tx, mut rx) = mpsc::channel::<Vec<Row>>(2);
    let limit = rate::Limit::per_second(cfg.snapshot_rows_per_s);
    let read = source.copy_table(&table, &session, cfg.chunk_bytes, tx);
    let forward = async {
        while let Some(rows) = rx.recv().await {
            if let Some(limit) = &limit {
                limit.take(rows.len() as u64).await;
            }
            steps
                .send(Control::CopyRows {
                    table: name.clone(),
                    rows: Arc::new(rows),
                })
                .await
                .map_err(|_| gone())?;
        }
        Ok::<(), ConnectorError>(())
    };
    let (read, forward) = tokio::join!(read, forward);
    forward?;
    let rows = read?;
    drop(session);
    steps
        .send(Control::EndCopy { table: name, lsn })
        .await
        .map_err(|_| gone())?;
    Ok(rows)
}

/// Completes with the joining table's read; never, when none runs.
async fn run_copy(task: &mut Option<CopyTask<'_>>) -> Result<u64> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// The next step of a joining table's copy; never, when none runs.
async fn next_step(steps: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match steps {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
