//! The changed keys the running pipeline writes for a switch, beside the saved check (the
//! file's format, path and reading; what goes in it is `crate::pipeline::changed`'s).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cutover_core::verify::split_raw_key;
use cutover_core::{Lsn, TableName};
use serde::{Deserialize, Serialize};

/// A raw key as the journal writes it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The changed keys as written for a switch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Journal {
    /// Tracking began here (an LSN as a number, as are the others).
    pub from: u64,
    /// Every change up to here is recorded.
    pub through: u64,
    /// Every sink has made everything up to here durable (the slot is confirmed here).
    pub confirmed: u64,
    pub tables: Vec<JournalTable>,
}

/// One table of a [`Journal`].
#[derive(Debug, Serialize, Deserialize)]
pub struct JournalTable {
    pub schema: String,
    pub name: String,
    /// Changes after this position are all recorded (unless `full`).
    pub from: u64,
    pub full: bool,
    /// Hex of each raw key, and the commit position of its last change.
    pub keys: Vec<(String, u64)>,
}

/// What the final check compares of one table.
#[derive(Debug, PartialEq, Eq)]
pub enum Scope {
    /// These keys (their columns' binary values); every other row is as the last clean check
    /// found it.
    Keys(Vec<Vec<Option<Bytes>>>),
    /// Every row.
    Full,
}

impl Journal {
    /// Where the pipeline writes the journal: beside the saved check, `.changed-keys` appended.
    pub fn path(report_path: &Path) -> PathBuf {
        let mut name = report_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".changed-keys");
        report_path.with_file_name(name)
    }

    /// Writes the journal atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        super::replace(
            path,
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }

    /// Reads a journal; None when there is none or it cannot be read.
    pub fn load(path: &Path) -> Option<Journal> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// What the final check must compare of `table`, given a clean check that began at
    /// `clean_from`: the keys changed after it, or every row when they are not all known.
    pub fn scope(&self, table: &TableName, clean_from: Lsn) -> Scope {
        let clean_from = clean_from.0;
        if self.from > clean_from {
            return Scope::Full;
        }
        let Some(t) = self
            .tables
            .iter()
            .find(|t| t.schema == table.schema && t.name == table.name)
        else {
            // Not changed since tracking began.
            return Scope::Keys(Vec::new());
        };
        if t.full || t.from > clean_from {
            return Scope::Full;
        }
        let keys: Option<Vec<_>> = t
            .keys
            .iter()
            .filter(|(_, lsn)| *lsn > clean_from)
            .map(|(k, _)| unhex(k).map(|raw| split_raw_key(&raw)))
            .collect();
        keys.map_or(Scope::Full, Scope::Keys)
    }
}
