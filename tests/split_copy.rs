//! Large tables copied in key ranges (`snapshot.range_rows`): several connections under one
//! snapshot, each range recorded in the target with its rows, and after a SIGKILL only the
//! ranges the target does not hold are copied again. Real source and target clusters.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Env, Pipeline};

/// The ranges a run's log says it copied, as "index/count" (1-based, as logged), per table.
fn ranges_logged(run: &Pipeline, table: &str) -> BTreeSet<String> {
    run.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "range copied" && v["table"] == table)
        .filter_map(|v| v["range"].as_str().map(str::to_string))
        .collect()
}

/// The ranges of `table` the target has recorded as copied, as "index/count".
async fn ranges_recorded(env: &Env, table: &str, count: usize) -> BTreeSet<String> {
    let (schema, name) = table.split_once('.').unwrap();
    env.target()
        .await
        .query(
            "SELECT range_index FROM cutover.copied_ranges WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3",
            &[&env.name, &schema, &name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}/{count}", r.get::<_, i32>(0) + 1))
        .collect()
}

/// Writes to `table` (inserts, updates and deletes across its key space) until stopped.
fn keep_writing(env: &Env, sql: &'static str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let url = env.source_url.clone();
    let task = tokio::spawn(async move {
        let client = common::connect(&url).await;
        let mut n = 0u64;
        while !flag.load(Ordering::SeqCst) {
            client.batch_execute(sql).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    (stop, task)
}

/// A 400k-row table split into 8 ranges, copied 2 at a time with writes running; the run is
/// SIGKILLed once about half the ranges are in. The restart copies exactly the ranges the
/// target had not recorded, the table is recorded once, and the target ends equal to the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_copy_resumes_with_only_the_unfinished_ranges() {
    let env = Env::new("split_resume").await;
    env.on_source(
        "CREATE TABLE big (id bigint PRIMARY KEY, a int NOT NULL, b text, c timestamptz, d numeric(12,2));
         INSERT INTO big SELECT g, g % 1000, repeat(md5(g::text), 3), now() - g * interval '1 s', g / 7.0
           FROM generate_series(1, 400000) g;
         ANALYZE big;",
    )
    .await;
    // The copy is held to about 60k rows/s so the kill lands in the middle of it.
    let pipeline = env.pipeline(
        "[\"big\"]",
        "[snapshot]\nworkers = 2\nrange_rows = 50000\nrows_per_s = 60000\n",
    );
    let (stop, writer) = keep_writing(
        &env,
        "UPDATE big SET a = a + 1 WHERE id = (random() * 400000)::bigint + 1;
         DELETE FROM big WHERE id = (random() * 400000)::bigint + 1;
         INSERT INTO big SELECT max(id) + 1, 7, 'new', now(), 1 FROM big;",
    );

    let mut first = env.start(&pipeline);
    first
        .wait_log("copying in key ranges", Duration::from_secs(60))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ranges_logged(&first, "public.big").len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "ranges were not copied:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    let logged = ranges_logged(&first, "public.big");
    let recorded = ranges_recorded(&env, "public.big", 8).await;
    assert!(
        logged.is_subset(&recorded) && recorded.len() < 8,
        "logged {logged:?}, recorded {recorded:?}"
    );

    let mut second = env.start(&pipeline);
    second
        .wait_log("streaming changes", Duration::from_secs(120))
        .await;
    let copied_again = ranges_logged(&second, "public.big");
    let all: BTreeSet<String> = (1..=8).map(|i| format!("{i}/8")).collect();
    let expected: BTreeSet<String> = all.difference(&recorded).cloned().collect();
    assert_eq!(
        copied_again, expected,
        "the restart copied {copied_again:?}, but the target lacked {expected:?}"
    );
    assert!(
        second.log_text().contains("resuming a split copy"),
        "{}",
        second.log_text()
    );
    assert!(
        ranges_recorded(&env, "public.big", 8).await.is_empty(),
        "range records were left after the table was recorded"
    );
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert!(writes > 10, "too few writes during the copy: {writes}");
    env.wait_equal(&["big"], Duration::from_secs(120)).await;
    for run in [&first, &second] {
        // Overlapping ranges would show as duplicate keys, parked as dead letters.
        assert!(
            !run.log_text().contains("dead letter"),
            "{}",
            run.log_text()
        );
    }
    assert!(second.terminate().success(), "{}", second.log_text());
    env.drop_slot().await;
}

/// A split copy resumed after a kill, with key moves between its ranges in between that leave
/// a TOASTed value unsent (the source sends such a value only when the update sets it): a row
/// moved from a range copied after the kill into one copied before it (the target never had
/// that row), one moved the other way (onto a key the later copy already holds), one moved
/// twice, and one moved and then deleted. The run that copies the rest ends before it streams;
/// the next streams them. The target ends equal, large values and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_moves_between_ranges_copied_before_and_after_a_kill_keep_their_unsent_values() {
    let env = Env::new("split_toast").await;
    env.on_source(
        "CREATE TABLE docs (id bigint PRIMARY KEY, n int NOT NULL, body text NOT NULL);
         ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT g, 0, repeat(md5(g::text), 100) FROM generate_series(1, 8000) g;
         ANALYZE docs;",
    )
    .await;
    // One range at a time, slowly, so the kill falls after the first range and before the last.
    let pipeline = env.pipeline(
        "[\"docs\"]",
        "[snapshot]\nworkers = 1\nrange_rows = 1000\nrows_per_s = 2000\n",
    );
    let mut first = env.start(&pipeline);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ranges_logged(&first, "public.docs").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no range was copied:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let recorded = ranges_recorded(&env, "public.docs", 8).await;
    assert!(
        recorded.contains("1/8") && !recorded.contains("8/8"),
        "recorded {recorded:?}"
    );
    env.on_source(
        "UPDATE docs SET id = -1 WHERE id = 7999;
         UPDATE docs SET id = 100000 WHERE id = 5;
         UPDATE docs SET id = -2 WHERE id = 7998;
         UPDATE docs SET id = -3, n = 1 WHERE id = -2;
         UPDATE docs SET id = -4 WHERE id = 7997;
         DELETE FROM docs WHERE id = -4;",
    )
    .await;

    // The restart copies the other ranges and ends before it streams: the next run learns
    // how far the table settles from the target's records.
    let mut second = env.start_with_env(&pipeline, &[("CUTOVER_CRASH_AT", "copies-recorded")]);
    let status = second.wait_exit(Duration::from_secs(120));
    assert!(
        !status.success() && second.log_text().contains("CUTOVER_CRASH_AT"),
        "the crash point was not reached:\n{}",
        second.log_text()
    );
    assert!(
        second.log_text().contains("resuming a split copy"),
        "{}",
        second.log_text()
    );
    let mut second = env.start(&pipeline);
    second
        .wait_log("streaming changes", Duration::from_secs(120))
        .await;
    env.wait_equal(&["docs"], Duration::from_secs(60)).await;
    // Changes after the settling position move keys as usual.
    env.on_source(
        "UPDATE docs SET id = -5 WHERE id = -1; UPDATE docs SET n = 2 WHERE id = 100000;",
    )
    .await;
    env.wait_equal(&["docs"], Duration::from_secs(60)).await;
    assert!(
        !second.log_text().contains("dead letter"),
        "{}",
        second.log_text()
    );
    assert!(second.terminate().success(), "{}", second.log_text());
    env.drop_slot().await;
}

/// Keys of every kind a range can be cut by: text, composite (text, int), uuid, and a table
/// keyed only by a replica identity index. Each is split, copied under writes, and equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_copies_handle_text_composite_uuid_and_replica_identity_keys() {
    let env = Env::new("split_keys").await;
    env.on_source(
        "CREATE TABLE by_text (k text PRIMARY KEY, v int);
         INSERT INTO by_text SELECT 'key ''' || md5(g::text), g FROM generate_series(1, 6000) g;
         CREATE TABLE by_pair (region text, n int, v text, PRIMARY KEY (n, region));
         INSERT INTO by_pair SELECT 'r' || (g % 7), g, 'v' || g FROM generate_series(1, 6000) g;
         CREATE TABLE by_uuid (id uuid PRIMARY KEY, v int);
         INSERT INTO by_uuid SELECT md5(g::text)::uuid, g FROM generate_series(1, 6000) g;
         CREATE TABLE by_index (code int NOT NULL, v text);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         INSERT INTO by_index SELECT g * 3, 'x' || g FROM generate_series(1, 6000) g;
         ANALYZE;",
    )
    .await;
    let tables = ["by_text", "by_pair", "by_uuid", "by_index"];
    let pipeline = env.pipeline(
        "[\"by_text\", \"by_pair\", \"by_uuid\", \"by_index\"]",
        "[snapshot]\nworkers = 3\nrange_rows = 1000\n",
    );
    let (stop, writer) = keep_writing(
        &env,
        "UPDATE by_text SET v = v + 1 WHERE k = (SELECT k FROM by_text ORDER BY random() LIMIT 1);
         INSERT INTO by_pair VALUES ('r' || (random() * 9)::int, (random() * 1e9)::int, 'new') ON CONFLICT DO NOTHING;
         DELETE FROM by_uuid WHERE id = (SELECT id FROM by_uuid ORDER BY random() LIMIT 1);
         UPDATE by_index SET v = 'changed' WHERE code = ((random() * 6000)::int + 1) * 3;",
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(120))
        .await;
    for t in tables {
        let ranges = ranges_logged(&run, &format!("public.{t}"));
        assert!(
            ranges.len() >= 3,
            "{t} was not copied in ranges: {ranges:?}\n{}",
            run.log_text()
        );
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    env.wait_equal(&tables, Duration::from_secs(60)).await;
    assert!(
        !run.log_text().contains("dead letter"),
        "{}",
        run.log_text()
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A free TCP port on loopback (for an admin server the CLI must find in the pipeline file).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cutover resnapshot` while streaming: a target table damaged on purpose is copied again
/// (its rows replaced, the damage gone) with writes to it running, while another table keeps
/// streaming; that table's staleness during the re-copy is measured and reported, and must stay
/// below the copy's duration (it was not held for the copy). Both end equal to the source. A
/// table outside the pipeline is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnapshot_copies_one_table_again_while_the_others_stream() {
    // Alone: in a loaded suite (one process, other tests beside it) this test once ended with
    // two rows of `a` missing an update made while `a` was copied again; not reproduced alone
    // (issue 30's note). Until that is understood, it runs as it did in a binary of its own.
    let env = Env::alone("resnapshot").await;
    env.on_source(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 100000) g;
         CREATE TABLE b (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await;
    let port = free_port();
    // The re-copy is held to 25k rows/s, so it lasts about 4 s.
    let pipeline = env.pipeline(
        "[\"a\", \"b\"]",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"resnapshot-test-token-0123456789\"\n[snapshot]\nrows_per_s = 25000\n"
        ),
    );
    let (stop, writer) = keep_writing(
        &env,
        "INSERT INTO b DEFAULT VALUES;
         UPDATE a SET v = v || '+' WHERE id = (random() * 99999)::int + 1;",
    );
    let mut run = env.start(&pipeline);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    // The damage, in one transaction; the stream updates rows of `a` meanwhile, so the
    // transaction may deadlock with the sink's write (PostgreSQL ends one of them): again then.
    let target = env.target().await;
    let mut tries = 0;
    loop {
        tries += 1;
        let damaged = target
            .batch_execute(
                "BEGIN; DELETE FROM a WHERE id % 10 = 0; UPDATE a SET v = 'wrong' WHERE id % 7 = 0;
                 INSERT INTO a VALUES (-1, 'not on the source'); COMMIT;",
            )
            .await;
        match damaged {
            Ok(()) => break,
            Err(e)
                if tries < 5
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                target.batch_execute("ROLLBACK").await.unwrap();
            }
            Err(e) => panic!("damaging the target: {e}"),
        }
    }

    let path = pipeline.to_str().unwrap();
    let (code, _, err) = common::cutover(&["resnapshot", path, "--table", "other"]);
    assert_ne!(code, 0);
    assert!(err.contains("not one of the pipeline's tables"), "{err}");
    let (code, out, err) = common::cutover(&["resnapshot", path, "--table", "public.a"]);
    assert_eq!(code, 0, "{out}{err}");

    // How stale b gets on the target while a is copied again: how far the target's newest row
    // is behind the source's newest row (not behind the clock: a writer the machine starves of
    // CPU writes nothing newer, which is no staleness of the pipeline).
    let src = env.source().await;
    let tgt = env.target().await;
    let mut stalest = Duration::ZERO;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !run.log_text().contains("table copied into every sink") {
        assert!(std::time::Instant::now() < deadline, "{}", run.log_text());
        let Some(at_source): Option<std::time::SystemTime> = src
            .query_one("SELECT max(at) FROM b", &[])
            .await
            .unwrap()
            .get(0)
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let on_target: Option<std::time::SystemTime> = tgt
            .query_one("SELECT max(at) FROM b", &[])
            .await
            .unwrap()
            .get(0);
        if let Some(on_target) = on_target {
            stalest = stalest.max(at_source.duration_since(on_target).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let copy = log_seconds(
        &run,
        "copying the table again",
        "table copied into every sink",
    );
    eprintln!(
        "resnapshot of a ({copy:.2} s): table b at most {:.2} s stale on the target meanwhile",
        stalest.as_secs_f64()
    );
    assert!(
        stalest.as_secs_f64() < copy,
        "b was {stalest:?} stale during a {copy:.2} s re-copy of a: it waited for the copy"
    );
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    env.wait_equal(&["a", "b"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// Seconds between the first log line holding `from` and the first holding `to`.
fn log_seconds(run: &Pipeline, from: &str, to: &str) -> f64 {
    let at = |text: &str| {
        run.log_text()
            .lines()
            .find(|l| l.contains(text))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["timestamp"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no log line holds {text:?}"))
    };
    let seconds = |ts: String| {
        // 2026-12-06T05:29:04.774506Z: the time of day is enough within one test.
        let t = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
        let mut parts = t.split(':').map(|p| p.parse::<f64>().unwrap());
        parts.next().unwrap() * 3600.0 + parts.next().unwrap() * 60.0 + parts.next().unwrap()
    };
    seconds(at(to)) - seconds(at(from))
}

/// A split table into a PostgreSQL sink (which records ranges) and a Kafka sink (which takes
/// the table through one copy fed by every range), SIGKILLed halfway: the restart copies every
/// range again for Kafka (its copy starts with a truncate message) while PostgreSQL keeps its
/// recorded ranges; the target and the folded topic both equal the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_copy_feeds_a_kafka_sink_whole_and_survives_a_kill() {
    let env = Env::new("split_kafka").await;
    let schema = "CREATE TABLE wide (id bigint PRIMARY KEY, v text);";
    env.on_source(&format!(
        "{schema} INSERT INTO wide SELECT g, md5(g::text) FROM generate_series(1, 60000) g; ANALYZE wide;"
    ))
    .await;
    let brokers = common::targets::MessageServices::get().kafka_brokers;
    let pipeline = env.pipeline_with(
        "[\"wide\"]",
        "[snapshot]\nworkers = 2\nrange_rows = 10000\nrows_per_s = 20000\n",
        &format!("\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{brokers}\"\n"),
    );
    let (stop, writer) = keep_writing(
        &env,
        "UPDATE wide SET v = 'changed' WHERE id = (random() * 59999)::bigint + 1;
         INSERT INTO wide SELECT max(id) + 1, 'new' FROM wide;",
    );
    let mut first = env.start(&pipeline);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ranges_logged(&first, "public.wide").len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    let count = ranges_logged(&first, "public.wide")
        .iter()
        .next()
        .and_then(|r| r.split_once('/'))
        .map(|(_, n)| n.parse::<usize>().unwrap())
        .unwrap();
    let recorded = ranges_recorded(&env, "public.wide", count).await;
    assert!(
        !recorded.is_empty() && recorded.len() < count,
        "{recorded:?}"
    );

    let mut second = env.start(&pipeline);
    second
        .wait_log("streaming changes", Duration::from_secs(120))
        .await;
    assert_eq!(
        ranges_logged(&second, "public.wide").len(),
        count,
        "the Kafka sink needs every range again:\n{}",
        second.log_text()
    );
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    env.wait_equal(&["wide"], Duration::from_secs(60)).await;
    let mut kafka = common::targets::KafkaReader::new(&[format!("{}.public.wide", env.name)]);
    common::targets::wait_kafka_equal(&env, &mut kafka, schema, &["wide"], Duration::from_secs(90))
        .await;
    assert!(second.terminate().success(), "{}", second.log_text());
    env.drop_slot().await;
}
