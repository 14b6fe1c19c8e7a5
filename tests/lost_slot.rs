//! A slot the source invalidated while cutover was stopped (`max_slot_wal_keep_size`): the
//! clear refusal, `cutover recover`, then the targets equal to the source again. The source
//! here is the `spare` cluster of scripts/services.sh, whose setting this test may change
//! without touching any other test's slots.

use crate::common;

use std::time::{Duration, Instant};

use common::{cutover, services_var, url, Env, Services};

async fn spare_env(prefix: &str) -> Env {
    let target = Services::get().target_port;
    let spare: u16 = services_var("CUTOVER_SPARE_PORT").parse().unwrap();
    Env::on_clusters(
        prefix,
        &[&url(spare, "postgres"), &url(target, "postgres")],
        |db| url(spare, db),
        |db| url(target, db),
    )
    .await
}

async fn wal_status(env: &Env) -> Option<String> {
    env.source()
        .await
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("cutover_{}", env.name)],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_refused_clearly_and_recover_copies_the_targets_equal_again() {
    let env = spare_env("lostslot").await;
    let admin = common::connect(&url(
        services_var("CUTOVER_SPARE_PORT").parse().unwrap(),
        "postgres",
    ))
    .await;
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         CREATE TABLE other (id int PRIMARY KEY, n int); \
         INSERT INTO t SELECT g, 'copied ' || g FROM generate_series(1, 2000) g; \
         INSERT INTO other SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await;
    let path = env.pipeline("[\"t\", \"other\"]", "");
    let file = path.to_str().unwrap();
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("UPDATE t SET v = 'streamed' WHERE id <= 10;")
        .await;
    env.wait_equal(&["t", "other"], Duration::from_secs(60))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());

    // While cutover is stopped: a small bound on the slot's WAL, and more WAL than that.
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    env.on_source(
        "UPDATE t SET v = 'while stopped' WHERE id % 7 = 0; \
         DELETE FROM t WHERE id % 11 = 0; \
         INSERT INTO t SELECT g, 'new while stopped' FROM generate_series(3001, 3100) g;",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal_status(&env).await.as_deref() != Some("lost") {
        assert!(Instant::now() < deadline, "the slot was never invalidated");
        env.on_source(
            "CREATE TEMP TABLE filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await;
    }
    for sql in [
        "ALTER SYSTEM RESET max_slot_wal_keep_size",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }

    // check, run and status say what happened and the command that recovers.
    let (code, out, _) = cutover(&["check", file]);
    assert_ne!(code, 0, "check passed a lost slot:\n{out}");
    assert!(
        out.contains("wal_status = lost") && out.contains("cutover recover"),
        "{out}"
    );
    let mut refused = env.start(&path);
    assert!(!refused.wait_exit(Duration::from_secs(60)).success());
    let log = refused.log_text();
    assert!(
        log.contains("wal_status = lost") && log.contains("cutover recover"),
        "{log}"
    );
    let (_, out, _) = cutover(&["status", file]);
    assert!(
        out.contains("LOST"),
        "status does not show the lost slot:\n{out}"
    );

    // Recover, then run: every table copied again over the target's rows, and streaming on.
    let (code, out, err) = cutover(&["recover", file]);
    assert_eq!(code, 0, "recover:\n{out}\n{err}");
    assert!(
        out.contains("dropped") && out.contains("2 table(s) marked to be copied again"),
        "{out}"
    );
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "UPDATE t SET v = 'after recovery' WHERE id % 13 = 0; DELETE FROM other WHERE id = 5;",
    )
    .await;
    env.wait_equal(&["t", "other"], Duration::from_secs(60))
        .await;
    let (code, out, err) = cutover(&["verify", file]);
    assert_eq!(code, 0, "verify after recovery:\n{out}\n{err}");
    assert!(run.terminate().success(), "{}", run.log_text());
    // A healthy slot is not recovered (it would copy everything again for nothing).
    let (code, _, err) = cutover(&["recover", file]);
    assert_ne!(code, 0, "recover went through on a healthy slot");
    assert!(err.contains("is healthy"), "{err}");
    env.drop_slot().await;
}

/// A slot dropped by hand while the targets keep their progress: `cutover check` fails, as
/// `cutover run` would refuse to start, naming the sink and both ways out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_for_a_dropped_slot_while_a_target_holds_progress() {
    let env = Env::new("dropped_slot").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await;
    let path = env.pipeline("[\"public.t\"]", "");
    let file = path.to_str().unwrap();
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    let (code, out, _) = cutover(&["check", file]);
    assert_eq!(code, 0, "{out}");
    env.drop_slot().await;
    let (code, out, _) = cutover(&["check", file]);
    assert_ne!(code, 0, "check passed a dropped slot:\n{out}");
    assert!(
        out.contains("FAIL  sink target: holds progress from an earlier run")
            && out.contains("cutover recover")
            && out.contains("teardown --target-state"),
        "{out}"
    );
}
