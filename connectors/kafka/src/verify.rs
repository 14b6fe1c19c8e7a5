//! The checker's Kafka reader: a table's topic read from the beginning of every partition and
//! folded to the latest row per key, as a consumer would build it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::naming::replace_disallowed;
use cutover_core::verify::fold::FoldedTable;
use cutover_core::verify::{Bound, CanonRow, KeyBound, RangeScan, ScanLimits, TableSide};
use cutover_core::{ConnectorError, Result, TableSchema};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Mutex;

use crate::{error, topic_char, KafkaSinkOptions, ADMIN_TIMEOUT};

/// A topic is read to its end when no message arrives for this long (the broker's high
/// watermark is not trusted: some brokers report it wrong for multi-record batches).
const IDLE: Duration = Duration::from_millis(1500);

/// One table's topic, folded.
pub struct KafkaTableSide {
    state: Mutex<State>,
}

struct State {
    consumer: BaseConsumer,
    table: FoldedTable,
}

impl KafkaTableSide {
    /// Subscribes to the table's topic from the beginning and reads it to its end.
    pub async fn open(options: &KafkaSinkOptions, table: Arc<TableSchema>) -> Result<Self> {
        let clean = |s: &str| replace_disallowed(s, topic_char);
        let topic = options.topic.render(&options.pipeline, &table.name, &clean);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set(
                "group.id",
                format!("cutover-verify-{}-{}", options.pipeline, std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000");
        for (k, v) in &options.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().map_err(|e| {
            error::classify(
                e,
                &format!(
                    "cannot configure a Kafka consumer for sink {}",
                    options.name
                ),
            )
        })?;
        let (consumer, partitions) = tokio::task::spawn_blocking(move || {
            let md = consumer.fetch_metadata(Some(&topic), ADMIN_TIMEOUT);
            (
                consumer,
                md.map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len())
                }),
                topic,
            )
        })
        .await
        .map(|(c, n, topic)| (c, n.map(|n| (n, topic))))
        .map_err(|e| ConnectorError::fatal(format!("metadata task failed: {e}")))?;
        let (count, topic) = partitions.map_err(|e| {
            error::classify(
                e,
                &format!("cannot reach the Kafka brokers {}", options.brokers),
            )
        })?;
        if count == 0 {
            return Err(ConnectorError::fatal(format!(
                "topic {topic} of table {} does not exist on the Kafka brokers {} (sink {})",
                table.name, options.brokers, options.name
            ))
            .with_hint("run the pipeline first (it creates the topics), or leave the table out with --table"));
        }
        let mut list = TopicPartitionList::new();
        for p in 0..count as i32 {
            list.add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(|e| error::classify(e, "cannot assign the topic's partitions"))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| error::classify(e, "cannot assign the topic's partitions"))?;
        let side = KafkaTableSide {
            state: Mutex::new(State {
                consumer,
                table: FoldedTable::new(table, options.format),
            }),
        };
        side.catch_up().await?;
        Ok(side)
    }

    /// Reads every message that arrived since the last read, then folds anew.
    async fn catch_up(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        tokio::task::block_in_place(|| -> Result<()> {
            let mut last = Instant::now();
            while last.elapsed() < IDLE {
                match state.consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        state.table.fold.take(m.partition(), m.key(), m.payload());
                        last = Instant::now();
                    }
                    Some(Err(e)) => {
                        return Err(error::classify(e, "cannot read the topic"));
                    }
                    None => {}
                }
            }
            Ok(())
        })?;
        state.table.refresh();
        Ok(())
    }
}

#[async_trait]
impl TableSide for KafkaTableSide {
    async fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> Result<RangeScan> {
        Ok(self.state.lock().await.table.scan(low, high, limits))
    }

    async fn fetch(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<CanonRow>>> {
        self.catch_up().await?;
        Ok(self.state.lock().await.table.lookup(keys))
    }
}
