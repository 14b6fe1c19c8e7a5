//! Transform rules end to end, on real servers: a renamed, filtered, masked table with derived
//! columns, copied and streamed into PostgreSQL and (routed) into Kafka; rows moving into and
//! out of the filter; verify on the shaped targets; rate limits held over a sustained run.

use crate::common;

use std::time::{Duration, Instant};

use common::targets::{materialize, KafkaReader, MessageServices};
use common::{contents, cutover, Env};

/// What the target's `people` table must hold, computed from the source with SQL: every
/// column but the hashed email (checked separately).
const EXPECTED: &str = "SELECT ROW(id, tenant, last, bio, first || ' ' || last, 'legacy')::text \
     FROM customers WHERE tenant = 1 ORDER BY id";
const ON_TARGET: &str =
    "SELECT ROW(id, tenant, surname, bio, full_name, origin)::text FROM people ORDER BY id";

async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .map(|r| r.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_else(|_| vec!["<missing>".into()])
}

async fn wait_shaped(env: &Env, timeout: Duration) {
    let src = env.source().await;
    let tgt = env.target().await;
    let deadline = Instant::now() + timeout;
    loop {
        let want = rows(&src, EXPECTED).await;
        let have = rows(&tgt, ON_TARGET).await;
        if want == have {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "people differs from the shaped source:\nwant {want:?}\nhave {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Masked emails: 64 hex characters, never the email itself, one hash per distinct email
/// (customers 1 and 2 share one).
async fn check_hashes(env: &Env) {
    let src = env.source().await;
    let tgt = env.target().await;
    let pairs = rows(&tgt, "SELECT id || ' ' || email FROM people ORDER BY id").await;
    let emails = rows(
        &src,
        "SELECT id || ' ' || email FROM customers WHERE tenant = 1 ORDER BY id",
    )
    .await;
    assert_eq!(pairs.len(), emails.len());
    let mut by_email = std::collections::HashMap::new();
    for (p, e) in pairs.iter().zip(&emails) {
        let (id, hash) = p.split_once(' ').unwrap();
        let (id2, email) = e.split_once(' ').unwrap();
        assert_eq!(id, id2);
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hash}"
        );
        assert_ne!(hash, email);
        if let Some(prev) = by_email.insert(email.to_string(), hash.to_string()) {
            assert_eq!(prev, hash, "equal emails hash equally");
        }
    }
    let distinct: std::collections::HashSet<_> = by_email.values().collect();
    assert_eq!(distinct.len(), by_email.len(), "distinct emails hash apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_tables_copy_stream_and_verify_in_postgres_and_kafka() {
    let env = Env::new("transforms").await;
    env.on_source(
        "CREATE TABLE customers (id bigint PRIMARY KEY, email text, tenant int, first text,
             last text, ssn text, bio text);
         ALTER TABLE customers REPLICA IDENTITY FULL;
         INSERT INTO customers SELECT g, 'user' || (g % 7) || '@example.com', g % 2, 'First' || g,
             'Last' || g, 'ssn-' || g, CASE WHEN g % 5 = 0 THEN repeat(md5(g::text), 400) ELSE 'short' END
           FROM generate_series(1, 200) g;
         UPDATE customers SET email = 'shared@example.com' WHERE id IN (1, 3);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id bigint, note text);
         INSERT INTO orders SELECT g, g, 'n' FROM generate_series(1, 20) g;",
    )
    .await;
    let m = MessageServices::get();
    let topic = format!("{}-people", env.name);
    let extra = r#"[masking]
key = "a-test-secret-of-enough-length"

[[transform]]
table = "public.customers"
rename = "people"
filter = "tenant = 1"
mask = { email = "hash" }
exclude_columns = ["ssn", "first"]
rename_columns = { last = "surname" }
add_columns = [
  { name = "full_name", template = "{first} {last}" },
  { name = "origin", value = "legacy" },
]

[[transform]]
table = "public.orders"
exclude = true
"#;
    let kafka = format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\n\n[[sink.transform]]\ntable = \"public.people\"\nroute = \"{topic}\"\n",
        m.kafka_brokers
    );
    let path = env.pipeline_with("[\"public.customers\", \"public.orders\"]", extra, &kafka);
    let (code, out, err) = cutover(&["check", path.to_str().unwrap()]);
    assert!(out.contains("transform rules fit"), "{code} {out} {err}");

    let mut run = env.start(&path);
    wait_shaped(&env, Duration::from_secs(60)).await;
    // Streamed: inserts in and out of the filter, rows moving in (one with a TOASTed bio the
    // update does not touch) and out, a delete, a key column that is renamed nowhere.
    env.on_source(
        "INSERT INTO customers VALUES (1001, 'new@example.com', 1, 'New', 'In', 'x', 'b'),
                                      (1002, 'no@example.com', 0, 'New', 'Out', 'x', 'b');
         UPDATE customers SET tenant = 1 WHERE id IN (10, 12);   -- 10 has a TOASTed bio
         UPDATE customers SET tenant = 0 WHERE id IN (1, 5);      -- out of the filter
         UPDATE customers SET last = 'Renamed' WHERE id = 7;
         UPDATE customers SET email = 'moved@example.com' WHERE id = 9;
         DELETE FROM customers WHERE id = 11;
         INSERT INTO orders VALUES (100, 1, 'excluded');",
    )
    .await;
    wait_shaped(&env, Duration::from_secs(30)).await;
    check_hashes(&env).await;
    let tgt = env.target().await;
    assert_eq!(
        contents(&tgt, "orders").await,
        vec!["<table missing>".to_string()],
        "an excluded table never reaches the target"
    );

    // Kafka, routed to its own topic, holds the same rows as the PostgreSQL target.
    let mut reader = KafkaReader::new(std::slice::from_ref(&topic));
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = rows(&tgt, "SELECT ROW(id, email, tenant, surname, bio, full_name, origin)::text FROM people ORDER BY id").await;
    loop {
        reader.poll(Duration::from_millis(500));
        let copy = materialize(
            &env,
            "kafka",
            "CREATE TABLE people (id bigint PRIMARY KEY, email text, tenant int, surname text, bio text, full_name text, origin text);",
            &reader.folded,
        )
        .await;
        let have = rows(&copy, "SELECT ROW(id, email, tenant, surname, bio, full_name, origin)::text FROM people ORDER BY id").await;
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kafka holds {} rows, the target {}",
            have.len(),
            want.len()
        );
    }

    // verify shapes the source the same way: no drift on either target...
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "verify on shaped targets: {out}\n{err}");
    // ...and finds drift injected into the shaped PostgreSQL target.
    tgt.batch_execute("UPDATE people SET surname = 'tampered' WHERE id = 3")
        .await
        .unwrap();
    let (code, out, _) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("\"id\": 3") || out.contains("\"id\":3"),
        "{out}"
    );
    assert!(out.contains("surname"), "{out}");
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap(), "--repair"]);
    assert!(code == 0, "repair through the rules: {out}\n{err}");
    wait_shaped(&env, Duration::from_secs(5)).await;

    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_rules_are_refused_by_check_with_their_place() {
    let env = Env::new("transforms_bad").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, a text, b text);")
        .await;
    for (rules, expect) in [
        (
            "[[transform]]\ntable = \"public.t\"\nmask = { nope = \"null\" }\n",
            "line 4",
        ),
        (
            "[[transform]]\ntable = \"public.t\"\nrename_columns = { a = \"c\", b = \"c\" }\n",
            "both renamed",
        ),
        (
            "[[transform]]\ntable = \"public.t\"\nmask = { a = \"null\" }\nfilter = \"a = 'x'\"\n",
            "masked",
        ),
        (
            "[[transform]]\ntable = \"public.t\"\nrename_columns = { a = \"b\" }\n",
            "would be named \\\"b\\\"",
        ),
    ] {
        let path = env.pipeline("[\"public.t\"]", rules);
        let (code, out, err) = cutover(&["check", path.to_str().unwrap()]);
        let all = format!("{out}{err}");
        assert_ne!(code, 0, "{rules} passed: {all}");
        let expect = expect.replace("\\\"", "\"");
        assert!(all.contains(&expect), "{rules}: {all}");
        assert!(all.contains("pipeline.toml, line"), "{all}");
        assert!(!all.contains("panicked"), "{all}");
    }
}

/// Seconds since midnight of a JSON log line's timestamp.
fn log_time(line: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let ts = v["timestamp"].as_str().unwrap();
    let time = &ts[ts.find('T').unwrap() + 1..ts.len() - 1];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_within_ten_percent() {
    let env = Env::new("rate_limits").await;
    env.on_source(
        "CREATE TABLE r (id int PRIMARY KEY, v text);
         INSERT INTO r SELECT g, 'v' FROM generate_series(1, 6000) g;",
    )
    .await;
    let path = env.pipeline_with(
        "[\"public.r\"]",
        "[snapshot]\nrows_per_s = 2000\n",
        "max_changes_per_s = 1000\n",
    );
    let mut run = env.start(&path);
    env.wait_equal(&["public.r"], Duration::from_secs(60)).await;
    run.wait_log("streaming changes", Duration::from_secs(10))
        .await;
    let log = run.log_text();
    let at = |text: &str| log_time(log.lines().find(|l| l.contains(text)).unwrap());
    // 6000 rows at 2000 rows/s: 3 s.
    let copy = at("table copied") - at("copying tables");
    let rate = 6000.0 / copy;
    assert!(
        (1800.0..=2200.0).contains(&rate),
        "snapshot read {rate:.0} rows/s for a limit of 2000"
    );

    // 5000 changes in their own transactions at 1000 changes/s: the rate at which they land
    // on the target, from the first sample that saw some to the first that saw them all.
    env.on_source(
        "DO $$ BEGIN FOR i IN 1..5000 LOOP UPDATE r SET v = 'w' WHERE id = i; COMMIT; END LOOP; END $$;",
    )
    .await;
    let target = env.target().await;
    let mut first: Option<(Instant, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (at, done) = loop {
        let n: i64 = target
            .query_one("SELECT count(*) FROM r WHERE v = 'w'", &[])
            .await
            .unwrap()
            .get(0);
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n == 5000 {
            break (now, n);
        }
        assert!(now < deadline, "only {n} of 5000 changes arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (t0, n0) = first.unwrap();
    let rate = (done - n0) as f64 / (at - t0).as_secs_f64();
    assert!(
        (900.0..=1100.0).contains(&rate),
        "the sink took {rate:.0} changes/s for a limit of 1000"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_takes_only_the_tables_it_lists() {
    let env = Env::new("transforms_tables").await;
    env.on_source(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
         INSERT INTO a VALUES (1, 'a'); INSERT INTO b VALUES (1, 'b');",
    )
    .await;
    let path = env.pipeline_with("[\"public.*\"]", "", "tables = [\"public.a\"]\n");
    let mut run = env.start(&path);
    env.wait_equal(&["a"], Duration::from_secs(60)).await;
    env.on_source("INSERT INTO a VALUES (2, 'a2'); INSERT INTO b VALUES (2, 'b2');")
        .await;
    env.wait_equal(&["a"], Duration::from_secs(30)).await;
    let tgt = env.target().await;
    assert_eq!(
        contents(&tgt, "b").await,
        vec!["<table missing>".to_string()]
    );
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "verify compares only the tables the sink takes: {out}{err}"
    );
    assert!(
        out.contains("public.a") && !out.contains("public.b"),
        "{out}"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
