//! `cutover verify`: the consistency check, its progress line and its report.

use std::path::Path;
use std::process::ExitCode;

use cutover::lock::{self, Hold};
use cutover::{say, say_err, say_part, verify};

use super::{load, load_current, Failure, ReportFormat};

/// Runs `cutover verify`: exit 0 equal, 1 drift or not proven, 2 the check could not be made
/// (whatever the kind of [`Failure`]).
pub(super) async fn run(
    path: &Path,
    opts: verify::VerifyOptions,
    format: ReportFormat,
    terminal: bool,
) -> ExitCode {
    match check(path, &opts, format, terminal).await {
        Ok(code) => code,
        Err(failure) => {
            say_err!("error: {failure}");
            ExitCode::from(2)
        }
    }
}

async fn check(
    path: &Path,
    opts: &verify::VerifyOptions,
    format: ReportFormat,
    terminal: bool,
) -> Result<ExitCode, Failure> {
    // A repair writes to the targets: one at a time, beside a running pipeline.
    let _lock = if opts.repair {
        Some(lock::take(&load(path)?, &[Hold::Change], "verify --repair").await?)
    } else {
        None
    };
    let cfg = load_current(path).await?;
    let show = |p: &verify::Progress| {
        if terminal {
            show_progress(p)
        }
    };
    let result = verify::verify(&cfg, opts, &show).await;
    if terminal {
        eprint!("\r\x1b[K");
    }
    let report = result?;
    // A check of every table counts for the switch's readiness.
    if opts.tables.is_empty() {
        if let Err(e) = cutover::state::SavedCheck::record(&report, &cfg.verify.report_path) {
            say_err!("warning: cannot save the check's result for `cutover status`: {e}");
        }
    }
    match format {
        ReportFormat::Text => say_part!("{}", report.text()),
        ReportFormat::Json => {
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| Failure::Refused(format!("cannot write the report as JSON: {e}")))?;
            say!("{json}");
        }
    }
    Ok(if report.equal() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The live progress line on a terminal: the range being hashed and an estimate of the rest.
fn show_progress(p: &verify::Progress) {
    let elapsed = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let eta = if p.range > 0 {
        elapsed / p.range as f64 * (p.ranges - p.range) as f64
    } else {
        0.0
    };
    eprint!(
        "\r\x1b[Kverify {} {}: range {}/{}, {} rows hashed, ETA {:.0} s",
        p.sink, p.table, p.range, p.ranges, p.rows, eta
    );
}
