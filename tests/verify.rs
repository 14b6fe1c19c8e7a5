//! `cutover verify` against real PostgreSQL clusters: every kind of drift found with its exact
//! key, no false positives on every column type, bisection of large differing ranges, a live
//! check under a write workload, a property test with random tables and mutations, `--repair`,
//! and bad input.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cutover, workload, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

/// A table with one column of many types and edge values (NULL, empty, extremes, NaN,
/// infinities, Unicode outside the BMP, large values).
const ALL_TYPES: &str = "
CREATE TABLE alltypes (
    id int PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, n numeric, n2 numeric(20,4),
    m money, tx text, vc varchar(10), c char(3), b bytea, bo bool, d date, tm time, ttz timetz,
    ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, ip inet, cidr cidr,
    mac macaddr, ia int[], ta text[], na numeric[], tsa timestamptz[]);
INSERT INTO alltypes VALUES
 (1, 32767, 9223372036854775807, 'NaN', 'Infinity', 'NaN', 123456.7891, 92233720368547758.07,
  '', 'x', 'ab', '\\x00ff', true, 'infinity', '24:00:00', '23:59:59.999999+14:59',
  '294276-12-31 23:59:59.999999', '-infinity', '178000000 years', '00000000-0000-0000-0000-000000000000',
  '{\"b\": 1,  \"a\": [1.5, null]}', '{\"b\": 1, \"a\": {\"c\": \"😀\"}}', '::1', '10.0.0.0/8',
  '08:00:2b:01:02:03', '{{1,2},{3,NULL}}', '{\"\",NULL,\"😀\"}', '{1.50,NaN,-0.001}',
  '{\"2024-01-01 00:00:00.000001+00\"}'),
 (2, -32768, -9223372036854775808, '-Infinity', '-0', '-1e-30', 0, -0.01,
  repeat('😀 large value ', 80000), NULL, NULL, decode(repeat('ab', 600000), 'hex'), false,
  '4713-01-01 BC', '00:00:00', '00:00:00-15:59', '4713-01-01 00:00:00 BC', '2024-02-29 12:30:00.123456+00',
  '-1 mons -2 days -00:00:00.000001', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '[]', '192.168.1.1/24',
  '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', '{}', '{}', '{}', NULL),
 (3, NULL, NULL, NULL, NULL, 1.50, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '2024-05-01 12:30:00.654321', '2024-05-01 12:30:00.654321+02', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL);
";

/// A table the write workload never touches, so drift injected there is never overwritten.
const LEDGER: &str = "
CREATE TABLE ledger (id bigint PRIMARY KEY, account text NOT NULL, amount numeric(12,2));
INSERT INTO ledger SELECT g, 'acct-' || (g % 97), g * 0.25 FROM generate_series(1, 3000) g;
";

fn verify_json(pipeline: &std::path::Path, extra: &[&str]) -> (i32, Json, String) {
    let mut args = vec!["verify", pipeline.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cutover(&args);
    let json = serde_json::from_str(&out).unwrap_or(Json::Null);
    (code, json, err)
}

fn table<'a>(report: &'a Json, name: &str) -> &'a Json {
    report["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("no tables in {report}"))
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report}"))
}

fn keys(t: &Json, kind: &str) -> BTreeSet<String> {
    t[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {t}"))
        .iter()
        .map(|k| match k {
            Json::String(s) => s.clone(),
            other => other["key"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn drift(t: &Json) -> u64 {
    ["missing_count", "extra_count", "different_count"]
        .iter()
        .map(|k| t[k].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_drift_is_found_with_its_exact_key_and_repaired() {
    let env = Env::new("verify_kinds").await;
    env.on_source(workload::SCHEMA).await;
    env.on_source(ALL_TYPES).await;
    workload::prefill(&env.source().await, 2000).await;
    let path = env.pipeline("[\"public.*\"]", "");
    let mut run = env.start(&path);
    env.wait_equal(
        &["customers", "orders", "items", "alltypes"],
        Duration::from_secs(90),
    )
    .await;
    assert!(run.terminate().success(), "{}", run.log_text());

    // Identical data of every type: no false positive.
    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    for t in report["tables"].as_array().unwrap() {
        assert_eq!(drift(t), 0, "{t}");
        assert_eq!(t["source_rows"], t["target_rows"], "{t}");
    }
    assert_eq!(table(&report, "public.customers")["source_rows"], 2000);

    let target = env.target().await;
    target
        .batch_execute(
            "DELETE FROM customers WHERE id = 10;
             INSERT INTO customers (id, name) VALUES (999999, 'ghost');
             UPDATE customers SET name = 'changed' WHERE id = 20;
             UPDATE customers SET balance = NULL WHERE id = 21;
             UPDATE alltypes SET n = 1.5 WHERE id = 3;
             UPDATE alltypes SET ts = date_trunc('milliseconds', ts) WHERE id = 3;
             UPDATE alltypes SET tstz = date_trunc('milliseconds', tstz), tx = tx || '!' WHERE id = 2;
             UPDATE items SET line = 9 WHERE order_id = 11 AND line = 1;",
        )
        .await
        .unwrap();
    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 1, "{report:#}\n{err}");
    let customers = table(&report, "public.customers");
    assert_eq!(keys(customers, "missing"), set(&["{\"id\": 10}"]));
    assert_eq!(keys(customers, "extra"), set(&["{\"id\": 999999}"]));
    assert_eq!(
        keys(customers, "different"),
        set(&["{\"id\": 20}", "{\"id\": 21}"])
    );
    let changed: Vec<&str> = customers["different"][0]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["name"], "{customers}");
    assert_eq!(
        customers["different"][0]["columns"][0]["target"],
        "\"changed\""
    );
    let all = table(&report, "public.alltypes");
    assert_eq!(keys(all, "different"), set(&["{\"id\": 2}", "{\"id\": 3}"]));
    let columns = |i: usize| -> Vec<String> {
        all["different"][i]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["column"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(columns(0), ["tx", "tstz"], "{all}");
    assert_eq!(
        columns(1),
        ["n", "ts"],
        "numeric scale and timestamp precision: {all}"
    );
    let items = table(&report, "public.items");
    assert_eq!(
        keys(items, "missing"),
        set(&["{\"order_id\": 11, \"line\": 1}"])
    );
    assert_eq!(
        keys(items, "extra"),
        set(&["{\"order_id\": 11, \"line\": 9}"])
    );
    assert_eq!(drift(table(&report, "public.orders")), 0);

    // --table narrows the check; the text report names the keys too.
    let (code, out, _) = cutover(&["verify", path.to_str().unwrap(), "--table", "public.items"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("missing    {\"order_id\": 11, \"line\": 1}"),
        "{out}"
    );
    assert!(!out.contains("customers"), "{out}");

    // --repair sends the source's rows through the sink and checks again.
    let (code, report, err) = verify_json(&path, &["--repair"]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(table(&report, "public.customers")["repaired"], 4);
    let (code, report, _) = verify_json(&path, &[]);
    assert_eq!(code, 0, "{report:#}");
    env.wait_equal(
        &["customers", "orders", "items", "alltypes"],
        Duration::from_secs(5),
    )
    .await;
    env.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_narrows_a_large_differing_range_down_to_its_rows() {
    let env = Env::new("verify_bisect").await;
    let ddl = "CREATE TABLE wide (k text PRIMARY KEY, v int NOT NULL);
               INSERT INTO wide SELECT 'key-' || lpad(g::text, 6, '0'), g FROM generate_series(2, 20000, 2) g;
               ANALYZE wide;";
    env.on_source(ddl).await;
    env.target().await.batch_execute(ddl).await.unwrap();
    // 1500 extra keys inside one region, and two changed values elsewhere.
    env.target()
        .await
        .batch_execute(
            "INSERT INTO wide SELECT 'key-' || lpad(g::text, 6, '0'), g FROM generate_series(5001, 7999, 2) g;
             UPDATE wide SET v = -1 WHERE k IN ('key-000100', 'key-019998');",
        )
        .await
        .unwrap();
    let path = env.pipeline(
        "[\"public.wide\"]",
        "[verify]\nrows_per_range = 1000\nkeep_rows = 100",
    );
    let (code, report, err) = verify_json(&path, &["--max-keys", "5000"]);
    assert_eq!(code, 1, "{report:#}\n{err}");
    let t = table(&report, "public.wide");
    let expected: BTreeSet<String> = (5001..8000)
        .step_by(2)
        .map(|g| format!("{{\"k\": \"key-{g:06}\"}}"))
        .collect();
    assert_eq!(keys(t, "extra"), expected);
    assert_eq!(
        keys(t, "different"),
        set(&["{\"k\": \"key-000100\"}", "{\"k\": \"key-019998\"}"])
    );
    assert_eq!(t["missing_count"], 0);
    assert_eq!(t["source_rows"], 10000);
    assert_eq!(t["target_rows"], 11500);
    assert!(
        t["range_reads"].as_u64().unwrap() > t["ranges"].as_u64().unwrap(),
        "a range holding more rows than keep_rows must be split: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_check_under_writes_reports_no_drift_and_finds_injected_drift() {
    let env = Env::new("verify_live").await;
    env.on_source(workload::SCHEMA).await;
    env.on_source(LEDGER).await;
    workload::prefill(&env.source().await, 2000).await;
    let path = env.pipeline("[\"public.*\"]", "[verify]\nsettle_timeout_s = 30");
    let mut run = env.start(&path);
    env.wait_equal(&["customers", "ledger"], Duration::from_secs(90))
        .await;
    let load = workload::Workload::start(env.source().await, 7);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (code, report, err) = verify_json(&path, &[]);
    assert!(code == 0 || code == 1, "{report:#}\n{err}");
    assert_eq!(report["pipeline_running"], true, "{report:#}");
    for t in report["tables"].as_array().unwrap() {
        assert_eq!(drift(t), 0, "no drift while changes flow: {t}");
    }

    env.target()
        .await
        .batch_execute("UPDATE ledger SET amount = amount + 1 WHERE id = 42; DELETE FROM ledger WHERE id = 2999;")
        .await
        .unwrap();
    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 1, "{report:#}\n{err}");
    let ledger = table(&report, "public.ledger");
    assert_eq!(keys(ledger, "different"), set(&["{\"id\": 42}"]));
    assert_eq!(keys(ledger, "missing"), set(&["{\"id\": 2999}"]));
    for name in ["public.customers", "public.orders", "public.items"] {
        assert_eq!(drift(table(&report, name)), 0, "{report:#}");
    }
    let committed = load.stop().await;
    assert!(
        committed > 50,
        "the workload ran ({committed} transactions)"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// Random tables, random mutations of the target: the checker reports exactly the mutated keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_random_tables_and_mutations_report_exactly_the_mutated_keys() {
    let columns = [
        ("int4", "(random() * 1000)::int"),
        ("text", "md5(random()::text)"),
        ("numeric(10,3)", "round((random() * 1000)::numeric, 3)"),
        ("float8", "random()"),
        ("timestamptz", "now() - random() * interval '1000 days'"),
        ("jsonb", "jsonb_build_object('r', random())"),
        ("bool", "random() > 0.5"),
        ("uuid", "md5(random()::text)::uuid"),
    ];
    let key_kinds = [
        ("bigint", "g"),
        ("text", "'k' || g"),
        ("uuid", "md5(g::text)::uuid"),
        ("numeric", "g / 8.0"),
    ];
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let env = Env::new("verify_prop").await;
        let (key_type, key_expr) = key_kinds[seed as usize % key_kinds.len()];
        let ncols = rng.gen_range(1..=4);
        let chosen: Vec<_> = (0..ncols)
            .map(|_| columns[rng.gen_range(0..columns.len())])
            .collect();
        let rows = rng.gen_range(200..3000);
        let defs: Vec<String> = chosen
            .iter()
            .enumerate()
            .map(|(i, (ty, _))| format!("c{i} {ty}"))
            .collect();
        let exprs: Vec<String> = chosen.iter().map(|(_, e)| e.to_string()).collect();
        env.on_source(&format!(
            "CREATE TABLE r (k {key_type} PRIMARY KEY, {});
             INSERT INTO r SELECT {key_expr}, {} FROM generate_series(1, {rows}) g;",
            defs.join(", "),
            exprs.join(", ")
        ))
        .await;
        // The target gets the very same rows (text form round-trips every type used here).
        let source = env.source().await;
        let target = env.target().await;
        target
            .batch_execute(&format!(
                "CREATE TABLE r (k {key_type} PRIMARY KEY, {})",
                defs.join(", ")
            ))
            .await
            .unwrap();
        let dump: String = source
            .query_one("SELECT string_agg(format('(%L, %s)', k, (SELECT string_agg(quote_nullable(v), ', ') FROM jsonb_each_text(to_jsonb(r) - 'k') x(n, v))), ', ') FROM r", &[])
            .await
            .unwrap()
            .get(0);
        let cols: Vec<String> = (0..ncols).map(|i| format!("c{i}")).collect();
        // jsonb_each_text orders keys by name; c0..c3 sort the same as their positions.
        target
            .batch_execute(&format!(
                "INSERT INTO r (k, {}) VALUES {dump}",
                cols.join(", ")
            ))
            .await
            .unwrap();
        let all_keys: Vec<String> = source
            .query("SELECT k::text FROM r", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut missing = BTreeSet::new();
        let mut different = BTreeSet::new();
        let mut extra = BTreeSet::new();
        let mutations = rng.gen_range(1..15);
        for _ in 0..mutations {
            let k = &all_keys[rng.gen_range(0..all_keys.len())];
            if missing.contains(k) || different.contains(k) {
                continue;
            }
            match rng.gen_range(0..3) {
                0 => {
                    target
                        .execute(&format!("DELETE FROM r WHERE k = '{k}'"), &[])
                        .await
                        .unwrap();
                    missing.insert(k.clone());
                }
                1 => {
                    target
                        .execute(
                            &format!("UPDATE r SET c0 = {} WHERE k = '{k}' AND c0 IS DISTINCT FROM ({0})", chosen[0].1.replace("random()", "0.123")),
                            &[],
                        )
                        .await
                        .unwrap();
                    let changed: i64 = target
                        .query_one(&format!("SELECT count(*) FROM r WHERE k = '{k}'"), &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(changed, 1);
                    different.insert(k.clone());
                }
                _ => {
                    let g = 1_000_000 + rng.gen_range(0..1_000_000);
                    let new_key: String = target
                        .query_one(&format!("INSERT INTO r (k) SELECT {key_expr} FROM (SELECT {g} AS g) s ON CONFLICT DO NOTHING RETURNING k::text"), &[])
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or_default();
                    if !new_key.is_empty() {
                        extra.insert(new_key);
                    }
                }
            }
        }
        // An UPDATE that set the same value changes nothing: keep only real differences.
        let mut really_different = BTreeSet::new();
        for k in &different {
            let a: String = source
                .query_one(&format!("SELECT r::text FROM r WHERE k = '{k}'"), &[])
                .await
                .unwrap()
                .get(0);
            let b: String = target
                .query_one(&format!("SELECT r::text FROM r WHERE k = '{k}'"), &[])
                .await
                .unwrap()
                .get(0);
            if a != b {
                really_different.insert(k.clone());
            }
        }
        let path = env.pipeline(
            "[\"public.r\"]",
            "[verify]\nrows_per_range = 300\nkeep_rows = 200",
        );
        let (code, report, err) = verify_json(&path, &["--max-keys", "1000"]);
        let t = table(&report, "public.r");
        let found = |kind: &str| -> BTreeSet<String> {
            keys(t, kind)
                .into_iter()
                .map(|k| {
                    let v: Json = serde_json::from_str(&k).unwrap();
                    match &v["k"] {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                })
                .collect()
        };
        let normalise = |keys: &BTreeSet<String>| -> BTreeSet<String> {
            keys.iter()
                .map(|k| match key_type {
                    "numeric" => k.trim_end_matches('0').trim_end_matches('.').to_string(),
                    _ => k.clone(),
                })
                .collect()
        };
        let case = format!(
            "seed {seed}: key {key_type}, columns {chosen:?}, {rows} rows\n{report:#}\n{err}"
        );
        assert_eq!(normalise(&found("missing")), normalise(&missing), "{case}");
        assert_eq!(normalise(&found("extra")), normalise(&extra), "{case}");
        assert_eq!(
            normalise(&found("different")),
            normalise(&really_different),
            "{case}"
        );
        let expect_code = if missing.is_empty() && extra.is_empty() && really_different.is_empty() {
            0
        } else {
            1
        };
        assert_eq!(code, expect_code, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_with_exit_code_2() {
    let env = Env::new("verify_bad").await;
    env.on_source(
        "CREATE TABLE only_here (id int PRIMARY KEY); CREATE TABLE keyed (id int PRIMARY KEY, v text);",
    )
    .await;
    env.target()
        .await
        .batch_execute("CREATE TABLE keyed (id text PRIMARY KEY, v text);")
        .await
        .unwrap();
    let path = env.pipeline("[\"public.only_here\"]", "");
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("table public.only_here does not exist on the target"),
        "{err}"
    );

    let path = env.pipeline("[\"public.keyed\"]", "");
    let (code, _, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("key column id of public.keyed is integer on the source but text"),
        "{err}"
    );

    let (code, _, err) = cutover(&["verify", path.to_str().unwrap(), "--table", "public.nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("--table public.nope matches none"), "{err}");

    // An unreachable target, with a password in its URL that must not be printed.
    let bad = env.dir.join("unreachable.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"verify_bad\"\n[source]\nurl = \"{}\"\ntables = [\"public.keyed\"]\n[[sink]]\nkind = \"postgres\"\nname = \"gone\"\nurl = \"postgres://app:s3cret-pw@127.0.0.1:1/x\"\n",
            env.source_url
        ),
    )
    .unwrap();
    let (code, out, err) = cutover(&["verify", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot connect to the target"), "{err}");
    assert!(
        !err.contains("s3cret-pw") && !out.contains("s3cret-pw"),
        "{err}"
    );

    let (code, _, err) = cutover(&["verify", "/nonexistent/pipeline.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read pipeline file"), "{err}");
}

/// Kafka (with tombstones) and NATS targets, folded by key:
/// equal to the source while the pipeline runs, and drift injected into each is found there
/// and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_targets_are_folded_and_compared_by_key() {
    use common::targets::{self, KafkaReader, MessageServices, NatsReader};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let env = Env::new("verify_msgs").await;
    env.on_source(workload::SCHEMA).await;
    workload::prefill(&env.source().await, 300).await;
    let m = MessageServices::get();
    let sinks = format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\ntombstones = true\n\
         \n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"{}\"\n",
        m.kafka_brokers, m.nats_url
    );
    let path = env.pipeline_with("[\"public.*\"]", "", &sinks);
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    let load = workload::Workload::start_paced(env.source().await, 11, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;

    // Independent of the checker: the test's own fold of both targets equals the source.
    let tables = ["customers", "orders", "items"];
    let topics: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.public.{t}", env.name))
        .collect();
    let mut kafka = KafkaReader::new(&topics);
    let mut nats = NatsReader::new(&format!("cutover_{}", env.name)).await;
    targets::wait_nats_equal(
        &env,
        &mut nats,
        workload::SCHEMA,
        &tables,
        Duration::from_secs(60),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        kafka.poll(Duration::from_millis(500));
        match targets::folded_equal(
            &env,
            "kafka",
            workload::SCHEMA,
            &kafka.folded,
            &tables,
            false,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
    }
    env.wait_equal(&tables, Duration::from_secs(30)).await;

    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    let per_sink = |report: &Json, sink: &str, table: &str| -> Json {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["sink"] == sink && t["table"] == table)
            .cloned()
            .unwrap_or_else(|| panic!("{sink} {table} not in {report:#}"))
    };
    for sink in ["target", "kafka", "nats"] {
        let t = per_sink(&report, sink, "public.customers");
        assert!(t["source_rows"].as_u64().unwrap() > 250, "{t}");
        assert_eq!(t["source_rows"], t["target_rows"], "{t}");
    }

    // Drift in Kafka only: a tombstone for customer 6. In NATS only: customer 5 rewritten.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &m.kafka_brokers)
        .create()
        .unwrap();
    let partition = kafka_partition_of(&mut kafka, "{\"id\":6}");
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&topics[0])
                .key("{\"id\":6}")
                .partition(partition),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let client = async_nats::connect(m.nats_url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let forged = serde_json::json!({
        "op": "update", "table": "public.customers", "key": {"id": 5},
        "row": {"id": 5, "name": "forged"}, "lsn": "0/0", "ordinal": 0, "txid": 0
    });
    js.publish(
        format!("{}.public.customers", env.name),
        serde_json::to_vec(&forged).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 1, "{report:#}\n{err}");
    assert_eq!(report["pipeline_running"], true);
    let k = per_sink(&report, "kafka", "public.customers");
    assert_eq!(keys(&k, "missing"), set(&["{\"id\": 6}"]), "{k}");
    assert_eq!(drift(&k), 1, "{k}");
    let n = per_sink(&report, "nats", "public.customers");
    assert_eq!(keys(&n, "different"), set(&["{\"id\": 5}"]), "{n}");
    assert_eq!(drift(&n), 1, "{n}");
    assert_eq!(n["different"][0]["columns"][0]["column"], "name", "{n}");
    assert_eq!(
        n["different"][0]["columns"][0]["target"], "\"forged\"",
        "{n}"
    );
    assert_eq!(
        n["different"][0]["columns"][1]["target"], "(absent)",
        "a field the message lacks is absent, not null: {n}"
    );
    for sink in ["target", "kafka", "nats"] {
        for table in ["public.orders", "public.items"] {
            assert_eq!(drift(&per_sink(&report, sink, table)), 0, "{report:#}");
        }
    }
    assert_eq!(drift(&per_sink(&report, "target", "public.customers")), 0);
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The partition the sink wrote a key to (a tombstone must go to the same one).
fn kafka_partition_of(kafka: &mut common::targets::KafkaReader, key: &str) -> i32 {
    kafka.partition_of("public.customers", key).unwrap_or(0)
}

/// A MongoDB target (SecantusDB): equal to the source at MongoDB's millisecond precision, and a
/// field removed from a document (absent, not null), a changed value and a deleted document
/// are each found with their key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_target_is_compared_at_its_precision() {
    use common::targets::{self, MessageServices};
    let env = Env::new("verify_mongo").await;
    env.on_source(workload::SCHEMA).await;
    workload::prefill(&env.source().await, 200).await;
    // Microseconds the target cannot hold must not count as drift.
    env.on_source("UPDATE customers SET created = created + interval '0.000123 s' WHERE id <= 20")
        .await;
    let m = MessageServices::get();
    let sinks = format!(
        "\n[[sink]]\nkind = \"mongodb\"\nname = \"mongo\"\nurl = \"{}\"\ndatabase = \"{}\"\n",
        m.mongo_url, env.name
    );
    let path = env.pipeline_with("[\"public.customers\"]", "", &sinks);
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(90))
        .await;
    env.on_source(
        "UPDATE customers SET name = 'streamed' WHERE id = 3; DELETE FROM customers WHERE id = 4;",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let folded = targets::mongo_rows(&env.name, &["customers"]).await;
        match targets::folded_equal(
            &env,
            "mongo",
            workload::SCHEMA,
            &folded,
            &["customers"],
            true,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    let mongo = |report: &Json| -> Json {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["sink"] == "mongo")
            .cloned()
            .unwrap()
    };
    assert_eq!(mongo(&report)["target_rows"], 199);

    let client = mongodb::Client::with_uri_str(&m.mongo_url).await.unwrap();
    let coll = client
        .database(&env.name)
        .collection::<mongodb::bson::Document>("public.customers");
    use mongodb::bson::doc;
    coll.update_one(doc! {"_id": 7i64}, doc! {"$unset": {"email": ""}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 8i64}, doc! {"$set": {"score": 1.5}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 9i64}).await.unwrap();
    let (code, report, err) = verify_json(&path, &[]);
    assert_eq!(code, 1, "{report:#}\n{err}");
    let t = mongo(&report);
    assert_eq!(
        keys(&t, "different"),
        set(&["{\"id\": 7}", "{\"id\": 8}"]),
        "{t}"
    );
    assert_eq!(keys(&t, "missing"), set(&["{\"id\": 9}"]), "{t}");
    assert_eq!(t["different"][0]["columns"][0]["column"], "email", "{t}");
    assert_eq!(t["different"][0]["columns"][0]["target"], "(absent)", "{t}");
    assert_eq!(t["different"][1]["columns"][0]["column"], "score", "{t}");
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// `cutover run` with `verify.interval_s` checks while it streams and `cutover status` shows the
/// last result: clean at first, then the drift injected into the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_checks_periodically_and_status_shows_the_last_result() {
    let env = Env::new("verify_periodic").await;
    env.on_source(LEDGER).await;
    let path = env.pipeline("[\"public.ledger\"]", "[verify]\ninterval_s = 1");
    let mut run = env.start(&path);
    run.wait_log("consistency check: no drift", Duration::from_secs(60))
        .await;
    let (code, out, err) = cutover(&["status", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("consistency: no drift at the last check"),
        "{out}"
    );
    assert!(!out.contains("last clean check: never"), "{out}");

    env.target()
        .await
        .batch_execute("UPDATE ledger SET account = 'tampered' WHERE id = 17")
        .await
        .unwrap();
    run.wait_log("consistency check: DRIFT", Duration::from_secs(60))
        .await;
    let (code, out, _) = cutover(&["status", path.to_str().unwrap()]);
    // Drift closes the switch's last-verify gate: NOT READY, exit code 3.
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("FAIL  last verify: DRIFT"), "{out}");
    assert!(
        out.contains("consistency: DRIFT at the last check"),
        "{out}"
    );
    assert!(out.contains("target/public.ledger: 1"), "{out}");
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
