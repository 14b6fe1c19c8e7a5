//! The buffer of an event-stream sink (Kafka, NATS): stream events in, encoded messages out, each
//! with its table and position, in source order, plus the checkpoint they complete.

use std::sync::Arc;

use crate::change::{Row, StreamEvent};
use crate::envelope::{Encoder, Message, Origin};
use crate::error::Result;
use crate::position::{Checkpoint, Lsn, Position};
use crate::schema::TableSchema;

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub table: Arc<TableSchema>,
    /// The source position of the change (the snapshot LSN, ordinal 0, for snapshot rows).
    pub position: Position,
    /// Index of this message among the messages of its change (a key change gives a delete,
    /// maybe a tombstone, and an insert).
    pub part: u8,
    pub message: Message,
}

impl Outgoing {
    /// Bytes of key and payload.
    pub fn size(&self) -> usize {
        self.message.key.as_ref().map_or(0, Vec::len)
            + self.message.payload.as_ref().map_or(0, Vec::len)
    }
}

/// Encodes stream events into messages as they are applied.
#[derive(Debug)]
pub struct Outbox {
    encoder: Encoder,
    pending: Vec<Outgoing>,
    bytes: usize,
    txn: Option<(u32, i64)>,
    /// The last commit applied, when nothing was applied after it.
    commit: Option<Checkpoint>,
}

impl Outbox {
    pub fn new(encoder: Encoder) -> Outbox {
        Outbox {
            encoder,
            pending: Vec::new(),
            bytes: 0,
            txn: None,
            commit: None,
        }
    }

    /// Encodes one stream event. A value that cannot be encoded is a poison error.
    pub fn push(&mut self, event: StreamEvent) -> Result<()> {
        match event {
            StreamEvent::Begin {
                xid,
                commit_time_micros,
                ..
            } => {
                self.txn = Some((xid, commit_time_micros));
                self.commit = None;
            }
            StreamEvent::Change(change) => {
                let (xid, commit_time_micros) = self.txn.unwrap_or_default();
                let origin = Origin {
                    lsn: change.position.commit_lsn,
                    ordinal: change.position.ordinal,
                    xid,
                    commit_time_micros,
                };
                let messages = self.encoder.change(&change, origin)?;
                for (part, message) in messages.into_iter().enumerate() {
                    let out = Outgoing {
                        table: change.table.clone(),
                        position: change.position,
                        part: part as u8,
                        message,
                    };
                    self.bytes += out.size();
                    self.pending.push(out);
                }
            }
            StreamEvent::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.txn = None;
                self.commit = Some(Checkpoint {
                    commit_lsn,
                    end_lsn,
                });
            }
        }
        Ok(())
    }

    /// Takes every message encoded so far, and the checkpoint they complete when the last event
    /// pushed was a commit.
    pub fn take(&mut self) -> (Vec<Outgoing>, Option<Checkpoint>) {
        self.bytes = 0;
        (std::mem::take(&mut self.pending), self.commit.take())
    }

    /// Bytes of the messages not yet taken.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages for snapshot rows of `table`, copied at `snapshot_lsn`.
    pub fn snapshot(
        encoder: &Encoder,
        table: &Arc<TableSchema>,
        rows: &[Row],
        snapshot_lsn: Lsn,
        copy_started_micros: i64,
    ) -> Result<Vec<Outgoing>> {
        let origin = Origin {
            lsn: snapshot_lsn,
            ordinal: 0,
            xid: 0,
            commit_time_micros: copy_started_micros,
        };
        rows.iter()
            .map(|row| {
                Ok(Outgoing {
                    table: table.clone(),
                    position: Position {
                        commit_lsn: snapshot_lsn,
                        ordinal: 0,
                    },
                    part: 0,
                    message: encoder.snapshot(table, row, origin)?,
                })
            })
            .collect()
    }

    /// The message that starts a table's copy: a truncate of the table at the snapshot's
    /// position, with ordinal `u32::MAX` (which no change has, so its id is its own). A
    /// consumer drops what an earlier copy published (one a crash cut short, or one from before
    /// `cutover recover`), then the new copy's rows arrive: the table converges to the
    /// snapshot even where rows were deleted since that earlier copy.
    pub fn copy_start(
        encoder: &Encoder,
        table: &Arc<TableSchema>,
        snapshot_lsn: Lsn,
        copy_started_micros: i64,
    ) -> Result<Vec<Outgoing>> {
        let position = Position {
            commit_lsn: snapshot_lsn,
            ordinal: u32::MAX,
        };
        let event = crate::change::ChangeEvent {
            position,
            table: table.clone(),
            change: crate::change::Change::Truncate,
        };
        let origin = Origin {
            lsn: snapshot_lsn,
            ordinal: 0,
            xid: 0,
            commit_time_micros: copy_started_micros,
        };
        Ok(encoder
            .change(&event, origin)?
            .into_iter()
            .enumerate()
            .map(|(part, message)| Outgoing {
                table: table.clone(),
                position,
                part: part as u8,
                message,
            })
            .collect())
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
