//! End-to-end replication tests against real PostgreSQL clusters (scripts/services.sh). Every
//! test compares the full contents of every table on both sides.

use crate::common;

use std::time::Duration;

use common::workload::{self, Workload};
use common::Env;

const TABLES: &str = "[\"public.*\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_concurrent_writes_then_streaming() {
    let env = Env::new("snapwrites").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 30_000).await;
    let load = Workload::start(env.source().await, 1);
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed = load.stop().await;
    assert!(
        committed > 50,
        "the workload committed only {committed} transactions"
    );
    env.wait_equal(workload::TABLES, Duration::from_secs(60))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_kind_replicates() {
    let env = Env::new("changes").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    src.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, blob bytea);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs VALUES (1, 'one', repeat('x', 2000000), NULL), (2, 'two', NULL, NULL);",
    )
    .await
    .unwrap();
    workload::prefill(&src, 100).await;
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    src.batch_execute(
        "INSERT INTO customers (id, name) VALUES (1001, 'nulls everywhere');
         UPDATE customers SET name = 'renamed', tags = NULL, profile = '{\"k\": [1, 2]}' WHERE id = 5;
         UPDATE customers SET id = 5005 WHERE id = 6;
         UPDATE items SET line = 9 WHERE order_id = 11 AND line = 1;
         DELETE FROM customers WHERE id BETWEEN 20 AND 30;
         BEGIN; INSERT INTO orders VALUES (7001, 1, 1.00, 'tx', now()); INSERT INTO items VALUES (7001, 1, 'a', 1); DELETE FROM customers WHERE id = 1; COMMIT;
         INSERT INTO docs VALUES (3, 'big', repeat('y', 3000000), decode(repeat('ab', 800000), 'hex'));
         UPDATE docs SET title = 'one, still big' WHERE id = 1;
         UPDATE docs SET id = 10 WHERE id = 1;
         UPDATE docs SET blob = decode(repeat('cd', 700000), 'hex') WHERE id = 2;
         TRUNCATE orders;
         INSERT INTO orders VALUES (1, 1, 1.00, 'after truncate', now());
         BEGIN; INSERT INTO customers (id, name) VALUES (1002, 'then deleted'); DELETE FROM customers WHERE id = 1002; COMMIT;
         BEGIN; UPDATE customers SET balance = 1 WHERE id = 40; UPDATE customers SET balance = 2 WHERE id = 40; UPDATE customers SET id = 4040 WHERE id = 40; COMMIT;",
    )
    .await
    .unwrap();
    let mut tables = workload::TABLES.to_vec();
    tables.push("docs");
    env.wait_equal(&tables, Duration::from_secs(60)).await;
    // The unchanged TOASTed body survived the title update and the key change.
    let tgt = env.target().await;
    let len: i32 = tgt
        .query_one("SELECT length(body) FROM docs WHERE id = 10", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 2_000_000);
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// New rows are written by COPY straight into the target table. When the target already has
/// one of their keys (here put there by hand; in practice a replay or a merged copy), the batch
/// is written again as upserts: the source's row wins and the batch's other rows land too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_row_whose_key_the_target_has_is_upserted_with_its_batch() {
    let env = Env::new("insert_conflict").await;
    env.on_source("CREATE TABLE items (id int PRIMARY KEY, v text, n int)")
        .await;
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.target()
        .await
        .batch_execute("INSERT INTO items VALUES (500, 'stale, put on the target by hand', -1)")
        .await
        .unwrap();
    env.on_source(
        "BEGIN;
         INSERT INTO items SELECT g, 'new ' || g, g FROM generate_series(1, 1000) g;
         UPDATE items SET n = n * 10 WHERE id % 100 = 0;
         COMMIT;",
    )
    .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    // Later batches take the fast path again.
    env.on_source(
        "INSERT INTO items SELECT g, 'later ' || g, g FROM generate_series(1001, 1100) g",
    )
    .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    let log = run.log_text();
    assert!(
        !log.contains("one by one"),
        "the conflict sent the batch down the row-by-row path instead of one retry:\n{log}"
    );
    assert!(run.terminate().success(), "{log}");
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_row_the_target_lacks_writes_the_row() {
    // Updates are written by a join update; a row the target does not have (removed there by
    // hand, or parked earlier) must still end up equal to the source's, in the same batch as
    // the updates that did find their rows.
    let env = Env::new("update_missing").await;
    env.on_source(
        "CREATE TABLE items (id int PRIMARY KEY, v text, n int);
         INSERT INTO items SELECT g, 'row ' || g, g FROM generate_series(1, 2000) g;",
    )
    .await;
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    env.target()
        .await
        .batch_execute("DELETE FROM items WHERE id IN (7, 700, 1999)")
        .await
        .unwrap();
    env.on_source("UPDATE items SET n = -n, v = v || ' updated' WHERE id % 7 = 0 OR id = 1999")
        .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    let log = run.log_text();
    assert!(run.terminate().success(), "{log}");
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_reader_never_sees_half_a_transaction() {
    let env = Env::new("atomic").await;
    let src = env.source().await;
    src.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, moves int NOT NULL);
         CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000, 0 FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let tgt = env.target().await;
    let writer = tokio::spawn(async move {
        for n in 0..400i64 {
            let (a, b) = (n % 50 + 1, (n * 7 + 3) % 50 + 1);
            if a == b {
                continue;
            }
            src.batch_execute(&format!(
                "BEGIN; UPDATE accounts SET balance = balance - {n}, moves = moves + 1 WHERE id = {a};
                 INSERT INTO ledger VALUES ({n}, {n});
                 UPDATE accounts SET balance = balance + {n}, moves = moves + 1 WHERE id = {b}; COMMIT;"
            ))
            .await
            .unwrap();
        }
    });
    let mut reads = 0;
    while !writer.is_finished() || reads < 20 {
        tgt.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        let row = tgt
            .query_one(
                "SELECT (SELECT sum(balance) FROM accounts)::int8, (SELECT sum(moves) FROM accounts)::int8,
                        (SELECT count(*) FROM ledger)::int8",
                &[],
            )
            .await
            .unwrap();
        tgt.batch_execute("COMMIT").await.unwrap();
        let (sum, moves, ledger): (Option<i64>, Option<i64>, i64) =
            (row.get(0), row.get(1), row.get(2));
        if let (Some(sum), Some(moves)) = (sum, moves) {
            assert_eq!(
                sum, 50_000,
                "a reader saw money in flight: half a transaction"
            );
            assert_eq!(
                moves,
                ledger * 2,
                "a reader saw one table's half of a transaction"
            );
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    env.wait_equal(&["accounts", "ledger"], Duration::from_secs(60))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_resume_without_gaps() {
    let env = Env::new("restart").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 2_000).await;
    let pipeline = env.pipeline(TABLES, "");
    for round in 0..3u64 {
        let mut run = env.start(&pipeline);
        run.wait_log("streaming changes", Duration::from_secs(60))
            .await;
        let load = Workload::start(env.source().await, 10 + round);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        load.stop().await;
        env.wait_equal(workload::TABLES, Duration::from_secs(60))
            .await;
        let status = run.terminate();
        assert!(
            status.success(),
            "SIGTERM must drain and exit 0: {status:?}\n{}",
            run.log_text()
        );
        // The drain confirmed the slot up to what the target holds.
        let tgt = env.target().await;
        let applied: String = tgt
            .query_one("SELECT end_lsn::text FROM cutover.checkpoints", &[])
            .await
            .unwrap()
            .get(0);
        let row = src
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, active FROM pg_replication_slots WHERE slot_name = $2",
                &[&applied, &format!("cutover_{}", env.name)],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "slot not confirmed up to the target's checkpoint"
        );
        assert!(!row.get::<_, bool>(1), "slot still active after exit");
        // Changes made while the pipeline is down arrive after the restart.
        let load = Workload::start(env.source().await, 20 + round);
        tokio::time::sleep(Duration::from_millis(500)).await;
        load.stop().await;
    }
    let mut run = env.start(&pipeline);
    env.wait_equal(workload::TABLES, Duration::from_secs(60))
        .await;
    assert!(run.terminate().success());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_sigkill_at_random_moments() {
    use rand::{Rng, SeedableRng};
    let env = Env::new("crash").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 150_000).await;
    // A write that never completes (item 19 of the defects issue, seen once here) is abandoned
    // and retried well within the final wait.
    let pipeline = env.pipeline(
        TABLES,
        "[snapshot]\nworkers = 1\n[limits]\nwrite_timeout_s = 40\n",
    );
    let load = Workload::start(env.source().await, 99);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut in_snapshot, mut in_stream) = (0, 0);
    for kill in 0..22 {
        let mut run = env.start(&pipeline);
        if kill < 6 {
            // During the snapshot: after copying started, before it can finish.
            run.wait_log("copying tables", Duration::from_secs(60))
                .await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        } else {
            run.wait_log("streaming changes", Duration::from_secs(120))
                .await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        }
        let log = run.log_text();
        if log.contains("streaming changes") {
            in_stream += 1;
        } else if log.contains("copying tables") {
            in_snapshot += 1;
        }
        run.kill();
    }
    assert!(
        in_snapshot >= 3,
        "only {in_snapshot} kills landed in the snapshot"
    );
    assert!(
        in_stream >= 10,
        "only {in_stream} kills landed while streaming"
    );
    let committed = load.stop().await;
    assert!(committed > 100, "workload too small: {committed}");
    let mut run = env.start_with_env(&pipeline, &[("CUTOVER_LOG", "info,cutover_postgres=debug")]);
    // This test failed once in CI (the final run made nothing durable for 2 minutes) and has
    // not been reproduced: if the wait runs long, print what the target's sessions wait on.
    let watchdog = tokio::spawn(dump_target_sessions_after(
        env.target_url.clone(),
        run.log.clone(),
        Duration::from_secs(100),
    ));
    env.wait_equal(workload::TABLES, Duration::from_secs(120))
        .await;
    watchdog.abort();
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// After `wait`, prints the target database's sessions, the locks not granted, and the end of
/// the run's log, for a test that is about to time out.
async fn dump_target_sessions_after(url: String, log: std::path::PathBuf, wait: Duration) {
    tokio::time::sleep(wait).await;
    let client = common::connect(&url).await;
    for sql in [
        "SELECT pid, application_name, state, wait_event_type, wait_event, now() - xact_start AS in_txn, left(query, 160) FROM pg_stat_activity WHERE datname = current_database()",
        "SELECT locktype, relation::regclass::text, mode, granted, pid FROM pg_locks WHERE NOT granted",
    ] {
        eprintln!("-- {sql}");
        if let Ok(messages) = client.simple_query(sql).await {
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    let cols: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("NULL")).collect();
                    eprintln!("   {}", cols.join(" | "));
                }
            }
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    eprintln!("-- the last lines of the run's log:");
    for line in tail.iter().rev() {
        eprintln!("   {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sink_keeps_memory_bounded_and_the_connection_alive() {
    let env = Env::new("stall").await;
    let src = env.source().await;
    src.batch_execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, payload text);
         INSERT INTO events SELECT g, repeat('p', 500) FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let pipeline = env.pipeline(
        TABLES,
        "[limits]\nqueue_bytes = \"8 MiB\"\nbatch_bytes = \"2 MiB\"\nqueue_events = 5000\n",
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = walsender_pid(&src, &env.name)
        .await
        .expect("a walsender serves the pipeline");
    let baseline = run.rss_kib();

    // Hold a lock on the target table for longer than the source's wal_sender_timeout (5 s).
    let tgt = env.target().await;
    tgt.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // About 150 MB of changes pile up behind the lock.
    for chunk in 0..30 {
        let from = 2000 + chunk * 10_000;
        src.batch_execute(&format!(
            "INSERT INTO events SELECT g, repeat(md5(g::text), 16) FROM generate_series({from}, {}) g",
            from + 9_999
        ))
        .await
        .unwrap();
    }
    let peak = peak_rss_kib(&run).await;
    tgt.batch_execute("COMMIT").await.unwrap();
    env.wait_equal(&["events"], Duration::from_secs(120)).await;
    let after = walsender_pid(&src, &env.name).await;
    assert_eq!(
        after,
        Some(before),
        "the replication connection was dropped during the stall"
    );
    assert!(
        !run.log_text().contains("pipeline interrupted"),
        "the pipeline restarted during the stall:\n{}",
        run.log_text()
    );
    // 8 MiB queue bound: memory must not follow the 150 MB backlog.
    assert!(
        peak < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB while the sink was stalled"
    );
    assert!(run.terminate().success());
    env.drop_slot().await;
}

/// Rows of 4 MB each behind a stalled sink: what is read ahead of the decoder is bounded in
/// bytes (`limits.stream_buffer_bytes`), not by a count of messages that may each be a wide
/// row, so memory stays far below the 240 MB backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_behind_a_stalled_sink_keep_memory_bounded() {
    let env = Env::new("widerows").await;
    let src = env.source().await;
    src.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let pipeline = env.pipeline(
        TABLES,
        "[limits]\nqueue_bytes = \"8 MiB\"\nbatch_bytes = \"2 MiB\"\nstream_buffer_bytes = \"8 MiB\"\n",
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = run.rss_kib();
    let tgt = env.target().await;
    tgt.batch_execute("BEGIN; LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for id in 0..60 {
        // 4 MB that TOAST cannot shrink much, sent whole by the replication stream.
        src.execute(
            "INSERT INTO blobs SELECT $1, string_agg(md5(($1 * 1000000 + g)::text), '') FROM generate_series(1, 131072) g",
            &[&id],
        )
        .await
        .unwrap();
    }
    let peak = peak_rss_kib(&run).await;
    eprintln!("wide rows behind a stalled sink: RSS {baseline} KiB before, {peak} KiB at the peak");
    tgt.batch_execute("COMMIT").await.unwrap();
    env.wait_equal(&["blobs"], Duration::from_secs(180)).await;
    assert!(
        peak < baseline + 128 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB behind a 240 MB backlog of wide rows"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The pipeline's highest RSS over ten seconds (sampled every 250 ms), in KiB.
async fn peak_rss_kib(run: &common::Pipeline) -> u64 {
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(run.rss_kib());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    peak
}

async fn walsender_pid(src: &tokio_postgres::Client, pipeline: &str) -> Option<i32> {
    src.query_one(
        "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
        &[&format!("cutover-{pipeline}")],
    )
    .await
    .map(|r| r.get::<_, i32>(0))
    .ok()
}

/// An operator's `pg_terminate_backend` on the walsender (or a failover tool doing the same)
/// interrupts the stream; it is not the end of the run. cutover reconnects from the last
/// durable position, three times over, under writes, and the target ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_walsender_is_retried_and_nothing_is_lost() {
    let env = Env::new("walsender").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 2_000).await;
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let load = Workload::start(env.source().await, 7);
    let slot = format!("cutover_{}", env.name);
    for round in 0..3 {
        // The walsender of this run's slot, once it streams again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let terminated: i64 = src
                .query_one(
                    "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            if terminated == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the slot never became active again:\n{}",
                run.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let committed = load.stop().await;
    assert!(committed > 20, "the workload committed only {committed}");
    env.wait_equal(workload::TABLES, Duration::from_secs(90))
        .await;
    let log = run.log_text();
    assert!(
        log.matches("pipeline interrupted; resuming").count() >= 3,
        "{log}"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A target that stays unreachable does not keep the run retrying forever: after
/// `limits.max_retries` retries in a row it stops with the last error and the count, and a run
/// started once the target is back catches up with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_their_budget_with_the_last_error() {
    let env = Env::new("budget").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let proxy = common::proxy::Proxy::start(env.services.target_port).await;
    let path = env.pipeline("[\"t\"]", "[limits]\nmax_retries = 2");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&env.target_url, &common::url(proxy.port, &env.name));
    std::fs::write(&path, text).unwrap();
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(30)).await;
    proxy.cut();
    env.on_source("INSERT INTO t VALUES (2, 'while the target is away');")
        .await;
    let status = run.wait_exit(Duration::from_secs(90));
    assert!(!status.success(), "{}", run.log_text());
    let log = run.log_text();
    assert!(log.contains("gave up after 2 retries"), "{log}");
    assert_eq!(
        log.matches("pipeline interrupted; resuming").count(),
        2,
        "{log}"
    );
    proxy.restore();
    let mut run = env.start(&path);
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
