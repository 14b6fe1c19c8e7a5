//! A sink whose saved position is behind the replication slot's is refused at start (the slot
//! can no longer give it what it lacks); one ahead of the slot replays. Real source, a
//! PostgreSQL target and a Kafka sink; every check compares full contents (`wait_equal`, and
//! `cutover verify` for the topic).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::targets::message_sinks;
use common::{cutover, Env};

/// The Kafka sink's state file, beside the pipeline file.
fn kafka_state(pipeline: &Path, env: &Env) -> PathBuf {
    pipeline
        .parent()
        .unwrap()
        .join(".cutover-state")
        .join(format!("{}-kafka.json", env.name))
}

/// Runs the pipeline until both sides hold the same rows, then stops it cleanly.
async fn run_until_equal(env: &Env, pipeline: &PathBuf) {
    let mut run = env.start(pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    // Long enough for a heartbeat: the slot moves on only through what every sink recorded.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
}

/// Starts the pipeline and expects it to stop at once with the gap error naming `sink`.
fn refused(env: &Env, pipeline: &PathBuf, sink: &str) -> String {
    let mut run = env.start(pipeline);
    let status = run.wait_exit(Duration::from_secs(60));
    let log = run.log_text();
    assert!(
        !status.success(),
        "a sink behind the slot was accepted:\n{log}"
    );
    assert!(
        log.contains(&format!("sink {sink} saved progress up to"))
            && log.contains(&format!("cutover forget --sink {sink}")),
        "the error does not name the sink and the recovery:\n{log}"
    );
    log
}

async fn target_has(env: &Env, id: i32) -> bool {
    env.target()
        .await
        .query_opt("SELECT 1 FROM t WHERE id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_behind_the_slot_is_refused_and_one_ahead_replays() {
    let env = Env::new("gaps").await;
    let slot = format!("cutover_{}", env.name);
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let kafka = message_sinks(&env, "")
        .split("\n[[sink]]\nkind = \"nats\"")
        .next()
        .unwrap()
        .to_string();
    let pipeline = env.pipeline_with("[\"t\"]", "", &kafka);
    run_until_equal(&env, &pipeline).await;
    let stale_kafka = std::fs::read(kafka_state(&pipeline, &env)).unwrap();
    env.on_source(&format!(
        "SELECT pg_copy_logical_replication_slot('{slot}', '{slot}_older');"
    ))
    .await;
    env.on_source("INSERT INTO t SELECT g, 'later ' || g FROM generate_series(101, 200) g;")
        .await;
    run_until_equal(&env, &pipeline).await;

    // Ahead of the slot: the slot put back to an older position (as after a crash between a
    // sink's write and the slot's confirmation) replays what the sinks have; nothing is doubled.
    env.on_source(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); \
         SELECT pg_copy_logical_replication_slot('{slot}_older', '{slot}'); \
         SELECT pg_drop_replication_slot('{slot}_older'); \
         UPDATE t SET v = 'updated' WHERE id % 10 = 0;"
    ))
    .await;
    run_until_equal(&env, &pipeline).await;
    let (code, out, err) = cutover(&["verify", pipeline.to_str().unwrap()]);
    assert_eq!(code, 0, "verify after the replay:\n{out}\n{err}");

    // Behind the slot: the Kafka sink's state file replaced by an older copy.
    std::fs::write(kafka_state(&pipeline, &env), &stale_kafka).unwrap();
    env.on_source("INSERT INTO t VALUES (1000, 'while the state is stale');")
        .await;
    refused(&env, &pipeline, "kafka");
    assert!(
        !target_has(&env, 1000).await,
        "the refused run wrote to a sink"
    );
    // The recovery the error names: forget the sink, run again; it is copied again while the
    // PostgreSQL target streams on.
    let (code, out, err) = cutover(&["forget", "--sink", "kafka", pipeline.to_str().unwrap()]);
    assert_eq!(code, 0, "forget:\n{out}\n{err}");
    run_until_equal(&env, &pipeline).await;
    let (code, out, err) = cutover(&["verify", pipeline.to_str().unwrap()]);
    assert_eq!(code, 0, "verify after the Kafka sink's copy:\n{out}\n{err}");

    // Behind the slot: the slot dropped and created again while cutover was down, past
    // changes no sink has.
    env.on_source(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await;
    env.on_source("INSERT INTO t VALUES (1001, 'lost with the old slot')")
        .await;
    env.on_source(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .await;
    refused(&env, &pipeline, "target");
    assert!(!target_has(&env, 1001).await);
    env.drop_slot().await;
}
