//! Files cutover keeps beside the pipeline file: the saved consistency check
//! ([`SavedCheck`]) and the changed keys for a switch ([`Journal`]). This module is their one
//! owner: their paths, formats, reading and writing. Each is replaced whole, so a reader sees
//! the old content or the new, never a torn file.

pub mod journal;
pub mod saved_check;

pub use journal::{Journal, JournalTable, Scope};
pub use saved_check::{Identity, SavedCheck, SHOWN_KEYS};

use std::path::Path;

/// Writes `bytes` to `path` through a temporary file beside it (`path` with `.tmp` appended,
/// so two files in one folder never share one) renamed over it; creates the folder.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
