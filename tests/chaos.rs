//! The chaos suite: a pipeline under pgbench and a mixed workload while, at random, cutover is
//! SIGKILLed (during the copy too), the source restarts, the target crashes, the target's
//! network is cut, and the Kafka sink's state directory fills up. At the end every target is
//! compared with the source by methods independent of cutover (sorted `pg_dump --data-only` of
//! each table for PostgreSQL, the folded topics for Kafka) and by `cutover verify`.
//!
//! `scripts/chaos.sh` runs it for a long time (`CUTOVER_CHAOS_SECONDS`, default there 1800);
//! the default test run runs it as a smoke, for 40 seconds. `CUTOVER_CHAOS_SEED` replays a run's
//! choice of events; `CUTOVER_CHAOS_REPORT` names a file for the report.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::targets::{self, KafkaReader, MessageServices};
use common::{cutover, services_var, url, workload, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PGBENCH_SCHEMA: &str = "
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22), id bigint PRIMARY KEY);
";

const TABLES: &[&str] = &[
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "customers",
    "orders",
    "items",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pg_bin(name: &str) -> PathBuf {
    PathBuf::from(services_var("CUTOVER_PG_BIN")).join(name)
}

/// A small tmpfs for the Kafka sink's state file, so the suite can fill it; a plain directory
/// (and no disk-full events) where mounting is not allowed.
struct StateDir {
    path: PathBuf,
    mounted: bool,
}

impl StateDir {
    fn new(dir: &Path) -> StateDir {
        let path = dir.join("state");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "cutover-chaos"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        StateDir { path, mounted }
    }

    /// Takes every free byte.
    fn fill(&self) {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(filler).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}

/// Runs pgbench against the source until `stop`, starting it again whenever it ends early (a
/// source restart aborts its clients).
fn pgbench_loop(
    env: &Env,
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let port = env.services.source_port.to_string();
    let rate: u32 = env_or("CUTOVER_CHAOS_TPS", 100);
    let db = env.name.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut child = Command::new(pg_bin("pgbench"))
                .args([
                    "-n",
                    "-c",
                    "2",
                    "-j",
                    "1",
                    "-T",
                    "3600",
                    "-R",
                    &rate.to_string(),
                ])
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &db])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pgbench");
            runs.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

/// The mixed workload of tests/common/workload.rs, reconnecting after a source restart.
fn shop_loop(
    env: &Env,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let url = env.source_url.clone();
    tokio::spawn(async move {
        let mut seed = 1;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                workload::run_paced(
                    client,
                    stop.clone(),
                    committed.clone(),
                    seed,
                    Duration::from_millis(20),
                    300,
                )
                .await;
            }
            seed += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// One table's rows as `pg_dump --data-only` writes them, sorted: independent of cutover's
/// own reading of either side.
fn dump_rows(port: u16, db: &str, table: &str) -> Vec<String> {
    let out = Command::new(pg_bin("pg_dump"))
        .args([
            "--data-only",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-U", "postgres", "-t", &format!("public.{table}"), db])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump {table}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows: Vec<String> = text
        .split_once("FROM stdin;\n")
        .map(|(_, rest)| rest.split("\n\\.\n").next().unwrap_or(""))
        .unwrap_or("")
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// Whether the run whose log this is copies a table now: before it streams, or while a table
/// created since it started is being joined.
fn copying(log: &str) -> bool {
    !log.contains("streaming changes")
        || log.matches("a new table matches source.tables").count()
            > log.matches("table copied into every sink").count()
}

/// A log's last line, cut to 300 characters.
fn last_line(log: &str) -> String {
    log.lines().last().unwrap_or("").chars().take(300).collect()
}

#[derive(Default)]
struct Tally {
    events: BTreeMap<&'static str, u64>,
    /// Runs that ended by themselves (not killed), with their last line.
    exits: Vec<String>,
}

impl Tally {
    fn count(&mut self, event: &'static str) {
        *self.events.entry(event).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let seconds: u64 = env_or("CUTOVER_CHAOS_SECONDS", 40);
    let seed: u64 = env_or(
        "CUTOVER_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let scale: u32 = env_or("CUTOVER_CHAOS_SCALE", 1);
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("chaos: {seconds} s, seed {seed}, pgbench scale {scale}");

    // The source: the shared source cluster (restarted by the suite); the target: the spare
    // cluster (crashed by the suite), reached through a proxy (cut by the suite).
    let mut env = Env::alone("chaos").await;
    let spare: u16 = services_var("CUTOVER_SPARE_PORT").parse().unwrap();
    env.target_on(spare).await;
    let proxy = Proxy::start(spare).await;
    let state = StateDir::new(&env.dir);

    let status = Command::new(pg_bin("pgbench"))
        .args(["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.services.source_port.to_string(),
        ])
        .args(["-U", "postgres", &env.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pgbench -i");
    assert!(status.success(), "pgbench -i failed");
    let src = env.source().await;
    src.batch_execute("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY;")
        .await
        .unwrap();
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 5_000).await;

    let m = MessageServices::get();
    let path = env.pipeline_with(
        "[\"public.*\"]",
        "[limits]\nmax_retries = 1000000\n",
        &format!(
            "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\nstate_path = \"{}\"\n",
            m.kafka_brokers,
            state.path.join("kafka.state").display()
        ),
    );
    // The pipeline writes to the target through the proxy; the test reads it directly.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&env.target_url, &url(proxy.port, &env.name));
    std::fs::write(&path, text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (pgbench_runs, shop_committed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pgbench = pgbench_loop(&env, stop.clone(), pgbench_runs.clone());
    let shop = shop_loop(&env, stop.clone(), shop_committed.clone());

    let mut tally = Tally::default();
    // Long runs add a table now and then: the copies that join them are killed too.
    let mut tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let mut extra_schema = String::new();
    let extra_every = Duration::from_secs(if seconds >= 600 { 120 } else { u64::MAX / 4 });
    let mut next_extra = Instant::now() + extra_every;
    let started = Instant::now();
    let mut run = env.start(&path);
    // Kills during the first copy: each restart copies the unfinished tables again.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        if run.log_text().contains("streaming changes") {
            break;
        }
        run.kill();
        tally.count("SIGKILL during the copy");
        run = env.start(&path);
    }
    let deadline = started + Duration::from_secs(seconds);
    let gap = if seconds < 120 {
        1000..3000
    } else {
        2000..9000
    };
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(gap.clone()))).await;
        if let Ok(Some(status)) = run.try_status() {
            let log = run.log_text();
            tally.exits.push(format!("{status}: {}", last_line(&log)));
            run = env.start(&path);
            continue;
        }
        if Instant::now() >= next_extra {
            next_extra += extra_every;
            let t = format!("chaos_extra_{}", tables.len());
            let ddl = format!("CREATE TABLE {t} (id int PRIMARY KEY, v text, n bigint);");
            let sql = format!(
                "{ddl} INSERT INTO {t} SELECT g, repeat('e', 100), g FROM generate_series(1, 50000) g;"
            );
            let created =
                match tokio_postgres::connect(&env.source_url, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        client.batch_execute(&sql).await.is_ok()
                    }
                    Err(_) => false,
                };
            if !created {
                continue;
            }
            extra_schema.push_str(&ddl);
            tables.push(t);
            tally.count("table added while streaming");
            continue;
        }
        match rng.gen_range(0..100) {
            0..=44 => {
                let copying = copying(&run.log_text());
                run.kill();
                tally.count(if copying {
                    "SIGKILL during the copy"
                } else {
                    "SIGKILL while streaming"
                });
                run = env.start(&path);
            }
            45..=59 => {
                assert!(
                    common::crash_cluster("source"),
                    "could not restart the source"
                );
                tally.count("source restart");
            }
            60..=74 => {
                assert!(common::crash_cluster("spare"), "could not crash the target");
                tally.count("target crash");
            }
            75..=89 => {
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..5000))).await;
                proxy.restore();
                tally.count("target network cut");
            }
            _ if state.mounted => {
                state.fill();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..5000))).await;
                state.free();
                tally.count("state disk full");
            }
            _ => {}
        }
    }

    // Calm: the load stops, every fault is undone, and cutover catches up.
    stop.store(true, Ordering::Relaxed);
    let _ = shop.await;
    let _ = tokio::task::spawn_blocking(move || pgbench.join()).await;
    proxy.restore();
    state.free();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    // As a supervisor would, a run that ended by itself is started again while cutover catches up.
    let calm = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(status)) = run.try_status() {
            tally
                .exits
                .push(format!("{status} (calm): {}", last_line(&run.log_text())));
            run = env.start(&path);
        }
        match env.until_equal(&tables, Duration::from_secs(10)).await {
            Ok(()) => break,
            Err(differs) if Instant::now() > calm => panic!(
                "{differs}\nruns that ended by themselves:\n{}\nthe last run's log, its end:\n{}",
                tally.exits.join("\n"),
                {
                    let log = run.log_text();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(60)..].join("\n")
                }
            ),
            Err(_) => {}
        }
    }

    // Independent comparisons.
    let mut wrong = 0usize;
    let mut rows = 0usize;
    let mut report_lines = Vec::new();
    for t in &tables {
        let a = dump_rows(env.services.source_port, &env.name, t);
        let b = dump_rows(spare, &env.name, t);
        let differ = a.iter().filter(|r| b.binary_search(r).is_err()).count()
            + b.iter().filter(|r| a.binary_search(r).is_err()).count();
        rows += a.len();
        wrong += differ;
        report_lines.push(format!(
            "  {t}: {} rows, {differ} differing (pg_dump)",
            a.len()
        ));
    }
    let topics: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.public.{t}", env.name))
        .collect();
    let mut kafka = KafkaReader::new(&topics);
    let schema = format!("{PGBENCH_SCHEMA}{}{extra_schema}", workload::SCHEMA);
    // Read until the topics are quiet, then compare (loading the fold into a database is the
    // slow part, so it is not done while messages still arrive).
    let deadline = Instant::now() + Duration::from_secs(900);
    let kafka_result = loop {
        let before = kafka.messages;
        kafka.poll(Duration::from_secs(2));
        if kafka.messages != before && Instant::now() < deadline {
            continue;
        }
        let r = targets::folded_equal(&env, "kafka", &schema, &kafka.folded, &tables, false).await;
        if r.is_ok() || Instant::now() > deadline {
            break r;
        }
    };
    let (code, verify_out, verify_err) = cutover(&["verify", path.to_str().unwrap()]);
    let killed: u64 = tally
        .events
        .iter()
        .filter(|(k, _)| k.starts_with("SIGKILL"))
        .map(|(_, v)| v)
        .sum();
    let report = format!(
        "chaos run: {} s, seed {seed}, pgbench scale {scale}, {} pgbench starts, {} shop transactions\n\
         events:\n{}\n  runs that ended by themselves: {}\n{}\n\
         rows compared: {rows} (PostgreSQL target, sorted pg_dump); differing: {wrong}\n\
         Kafka topics folded: {}\n\
         cutover verify: exit {code}\n",
        started.elapsed().as_secs(),
        pgbench_runs.load(Ordering::Relaxed),
        shop_committed.load(Ordering::Relaxed),
        tally
            .events
            .iter()
            .map(|(k, v)| format!("  {k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        tally.exits.len(),
        report_lines.join("\n"),
        match &kafka_result {
            Ok(()) => "equal to the source".to_string(),
            Err(e) => format!("DIFFER: {e}"),
        }
    );
    eprintln!("{report}");
    if !tally.exits.is_empty() {
        eprintln!("runs that ended by themselves:\n{}", tally.exits.join("\n"));
    }
    if let Ok(file) = std::env::var("CUTOVER_CHAOS_REPORT") {
        std::fs::write(file, &report).unwrap();
    }
    assert_eq!(wrong, 0, "{report}");
    assert!(kafka_result.is_ok(), "{report}");
    assert_eq!(code, 0, "{report}\n{verify_out}\n{verify_err}");
    assert!(killed >= 1, "no SIGKILL happened: {report}");
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
