//! One process per pipeline: a second `cutover run` is refused in every phase and names the one
//! that runs; the commands that change the pipeline wait their turn (src/lock.rs).

mod common;

use std::time::{Duration, Instant};

use common::{cutover, Env};

/// Waits until a session holds the lock `class` of this pipeline; returns its pid.
async fn wait_lock_held(env: &Env, class: i32, timeout: Duration) {
    let src = env.source().await;
    let deadline = Instant::now() + timeout;
    loop {
        let held: bool = src
            .query_one(
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = $1::int4::oid AND objid = hashtext($2)::oid AND objsubid = 2",
                &[&class, &format!("cutover_{}", env.name)],
            )
            .await
            .unwrap()
            .get(0);
        if held {
            return;
        }
        assert!(Instant::now() < deadline, "no process took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_is_refused_in_every_phase_and_the_first_goes_on() {
    let env = Env::new("onerun").await;
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g;",
    )
    .await;
    let path = env.pipeline("[\"t\"]", "");
    let file = path.to_str().unwrap();
    let mut first = env.start(&path);
    wait_lock_held(&env, ::cutover::lock::RUN_LOCK, Duration::from_secs(30)).await;

    // While the first one starts or copies.
    let mut second = env.start(&path);
    let status = second.wait_exit(Duration::from_secs(30));
    let refused = second.log_text();
    assert!(!status.success(), "a second run was let in:\n{refused}");
    assert!(
        refused.contains(&format!("pid {}", first.pid()))
            && refused.contains("cutover run on")
            && refused.contains("since "),
        "the refusal does not name the running process:\n{refused}"
    );
    let copying = first.log_text();

    // While it streams, for `run` and for the commands that must not meet it.
    first
        .wait_log("streaming changes", Duration::from_secs(120))
        .await;
    let mut third = env.start(&path);
    assert!(!third.wait_exit(Duration::from_secs(30)).success());
    let (code, _, err) = cutover(&["teardown", file]);
    assert_ne!(code, 0, "teardown ran beside a running pipeline");
    assert!(
        err.contains(&format!("pid {}", first.pid())) && err.contains("stop `cutover run`"),
        "{err}"
    );
    let (code, _, err) = cutover(&["forget", "--sink", "target", file]);
    assert_ne!(code, 0, "forget ran beside a running pipeline");
    assert!(err.contains("stop `cutover run`"), "{err}");

    // The first one never noticed.
    env.on_source("UPDATE t SET v = 'after' WHERE id % 1000 = 0; INSERT INTO t VALUES (0, 'new');")
        .await;
    env.wait_equal(&["t"], Duration::from_secs(120)).await;
    assert!(
        !copying.contains("\"level\":\"ERROR\"")
            && !first.log_text().contains("\"level\":\"ERROR\""),
        "the running pipeline logged an error:\n{}",
        first.log_text()
    );
    assert!(first.terminate().success(), "{}", first.log_text());

    // Stopped: the lock went with it.
    let (code, out, err) = cutover(&["teardown", file]);
    assert_eq!(code, 0, "teardown after the run stopped:\n{out}\n{err}");
}

/// The commands that change a pipeline beside a running one take turns: while one holds the
/// change lock, the next is refused and told who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_commands_take_turns() {
    let env = Env::new("oneop").await;
    env.on_source(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a');",
    )
    .await;
    let path = env.pipeline("[\"t\"]", "");
    let file = path.to_str().unwrap();
    let holder = env.source().await;
    holder
        .batch_execute(&format!(
            "SET application_name = 'an operator in psql'; \
             SELECT pg_advisory_lock({}, hashtext('cutover_{}'))",
            ::cutover::lock::CHANGE_LOCK,
            env.name
        ))
        .await
        .unwrap();
    for args in [
        vec!["sync-sequences", file],
        vec!["dlq", "replay", file],
        vec!["verify", file, "--repair"],
        vec!["switch", file],
        vec!["teardown", file],
    ] {
        let (code, out, err) = cutover(&args);
        assert_ne!(
            code, 0,
            "{args:?} ran while another command held the pipeline:\n{out}"
        );
        assert!(
            err.contains("an operator in psql")
                && err.contains("is being changed by another command"),
            "{args:?} does not name the holder:\n{err}"
        );
    }
    // Reading commands are never held back.
    let (code, out, err) = cutover(&["dlq", "list", file]);
    assert_eq!(code, 0, "dlq list:\n{out}\n{err}");
    drop(holder);
    env.target()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = cutover(&["sync-sequences", file, "--margin", "10"]);
    assert_eq!(
        code, 0,
        "sync-sequences after the lock was freed:\n{out}\n{err}"
    );
}
