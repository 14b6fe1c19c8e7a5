//! A table created on the source while cutover streams, matching `source.tables`, is found,
//! added to the publication and copied beside the stream under a snapshot of its own, while
//! the other tables keep streaming; its changes made during the copy wait in each sink and
//! follow the copy. A crash during that copy leaves nothing half-done.

use crate::common;

use std::time::Duration;

use common::targets::{self, KafkaReader, NatsReader};
use common::{Env, Pipeline};

const FIRST: &str = "CREATE TABLE first (id int PRIMARY KEY, v text)";
const SECOND: &str = "CREATE TABLE second (id int PRIMARY KEY, n numeric, note text)";
/// Rows of the joining table; the copy reads them at `ROWS_PER_S`, so it lasts a few seconds.
const SECOND_ROWS: u32 = 30_000;
const ROWS_PER_S: u32 = 6_000;

/// A pipeline over `public.*` looking for new tables every second, with the snapshot's reads
/// rate-limited so a joining table's copy is still running while the test writes.
fn pipeline(env: &Env, more_sinks: &str) -> std::path::PathBuf {
    let path = env.pipeline_with("[\"public.*\"]", "", more_sinks);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tables = [\"public.*\"]",
        "tables = [\"public.*\"]\ndiscover_interval_s = 1",
    );
    std::fs::write(
        &path,
        format!("{text}\n[snapshot]\nrows_per_s = {ROWS_PER_S}\n"),
    )
    .unwrap();
    path
}

async fn create_second(env: &Env) {
    env.on_source(&format!(
        "{SECOND};
         INSERT INTO second SELECT g, g * 1.5, 'loaded' FROM generate_series(1, {SECOND_ROWS}) g;"
    ))
    .await;
}

/// A test database whose table `first` (100 rows) streams before `second` appears.
async fn env_with_first(name: &str) -> Env {
    let env = Env::new(name).await;
    env.on_source(&format!(
        "{FIRST}; INSERT INTO first SELECT g, 'v' || g FROM generate_series(1, 100) g;"
    ))
    .await;
    env
}

/// Starts the pipeline (with `vars` in its environment), waits for `first` to stream, creates
/// `second`, waits for its copy to begin and changes it meanwhile.
async fn start_and_join(env: &Env, path: &std::path::PathBuf, vars: &[(&str, &str)]) -> Pipeline {
    let run = env.start_with_env(path, vars);
    env.wait_equal(&["first"], Duration::from_secs(60)).await;
    create_second(env).await;
    run.wait_log("copying it beside the stream", Duration::from_secs(30))
        .await;
    env.on_source(SECOND_CHANGES).await;
    run
}

/// Changes to the joining table while its copy runs: updates of rows copied early and late,
/// deletes, inserts, and a key change.
const SECOND_CHANGES: &str = "UPDATE second SET n = -1, note = 'during copy' WHERE id % 1000 = 7;
     DELETE FROM second WHERE id BETWEEN 100 AND 150 OR id > 29990;
     INSERT INTO second VALUES (40001, 0.5, 'inserted during copy');
     UPDATE second SET id = 40002 WHERE id = 20;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_while_streaming_is_copied_beside_the_stream() {
    let env = env_with_first("new_tables").await;
    // Every kind of sink takes the joining table: each prepares it while streaming.
    let path = pipeline(&env, &targets::message_sinks(&env, ""));
    let run = start_and_join(&env, &path, &[]).await;
    // The other table streams while the new one is copied.
    env.on_source(
        "INSERT INTO first VALUES (101, 'during the copy'); UPDATE first SET v = 'x' WHERE id = 1;",
    )
    .await;
    env.wait_equal(&["first"], Duration::from_secs(20)).await;
    assert!(
        !run.log_text().contains("copied into every sink"),
        "the copy ended before the other table's change arrived, so this run proves nothing \
         about streaming beside it (copy too fast?):\n{}",
        run.log_text()
    );
    run.wait_log("copied into every sink", Duration::from_secs(90))
        .await;
    env.on_source(
        "UPDATE second SET note = 'after copy' WHERE id BETWEEN 1 AND 5;
         INSERT INTO first VALUES (102, 'after');",
    )
    .await;
    env.wait_equal(&["first", "second"], Duration::from_secs(60))
        .await;
    let log = run.log_text();
    assert!(
        !log.contains("resuming from the last durable position"),
        "the run restarted instead of copying beside the stream:\n{log}"
    );

    // The Kafka topics, the NATS stream and the MongoDB collections equal the source too.
    let topics: Vec<String> = ["first", "second"]
        .iter()
        .map(|t| format!("{}.public.{t}", env.name))
        .collect();
    let mut kafka = KafkaReader::new(&topics);
    let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
    targets::wait_all_equal(
        &env,
        &format!("{FIRST}; {SECOND};"),
        &["first", "second"],
        &mut kafka,
        &mut nats,
        Duration::from_secs(120),
    )
    .await;

    // A restart copies nothing again and streams both tables.
    env.restart_streams_without_copying(
        run,
        &path,
        "UPDATE second SET note = 'while stopped' WHERE id = 9; DELETE FROM first WHERE id = 2;",
        &["first", "second"],
        "copying tables",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_new_table_is_copied_loses_nothing() {
    let env = env_with_first("new_tables_kill").await;
    let path = pipeline(&env, "");
    let mut run = start_and_join(&env, &path, &[]).await;
    env.on_source("INSERT INTO first VALUES (101, 'during the copy');")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.kill();
    env.on_source("UPDATE second SET note = 'while down' WHERE id = 3; INSERT INTO first VALUES (102, 'down');")
        .await;
    let mut run = env.start(&path);
    env.wait_equal(&["first", "second"], Duration::from_secs(90))
        .await;
    env.on_source("UPDATE second SET note = 'after restart' WHERE id = 4;")
        .await;
    env.wait_equal(&["first", "second"], Duration::from_secs(30))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The narrowest window: every sink has recorded the new table as copied, and the changes held
/// during its copy are not yet applied. A crash there must not lose them (the sink's checkpoint
/// was stepped back to the copy's snapshot first, and the slot kept there). Needs the
/// `crash-points` feature (scripts/test.sh builds with it).
#[cfg(feature = "crash-points")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_copy_is_recorded_replays_the_held_changes() {
    let env = env_with_first("new_tables_recorded").await;
    let path = pipeline(&env, "");
    let mut run = start_and_join(
        &env,
        &path,
        &[("CUTOVER_CRASH_AT", "joined-table-recorded")],
    )
    .await;
    // Other tables' changes commit during the copy, so the sink's checkpoint passes the
    // copy's snapshot position before the crash.
    env.on_source("INSERT INTO first VALUES (101, 'during the copy');")
        .await;
    env.wait_equal(&["first"], Duration::from_secs(20)).await;
    let status = run.wait_exit(Duration::from_secs(90));
    assert!(
        !status.success(),
        "the crash point was not reached:\n{}",
        run.log_text()
    );
    assert!(
        run.log_text().contains("CUTOVER_CRASH_AT"),
        "{}",
        run.log_text()
    );

    let mut run = env.start(&path);
    env.wait_equal(&["first", "second"], Duration::from_secs(90))
        .await;
    assert!(
        !run.log_text().contains("copying tables"),
        "the restart copied the table again instead of replaying its held changes:\n{}",
        run.log_text()
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
