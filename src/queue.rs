//! The bounded queue between the source and one sink: bounded in change events and in bytes.
//! A permit for both travels with each batch and is released only when the sink has written
//! the batch (dropped after its flush), so the bounds cover what is queued and what the sink
//! buffers.

use std::sync::Arc;

use cutover_core::{Lsn, Row, StreamEvent, TableName, TableSchema};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A batch of events, in stream order, with the budget they hold, or an instruction about
/// a table joining the pipeline while it streams (sent between source transactions only).
pub struct Queued {
    pub events: Vec<StreamEvent>,
    pub permit: Permit,
    pub control: Option<Control>,
}

/// The share of a queue's bounds (events and bytes) that one batch holds until dropped.
pub struct Permit {
    _events: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The steps of copying a table that joined while streaming (its backfill), in this order.
#[derive(Clone)]
pub enum Control {
    /// Prepare the target for the table and hold its changes from here on.
    AddTable(Arc<TableSchema>),
    /// A table the sink has is copied again (`cutover resnapshot`): its next copy replaces its
    /// rows, and its changes are held from here on.
    CopyAgain(Arc<TableSchema>),
    /// Its copy starts, under a snapshot taken at `lsn`.
    BeginCopy { table: TableName, lsn: Lsn },
    /// Rows of the copy, in chunks.
    CopyRows {
        table: TableName,
        rows: Arc<Vec<Row>>,
    },
    /// The copy is complete: finish it, apply the held changes made at or after `lsn`, and
    /// tell the reader once that is durable.
    EndCopy { table: TableName, lsn: Lsn },
}

/// The sending half. `send` waits while the queue is full (backpressure).
pub struct QueueSender {
    tx: mpsc::Sender<Queued>,
    events: Bound,
    bytes: Bound,
}

/// One of a queue's bounds.
struct Bound {
    permits: Arc<Semaphore>,
    /// No single batch takes more than this many permits, so a batch larger than the bound
    /// still passes (alone) instead of waiting forever.
    max_batch: usize,
    capacity: usize,
}

impl Bound {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Bound {
            permits: Arc::new(Semaphore::new(capacity)),
            max_batch: (capacity / 2).max(1),
            capacity,
        }
    }

    async fn take(&self, n: usize) -> Result<OwnedSemaphorePermit, Closed> {
        let need = n.clamp(1, self.max_batch) as u32;
        self.permits
            .clone()
            .acquire_many_owned(need)
            .await
            .map_err(|_| Closed)
    }

    fn held(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }
}

/// The queue is closed: its sink has stopped.
#[derive(Debug)]
pub struct Closed;

/// A queue holding at most `events` change events and `bytes` bytes of them (a batch larger
/// than half a bound passes alone).
pub fn bounded(events: usize, bytes: usize) -> (QueueSender, mpsc::Receiver<Queued>) {
    // Every batch holds at least one event permit, so the channel never holds more batches.
    let (tx, rx) = mpsc::channel(events.max(1));
    (
        QueueSender {
            tx,
            events: Bound::new(events),
            bytes: Bound::new(bytes),
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
        let permit = Permit {
            _events: self.events.take(events.len()).await?,
            _bytes: self.bytes.take(size).await?,
        };
        self.tx
            .send(Queued {
                events,
                permit,
                control,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Bytes of the events queued for, or buffered unwritten in, the sink.
    pub fn bytes_held(&self) -> usize {
        self.bytes.held()
    }

    /// Change events queued for, or buffered unwritten in, the sink.
    pub fn events_held(&self) -> usize {
        self.events.held()
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

    #[tokio::test]
    async fn the_event_bound_counts_events_not_batches() {
        let (tx, mut rx) = bounded(10, 1 << 20);
        tx.send(vec![begin(); 5]).await.unwrap();
        tx.send(vec![begin(); 5]).await.unwrap();
        assert_eq!(tx.events_held(), 10);
        let full = tokio::time::timeout(Duration::from_millis(50), tx.send(vec![begin()])).await;
        assert!(full.is_err(), "an 11th event should wait");
        drop(rx.recv().await.unwrap());
        assert_eq!(tx.events_held(), 5);
        tokio::time::timeout(Duration::from_millis(500), tx.send(vec![begin(); 5]))
            .await
            .expect("released events let the sender go on")
            .unwrap();
    }
}
