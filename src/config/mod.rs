//! The pipeline file: plain serde structs, unknown keys refused, defaults from
//! `config/defaults.toml`, `${VAR}` expansion for connection strings. Every field's doc comment
//! is its user documentation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use cutover_core::transform::{
    AddColumn, Derived, Mask, MaskKey, Placed, Predicate, SinkRules, TransformSet, TransformSpec,
};
use cutover_core::{BuildContext, TableName, Target};
use serde::Deserialize;

use crate::targets;
use toml::Spanned;

/// A pipeline file as written (no `Debug`: it may hold secrets as written).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Names the pipeline: its replication slot and publication default to `cutover_<name>`, and
    /// sinks keep their checkpoints under it. Lowercase letters, digits and `_`.
    pub name: String,
    /// The PostgreSQL database to migrate from.
    pub source: SourceConfig,
    /// How tables are copied before streaming starts.
    #[serde(default)]
    pub snapshot: SnapshotSection,
    /// Memory and batching bounds.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Targets, one `[[sink]]` table each: the keys of [`SinkCommon`] and those of its kind
    /// (each connector crate's `target` module; see docs/targets.md).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<BTreeMap<String, Spanned<toml::Value>>>,
    /// How `cutover verify` (and the periodic check inside `cutover run`) compares targets.
    #[serde(default)]
    pub verify: VerifySection,
    /// Transform rules for every sink, one `[[transform]]` table per source table (see
    /// docs/transforms.md). A sink's own rules (`[[sink.transform]]`) apply after these.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// The secret behind `hash` masks.
    #[serde(default)]
    pub masking: MaskingSection,
    /// The switch of traffic to a PostgreSQL target and back (`cutover switch`, `rollback`).
    #[serde(default)]
    pub cutover: CutoverSection,
    /// The admin HTTP server of `cutover run` (metrics, probes, status, actions).
    #[serde(default)]
    pub admin: AdminSection,
}

/// `[admin]`: where `cutover run` serves `/metrics`, `/healthz`, `/readyz`, `/api/status` and
/// the actions (see [`crate::admin`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `host:port` to listen on, or `off` (default `127.0.0.1:9187`).
    pub listen: Option<String>,
    /// The token actions must carry (`Authorization: Bearer TOKEN`); without one, actions are
    /// refused. Write it as `${VAR}`.
    pub token: Option<String>,
    /// Host names requests may be addressed to, besides IP addresses and `localhost` (a
    /// request whose `Host` header names another is refused: DNS rebinding).
    pub allowed_hosts: Option<Vec<String>>,
}

/// `[admin]` with defaults applied.
#[derive(Clone)]
pub struct AdminSettings {
    /// None: the server is off.
    pub listen: Option<std::net::SocketAddr>,
    pub token: Option<String>,
    /// Why the token cannot be used (its variable unset, too short): only `cutover run`
    /// refuses it, so the other commands work in a shell without the admin token.
    pub token_error: Option<String>,
    /// Host names allowed in a request's `Host` header besides IP addresses and `localhost`,
    /// lower-cased.
    pub allowed_hosts: Vec<String>,
}

/// `[cutover]`: the readiness gates and how traffic moves (see docs/switch.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverSection {
    /// The PostgreSQL sink that becomes the primary (default: the pipeline's only one).
    pub target: Option<String>,
    /// Readiness: most WAL the pipeline may be behind the source.
    pub max_lag_bytes: Option<ByteSize>,
    /// Readiness: most seconds the pipeline may be behind the source.
    pub max_lag_s: Option<f64>,
    /// Readiness: most seconds since the last clean consistency check.
    pub verify_max_age_s: Option<u64>,
    /// How long the switch waits for every sink to be durable at the fence's position.
    pub drain_timeout_s: Option<u64>,
    /// How long fencing waits for a table lock that a running transaction holds.
    pub fence_lock_timeout_ms: Option<u64>,
    /// Steps the target's sequences are set ahead of the source's.
    pub sequence_margin: Option<u32>,
    /// The switch's final check: `changed` compares the rows changed since the last clean
    /// check (every row of a table whose changed keys are not all known), `full` every row.
    pub final_verify: Option<FinalVerify>,
    /// Most changed keys `cutover run` keeps for the final check; past it, the table that
    /// overflows is checked in full.
    pub changed_keys_max: Option<usize>,
    /// A shell command run to move traffic (after PgBouncer, when both are set), with the new
    /// primary in `CUTOVER_PRIMARY_HOST`, `_PORT`, `_DATABASE` and the direction in
    /// `CUTOVER_DIRECTION`.
    pub switch_command: Option<String>,
    /// How long `switch_command` may run before it is killed and the switch stops (it can be
    /// run again with `cutover switch --resume`).
    pub switch_command_timeout_s: Option<u64>,
    /// PgBouncer in front of the application: paused during the switch, then repointed.
    pub pgbouncer: Option<PgBouncerSection>,
}

/// What the switch's final check compares (`[cutover] final_verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalVerify {
    /// The rows changed since the last clean check.
    Changed,
    /// Every row.
    Full,
}

/// `[cutover.pgbouncer]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncerSection {
    /// The admin console, e.g. `postgres://pgbouncer@127.0.0.1:6432/pgbouncer` (or `${VAR}`).
    pub admin_url: String,
    /// The database entry the application connects to (`[databases]` in the config file).
    pub database: String,
    /// PgBouncer's config file: its `database` entry's host, port and dbname are rewritten.
    pub config_file: String,
    /// How long `PAUSE` may wait for the application's transactions to finish before the
    /// switch is undone (default 10).
    pub pause_timeout_s: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingSection {
    /// The secret that keys `hash` masks, best given as `${ENV_VAR}`; never printed. The same
    /// secret gives the same hashes, so keep it to compare or join masked data later.
    pub key: Option<String>,
}

/// One table's transform rules as written (see [`cutover_core::transform`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The table, `schema.table` or `table` (in `public`), as it enters these rules.
    pub table: Spanned<String>,
    /// Leave the table out.
    #[serde(default)]
    pub exclude: bool,
    /// Keep only these columns (every key column must be listed).
    pub columns: Option<Vec<Spanned<String>>>,
    /// Leave these columns out.
    #[serde(default)]
    pub exclude_columns: Vec<Spanned<String>>,
    /// New table name, `schema.table` or `table` (same schema).
    pub rename: Option<Spanned<String>>,
    /// `{ old_name = "new_name" }`.
    #[serde(default)]
    pub rename_columns: BTreeMap<String, Spanned<String>>,
    /// `{ column = "null" }` or `{ column = "hash" }` (keyed BLAKE3, 64 hex characters).
    #[serde(default)]
    pub mask: BTreeMap<String, Spanned<String>>,
    /// `{ column = "fixed value" }`: the value replaces every row's, in the column's type.
    #[serde(default)]
    pub mask_values: BTreeMap<String, Spanned<String>>,
    /// Added columns: `{ name = "origin", value = "legacy", type = "text" }` or
    /// `{ name = "full_name", template = "{first} {last}" }`.
    #[serde(default)]
    pub add_columns: Vec<Spanned<AddColumnConfig>>,
    /// Keep only rows for which this is true, e.g. `tenant_id = 42 AND status IN ('a', 'b')`.
    pub filter: Option<Spanned<String>>,
    /// The topic, subject or collection this table goes to (a sink's rules only; not for
    /// PostgreSQL sinks, which use `rename`).
    pub route: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddColumnConfig {
    pub name: String,
    /// A constant, in the column's `type` (default text).
    pub value: Option<String>,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Text built from columns: `{first} {last}`.
    pub template: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// Seconds between checks that `cutover run` makes while streaming; 0 turns them off.
    pub interval_s: Option<u64>,
    /// Rows per key range: the unit that is hashed, compared and, when it differs, split.
    pub rows_per_range: Option<u64>,
    /// Rows a range read keeps for a row-by-row comparison; larger differing ranges are split.
    pub keep_rows: Option<usize>,
    /// How long a re-check waits for the pipeline to apply past the position a row was read at.
    pub settle_timeout_s: Option<u64>,
    /// Re-checks of a row that is still changing before it is reported as in flight.
    pub rounds: Option<u32>,
    /// Where `cutover run` saves the last periodic check's result, read by `cutover status`
    /// (default `.cutover-state/<pipeline>-verify.json` beside the pipeline file).
    pub report_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Where changes come from: `postgres` (default; `cutover run` reads its replication slot)
    /// or `kafka` (`cutover apply` reads change topics as a consumer group).
    pub kind: Option<String>,
    /// Connection string, e.g. `postgres://user@host:5432/db`, or `${ENV_VAR}` to read it from
    /// the environment (recommended whenever it holds a password). With `kind = "kafka"`:
    /// optional, the original PostgreSQL database the topics were captured from (`cutover
    /// verify` compares the targets with it).
    #[serde(default)]
    pub url: String,
    /// Tables to replicate: `schema.table`, `schema.*`, or a bare `table` (in `public`). With
    /// `kind = "kafka"`: the tables whose messages are applied (default: every table).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Sequences that move with the switch and `cutover sync-sequences` besides those the
    /// replicated columns own or call in their defaults (found by themselves): patterns as in
    /// `tables` (`public.hibernate_sequence`, `billing.*`), for sequences only the
    /// application's code calls.
    #[serde(default)]
    pub sequences: Vec<String>,
    /// `kind = "kafka"`: bootstrap servers, `host:port[,host:port...]`.
    pub brokers: Option<String>,
    /// `kind = "kafka"`: the consumer group the `apply` workers share (default
    /// `cutover_<name>`).
    pub group: Option<String>,
    /// `kind = "kafka"`: the change topics; a name starting with `^` is a regular expression.
    #[serde(default)]
    pub topics: Vec<String>,
    /// `kind = "kafka"`: the messages' envelope, `cutover` (default) or `debezium`.
    pub format: Option<cutover_core::envelope::EnvelopeFormat>,
    /// `kind = "kafka"`, Debezium messages without schemas: how decimals were written
    /// (Debezium's `decimal.handling.mode`): `precise` (default), `string` or `double`.
    pub decimal_handling: Option<cutover_core::inbound::DecimalHandling>,
    /// `kind = "kafka"`, Debezium messages without schemas: how times and timestamps were
    /// written (Debezium's `time.precision.mode`): `adaptive` (default),
    /// `adaptive_time_microseconds` or `connect`.
    pub time_precision: Option<cutover_core::inbound::TimePrecision>,
    /// `kind = "kafka"`, Debezium messages: the connector's `unavailable.value.placeholder`
    /// (default `__debezium_unavailable_value`).
    pub unavailable_value_placeholder: Option<String>,
    /// `kind = "kafka"`: extra librdkafka consumer settings (security, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `kind = "kafka"`: where messages that cannot be applied are parked (default
    /// `.cutover-state/<name>-apply-letters.jsonl` beside the pipeline file).
    pub dead_letter_file: Option<String>,
    /// `kind = "kafka"`: most messages of one partition applied in one target transaction
    /// (default 5000).
    pub batch_messages: Option<usize>,
    /// `kind = "kafka"`: end each target transaction at a source transaction's end (read from
    /// the cutover envelope's `lsn`, or Debezium's `source.txId`), so a reader of the target
    /// never sees part of a source transaction that lies within one partition (default false).
    /// Whole only for transactions whose messages share a partition: one topic of one
    /// partition for every table keeps all of them whole.
    #[serde(default)]
    pub whole_transactions: bool,
    /// Replication slot name (default `cutover_<name>`).
    pub slot: Option<String>,
    /// Publication name (default `cutover_<name>`).
    pub publication: Option<String>,
    /// What a schema change on the source does while streaming: `apply` (default) adds,
    /// drops, renames and retypes the columns of PostgreSQL targets in stream order (message and
    /// document targets carry the new columns as they come); `stop` stops the pipeline with a
    /// message naming the table.
    #[serde(default)]
    pub schema_changes: SchemaChanges,
    /// Seconds between looks for new tables that match `tables` while streaming (default 30;
    /// 0 turns it off). A new table is added to the publication and copied under a snapshot of
    /// its own; the stream pauses while it is copied.
    pub discover_interval_s: Option<u64>,
}

/// See [`SourceConfig::schema_changes`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SchemaChanges {
    #[default]
    Apply,
    Stop,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSection {
    /// Copies running at the same time: whole tables, and key ranges of split tables
    /// (`parallel_tables`, its older name, is read too).
    #[serde(alias = "parallel_tables")]
    pub workers: Option<usize>,
    /// Tables whose row estimate is at least twice this are copied in key ranges of about this
    /// many rows, each recorded when done, so a crash redoes only the unfinished ones.
    pub range_rows: Option<u64>,
    /// Size of the row chunks handed from the source to the sinks.
    pub chunk_bytes: Option<ByteSize>,
    /// Most rows per second the copy reads from the source, over all tables (default: no
    /// limit), so a copy can run during business hours.
    pub rows_per_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Bound on change events queued for, or buffered unwritten in, each sink.
    pub queue_events: Option<usize>,
    /// Bound on bytes queued for and buffered in each sink.
    pub queue_bytes: Option<ByteSize>,
    /// Buffered bytes at which a sink writes a batch.
    pub batch_bytes: Option<ByteSize>,
    /// Longest time a change waits in a sink's buffer.
    pub flush_interval_ms: Option<u64>,
    /// How long a sink waits for more changes when its queue runs empty at a transaction
    /// boundary before it writes what it has.
    pub linger_ms: Option<u64>,
    /// Bytes of raw replication messages held between the socket and the decoder.
    pub stream_buffer_bytes: Option<ByteSize>,
    /// Least time between heartbeats (empty transactions the sinks record) while the source
    /// writes nothing the pipeline takes.
    pub heartbeat_interval_ms: Option<u64>,
    /// Retries in a row, without a run that lasted a minute, before the pipeline gives up.
    pub max_retries: Option<u32>,
    /// Seconds a sink's write may run before it is abandoned and retried (0: never).
    pub write_timeout_s: Option<u64>,
}

/// The sinks' `[[sink.transform]]` rules, read in a second pass: sinks are told apart by
/// their `kind` tag, which hides where their values were written, and rules need their places.
#[derive(Debug, Deserialize)]
struct SinkRulesText {
    #[serde(default, rename = "sink")]
    sinks: Vec<OneSinkRules>,
}

#[derive(Debug, Deserialize)]
struct OneSinkRules {
    #[serde(default)]
    transform: Vec<TransformConfig>,
}

/// The keys every `[[sink]]` table has, whatever its kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkCommon {
    /// The kind of target: `postgres`, `kafka`, `nats` or `mongodb`.
    pub kind: String,
    /// Names the sink in status output and in its checkpoint.
    pub name: String,
    /// Replicate TRUNCATE to this target (default true). When false, a TRUNCATE on the source
    /// leaves the target's rows alone (for a target that keeps history); later changes still
    /// apply.
    #[serde(default = "yes")]
    pub truncate: bool,
    /// The tables this sink takes (`schema.table`, `schema.*`, `table`), by source name
    /// (default: every table the pipeline replicates).
    pub tables: Option<Vec<String>>,
    /// Most changes per second written to this sink (default: no limit).
    pub max_changes_per_s: Option<u32>,
    /// Most bytes of change data per second written to this sink (default: no limit).
    pub max_bytes_per_s: Option<ByteSize>,
    /// This sink's own transform rules, applied after the pipeline's `[[transform]]` rules
    /// (read with their places by [`SinkRulesText`]; kept raw here).
    #[serde(default, rename = "transform")]
    pub _transform: Vec<toml::Value>,
}

impl SinkCommon {
    const KEYS: [&'static str; 7] = [
        "kind",
        "name",
        "truncate",
        "tables",
        "max_changes_per_s",
        "max_bytes_per_s",
        "transform",
    ];

    /// Changes/s and bytes/s limits.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits {
            changes_per_s: self.max_changes_per_s,
            bytes_per_s: self
                .max_bytes_per_s
                .map(|b| b.0.min(u32::MAX as usize) as u32),
        }
    }
}

fn yes() -> bool {
    true
}

/// A size in bytes, written as a number or as a string such as `"64 MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"64 MiB\"")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v)
                    .map(ByteSize)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "kb" | "k" => 1 << 10,
        "mib" | "mb" | "m" => 1 << 20,
        "gib" | "gb" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

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
    /// The targets, in the file's order (see [`crate::targets`]).
    pub sinks: Vec<Arc<dyn Target>>,
    /// Per sink, in the order of `sinks`: whether TRUNCATE is replicated to it.
    pub sink_truncate: Vec<bool>,
    pub verify: VerifySettings,
    /// The pipeline's transform rules and the hash key.
    pub transforms: Arc<TransformSet>,
    /// Per sink, in the order of `sinks`: its own transform rules.
    pub sink_transforms: Vec<SinkRules>,
    /// Per sink, in the order of `sinks`: its write rate limits.
    pub sink_rates: Vec<RateLimits>,
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

const DEFAULTS: &str = include_str!("../config/defaults.toml");

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

/// Parses pipeline text; `origin` names the file in messages, `env` looks up variables.
pub fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let file: PipelineFile = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
    let base_dir = Path::new(origin)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let defaults: PipelineDefaults =
        toml::from_str(DEFAULTS).expect("config/defaults.toml is valid (checked by a test)");
    let bad = |key: &str, what: String| ConfigError(format!("{origin}: {key}: {what}"));

    if file.name.is_empty()
        || file.name.len() > 40
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(bad(
            "name",
            format!("{:?} is not a valid pipeline name. Fix: use 1 to 40 lowercase letters, digits or _.", file.name),
        ));
    }
    let kafka_source = match file.source.kind.as_deref() {
        None | Some("postgres") => false,
        Some("kafka") => true,
        Some(other) => {
            return Err(bad(
                "source.kind",
                format!("{other:?} is not a source kind. Fix: write \"postgres\" (cutover run) or \"kafka\" (cutover apply)."),
            ))
        }
    };
    let apply = if kafka_source {
        Some(apply_settings(&file, origin, &base_dir, env)?)
    } else {
        for (key, set) in [
            ("brokers", file.source.brokers.is_some()),
            ("group", file.source.group.is_some()),
            ("topics", !file.source.topics.is_empty()),
            ("format", file.source.format.is_some()),
            ("decimal_handling", file.source.decimal_handling.is_some()),
            ("time_precision", file.source.time_precision.is_some()),
            (
                "unavailable_value_placeholder",
                file.source.unavailable_value_placeholder.is_some(),
            ),
            ("properties", !file.source.properties.is_empty()),
            ("dead_letter_file", file.source.dead_letter_file.is_some()),
            ("batch_messages", file.source.batch_messages.is_some()),
            ("whole_transactions", file.source.whole_transactions),
        ] {
            if set {
                return Err(bad(
                    &format!("source.{key}"),
                    "belongs to a Kafka source. Fix: add kind = \"kafka\" to [source] (read with cutover apply), or remove the key.".into(),
                ));
            }
        }
        if file.source.url.is_empty() {
            return Err(bad(
                "source.url",
                "is missing. Fix: write the source database's connection string, e.g. url = \"${SOURCE_URL}\".".into(),
            ));
        }
        None
    };
    if file.source.tables.is_empty() && !kafka_source {
        return Err(bad(
            "source.tables",
            "is empty. Fix: list the tables to replicate, e.g. tables = [\"public.*\"].".into(),
        ));
    }
    let slot = file
        .source
        .slot
        .clone()
        .unwrap_or_else(|| format!("cutover_{}", file.name));
    let publication = file
        .source
        .publication
        .clone()
        .unwrap_or_else(|| format!("cutover_{}", file.name));
    for (key, value) in [("source.slot", &slot), ("source.publication", &publication)] {
        if value.is_empty()
            || value.len() > 63
            || !value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(bad(key, format!("{value:?} is not a valid name. Fix: use 1 to 63 lowercase letters, digits or _.")));
        }
    }
    if file.sinks.is_empty() {
        return Err(bad("sink", "no sink is declared. Fix: add a [[sink]] table with kind = \"postgres\", name and url.".into()));
    }
    let mut sinks = Vec::new();
    let mut sink_transforms = Vec::new();
    let sink_rules: SinkRulesText =
        toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
    let pipeline_transforms = transform_specs(origin, text, &file.transforms, "transform")?;
    if let Some(spec) = pipeline_transforms.iter().find(|s| s.route.is_some()) {
        return Err(ConfigError(format!(
            "{}: route belongs to a sink's rules. Fix: move it to a [[sink.transform]] of the sink it is for.",
            spec.route.as_ref().map_or("", |r| r.place.as_str())
        )));
    }
    // Each table's common keys, its kind, and the kind's own keys.
    let mut parsed = Vec::with_capacity(file.sinks.len());
    for (i, table) in file.sinks.iter().enumerate() {
        let mut own = toml::Table::new();
        let mut common = toml::Table::new();
        for (key, value) in table {
            let keys = if SinkCommon::KEYS.contains(&key.as_str()) {
                &mut common
            } else {
                &mut own
            };
            keys.insert(key.clone(), value.get_ref().clone());
        }
        let common: SinkCommon = toml::Value::Table(common)
            .try_into()
            .map_err(|e: toml::de::Error| sink_error(origin, text, i, table, e.message()))?;
        let kind =
            targets::find(&common.kind).map_err(|e| sink_error(origin, text, i, table, &e))?;
        parsed.push((common, kind, own, table));
    }
    for (i, (s, kind, own, table)) in parsed.iter().enumerate() {
        let name = &s.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                &format!("sink[{i}].name"),
                format!("{name:?} is not a valid sink name. Fix: use letters, digits, - or _."),
            ));
        }
        if parsed[..i].iter().any(|(o, ..)| &o.name == name) {
            return Err(bad(
                &format!("sink[{i}].name"),
                format!("{name:?} is used by two sinks. Fix: give each sink its own name."),
            ));
        }
        let key = |field: &str| format!("{origin}: sink[{i}].{field}");
        let specs = transform_specs(
            origin,
            text,
            &sink_rules.sinks[i].transform,
            &format!("sink[{i}].transform"),
        )?;
        let mut routes = BTreeMap::new();
        for spec in &specs {
            if let Some(route) = &spec.route {
                if route.value.is_empty() || route.value.contains(['{', '}']) {
                    return Err(ConfigError(format!(
                        "{}: route {:?} must be a destination name, without placeholders. Fix: write the topic, subject or collection name itself.",
                        route.place, route.value
                    )));
                }
                kind.check_route(&route.value)
                    .map_err(|e| ConfigError(format!("{}: {e}", route.place)))?;
                let name = spec.rename.as_ref().map_or(&spec.table.value, |r| &r.value);
                routes.insert(name.clone(), route.value.clone());
            }
        }
        sink_transforms.push(SinkRules {
            include: s.tables.clone(),
            specs,
        });
        let expand_key =
            |value: &str, field: &str| expand(value, &key(field), env).map_err(|e| e.0);
        let ctx = BuildContext {
            pipeline: &file.name,
            name,
            base_dir: &base_dir,
            routes: &routes,
            place: &key,
            expand: &expand_key,
        };
        sinks.push(kind.build(own.clone(), &ctx).map_err(|e| match e {
            targets::BuildError::Keys(message) => sink_error(origin, text, i, table, &message),
            targets::BuildError::Invalid(message) => ConfigError(message),
        })?);
    }
    let d = &defaults;
    let pick = |v: Option<usize>, dv: Option<usize>| v.or(dv).unwrap_or(0);
    let pipeline = Pipeline {
        name: file.name.clone(),
        source_url: expand(&file.source.url, &format!("{origin}: source.url"), env)?,
        tables: file.source.tables.clone(),
        sequences: file.source.sequences.clone(),
        slot,
        publication,
        apply_schema_changes: file.source.schema_changes == SchemaChanges::Apply,
        discover_interval_s: file.source.discover_interval_s.unwrap_or(30),
        snapshot_workers: pick(file.snapshot.workers, d.snapshot.workers),
        snapshot_range_rows: file
            .snapshot
            .range_rows
            .or(d.snapshot.range_rows)
            .unwrap_or(250_000),
        chunk_bytes: pick(
            file.snapshot.chunk_bytes.map(|b| b.0),
            d.snapshot.chunk_bytes.map(|b| b.0),
        ),
        queue_events: pick(file.limits.queue_events, d.limits.queue_events),
        queue_bytes: pick(
            file.limits.queue_bytes.map(|b| b.0),
            d.limits.queue_bytes.map(|b| b.0),
        ),
        batch_bytes: pick(
            file.limits.batch_bytes.map(|b| b.0),
            d.limits.batch_bytes.map(|b| b.0),
        ),
        flush_interval_ms: file
            .limits
            .flush_interval_ms
            .or(d.limits.flush_interval_ms)
            .unwrap_or(100),
        linger_ms: file.limits.linger_ms.or(d.limits.linger_ms).unwrap_or(5),
        stream_buffer_bytes: pick(
            file.limits.stream_buffer_bytes.map(|b| b.0),
            d.limits.stream_buffer_bytes.map(|b| b.0),
        ),
        heartbeat_interval_ms: file
            .limits
            .heartbeat_interval_ms
            .or(d.limits.heartbeat_interval_ms)
            .unwrap_or(1000),
        max_retries: file
            .limits
            .max_retries
            .or(d.limits.max_retries)
            .unwrap_or(30),
        write_timeout_s: file
            .limits
            .write_timeout_s
            .or(d.limits.write_timeout_s)
            .unwrap_or(300),
        sinks,
        sink_truncate: parsed.iter().map(|(c, ..)| c.truncate).collect(),
        transforms: Arc::new(TransformSet {
            pipeline: pipeline_transforms,
            key: match &file.masking.key {
                Some(k) => {
                    let secret = expand(k, &format!("{origin}: masking.key"), env)?;
                    if secret.len() < 16 {
                        return Err(bad(
                            "masking.key",
                            "is shorter than 16 characters. Fix: use a long random secret (e.g. openssl rand -hex 32), given as ${ENV_VAR}.".into(),
                        ));
                    }
                    Some(MaskKey::from_secret(&secret))
                }
                None => None,
            },
        }),
        sink_transforms,
        sink_rates: parsed.iter().map(|(c, ..)| c.rate_limits()).collect(),
        snapshot_rows_per_s: file.snapshot.rows_per_s,
        cutover: cutover_settings(&file, &d.cutover, origin, &base_dir, env)?,
        admin: admin_settings(&file.admin, &d.admin, origin, env)?,
        epoch_start: None,
        source_label: None,
        reverse: false,
        apply,
        verify: VerifySettings {
            interval_s: file.verify.interval_s.or(d.verify.interval_s).unwrap_or(0),
            rows_per_range: file
                .verify
                .rows_per_range
                .or(d.verify.rows_per_range)
                .unwrap_or(10_000),
            keep_rows: file
                .verify
                .keep_rows
                .or(d.verify.keep_rows)
                .unwrap_or(100_000),
            settle_timeout_s: file
                .verify
                .settle_timeout_s
                .or(d.verify.settle_timeout_s)
                .unwrap_or(60),
            rounds: file.verify.rounds.or(d.verify.rounds).unwrap_or(5),
            report_path: match &file.verify.report_path {
                Some(p) => base_dir.join(expand(p, &format!("{origin}: verify.report_path"), env)?),
                None => base_dir
                    .join(".cutover-state")
                    .join(format!("{}-verify.json", file.name)),
            },
        },
    };
    for (key, value) in [
        ("verify.rows_per_range", pipeline.verify.rows_per_range),
        ("verify.keep_rows", pipeline.verify.keep_rows as u64),
        ("verify.rounds", u64::from(pipeline.verify.rounds)),
    ] {
        if value == 0 {
            return Err(bad(key, "must be greater than 0.".into()));
        }
    }
    for (key, value) in [
        ("snapshot.workers", pipeline.snapshot_workers),
        ("snapshot.range_rows", pipeline.snapshot_range_rows as usize),
        ("snapshot.chunk_bytes", pipeline.chunk_bytes),
        ("limits.queue_events", pipeline.queue_events),
        ("limits.queue_bytes", pipeline.queue_bytes),
        ("limits.batch_bytes", pipeline.batch_bytes),
        ("limits.stream_buffer_bytes", pipeline.stream_buffer_bytes),
    ] {
        if value == 0 {
            return Err(bad(key, "must be greater than 0.".into()));
        }
    }
    if pipeline.batch_bytes > pipeline.queue_bytes / 2 {
        return Err(bad(
            "limits.batch_bytes",
            format!(
                "{} is more than half of limits.queue_bytes ({}), so a batch could never fill. Fix: lower batch_bytes or raise queue_bytes.",
                pipeline.batch_bytes, pipeline.queue_bytes
            ),
        ));
    }
    Ok(pipeline)
}

/// `[cutover]` with defaults; the primary target resolved to a PostgreSQL sink.
fn cutover_settings(
    file: &PipelineFile,
    d: &CutoverSection,
    origin: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CutoverSettings, ConfigError> {
    let c = &file.cutover;
    let kind = |t: &BTreeMap<String, Spanned<toml::Value>>| {
        t.get("kind")
            .and_then(|v| v.get_ref().as_str().map(str::to_string))
            .unwrap_or_else(|| "postgres".into())
    };
    let name = |t: &BTreeMap<String, Spanned<toml::Value>>| {
        t.get("name")
            .and_then(|v| v.get_ref().as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let pg: Vec<(usize, String)> = file
        .sinks
        .iter()
        .enumerate()
        .filter(|(_, t)| crate::targets::can_be_primary(&kind(t)))
        .map(|(i, t)| (i, name(t)))
        .collect();
    let (target, no_target) = match &c.target {
        Some(wanted) => match pg.iter().find(|(_, n)| n == wanted) {
            Some((i, _)) => (Some(*i), None),
            None => {
                return Err(ConfigError(format!(
                    "{origin}: cutover.target: {wanted:?} is not a PostgreSQL sink of this pipeline. Fix: name one of: {}.",
                    pg.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        },
        None if pg.len() == 1 => (Some(pg[0].0), None),
        None if pg.is_empty() => (
            None,
            Some("the pipeline has no PostgreSQL sink to switch traffic to".to_string()),
        ),
        None => (
            None,
            Some("the pipeline has several PostgreSQL sinks. Fix: name the one traffic moves to in [cutover] target = \"...\"".to_string()),
        ),
    };
    let pgbouncer = match &c.pgbouncer {
        None => None,
        Some(p) => Some(PgBouncerSettings {
            admin_url: expand(
                &p.admin_url,
                &format!("{origin}: cutover.pgbouncer.admin_url"),
                env,
            )?,
            database: p.database.clone(),
            config_file: base_dir.join(expand(
                &p.config_file,
                &format!("{origin}: cutover.pgbouncer.config_file"),
                env,
            )?),
            pause_timeout_s: p.pause_timeout_s.unwrap_or(10),
        }),
    };
    Ok(CutoverSettings {
        target,
        no_target,
        max_lag_bytes: c
            .max_lag_bytes
            .or(d.max_lag_bytes)
            .map_or(16 << 20, |b| b.0 as u64),
        max_lag_s: c.max_lag_s.or(d.max_lag_s).unwrap_or(5.0),
        verify_max_age_s: c.verify_max_age_s.or(d.verify_max_age_s).unwrap_or(3600),
        drain_timeout_s: c.drain_timeout_s.or(d.drain_timeout_s).unwrap_or(30),
        fence_lock_timeout_ms: c
            .fence_lock_timeout_ms
            .or(d.fence_lock_timeout_ms)
            .unwrap_or(5000),
        sequence_margin: c.sequence_margin.or(d.sequence_margin).unwrap_or(1000),
        final_verify: c
            .final_verify
            .or(d.final_verify)
            .unwrap_or(FinalVerify::Changed),
        changed_keys_max: c
            .changed_keys_max
            .or(d.changed_keys_max)
            .unwrap_or(1_000_000),
        switch_command: c.switch_command.clone(),
        switch_command_timeout_s: c
            .switch_command_timeout_s
            .or(d.switch_command_timeout_s)
            .unwrap_or(60),
        pgbouncer,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineDefaults {
    snapshot: SnapshotSection,
    limits: LimitsSection,
    verify: VerifySection,
    cutover: CutoverSection,
    admin: AdminSection,
}

fn admin_settings(
    file: &AdminSection,
    defaults: &AdminSection,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AdminSettings, ConfigError> {
    let listen = file
        .listen
        .as_deref()
        .or(defaults.listen.as_deref())
        .unwrap_or("127.0.0.1:9187");
    let listen = expand(listen, &format!("{origin}: admin.listen"), env)?;
    let listen = if listen == "off" {
        None
    } else {
        Some(listen.parse().map_err(|_| {
            ConfigError(format!(
                "{origin}: admin.listen: {listen:?} is not an address. Fix: write host:port with a numeric host (e.g. \"127.0.0.1:9187\" or \"0.0.0.0:9187\"), or \"off\"."
            ))
        })?)
    };
    let token = file.token.as_ref().map(|t| {
        let token = expand(t, &format!("{origin}: admin.token"), env).map_err(|e| e.0)?;
        if token.len() < 16 {
            return Err(format!(
                "{origin}: admin.token: is shorter than 16 characters. Fix: use a long random secret (e.g. openssl rand -hex 32), given as ${{ENV_VAR}}."
            ));
        }
        Ok(token)
    });
    let (token, token_error) = match token {
        Some(Ok(t)) => (Some(t), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let allowed_hosts = file
        .allowed_hosts
        .as_ref()
        .or(defaults.allowed_hosts.as_ref())
        .map(|hosts| {
            hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    Ok(AdminSettings {
        listen,
        token,
        token_error,
        allowed_hosts,
    })
}

/// Expands `${VAR}` references, and `${file:PATH}` to the contents of a file (a Docker or
/// Kubernetes secret) without its trailing line break. A missing variable or unreadable file is
/// an error naming it (never its value). Every expanded value is offered to the secret mask.
/// `[source]` of a pipeline that `cutover apply` runs (`kind = "kafka"`).
fn apply_settings(
    file: &PipelineFile,
    origin: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApplySettings, ConfigError> {
    let source = &file.source;
    let place = |key: &str| format!("{origin}: source.{key}");
    let bad = |key: &str, what: &str| ConfigError(format!("{}: {what}", place(key)));
    if source.slot.is_some() || source.publication.is_some() {
        return Err(bad(
            "slot",
            "a Kafka source has no replication slot or publication. Fix: remove slot and publication.",
        ));
    }
    let brokers = expand(
        source.brokers.as_deref().ok_or_else(|| {
            bad(
                "brokers",
                "is missing. Fix: write the Kafka bootstrap servers, e.g. brokers = \"127.0.0.1:9092\".",
            )
        })?,
        &place("brokers"),
        env,
    )?;
    cutover_kafka::target::check_brokers(&brokers).map_err(|e| bad("brokers", &e))?;
    if source.topics.is_empty() {
        return Err(bad(
            "topics",
            "is missing. Fix: list the change topics, e.g. topics = [\"shop.public.orders\"], or a pattern such as [\"^shop\\\\..*\"].",
        ));
    }
    for topic in source.topics.iter().filter(|t| !t.starts_with('^')) {
        cutover_kafka::check_topic_name(topic).map_err(|e| bad("topics", &e))?;
    }
    let mut properties = Vec::new();
    for (name, value) in &source.properties {
        if [
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "partition.assignment.strategy",
        ]
        .contains(&name.as_str())
        {
            return Err(bad(
                &format!("properties.{name}"),
                "is set by cutover apply (the group, offsets kept by the targets, eager rebalancing). Fix: remove it; name the group with source.group.",
            ));
        }
        properties.push((
            name.clone(),
            expand(value, &place(&format!("properties.{name}")), env)?,
        ));
    }
    let routes = BTreeMap::new();
    let place_key = |key: &str| place(key);
    let expand_key = |value: &str, key: &str| expand(value, &place(key), env).map_err(|e| e.0);
    let ctx = BuildContext {
        pipeline: &file.name,
        name: "source",
        base_dir,
        routes: &routes,
        place: &place_key,
        expand: &expand_key,
    };
    cutover_kafka::security::check(&mut properties, &ctx).map_err(ConfigError)?;
    let batch_messages = source.batch_messages.unwrap_or(5000);
    if batch_messages == 0 {
        return Err(bad("batch_messages", "must be greater than 0."));
    }
    Ok(ApplySettings {
        brokers,
        group: source
            .group
            .clone()
            .unwrap_or_else(|| format!("cutover_{}", file.name)),
        topics: source.topics.clone(),
        read: cutover_core::inbound::ReadOptions {
            format: source.format.unwrap_or_default(),
            decimal: source.decimal_handling.unwrap_or_default(),
            time_precision: source.time_precision.unwrap_or_default(),
            placeholder: match &source.unavailable_value_placeholder {
                Some(p) if p.is_empty() => {
                    return Err(bad(
                        "unavailable_value_placeholder",
                        "is empty: every empty string would be taken for an unchanged value. Fix: write the connector's unavailable.value.placeholder, or remove the key for Debezium's default.",
                    ))
                }
                Some(p) => p.clone(),
                None => cutover_core::envelope::DEBEZIUM_UNAVAILABLE.to_string(),
            },
        },
        properties,
        dead_letter_file: match &source.dead_letter_file {
            Some(p) => base_dir.join(expand(p, &place("dead_letter_file"), env)?),
            None => base_dir
                .join(".cutover-state")
                .join(format!("{}-apply-letters.jsonl", file.name)),
        },
        batch_messages,
        whole_transactions: source.whole_transactions,
    })
}

fn expand(
    text: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError(format!(
                "{key}: has an unclosed ${{. Fix: write ${{VARIABLE_NAME}}."
            )));
        };
        let name = &after[..end];
        let value = match name.strip_prefix("file:") {
            Some(path) => secret_file(path, key)?,
            None => env(name).ok_or_else(|| {
                ConfigError(format!(
                    "{key}: refers to the environment variable {name}, which is not set. Fix: export {name}=... before running cutover."
                ))
            })?,
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    cutover_core::secrets::register(key, &out);
    Ok(out)
}

/// The contents of a secret file, without the line break an editor or `echo` leaves at its end.
/// The whole contents are masked wherever cutover prints.
fn secret_file(path: &str, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "{key}: cannot read the secret file {path}: {e}. Fix: mount the secret at that path, or correct the path in ${{file:...}} (relative paths start at the directory cutover runs in)."
        ))
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value).to_string();
    cutover_core::secrets::register(&format!("{key} (secret file)"), &value);
    Ok(value)
}

/// `file, line L, column C` for a byte offset of the pipeline text.
fn place_at(origin: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{origin}, line {line}, column {column}")
}

/// `schema.table`, or `table` in `public`.
fn table_name(text: &str) -> TableName {
    match text.split_once('.') {
        Some((schema, name)) => TableName::new(schema, name),
        None => TableName::new("public", text),
    }
}

/// Turns `[[transform]]` tables into rule specs, each name and value with its place in the
/// file. Mistakes that need no database (a filter that does not parse, two rules for one
/// table, an unknown mask) are refused here; the rest when the rules meet the tables.
fn transform_specs(
    origin: &str,
    text: &str,
    configs: &[TransformConfig],
    key: &str,
) -> Result<Vec<TransformSpec>, ConfigError> {
    let placed = |s: &Spanned<String>, path: String| {
        Placed::new(
            s.get_ref().clone(),
            format!("{} ({path})", place_at(origin, text, s.span().start)),
        )
    };
    let mut specs: Vec<TransformSpec> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let at = |field: &str| format!("{key}[{i}].{field}");
        let table = placed(&c.table, at("table"));
        if table.value.is_empty() || table.value.contains('*') {
            return Err(ConfigError(format!(
                "{}: {:?} is not one table. Fix: name one table, as schema.table.",
                table.place, table.value
            )));
        }
        let mut spec =
            TransformSpec::new(Placed::new(table_name(&table.value), table.place.clone()));
        if let Some(other) = specs.iter().find(|o| o.table.value == spec.table.value) {
            return Err(ConfigError(format!(
                "{}: table {} already has rules at {}. Fix: put all of a table's rules in one [[transform]].",
                spec.table.place, spec.table.value, other.table.place
            )));
        }
        spec.exclude = c.exclude;
        spec.columns = c.columns.as_ref().map(|cols| {
            cols.iter()
                .enumerate()
                .map(|(j, n)| placed(n, at(&format!("columns[{j}]"))))
                .collect()
        });
        spec.exclude_columns = c
            .exclude_columns
            .iter()
            .enumerate()
            .map(|(j, n)| placed(n, at(&format!("exclude_columns[{j}]"))))
            .collect();
        spec.rename = c.rename.as_ref().map(|r| {
            let p = placed(r, at("rename"));
            let name = if r.get_ref().contains('.') {
                table_name(r.get_ref())
            } else {
                TableName::new(spec.table.value.schema.clone(), r.get_ref().clone())
            };
            Placed::new(name, p.place)
        });
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &c.rename_columns {
            let p = placed(new, at(&format!("rename_columns.{old}")));
            if let Some(first) = targets.insert(new.get_ref(), old) {
                return Err(ConfigError(format!(
                    "{}: columns {first} and {old} are both renamed to {:?}. Fix: give each column its own name.",
                    p.place,
                    new.get_ref()
                )));
            }
            spec.rename_columns
                .push((Placed::new(old.clone(), p.place), new.get_ref().clone()));
        }
        for (column, how) in &c.mask {
            let p = placed(how, at(&format!("mask.{column}")));
            let mask = match how.get_ref().as_str() {
                "null" => Mask::Null,
                "hash" => Mask::Hash,
                other => {
                    return Err(ConfigError(format!(
                        "{}: {other:?} is not a mask. Fix: write \"null\" or \"hash\", or put a fixed value in mask_values.",
                        p.place
                    )))
                }
            };
            spec.masks
                .push((Placed::new(column.clone(), p.place), mask));
        }
        for (column, value) in &c.mask_values {
            let p = placed(value, at(&format!("mask_values.{column}")));
            spec.masks.push((
                Placed::new(column.clone(), p.place),
                Mask::Value(value.get_ref().clone()),
            ));
        }
        for (j, add) in c.add_columns.iter().enumerate() {
            let place = format!(
                "{} ({})",
                place_at(origin, text, add.span().start),
                at(&format!("add_columns[{j}]"))
            );
            let a = add.get_ref();
            let derived = match (&a.value, &a.template) {
                (Some(value), None) => Derived::Constant {
                    value: value.clone(),
                    type_name: a.type_name.clone().unwrap_or_else(|| "text".into()),
                },
                (None, Some(template)) if a.type_name.is_none() => Derived::Template(template.clone()),
                _ => {
                    return Err(ConfigError(format!(
                        "{place}: an added column has either value (and optionally type) or template. Fix: e.g. {{ name = \"origin\", value = \"legacy\" }} or {{ name = \"full_name\", template = \"{{first}} {{last}}\" }}."
                    )))
                }
            };
            spec.add_columns.push(AddColumn {
                name: Placed::new(a.name.clone(), place),
                derived,
            });
        }
        if let Some(f) = &c.filter {
            let p = placed(f, at("filter"));
            let predicate = Predicate::parse(f.get_ref()).map_err(|e| {
                ConfigError(format!(
                    "{}: the filter {:?} does not parse: {e}. Fix: write conditions such as tenant_id = 42 AND status IN ('active', 'trial') (see docs/transforms.md).",
                    p.place,
                    f.get_ref()
                ))
            })?;
            spec.filter = Some(Placed::new(predicate, p.place));
        }
        spec.route = c.route.as_ref().map(|r| placed(r, at("route")));
        specs.push(spec);
    }
    Ok(specs)
}

/// Turns a TOML error into one line: file, line, column, what is wrong.
fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let place = match e.span() {
        Some(span) => place_at(origin, text, span.start),
        None => origin.to_string(),
    };
    explained(place, e.message())
}

/// A key of sink `i` that is unknown, missing, of the wrong type, or a kind there is not: placed
/// at the key the message names (else at the sink's `kind`).
fn sink_error(
    origin: &str,
    text: &str,
    i: usize,
    table: &BTreeMap<String, Spanned<toml::Value>>,
    message: &str,
) -> ConfigError {
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| !message.contains("variant"));
    let at = named
        .and_then(|k| table.get(k))
        .or_else(|| table.get("kind"))
        .or_else(|| table.values().next())
        .map(|v| v.span().start);
    let place = match at {
        Some(offset) => format!("{}: sink[{i}]", place_at(origin, text, offset)),
        None => format!("{origin}: sink[{i}]"),
    };
    explained(place, message)
}

/// `place: message. Fix: ...`, the fix chosen by what serde's message says.
fn explained(place: String, message: &str) -> ConfigError {
    let message = message.trim().replace('\n', " ");
    let fix = if message.contains("invalid type") || message.contains("invalid value") {
        "give the key a value of the expected type"
    } else if message.contains("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("missing field") {
        "add the key"
    } else if message.contains("unknown variant") {
        "use one of the kinds listed"
    } else {
        "correct the TOML syntax"
    };
    ConfigError(format!("{place}: {message}. Fix: {fix}."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "shop"
[source]
url = "${SRC}"
tables = ["public.*"]
[[sink]]
kind = "postgres"
name = "target"
url = "postgres://u:${PW}@h/db"
"#;

    fn env(name: &str) -> Option<String> {
        match name {
            "SRC" => Some("postgres://src".into()),
            "PW" => Some("pa55".into()),
            _ => None,
        }
    }

    #[test]
    fn defaults_file_parses_and_fills_every_tunable() {
        let p = parse(GOOD, "shop.toml", &env).unwrap();
        assert_eq!(p.slot, "cutover_shop");
        assert_eq!(p.source_url, "postgres://src");
        assert_eq!(p.queue_bytes, 64 << 20);
        assert_eq!(p.batch_bytes, 16 << 20);
        assert_eq!(p.snapshot_workers, 2);
        assert_eq!(p.cutover.max_lag_bytes, 16 << 20);
        assert_eq!(p.cutover.fence_lock_timeout_ms, 5000);
        let Some(pg) = crate::targets::postgres(&*p.sinks[0]) else {
            panic!("the first sink is PostgreSQL")
        };
        assert_eq!(pg.url, "postgres://u:pa55@h/db");
    }

    #[test]
    fn a_kafka_source_is_read_for_apply_and_its_mistakes_are_named() {
        let example = include_str!("../pipelines/apply.toml");
        let vars = |name: &str| match name {
            "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_string()),
            "SOURCE_URL" | "TARGET_URL" => Some("postgres://h/db".to_string()),
            _ => None,
        };
        let p = parse(example, "apply.toml", &vars).unwrap();
        let apply = p.apply.as_ref().expect("a Kafka source");
        assert_eq!(apply.group, "cutover_shop_apply");
        assert_eq!(apply.topics, ["^shop\\.public\\..*"]);
        assert_eq!(apply.batch_messages, 5000);
        assert!(!apply.whole_transactions);
        let e = |text: &str| parse(text, "a.toml", &vars).unwrap_err().to_string();
        let msg = e(&example.replace("brokers = \"${KAFKA_BROKERS}\"\n", ""));
        assert!(msg.contains("source.brokers: is missing"), "{msg}");
        let msg = e(&example.replace("kind = \"kafka\"", "kind = \"mysql\""));
        assert!(
            msg.contains("source.kind") && msg.contains("\"mysql\""),
            "{msg}"
        );
        let msg = e(&GOOD.replace(
            "tables = [\"public.*\"]",
            "tables = [\"public.*\"]\ntopics = [\"t\"]",
        ));
        assert!(
            msg.contains("source.topics: belongs to a Kafka source"),
            "{msg}"
        );
        let msg = e(&example.replace("format = \"cutover\"", "format = \"avro\""));
        assert!(msg.contains("avro"), "{msg}");
        let msg = e(&example.replace(
            "tables = [\"public.*\"]",
            "tables = [\"public.*\"]\nproperties = { \"enable.auto.commit\" = \"true\" }",
        ));
        assert!(
            msg.contains("source.properties.enable.auto.commit: is set by cutover apply"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_read_from_files_and_masked() {
        let dir = std::env::temp_dir().join(format!("cutover-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-a-file-pw\n").unwrap();
        let text = GOOD.replace("${PW}", &format!("${{file:{}}}", file.display()));
        let p = parse(&text, "shop.toml", &env).unwrap();
        let Some(pg) = crate::targets::postgres(&*p.sinks[0]) else {
            panic!("the first sink is PostgreSQL")
        };
        assert_eq!(pg.url, "postgres://u:from-a-file-pw@h/db");
        let masked = cutover_core::secrets::scrub("said from-a-file-pw here");
        assert!(!masked.contains("from-a-file-pw"), "{masked}");

        let missing = dir.join("absent");
        let text = GOOD.replace("${PW}", &format!("${{file:{}}}", missing.display()));
        let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
        assert!(
            e.contains("sink[0].url")
                && e.contains("cannot read the secret file")
                && e.contains("absent"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn message_sinks_are_checked_before_anything_starts() {
        let with = |sink: &str| {
            parse(&format!("{GOOD}\n[[sink]]\n{sink}\n"), "shop.toml", &env)
                .map(|p| p.sinks.len())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"127.0.0.1:9092\""),
            Ok(2)
        );
        let e = with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"localhost\"").unwrap_err();
        assert!(
            e.contains("sink[1].brokers") && e.contains("host:port"),
            "{e}"
        );
        let e =
            with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"h:1\"\ntopic = \"{prefix}.{table}\"")
                .unwrap_err();
        assert!(e.contains("sink[1].topic") && e.contains("{prefix}"), "{e}");
        let e = with("kind = \"mongodb\"\nname = \"m\"\nurl = \"mongodb://h\"\ndatabase = \"app\"\ncollection = \"$bad.{table}\"")
            .unwrap_err();
        assert!(e.contains("sink[1].collection"), "{e}");
        let e = with("kind = \"redis\"\nname = \"r\"").unwrap_err();
        assert!(
            e.contains("unknown variant `redis`") && e.contains("kafka"),
            "{e}"
        );
        let e = with("kind = \"nats\"\nname = \"n\"\nurl = \"nats://h:4222\"\nstream = \"a.b\"")
            .unwrap_err();
        assert!(e.contains("sink[1].stream"), "{e}");
        let kafka = "kind = \"kafka\"\nname = \"k\"\nbrokers = \"h:1\"\n";
        assert_eq!(with(&format!("{kafka}dead_letter_topic = \"dlq\"")), Ok(2));
        let e = with(&format!("{kafka}dead_letter_topic = \"d/l\"")).unwrap_err();
        assert!(
            e.contains("sink[1].dead_letter_topic") && e.contains("'/'"),
            "{e}"
        );
        let e = with(&format!(
            "{kafka}dead_letter_topic = \"dlq\"\ndead_letter_file = \"x\""
        ))
        .unwrap_err();
        assert!(e.contains("not both") && e.contains("Fix:"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("tables = [", "tabels = [");
        let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
        assert!(e.starts_with("shop.toml, line 5"), "{e}");
        assert!(e.contains("unknown field `tabels`"), "{e}");
        assert!(e.contains("Fix:"), "{e}");
    }

    #[test]
    fn wrong_type_is_reported_with_its_place() {
        let text = format!("{GOOD}\n[limits]\nqueue_events = \"many\"\n");
        let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
        assert!(e.contains("line 12"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn unknown_sink_kind_and_unknown_sink_key_are_refused() {
        let e = parse(&GOOD.replace("\"postgres\"", "\"oracle\""), "f", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `oracle`"), "{e}");
        let e = parse(&format!("{GOOD}batch = 3\n"), "f", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `batch`"), "{e}");
    }

    #[test]
    fn missing_variable_is_named_and_no_value_leaks() {
        let e = parse(GOOD, "f", &|n| (n == "SRC").then(|| "x".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink[0].url") && e.contains("PW"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64 MiB"), Some(64 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("lots"), None);
        let e = parse(
            &format!("{GOOD}\n[limits]\nqueue_bytes = true\n"),
            "f",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected a size"), "{e}");
        let e = parse(
            &format!("{GOOD}\n[limits]\nbatch_bytes = \"60 MiB\"\n"),
            "f",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.batch_bytes"), "{e}");
    }

    #[test]
    fn invalid_toml_is_one_line_with_a_place() {
        let e = parse("name = \"x\"\n[source\n", "f.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml, line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
