//! The pipeline file as written: plain serde structs, unknown keys refused. Every field's doc
//! comment is its user documentation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::RateLimits;

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
pub(super) struct SinkRulesText {
    #[serde(default, rename = "sink")]
    pub(super) sinks: Vec<OneSinkRules>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OneSinkRules {
    #[serde(default)]
    pub(super) transform: Vec<TransformConfig>,
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
    pub(super) const KEYS: [&'static str; 7] = [
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

pub(super) fn yes() -> bool {
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

pub(super) fn parse_size(text: &str) -> Option<usize> {
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
