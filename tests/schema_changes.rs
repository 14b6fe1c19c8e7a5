//! Schema changes while streaming: added columns (with and without a default), a dropped
//! column, widened types and a renamed column reach the PostgreSQL target in stream order, with
//! writes before and after each; a change made while cutover is stopped is caught up at start;
//! `schema_changes = "stop"` stops the pipeline with a message instead.

use crate::common;

use std::time::Duration;

use common::{cutover, Env};

/// Table `t` has the same columns, in the same order and of the same types, on both sides.
async fn assert_same_columns(env: &Env) {
    let columns = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                     FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped";
    let mut seen = Vec::new();
    for client in [env.source().await, env.target().await] {
        let row = client.query_one(columns, &[]).await.unwrap();
        seen.push(row.get::<_, String>(0));
    }
    assert_eq!(seen[1], seen[0], "target columns, then the source's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_changes_are_applied_in_stream_order() {
    let env = Env::new("ddl_apply").await;
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b text, c varchar(10));
         INSERT INTO t SELECT g, g, 'b' || g, 'c' || g FROM generate_series(1, 200) g;",
    )
    .await;
    let path = env.pipeline("[\"public.t\"]", "");
    let mut run = env.start(&path);
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    let steps = [
        // Added without a default: old rows hold NULL.
        "ALTER TABLE t ADD COLUMN d int;
         INSERT INTO t VALUES (201, 201, 'b', 'c', 42); UPDATE t SET d = id WHERE id <= 10;",
        // Added with a default: the source's existing rows read it without any WAL for them.
        "ALTER TABLE t ADD COLUMN e text NOT NULL DEFAULT 'dflt';
         INSERT INTO t (id, a, e) VALUES (202, 1, 'set'); UPDATE t SET a = a + 1 WHERE id = 5;",
        // A transaction that changes the layout between two writes to the table.
        "BEGIN; UPDATE t SET b = 'before drop' WHERE id = 6; ALTER TABLE t DROP COLUMN b;
         UPDATE t SET a = -6 WHERE id = 6; COMMIT;",
        "ALTER TABLE t ALTER COLUMN a TYPE bigint; UPDATE t SET a = 5000000000 WHERE id = 7;",
        "ALTER TABLE t ALTER COLUMN c TYPE text; UPDATE t SET c = repeat('long', 10) WHERE id = 8;",
        "ALTER TABLE t RENAME COLUMN d TO d2; UPDATE t SET d2 = -1 WHERE id = 9; DELETE FROM t WHERE id = 10;",
    ];
    for step in steps {
        env.on_source(step).await;
        env.wait_equal(&["t"], Duration::from_secs(60)).await;
    }
    assert_same_columns(&env).await;
    assert!(run.terminate().success(), "{}", run.log_text());

    // Changes made while cutover is stopped, before any write announces them in the stream:
    // an added column and a renamed one.
    env.on_source("ALTER TABLE t ADD COLUMN f numeric(8,2) DEFAULT 1.50; ALTER TABLE t RENAME COLUMN e TO e2;")
        .await;
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "INSERT INTO t (id, a, f) VALUES (300, 3, 9.99); UPDATE t SET f = 2 WHERE id = 1;",
    )
    .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert_same_columns(&env).await;
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_stop_the_pipeline_when_asked() {
    let env = Env::new("ddl_stop").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, a int); INSERT INTO t VALUES (1, 1);")
        .await;
    let path = env.pipeline_with("[\"public.t\"]", "", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tables = [\"public.t\"]",
        "tables = [\"public.t\"]\nschema_changes = \"stop\"",
    );
    std::fs::write(&path, text).unwrap();
    let mut run = env.start(&path);
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    env.on_source("ALTER TABLE t ADD COLUMN b int; INSERT INTO t VALUES (2, 2, 2);")
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "cutover kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = run.log_text();
    assert!(
        log.contains("the columns of public.t on the source changed and this pipeline does not apply schema changes"),
        "{log}"
    );
    env.drop_slot().await;
}
