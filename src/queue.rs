//! The bounded queue between the source and one sink: bounded in events and in bytes. A byte
//! permit travels with each event and is released only when the sink has written the event
//! (dropped after its flush), so the bound covers what is queued and what the sink buffers.

use std::sync::Arc;

use cutover_core::{Lsn, Row, StreamEvent, TableName, TableSchema};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A batch of events, in stream order, with the byte budget they hold, or an instruction about
/// a table joining the pipeline while it streams (sent between source transactions only).
pub struct Queued {
    pub events: Vec<StreamEvent>,
    pub permit: OwnedSemaphorePermit,
    pub control: Option<Control>,
}

/// The steps of copying a table that joined while streaming (its backfill), in this order.
#[derive(Clone)]
pub enum Control {
    /// Prepare the target for the table and hold its changes from here on.
    AddTable(Arc<TableSchema>),
    /// Its copy starts, under a snapshot taken at `lsn`.
    BeginCopy { table: TableName, lsn: Lsn },
    /// Rows of the copy, in chunks.
    CopyRows {
        table: TableName,
        rows: Arc<Vec<Row>>,
    },
    /// The copy is complete: finish it, apply the held changes made at or after `lsn`, and
    /// report the sink's index on `done` once that is durable.
    EndCopy {
        table: TableName,
        lsn: Lsn,
        done: mpsc::UnboundedSender<usize>,
    },
}

/// The sending half. `send` waits while the queue is full (backpressure).
pub struct QueueSender {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    /// No single batch takes more than this many permits, so a batch larger than the bound
    /// still passes (alone) instead of waiting forever.
    max_batch: usize,
    /// The byte bound.
    capacity: usize,
}

/// The queue is closed: its sink has stopped.
#[derive(Debug)]
pub struct Closed;

pub fn bounded(events: usize, bytes: usize) -> (QueueSender, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(events.max(1));
    let permits = bytes.clamp(1, Semaphore::MAX_PERMITS);
    (
        QueueSender {
            tx,
            bytes: Arc::new(Semaphore::new(permits)),
            max_batch: (permits / 2).max(1),
            capacity: permits,
        },
        rx,
    )
}

impl QueueSender {
    /// Queues a batch of events (one message, one byte reservation), waiting while the queue
    /// is full.
    pub async fn send(&self, events: Vec<StreamEvent>) -> Result<(), Closed> {
        let size: usize = events.iter().map(StreamEvent::size).sum();
        self.push(events, None, size).await
    }

    /// Sends a control message holding `size` bytes of the budget (the rows it carries).
    pub async fn send_control(&self, control: Control, size: usize) -> Result<(), Closed> {
        self.push(Vec::new(), Some(control), size).await
    }

    async fn push(
        &self,
        events: Vec<StreamEvent>,
        control: Option<Control>,
        size: usize,
    ) -> Result<(), Closed> {
        let need = size.clamp(1, self.max_batch) as u32;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(need)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                events,
                permit,
                control,
            })
            .await
            .map_err(|_| Closed)
    }

    pub fn bytes_held(&self) -> usize {
        self.capacity.saturating_sub(self.bytes.available_permits())
    }

    /// Batches waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::Lsn;
    use std::time::Duration;

    fn begin() -> StreamEvent {
        StreamEvent::Begin {
            commit_lsn: Lsn(1),
            xid: 1,
            commit_time_micros: 0,
        }
    }

    #[tokio::test]
    async fn sender_waits_when_bytes_are_held_and_resumes_when_released() {
        let (tx, mut rx) = bounded(100, 100);
        tx.send(vec![begin()]).await.unwrap(); // 48 bytes
        let held = rx.recv().await.unwrap();
        // 48 of 100 held by the "sink"; a second batch fits, a third must wait.
        tx.send(vec![begin()]).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), tx.send(vec![begin()])).await;
        assert!(third.is_err(), "third batch should wait for bytes");
        drop(held);
        tokio::time::timeout(Duration::from_millis(500), tx.send(vec![begin()]))
            .await
            .expect("released bytes let the sender go on")
            .unwrap();
    }
}
