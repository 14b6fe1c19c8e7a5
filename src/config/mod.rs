//! The pipeline file: read as written ([`file`]), each section resolved and checked by its own
//! function with defaults from `config/defaults.toml` ([`sections`]), each sink into one
//! [`SinkSettings`] ([`sinks`]), `${VAR}` expansion and placed errors ([`text`]).

mod file;
mod sections;
mod sinks;
#[cfg(test)]
mod tests;
mod text;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::transform::{SinkRules, TransformSet};
use cutover_core::Target;

pub use file::*;

/// A pipeline with defaults applied and environment variables expanded. `Debug` leaves out
/// the connection strings and the masking key.
#[derive(Clone)]
pub struct Pipeline {
    pub name: String,
    pub source_url: String,
    pub tables: Vec<String>,
    /// `[source] sequences`: patterns of sequences that move besides the columns' own.
    pub sequences: Vec<String>,
    pub slot: String,
    pub publication: String,
    /// Apply source schema changes to PostgreSQL targets (else stop).
    pub apply_schema_changes: bool,
    /// Seconds between looks for new matching tables while streaming; 0: never.
    pub discover_interval_s: u64,
    /// Copies at the same time (tables or key ranges).
    pub snapshot_workers: usize,
    /// Rows per key range of a split table (see `SnapshotSection::range_rows`).
    pub snapshot_range_rows: u64,
    pub chunk_bytes: usize,
    pub queue_events: usize,
    pub queue_bytes: usize,
    pub batch_bytes: usize,
    pub flush_interval_ms: u64,
    pub linger_ms: u64,
    /// Bytes of raw replication messages held between the socket and the decoder.
    pub stream_buffer_bytes: usize,
    /// Least time between heartbeats to the sinks while the source is idle, in ms.
    pub heartbeat_interval_ms: u64,
    /// Retries in a row before `cutover run` stops with the last error (0: never stops).
    pub max_retries: u32,
    /// Seconds a sink's write may run before it is abandoned and retried (0: never).
    pub write_timeout_s: u64,
    /// The targets with their settings, in the file's order (see [`crate::targets`]).
    pub sinks: Vec<SinkSettings>,
    pub verify: VerifySettings,
    /// The pipeline's transform rules and the hash key.
    pub transforms: Arc<TransformSet>,
    /// Most rows per second the snapshot reads (None: no limit).
    pub snapshot_rows_per_s: Option<u32>,
    /// The switch's settings.
    pub cutover: CutoverSettings,
    /// The admin server's settings.
    pub admin: AdminSettings,
    /// After a switch of direction: the position the new direction's slot started at. Every
    /// sink is complete up to it, so a table a sink has no copy record of counts as copied
    /// there (see [`crate::switch`]).
    pub epoch_start: Option<cutover_core::Lsn>,
    /// The database name the sinks report as the source's (message envelopes, topic names);
    /// after a switch, the original source's, so topics and subjects stay the same.
    pub source_label: Option<String>,
    /// True while the pipeline streams the other way after a switch (see
    /// [`cutover_core::TargetContext::reverse`]).
    pub reverse: bool,
    /// `[source] kind = "kafka"`: where `cutover apply` reads its changes; `None` for a
    /// PostgreSQL source.
    pub apply: Option<ApplySettings>,
}

/// `[source] kind = "kafka"` with defaults applied (see [`SourceConfig`]). `Debug` leaves out
/// the property values (they may hold secrets).
#[derive(Clone)]
pub struct ApplySettings {
    pub brokers: String,
    pub group: String,
    pub topics: Vec<String>,
    pub read: cutover_core::inbound::ReadOptions,
    pub properties: Vec<(String, String)>,
    pub dead_letter_file: std::path::PathBuf,
    pub batch_messages: usize,
    pub whole_transactions: bool,
}

/// `[cutover]` with defaults applied (see [`CutoverSection`]).
#[derive(Clone)]
pub struct CutoverSettings {
    /// Index into `sinks` of the PostgreSQL target that becomes the primary, if there is one.
    pub target: Option<usize>,
    /// Why there is no target (two PostgreSQL sinks and no `target` key, or none).
    pub no_target: Option<String>,
    pub max_lag_bytes: u64,
    pub max_lag_s: f64,
    pub verify_max_age_s: u64,
    pub drain_timeout_s: u64,
    pub fence_lock_timeout_ms: u64,
    pub sequence_margin: u32,
    pub final_verify: FinalVerify,
    pub changed_keys_max: usize,
    pub switch_command: Option<String>,
    pub switch_command_timeout_s: u64,
    pub pgbouncer: Option<PgBouncerSettings>,
}

/// `[cutover.pgbouncer]` with the admin URL expanded (it may hold a password: never printed).
#[derive(Clone)]
pub struct PgBouncerSettings {
    pub admin_url: String,
    pub database: String,
    pub config_file: std::path::PathBuf,
    pub pause_timeout_s: u64,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("sinks", &self.sinks)
            .finish_non_exhaustive()
    }
}

/// One `[[sink]]` resolved: its target, and what the pipeline does for it. It reads as its
/// target (`sink.name()`, `sink.kind()`): the target is what most code asks about.
#[derive(Clone)]
pub struct SinkSettings {
    pub target: Arc<dyn Target>,
    /// Whether a TRUNCATE on the source is replicated to it.
    pub truncate: bool,
    /// Its own transform rules, applied after the pipeline's.
    pub rules: SinkRules,
    /// Its write rate limits.
    pub rates: RateLimits,
}

impl std::ops::Deref for SinkSettings {
    type Target = dyn Target;

    fn deref(&self) -> &Self::Target {
        &*self.target
    }
}

impl fmt::Debug for SinkSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)
    }
}

/// A sink's write rate limits (None: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub changes_per_s: Option<u32>,
    pub bytes_per_s: Option<u32>,
}

/// The checker's settings (see [`VerifySection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySettings {
    pub interval_s: u64,
    pub rows_per_range: u64,
    pub keep_rows: usize,
    pub settle_timeout_s: u64,
    pub rounds: u32,
    pub report_path: std::path::PathBuf,
}

/// A pipeline file that cannot be used, explained in one paragraph.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads, parses and checks a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read pipeline file {shown}: {e}. Fix: pass the path of a pipeline file (see pipelines/ for examples)."
        ))
    })?;
    parse(&text, &shown.to_string(), &|name| std::env::var(name).ok())
}

/// The pipeline text being read: where it came from (for messages) and how its values expand.
pub(crate) struct ReadText<'a> {
    /// The file's name in messages.
    origin: &'a str,
    text: &'a str,
    /// The pipeline file's folder: relative paths in it are read from there.
    base_dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl ReadText<'_> {
    /// `origin: key: what`.
    fn bad(&self, key: &str, what: String) -> ConfigError {
        ConfigError(format!("{}: {key}: {what}", self.origin))
    }

    /// `value` with `${VAR}` and `${file:PATH}` expanded; errors name `key`.
    fn expand(&self, value: &str, key: &str) -> Result<String, ConfigError> {
        text::expand(value, &format!("{}: {key}", self.origin), self.env)
    }
}

/// Parses pipeline text; `origin` names the file in messages, `env` looks up variables.
pub fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let file: PipelineFile =
        toml::from_str(text).map_err(|e| text::toml_error(origin, text, &e))?;
    let at = ReadText {
        origin,
        text,
        base_dir: Path::new(origin)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        env,
    };
    let d = sections::defaults()?;
    sections::check_name(&file, &at)?;
    let apply = sections::source(&file, &d.source, &at)?;
    let (slot, publication) = sections::slot_and_publication(&file, &at)?;
    if file.sinks.is_empty() {
        return Err(at.bad("sink", "no sink is declared. Fix: add a [[sink]] table with kind = \"postgres\", name and url.".into()));
    }
    let pipeline_rules = sinks::pipeline_rules(&file, &at)?;
    let sinks = sinks::sinks(&file, &at)?;
    let (s, l) = (&file.snapshot, &file.limits);
    let bytes = |b: Option<ByteSize>| b.map(|b| b.0);
    let pipeline = Pipeline {
        name: file.name.clone(),
        source_url: at.expand(&file.source.url, "source.url")?,
        tables: file.source.tables.clone(),
        sequences: file.source.sequences.clone(),
        slot,
        publication,
        apply_schema_changes: file.source.schema_changes == SchemaChanges::Apply,
        discover_interval_s: sections::or_default(
            file.source.discover_interval_s,
            d.source.discover_interval_s,
            "source.discover_interval_s",
        )?,
        snapshot_workers: sections::or_default(s.workers, d.snapshot.workers, "snapshot.workers")?,
        snapshot_range_rows: sections::or_default(
            s.range_rows,
            d.snapshot.range_rows,
            "snapshot.range_rows",
        )?,
        chunk_bytes: sections::or_default(
            bytes(s.chunk_bytes),
            bytes(d.snapshot.chunk_bytes),
            "snapshot.chunk_bytes",
        )?,
        queue_events: sections::or_default(
            l.queue_events,
            d.limits.queue_events,
            "limits.queue_events",
        )?,
        queue_bytes: sections::or_default(
            bytes(l.queue_bytes),
            bytes(d.limits.queue_bytes),
            "limits.queue_bytes",
        )?,
        batch_bytes: sections::or_default(
            bytes(l.batch_bytes),
            bytes(d.limits.batch_bytes),
            "limits.batch_bytes",
        )?,
        flush_interval_ms: sections::or_default(
            l.flush_interval_ms,
            d.limits.flush_interval_ms,
            "limits.flush_interval_ms",
        )?,
        linger_ms: sections::or_default(l.linger_ms, d.limits.linger_ms, "limits.linger_ms")?,
        stream_buffer_bytes: sections::or_default(
            bytes(l.stream_buffer_bytes),
            bytes(d.limits.stream_buffer_bytes),
            "limits.stream_buffer_bytes",
        )?,
        heartbeat_interval_ms: sections::or_default(
            l.heartbeat_interval_ms,
            d.limits.heartbeat_interval_ms,
            "limits.heartbeat_interval_ms",
        )?,
        max_retries: sections::or_default(
            l.max_retries,
            d.limits.max_retries,
            "limits.max_retries",
        )?,
        write_timeout_s: sections::or_default(
            l.write_timeout_s,
            d.limits.write_timeout_s,
            "limits.write_timeout_s",
        )?,
        sinks,
        transforms: Arc::new(TransformSet {
            pipeline: pipeline_rules,
            key: sections::masking_key(&file, &at)?,
        }),
        snapshot_rows_per_s: file.snapshot.rows_per_s,
        cutover: sections::cutover_settings(&file, &d.cutover, origin, &at.base_dir, env)?,
        admin: sections::admin_settings(&file.admin, &d.admin, origin, env)?,
        epoch_start: None,
        source_label: None,
        reverse: false,
        apply,
        verify: sections::verify(&file, &d.verify, &at)?,
    };
    sections::check_bounds(&pipeline, &at)?;
    Ok(pipeline)
}
