//! The saved consistency check beside the pipeline file (`[verify] report_path`): what the
//! last check found, which databases it describes, and when a check last found them equal.
//! Written by `cutover verify` and `cutover run`'s periodic check; read by `status`, the
//! switch's gates and the running pipeline. How a report becomes one is `crate::verify`'s.

use cutover_core::Result;
use cutover_postgres::conn::database_identity;
use cutover_postgres::PgEndpoint;
use serde::Serialize;

use crate::config::Pipeline;

/// What `cutover run`'s periodic check saves for `cutover status`: the last report and when a
/// check last found everything equal.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SavedCheck {
    /// Seconds since the Unix epoch when the check ended.
    pub checked_at: u64,
    /// When a check last found every table equal (seconds since the Unix epoch).
    pub last_clean_at: Option<u64>,
    pub drift_rows: u64,
    pub in_flight_rows: u64,
    /// Rows of confirmed drift per `sink/table`, for tables with any.
    pub drift_by_table: std::collections::BTreeMap<String, u64>,
    /// Per `sink/table` with drift, the first keys that differ ([`SHOWN_KEYS`] at most), each as
    /// `missing KEY`, `extra KEY` or `differs KEY (columns)`: what the console shows.
    #[serde(default)]
    pub drift_keys: std::collections::BTreeMap<String, Vec<String>>,
    /// How long the check took (absent in checks saved before it was kept).
    #[serde(default)]
    pub elapsed_ms: Option<u64>,
    /// The source's WAL position (as a number) when the last clean check began: rows changed
    /// after it are the ones the switch's final check compares.
    #[serde(default)]
    pub clean_from: Option<u64>,
    /// The databases checked; a check without it (saved by an older cutover) or of other
    /// databases counts as no check ([`SavedCheck::load_for`]).
    #[serde(default)]
    pub identity: Option<Identity>,
}

/// The databases a saved check describes: the source's and each PostgreSQL sink's identity
/// (`system_identifier/database OID`, see [`cutover_postgres::conn::database_identity`]). A
/// check of other databases (a cluster or database built again under the same pipeline file)
/// says nothing of these, and its positions belong to another WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    /// Empty for a pipeline that names no source database (an apply pipeline without one).
    pub source: String,
    /// By sink name.
    pub targets: std::collections::BTreeMap<String, String>,
}

impl Identity {
    /// Reads the identities of `cfg`'s source and PostgreSQL sinks (one short session each).
    pub async fn of(cfg: &Pipeline) -> Result<Identity> {
        let mut identity = Identity::default();
        if !cfg.source_url.is_empty() {
            let source = PgEndpoint::parse(&cfg.source_url, "source")?
                .connect()
                .await?;
            identity.source = database_identity(&source).await?;
        }
        for target in crate::connect::postgres_targets(cfg) {
            let client = target.endpoint()?.connect().await?;
            identity
                .targets
                .insert(target.name.clone(), database_identity(&client).await?);
        }
        Ok(identity)
    }

    /// What differs between a saved `self` and the databases `now`, for the operator; None
    /// when they are the same.
    pub fn differs_from(&self, now: &Identity) -> Option<String> {
        if self.source != now.source {
            return Some(format!(
                "the source is another database now (it was {}, it is {})",
                self.source, now.source
            ));
        }
        for (sink, id) in &now.targets {
            if self.targets.get(sink) != Some(id) {
                return Some(format!(
                    "sink {sink} is another database now (it was {}, it is {id})",
                    self.targets.get(sink).map_or("unknown", String::as_str)
                ));
            }
        }
        None
    }
}

/// Differing keys a saved check keeps per table.
pub const SHOWN_KEYS: usize = 20;

impl SavedCheck {
    /// Reads the saved check; `None` when there is none (or it cannot be read). What it
    /// describes is not compared: see [`SavedCheck::load_for`].
    pub fn load(path: &std::path::Path) -> Option<SavedCheck> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Reads the saved check if it describes the databases `now`: `Ok(None)` when there is
    /// none, `Err(why)` when it describes others (or does not say which).
    pub fn load_for(
        path: &std::path::Path,
        now: &Identity,
    ) -> std::result::Result<Option<SavedCheck>, String> {
        let Some(check) = SavedCheck::load(path) else {
            return Ok(None);
        };
        match &check.identity {
            None => Err(format!(
                "the saved check {} does not say which databases it describes (saved by an older cutover)",
                path.display()
            )),
            Some(saved) => match saved.differs_from(now) {
                Some(why) => Err(format!(
                    "the saved check {} describes other databases: {why}",
                    path.display()
                )),
                None => Ok(Some(check)),
            },
        }
    }

    /// Writes the check atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        super::replace(
            path,
            &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }
}
