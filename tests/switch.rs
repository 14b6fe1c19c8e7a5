//! The switch of traffic to the target and back, on real clusters, with pgbench writing through
//! a real PgBouncer the whole time.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cutover, Bouncer, Env};

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn pgbench_bin() -> String {
    format!("{}/pgbench", common::services_var("CUTOVER_PG_BIN"))
}

/// pgbench's tables on the source, scale 1, with a key on the history (and so a sequence
/// that the switch must move).
async fn pgbench_init(env: &Env) {
    let status = Command::new(pgbench_bin())
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-I",
            "dtgvp",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &env.services.source_port.to_string(), &env.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    env.on_source("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        .await;
}

/// pgbench through PgBouncer: 4 clients at 100 transactions a second for `seconds`.
fn pgbench_load(env: &Env, bouncer: &Bouncer, seconds: u32) -> Child {
    pgbench_clients(env, bouncer, seconds, 4, 100)
}

/// pgbench through PgBouncer: `clients` clients at `rate` transactions a second in all.
fn pgbench_clients(env: &Env, bouncer: &Bouncer, seconds: u32, clients: u32, rate: u32) -> Child {
    Command::new(pgbench_bin())
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-R",
            &rate.to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &bouncer.port.to_string(),
        ])
        .arg(&bouncer.database)
        .stdout(std::fs::File::create(env.dir.join(format!("pgbench-{seconds}.out"))).unwrap())
        .stderr(std::fs::File::create(env.dir.join(format!("pgbench-{seconds}.err"))).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for pgbench and asserts that no client failed or aborted; returns its transactions.
fn pgbench_done(env: &Env, mut child: Child, seconds: u32) -> u64 {
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(env.dir.join(format!("pgbench-{seconds}.out"))).unwrap();
    let err = std::fs::read_to_string(env.dir.join(format!("pgbench-{seconds}.err"))).unwrap();
    assert!(
        status.success() && !err.contains("aborted"),
        "pgbench failed:\n{out}\n{err}"
    );
    let processed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{out}"));
    assert!(
        out.contains("number of failed transactions: 0"),
        "transactions failed:\n{out}"
    );
    processed
}

/// Whether an application write is taken (rolled back either way), asserting that a session
/// with `session_replication_role = replica` (which ORIGIN triggers skip) is told the same.
async fn takes_writes(url: &str) -> bool {
    let plain = takes_writes_as(url, "origin").await;
    let replica = takes_writes_as(url, "replica").await;
    assert_eq!(
        plain, replica,
        "a replica-role session is let through differently: plain {plain}, replica {replica}"
    );
    plain
}

async fn takes_writes_as(url: &str, role: &str) -> bool {
    let client = common::connect(url).await;
    client
        .batch_execute(&format!("SET session_replication_role = {role}"))
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let ok = client
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        .await;
    client.batch_execute("ROLLBACK").await.unwrap();
    match ok {
        Ok(()) => true,
        Err(e) => {
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "25006", "{db:?}");
            assert!(db.message().contains("does not take writes here"), "{db:?}");
            false
        }
    }
}

/// Asserts that the application's writes are taken by the source alone (`source`) or by the
/// target alone, `when` saying at which point of the test.
async fn assert_writes_go_to(env: &Env, source: bool, when: &str) {
    let (on_source, on_target) = (
        takes_writes(&env.source_url).await,
        takes_writes(&env.target_url).await,
    );
    assert_eq!(
        (on_source, on_target),
        (source, !source),
        "{when}: writes taken by the source: {on_source}, by the target: {on_target}"
    );
}

/// The tests' pipeline. The clusters are shared by every test, whose bursts of WAL (pgbench's
/// initialisations) an idle pipeline's slot follows only at its next heartbeat: the lag in
/// bytes is not what these tests look at, so its bound is wide.
fn pipeline(env: &Env, bouncer: Option<&Bouncer>) -> std::path::PathBuf {
    let mut extra = String::from(
        "[cutover]\nmax_lag_s = 30\nmax_lag_bytes = \"1 GiB\"\nverify_max_age_s = 600\n",
    );
    if let Some(b) = bouncer {
        extra.push_str(&format!(
            "[cutover.pgbouncer]\nadmin_url = \"{}\"\ndatabase = \"{}\"\nconfig_file = \"{}\"\n",
            b.admin_url(),
            b.database,
            b.config.display()
        ));
    }
    env.pipeline("[\"public.pgbench_*\"]", &extra)
}

/// Waits for both databases to hold the same rows. The bound is long: twice in this session
/// (2026-12-07) the stream of a new direction held its last target transaction open for about
/// 90 s after pgbench stopped, then committed it (issue 29, item 19: not yet understood).
async fn wait_equal(env: &Env) {
    env.wait_equal(&TABLES, Duration::from_secs(240)).await;
}

/// Asserts `cutover status` says READY (after a clean verify).
fn verify_and_ready(path: &str) {
    let (code, out, err) = cutover(&["verify", path]);
    assert_eq!(code, 0, "verify:\n{out}\n{err}");
    let (code, out, err) = cutover(&["status", path]);
    assert_eq!(code, 0, "status is not READY:\n{out}\n{err}");
    assert!(out.trim_end().ends_with("READY"), "{out}");
}

/// Starts `cutover run` on `path` and waits until it streams and the target equals the source.
async fn start_streaming(env: &Env, path: &std::path::PathBuf) -> common::Pipeline {
    let run = env.start(path);
    run.wait_log("streaming changes", Duration::from_secs(90))
        .await;
    wait_equal(env).await;
    run
}

/// Stops `cutover run` (it must drain and exit 0) and drops both directions' slots.
async fn stop(env: &Env, mut run: common::Pipeline) {
    assert!(run.terminate().success(), "{}", run.log_text());
    drop_slots(env).await;
}

async fn drop_slots(env: &Env) {
    env.drop_slot().await;
    let _ = env
        .target()
        .await
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'cutover_{}_reverse' AND NOT active",
            env.name
        ))
        .await;
}

/// The switch under pgbench through PgBouncer, then the rollback: no client transaction fails,
/// pgbench goes on against the new primary, the old one refuses application writes and stays
/// an exact copy through the reverse stream; after the rollback the same the other way. Both
/// databases commit asynchronously (`synchronous_commit = off`, as at high write rates): the
/// last commits before the fence are in WAL not yet written when it is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_and_rollback_under_pgbench_through_pgbouncer() {
    let env = Env::new("switch").await;
    pgbench_init(&env).await;
    let asynchronous = format!("ALTER DATABASE {} SET synchronous_commit = off", env.name);
    env.on_source(&asynchronous).await;
    env.target()
        .await
        .batch_execute(&asynchronous)
        .await
        .unwrap();
    let bouncer = Bouncer::start(&env.dir, "app", env.services.source_port, &env.name);
    let path = pipeline(&env, Some(&bouncer));
    let p = path.to_str().unwrap();
    let run = start_streaming(&env, &path).await;
    verify_and_ready(p);

    let load = pgbench_load(&env, &bouncer, 12);
    // A long report reads the new primary through the whole switch: unfencing it must not wait
    // for the report (nor make the tables' other readers queue behind it).
    let report = env.target().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM pgbench_accounts, pgbench_branches")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let file = p.to_string();
    let (code, out, err) = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || cutover(&["switch", &file])),
    )
    .await
    .expect("the switch waited behind a reader of the new primary")
    .unwrap();
    assert_eq!(code, 0, "switch:\n{out}\n{err}\n{}", run.log_text());
    report.batch_execute("COMMIT").await.unwrap();
    assert!(out.contains("switch done"), "{out}");
    // The final check compared the rows pgbench changed since the clean check, not every row.
    assert!(
        out.contains("final check: 4 table(s) by the") && out.contains("0 in full (0 rows); equal"),
        "{out}"
    );
    let history_at_switch: i64 = env
        .target()
        .await
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let done = pgbench_done(&env, load, 12);
    assert!(done > 600, "pgbench ran {done} transactions");
    assert_writes_go_to(&env, false, "after the switch").await;
    let history_after: i64 = env
        .target()
        .await
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        history_after > history_at_switch + 100,
        "pgbench did not go on against the new primary ({history_at_switch} then {history_after})"
    );
    // The reverse stream keeps the old primary an exact copy.
    wait_equal(&env).await;
    run.wait_log("streaming after a switch", Duration::from_secs(30))
        .await;

    // And back, after a check made in this direction (the switch's own check was of the other).
    let (code, out, _) = cutover(&["status", p]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("FAIL  last verify: no check saved"), "{out}");
    verify_and_ready(p);
    // A forward slot left from before (say, a run that was down when the switch dropped it):
    // the rollback must not take it for its own, or the way back replays the whole epoch.
    let stale: String = env
        .source()
        .await
        .query_one(
            &format!(
                "SELECT coalesce(
                    (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cutover_{0}'),
                    (SELECT lsn::text FROM pg_create_logical_replication_slot('cutover_{0}', 'pgoutput')))",
                env.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let load = pgbench_load(&env, &bouncer, 10);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out, err) = cutover(&["rollback", p]);
    assert_eq!(code, 0, "rollback:\n{out}\n{err}\n{}", run.log_text());
    let fresh: bool = env
        .target()
        .await
        .query_one(
            "SELECT epoch_start::pg_lsn > $1::text::pg_lsn FROM cutover.switch_state WHERE pipeline = $2",
            &[&stale, &env.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        fresh,
        "the rollback streams from a slot made before it (at {stale})"
    );
    pgbench_done(&env, load, 10);
    assert_writes_go_to(&env, true, "after the rollback").await;
    env.on_source("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        .await;
    wait_equal(&env).await;
    let (_, out, _) = cutover(&["status", p]);
    assert!(out.contains("epoch 2"), "{out}");
    stop(&env, run).await;
}

/// A closed gate refuses the switch, names the gate and its fix, and changes nothing; a target
/// that cannot stream back is named by the reverse-path gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_gate_refuses_the_switch_and_changes_nothing() {
    let env = Env::new("switch_gates").await;
    pgbench_init(&env).await;
    let path = pipeline(&env, None);
    let p = path.to_str().unwrap();
    let (code, out, _) = cutover(&["status", p]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("FAIL  pipeline streaming") && out.trim_end().ends_with("NOT READY"),
        "{out}"
    );

    let mut run = start_streaming(&env, &path).await;
    // No consistency check yet.
    let (code, out, err) = cutover(&["switch", p]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(out.contains("FAIL  last verify: no check saved"), "{out}");
    assert!(
        err.contains("refused: last verify") && err.contains("fix: run `cutover verify"),
        "{err}"
    );
    let (code, out, _) = cutover(&["switch", "--dry-run", p]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("plan:") && out.contains("fence the old primary"),
        "{out}"
    );
    assert!(takes_writes(&env.source_url).await && takes_writes(&env.target_url).await);
    let (code, out, _) = cutover(&["status", "--format", "json", p]);
    assert_eq!(code, 3);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ready"], false);
    assert_eq!(doc["epoch"], 0);
    let verify_gate = doc["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "last verify")
        .unwrap();
    assert_eq!(verify_gate["ok"], false, "{verify_gate}");
    // A dirty check closes the gate too.
    env.target()
        .await
        .batch_execute(
            "SET cutover.apply = on; UPDATE pgbench_tellers SET tbalance = 7 WHERE tid = 3",
        )
        .await
        .unwrap();
    let (code, _, _) = cutover(&["verify", p]);
    assert_eq!(code, 1);
    let (code, out, _) = cutover(&["switch", p]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("FAIL  last verify: DRIFT: 1 rows"), "{out}");
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;

    // A target without wal_level = logical has no way back.
    let plain = common::connect(&common::url(env.services.plain_port, "postgres")).await;
    plain
        .batch_execute(&format!("CREATE DATABASE {}", env.name))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &env.target_url,
        &common::url(env.services.plain_port, &env.name),
    );
    std::fs::write(&path, text).unwrap();
    let (code, out, _) = cutover(&["status", p]);
    assert_eq!(code, 3);
    assert!(
        out.contains("FAIL  reverse path") && out.contains("wal_level replica"),
        "{out}"
    );
}

/// Runs `cutover` with `CUTOVER_CRASH_AT` set to a switch step.
#[cfg(feature = "crash-points")]
fn crash_at(step: &str, args: &[&str]) -> i32 {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_CRASH_AT", format!("switch_{step}"))
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

/// A crash before each step: the record says a switch is in progress, a plain switch is
/// refused, `--abort` returns to before it; past the point of no return `--abort` is refused
/// and `--resume` finishes. After every crash at most one database takes application writes.
/// Before the point of no return, 8 pgbench clients write through PgBouncer the whole time
/// (the crashed switch leaves them paused there): none of their transactions fails.
#[cfg(feature = "crash-points")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_is_resumed_or_aborted_and_never_leaves_two_primaries() {
    let env = Env::new("switch_crash").await;
    pgbench_init(&env).await;
    let bouncer = Bouncer::start(&env.dir, "app", env.services.source_port, &env.name);
    let path = pipeline(&env, Some(&bouncer));
    let p = path.to_str().unwrap();
    let run = start_streaming(&env, &path).await;
    let (code, out, _) = cutover(&["verify", p]);
    assert_eq!(code, 0, "{out}");
    let started = std::time::Instant::now();
    let load = pgbench_clients(&env, &bouncer, 45, 8, 300);
    for step in [
        "pausing",
        "fencing",
        "draining",
        "verifying",
        "sequences",
        "reverse_slot",
    ] {
        assert_eq!(crash_at(step, &["switch", p]), 70, "no crash at {step}");
        let (src, tgt) = (
            takes_writes(&env.source_url).await,
            takes_writes(&env.target_url).await,
        );
        assert!(!(src && tgt), "two primaries after a crash at {step}");
        let (code, out, err) = cutover(&["switch", p]);
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains("interrupted at step") && err.contains("--abort"),
            "{err}"
        );
        let (_, out, _) = cutover(&["status", p]);
        assert!(out.contains("a switch is in progress at step"), "{out}");
        let (code, out, err) = cutover(&["switch", "--abort", p]);
        assert_eq!(code, 0, "abort after {step}: {out}\n{err}");
        assert_writes_go_to(&env, true, &format!("after aborting at {step}")).await;
        env.on_source("UPDATE pgbench_branches SET bbalance = bbalance + 1")
            .await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "pgbench ended before the last abort: lengthen its run"
    );
    pgbench_done(&env, load, 45);
    wait_equal(&env).await;
    let (code, ..) = cutover(&["verify", p]);
    assert_eq!(code, 0);
    // Past the point of no return.
    assert_eq!(crash_at("moving", &["switch", p]), 70);
    assert!(!takes_writes(&env.source_url).await && !takes_writes(&env.target_url).await);
    let (code, _, err) = cutover(&["switch", "--abort", p]);
    assert_ne!(code, 0);
    assert!(
        err.contains("point of no return") && err.contains("--resume"),
        "{err}"
    );
    let (code, out, err) = cutover(&["switch", "--resume", p]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!takes_writes(&env.source_url).await && takes_writes(&env.target_url).await);
    env.target()
        .await
        .batch_execute("UPDATE pgbench_accounts SET abalance = 42 WHERE aid < 50")
        .await
        .unwrap();
    wait_equal(&env).await;
    stop(&env, run).await;
}

/// The message and document sinks follow the switch: after it their changes come from the new
/// primary, into the same topics, stream and collections, and after the rollback from the old
/// one again; folded by key, each equals the database the application writes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_sinks_follow_the_switch_and_the_rollback() {
    use common::targets::{self, KafkaReader, NatsReader};
    use common::workload::{self, Workload};

    let env = Env::new("switch_msgs").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 100).await;
    let path = env.pipeline_with(
        "[\"public.*\"]",
        "[cutover]\nmax_lag_s = 30\nmax_lag_bytes = \"1 GiB\"\nverify_max_age_s = 600\n",
        &targets::message_sinks(&env, ""),
    );
    let p = path.to_str().unwrap();
    let topics: Vec<String> = workload::TABLES
        .iter()
        .map(|t| format!("{}.public.{t}", env.name))
        .collect();
    let run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(90))
        .await;
    let mut kafka = KafkaReader::new(&topics);
    // Each phase: writes on the database the application uses, then every target equal.
    for (phase, command) in [
        ("forward", "switch"),
        ("reverse", "rollback"),
        ("forward again", ""),
    ] {
        let primary = if phase == "reverse" {
            env.target().await
        } else {
            env.source().await
        };
        let seed = phase.len() as u64;
        let committed = Workload::start_counted(primary, seed, 60).finish().await;
        assert!(committed > 20, "{phase}: only {committed} transactions");
        env.wait_equal(workload::TABLES, Duration::from_secs(90))
            .await;
        // The whole stream, read again from its start (an idle reader's consumer expires).
        let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
        targets::wait_all_equal(
            &env,
            workload::SCHEMA,
            workload::TABLES,
            &mut kafka,
            &mut nats,
            Duration::from_secs(180),
        )
        .await;
        assert!(nats.duplicate_ids().is_empty(), "{phase}: NATS duplicates");
        if command.is_empty() {
            break;
        }
        let (code, out, err) = cutover(&["verify", p]);
        assert_eq!(code, 0, "{phase}: verify\n{out}\n{err}");
        let (code, out, err) = cutover(&[command, p]);
        assert_eq!(code, 0, "{command}:\n{out}\n{err}\n{}", run.log_text());
    }
    let (_, out, _) = cutover(&["status", p]);
    assert!(out.contains("epoch 2"), "{out}");
    stop(&env, run).await;
}

/// The final check compares the rows the stream changed since the last clean check: a change
/// the target lost (a trigger there drops it) is found, the switch is undone, and the
/// application goes on writing to the old primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_target_lost_is_found_by_the_final_check_and_the_switch_undone() {
    undone_by_a_target_trigger(
        "switch_lost",
        "CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN IF NEW.bid = 1 THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER lose BEFORE UPDATE ON pgbench_branches
             FOR EACH ROW EXECUTE FUNCTION lose();
         ALTER TABLE pgbench_branches ENABLE ALWAYS TRIGGER lose;",
        &[
            "UPDATE pgbench_branches SET bbalance = bbalance + 5",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 100",
        ],
        "pgbench_branches: 1 differing rows",
    )
    .await;
}

/// Streams pgbench's tables, puts `trigger` (SQL) on the target, makes `changes` on the source
/// and switches: the final check must find `differing` and the switch be undone, the
/// application writing to the old primary again.
async fn undone_by_a_target_trigger(name: &str, trigger: &str, changes: &[&str], differing: &str) {
    let env = Env::new(name).await;
    pgbench_init(&env).await;
    let path = pipeline(&env, None);
    let p = path.to_str().unwrap();
    let run = start_streaming(&env, &path).await;
    verify_and_ready(p);
    env.target().await.batch_execute(trigger).await.unwrap();
    for sql in changes {
        env.on_source(sql).await;
    }
    let (code, out, err) = cutover(&["switch", p]);
    assert_ne!(code, 0, "the switch missed the difference:\n{out}\n{err}");
    assert!(
        err.contains("failed and was undone")
            && err.contains("final check found differences")
            && err.contains(differing),
        "{err}"
    );
    assert_writes_go_to(&env, true, "after the undone switch").await;
    let (_, out, _) = cutover(&["status", p]);
    assert!(!out.contains("a switch is in progress"), "{out}");
    stop(&env, run).await;
}

/// A migration tried again with the same pipeline file: switch, rollback, stop, `teardown
/// --target-state`, then the target database built again. Nothing saved of the first attempt
/// is taken for the second: the way back's checkpoints on the source, the saved checks and the
/// switch record are gone; a saved check of the first databases (put back by hand) keeps the
/// gate closed until these databases are checked; a second switch and rollback keep every
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_tried_again_on_a_rebuilt_target_trusts_nothing_saved_before() {
    let env = Env::new("switch_again").await;
    pgbench_init(&env).await;
    let path = pipeline(&env, None);
    let p = path.to_str().unwrap();
    let report = env
        .dir
        .join(".cutover-state")
        .join(format!("{}-verify.json", env.name));
    let mut earlier_check = None;
    for attempt in 1..=2 {
        let run = start_streaming(&env, &path).await;
        if attempt == 2 {
            // The check of the first attempt's databases, as a stale file would keep it.
            std::fs::write(&report, earlier_check.as_ref().unwrap()).unwrap();
            let (code, out, err) = cutover(&["status", p]);
            assert_eq!(code, 3, "{out}\n{err}");
            assert!(
                out.contains("FAIL  last verify: the saved check")
                    && out
                        .contains("describes other databases: sink target is another database now"),
                "{out}"
            );
        }
        verify_and_ready(p);
        earlier_check = Some(std::fs::read(&report).unwrap());
        let (code, out, err) = cutover(&["switch", p]);
        assert_eq!(code, 0, "attempt {attempt}, switch:\n{out}\n{err}");
        // The application writes to the new primary; the reverse stream carries it back.
        env.target()
            .await
            .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 1")
            .await
            .unwrap();
        wait_equal(&env).await;
        verify_and_ready(p);
        let (code, out, err) = cutover(&["rollback", p]);
        assert_eq!(code, 0, "attempt {attempt}, rollback:\n{out}\n{err}");
        env.on_source("UPDATE pgbench_tellers SET tbalance = tbalance + 1")
            .await;
        wait_equal(&env).await;
        stop(&env, run).await;
        if attempt == 2 {
            break;
        }
        let (code, out, err) = cutover(&["teardown", "--target-state", p]);
        assert_eq!(code, 0, "teardown:\n{out}\n{err}");
        let reverse: i64 = env
            .source()
            .await
            .query_one(
                "SELECT count(*) FROM cutover.checkpoints WHERE pipeline = $1",
                &[&format!("{}_reverse", env.name)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(reverse, 0, "the way back's checkpoints are left:\n{out}");
        assert!(!report.exists(), "the saved check is left:\n{out}");
        assert!(out.contains("switch record: removed"), "{out}");
        // The target built again under the same name.
        let admin = common::connect(&common::url(env.services.target_port, "postgres")).await;
        for sql in ["DROP DATABASE {0} WITH (FORCE)", "CREATE DATABASE {0}"] {
            admin
                .batch_execute(&sql.replace("{0}", &env.name))
                .await
                .unwrap();
        }
    }
    let (_, out, _) = cutover(&["status", p]);
    assert!(out.contains("epoch 2"), "{out}");
}

/// A step that fails after its own work leaves the record as it was, so the undo returns the
/// pipeline to the direction it had: here the way back's saved check cannot be removed when
/// the next epoch is about to be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_fails_leaves_the_record_as_it_was() {
    let env = Env::new("switch_step_fails").await;
    pgbench_init(&env).await;
    let path = pipeline(&env, None);
    let p = path.to_str().unwrap();
    let run = start_streaming(&env, &path).await;
    verify_and_ready(p);
    let blocker = env
        .dir
        .join(".cutover-state")
        .join(format!("{}-verify.json.reverse", env.name));
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let (code, out, err) = cutover(&["switch", p]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("failed and was undone") && err.contains("json.reverse"),
        "{err}"
    );
    let (_, out, _) = cutover(&["status", "--format", "json", p]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["epoch"].as_i64(), doc["switch_step"].as_str()),
        (Some(0), Some("idle")),
        "{out}"
    );
    assert_eq!(doc["direction"], serde_json::json!("forward"), "{out}");
    assert_writes_go_to(&env, true, "after the undone switch").await;
    std::fs::remove_dir_all(&blocker).unwrap();
    // The pipeline still streams the way it did.
    env.on_source("UPDATE pgbench_branches SET bbalance = bbalance + 3")
        .await;
    wait_equal(&env).await;
    stop(&env, run).await;
}

/// A session in a `REPEATABLE READ` transaction that has taken its snapshot.
async fn repeatable_read_begun(env: &Env) -> tokio_postgres::Client {
    let session = env.source().await;
    session
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t")
        .await
        .unwrap();
    session
}

/// The fence on a real database: every application session is refused (a replica-role one
/// and a `REPEATABLE READ` transaction begun before the fence too), cutover's sessions pass,
/// opening it takes no table lock (a long reader does not hold it up), and teardown's removal
/// keeps a closed fence and removes an open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_stops_every_application_session_and_opens_without_a_lock() {
    use cutover::switch::fence;
    use cutover_core::TableName;

    let env = Env::new("fence").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);")
        .await;
    let tables = [TableName::new("public", "t")];
    let admin = env.source().await;
    let write = "UPDATE t SET v = v + 1 WHERE id = 1";
    // A REPEATABLE READ transaction that took its snapshot before the fence.
    let early = repeatable_read_begun(&env).await;
    fence::install(&admin, "shop", &tables, 5000).await.unwrap();
    assert!(fence::is_fenced(&admin, "shop").await.unwrap());
    let refused = |r: Result<(), tokio_postgres::Error>| {
        r.err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()))
            == Some("25006".to_string())
    };
    assert!(
        refused(early.batch_execute(write).await),
        "the early transaction wrote"
    );
    let _ = early.batch_execute("ROLLBACK").await;
    for role in ["origin", "replica", "local"] {
        let app = env.source().await;
        app.batch_execute(&format!("SET session_replication_role = {role}"))
            .await
            .unwrap();
        assert!(
            refused(app.batch_execute(write).await),
            "a {role} session wrote"
        );
    }
    // Another pipeline's gate on the same database is its own.
    fence::open(&admin, "another").await.unwrap();
    assert!(fence::is_fenced(&admin, "shop").await.unwrap());
    // cutover's own sessions (SESSION_SETTINGS) pass.
    let own = cutover_postgres::PgEndpoint::parse(&env.source_url, "source")
        .unwrap()
        .connect()
        .await
        .unwrap();
    own.batch_execute(write).await.unwrap();
    // A closed fence is kept by teardown's removal.
    assert_eq!(
        fence::drop_if_open(&admin, "shop", 1000).await.unwrap(),
        None
    );

    // Opening while a long reader holds the table: no wait.
    let reader = env.source().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM t")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), fence::open(&admin, "shop"))
        .await
        .expect("opening the fence waited for a reader")
        .unwrap();
    assert!(!fence::is_fenced(&admin, "shop").await.unwrap());
    admin.batch_execute(write).await.unwrap();
    // Fenced again: the triggers are there already; the gate alone closes.
    reader.batch_execute("COMMIT").await.unwrap();
    let early = repeatable_read_begun(&env).await;
    fence::install(&admin, "shop", &tables, 5000).await.unwrap();
    assert!(
        refused(early.batch_execute(write).await),
        "a transaction whose snapshot saw the gate open wrote through it"
    );
    let app = env.source().await;
    assert!(refused(app.batch_execute(write).await));
    fence::open(&admin, "shop").await.unwrap();
    assert_eq!(
        fence::drop_if_open(&admin, "shop", 1000).await.unwrap(),
        Some(1)
    );
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'cutover_fence'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    app.batch_execute(write).await.unwrap();
}

/// A client that keeps a transaction open through PgBouncer holds `PAUSE` up: past
/// `pause_timeout_s` the pause is called off, the switch is undone (the old primary takes
/// writes again, its clients were never refused) and the error names the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_held_up_by_an_open_transaction_is_called_off_at_its_deadline() {
    let env = Env::new("pausedl").await;
    pgbench_init(&env).await;
    let bouncer = Bouncer::start(&env.dir, "app", env.services.source_port, &env.name);
    let path = pipeline(&env, Some(&bouncer));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[cutover.pgbouncer]\n",
        "[cutover.pgbouncer]\npause_timeout_s = 2\n",
    );
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let run = start_streaming(&env, &path).await;
    verify_and_ready(p);
    // An application session idle in a transaction, through PgBouncer.
    let idle = common::connect(&bouncer.url()).await;
    idle.batch_execute("BEGIN; SELECT count(*) FROM pgbench_branches")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = cutover(&["switch", p]);
    assert_ne!(code, 0, "the switch went through a held pause:\n{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the switch waited {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("PAUSE app did not finish within 2 s") && err.contains("called off"),
        "{err}"
    );
    // Undone: the old primary and PgBouncer take the application's writes again, the open
    // transaction included.
    idle.batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1; COMMIT")
        .await
        .unwrap();
    let app = common::connect(&bouncer.url()).await;
    app.batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1")
        .await
        .unwrap();
    assert_writes_go_to(&env, true, "after the called-off pause").await;
    let (_, out, _) = cutover(&["status", "--format", "json", p]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["epoch"], 0, "{out}");
    wait_equal(&env).await;
    stop(&env, run).await;
}

/// A trigger on the target that fires for cutover's own writes (`ENABLE ALWAYS`) writes a row
/// on a key the stream never changed: the final check cannot limit itself to the changed keys,
/// so it compares every row, finds the row and undoes the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_a_target_trigger_wrote_is_found_by_the_final_check() {
    undone_by_a_target_trigger(
        "switch_trig",
        "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO pgbench_history (tid, bid, aid, delta, hid)
                      VALUES (NEW.tid, NEW.bid, 0, 0, 900000000 + NEW.tid); RETURN NULL; END $$;
         CREATE TRIGGER note AFTER UPDATE ON pgbench_tellers
             FOR EACH ROW EXECUTE FUNCTION note();
         ALTER TABLE pgbench_tellers ENABLE ALWAYS TRIGGER note;",
        &["UPDATE pgbench_tellers SET tbalance = tbalance + 5 WHERE tid = 3"],
        "pgbench_history: 1 differing rows",
    )
    .await;
}
