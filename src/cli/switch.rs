//! `cutover switch`, `rollback` and `sync-sequences`.

use std::path::Path;
use std::process::ExitCode;

use cutover::lock::{self, Hold};
use cutover::switch::{self, Direction};
use cutover::{say, say_err};

use super::{load, load_current, Outcome, SwitchFlags};

/// `cutover switch` (towards the reverse direction) or `rollback` (forward); exit code 3 when
/// a gate is closed.
pub(super) async fn run(path: &Path, towards: Direction, how: SwitchFlags) -> Outcome {
    let cfg = load(path)?;
    let command = match towards {
        Direction::Reverse => "switch",
        Direction::Forward => "rollback",
    };
    let _lock = if how.dry_run {
        None
    } else {
        Some(lock::take(&cfg, &[Hold::Change], command).await?)
    };
    let opts = switch::steps::Options {
        dry_run: how.dry_run,
        resume: how.resume,
        abort: how.abort,
    };
    match switch::steps::switch(&cfg, towards, opts).await? {
        Some(readiness) if !readiness.ready => {
            say_err!("refused: {}", readiness.closed());
            Ok(ExitCode::from(3))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `cutover sync-sequences`: see [`switch::steps::sync_sequences`].
pub(super) async fn sync_sequences(path: &Path, margin: u32) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Change], "sync-sequences").await?;
    let cfg = load_current(path).await?;
    match switch::steps::sync_sequences(&cfg, margin).await? {
        None => say!("the pipeline has no PostgreSQL sink; sequences exist only there"),
        Some(0) => say!("no sequence feeds a column of the pipeline's tables; nothing to do"),
        Some(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}
