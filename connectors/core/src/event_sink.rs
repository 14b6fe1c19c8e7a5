//! The shared body of the event-stream sinks (Kafka, NATS). A [`Transport`] says how messages
//! reach one kind of broker and where its progress is saved; [`EventSink`] is the [`Sink`] built
//! on it: changes are encoded into an [`Outbox`] as they are applied, a sealed write publishes
//! them (acknowledged) and then saves the checkpoint they complete, and a snapshot copy
//! publishes a truncate of the table, then its rows chunk by chunk, and records the table as
//! copied once they are all acknowledged.
//!
//! Contract: the checkpoint is saved only after every message before it was acknowledged, so a
//! crash replays messages (deduplicated downstream by key and position) and never skips one.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::change::{Row, StreamEvent};
use crate::dead_letters::Parking;
use crate::envelope::Encoder;
use crate::error::Result;
use crate::outbox::{now_micros, Outbox, Outgoing};
use crate::position::Lsn;
use crate::schema::{TableName, TableSchema};
use crate::sink::{PendingWrite, Sink, SinkState, TableCopy};

/// Where each table's messages go.
pub type Routes<R> = HashMap<TableName, R>;

/// How one kind of broker takes messages and keeps the sink's progress.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Where one table's messages go (a topic and its partitions, a subject).
    type Route: Clone + Send + Sync + 'static;

    /// The sink's name.
    fn name(&self) -> &str;

    /// Prepares the destinations of `tables` (creating what is missing) and returns their
    /// routes. Refuses a table whose messages it could not route.
    async fn prepare(&self, tables: &[Arc<TableSchema>]) -> Result<Routes<Self::Route>>;

    /// Publishes `messages` and returns once the broker acknowledged every one. Messages of a
    /// key stay in order. A message the broker refuses for good is parked in `parking` when
    /// there is one (holding back its key's later messages), else it is an error.
    async fn publish(
        &self,
        routes: &Routes<Self::Route>,
        messages: Vec<Outgoing>,
        parking: Option<&Parking>,
    ) -> Result<()>;

    /// Reads the saved progress (opening where it is kept).
    async fn load_state(&self) -> Result<SinkState>;

    /// Saves the progress durably; called after [`Transport::load_state`].
    async fn save_state(&self, state: &SinkState) -> Result<()>;
}

/// An event-stream sink on a [`Transport`].
pub struct EventSink<T: Transport> {
    transport: Arc<T>,
    routes: Arc<Routes<T::Route>>,
    outbox: Outbox,
    /// The progress as saved; held while it is changed and saved, so saves never interleave.
    state: Arc<Mutex<SinkState>>,
    parking: Option<Arc<Parking>>,
}

impl<T: Transport> EventSink<T> {
    /// A sink publishing through `transport`, encoding with `encoder`, parking refusals in
    /// `parking` (if any).
    pub fn new(transport: T, encoder: Encoder, parking: Option<Arc<Parking>>) -> Self {
        EventSink {
            transport: Arc::new(transport),
            routes: Arc::new(HashMap::new()),
            outbox: Outbox::new(encoder),
            state: Arc::new(Mutex::new(SinkState::default())),
            parking,
        }
    }

    /// The transport (for what only its kind does).
    pub fn transport(&self) -> &T {
        &self.transport
    }
}

/// Changes the saved progress and saves it, under the lock.
async fn save<T: Transport>(
    transport: &T,
    state: &Mutex<SinkState>,
    update: impl FnOnce(&mut SinkState),
) -> Result<()> {
    let mut guard = state.lock().await;
    update(&mut guard);
    transport.save_state(&guard).await
}

#[async_trait]
impl<T: Transport> Sink for EventSink<T> {
    fn name(&self) -> &str {
        self.transport.name()
    }

    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState> {
        self.routes = Arc::new(self.transport.prepare(tables).await?);
        let loaded = self.transport.load_state().await?;
        *self.state.lock().await = loaded.clone();
        Ok(loaded)
    }

    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        let added = self.transport.prepare(std::slice::from_ref(&table)).await?;
        let mut routes = (*self.routes).clone();
        routes.extend(added);
        self.routes = Arc::new(routes);
        Ok(())
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        let started_micros = now_micros();
        let start =
            Outbox::copy_start(self.outbox.encoder(), &table, snapshot_lsn, started_micros)?;
        self.transport
            .publish(&self.routes, start, self.parking.as_deref())
            .await?;
        Ok(Box::new(EventTableCopy {
            transport: self.transport.clone(),
            routes: self.routes.clone(),
            encoder: self.outbox.encoder().clone(),
            table,
            snapshot_lsn,
            started_micros,
            rows: 0,
            state: self.state.clone(),
            parking: self.parking.clone(),
        }))
    }

    async fn apply(&mut self, event: StreamEvent) -> Result<()> {
        self.outbox.push(event)
    }

    async fn apply_all(&mut self, events: Vec<StreamEvent>) -> Result<()> {
        for event in events {
            self.outbox.push(event)?;
        }
        Ok(())
    }

    fn seal(&mut self) -> PendingWrite {
        let (messages, checkpoint) = self.outbox.take();
        let transport = self.transport.clone();
        let routes = self.routes.clone();
        let state = self.state.clone();
        let parking = self.parking.clone();
        Box::pin(async move {
            transport
                .publish(&routes, messages, parking.as_deref())
                .await?;
            if let Some(cp) = checkpoint {
                save(&*transport, &state, |s| s.checkpoint = Some(cp)).await?;
            }
            Ok(checkpoint)
        })
    }

    fn buffered_bytes(&self) -> usize {
        self.outbox.bytes()
    }

    fn parked(&self) -> u64 {
        Parking::count(self.parking.as_ref())
    }
}

/// One table's snapshot: a truncate first ([`Outbox::copy_start`], published by `begin_copy`),
/// then `op: snapshot` (Debezium `r`) messages, acknowledged chunk by chunk; the table counts
/// as copied once `finish` saved the progress.
struct EventTableCopy<T: Transport> {
    transport: Arc<T>,
    routes: Arc<Routes<T::Route>>,
    encoder: Encoder,
    table: Arc<TableSchema>,
    snapshot_lsn: Lsn,
    started_micros: i64,
    rows: u64,
    state: Arc<Mutex<SinkState>>,
    parking: Option<Arc<Parking>>,
}

#[async_trait]
impl<T: Transport> TableCopy for EventTableCopy<T> {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let messages = Outbox::snapshot(
            &self.encoder,
            &self.table,
            rows,
            self.snapshot_lsn,
            self.started_micros,
        )?;
        self.transport
            .publish(&self.routes, messages, self.parking.as_deref())
            .await?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let (table, lsn) = (self.table.name.clone(), self.snapshot_lsn);
        save(&*self.transport, &self.state, |s| {
            s.copied_tables.insert(table, lsn);
        })
        .await?;
        Ok(self.rows)
    }
}
