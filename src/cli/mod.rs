//! The command line: one module per command group, each parsing its arguments, calling the
//! library's operation and printing what it returns. Errors keep their kind ([`Failure`]) up
//! to the exit code.

mod apply;
mod check;
mod dlq;
mod logging;
mod maintain;
mod status;
mod switch;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cutover::switch::Direction;
use cutover::{config, say_err};
use cutover_core::ConnectorError;

use dlq::DlqAction;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime PostgreSQL migration: snapshot, stream, verify, switch"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `text`, `json`, or `auto` (text with a live progress line on a terminal,
    /// JSON lines otherwise).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Copy the selected tables, then stream changes until stopped (SIGINT/SIGTERM drain and
    /// confirm, then exit 0).
    Run { pipeline: PathBuf },
    /// Apply change topics to the targets as one worker of a Kafka consumer group (a pipeline
    /// with `[source] kind = "kafka"`); start one per machine or core. Kafka balances the
    /// partitions among the workers. SIGINT/SIGTERM apply what was read, then leave the group.
    Apply { pipeline: PathBuf },
    /// Validate the pipeline file and check the source and targets; change nothing.
    Check { pipeline: PathBuf },
    /// Drop the pipeline's replication slot and publication on the source.
    Teardown {
        pipeline: PathBuf,
        /// Also delete the pipeline's checkpoints and copy records from every target.
        #[arg(long)]
        target_state: bool,
    },
    /// Delete one sink's saved progress (checkpoint and copy records), so the next run copies
    /// its tables into it again while the other sinks stream on. For a sink that fell behind
    /// the slot (restored from a backup, its state replaced): empty its tables first. Refused
    /// while the pipeline streams.
    Forget {
        pipeline: PathBuf,
        /// The sink, by its name in the pipeline file.
        #[arg(long)]
        sink: String,
    },
    /// After the source lost the pipeline's slot (invalidated past max_slot_wal_keep_size, or
    /// dropped while cutover was down): drop what is left of it and mark every table to be
    /// copied again into every sink. The next `cutover run` copies them under a new slot
    /// (replacing the rows of PostgreSQL targets, one transaction per table) and streams on.
    /// Refused while the slot is healthy, or while the pipeline runs.
    Recover { pipeline: PathBuf },
    /// Copy one table again into every sink while the pipeline streams (the other tables keep
    /// streaming): for a target `verify` found wrong beyond what `--repair` should fix. Each
    /// PostgreSQL target's rows of the table are replaced in the copy's transaction; Kafka and
    /// NATS get a truncate message before the rows. Asks the running `cutover run` through its
    /// admin server ([admin] listen and token).
    Resnapshot {
        pipeline: PathBuf,
        /// The table, `schema.table` (a bare name means `public.table`).
        #[arg(long)]
        table: String,
    },
    /// Show the slot's lag, each target's checkpoint and the switch's readiness gates, ending
    /// with READY or NOT READY. Exit code 0: ready to switch; 3: not ready.
    Status {
        pipeline: PathBuf,
        /// `text` (default) or `json` (one document on standard output).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Move the application from the source to the target: fence the source, drain, verify,
    /// sync sequences, create the reverse slot, move traffic (PgBouncer, switch_command); then
    /// `cutover run` streams target -> source so the way back stays open. Exit code 3: a gate
    /// is closed (nothing changed).
    Switch {
        pipeline: PathBuf,
        #[command(flatten)]
        how: SwitchFlags,
    },
    /// The switch in the other direction: the application back on the source, every write the
    /// target took since the switch there first.
    Rollback {
        pipeline: PathBuf,
        #[command(flatten)]
        how: SwitchFlags,
    },
    /// Set every target sequence behind a replicated column past the source's current value
    /// (creating it, and the column's default, where the target lacks them). Run it right
    /// before traffic moves to the target: logical replication does not carry sequences.
    SyncSequences {
        pipeline: PathBuf,
        /// Steps to add beyond the source's value, for ids the source hands out until the
        /// switch.
        #[arg(long, default_value_t = 1000)]
        margin: u32,
    },
    /// Changes a target rejected for good (a constraint, a value its type cannot hold), parked
    /// while everything else flowed on.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Prove that every target holds what the source holds (BLAKE3 range digests down to the
    /// rows that differ), while changes keep flowing. Exit code 0: equal; 1: drift (or rows
    /// that kept changing, so equality is not proven); 2: the check could not be made.
    Verify {
        pipeline: PathBuf,
        /// Only this table (`schema.table` or `schema.*`); repeat for several.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// `text` (default) or `json` (one document on standard output).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Re-send the rows that differ from the source through the sink, then check them again.
        #[arg(long)]
        repair: bool,
        /// Differing keys listed per kind and table (every one is counted).
        #[arg(long, default_value_t = 20)]
        max_keys: usize,
    },
}

#[derive(clap::Args, Clone, Copy)]
pub(crate) struct SwitchFlags {
    /// Check every gate and print the plan with an estimate of each step; change nothing.
    #[arg(long, conflicts_with_all = ["resume", "abort"])]
    pub(crate) dry_run: bool,
    /// Finish a switch that was interrupted (a crash, a failed traffic move).
    #[arg(long, conflicts_with = "abort")]
    pub(crate) resume: bool,
    /// Undo a switch that was interrupted before its point of no return.
    #[arg(long)]
    pub(crate) abort: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    Text,
    Json,
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    cutover_postgres::tls::install_default_provider();
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    let format = match cli.log_format {
        LogFormat::Auto if terminal => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        f => f,
    };
    logging::init(
        format,
        terminal && matches!(cli.command, Command::Run { .. }),
    );
    // Every command, `cutover run` included, on the multi-threaded scheduler: one worker thread
    // for `run` used less CPU but one clean-clone CI run saw the MongoDB sink's write never
    // complete on it (BENCHMARKS.md); until that is understood, the tested default stays.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say_err!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Verify {
        pipeline,
        tables,
        format,
        repair,
        max_keys,
    } = cli.command
    {
        let opts = cutover::verify::VerifyOptions {
            tables,
            repair,
            max_keys,
            changed: None,
        };
        return runtime.block_on(verify::run(&pipeline, opts, format, terminal));
    }
    let result = runtime.block_on(async {
        if let Some((pipeline, name)) = cli.command.needs_a_postgres_source() {
            refuse_kafka_source(pipeline, name)?;
        }
        match cli.command {
            Command::Run { pipeline } => Ok(cutover::service::run(&pipeline, terminal).await?),
            Command::Apply { pipeline } => apply::run(&pipeline).await,
            Command::Check { pipeline } => check::run(&pipeline).await,
            Command::Teardown {
                pipeline,
                target_state,
            } => maintain::teardown(&pipeline, target_state).await,
            Command::Forget { pipeline, sink } => maintain::forget(&pipeline, &sink).await,
            Command::Recover { pipeline } => maintain::recover(&pipeline).await,
            Command::Status { pipeline, format } => status::run(&pipeline, format).await,
            Command::Resnapshot { pipeline, table } => {
                maintain::resnapshot(&pipeline, &table).await
            }
            Command::Switch { pipeline, how } => {
                switch::run(&pipeline, Direction::Reverse, how).await
            }
            Command::Rollback { pipeline, how } => {
                switch::run(&pipeline, Direction::Forward, how).await
            }
            Command::SyncSequences { pipeline, margin } => {
                switch::sync_sequences(&pipeline, margin).await
            }
            Command::Dlq { action } => dlq::run(action).await,
            Command::Verify { .. } => unreachable!("verify is run above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            if terminal {
                say_err!();
            }
            say_err!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The pipeline file and the command's name, for commands that act on a PostgreSQL
    /// source (its slot, its publication, its traffic).
    fn needs_a_postgres_source(&self) -> Option<(&Path, &'static str)> {
        Some(match self {
            Command::Teardown { pipeline, .. } => (pipeline, "teardown"),
            Command::Forget { pipeline, .. } => (pipeline, "forget"),
            Command::Recover { pipeline } => (pipeline, "recover"),
            Command::Resnapshot { pipeline, .. } => (pipeline, "resnapshot"),
            Command::Switch { pipeline, .. } => (pipeline, "switch"),
            Command::Rollback { pipeline, .. } => (pipeline, "rollback"),
            Command::SyncSequences { pipeline, .. } => (pipeline, "sync-sequences"),
            _ => return None,
        })
    }
}

/// Refuses a command that needs a PostgreSQL source for a pipeline that reads Kafka topics.
fn refuse_kafka_source(path: &Path, command: &str) -> Result<(), Failure> {
    match config::load(path) {
        Ok(cfg) if cfg.apply.is_some() => Err(Failure::Input(format!(
            "pipeline file {} reads Kafka topics ([source] kind = \"kafka\"), and cutover {command} acts on a PostgreSQL source. Fix: for this pipeline use cutover apply, check, status, verify or dlq list.",
            path.display()
        ))),
        // Other errors are reported by the command itself.
        _ => Ok(()),
    }
}

/// Why a command failed. The kind is kept up to the exit code: every kind exits 1 today
/// (`cutover verify` exits 2 for each, see [`verify::run`]); the message is the kind's text.
#[derive(Debug)]
pub enum Failure {
    /// The pipeline file or an argument is wrong.
    Input(String),
    /// A store refused, or could not be reached.
    Store(ConnectorError),
    /// The command refused to act (a lock is held, the state forbids it, a check failed).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Input(m) | Failure::Refused(m) => f.write_str(m),
            Failure::Store(e) => write!(f, "{e}"),
        }
    }
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Self {
        Failure::Store(e)
    }
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        Failure::Input(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Refused(message)
    }
}

/// What a command returns: its exit code, or why it failed.
type Outcome = Result<ExitCode, Failure>;

/// Reads and checks the pipeline file.
fn load(path: &Path) -> Result<config::Pipeline, Failure> {
    Ok(config::load(path)?)
}

/// The pipeline as it runs now: after a switch, from the new primary (see [`cutover::switch`]).
async fn load_current(path: &Path) -> Result<config::Pipeline, Failure> {
    let cfg = load(path)?;
    let rec = cutover::switch::load(&cfg).await?;
    Ok(cutover::switch::current(&cfg, &rec)?)
}
