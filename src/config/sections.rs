//! Each section of the pipeline file resolved and checked by its own function, every default
//! taken from `config/defaults.toml` (compiled in; [`defaults`]).

use std::collections::BTreeMap;
use std::path::Path;

use cutover_core::transform::MaskKey;
use cutover_core::BuildContext;
use serde::Deserialize;
use toml::Spanned;

use super::file::{
    AdminSection, CutoverSection, LimitsSection, PipelineFile, SnapshotSection, VerifySection,
};
use super::text::expand;
use super::{
    AdminSettings, ApplySettings, ConfigError, CutoverSettings, PgBouncerSettings, Pipeline,
    ReadText, VerifySettings,
};

const DEFAULTS: &str = include_str!("../../config/defaults.toml");

/// `config/defaults.toml`: every tunable's default, by section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineDefaults {
    pub(super) source: SourceDefaults,
    pub(super) snapshot: SnapshotSection,
    pub(super) limits: LimitsSection,
    pub(super) verify: VerifySection,
    pub(super) cutover: CutoverSection,
    pub(super) admin: AdminSection,
}

/// The defaults of `[source]` keys of a PostgreSQL source.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceDefaults {
    pub(super) discover_interval_s: Option<u64>,
    /// A Kafka source's (`cutover apply`).
    pub(super) batch_messages: Option<usize>,
}

/// The compiled-in defaults. They are part of the binary and parse (a test reads them).
pub(super) fn defaults() -> Result<PipelineDefaults, ConfigError> {
    toml::from_str(DEFAULTS)
        .map_err(|e| ConfigError(format!("config/defaults.toml (built in): {e}")))
}

/// The file's value, else the default. `config/defaults.toml` sets every key read through
/// here; a key it lacks is an error naming it (a test parses a minimal file, so every key is
/// read there).
pub(super) fn or_default<T>(
    value: Option<T>,
    default: Option<T>,
    key: &str,
) -> Result<T, ConfigError> {
    value.or(default).ok_or_else(|| {
        ConfigError(format!(
            "config/defaults.toml (built in) sets no {key}: this build of cutover is broken"
        ))
    })
}

/// The pipeline's name: lowercase letters, digits and `_`, at most 40.
pub(super) fn check_name(file: &PipelineFile, at: &ReadText<'_>) -> Result<(), ConfigError> {
    if file.name.is_empty()
        || file.name.len() > 40
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(at.bad(
            "name",
            format!("{:?} is not a valid pipeline name. Fix: use 1 to 40 lowercase letters, digits or _.", file.name),
        ));
    }
    Ok(())
}

/// `[source]`: a Kafka source's settings for `cutover apply`, or `None` for a PostgreSQL source
/// (whose keys are checked: none of a Kafka source's, a URL, tables).
pub(super) fn source(
    file: &PipelineFile,
    defaults: &SourceDefaults,
    at: &ReadText<'_>,
) -> Result<Option<ApplySettings>, ConfigError> {
    let kafka_source = match file.source.kind.as_deref() {
        None | Some("postgres") => false,
        Some("kafka") => true,
        Some(other) => {
            return Err(at.bad(
                "source.kind",
                format!("{other:?} is not a source kind. Fix: write \"postgres\" (cutover run) or \"kafka\" (cutover apply)."),
            ))
        }
    };
    if kafka_source {
        return Ok(Some(apply_settings(
            file,
            defaults,
            at.origin,
            &at.base_dir,
            at.env,
        )?));
    }
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
            return Err(at.bad(
                &format!("source.{key}"),
                "belongs to a Kafka source. Fix: add kind = \"kafka\" to [source] (read with cutover apply), or remove the key.".into(),
            ));
        }
    }
    if file.source.url.is_empty() {
        return Err(at.bad(
            "source.url",
            "is missing. Fix: write the source database's connection string, e.g. url = \"${SOURCE_URL}\".".into(),
        ));
    }
    if file.source.tables.is_empty() {
        return Err(at.bad(
            "source.tables",
            "is empty. Fix: list the tables to replicate, e.g. tables = [\"public.*\"].".into(),
        ));
    }
    Ok(None)
}

/// The replication slot's and the publication's names: as written, else `cutover_<name>`.
pub(super) fn slot_and_publication(
    file: &PipelineFile,
    at: &ReadText<'_>,
) -> Result<(String, String), ConfigError> {
    let default = format!("cutover_{}", file.name);
    let slot = file.source.slot.clone().unwrap_or_else(|| default.clone());
    let publication = file.source.publication.clone().unwrap_or(default);
    for (key, value) in [("source.slot", &slot), ("source.publication", &publication)] {
        if value.is_empty()
            || value.len() > 63
            || !value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(at.bad(key, format!("{value:?} is not a valid name. Fix: use 1 to 63 lowercase letters, digits or _.")));
        }
    }
    Ok((slot, publication))
}

/// `[masking] key`: at least 16 characters, given as `${VAR}`.
pub(super) fn masking_key(
    file: &PipelineFile,
    at: &ReadText<'_>,
) -> Result<Option<MaskKey>, ConfigError> {
    let Some(k) = &file.masking.key else {
        return Ok(None);
    };
    let secret = at.expand(k, "masking.key")?;
    if secret.len() < 16 {
        return Err(at.bad(
            "masking.key",
            "is shorter than 16 characters. Fix: use a long random secret (e.g. openssl rand -hex 32), given as ${ENV_VAR}.".into(),
        ));
    }
    Ok(Some(MaskKey::from_secret(&secret)))
}

/// `[verify]` with defaults; the report's path beside the pipeline file unless set.
pub(super) fn verify(
    file: &PipelineFile,
    d: &VerifySection,
    at: &ReadText<'_>,
) -> Result<VerifySettings, ConfigError> {
    let v = &file.verify;
    let settings = VerifySettings {
        interval_s: or_default(v.interval_s, d.interval_s, "verify.interval_s")?,
        rows_per_range: or_default(v.rows_per_range, d.rows_per_range, "verify.rows_per_range")?,
        keep_rows: or_default(v.keep_rows, d.keep_rows, "verify.keep_rows")?,
        settle_timeout_s: or_default(
            v.settle_timeout_s,
            d.settle_timeout_s,
            "verify.settle_timeout_s",
        )?,
        rounds: or_default(v.rounds, d.rounds, "verify.rounds")?,
        report_path: match &v.report_path {
            Some(p) => at.base_dir.join(at.expand(p, "verify.report_path")?),
            None => at
                .base_dir
                .join(".cutover-state")
                .join(format!("{}-verify.json", file.name)),
        },
    };
    for (key, value) in [
        ("verify.rows_per_range", settings.rows_per_range),
        ("verify.keep_rows", settings.keep_rows as u64),
        ("verify.rounds", u64::from(settings.rounds)),
    ] {
        if value == 0 {
            return Err(at.bad(key, "must be greater than 0.".into()));
        }
    }
    Ok(settings)
}

/// The sizes and counts `[snapshot]` and `[limits]` set: none may be 0, and a batch must fit
/// twice in a sink's queue.
pub(super) fn check_bounds(pipeline: &Pipeline, at: &ReadText<'_>) -> Result<(), ConfigError> {
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
            return Err(at.bad(key, "must be greater than 0.".into()));
        }
    }
    if pipeline.batch_bytes > pipeline.queue_bytes / 2 {
        return Err(at.bad(
            "limits.batch_bytes",
            format!(
                "{} is more than half of limits.queue_bytes ({}), so a batch could never fill. Fix: lower batch_bytes or raise queue_bytes.",
                pipeline.batch_bytes, pipeline.queue_bytes
            ),
        ));
    }
    Ok(())
}

/// `[cutover]` with defaults; the primary target resolved to a PostgreSQL sink.
pub(super) fn cutover_settings(
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
        max_lag_bytes: or_default(c.max_lag_bytes, d.max_lag_bytes, "cutover.max_lag_bytes")?.0
            as u64,
        max_lag_s: or_default(c.max_lag_s, d.max_lag_s, "cutover.max_lag_s")?,
        verify_max_age_s: or_default(
            c.verify_max_age_s,
            d.verify_max_age_s,
            "cutover.verify_max_age_s",
        )?,
        drain_timeout_s: or_default(
            c.drain_timeout_s,
            d.drain_timeout_s,
            "cutover.drain_timeout_s",
        )?,
        fence_lock_timeout_ms: or_default(
            c.fence_lock_timeout_ms,
            d.fence_lock_timeout_ms,
            "cutover.fence_lock_timeout_ms",
        )?,
        sequence_margin: or_default(
            c.sequence_margin,
            d.sequence_margin,
            "cutover.sequence_margin",
        )?,
        final_verify: or_default(c.final_verify, d.final_verify, "cutover.final_verify")?,
        changed_keys_max: or_default(
            c.changed_keys_max,
            d.changed_keys_max,
            "cutover.changed_keys_max",
        )?,
        switch_command: c.switch_command.clone(),
        switch_command_timeout_s: or_default(
            c.switch_command_timeout_s,
            d.switch_command_timeout_s,
            "cutover.switch_command_timeout_s",
        )?,
        pgbouncer,
    })
}

pub(super) fn admin_settings(
    file: &AdminSection,
    defaults: &AdminSection,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AdminSettings, ConfigError> {
    let listen = or_default(
        file.listen.as_deref(),
        defaults.listen.as_deref(),
        "admin.listen",
    )?;
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

/// `[source]` of a pipeline that `cutover apply` runs (`kind = "kafka"`).
fn apply_settings(
    file: &PipelineFile,
    defaults: &SourceDefaults,
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
    let batch_messages = or_default(
        source.batch_messages,
        defaults.batch_messages,
        "source.batch_messages",
    )?;
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
