//! The registry of target kinds: the one place that maps the `kind` of a `[[sink]]` table to
//! the connector crate that implements it. Everything else reaches a target through the
//! [`Target`] contract.

use std::sync::Arc;

use cutover_core::{BuildContext, Target, TargetConfig};
use cutover_kafka::target::KafkaConfig;
use cutover_mongodb::target::MongoConfig;
use cutover_nats::target::NatsConfig;
use cutover_postgres::target::{PgConfig, PgTarget};

/// Builds a target from its kind's own keys.
type Build = fn(toml::Table, &BuildContext<'_>) -> Result<Arc<dyn Target>, BuildError>;

/// Why a sink's table does not make a target.
#[derive(Debug)]
pub enum BuildError {
    /// A key is unknown, missing or of the wrong type (serde's message, naming the key).
    Keys(String),
    /// The values are not usable; the message names the key and the fix.
    Invalid(String),
}

/// One kind of target.
pub struct Kind {
    pub name: &'static str,
    check_route: fn(&str) -> Result<(), String>,
    build: Build,
}

const KINDS: &[Kind] = &[
    kind::<PgConfig>(),
    kind::<KafkaConfig>(),
    kind::<NatsConfig>(),
    kind::<MongoConfig>(),
];

const fn kind<T: TargetConfig>() -> Kind {
    Kind {
        name: T::KIND,
        check_route: T::check_route,
        build: build_as::<T>,
    }
}

fn build_as<T: TargetConfig>(
    keys: toml::Table,
    ctx: &BuildContext<'_>,
) -> Result<Arc<dyn Target>, BuildError> {
    let config: T = toml::Value::Table(keys)
        .try_into()
        .map_err(|e: toml::de::Error| BuildError::Keys(e.message().trim().to_string()))?;
    config.build(ctx).map_err(BuildError::Invalid)
}

/// The kind named `name`; the error lists the kinds there are.
pub fn find(name: &str) -> Result<&'static Kind, String> {
    KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
        format!(
            "unknown variant `{name}`, expected one of {}",
            KINDS
                .iter()
                .map(|k| format!("`{}`", k.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl Kind {
    /// Whether a transform rule may route a table of this kind's sink to `route`.
    pub fn check_route(&self, route: &str) -> Result<(), String> {
        (self.check_route)(route)
    }

    /// The target of one `[[sink]]` table, from its kind's own keys (the common ones taken out).
    pub fn build(
        &self,
        keys: toml::Table,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Target>, BuildError> {
        (self.build)(keys, ctx)
    }
}

/// Whether a sink of the kind named `name` can be the switch's primary target: the database
/// the application's writes move to (PostgreSQL).
pub fn can_be_primary(name: &str) -> bool {
    name == PgConfig::KIND
}

/// How status output names a sink: PostgreSQL targets, the default kind, by their name alone;
/// the others as `name (kind)`.
pub fn label(target: &dyn Target) -> String {
    if target.kind() == PgConfig::KIND {
        target.name().to_string()
    } else {
        format!("{} ({})", target.name(), target.kind())
    }
}

/// The PostgreSQL target behind a sink, if it is one (for sequences, repair and the dead
/// letters a PostgreSQL target keeps in itself).
pub fn postgres(target: &dyn Target) -> Option<&PgTarget> {
    target.as_any().downcast_ref::<PgTarget>()
}
