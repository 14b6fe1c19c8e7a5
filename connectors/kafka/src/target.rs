//! The Kafka sink as a target plug-in: its part of a `[[sink]]` table and what cutover's
//! commands need of it.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::dead_letters::LetterStore;
use cutover_core::envelope::{EnvelopeFormat, TruncateMessages};
use cutover_core::verify::{Precision, TableSide};
use cutover_core::{
    BuildContext, Result, Sink, SinkState, TableSchema, Target, TargetConfig, TargetContext,
};
use serde::Deserialize;

use crate::verify::KafkaTableSide;
use crate::{check_topic_name, KafkaSinkOptions, KafkaTransport};

/// `kind = "kafka"`: Kafka topics, one per table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`, or `${ENV_VAR}`.
    pub brokers: String,
    /// Topic per table; placeholders {pipeline}, {schema}, {table} (default
    /// `{pipeline}.{schema}.{table}`). Characters Kafka refuses in names become `_`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// `cutover` (default) or `debezium`.
    #[serde(default)]
    pub format: EnvelopeFormat,
    /// Follow each delete with a tombstone so log compaction can drop the key (default false).
    #[serde(default)]
    pub tombstones: bool,
    /// How truncates are published: `unkeyed` (default, as Debezium does), `keyed` (with the
    /// table's name as the key, for compacted topics, which refuse a record without a key) or
    /// `skip` (as Debezium's default `skipped.operations=t`; see docs/targets.md).
    #[serde(default)]
    pub truncates: TruncateMessages,
    /// Partitions of topics the sink creates (default 3).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics the sink creates (default 1).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// File holding the sink's progress (default `.cutover-state/<pipeline>-<sink>.json` beside
    /// the pipeline file).
    pub state_path: Option<String>,
    /// How long a message may wait for the brokers before the write fails and is retried
    /// (default 60000).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka settings, e.g. `{ "security.protocol" = "SASL_SSL" }`; values may use
    /// `${ENV_VAR}` and are never printed.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A local file (JSON lines) where messages the brokers refuse for good (larger than they
    /// accept) are parked while the rest flows on; see `cutover dlq`. Without it (and without
    /// `dead_letter_topic`) such a message stops the sink.
    pub dead_letter_file: Option<String>,
    /// A topic on the same brokers where such messages are parked instead of a file (created
    /// with one partition and compaction; large letters are split into parts).
    pub dead_letter_topic: Option<String>,
}

fn default_topic() -> String {
    "{pipeline}.{schema}.{table}".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_delivery_timeout() -> u64 {
    60_000
}

/// Checks a Kafka bootstrap list: `host:port` entries separated by commas.
pub fn check_brokers(brokers: &str) -> std::result::Result<(), String> {
    for entry in brokers.split(',') {
        let entry = entry.trim();
        let port = entry
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok());
        if port.is_none() {
            return Err(format!(
                "{entry:?} is not a broker address. Fix: write host:port, several separated by commas (e.g. \"127.0.0.1:9092\")."
            ));
        }
    }
    Ok(())
}

impl TargetConfig for KafkaConfig {
    const KIND: &'static str = "kafka";

    fn check_route(route: &str) -> std::result::Result<(), String> {
        check_topic_name(route)
    }

    fn build(self, ctx: &BuildContext<'_>) -> std::result::Result<Arc<dyn Target>, String> {
        let brokers = ctx.expand("brokers", &self.brokers)?;
        check_brokers(&brokers).map_err(|e| ctx.fail("brokers", e))?;
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err(ctx.fail(
                "partitions",
                "partitions and replication_factor must be at least 1.",
            ));
        }
        if self.dead_letter_file.is_some() && self.dead_letter_topic.is_some() {
            return Err(ctx.fail(
                "dead_letter_topic",
                "a sink parks its dead letters in one place, not both a dead_letter_file and a dead_letter_topic. Fix: remove one of them.",
            ));
        }
        if let Some(topic) = &self.dead_letter_topic {
            check_topic_name(topic).map_err(|e| ctx.fail("dead_letter_topic", e))?;
        }
        let state_path = match &self.state_path {
            Some(p) => ctx.path("state_path", p)?,
            None => ctx
                .base_dir
                .join(".cutover-state")
                .join(format!("{}-{}.json", ctx.pipeline, ctx.name)),
        };
        let mut properties = Vec::new();
        for (name, value) in &self.properties {
            properties.push((
                name.clone(),
                ctx.expand(&format!("properties.{name}"), value)?,
            ));
        }
        crate::security::check(&mut properties, ctx)?;
        Ok(Arc::new(KafkaSinkOptions {
            name: ctx.name.to_string(),
            pipeline: ctx.pipeline.to_string(),
            brokers,
            topic: ctx.template("topic", &self.topic)?,
            format: self.format,
            tombstones: self.tombstones,
            truncates: self.truncates,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            state_path,
            delivery_timeout: Duration::from_millis(self.delivery_timeout_ms.max(1000)),
            properties,
            source_database: String::new(),
            dead_letter_file: match &self.dead_letter_file {
                Some(p) => Some(ctx.path("dead_letter_file", p)?),
                None => None,
            },
            dead_letter_topic: self.dead_letter_topic,
        }))
    }
}

impl KafkaSinkOptions {
    /// These options for the direction `ctx` streams in: after a switch, the progress is kept
    /// in a state file of that direction's own (`state_path` with `.reverse` appended).
    fn directed(&self, ctx: &TargetContext) -> KafkaSinkOptions {
        let mut options = self.clone();
        if let Some(file) = self.state_path.file_name() {
            let file =
                cutover_core::target::directed_state_key(&file.to_string_lossy(), ctx.reverse);
            options.state_path = self.state_path.with_file_name(file);
        }
        options
    }
}

#[async_trait]
impl Target for KafkaSinkOptions {
    fn kind(&self) -> &'static str {
        KafkaConfig::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self, ctx: &TargetContext) -> Result<Box<dyn Sink>> {
        let mut options = self.directed(ctx);
        options.source_database = ctx.source_database.clone();
        Ok(Box::new(KafkaTransport::connect(options).await?))
    }

    fn security(&self) -> Option<String> {
        Some(crate::security::describe(&self.properties))
    }

    async fn saved_state(&self, ctx: &TargetContext) -> Result<SinkState> {
        KafkaTransport::saved_state(&self.directed(ctx)).await
    }

    async fn forget_state(&self, ctx: &TargetContext) -> Result<String> {
        let options = self.directed(ctx);
        KafkaTransport::forget_state(&options).await?;
        Ok(format!(
            "state file {} deleted (the topics are left as they are)",
            options.state_path.display()
        ))
    }

    async fn letter_store(&self) -> Result<Option<Box<dyn LetterStore>>> {
        crate::dead_letter_store(self).await
    }

    async fn replay_letters(&self) -> Result<(u64, u64)> {
        crate::replay_dead_letters(self).await
    }

    async fn table_side(&self, table: Arc<TableSchema>) -> Result<(Box<dyn TableSide>, Precision)> {
        Ok((
            Box::new(KafkaTableSide::open(self, table).await?),
            Precision::of_envelope(self.format),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
