//! `cutover apply`: change topics applied to PostgreSQL by a Kafka consumer group, on real
//! servers. cutover's own Kafka sink fills the topics from a source under writes; workers join,
//! die and join late; the target must end equal to the source and every partition's stored
//! offset must be exact, with no offset applied twice.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Env, Pipeline};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const SCHEMA: &str = "
    CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int NOT NULL, price numeric(10,2),
                        doc jsonb, seen timestamptz, tags text[]);
    CREATE TABLE orders (id int PRIMARY KEY, item_id bigint, note text, placed date);";

fn brokers() -> String {
    common::targets::MessageServices::get().kafka_brokers
}

/// A pipeline that captures the source into topics of 6 partitions (no other sink).
fn capture_pipeline(env: &Env) -> PathBuf {
    let path = env.dir.join("capture.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[source]\nurl = \"{src}\"\ntables = [\"items\", \"orders\"]\n\n\
             [[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{brokers}\"\npartitions = 6\n",
            name = env.name,
            src = env.source_url,
            brokers = brokers(),
        ),
    )
    .unwrap();
    path
}

/// An apply pipeline reading `topics` into the test's target database.
fn apply_pipeline(env: &Env, topics: &[String], extra_source: &str) -> PathBuf {
    let path = env.dir.join(format!("apply-{}.toml", topics.len()));
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "name = \"{name}_apply\"\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\n\
             topics = [{topics}]\nbatch_messages = 400\n{extra_source}\n\
             properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n\n\
             [[sink]]\nkind = \"postgres\"\nname = \"target\"\nurl = \"{tgt}\"\n",
            name = env.name,
            brokers = brokers(),
            topics = topics.join(", "),
            tgt = env.target_url,
        ),
    )
    .unwrap();
    path
}

/// Every "applied offsets" line of a worker's log: (topic/partition, first, last).
fn applied(worker: &Pipeline) -> Vec<(String, i64, i64)> {
    worker
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("applied offsets"))
        })
        .map(|v| {
            (
                format!("{}/{}", v["topic"].as_str().unwrap(), v["partition"]),
                v["first"].as_i64().unwrap(),
                v["last"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The next offset each partition's sink stored on the target, by `topic/partition`.
async fn stored_offsets(env: &Env, pipeline: &str) -> BTreeMap<String, i64> {
    env.target()
        .await
        .query(
            "SELECT pipeline, (end_lsn - '0/0'::pg_lsn)::int8 FROM cutover.checkpoints
              WHERE sink = 'target' AND starts_with(pipeline, $1)",
            &[&format!("{pipeline}/")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let p: String = r.get(0);
            (p[pipeline.len() + 1..].to_string(), r.get(1))
        })
        .collect()
}

/// Inserts, updates and deletes on both tables until stopped.
fn keep_writing(env: &Env) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let url = env.source_url.clone();
    let task = tokio::spawn(async move {
        let client = common::connect(&url).await;
        let mut n = 0u64;
        while !flag.load(Ordering::SeqCst) {
            client
                .batch_execute(
                    "BEGIN;
                     INSERT INTO items SELECT max(id) + 1, 'new ' || max(id), 1, 9.99, '{\"k\": [1]}', now(), '{a,b}' FROM items;
                     UPDATE items SET qty = qty + 1, price = price + 0.01 WHERE id = (random() * 2000)::bigint + 1;
                     DELETE FROM items WHERE id = (random() * 2000)::bigint + 1;
                     INSERT INTO orders SELECT max(id) + 1, (random() * 2000)::bigint, 'o', current_date FROM orders;
                     UPDATE orders SET note = note || '+' WHERE id = (random() * 500)::int + 1;
                     COMMIT;",
                )
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        n
    });
    (stop, task)
}

/// Three workers drain 6-partition topics that cutover's Kafka sink fills under writes; one is
/// SIGKILLed mid-way and another joins later. The target ends equal to the source; the
/// batches logged by all workers never overlap within a partition (no offset applied twice),
/// and each partition's stored offset is the one after the last offset applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_drain_six_partitions_through_a_kill_and_a_late_join() {
    let env = Env::new("apply").await;
    env.on_source(&format!(
        "{SCHEMA}
         INSERT INTO items SELECT g, 'item ' || g, g % 50, g / 7.0, jsonb_build_object('g', g), now() - g * interval '1 min', ARRAY['x', g::text]
           FROM generate_series(1, 2000) g;
         INSERT INTO orders SELECT g, g % 2000, 'order ' || g, date '2024-01-01' + g FROM generate_series(1, 500) g;"
    ))
    .await;
    env.target().await.batch_execute(SCHEMA).await.unwrap();
    let mut capture = env.start(&capture_pipeline(&env));
    capture
        .wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let (stop, writer) = keep_writing(&env);
    let topics = vec![
        format!("{}.public.items", env.name),
        format!("{}.public.orders", env.name),
    ];
    // The original database, for `cutover verify`.
    let apply = apply_pipeline(
        &env,
        &topics,
        &format!(
            "url = \"{}\"\ntables = [\"items\", \"orders\"]",
            env.source_url
        ),
    );
    // A MongoDB target beside the PostgreSQL one: every partition's changes reach both.
    let mongo = common::targets::MessageServices::get().mongo_url;
    let mut text = std::fs::read_to_string(&apply).unwrap();
    text.push_str(&format!(
        "\n[[sink]]\nkind = \"mongodb\"\nname = \"mongo\"\nurl = \"{mongo}\"\ndatabase = \"{}\"\n",
        env.name
    ));
    std::fs::write(&apply, text).unwrap();
    let mut doomed = env.start_apply(&apply);
    let mut workers = vec![env.start_apply(&apply), env.start_apply(&apply)];
    doomed
        .wait_log("applied offsets", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    workers.push(env.start_apply(&apply));
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 100,
        "the workload ran {transactions} transactions"
    );
    env.wait_equal(&["items", "orders"], Duration::from_secs(120))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let folded = common::targets::mongo_rows(&env.name, &["items", "orders"]).await;
        match common::targets::folded_equal(
            &env,
            "mongo",
            SCHEMA,
            &folded,
            &["items", "orders"],
            true,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "MongoDB differs from the source: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in workers.iter_mut() {
        assert!(w.terminate().success(), "{}", w.log_text());
    }
    assert!(capture.terminate().success(), "{}", capture.log_text());

    // Every worker applied something, the late one included.
    let mut batches: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (i, w) in std::iter::once(&doomed).chain(&workers).enumerate() {
        let logged = applied(w);
        assert!(
            !logged.is_empty(),
            "worker {i} applied nothing:\n{}",
            w.log_text()
        );
        for (partition, first, last) in logged {
            batches.entry(partition).or_default().push((first, last));
        }
    }
    let stored = stored_offsets(&env, &format!("{}_apply", env.name)).await;
    assert_eq!(stored.len(), 12, "stored offsets: {stored:?}");
    for (partition, mut ranges) in batches {
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[1].0 > pair[0].1,
                "{partition}: offsets {:?} and {:?} were both applied",
                pair[0],
                pair[1]
            );
        }
        let last = ranges.last().unwrap().1;
        assert_eq!(
            stored.get(&partition),
            Some(&(last + 1)),
            "{partition}: the stored offset is not the one after the last applied ({last})"
        );
    }

    // `cutover verify` compares the apply-fed target with the original database, and finds a
    // row changed behind the workers' back.
    let path = apply.to_str().unwrap();
    let (code, out, err) = common::cutover(&["verify", path]);
    assert_eq!(code, 0, "{out}\n{err}");
    env.target()
        .await
        .batch_execute("UPDATE orders SET note = 'tampered' WHERE id = 7")
        .await
        .unwrap();
    let (code, out, err) = common::cutover(&["verify", path, "--table", "public.orders"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("DRIFT") && out.contains("tampered"), "{out}");
    // `check` finds the topics and reaches both targets; a topic the brokers lack fails it.
    let (code, out, err) = common::cutover(&["check", path]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        format!("ok    topic {}: 6 partition(s)", topics[0]),
        "ok    sink target (postgres): reachable".to_string(),
        "ok    sink mongo (mongodb): reachable".to_string(),
    ] {
        assert!(out.contains(&line), "{line:?} not in:\n{out}");
    }
    let missing = env.dir.join("missing-topic.toml");
    std::fs::write(
        &missing,
        std::fs::read_to_string(&apply)
            .unwrap()
            .replace(&topics[1], "no_such_topic_here"),
    )
    .unwrap();
    let (code, out, _) = common::cutover(&["check", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  topic no_such_topic_here"), "{out}");
    // Commands that act on a PostgreSQL source say what to use instead.
    let (code, _, err) = common::cutover(&["teardown", path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cutover apply, check, status, verify or dlq list"),
        "{err}"
    );
    let (code, out, err) = common::cutover(&["status", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("12 partitions applied"), "{out}");
    env.drop_slot().await;
}

/// Produces `(key, payload)` messages to partition 0 of `topic`, in order.
fn produce(topic: &str, messages: &[(Option<&str>, Option<&str>)]) {
    produce_to(topic, 0, messages)
}

/// Produces `(key, payload)` messages to `partition` of `topic`, in order.
fn produce_to(topic: &str, partition: i32, messages: &[(Option<&str>, Option<&str>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for (key, payload) in messages {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic).partition(partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Messages that cannot be applied are parked with their topic, partition and offset, and the
/// rest flows on: not JSON, a delete without a key, an unknown op, a field the target table
/// lacks, a value of the wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_parked_with_their_offsets_and_the_rest_applies() {
    let env = Env::new("apply_bad").await;
    env.target()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text);")
        .await
        .unwrap();
    let topic = format!("{}.bad", env.name);
    let good = |id: i32| {
        format!(
            r#"{{"op": "insert", "table": "public.t", "key": {{"id": {id}}}, "row": {{"id": {id}, "v": "v{id}"}}, "lsn": "0/1", "ordinal": 0, "txid": 1, "commit_ts": "2026-01-01T00:00:00Z"}}"#
        )
    };
    let (g1, g2, g3) = (good(1), good(2), good(3));
    produce(
        &topic,
        &[
            (Some(r#"{"id":1}"#), Some(&g1)),
            (Some(r#"{"id":9}"#), Some("this is not JSON")),
            (
                None,
                Some(r#"{"op": "delete", "table": "public.t", "key": null, "row": null}"#),
            ),
            (Some(r#"{"id":2}"#), Some(&g2)),
            (
                Some(r#"{"id":4}"#),
                Some(
                    r#"{"op": "upsert", "table": "public.t", "key": {"id": 4}, "row": {"id": 4}}"#,
                ),
            ),
            (
                Some(r#"{"id":5}"#),
                Some(
                    r#"{"op": "insert", "table": "public.t", "key": {"id": 5}, "row": {"id": 5, "v": "x", "extra": 1}}"#,
                ),
            ),
            (
                Some(r#"{"id":6}"#),
                Some(
                    r#"{"op": "insert", "table": "public.t", "key": {"id": 6}, "row": {"id": "six", "v": "x"}}"#,
                ),
            ),
            (Some(r#"{"id":3}"#), Some(&g3)),
        ],
    );
    let apply = apply_pipeline(&env, std::slice::from_ref(&topic), "");
    let mut worker = env.start_apply(&apply);
    let target = env.target().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = common::contents(&target, "t").await;
        if rows.len() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rows:?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker.terminate().success(), "{}", worker.log_text());
    let rows = common::contents(&target, "t").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, id) in rows.iter().zip(1..) {
        assert!(row.contains(&format!("v{id}")), "{rows:?}");
    }
    let letters_file = env
        .dir
        .join(".cutover-state")
        .join(format!("{}_apply-apply-letters.jsonl", env.name));
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&letters_file)
        .unwrap_or_else(|e| panic!("{}: {e}", letters_file.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let parked: Vec<(i64, String)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l["read_from"]["topic"], topic.as_str());
            assert_eq!(l["read_from"]["partition"], 0);
            (
                l["read_from"]["offset"].as_i64().unwrap(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (code, out, err) = common::cutover(&["dlq", "list", apply.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("5 parked message(s)") && out.contains(&format!("{topic}/0@1")),
        "{out}"
    );
    let offsets: Vec<i64> = parked.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [1, 2, 4, 5, 6], "{parked:#?}");
    for (expected, (_, reason)) in [
        "not JSON",
        "has no \"key\"",
        "unknown op \"upsert\"",
        "\"extra\" is not a column of target table public.t",
        "column id: expected an integer",
    ]
    .iter()
    .zip(&parked)
    {
        assert!(
            reason.contains(expected),
            "{reason:?} does not say {expected:?}"
        );
    }

    // A later message of a parked key waits behind it (applied now, it would be undone when
    // the parked one is replayed); other keys go on.
    produce(
        &topic,
        &[
            (
                Some(r#"{"id":5}"#),
                Some(
                    r#"{"op": "update", "table": "public.t", "key": {"id": 5}, "row": {"id": 5, "v": "later"}}"#,
                ),
            ),
            (
                Some(r#"{"id":7}"#),
                Some(
                    r#"{"op": "insert", "table": "public.t", "key": {"id": 7}, "row": {"id": 7, "v": "v7"}}"#,
                ),
            ),
        ],
    );
    let mut worker = env.start_apply(&apply);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while common::contents(&target, "t").await.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = common::cutover(&["dlq", "list", apply.to_str().unwrap()]);
    assert!(
        out.contains("6 parked message(s)")
            && out.contains(&format!("{topic}/0@8"))
            && out.contains("waiting behind an earlier parked message of this key"),
        "{out}"
    );
    // The cause fixed, the replay applies the key's messages in order, beside a running worker.
    target
        .batch_execute("ALTER TABLE t ADD COLUMN extra int")
        .await
        .unwrap();
    let (code, out, err) = common::cutover(&["dlq", "replay", apply.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("replayed: 2 applied, 4 still parked") && out.contains("4 parked message(s)"),
        "{out}"
    );
    let row: (String, Option<i32>) = target
        .query_one("SELECT v, extra FROM t WHERE id = 5", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(row.0, "later", "{row:?}");
    assert!(worker.terminate().success(), "{}", worker.log_text());
}

/// The value schema of the Debezium fixtures (schemas on), as Debezium's PostgreSQL connector
/// documents it for `customers`: `before` and `after` structs, then `source`, `op`, `ts_ms`.
const CUSTOMER_FIELDS: &str = r#"[
  {"type": "int32", "optional": false, "field": "id"},
  {"type": "string", "optional": true, "field": "first_name"},
  {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
   "parameters": {"scale": "2", "connect.decimal.precision": "8"}, "field": "balance"},
  {"type": "int64", "optional": true, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "seen"},
  {"type": "int32", "optional": true, "name": "io.debezium.time.Date", "version": 1, "field": "born"},
  {"type": "string", "optional": true, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "tz"},
  {"type": "string", "optional": true, "name": "io.debezium.data.Uuid", "version": 1, "field": "uid"},
  {"type": "string", "optional": true, "name": "io.debezium.data.Json", "version": 1, "field": "doc"},
  {"type": "boolean", "optional": true, "field": "active"},
  {"type": "double", "optional": true, "field": "score"}]"#;

/// One Debezium change event for table `table`: `op` with `before`/`after` (JSON text or
/// "null"), wrapped in `{"schema", "payload"}` when `schemas` is on.
fn debezium_event(table: &str, op: &str, before: &str, after: &str, schemas: bool) -> String {
    let payload = format!(
        r#"{{"before": {before}, "after": {after},
            "source": {{"version": "2.7.0.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1714566600250,
                        "snapshot": "{snapshot}", "db": "shop", "sequence": "[null,\"24023128\"]", "schema": "public",
                        "table": "{table}", "txId": 555, "lsn": 24023128, "xmin": null}},
            "op": "{op}", "ts_ms": 1714566600300, "transaction": null}}"#,
        snapshot = if op == "r" { "true" } else { "false" },
    );
    if !schemas {
        return payload;
    }
    let value = |field: &str| {
        format!(
            r#"{{"type": "struct", "optional": true, "name": "shop.public.{table}.Value", "field": "{field}", "fields": {CUSTOMER_FIELDS}}}"#
        )
    };
    format!(
        r#"{{"schema": {{"type": "struct", "optional": false, "name": "shop.public.{table}.Envelope", "version": 1, "fields": [
              {before_schema}, {after_schema},
              {{"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source", "fields": [
                {{"type": "string", "optional": false, "field": "version"}}, {{"type": "string", "optional": false, "field": "table"}}]}},
              {{"type": "string", "optional": false, "field": "op"}},
              {{"type": "int64", "optional": true, "field": "ts_ms"}}]}},
            "payload": {payload}}}"#,
        before_schema = value("before"),
        after_schema = value("after"),
    )
}

fn debezium_key(table: &str, id: i32, schemas: bool) -> String {
    if schemas {
        format!(
            r#"{{"schema": {{"type": "struct", "optional": false, "name": "shop.public.{table}.Key", "fields": [{{"type": "int32", "optional": false, "field": "id"}}]}}, "payload": {{"id": {id}}}}}"#
        )
    } else {
        format!(r#"{{"id": {id}}}"#)
    }
}

/// Messages in Debezium's PostgreSQL connector format, written by hand after its documentation
/// (schemas on and off; decimals precise, as strings and as doubles), are applied and equal
/// the rows they describe: a snapshot read, creates, an update, a delete and its tombstone.
/// With schemas on, the target table is created from the message schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_messages_apply_as_the_rows_they_describe() {
    let env = Env::new("apply_dbz").await;
    let target = env.target().await;
    let columns =
        "(id int PRIMARY KEY, first_name text, balance numeric(8,2), seen timestamp, born date,
                    tz timestamptz, uid uuid, doc jsonb, active boolean, score double precision)";
    target
        .batch_execute(&format!(
            "CREATE TABLE expected {columns};
             INSERT INTO expected VALUES
               (1, 'Anne', 12.50, '2024-05-01 12:30:00.25', '2024-05-01', '2024-05-01 12:30:00.25+00',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2]}}', true, 1.5),
               (2, 'Bob', 100.00, '2023-01-02 03:04:05', '2023-01-02', '2023-01-02 03:04:05+00',
                NULL, NULL, false, -2.25),
               (4, 'Dan', 7.00, NULL, NULL, NULL, NULL, '[]', NULL, NULL);
             CREATE TABLE c_precise {columns}; CREATE TABLE c_string {columns}; CREATE TABLE c_double {columns};"
        ))
        .await
        .unwrap();
    // (decimal mode, table, schemas, how each balance is written: 12.50, -3.05, 100.00, 7.00)
    let cases = [
        (
            "precise",
            "c_schema",
            true,
            ["\"BOI=\"", "\"/s8=\"", "\"JxA=\"", "\"Arw=\""],
        ),
        (
            "precise",
            "c_precise",
            false,
            ["\"BOI=\"", "\"/s8=\"", "\"JxA=\"", "\"Arw=\""],
        ),
        (
            "string",
            "c_string",
            false,
            ["\"12.50\"", "\"-3.05\"", "\"100.00\"", "\"7.00\""],
        ),
        (
            "double",
            "c_double",
            false,
            ["12.5", "-3.05", "100.0", "7.0"],
        ),
    ];
    for (mode, table, schemas, balance) in cases {
        let row = |id: i32, name: &str, balance: &str, rest: &str| {
            format!(r#"{{"id": {id}, "first_name": "{name}", "balance": {balance}, {rest}}}"#)
        };
        let anne = row(
            1,
            "Anne",
            balance[0],
            r#""seen": 1714566600250000, "born": 19844, "tz": "2024-05-01T12:30:00.25Z", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "doc": "{\"a\": [1, 2]}", "active": true, "score": 1.5"#,
        );
        let bob_rest = r#""seen": 1672628645000000, "born": 19359, "tz": "2023-01-02T03:04:05Z", "uid": null, "doc": null, "active": false, "score": -2.25"#;
        let bob = row(2, "Bob", balance[1], bob_rest);
        let bob_after = row(2, "Bob", balance[2], bob_rest);
        let carl = row(
            3,
            "Carl",
            balance[0],
            r#""seen": null, "born": null, "tz": null, "uid": null, "doc": null, "active": null, "score": null"#,
        );
        let carl_key = r#"{"id": 3, "first_name": null, "balance": null, "seen": null, "born": null, "tz": null, "uid": null, "doc": null, "active": null, "score": null}"#;
        let dan = row(
            4,
            "Dan",
            balance[3],
            r#""seen": null, "born": null, "tz": null, "uid": null, "doc": "[]", "active": null, "score": null"#,
        );
        let key = |id| debezium_key(table, id, schemas);
        let messages = [
            (
                key(4),
                Some(debezium_event(table, "r", "null", &dan, schemas)),
            ),
            (
                key(1),
                Some(debezium_event(table, "c", "null", &anne, schemas)),
            ),
            (
                key(2),
                Some(debezium_event(table, "c", "null", &bob, schemas)),
            ),
            (
                key(3),
                Some(debezium_event(table, "c", "null", &carl, schemas)),
            ),
            (
                key(2),
                Some(debezium_event(table, "u", &bob, &bob_after, schemas)),
            ),
            (
                key(3),
                Some(debezium_event(table, "d", carl_key, "null", schemas)),
            ),
            (key(3), None),
        ];
        let topic = format!("{}.{table}", env.name);
        let borrowed: Vec<(Option<&str>, Option<&str>)> = messages
            .iter()
            .map(|(k, p)| (Some(k.as_str()), p.as_deref()))
            .collect();
        produce(&topic, &borrowed);
        let apply = apply_pipeline(
            &env,
            std::slice::from_ref(&topic),
            &format!(
                "format = \"debezium\"\ndecimal_handling = \"{mode}\"\ngroup = \"{}_{table}\"",
                env.name
            ),
        );
        let mut worker = env.start_apply(&apply);
        let expected = common::contents(&target, "expected").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows = common::contents(&target, table).await;
            if rows == expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{table} ({mode}, schemas {schemas}): {rows:#?}\nexpected {expected:#?}\n{}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(worker.terminate().success(), "{}", worker.log_text());
    }
    // The table made from the message schema has the documented column types.
    let types: Vec<String> = target
        .query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
              WHERE attrelid = 'c_schema'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "integer",
            "text",
            "numeric(8,2)",
            "timestamp without time zone",
            "date",
            "timestamp with time zone",
            "uuid",
            "jsonb",
            "boolean",
            "double precision"
        ]
    );
}

/// With `whole_transactions`, source transactions that move money between two tables reach the
/// target whole: every table in one topic of one partition, batches far smaller than the
/// workload's, and a reader on the target never sees money missing or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_transactions_keep_a_transfer_between_tables_atomic() {
    let env = Env::new("apply_txn").await;
    let schema = "CREATE TABLE debit (id int PRIMARY KEY, bal bigint NOT NULL);
                  CREATE TABLE credit (id int PRIMARY KEY, bal bigint NOT NULL);";
    env.on_source(&format!(
        "{schema} INSERT INTO debit SELECT g, 1000 FROM generate_series(1, 50) g;
                  INSERT INTO credit SELECT g, 1000 FROM generate_series(1, 50) g;"
    ))
    .await;
    env.target().await.batch_execute(schema).await.unwrap();
    let capture = env.dir.join("capture-one.toml");
    std::fs::write(
        &capture,
        format!(
            "name = \"{name}\"\n[source]\nurl = \"{src}\"\ntables = [\"debit\", \"credit\"]\n\n\
             [[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{brokers}\"\npartitions = 1\ntopic = \"{name}.all\"\n",
            name = env.name,
            src = env.source_url,
            brokers = brokers(),
        ),
    )
    .unwrap();
    let mut run = env.start(&capture);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let apply = apply_pipeline(
        &env,
        &[format!("{}.all", env.name)],
        "whole_transactions = true",
    );
    // Batches of 5 messages: a transfer of 3 rows each way (6 messages) never fits one.
    let text = std::fs::read_to_string(&apply)
        .unwrap()
        .replace("batch_messages = 400", "batch_messages = 5");
    std::fs::write(&apply, text).unwrap();
    let mut worker = env.start_apply(&apply);
    let target = env.target().await;
    // One statement reads one snapshot of both tables.
    let total = "SELECT ((SELECT coalesce(sum(bal), 0) FROM debit) + (SELECT coalesce(sum(bal), 0) FROM credit))::int8,
                        (SELECT count(*) FROM debit) + (SELECT count(*) FROM credit)";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = target.query_one(total, &[]).await.unwrap();
        if row.get::<_, i64>(1) == 100 && row.get::<_, i64>(0) == 100_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop, writer) = {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let url = env.source_url.clone();
        (
            stop,
            tokio::spawn(async move {
                let client = common::connect(&url).await;
                let mut n = 0;
                while !flag.load(Ordering::SeqCst) {
                    let (a, b) = (n % 50 + 1, (n * 7) % 50 + 1);
                    client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE debit SET bal = bal - 3 WHERE id IN ({a}, {b}, {c});
                                UPDATE credit SET bal = bal + 3 WHERE id IN ({a}, {b}, {c}); COMMIT;",
                        c = (n * 13) % 50 + 1
                    ))
                    .await
                    .unwrap();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            }),
        )
    };
    let mut seen = 0;
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let row = target.query_one(total, &[]).await.unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            100_000,
            "a reader saw part of a transfer"
        );
        seen += 1;
    }
    stop.store(true, Ordering::SeqCst);
    assert!(writer.await.unwrap() > 50);
    env.wait_equal(&["debit", "credit"], Duration::from_secs(60))
        .await;
    assert!(seen > 20);
    assert!(worker.terminate().success(), "{}", worker.log_text());
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A topic made anew (deleted and created again) holds none of the messages the target applied:
/// Kafka would start the group from the beginning of the new log without a word, so the worker
/// stops and says which partition and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_lost_applied_messages_stops_the_worker() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let env = Env::new("apply_gap").await;
    env.target()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text);")
        .await
        .unwrap();
    let topic = format!("{}.gap", env.name);
    let message = |id: i32| {
        format!(
            r#"{{"op": "insert", "table": "public.t", "key": {{"id": {id}}}, "row": {{"id": {id}, "v": "v{id}"}}, "lsn": "0/1", "ordinal": 0, "txid": 1, "commit_ts": "2026-01-01T00:00:00Z"}}"#
        )
    };
    let (m1, m2, m3) = (message(1), message(2), message(3));
    produce(
        &topic,
        &[
            (Some(r#"{"id":1}"#), Some(&m1)),
            (Some(r#"{"id":2}"#), Some(&m2)),
            (Some(r#"{"id":3}"#), Some(&m3)),
        ],
    );
    let apply = apply_pipeline(&env, std::slice::from_ref(&topic), "");
    let mut worker = env.start_apply(&apply);
    let target = env.target().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while common::contents(&target, "t").await.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker.terminate().success(), "{}", worker.log_text());

    // The topic is made anew, empty.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin.delete_topics(&[&topic], &options).await.unwrap();
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let mut worker = env.start_apply(&apply);
    let status = worker.wait_exit(Duration::from_secs(90));
    let log = worker.log_text();
    assert!(
        !status.success(),
        "the worker went on past the lost messages:\n{log}"
    );
    assert!(
        log.contains(&format!("the target holds {topic}/0 up to offset 2"))
            && log.contains("the partition is empty"),
        "{log}"
    );
}

/// Debezium sends a truncate to one partition of the table's topic (it has no key); cutover's
/// own Kafka sink sends it to every partition. A truncate read before any row of its table in
/// its partition removes nothing only in the second case: Debezium's, read from a partition
/// with no row while another partition holds the table's rows, is parked, never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_truncate_in_one_partition_of_many_is_parked_not_dropped() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let env = Env::new("apply_trunc").await;
    let target = env.target().await;
    target
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, first_name text, balance numeric(8,2), seen timestamp,
                                     born date, tz timestamptz, uid uuid, doc jsonb, active boolean, score float8);",
        )
        .await
        .unwrap();
    let topic = format!("{}.trunc", env.name);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let row = |id: i32| {
        format!(
            r#"{{"id": {id}, "first_name": "n{id}", "balance": "1.50", "seen": null, "born": null, "tz": null, "uid": null, "doc": null, "active": null, "score": null}}"#
        )
    };
    let creates: Vec<(String, String)> = (1..=3)
        .map(|id| {
            (
                debezium_key("customers", id, false),
                debezium_event("customers", "c", "null", &row(id), false),
            )
        })
        .collect();
    let borrowed: Vec<(Option<&str>, Option<&str>)> = creates
        .iter()
        .map(|(k, p)| (Some(k.as_str()), Some(p.as_str())))
        .collect();
    produce_to(&topic, 1, &borrowed);
    let truncate = debezium_event("customers", "t", "null", "null", false);
    produce_to(&topic, 0, &[(None, Some(&truncate))]);
    let apply = apply_pipeline(
        &env,
        std::slice::from_ref(&topic),
        "format = \"debezium\"\ndecimal_handling = \"string\"",
    );
    let mut worker = env.start_apply(&apply);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, _) = common::cutover(&["dlq", "list", apply.to_str().unwrap()]);
        let rows = common::contents(&target, "customers").await;
        if out.contains("1 parked message(s)") && rows.len() == 3 {
            assert!(
                out.contains("a truncate of public.customers read from one of the 2 partitions"),
                "{out}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rows:?}\n{out}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(worker.terminate().success(), "{}", worker.log_text());
}
