//! One slot, four targets: PostgreSQL, Kafka (tansu), NATS JetStream and MongoDB (SecantusDB),
//! all real servers started by scripts/services.sh. Every target is read back as a consumer
//! would and compared with the source, every column of every row.

use crate::common;

use std::time::{Duration, Instant};

use common::targets::{self, KafkaReader, NatsReader};
use common::workload::{self, Workload};
use common::Env;

const TABLES: &[&str] = &["customers", "orders", "items"];

fn topics(env: &Env) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| format!("{}.public.{t}", env.name))
        .collect()
}

/// Waits until the PostgreSQL target, the Kafka topics, the NATS stream and the MongoDB
/// collections all equal the source; returns the NATS reader (for its duplicate check).
async fn wait_every_target_equal(env: &Env) -> NatsReader {
    env.wait_equal(TABLES, Duration::from_secs(90)).await;
    let mut kafka = KafkaReader::new(&topics(env));
    let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
    targets::wait_all_equal(
        env,
        workload::SCHEMA,
        TABLES,
        &mut kafka,
        &mut nats,
        Duration::from_secs(180),
    )
    .await;
    nats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_live_writes_reach_every_target() {
    let env = Env::new("fanout").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 300).await;
    let pipeline = env.pipeline_with(
        "[\"public.*\"]",
        "",
        &targets::message_sinks(&env, "tombstones = true"),
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;

    // SecantusDB finds a document by a composite _id (items) by scanning its collection, so
    // the write load is a fixed number of transactions, not a time: on a fast machine a timed
    // load gave the MongoDB target minutes of scans (the target, not cutover, sets the pace).
    let load = Workload::start_counted(env.source().await, 11, 600);
    let committed = load.finish().await;
    assert!(
        committed > 300,
        "the workload committed only {committed} transactions"
    );
    // Per-key order: many updates of a few keys, each in its own transaction.
    for round in 0..200 {
        src.batch_execute(&format!(
            "UPDATE orders SET note = 'round {round}' WHERE id IN (1, 11, 21)"
        ))
        .await
        .unwrap();
    }
    // A truncate reaches every partition of the topic and empties the collection.
    src.batch_execute("TRUNCATE items; INSERT INTO items VALUES (1, 1, 'after truncate', 1)")
        .await
        .unwrap();

    let nats = wait_every_target_equal(&env).await;
    assert!(nats.duplicate_ids().is_empty());
    let status = run.terminate();
    assert!(status.success(), "cutover exited with {status}");
    // Every sink's saved progress is visible without running the pipeline.
    let (code, out, err) = common::cutover(&["status", pipeline.to_str().unwrap()]);
    // No pipeline streams and no check was made: not ready to switch (exit code 3).
    assert_eq!(code, 3, "{err}");
    for sink in ["target", "kafka (kafka)", "nats (nats)", "mongo (mongodb)"] {
        assert!(
            out.contains(&format!("sink {sink}: applied through"))
                && out.contains("(3 tables copied)"),
            "status does not show {sink}'s progress:\n{out}"
        );
    }
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_leave_every_target_equal_without_nats_duplicates() {
    let env = Env::new("fanout_kill").await;
    let src = env.source().await;
    src.batch_execute(workload::SCHEMA).await.unwrap();
    workload::prefill(&src, 200).await;
    let pipeline = env.pipeline_with("[\"public.*\"]", "", &targets::message_sinks(&env, ""));
    // Paced: SecantusDB (the MongoDB target) scans a collection to find a composite _id, so
    // an unpaced load outruns the server, not cutover.
    let load = Workload::start_paced(env.source().await, 5, Duration::from_millis(10));
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        run.kill();
        run = env.start(&pipeline);
        run.wait_log("streaming changes", Duration::from_secs(60))
            .await;
    }
    let committed = load.stop().await;
    assert!(
        committed > 50,
        "the workload committed only {committed} transactions"
    );
    let nats = wait_every_target_equal(&env).await;
    let dups = nats.duplicate_ids();
    assert!(
        dups.is_empty(),
        "NATS holds replayed changes twice: {:?}",
        &dups[..dups.len().min(5)]
    );
    let status = run.terminate();
    assert!(status.success(), "cutover exited with {status}");
    env.drop_slot().await;
}

/// Debezium envelopes with keyed truncates (`truncates = "keyed"`, for compacted topics): the
/// copy's truncate and a streamed one carry the table's name as their key, and the topic still
/// folds to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_envelope_folds_to_the_source() {
    let env = Env::new("fanout_dbz").await;
    let schema = "CREATE TABLE items (order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line));";
    env.on_source(&format!(
        "{schema} INSERT INTO items SELECT g, 1, 'sku ' || g, g FROM generate_series(1, 200) g;"
    ))
    .await;
    let kafka = format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\nformat = \"debezium\"\ntombstones = true\ntruncates = \"keyed\"\npartitions = 2\n",
        targets::MessageServices::get().kafka_brokers
    );
    let pipeline = env.pipeline_with("[\"items\"]", "", &kafka);
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "UPDATE items SET qty = qty * 10 WHERE order_id % 3 = 0;
         DELETE FROM items WHERE order_id % 5 = 0;
         UPDATE items SET line = 2 WHERE order_id = 7;
         INSERT INTO items VALUES (1000, 1, 'new', 1);
         BEGIN; CREATE TEMP TABLE kept AS SELECT * FROM items; TRUNCATE items;
         INSERT INTO items SELECT * FROM kept WHERE order_id % 2 = 0; COMMIT;",
    )
    .await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    let mut reader = KafkaReader::new(&[format!("{}.public.items", env.name)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        reader.poll(Duration::from_millis(500));
        let schema = schema.replace("items", "public.items");
        match targets::folded_equal(&env, "dbz", &schema, &reader.folded, &["items"], false).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "Debezium-format topic differs: {e}"
            ),
        }
    }
    // Partition 0 holds both truncates (each goes to every partition), keyed by the table.
    let records = targets::kafka_records(
        &format!("{}.public.items", env.name),
        Duration::from_secs(3),
    );
    let truncate_keys: Vec<&str> = records
        .iter()
        .filter(|(_, value)| {
            value.as_ref().is_some_and(|v| {
                serde_json::from_slice::<serde_json::Value>(v).unwrap()["op"] == "t"
            })
        })
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(
        truncate_keys,
        ["\"public.items\"", "\"public.items\""],
        "the copy's truncate and the streamed one, keyed"
    );
    let status = run.terminate();
    assert!(status.success(), "cutover exited with {status}");
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sink_holds_the_slot_and_catches_up() {
    let env = Env::new("fanout_cut").await;
    let schema = "CREATE TABLE public.t (id int PRIMARY KEY, v text, n int);";
    env.on_source(&format!(
        "{schema} INSERT INTO t SELECT g, 'v' || g, 0 FROM generate_series(1, 500) g;"
    ))
    .await;
    let m = targets::MessageServices::get();
    let nats_port: u16 = m.nats_url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = common::proxy::Proxy::start(nats_port).await;
    let sink = format!(
        "\n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\n",
        proxy.port
    );
    let pipeline = env.pipeline_with(
        "[\"t\"]",
        "[limits]\nqueue_bytes = \"4 MiB\"\nbatch_bytes = \"1 MiB\"\n",
        &sink,
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let src = env.source().await;
    let slot_query = format!(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cutover_{}'",
        env.name
    );
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A sink that lost its connection cannot have the first transaction written after it.
    src.batch_execute("UPDATE t SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    let before_writes = lsn(&src, "SELECT pg_current_wal_insert_lsn()::text").await;
    for round in 0..40 {
        src.batch_execute(&format!(
            "UPDATE t SET n = n + 1, v = repeat('x', {}) WHERE id % 40 = {round}",
            200 + round
        ))
        .await
        .unwrap();
    }
    src.batch_execute("INSERT INTO t SELECT g, 'late', 1 FROM generate_series(501, 3000) g")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let held = lsn(&src, &slot_query).await;
    assert!(
        held < before_writes,
        "the slot advanced past what the unreachable sink has ({held:X} > {before_writes:X})"
    );
    let rss = run.rss_kib();
    assert!(
        rss < 200 * 1024,
        "cutover grew to {rss} KiB while a sink was down"
    );

    proxy.restore();
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
    targets::wait_nats_equal(&env, &mut nats, schema, &["t"], Duration::from_secs(120)).await;
    assert!(
        lsn(&src, &slot_query).await > before_writes,
        "the slot never advanced after recovery"
    );
    let status = run.terminate();
    assert!(status.success(), "cutover exited with {status}");
    env.drop_slot().await;
}

/// Runs a query returning one pg_lsn as text, and parses it.
async fn lsn(client: &tokio_postgres::Client, sql: &str) -> u64 {
    let text: String = client.query_one(sql, &[]).await.unwrap().get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_drops_changes_replayed_after_a_crash_between_publish_and_checkpoint() {
    let env = Env::new("fanout_dedupe").await;
    let schema = "CREATE TABLE public.t (id int PRIMARY KEY, v text);";
    env.on_source(&format!(
        "{schema} INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;"
    ))
    .await;
    let m = targets::MessageServices::get();
    let sink = format!(
        "\n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"{}\"\n",
        m.nats_url
    );
    let pipeline = env.pipeline_with("[\"t\"]", "", &sink);
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(30)).await;

    // The NATS sink's saved progress now, before the changes below.
    let client = async_nats::connect(m.nats_url.as_str()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("cutover_state")
        .await
        .unwrap();
    let key = format!("{}.nats", env.name);
    let before = kv
        .get(&key)
        .await
        .unwrap()
        .expect("the sink saved its progress");

    // Hold the PostgreSQL target back, so the slot stays before the changes while NATS gets them.
    let target = env.target().await;
    target
        .batch_execute("BEGIN; LOCK TABLE public.t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for round in 0..20 {
        env.on_source(&format!(
            "UPDATE t SET v = 'round {round}' WHERE id % 20 = {round}"
        ))
        .await;
    }
    let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
    targets::wait_nats_equal(&env, &mut nats, schema, &["t"], Duration::from_secs(60)).await;
    // A crash after publishing, before the progress was saved: the next run sends these
    // transactions again, and the server must drop every one of them by Nats-Msg-Id.
    run.kill();
    kv.put(&key, before).await.unwrap();
    target.batch_execute("ROLLBACK").await.unwrap();
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.poll().await;
    let dups = nats.duplicate_ids();
    assert!(
        dups.is_empty(),
        "replayed changes were stored twice: {:?}",
        &dups[..dups.len().min(5)]
    );
    targets::folded_equal(&env, "dedupe", schema, &nats.folded, &["t"], false)
        .await
        .unwrap();
    let status = run.terminate();
    assert!(status.success(), "cutover exited with {status}");
    env.drop_slot().await;
}
