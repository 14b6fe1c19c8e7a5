//! A kind of target as a plug-in: what cutover needs of a connector beyond the [`Sink`] that
//! streams into it. Each connector crate implements [`TargetConfig`] (its part of a `[[sink]]`
//! table, checked when the file is read) and [`Target`] (connecting, saved state, dead letters,
//! the checker's side). The binary keeps one registry that maps a `kind` to its crate.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::dead_letters::LetterStore;
use crate::error::Result;
use crate::naming::Template;
use crate::schema::{TableName, TableSchema};
use crate::sink::{Sink, SinkState};
use crate::verify::{Precision, TableSide};

/// What every target's operations may need of the pipeline.
#[derive(Debug, Clone)]
pub struct TargetContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The source database's name (Debezium envelopes report it).
    pub source_database: String,
    /// Apply source schema changes to the target (else stop on one).
    pub apply_schema_changes: bool,
    /// Bytes at which a write is sealed (sinks that stage rows size their buffers by it).
    pub batch_bytes: usize,
    /// After a switch of direction: every table is complete on the target up to this position,
    /// so a table the target holds rows of but has no copy record of is taken over as copied
    /// there, not refused as foreign rows.
    pub adopt_at: Option<crate::Lsn>,
    /// True while the pipeline streams the other way after a switch (the primary target is
    /// the source). Positions of one server mean nothing on the other, so a target keeps its
    /// saved state apart for each direction ([`TargetContext::state_key`]).
    pub reverse: bool,
    /// The sink is fed by `cutover apply` from one partition of a change topic, and its saved
    /// state covers that partition alone (`pipeline` then names the partition). There is no
    /// snapshot copy: tables are taken as they are and their rows overwritten by the changes.
    /// Targets that can fence make each write commit only if no other worker has committed
    /// past the write's first position since (see [`cutover_core::Sink`]'s checkpoints).
    pub applying: bool,
}

/// The name under which a target keeps one direction's saved state: `key` itself forward,
/// `key` with `.reverse` appended in reverse (see [`TargetContext::reverse`]).
pub fn directed_state_key(key: &str, reverse: bool) -> String {
    if reverse {
        format!("{key}.reverse")
    } else {
        key.to_string()
    }
}

/// One configured target.
///
/// Contract: the methods other than [`Target::connect`] work without a running pipeline and
/// change nothing but what they say (`forget_state` deletes the target's progress records, not
/// its data). No method's output or error holds a secret of the target's configuration.
#[async_trait]
pub trait Target: Send + Sync + Any {
    /// The `kind` written in the pipeline file (`postgres`, `kafka`, ...).
    fn kind(&self) -> &'static str;

    /// The sink's name in the file.
    fn name(&self) -> &str;

    /// Connects a sink that streams into the target.
    async fn connect(&self, ctx: &TargetContext) -> Result<Box<dyn Sink>>;

    /// What the target has made durable, read without streaming (for `cutover status`).
    async fn saved_state(&self, ctx: &TargetContext) -> Result<SinkState>;

    /// Deletes the target's checkpoints and copy records; returns what was deleted, for the
    /// operator (`cutover teardown --target-state`).
    async fn forget_state(&self, ctx: &TargetContext) -> Result<String>;

    /// Prepares the target for every table to be copied again under a new slot (`cutover
    /// recover`), and says what was done, for the operator. By default its progress is
    /// forgotten ([`Target::forget_state`]) and every table is sent again.
    async fn prepare_recopy(&self, ctx: &TargetContext) -> Result<String> {
        let deleted = self.forget_state(ctx).await?;
        Ok(format!("{deleted}; every table is sent again (keys deleted on the source while the slot was lost stay in it: see docs/operations.md)"))
    }

    /// Whether `cutover apply` can feed the target: it keeps its progress in itself, in the
    /// same transaction as the rows (or documents) it covers, so workers that share a topic's
    /// partitions can take over each other's progress. False by default.
    fn fed_by_apply(&self) -> bool {
        false
    }

    /// How the target's connections are protected (encryption, certificates, login), for
    /// `cutover check`; `None` when the target reports it otherwise. Never a secret.
    fn security(&self) -> Option<String> {
        None
    }

    /// The local file the target parks dead letters in, if it is configured with one.
    fn dead_letter_file(&self) -> Option<&Path> {
        None
    }

    /// Where the target parks dead letters outside itself (a file, a topic), if anywhere: by
    /// default its [`Target::dead_letter_file`]. Targets that park inside themselves list their
    /// letters on their own.
    async fn letter_store(&self) -> Result<Option<Box<dyn LetterStore>>> {
        Ok(crate::dead_letters::file_store(self.dead_letter_file()))
    }

    /// Sends the letters parked in [`Target::letter_store`] again: (sent, still parked).
    async fn replay_letters(&self) -> Result<(u64, u64)> {
        Ok((0, 0))
    }

    /// The checker's view of one table as the target holds it, and the precision both sides
    /// are compared at.
    async fn table_side(&self, table: Arc<TableSchema>) -> Result<(Box<dyn TableSide>, Precision)>;

    /// The concrete target, for the operations only one kind has (sequences, repair).
    fn as_any(&self) -> &dyn Any;
}

impl std::fmt::Debug for dyn Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the configuration: it may hold secrets.
        write!(f, "{} sink {}", self.kind(), self.name())
    }
}

/// A kind's own part of a `[[sink]]` table (the keys every sink has, such as `name`, `tables`
/// and the rate limits, are read by the binary). Deserialized with unknown keys refused.
pub trait TargetConfig: DeserializeOwned {
    /// The `kind` that selects this configuration.
    const KIND: &'static str;

    /// Whether a transform rule's `route` (another destination name) may apply to this kind;
    /// `Err` says why not, or why `route` is not a name the kind accepts.
    fn check_route(route: &str) -> std::result::Result<(), String> {
        let _ = route;
        Ok(())
    }

    /// Checks the values and builds the target. Errors name the key (see
    /// [`BuildContext::fail`]) and say the fix.
    fn build(self, ctx: &BuildContext<'_>) -> std::result::Result<Arc<dyn Target>, String>;
}

/// What a [`TargetConfig`] needs from the file around it.
pub struct BuildContext<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The sink's name.
    pub name: &'a str,
    /// The pipeline file's folder: relative paths are taken from there.
    pub base_dir: &'a Path,
    /// Destination names that transform rules route tables to.
    pub routes: &'a BTreeMap<TableName, String>,
    /// `key` as the messages show it (`file: sink[1].brokers`).
    pub place: &'a dyn Fn(&str) -> String,
    /// Expands `${VAR}` in the value of `key`; the error names the key and the variable.
    pub expand: &'a dyn Fn(&str, &str) -> std::result::Result<String, String>,
}

impl BuildContext<'_> {
    /// An error about `key`: `file: sink[1].key: what`.
    pub fn fail(&self, key: &str, what: impl std::fmt::Display) -> String {
        format!("{}: {what}", (self.place)(key))
    }

    /// The value of `key` with `${VAR}` expanded.
    pub fn expand(&self, key: &str, value: &str) -> std::result::Result<String, String> {
        (self.expand)(value, key)
    }

    /// A path from `key`, expanded, relative to the pipeline file.
    pub fn path(&self, key: &str, value: &str) -> std::result::Result<PathBuf, String> {
        Ok(self.base_dir.join(self.expand(key, value)?))
    }

    /// [`BuildContext::path`] of a file that must exist now (a certificate, a key, a
    /// credentials file); the error names the key, the path and the fix.
    pub fn existing_file(&self, key: &str, value: &str) -> std::result::Result<PathBuf, String> {
        let path = self.path(key, value)?;
        if !path.is_file() {
            return Err(self.fail(
                key,
                format!(
                    "{} does not exist or is not a file. Fix: correct the path (relative paths start at the pipeline file's directory).",
                    path.display()
                ),
            ));
        }
        Ok(path)
    }

    /// A destination template from `key`, with the routes of the sink's rules.
    pub fn template(&self, key: &str, text: &str) -> std::result::Result<Template, String> {
        Template::parse(text)
            .map(|t| t.with_routes(self.routes.clone()))
            .map_err(|e| self.fail(key, e))
    }
}
