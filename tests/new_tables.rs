//! A table created on the source while cutover streams, matching `source.tables`, is found,
//! added to the publication, copied under a snapshot of its own and streamed from then on;
//! the other tables go on.

mod common;

use std::time::Duration;

use common::{cutover, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_while_streaming_is_copied_and_streamed() {
    let env = Env::new("new_tables").await;
    env.on_source(
        "CREATE TABLE first (id int PRIMARY KEY, v text);
         INSERT INTO first SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let path = env.pipeline("[\"public.*\"]", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tables = [\"public.*\"]",
        "tables = [\"public.*\"]\ndiscover_interval_s = 1",
    );
    std::fs::write(&path, text).unwrap();
    let mut run = env.start(&path);
    env.wait_equal(&["first"], Duration::from_secs(60)).await;
    env.on_source(
        "CREATE TABLE second (id int PRIMARY KEY, n numeric);
         INSERT INTO second SELECT g, g * 1.5 FROM generate_series(1, 500) g;
         INSERT INTO first VALUES (101, 'during');",
    )
    .await;
    run.wait_log("new tables match source.tables", Duration::from_secs(30))
        .await;
    env.on_source(
        "INSERT INTO second VALUES (501, 0.5); UPDATE second SET n = -1 WHERE id = 7;
         DELETE FROM second WHERE id = 8; INSERT INTO first VALUES (102, 'after');",
    )
    .await;
    env.wait_equal(&["first", "second"], Duration::from_secs(90))
        .await;
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("public.second: source 500 rows, target 500 rows"),
        "{out}"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
