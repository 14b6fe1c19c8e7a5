//! `cutover`: copy a live PostgreSQL database and stream its changes to targets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cutover::lock::{self, Hold};
use cutover::switch::{self, Direction};
use cutover::{config, say, say_err, say_part, targets, verify};

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: every change is encoded into a few short-lived
/// allocations on the runtime's threads, where glibc's arenas spent a quarter of the sink
/// side's CPU splitting and consolidating free chunks (perf on the messages benchmark,
/// BENCHMARKS.md history 2026-12-07).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cutover_core::{ConnectorError, Sink};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime PostgreSQL migration: snapshot, stream, verify, switch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `text`, `json`, or `auto` (text with a live progress line on a terminal,
    /// JSON lines otherwise).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
struct SwitchFlags {
    /// Check every gate and print the plan with an estimate of each step; change nothing.
    #[arg(long, conflicts_with_all = ["resume", "abort"])]
    dry_run: bool,
    /// Finish a switch that was interrupted (a crash, a failed traffic move).
    #[arg(long, conflicts_with = "abort")]
    resume: bool,
    /// Undo a switch that was interrupted before its point of no return.
    #[arg(long)]
    abort: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    cutover_postgres::tls::install_default_provider();
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    let format = match cli.log_format {
        LogFormat::Auto if terminal => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        f => f,
    };
    init_logging(
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
        let opts = verify::VerifyOptions {
            tables,
            repair,
            max_keys,
            changed: None,
        };
        return runtime.block_on(run_verify(&pipeline, opts, format, terminal));
    }
    let result = runtime.block_on(async {
        if let Some((pipeline, name)) = cli.command.needs_a_postgres_source() {
            refuse_kafka_source(pipeline, name)?;
        }
        match cli.command {
            Command::Run { pipeline } => cutover::service::run(&pipeline, terminal).await,
            Command::Apply { pipeline } => apply(&pipeline).await,
            Command::Check { pipeline } => check(&pipeline).await,
            Command::Teardown {
                pipeline,
                target_state,
            } => teardown(&pipeline, target_state).await,
            Command::Forget { pipeline, sink } => forget(&pipeline, &sink).await,
            Command::Recover { pipeline } => recover(&pipeline).await,
            Command::Status { pipeline, format } => show_status(&pipeline, format).await,
            Command::Resnapshot { pipeline, table } => resnapshot(&pipeline, &table).await,
            Command::Switch { pipeline, how } => {
                run_switch(&pipeline, Direction::Reverse, how).await
            }
            Command::Rollback { pipeline, how } => {
                run_switch(&pipeline, Direction::Forward, how).await
            }
            Command::SyncSequences { pipeline, margin } => sync_sequences(&pipeline, margin).await,
            Command::Dlq { action } => dlq(action).await,
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
    fn needs_a_postgres_source(&self) -> Option<(&std::path::Path, &'static str)> {
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
fn refuse_kafka_source(path: &std::path::Path, command: &str) -> Result<(), String> {
    match config::load(path) {
        Ok(cfg) if cfg.apply.is_some() => Err(format!(
            "pipeline file {} reads Kafka topics ([source] kind = \"kafka\"), and cutover {command} acts on a PostgreSQL source. Fix: for this pipeline use cutover apply, check, status, verify or dlq list.",
            path.display()
        )),
        // Other errors are reported by the command itself.
        _ => Ok(()),
    }
}

/// Runs `cutover verify`: exit 0 equal, 1 drift or not proven, 2 the check failed.
async fn run_verify(
    path: &std::path::Path,
    opts: verify::VerifyOptions,
    format: ReportFormat,
    terminal: bool,
) -> ExitCode {
    // A repair writes to the targets: one at a time, beside a running pipeline.
    let _lock = if opts.repair {
        let taken = match load(path) {
            Ok(file) => lock::take(&file, &[Hold::Change], "verify --repair").await,
            Err(message) => Err(message),
        };
        match taken {
            Ok(l) => Some(l),
            Err(message) => {
                say_err!("error: {message}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let cfg = match load_current(path).await {
        Ok(cfg) => cfg,
        Err(message) => {
            say_err!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let whole = opts.tables.is_empty();
    let show = |p: &verify::Progress| {
        if terminal {
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
    };
    let result = verify::verify(&cfg, &opts, &show).await;
    if terminal {
        eprint!("\r\x1b[K");
    }
    match result {
        Ok(report) => {
            // A check of every table counts for the switch's readiness.
            if whole {
                if let Err(e) = cutover::state::SavedCheck::record(&report, &cfg.verify.report_path)
                {
                    say_err!("warning: cannot save the check's result for `cutover status`: {e}");
                }
            }
            match format {
                ReportFormat::Text => say_part!("{}", report.text()),
                ReportFormat::Json => match serde_json::to_string_pretty(&report) {
                    Ok(json) => say!("{json}"),
                    Err(e) => {
                        say_err!("error: cannot write the report as JSON: {e}");
                        return ExitCode::from(2);
                    }
                },
            }
            if report.equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            say_err!("error: {}", explain(e));
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, live_progress: bool) {
    use tracing_subscriber::EnvFilter;
    // With a live progress line, only warnings are logged so the line stays readable.
    let default = if live_progress {
        "warn"
    } else {
        // The client libraries narrate every connection at info; their warnings still show.
        "info,tokio_postgres=warn,async_nats=warn,mongodb=warn,rdkafka=warn"
    };
    let filter = EnvFilter::try_from_env("CUTOVER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Standard error through [`cutover_core::secrets::scrub`]. The log formatter writes each
/// event in one call, so a secret never straddles two writes.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(cutover_core::secrets::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

type Outcome = Result<ExitCode, String>;

fn explain(e: ConnectorError) -> String {
    e.to_string()
}

fn load(path: &std::path::Path) -> Result<config::Pipeline, String> {
    config::load(path).map_err(|e| e.to_string())
}

/// The pipeline as it runs now: after a switch, from the new primary (see [`switch`]).
async fn load_current(path: &std::path::Path) -> Result<config::Pipeline, String> {
    let cfg = load(path)?;
    let rec = switch::load(&cfg).await.map_err(explain)?;
    switch::current(&cfg, &rec).map_err(explain)
}

async fn run_switch(path: &std::path::Path, towards: Direction, how: SwitchFlags) -> Outcome {
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
    match switch::steps::switch(&cfg, towards, opts)
        .await
        .map_err(explain)?
    {
        Some(readiness) if !readiness.ready => {
            say_err!("refused: {}", readiness.closed());
            Ok(ExitCode::from(3))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `cutover status` of an apply pipeline: each partition's next offset as each PostgreSQL
/// target stored it.
async fn apply_status(cfg: &config::Pipeline, format: ReportFormat) -> Outcome {
    let offsets = cutover::apply::stored_offsets(cfg).await.map_err(explain)?;
    match format {
        ReportFormat::Json => say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "pipeline": cfg.name,
                "stored_offsets": offsets.iter().map(|(sink, parts)| (sink.clone(), parts.iter().map(|(p, o)| (p.clone(), *o)).collect::<std::collections::BTreeMap<_, _>>())).collect::<std::collections::BTreeMap<_, _>>(),
            }))
            .map_err(|e| e.to_string())?
        ),
        ReportFormat::Text => {
            say!("pipeline {} (cutover apply, group {})", cfg.name, cfg.apply.as_ref().map_or("", |a| a.group.as_str()));
            for (sink, parts) in &offsets {
                say!("  sink {sink}: {} partitions applied", parts.len());
                for (partition, next) in parts {
                    say!("    {partition}: next offset {next}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cutover check` of an apply pipeline: the brokers answer and hold the topics, and every
/// target can be reached; nothing is changed.
async fn check_apply(
    path: &std::path::Path,
    cfg: &config::Pipeline,
    apply: &config::ApplySettings,
) -> Outcome {
    say!("pipeline file {}: ok", path.display());
    say!(
        "source: Kafka {}, group {}, {:?} envelopes",
        apply.brokers,
        apply.group,
        apply.read.format
    );
    say!(
        "  tls   source: {}",
        cutover_kafka::security::describe(&apply.properties)
    );
    let mut failed = 0;
    let named: Vec<String> = apply
        .topics
        .iter()
        .filter(|t| !t.starts_with('^'))
        .cloned()
        .collect();
    let found = cutover_kafka::group::topic_partitions(&apply.brokers, &apply.properties, &named)
        .await
        .map_err(explain)?;
    for (topic, partitions) in found {
        if partitions > 0 {
            say!("  ok    topic {topic}: {partitions} partition(s)");
        } else {
            failed += 1;
            say!("  FAIL  topic {topic}: the brokers have no such topic");
            say!("        fix: correct source.topics, or start the capture that writes it");
        }
    }
    for pattern in apply.topics.iter().filter(|t| t.starts_with('^')) {
        say!("  ok    pattern {pattern}: matched by the brokers when the workers join");
    }
    let ctx = cutover::connect::target_context(cfg, "");
    for sink in &cfg.sinks {
        if !sink.fed_by_apply() {
            failed += 1;
            say!(
                "  FAIL  sink {}: a {} sink cannot be fed by cutover apply",
                sink.name(),
                sink.kind()
            );
            continue;
        }
        match sink.saved_state(&ctx).await {
            Ok(_) => say!("  ok    sink {} ({}): reachable", sink.name(), sink.kind()),
            Err(e) => {
                failed += 1;
                say!(
                    "  FAIL  sink {} ({}): {}",
                    sink.name(),
                    sink.kind(),
                    explain(e)
                );
            }
        }
        if let Some(security) = sink.security() {
            say!("  tls   sink {}: {security}", sink.name());
        }
    }
    if failed > 0 {
        return Err(format!("{failed} check(s) failed"));
    }
    say!("ready: cutover apply {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `cutover dlq list` of an apply pipeline: the messages its workers parked, with where they
/// were read; `replay`: applies them again (see [`cutover::apply::replay`]), then lists what
/// stays.
async fn apply_letters(
    path: &std::path::Path,
    apply: &config::ApplySettings,
    replay: bool,
) -> Outcome {
    use cutover_core::dead_letters::{blocking, FileStore, LetterStore};
    if replay && apply.dead_letter_file.exists() {
        let cfg = load(path)?;
        let done = cutover::apply::replay(&cfg).await.map_err(explain)?;
        say!(
            "replayed: {} applied, {} still parked{}",
            done.applied,
            done.still,
            if done.truncates > 0 {
                format!(
                    ", {} truncate(s) left parked (truncate the target table by hand if meant)",
                    done.truncates
                )
            } else {
                String::new()
            }
        );
    }
    let store = FileStore::new(apply.dead_letter_file.clone());
    let letters = if apply.dead_letter_file.exists() {
        blocking(|| store.open()?.read()).map_err(explain)?
    } else {
        Vec::new()
    };
    say!("{}: {} parked message(s)", store.describe(), letters.len());
    for l in &letters {
        let at = l.read_from.as_ref().map_or(l.destination.clone(), |r| {
            format!("{}/{}@{}", r.topic, r.partition, r.offset)
        });
        let table = if l.table.is_empty() {
            "-".to_string()
        } else {
            format!("{}.{}", l.schema, l.table)
        };
        say!(
            "  #{} {at} table {table} key {}\n      payload: {}\n      reason: {}",
            l.id,
            if l.key.is_empty() { "-" } else { &l.key },
            l.payload.as_deref().unwrap_or("(none)"),
            l.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cutover apply`: one consumer-group worker (see [`cutover::apply`]).
async fn apply(path: &std::path::Path) -> Outcome {
    let cfg = load(path)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        cutover::service::wait_for_signal().await;
        let _ = stop_tx.send(true);
        cutover::service::wait_for_signal().await;
        say_err!("\nsecond stop signal: exiting without applying what was read (nothing is lost; the partitions' next owner reads it again)");
        std::process::exit(130);
    });
    let applied = cutover::apply::run(&cfg, stop_rx).await.map_err(explain)?;
    say!(
        "applied {} messages ({} changes) in {} batches; {} parked",
        applied.messages,
        applied.changes,
        applied.batches,
        applied.parked
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(path: &std::path::Path) -> Outcome {
    let file = load(path)?;
    if let Some(apply) = &file.apply {
        return check_apply(path, &file, apply).await;
    }
    let cfg = load_current(path).await?;
    say!("pipeline file {}: ok", path.display());
    let source = cutover::connect::source(&cfg).await.map_err(explain)?;
    say!(
        "source {}: connected, {} tables selected",
        source.endpoint(),
        source.tables().len()
    );
    say!(
        "  tls   source: {}",
        source.endpoint().tls_state().await.map_err(explain)?
    );
    let findings = source.preflight().await.map_err(explain)?;
    let mut failed = 0;
    for f in &findings {
        if f.ok && f.fix.is_some() {
            say!("  warn  {}: {}", f.check, f.detail);
            say!("        fix: {}", f.fix.as_deref().unwrap_or("-"));
        } else if f.ok {
            say!("  ok    {}: {}", f.check, f.detail);
        } else {
            failed += 1;
            say!("  FAIL  {}: {}", f.check, f.detail);
            if let Some(fix) = &f.fix {
                say!("        fix: {fix}");
            }
        }
    }
    let schemas = source.schemas();
    // Each sink's tables as its transform rules shape them; a wrong rule is named with its
    // place in the file.
    let mut shaped: std::collections::HashMap<
        String,
        Vec<std::sync::Arc<cutover_core::TableSchema>>,
    > = Default::default();
    for (i, sink) in cfg.sinks.iter().enumerate() {
        match cfg
            .transforms
            .compile_all(&cfg.sink_transforms[i], &schemas)
        {
            Ok(ts) => {
                if !cfg.transforms.is_empty_with(&cfg.sink_transforms[i]) {
                    say!(
                        "sink {}: transform rules fit the tables ({} table(s) reach it)",
                        sink.name(),
                        ts.len()
                    );
                }
                for t in ts.iter().filter(|t| t.filters()) {
                    let name = &t.source().name;
                    if !source.replica_identity_full(name).await.map_err(explain)? {
                        say!(
                            "  warn  sink {}: {name} is filtered but has no REPLICA IDENTITY FULL: a row that enters the filter through an update leaving a TOASTed value (over ~2 kB) untouched arrives without that value (cutover verify finds it)",
                            sink.name()
                        );
                        say!("        fix: ALTER TABLE {} REPLICA IDENTITY FULL (more WAL per update), or accept it", name.quoted());
                    }
                }
                shaped.insert(
                    sink.name().to_string(),
                    ts.iter().map(|t| t.output().clone()).collect(),
                );
            }
            Err(e) => {
                failed += 1;
                say!("sink {}: FAIL transform rules: {e}", sink.name());
            }
        }
    }
    for sink in cutover::connect::pg_sinks(&cfg).await.map_err(explain)? {
        let Some(tables) = shaped.get(sink.name()) else {
            continue;
        };
        match sink.preflight(tables).await {
            Ok(()) => {
                say!("sink {}: connected, tables compatible", sink.name());
                let firing = sink.fires_on_apply(tables).await.map_err(explain)?;
                failed += report_firing(sink.name(), sink.apply_role(), &firing);
                match sink.endpoint().tls_state().await {
                    Ok(state) => say!("  tls   sink {}: {state}", sink.name()),
                    Err(e) => say!("  warn  sink {}: {}", sink.name(), explain(e)),
                }
            }
            Err(e) => {
                failed += 1;
                say!("sink {}: FAIL {e}", sink.name());
            }
        }
    }
    failed += check_way_back(&cfg, &source.schemas()).await;
    let ctx = cutover::connect::target_context(&cfg, &source.endpoint().database());
    // PostgreSQL targets were connected and checked above.
    for sink in cfg
        .sinks
        .iter()
        .filter(|s| targets::postgres(&***s).is_none())
    {
        match sink.connect(&ctx).await {
            Ok(_) => {
                say!("sink {} ({}): connected", sink.name(), sink.kind());
                if let Some(security) = sink.security() {
                    say!("  tls   sink {}: {security}", sink.name());
                }
            }
            Err(e) => {
                failed += 1;
                say!(
                    "sink {} ({}): FAIL {}",
                    sink.name(),
                    sink.kind(),
                    explain(e)
                );
            }
        }
    }
    // What `cutover run` refuses at start: progress saved in a sink while the slot is gone
    // (changes since may be missing from it, and no slot can give them again).
    if !source.slot_exists().await.map_err(explain)? {
        for sink in &cfg.sinks {
            let Ok(state) = sink.saved_state(&ctx).await else {
                continue; // an unreachable sink was reported above
            };
            if state.checkpoint.is_some() || !state.copied_tables.is_empty() {
                failed += 1;
                say!(
                    "  FAIL  sink {}: holds progress from an earlier run, and replication slot {} does not exist on the source: changes made since that run may be missing from it",
                    sink.name(),
                    cfg.slot
                );
                say!("        fix: run `cutover recover {}` (every table is copied again into the targets, replacing the rows on PostgreSQL targets), or `cutover teardown --target-state {}` to start over", path.display(), path.display());
            }
        }
    }
    if failed == 0 {
        say!("ready: `cutover run {}` can start", path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!("{failed} check(s) failed; see the fixes above"))
    }
}

async fn resnapshot(path: &std::path::Path, table: &str) -> Outcome {
    let cfg = load(path)?;
    let table = if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    };
    let Some(listen) = cfg.admin.listen.filter(|l| l.port() != 0) else {
        return Err(format!(
            "{}: resnapshot asks the running pipeline through its admin server, and [admin] listen is not set. Fix: set [admin] listen and token, and restart `cutover run`.",
            path.display()
        ));
    };
    let Some(token) = cfg.admin.token.as_deref() else {
        return Err(format!(
            "{}: resnapshot is an admin action and [admin] token is not set{}. Fix: set [admin] token (e.g. token = \"${{CUTOVER_ADMIN_TOKEN}}\") and restart `cutover run`.",
            path.display(),
            cfg.admin
                .token_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    };
    let query: String = table
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    cutover::live::post_action(listen, &format!("/api/resnapshot?table={query}"), token).await?;
    say!("{table}: the running pipeline copies it again into every sink; `cutover status` shows the copy, the log says \"table copied into every sink\" when it is done");
    Ok(ExitCode::SUCCESS)
}

async fn teardown(path: &std::path::Path, target_state: bool) -> Outcome {
    let cfg = load(path)?;
    let _lock = lock::take(&cfg, &[Hold::Run, Hold::Change], "teardown").await?;
    let source = cutover::connect::source(&cfg).await.map_err(explain)?;
    let (slot, publication) = source.teardown().await.map_err(explain)?;
    say!(
        "replication slot {}: {}",
        cfg.slot,
        if slot { "dropped" } else { "did not exist" }
    );
    say!(
        "publication {}: {}",
        cfg.publication,
        if publication {
            "dropped"
        } else {
            "did not exist"
        }
    );
    remove_open_fences(&cfg).await?;
    if target_state {
        let ctx = cutover::connect::target_context(&cfg, "");
        for sink in &cfg.sinks {
            let deleted = sink.forget_state(&ctx).await.map_err(explain)?;
            say!("sink {}: {deleted}", sink.name());
        }
        forget_switch_state(&cfg).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the switch's fence (its triggers and gate) from the source and the primary target
/// where it is open; a database whose gate is closed (it must not take writes) keeps it, and
/// is named.
async fn remove_open_fences(cfg: &config::Pipeline) -> Result<(), String> {
    let mut databases = vec![("source", cfg.source_url.clone())];
    if let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) {
        databases.push(("primary target", back.source_url));
    }
    for (what, url) in databases {
        let endpoint = cutover_postgres::PgEndpoint::parse(&url, what).map_err(explain)?;
        let client = endpoint.connect().await.map_err(explain)?;
        match switch::fence::drop_if_open(&client, &cfg.name, 5000)
            .await
            .map_err(explain)?
        {
            Some(0) => {}
            Some(n) => say!("switch fence on the {what}: removed from {n} table(s)"),
            None => say!(
                "switch fence on the {what}: kept, it is closed (this database must not take the application's writes); \
                 `cutover rollback` moves them back, or drop the cutover_fence triggers by hand"
            ),
        }
    }
    Ok(())
}

/// What `teardown --target-state` removes besides the forward sinks' progress: the way back
/// (its slot and publication on the primary target, its sinks' progress, the original
/// source's checkpoints among them), the saved checks and changed keys of both directions, and
/// the switch record. A migration tried again with the same file then starts at the first
/// epoch, and nothing saved of the databases it ran on before opens a gate or sets a position.
async fn forget_switch_state(cfg: &config::Pipeline) -> Result<(), String> {
    let mut files = vec![cfg.verify.report_path.clone()];
    if let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) {
        let primary =
            cutover_postgres::PgEndpoint::parse(&back.source_url, "target").map_err(explain)?;
        switch::steps::drop_slot_and_publication(
            &primary,
            &back.slot,
            &back.publication,
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(explain)?;
        say!(
            "the way back: slot {} and publication {} on the primary target: dropped if they existed",
            back.slot,
            back.publication
        );
        let ctx = cutover::connect::target_context(&back, "");
        for sink in &back.sinks {
            let deleted = sink.forget_state(&ctx).await.map_err(explain)?;
            say!("sink {} (the way back): {deleted}", sink.name());
        }
        files.push(back.verify.report_path.clone());
    }
    for report in files {
        for path in [cutover::state::Journal::path(&report), report.clone()] {
            if path.exists() {
                switch::steps::forget_file(&path).map_err(explain)?;
                say!("{}: removed", path.display());
            }
        }
    }
    if let Some(store) = switch::Store::open(cfg).await.map_err(explain)? {
        if store.forget().await.map_err(explain)? {
            say!("switch record: removed (the next run is the first epoch)");
        }
    }
    Ok(())
}

async fn forget(path: &std::path::Path, name: &str) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Run, Hold::Change], "forget").await?;
    let cfg = load_current(path).await?;
    let Some(sink) = cfg.sinks.iter().find(|s| s.name() == name) else {
        let names: Vec<_> = cfg.sinks.iter().map(|s| s.name().to_string()).collect();
        return Err(format!(
            "{}: no sink is named {name:?}; the sinks are: {}",
            path.display(),
            names.join(", ")
        ));
    };
    let source = cutover::connect::source(&cfg).await.map_err(explain)?;
    if matches!(
        source.slot_activity().await.map_err(explain)?,
        Some((true, _))
    ) {
        return Err(format!(
            "replication slot {} is in use: stop `cutover run` for this pipeline first, then forget the sink",
            cfg.slot
        ));
    }
    let deleted = sink
        .forget_state(&cutover::connect::target_context(&cfg, ""))
        .await
        .map_err(explain)?;
    say!("sink {name}: {deleted}; the next run copies its tables again");
    Ok(ExitCode::SUCCESS)
}

async fn recover(path: &std::path::Path) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Run, Hold::Change], "recover").await?;
    let cfg = load_current(path).await?;
    let source = cutover::connect::source(&cfg).await.map_err(explain)?;
    match source.slot_wal_status().await.map_err(explain)? {
        Some(Some(status)) if status == "lost" => {
            source.drop_slot().await.map_err(explain)?;
            say!(
                "replication slot {}: dropped (the source had invalidated it: wal_status = lost)",
                cfg.slot
            );
        }
        Some(status) => {
            return Err(format!(
                "replication slot {} is healthy (wal_status = {}): no change was lost, and recovering would copy every table again for nothing. \
                 To copy one sink again, use `cutover forget --sink NAME {}`",
                cfg.slot,
                status.as_deref().unwrap_or("unknown"),
                path.display()
            ));
        }
        None => say!(
            "replication slot {}: does not exist (dropped while cutover was down, or never created); the next run creates it",
            cfg.slot
        ),
    }
    let ctx = cutover::connect::target_context(&cfg, "");
    for sink in &cfg.sinks {
        match targets::postgres(&**sink) {
            Some(pg) => {
                let marked = pg
                    .connect_sink(&ctx)
                    .await
                    .map_err(explain)?
                    .mark_for_recopy()
                    .await
                    .map_err(explain)?;
                say!(
                    "sink {}: {marked} table(s) marked to be copied again; each copy replaces the table's rows in one transaction",
                    sink.name()
                );
            }
            None => {
                let deleted = sink.forget_state(&ctx).await.map_err(explain)?;
                say!(
                    "sink {} ({}): {deleted}; every table is sent again (keys deleted on the source while the slot was lost stay in it: see docs/operations.md)",
                    sink.name(),
                    sink.kind()
                );
            }
        }
    }
    say!(
        "next: `cutover run {}` copies every table under a new slot and streams on; then `cutover verify {}`",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum DlqAction {
    /// List every parked change: sink, table, key, operation, position, reason, attempts.
    List { pipeline: PathBuf },
    /// Apply the parked changes again, oldest first (after fixing the cause on the target).
    /// Those that apply are removed; one that still fails stays, with its new reason, and
    /// holds back the later changes of its key. Safe while `cutover run` is running.
    Replay { pipeline: PathBuf },
}

async fn dlq(action: DlqAction) -> Outcome {
    let (path, replay) = match &action {
        DlqAction::List { pipeline } => (pipeline, false),
        DlqAction::Replay { pipeline } => (pipeline, true),
    };
    let file = load(path)?;
    if let Some(apply) = &file.apply {
        return apply_letters(path, apply, replay).await;
    }
    let _lock = if replay {
        Some(lock::take(&file, &[Hold::Change], "dlq replay").await?)
    } else {
        None
    };
    let cfg = load_current(path).await?;
    let mut parked_total = 0u64;
    let schemas = if replay {
        let source = cutover::connect::source(&cfg).await.map_err(explain)?;
        source.schemas()
    } else {
        Vec::new()
    };
    for mut sink in cutover::connect::pg_sinks(&cfg).await.map_err(explain)? {
        let name = sink.name().to_string();
        if replay {
            let index = cfg.sinks.iter().position(|s| s.name() == name).unwrap_or(0);
            let tables: Vec<_> = cfg
                .transforms
                .compile_all(&cfg.sink_transforms[index], &schemas)
                .map_err(|e| format!("sink {name}: {e}"))?
                .iter()
                .map(|t| t.output().clone())
                .collect();
            cutover_core::Sink::open(&mut sink, &tables)
                .await
                .map_err(explain)?;
            let (applied, still) = sink.replay_dead_letters().await.map_err(explain)?;
            say!("sink {name}: {applied} parked change(s) applied, {still} still parked");
            parked_total += still;
        } else {
            let letters = sink.dead_letters().await.map_err(explain)?;
            say!("sink {name}: {} parked change(s)", letters.len());
            for d in &letters {
                say!(
                    "  #{} {} {} key {} at {} (parked {}, {} attempt(s))\n      row: {}\n      reason: {}",
                    d.id,
                    d.table,
                    d.op,
                    d.key,
                    d.commit_lsn.as_deref().unwrap_or("-"),
                    d.parked_at,
                    d.attempts,
                    d.row,
                    d.reason
                );
            }
            parked_total += letters.len() as u64;
        }
    }
    // Kafka, NATS and MongoDB sinks park in a file of their own (Kafka: or a topic).
    for sink in &cfg.sinks {
        let Some(store) = sink.letter_store().await.map_err(explain)? else {
            continue;
        };
        let name = sink.name();
        if replay {
            let (sent, still) = sink.replay_letters().await.map_err(explain)?;
            say!("sink {name}: {sent} parked change(s) sent, {still} still parked");
            parked_total += still;
            continue;
        }
        let letters =
            cutover_core::dead_letters::blocking(|| store.open()?.read()).map_err(explain)?;
        say!("sink {name}: {} parked change(s)", letters.len());
        for l in &letters {
            say!(
                "  #{} {}.{} {} key {} to {} at {} (parked at {} s since the epoch, {} attempt(s))\n      reason: {}",
                l.id,
                l.schema,
                l.table,
                l.op,
                l.key,
                l.destination,
                l.commit_lsn,
                l.parked_at,
                l.attempts,
                l.reason
            );
        }
        parked_total += letters.len() as u64;
    }
    Ok(if parked_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn sync_sequences(path: &std::path::Path, margin: u32) -> Outcome {
    let _lock = lock::take(&load(path)?, &[Hold::Change], "sync-sequences").await?;
    let cfg = load_current(path).await?;
    if cfg.sinks.iter().all(|s| targets::postgres(&**s).is_none()) {
        say!("the pipeline has no PostgreSQL sink; sequences exist only there");
        return Ok(ExitCode::SUCCESS);
    }
    let synced = switch::steps::sync_sequences(&cfg, margin)
        .await
        .map_err(explain)?;
    if synced == 0 {
        say!("no sequence feeds a column of the pipeline's tables; nothing to do");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cutover status`: where the pipeline is, its last check and the switch's gates. Text or one
/// JSON document; exit code 0 when READY, 3 when NOT READY.
async fn show_status(path: &std::path::Path, format: ReportFormat) -> Outcome {
    let file = load(path)?;
    if file.apply.is_some() {
        return apply_status(&file, format).await;
    }
    let live = cutover::report::live_of(&file).await;
    let report = cutover::report::StatusReport::collect(&file, live)
        .await
        .map_err(explain)?;
    match format {
        ReportFormat::Text => say_part!("{}", report.text()),
        ReportFormat::Json => say!(
            "{}",
            serde_json::to_string_pretty(&report.doc).map_err(|e| e.to_string())?
        ),
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// What fires on the source for the rows the reverse stream brings back after a switch (it
/// applies there as the forward sinks apply on their targets); the number of failed findings.
/// Nothing for a pipeline that cannot switch (no PostgreSQL target to move to).
async fn check_way_back(
    cfg: &config::Pipeline,
    tables: &[Arc<cutover_core::TableSchema>],
) -> usize {
    let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) else {
        return 0;
    };
    let sinks = match cutover::connect::pg_sinks(&back).await {
        Ok(sinks) => sinks,
        Err(e) => {
            say!(
                "  warn  the way back (the source as the reverse stream's target): {}",
                explain(e)
            );
            return 0;
        }
    };
    let mut failed = 0;
    // The other targets are checked above, as they are in the forward direction.
    for sink in sinks.iter().filter(|s| s.name() == "source") {
        match sink.fires_on_apply(tables).await {
            Ok(firing) => {
                failed += report_firing(
                    &format!("{} (the way back, after a switch)", sink.name()),
                    sink.apply_role(),
                    &firing,
                )
            }
            Err(e) => say!(
                "  warn  sink {} (the way back): {}",
                sink.name(),
                explain(e)
            ),
        }
    }
    failed
}

/// Prints what fires on a PostgreSQL target for replicated rows (see `PgSink::fires_on_apply`);
/// returns how many findings fail the check. A trigger fails it (it writes or changes rows the
/// source did not); foreign keys the copy and the batches can order (parents first) only
/// warn, a cycle of them fails.
fn report_firing(
    sink: &str,
    role: cutover_postgres::conn::ApplyRole,
    firing: &cutover_postgres::sink::Firing,
) -> usize {
    let mut failed = 0;
    if !firing.triggers.is_empty() {
        failed += 1;
        if role == cutover_postgres::conn::ApplyRole::Replica {
            say!("  FAIL  sink {sink}: these triggers are marked ENABLE ALWAYS or ENABLE REPLICA, so they fire for every replicated row even though cutover applies as a replica (they write or change rows the source did not):");
        } else {
            say!("  FAIL  sink {sink}: the role may not set session_replication_role = replica, so these triggers fire for every replicated row (they write or change rows the source did not):");
        }
        for t in &firing.triggers {
            say!("        {t}");
        }
        if role == cutover_postgres::conn::ApplyRole::Replica {
            say!("        fix: ALTER TABLE ... ENABLE TRIGGER name (fires for the application only), or DISABLE TRIGGER name until the switch");
        } else {
            say!("        fix: connect as a superuser, or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO the role; or disable them until the switch (ALTER TABLE ... DISABLE TRIGGER USER)");
        }
    }
    if !firing.foreign_keys.is_empty() {
        let cyclic = firing.cyclic();
        failed += usize::from(cyclic);
        say!(
            "  {}  sink {sink}: the role may not set session_replication_role = replica, so these foreign keys are checked for replicated rows; cutover copies and writes referenced tables first{}:",
            if cyclic { "FAIL" } else { "warn" },
            if cyclic { ", which a cycle of foreign keys defeats" } else { "" }
        );
        for f in &firing.foreign_keys {
            say!("        {f}");
        }
        say!("        fix: connect as a superuser, or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO the role; or drop the foreign keys and add them back after the switch");
    }
    failed
}
