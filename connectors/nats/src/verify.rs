//! The checker's NATS reader: a table's subject read from the first message of the stream and
//! folded to the latest row per key, as a consumer would build it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use cutover_core::naming::replace_disallowed;
use cutover_core::verify::fold::FoldedTable;
use cutover_core::verify::{Bound, CanonRow, KeyBound, RangeScan, ScanLimits, TableSide};
use cutover_core::{ConnectorError, Result, TableSchema};
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::{open_client, subject_char, NatsSinkOptions};

/// One table's subject, folded.
pub struct NatsTableSide {
    state: Mutex<State>,
}

struct State {
    consumer: consumer::PullConsumer,
    table: FoldedTable,
}

impl NatsTableSide {
    /// Reads the table's subject of the sink's stream from its first message to its end.
    pub async fn open(options: &NatsSinkOptions, table: Arc<TableSchema>) -> Result<Self> {
        let clean = |s: &str| replace_disallowed(s, subject_char);
        let subject = options
            .subject
            .render(&options.pipeline, &table.name, &clean);
        let client = open_client(options, format!("cutover-verify-{}", options.pipeline)).await?;
        let js = jetstream::new(client);
        let stream = js.get_stream(&options.stream).await.map_err(|e| {
            ConnectorError::fatal(format!(
                "stream {} of sink {} cannot be read: {e}",
                options.stream, options.name
            ))
            .with_hint("run the pipeline first (it creates the stream), or check the sink's stream setting")
        })?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: subject,
                inactive_threshold: Duration::from_secs(300),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                ConnectorError::retryable(format!(
                    "cannot read stream {} of sink {}: {e}",
                    options.stream, options.name
                ))
            })?;
        let side = NatsTableSide {
            state: Mutex::new(State {
                consumer,
                table: FoldedTable::new(table, options.format),
            }),
        };
        side.catch_up().await?;
        Ok(side)
    }

    /// Reads every message stored since the last read, then folds anew.
    async fn catch_up(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        loop {
            let mut batch = state
                .consumer
                .batch()
                .max_messages(5000)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| ConnectorError::retryable(format!("cannot read the stream: {e}")))?;
            let mut got = 0;
            let mut messages = Vec::new();
            while let Some(m) = batch.next().await {
                // A batch may end early (the request's timeout); the loop asks again.
                let Ok(m) = m else { break };
                got += 1;
                messages.push(m.payload.clone());
            }
            for payload in messages {
                state.table.fold.take(0, None, Some(&payload));
            }
            if got == 0 {
                break;
            }
        }
        state.table.refresh();
        Ok(())
    }
}

#[async_trait]
impl TableSide for NatsTableSide {
    async fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> Result<RangeScan> {
        Ok(self.state.lock().await.table.scan(low, high, limits))
    }

    async fn fetch(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<CanonRow>>> {
        self.catch_up().await?;
        Ok(self.state.lock().await.table.lookup(keys))
    }
}
