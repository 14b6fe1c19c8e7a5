//! The switch of traffic to the target and back, on real clusters, with pgbench writing through
//! a real PgBouncer the whole time.

mod common;

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

/// pgbench through PgBouncer: 4 clients at a fixed rate for `seconds`.
fn pgbench_load(env: &Env, bouncer: &Bouncer, seconds: u32) -> Child {
    Command::new(pgbench_bin())
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            "100",
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

/// Whether an application write to pgbench_history is taken (rolled back either way).
async fn takes_writes(url: &str) -> bool {
    let client = common::connect(url).await;
    client.batch_execute("BEGIN").await.unwrap();
    let ok = client
        .batch_execute(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())",
        )
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

fn pipeline(env: &Env, bouncer: Option<&Bouncer>) -> std::path::PathBuf {
    let mut extra = String::from("[cutover]\nmax_lag_s = 30\nverify_max_age_s = 600\n");
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

async fn wait_equal(env: &Env) {
    env.wait_equal(&TABLES, Duration::from_secs(90)).await;
}

/// Asserts `cutover status` says READY (after a clean verify).
fn verify_and_ready(path: &str) {
    let (code, out, err) = cutover(&["verify", path]);
    assert_eq!(code, 0, "verify:\n{out}\n{err}");
    let (code, out, err) = cutover(&["status", path]);
    assert_eq!(code, 0, "status is not READY:\n{out}\n{err}");
    assert!(out.trim_end().ends_with("READY"), "{out}");
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
/// an exact copy through the reverse stream; after the rollback the same the other way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_and_rollback_under_pgbench_through_pgbouncer() {
    let env = Env::new("switch").await;
    pgbench_init(&env).await;
    let bouncer = Bouncer::start(&env.dir, "app", env.services.source_port, &env.name);
    let path = pipeline(&env, Some(&bouncer));
    let p = path.to_str().unwrap();
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(90))
        .await;
    wait_equal(&env).await;
    verify_and_ready(p);

    let load = pgbench_load(&env, &bouncer, 12);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out, err) = cutover(&["switch", p]);
    assert_eq!(code, 0, "switch:\n{out}\n{err}\n{}", run.log_text());
    assert!(out.contains("switch done"), "{out}");
    let history_at_switch: i64 = env
        .target()
        .await
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let done = pgbench_done(&env, load, 12);
    assert!(done > 600, "pgbench ran {done} transactions");
    assert!(
        !takes_writes(&env.source_url).await,
        "the old primary takes writes"
    );
    assert!(
        takes_writes(&env.target_url).await,
        "the new primary refuses writes"
    );
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

    // And back.
    verify_and_ready(p);
    let load = pgbench_load(&env, &bouncer, 10);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out, err) = cutover(&["rollback", p]);
    assert_eq!(code, 0, "rollback:\n{out}\n{err}\n{}", run.log_text());
    pgbench_done(&env, load, 10);
    assert!(
        takes_writes(&env.source_url).await,
        "the source refuses writes after the rollback"
    );
    assert!(
        !takes_writes(&env.target_url).await,
        "the target takes writes after the rollback"
    );
    env.on_source("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        .await;
    wait_equal(&env).await;
    let (code, out, _) = cutover(&["status", p]);
    assert!(out.contains("epoch 2"), "{out}");
    let _ = code;
    assert!(run.terminate().success(), "{}", run.log_text());
    drop_slots(&env).await;
}
