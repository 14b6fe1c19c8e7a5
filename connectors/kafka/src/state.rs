//! The Kafka sink's progress file: written to a temporary file, synced, then renamed over the
//! old one, so a crash leaves either the old state or the new one, never a torn file.

use std::path::PathBuf;

use cutover_core::{ConnectorError, Result, SinkState};

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    /// Reads the saved state; a missing file is a sink that has not copied anything yet.
    pub async fn load(&self) -> Result<SinkState> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => SinkState::from_json(&bytes).map_err(|e| {
                ConnectorError::fatal(format!("{} ({})", e.message, self.path.display())).with_hint(
                    format!(
                        "delete {} to copy every table to this sink again",
                        self.path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SinkState::default()),
            Err(e) => Err(self.io_error("read", e)),
        }
    }

    /// Replaces the saved state durably.
    pub async fn save(&self, doc: Vec<u8>) -> Result<()> {
        let path = self.path.clone();
        let tmp = path.with_extension("tmp");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&doc)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("state file task failed: {e}")))?
        .map_err(|e| self.io_error("write", e))
    }

    /// Removes the saved state (`cutover teardown --target-state`).
    pub async fn remove(&self) -> Result<()> {
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("remove", e)),
        }
    }

    /// A full disk is retried (space can be freed while cutover waits, and the messages
    /// already sent are replayed into the same keys); other I/O errors are fatal.
    fn io_error(&self, what: &str, e: std::io::Error) -> ConnectorError {
        let message = format!(
            "cannot {what} the sink state file {}: {e}",
            self.path.display()
        );
        if e.kind() == std::io::ErrorKind::StorageFull {
            return ConnectorError::retryable(message)
                .with_hint("free space on the state_path's file system; cutover retries until it can write")
                .with_source(e);
        }
        ConnectorError::fatal(message)
            .with_hint("make the directory of the sink's state_path writable")
            .with_source(e)
    }
}
