//! How a command connects what the pipeline file names: the source, the PostgreSQL sinks, and
//! every sink behind its transform rules. `run`, `apply` and every other command (`check`,
//! `verify`, `status`, the switch) connect through here; the engine (`pipeline/`) takes what
//! these return.

use cutover_core::transform::TransformSink;
use cutover_core::{Result, Sink, TargetContext};
use cutover_postgres::target::PgTarget;
use cutover_postgres::{PgEndpoint, PgSink, PgSource, PgSourceOptions};

use crate::config::Pipeline;
use crate::targets;

/// Builds the source connection options from the pipeline.
pub fn source_options(cfg: &Pipeline) -> PgSourceOptions {
    PgSourceOptions {
        tables: cfg.tables.clone(),
        sequences: cfg.sequences.clone(),
        slot: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        application_name: format!("cutover-{}", cfg.name),
        stream_buffer_bytes: cfg.stream_buffer_bytes,
    }
}

/// Connects the source and resolves its tables.
pub async fn source(cfg: &Pipeline) -> Result<PgSource> {
    let endpoint = PgEndpoint::parse(&cfg.source_url, "source")?;
    PgSource::connect(endpoint, source_options(cfg)).await
}

/// What the targets' operations need of the pipeline; `database` is the source database's
/// name (Debezium envelopes report it; empty where no sink is connected for streaming).
pub fn target_context(cfg: &Pipeline, database: &str) -> TargetContext {
    TargetContext {
        pipeline: cfg.name.clone(),
        source_database: match &cfg.source_label {
            Some(label) if !database.is_empty() => label.clone(),
            _ => database.to_string(),
        },
        apply_schema_changes: cfg.apply_schema_changes,
        batch_bytes: cfg.batch_bytes,
        adopt_at: cfg.epoch_start,
        reverse: cfg.reverse,
        applying: false,
    }
}

/// The pipeline's PostgreSQL targets, in the file's order: for what only a database does
/// (sequences, identity, offsets kept beside the rows, the catalog of the tables).
pub fn postgres_targets(cfg: &Pipeline) -> impl Iterator<Item = &PgTarget> {
    cfg.sinks.iter().filter_map(|t| targets::postgres(&**t))
}

/// Connects every PostgreSQL sink of the pipeline.
pub async fn pg_sinks(cfg: &Pipeline) -> Result<Vec<PgSink>> {
    let ctx = target_context(cfg, "");
    let mut sinks = Vec::new();
    for target in postgres_targets(cfg) {
        sinks.push(target.connect_sink(&ctx).await?);
    }
    Ok(sinks)
}

/// Connects every sink of the pipeline, in the order the file declares them, each behind its
/// transform rules. `database` is the source database's name.
pub async fn sinks(cfg: &Pipeline, database: &str) -> Result<Vec<Box<dyn Sink>>> {
    let ctx = target_context(cfg, database);
    let mut sinks = Vec::with_capacity(cfg.sinks.len());
    for (i, target) in cfg.sinks.iter().enumerate() {
        let connected = target.connect(&ctx).await?;
        sinks.push(with_transforms(cfg, i, connected));
    }
    Ok(sinks)
}

/// The sink behind its transform rules, when the pipeline or the sink declares any.
pub fn with_transforms(cfg: &Pipeline, index: usize, sink: Box<dyn Sink>) -> Box<dyn Sink> {
    let specs = cfg
        .sinks
        .get(index)
        .map(|s| s.rules.clone())
        .unwrap_or_default();
    if cfg.transforms.is_empty_with(&specs) {
        sink
    } else {
        Box::new(TransformSink::new(sink, cfg.transforms.clone(), specs))
    }
}
