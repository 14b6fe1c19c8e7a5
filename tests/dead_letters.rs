//! Dead letters on real servers: a change the target rejects (a CHECK that exists only on the
//! target) is parked with its reason while other rows and tables flow on; later changes of the
//! parked key wait behind it; after the target is fixed, `cutover dlq replay` brings the target
//! equal to the source.

use crate::common;

use std::time::{Duration, Instant};

use common::{contents, cutover, Env};

/// Runs `cutover dlq replay`, which must succeed and report `want`.
fn replay_expecting(path: &std::path::Path, want: &str) {
    let (code, out, err) = cutover(&["dlq", "replay", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(want), "{out}");
}

/// Polls `cutover dlq list` until its output holds every one of `want`; returns the output.
async fn wait_listed(path: &std::path::Path, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = cutover(&["dlq", "list", path.to_str().unwrap()]);
        if want.iter().all(|w| out.contains(w)) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "dlq list never showed {want:?}:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_change_is_parked_and_replayed_after_the_fix() {
    let env = Env::new("dead_letters").await;
    env.on_source(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int, owner text);
         CREATE TABLE audit (id int PRIMARY KEY, note text);
         INSERT INTO accounts SELECT g, 100, 'o' || g FROM generate_series(1, 50) g;",
    )
    .await;
    // The target refuses negative balances; the source does not.
    let target = env.target().await;
    target
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int CHECK (balance >= 0), owner text);
             CREATE TABLE audit (id int PRIMARY KEY, note text);",
        )
        .await
        .unwrap();
    let path = env.pipeline("[\"public.accounts\", \"public.audit\"]", "");
    let mut run = env.start(&path);
    env.wait_equal(&["accounts", "audit"], Duration::from_secs(60))
        .await;

    env.on_source(
        "BEGIN;
         UPDATE accounts SET balance = -5 WHERE id = 7;            -- rejected by the target
         UPDATE accounts SET balance = balance + 1 WHERE id <> 7;  -- same table, same batch
         INSERT INTO audit VALUES (1, 'same transaction, other table');
         COMMIT;",
    )
    .await;
    // Everything but key 7 arrives.
    let src = env.source().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want: Vec<String> = contents(&src, "accounts")
            .await
            .into_iter()
            .filter(|r| !r.starts_with("(7,"))
            .collect();
        let have: Vec<String> = contents(&target, "accounts")
            .await
            .into_iter()
            .filter(|r| !r.starts_with("(7,"))
            .collect();
        if want == have && contents(&src, "audit").await == contents(&target, "audit").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "other rows did not flow on:\n{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        contents(&target, "accounts")
            .await
            .iter()
            .find(|r| r.starts_with("(7,"))
            .unwrap(),
        "(7,100,o7)",
        "the parked key keeps its last good row"
    );
    let (code, out, err) = cutover(&["dlq", "list", path.to_str().unwrap()]);
    assert_eq!(code, 1, "parked changes make list exit 1: {out}{err}");
    assert!(out.contains("1 parked change(s)"), "{out}");
    assert!(
        out.contains("check constraint") && out.contains("{\"id\":\"7\"}"),
        "{out}"
    );
    // A later change of the parked key waits behind it (parked too); other keys go on.
    env.on_source(
        "UPDATE accounts SET owner = 'later' WHERE id = 7;
         INSERT INTO audit VALUES (2, 'after');",
    )
    .await;
    wait_listed(&path, &["2 parked change(s)", "waiting behind"]).await;
    env.wait_equal(&["audit"], Duration::from_secs(30)).await;
    assert!(contents(&target, "accounts")
        .await
        .contains(&"(7,100,o7)".to_string()));
    // Replay before the fix: still parked, nothing lost.
    let (_, out, _) = cutover(&["dlq", "replay", path.to_str().unwrap()]);
    assert!(
        out.contains("0 parked change(s) applied, 2 still parked"),
        "{out}"
    );
    // Fix the target, replay while the pipeline runs: the target equals the source.
    target
        .batch_execute("ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check")
        .await
        .unwrap();
    replay_expecting(&path, "2 parked change(s) applied, 0 still parked");
    env.on_source("UPDATE accounts SET balance = 1 WHERE id = 8")
        .await;
    env.wait_equal(&["accounts", "audit"], Duration::from_secs(30))
        .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_the_target_refuses_are_parked_and_the_copy_goes_on() {
    let env = Env::new("dead_letters_snapshot").await;
    // 20 000 rows (about 3 MB: the COPY sends several chunks before the server refuses one),
    // three of them refused by a CHECK only the target has, spread over the table.
    env.on_source(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int, owner text);
         INSERT INTO accounts SELECT g, CASE WHEN g IN (17, 9000, 19999) THEN -1 ELSE g END, repeat('o', 120) || g
           FROM generate_series(1, 20000) g;",
    )
    .await;
    let target = env.target().await;
    target
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int CHECK (balance >= 0), owner text);",
        )
        .await
        .unwrap();
    let path = env.pipeline("[\"public.accounts\"]", "");
    let mut run = env.start(&path);
    let out = wait_listed(&path, &["sink target: 3 parked change(s)"]).await;
    assert!(out.contains("check constraint"), "{out}");
    for id in [17, 9000, 19999] {
        assert!(out.contains(&format!("{{\"id\":\"{id}\"}}")), "{out}");
    }
    // Every other row was copied; a later change of a refused key waits behind it.
    let src = env.source().await;
    let others = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|r| {
                !["(17,", "(9000,", "(19999,"]
                    .iter()
                    .any(|k| r.starts_with(k))
            })
            .collect()
    };
    env.on_source("UPDATE accounts SET owner = 'later' WHERE id = 17; UPDATE accounts SET owner = 'x' WHERE id = 18;")
        .await;
    wait_listed(
        &path,
        &["sink target: 4 parked change(s)", "waiting behind"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while others(contents(&target, "accounts").await) != others(contents(&src, "accounts").await) {
        assert!(
            Instant::now() < deadline,
            "the other rows did not arrive:\n{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(contents(&target, "accounts").await.len(), 19_997);
    // Fix the target; replay while running: equal to the source.
    target
        .batch_execute("ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check")
        .await
        .unwrap();
    replay_expecting(&path, "4 parked change(s) applied, 0 still parked");
    env.wait_equal(&["accounts"], Duration::from_secs(30)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The `[[sink]]` of a Kafka target refusing messages over `max_bytes`, parking them where
/// `store` (a `dead_letter_*` line) says.
fn kafka_sink(max_bytes: u32, store: &str) -> String {
    let m = common::targets::MessageServices::get();
    format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\n{store}\nproperties = {{ \"message.max.bytes\" = \"{max_bytes}\" }}\n",
        m.kafka_brokers
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_kafka_message_is_parked_in_a_file_and_sent_after_the_fix() {
    let env = Env::new("dead_letters_kafka").await;
    oversized_kafka_message(&env, "dead_letter_file = \"dead-letters.jsonl\"").await;
    assert!(env.dir.join("dead-letters.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_kafka_message_is_parked_in_a_topic_and_sent_after_the_fix() {
    let env = Env::new("dead_letters_kafka_topic").await;
    let topic = format!("{}.dead-letters", env.name);
    // Letters of 60 kB go to the topic in parts under the 20 kB limit.
    oversized_kafka_message(&env, &format!("dead_letter_topic = \"{topic}\"")).await;
    assert!(!env.dir.join("dead-letters.jsonl").exists());
    // Every letter was removed from the topic by a tombstone on each of its parts.
    let records = common::targets::kafka_records(&topic, Duration::from_secs(3));
    let mut live: std::collections::BTreeMap<&str, bool> = Default::default();
    for (key, value) in &records {
        assert!(
            value.as_ref().is_none_or(|v| v.len() <= 20_000),
            "part {key} is over the limit"
        );
        live.insert(key, value.is_some());
    }
    assert!(
        live.keys().any(|k| !k.ends_with("/1")),
        "the 60 kB letter was split into parts: {:?}",
        live.keys()
    );
    assert!(
        !live.is_empty() && live.values().all(|l| !l),
        "every part ends with a tombstone: {live:?}"
    );
}

/// An oversized message (and a later change of its key) is parked in `store` while other keys
/// flow; after the limit is raised, `dlq replay` sends both in order.
async fn oversized_kafka_message(env: &Env, store: &str) {
    env.on_source(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs SELECT g, 'small ' || g FROM generate_series(1, 20) g;",
    )
    .await;
    let path = env.pipeline_with("[\"public.docs\"]", "", &kafka_sink(20_000, store));
    let mut run = env.start(&path);
    env.wait_equal(&["docs"], Duration::from_secs(60)).await;
    // Random text does not compress: a 60 kB body is over the producer's 20 kB limit.
    env.on_source(
        "INSERT INTO docs SELECT 100, string_agg(md5(random()::text), '') FROM generate_series(1, 2000);
         INSERT INTO docs VALUES (21, 'after the big one');",
    )
    .await;
    env.on_source("UPDATE docs SET body = 'shrunk' WHERE id = 100; UPDATE docs SET body = 'changed' WHERE id = 1;")
        .await;
    env.wait_equal(&["docs"], Duration::from_secs(30)).await;

    let topic = format!("{}.public.docs", env.name);
    let mut reader = common::targets::KafkaReader::new(std::slice::from_ref(&topic));
    let key = |id: i32| format!("{{\"id\":{id}}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reader.poll(Duration::from_millis(500));
        let rows = reader.folded.get("public.docs");
        let changed = rows
            .and_then(|r| r.get(&key(1)))
            .is_some_and(|r| r["body"] == "changed");
        if changed && rows.is_some_and(|r| r.contains_key(&key(21))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "other keys did not flow on: {:?}",
            reader.folded
        );
    }
    assert!(
        !reader.folded["public.docs"].contains_key(&key(100)),
        "the oversized row and the change behind it are parked, not sent"
    );
    // The letter of the later change is written after the batch's other messages are out.
    let out = wait_listed(&path, &["sink kafka: 2 parked change(s)", "waiting behind"]).await;
    assert!(out.to_lowercase().contains("size"), "{out}");
    let (code, _, _) = cutover(&["dlq", "list", path.to_str().unwrap()]);
    assert_eq!(code, 1, "parked changes make list exit 1");

    // Raise the limit; replay sends both, in order, while the pipeline runs.
    env.pipeline_with("[\"public.docs\"]", "", &kafka_sink(1_000_000, store));
    replay_expecting(&path, "2 parked change(s) sent, 0 still parked");
    // A later change of the key is sent normally again.
    env.on_source("UPDATE docs SET body = 'final' WHERE id = 100")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reader.poll(Duration::from_millis(500));
        let copy = common::targets::materialize(
            env,
            "kafka",
            "CREATE TABLE docs (id int PRIMARY KEY, body text);",
            &reader.folded,
        )
        .await;
        if contents(&copy, "docs").await == contents(&env.source().await, "docs").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kafka does not equal the source after the replay"
        );
    }
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// Waits until the MongoDB collection of `accounts` holds exactly the source's rows.
async fn wait_mongo_equal(env: &Env, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let folded = common::targets::mongo_rows(&env.name, &["accounts"]).await;
        let ok = common::targets::folded_equal(
            env,
            "mongo",
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);",
            &folded,
            &["accounts"],
            false,
        )
        .await;
        match ok {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_validator_rejection_is_parked_and_replayed_after_the_fix() {
    let env = Env::new("dead_letters_mongo").await;
    env.on_source(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
         INSERT INTO accounts SELECT g, 100, 'n' FROM generate_series(1, 30) g;",
    )
    .await;
    // The target collection refuses negative balances; the source does not.
    let m = common::targets::MessageServices::get();
    let mongo = mongodb::Client::with_uri_str(&m.mongo_url).await.unwrap();
    let db = mongo.database(&env.name);
    db.run_command(mongodb::bson::doc! {
        "create": "public.accounts",
        "validator": { "balance": { "$gte": 0 } },
    })
    .await
    .unwrap();
    let sink = format!(
        "\n[[sink]]\nkind = \"mongodb\"\nname = \"mongo\"\nurl = \"{}\"\ndatabase = \"{}\"\ndead_letter_file = \"mongo-dead-letters.jsonl\"\n",
        m.mongo_url, env.name
    );
    let path = env.pipeline_with("[\"public.accounts\"]", "", &sink);
    let mut run = env.start(&path);
    wait_mongo_equal(&env, Duration::from_secs(60)).await;

    env.on_source(
        "UPDATE accounts SET balance = -5 WHERE id = 7;
         UPDATE accounts SET balance = balance + 1 WHERE id <> 7;
         INSERT INTO accounts VALUES (31, 1, 'new');",
    )
    .await;
    // Everything but document 7 arrives; then a later change of 7 waits behind the refused one.
    wait_listed(&path, &["sink mongo: 1 parked change(s)"]).await;
    env.on_source("UPDATE accounts SET note = 'later' WHERE id = 7; UPDATE accounts SET note = 'x' WHERE id = 8;")
        .await;
    wait_listed(
        &path,
        &["sink mongo: 2 parked change(s)", "waiting behind", "key 7"],
    )
    .await;
    let (code, _, _) = cutover(&["dlq", "list", path.to_str().unwrap()]);
    assert_eq!(code, 1, "parked changes make list exit 1");
    let folded = common::targets::mongo_rows(&env.name, &["accounts"]).await;
    let rows = &folded["public.accounts"];
    assert_eq!(rows.len(), 31, "every other document arrived");
    let seven = rows
        .values()
        .find(|r| r["id"] == 7)
        .expect("document 7 keeps its last good state");
    assert_eq!(seven["balance"], 100);

    // Fix the target (drop the validator); replay while running: the target equals the source.
    db.run_command(mongodb::bson::doc! { "collMod": "public.accounts", "validator": {} })
        .await
        .unwrap();
    replay_expecting(&path, "sink mongo: 2 parked change(s) sent, 0 still parked");
    env.on_source("UPDATE accounts SET note = 'after replay' WHERE id = 7")
        .await;
    wait_mongo_equal(&env, Duration::from_secs(30)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_streams_limit_is_parked_and_sent_after_the_fix() {
    let env = Env::new("dead_letters_nats").await;
    env.on_source(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs SELECT g, 'small ' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let m = common::targets::MessageServices::get();
    let sink = format!(
        "\n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"{}\"\ndead_letter_file = \"nats-dead-letters.jsonl\"\n",
        m.nats_url
    );
    let path = env.pipeline_with("[\"public.docs\"]", "", &sink);
    let mut run = env.start(&path);
    env.wait_equal(&["docs"], Duration::from_secs(60)).await;
    let stream_name = format!("cutover_{}", env.name);
    let schema = "CREATE TABLE docs (id int PRIMARY KEY, body text);";
    let mut reader = common::targets::NatsReader::new(&stream_name).await;
    common::targets::wait_nats_equal(
        &env,
        &mut reader,
        schema,
        &["docs"],
        Duration::from_secs(30),
    )
    .await;

    // The stream now refuses messages over 4 kB.
    let js = async_nats::jetstream::new(async_nats::connect(&m.nats_url).await.unwrap());
    let set_limit = |limit: i32| {
        let js = js.clone();
        let name = stream_name.clone();
        async move {
            let mut stream = js.get_stream(&name).await.unwrap();
            let mut config = stream.info().await.unwrap().config.clone();
            config.max_message_size = limit;
            js.update_stream(config).await.unwrap();
        }
    };
    set_limit(4000).await;
    env.on_source(
        "INSERT INTO docs SELECT 100, string_agg(md5(g::text), '') FROM generate_series(1, 300) g;
         INSERT INTO docs VALUES (11, 'after the big one');",
    )
    .await;
    wait_listed(&path, &["sink nats: 1 parked change(s)"]).await;
    env.on_source(
        "UPDATE docs SET body = 'shrunk' WHERE id = 100; UPDATE docs SET body = 'x' WHERE id = 2;",
    )
    .await;
    wait_listed(&path, &["sink nats: 2 parked change(s)", "waiting behind"]).await;
    // Every other key flowed on: row 2's change and row 11 are in the stream, 100 is not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reader.poll().await;
        let rows = reader.folded.get("public.docs");
        let two = rows
            .and_then(|r| r.get("{\"id\":2}"))
            .is_some_and(|r| r["body"] == "x");
        if two && rows.is_some_and(|r| r.contains_key("{\"id\":11}")) {
            assert!(
                !rows.unwrap().contains_key("{\"id\":100}"),
                "the refused row is parked"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", reader.folded);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Lift the limit, replay while running: the stream equals the source.
    set_limit(-1).await;
    replay_expecting(&path, "sink nats: 2 parked change(s) sent, 0 still parked");
    env.on_source("UPDATE docs SET body = 'final' WHERE id = 100")
        .await;
    common::targets::wait_nats_equal(
        &env,
        &mut reader,
        schema,
        &["docs"],
        Duration::from_secs(30),
    )
    .await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
