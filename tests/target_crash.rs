//! The PostgreSQL sink commits without waiting for the target's WAL flush, as native logical
//! replication does. A target crash loses the commits whose WAL was not written yet; the slot
//! must never have been confirmed past them, or their changes would be gone for good. A target
//! that does not show the sink's role its WAL positions gets commits that wait for the flush.

use crate::common;

use std::time::Duration;

use common::workload::{self, Workload};
use common::{connect, services_var, url, Env};

const TABLES: &str = "[\"public.*\"]";

/// Crashes the spare cluster (immediate stop: nothing more is written) and starts it again.
fn crash_spare() {
    assert!(
        common::crash_cluster("spare"),
        "scripts/services.sh crash spare failed"
    );
}

/// A login role of the target's own (not a superuser) that may create in the test's database
/// and its `public` schema; the URL that connects as it.
async fn ordinary_role(env: &Env) -> String {
    let role = format!("r_{}", env.name);
    let port = env.services.target_port;
    connect(&url(port, "postgres"))
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {db} TO {role}",
            db = env.name
        ))
        .await
        .unwrap();
    env.target()
        .await
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {role}"))
        .await
        .unwrap();
    format!("postgres://{role}@127.0.0.1:{port}/{}", env.name)
}

/// The pipeline file of every table, its target reached as `target_url`.
fn pipeline_as(env: &mut Env, target_url: &str) -> std::path::PathBuf {
    let admin_url = std::mem::replace(&mut env.target_url, target_url.to_string());
    let path = env.pipeline(TABLES, "");
    env.target_url = admin_url;
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_crashes_under_load_lose_nothing() {
    let mut env = Env::alone("target_crash").await;
    // A cluster of its own, so crashing it takes no other test's target away.
    let spare: u16 = services_var("CUTOVER_SPARE_PORT").parse().unwrap();
    env.target_on(spare).await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 3_000).await;
    let mut run = env.start(&env.pipeline(TABLES, ""));
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let load = Workload::start_paced(env.source().await, 11, Duration::from_millis(1));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        crash_spare();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let committed = load.stop().await;
    assert!(
        committed > 100,
        "the workload committed only {committed} transactions"
    );
    env.wait_equal(workload::TABLES, Duration::from_secs(120))
        .await;
    let log = run.log_text();
    assert!(
        log.contains("pipeline interrupted"),
        "the pipeline never saw the target go away:\n{log}"
    );
    assert!(run.terminate().success(), "{log}");
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_role_without_wal_positions_gets_synchronous_commits() {
    let mut env = Env::new("sync_commit").await;
    // An ordinary role, in a database where it may not read the WAL flush position (as on some
    // managed servers).
    let role_url = ordinary_role(&env).await;
    env.target()
        .await
        .batch_execute("REVOKE EXECUTE ON FUNCTION pg_current_wal_flush_lsn() FROM PUBLIC")
        .await
        .unwrap();
    env.on_source(
        "CREATE TABLE items (id int PRIMARY KEY, v text, n int);
         INSERT INTO items SELECT g, 'row ' || g, g FROM generate_series(1, 1000) g;",
    )
    .await;
    let path = pipeline_as(&mut env, &role_url);
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "UPDATE items SET n = -n WHERE id % 3 = 0; DELETE FROM items WHERE id % 7 = 0;
         INSERT INTO items SELECT g, 'new ' || g, g FROM generate_series(1001, 1500) g;",
    )
    .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    let log = run.log_text();
    assert!(
        log.contains("each commit waits for the target's flush"),
        "the sink did not fall back to synchronous commits:\n{log}"
    );
    assert!(
        !log.contains("pipeline interrupted"),
        "the sink failed on the way:\n{log}"
    );
    assert!(run.terminate().success(), "{log}");
    env.drop_slot().await;
}

/// A write that waits forever (here: behind a lock an application holds on the target) is
/// named with what it waits on, abandoned at `limits.write_timeout_s` with its session ended,
/// and retried; once the lock goes, every change arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stuck_behind_a_lock_is_named_abandoned_and_retried() {
    let env = Env::new("stuck_write").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let path = env.pipeline("[\"t\"]", "[limits]\nwrite_timeout_s = 3\n");
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(30)).await;
    // An application's transaction on the target holds the table.
    let holder = env.target().await;
    holder
        .batch_execute(
            "SET application_name = 'app-report'; BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    env.on_source("INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'a2' WHERE id = 1")
        .await;
    run.wait_log("limits.write_timeout_s", Duration::from_secs(30))
        .await;
    let log = run.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("limits.write_timeout_s"))
        .unwrap();
    assert!(
        line.contains("it waits for") && line.contains("Lock on t"),
        "the stuck write does not name the lock it waits for:\n{line}"
    );
    assert!(
        line.contains("blocked by pid") && line.contains("app-report"),
        "the stuck write does not name who blocks it:\n{line}"
    );
    assert!(line.contains("the session was ended"), "{line}");
    // The retries queue behind the lock again; when it goes, everything arrives.
    holder.batch_execute("ROLLBACK").await.unwrap();
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A target role that may not take `session_replication_role = replica` (an ordinary role, as
/// on some managed services): the target's foreign keys fire for every replicated row. `check`
/// names them (a warning: they can be ordered); the snapshot copies referenced tables first
/// (copied in parallel, or in name order, `order_lines` would come before `orders` and fail);
/// a transaction that writes parents and children together, and one that deletes them
/// together, must still apply whole, with nothing parked, whatever order the batch holds the
/// tables in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_that_fire_on_the_target_see_parents_first_and_children_deleted_first() {
    let mut env = Env::new("fk_origin").await;
    let role_url = ordinary_role(&env).await;
    let schema = "CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE TABLE items (id int PRIMARY KEY, label text);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, note text);
         CREATE TABLE order_lines (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders,
                                   item_id int NOT NULL REFERENCES items, qty int);";
    env.on_source(schema).await;
    // The target's schema, with its foreign keys, made by the role that applies.
    connect(&role_url)
        .await
        .batch_execute(schema)
        .await
        .unwrap();
    // Rows the snapshot copies: children of every depth, the child table far smaller than its
    // parent (copied side by side, it would commit first).
    env.on_source(
        "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1001, 3000) g;
         INSERT INTO items SELECT g, 'i' || g FROM generate_series(1001, 1100) g;
         INSERT INTO orders SELECT g, 1001 + g % 2000, 'o' || g FROM generate_series(1001, 61000) g;
         INSERT INTO order_lines SELECT g, 1001 + g % 60000, 1001 + g % 100, g FROM generate_series(1001, 1300) g;",
    )
    .await;
    let path = pipeline_as(&mut env, &role_url);
    let (_, out, err) = common::cutover(&["check", path.to_str().unwrap()]);
    assert!(
        out.contains("warn  sink target: the role may not set session_replication_role")
            && out.contains("order_lines: foreign key order_lines_order_id_fkey to orders")
            && !out.contains("in a cycle"),
        "check does not name the foreign keys:\n{out}\n{err}"
    );
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(
        &["customers", "items", "orders", "order_lines"],
        Duration::from_secs(60),
    )
    .await;
    // Parents and children in one transaction each way.
    env.on_source(
        "BEGIN;
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 40) g;
         INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 10) g;
         INSERT INTO orders SELECT g, 1 + g % 40, 'o' || g FROM generate_series(1, 80) g;
         INSERT INTO order_lines SELECT g, 1 + g % 80, 1 + g % 10, g FROM generate_series(1, 200) g;
         COMMIT;",
    )
    .await;
    env.wait_equal(
        &["customers", "items", "orders", "order_lines"],
        Duration::from_secs(60),
    )
    .await;
    env.on_source(
        "BEGIN;
         INSERT INTO customers VALUES (41, 'new');
         UPDATE orders SET customer_id = 41 WHERE id <= 5;
         DELETE FROM order_lines WHERE order_id > 60;
         DELETE FROM orders WHERE id > 60;
         DELETE FROM customers WHERE id NOT IN (SELECT customer_id FROM orders);
         COMMIT;",
    )
    .await;
    env.wait_equal(
        &["customers", "items", "orders", "order_lines"],
        Duration::from_secs(60),
    )
    .await;
    let (code, out, err) = common::cutover(&["dlq", "list", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sink target: 0 parked change(s)"),
        "changes were parked:\n{out}"
    );
    let log = run.log_text();
    assert!(
        log.contains("may not set session_replication_role"),
        "the role applied as a replica after all:\n{log}"
    );
    assert!(run.terminate().success(), "{log}");
    env.drop_slot().await;
}
