//! How the pipeline's connections are made from its file: the source, and every sink behind its
//! transform rules. Used by `run` and by every other command (`check`, `verify`, `status`, ...).

use cutover_core::transform::TransformSink;
use cutover_core::{ConnectorError, Result, Sink};
use cutover_kafka::KafkaSink;
use cutover_mongodb::MongoSink;
use cutover_nats::NatsSink;
use cutover_postgres::{PgEndpoint, PgSink, PgSinkOptions, PgSource, PgSourceOptions};

use crate::config::{self, Pipeline};

/// Builds the source connection options from the pipeline.
pub fn source_options(cfg: &Pipeline) -> PgSourceOptions {
    PgSourceOptions {
        tables: cfg.tables.clone(),
        slot: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        application_name: format!("cutover-{}", cfg.name),
        stream_buffer_events: cfg.stream_buffer_events,
    }
}

/// Connects the source and resolves its tables.
pub async fn connect_source(cfg: &Pipeline) -> Result<PgSource> {
    let endpoint = PgEndpoint::parse(&cfg.source_url, "source")?;
    PgSource::connect(endpoint, source_options(cfg)).await
}

/// Connects every PostgreSQL sink of the pipeline.
pub async fn connect_pg_sinks(cfg: &Pipeline) -> Result<Vec<PgSink>> {
    let mut sinks = Vec::new();
    for sink in &cfg.sinks {
        if let config::Sink::Postgres {
            name,
            url,
            create_tables,
        } = sink
        {
            sinks.push(connect_pg_sink(cfg, name, url, *create_tables).await?);
        }
    }
    Ok(sinks)
}

async fn connect_pg_sink(
    cfg: &Pipeline,
    name: &str,
    url: &str,
    create_tables: bool,
) -> Result<PgSink> {
    let endpoint = PgEndpoint::parse(url, "target")?;
    PgSink::connect(
        endpoint,
        PgSinkOptions {
            apply_schema_changes: cfg.apply_schema_changes,
            name: name.to_string(),
            pipeline: cfg.name.clone(),
            create_tables,
            batch_bytes: cfg.batch_bytes,
        },
    )
    .await
}

/// Connects every sink of the pipeline, in the order the file declares them. `database` is the
/// source database's name, which Debezium envelopes report.
pub async fn connect_sinks(cfg: &Pipeline, database: &str) -> Result<Vec<Box<dyn Sink>>> {
    let mut sinks = Vec::with_capacity(cfg.sinks.len());
    for (i, sink) in cfg.sinks.iter().enumerate() {
        let connected = connect_sink(cfg, sink, database).await?;
        sinks.push(with_transforms(cfg, i, connected));
    }
    Ok(sinks)
}

/// The sink behind its transform rules, when the pipeline or the sink declares any.
pub fn with_transforms(cfg: &Pipeline, index: usize, sink: Box<dyn Sink>) -> Box<dyn Sink> {
    let specs = cfg.sink_transforms.get(index).cloned().unwrap_or_default();
    if cfg.transforms.is_empty_with(&specs) {
        sink
    } else {
        Box::new(TransformSink::new(sink, cfg.transforms.clone(), specs))
    }
}

/// Connects one sink.
pub async fn connect_sink(
    cfg: &Pipeline,
    sink: &config::Sink,
    database: &str,
) -> Result<Box<dyn Sink>> {
    Ok(match sink {
        config::Sink::Postgres {
            name,
            url,
            create_tables,
        } => Box::new(connect_pg_sink(cfg, name, url, *create_tables).await?),
        config::Sink::Kafka(options) => {
            let mut options = options.clone();
            options.source_database = database.to_string();
            Box::new(KafkaSink::connect(options).await?)
        }
        config::Sink::Nats(options) => {
            let mut options = options.clone();
            options.source_database = database.to_string();
            Box::new(NatsSink::connect(options).await?)
        }
        config::Sink::Mongodb(options) => Box::new(MongoSink::connect(options.clone()).await?),
    })
}

/// Turns failed preflight findings into one fatal error listing every failure and its fix.
pub fn refuse_failures(findings: &[cutover_postgres::preflight::Finding]) -> Result<()> {
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| {
            format!(
                "{} ({}; fix: {})",
                f.check,
                f.detail,
                f.fix.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ConnectorError::fatal(format!(
            "the source is not ready for replication: {}.",
            failed.join("; ")
        )))
    }
}

/// Opens every sink and reads back what each holds. A sink that holds progress while the slot
/// is gone is refused: changes made since its run may be missing from it.
pub async fn open_sinks(
    cfg: &Pipeline,
    sinks: &mut [Box<dyn Sink>],
    schemas: &[std::sync::Arc<cutover_core::TableSchema>],
    slot_exists: bool,
) -> Result<Vec<cutover_core::SinkState>> {
    let mut states = Vec::with_capacity(sinks.len());
    for sink in sinks.iter_mut() {
        let state = sink.open(schemas).await?;
        if !slot_exists && (state.checkpoint.is_some() || !state.copied_tables.is_empty()) {
            return Err(ConnectorError::fatal(format!(
                "replication slot {} does not exist on the source, but sink {} holds progress from an earlier run: \
                 changes made since that run may be missing from it, and cutover will not guess.",
                cfg.slot,
                sink.name()
            ))
            .with_hint(
                "start the copy over: empty the target tables, run `cutover teardown --target-state PIPELINE`, then run again",
            ));
        }
        states.push(state);
    }
    Ok(states)
}
