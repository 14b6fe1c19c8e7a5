//! `cutover status`.

use std::path::Path;
use std::process::ExitCode;

use cutover::{say, say_part};

use super::{load, Failure, Outcome, ReportFormat};

/// `cutover status`: where the pipeline is, its last check and the switch's gates. Text or one
/// JSON document; exit code 0 when READY, 3 when NOT READY.
pub(super) async fn run(path: &Path, format: ReportFormat) -> Outcome {
    let file = load(path)?;
    if file.apply.is_some() {
        return super::apply::status(&file, format).await;
    }
    let live = cutover::report::live_of(&file).await;
    let report = cutover::report::StatusReport::collect(&file, live).await?;
    match format {
        ReportFormat::Text => say_part!("{}", report.text()),
        ReportFormat::Json => say!(
            "{}",
            serde_json::to_string_pretty(&report.doc)
                .map_err(|e| Failure::Refused(e.to_string()))?
        ),
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
