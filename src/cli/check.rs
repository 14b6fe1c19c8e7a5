//! `cutover check`: prints what [`cutover::check`] found, and fails when a finding does.

use std::path::Path;
use std::process::ExitCode;

use cutover::check::{self, Findings};
use cutover::say;

use super::{load, load_current, Failure, Outcome};

pub(super) async fn run(path: &Path) -> Outcome {
    let file = load(path)?;
    let mut found = Findings::default();
    let (checked, ready, failed_note) = match &file.apply {
        Some(apply) => (
            check::apply_pipeline(path, &file, apply, &mut found).await,
            format!("ready: cutover apply {}", path.display()),
            "",
        ),
        None => {
            let cfg = load_current(path).await?;
            (
                check::postgres_pipeline(path, &cfg, &mut found).await,
                format!("ready: `cutover run {}` can start", path.display()),
                "; see the fixes above",
            )
        }
    };
    for finding in &found.0 {
        for line in finding.lines() {
            say!("{line}");
        }
    }
    checked?;
    match found.failed() {
        0 => {
            say!("{ready}");
            Ok(ExitCode::SUCCESS)
        }
        failed => Err(Failure::Refused(format!(
            "{failed} check(s) failed{failed_note}"
        ))),
    }
}
