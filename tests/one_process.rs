//! One process per pipeline: a second `cutover run` is refused in every phase and names the one
//! that runs; the commands that change the pipeline wait their turn (src/lock.rs).

use crate::common;

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

/// A run started again at once after its predecessor was killed may find the dead process's
/// session still holding the lock: it waits for that session instead of refusing, and it still
/// refuses a holder that lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_waits_out_the_lock_of_a_process_that_ended() {
    let env = Env::new("onedead").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let path = env.pipeline("[\"t\"]", "");
    // A session labelled as a `cutover run` of this host whose process has ended.
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = ended.id();
    ended.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let holder = env.source().await;
    holder
        .batch_execute(&format!(
            "SET application_name = 'cutover run on {} pid {dead_pid}'; \
             SELECT pg_advisory_lock({}, hashtext('cutover_{}'))",
            host.trim(),
            ::cutover::lock::RUN_LOCK,
            env.name
        ))
        .await
        .unwrap();
    let mut run = env.start(&path);
    run.wait_log(
        "has ended; waiting for its session to close",
        Duration::from_secs(30),
    )
    .await;
    // The session goes (as a killed process's does, a little late): the run takes over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        run.try_status().unwrap().is_none(),
        "the run gave up while the dead holder's session was closing:\n{}",
        run.log_text()
    );
    drop(holder);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("INSERT INTO t VALUES (2, 'b')").await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
}

/// The pipeline's lock session outlives a database's `idle_session_timeout` (PostgreSQL 14+),
/// and a multi-host source URL streams from the host that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_outlives_idle_session_timeout_and_a_multi_host_url_streams() {
    let env = Env::new("oneidle").await;
    env.on_source(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'); \
         ALTER DATABASE {} SET idle_session_timeout = '1s';",
        env.name
    ))
    .await;
    let path = env.pipeline("[\"t\"]", "");
    // The first host refuses connections (nothing listens on port 1); the second is the source.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &env.source_url,
        &env.source_url.replace(
            &format!("127.0.0.1:{}", env.services.source_port),
            &format!("127.0.0.1:1,127.0.0.1:{}", env.services.source_port),
        ),
    );
    assert!(text.contains("127.0.0.1:1,"), "{text}");
    std::fs::write(&path, text).unwrap();
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    // Several timeouts later the lock is still held by the run, and a second run is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut second = env.start(&path);
    let status = second.wait_exit(Duration::from_secs(40));
    assert!(
        !status.success() && second.log_text().contains(&format!("pid {}", run.pid())),
        "a second run was let in, or not told who runs:\n{}",
        second.log_text()
    );
    assert!(
        !run.log_text()
            .contains("the session holding the pipeline's lock closed"),
        "idle_session_timeout closed the lock's session:\n{}",
        run.log_text()
    );
    env.on_source("INSERT INTO t VALUES (2, 'b')").await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
}
