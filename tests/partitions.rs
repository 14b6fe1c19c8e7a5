//! A partitioned table replicates as one table through its root: snapshot, streamed changes in
//! every partition (including a row moving between partitions), and a partition attached while
//! streaming, whose earlier rows never reach the WAL as changes of the root: they are copied,
//! and the changes made to them afterwards follow. The target ends equal to the source, also
//! after a restart. Before 13 the partitions are published by themselves: an attached one
//! joins the publication before its rows are copied (a PostgreSQL 12 source).

use crate::common;

use std::time::Duration;

use common::{services_var, url, Env, Services};

const ORDERS: &str = "CREATE TABLE orders (id int, region text, amount numeric(10,2), note text,
                         PRIMARY KEY (id, region)) PARTITION BY LIST (region);
                      CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
                      CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_while_streaming_is_copied_and_streamed() {
    attached_partition(Env::new("partitions").await, true).await;
}

/// The same on a PostgreSQL 12 source (into 15), which cannot publish through the root: the
/// partitions are in the publication by name, and one attached while streaming is not until
/// cutover adds it. Fails when the attached partition's later changes are not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_to_a_postgresql_12_source_joins_the_publication() {
    let pg12 = services_var("CUTOVER_PG12_URL");
    let base = pg12.rsplit_once('/').unwrap().0.to_string();
    let target = Services::get().target_port;
    let env = Env::on_clusters(
        "partitions12",
        &[&pg12, &url(target, "postgres")],
        |db| format!("{base}/{db}"),
        |db| url(target, db),
    )
    .await;
    attached_partition(env, false).await;
}

/// Snapshot, streamed changes, a partition attached while streaming, a restart; with a Kafka
/// sink beside the PostgreSQL one when `kafka`.
async fn attached_partition(env: Env, kafka: bool) {
    env.on_source(&format!(
        "{ORDERS}
         INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g * 1.25, 'n' || g
           FROM generate_series(1, 1000) g;"
    ))
    .await;
    // A Kafka sink beside the PostgreSQL one: the merged rows reach message targets too.
    let m = common::targets::MessageServices::get();
    let kafka_sink = format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\n",
        m.kafka_brokers
    );
    let path = if kafka {
        env.pipeline_with("[\"public.orders\"]", "", &kafka_sink)
    } else {
        env.pipeline("[\"public.orders\"]", "")
    };
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tables = [\"public.orders\"]",
        "tables = [\"public.orders\"]\ndiscover_interval_s = 1",
    );
    std::fs::write(&path, text).unwrap();
    let run = env.start(&path);
    env.wait_equal(&["orders"], Duration::from_secs(60)).await;

    // Changes in both partitions, and a row moving from one to the other.
    env.on_source(
        "UPDATE orders SET amount = amount + 1 WHERE id % 10 = 0;
         DELETE FROM orders WHERE id BETWEEN 100 AND 120;
         UPDATE orders SET region = 'us' WHERE id = 2;
         INSERT INTO orders VALUES (5000, 'eu', 1, 'streamed');",
    )
    .await;
    env.wait_equal(&["orders"], Duration::from_secs(30)).await;

    // A table loaded on its own, then attached: its 300 rows were never changes of `orders`.
    env.on_source(
        "CREATE TABLE orders_apac (id int, region text, amount numeric(10,2), note text,
                                   PRIMARY KEY (id, region));
         INSERT INTO orders_apac SELECT g, 'apac', g, 'loaded before attach' FROM generate_series(2001, 2300) g;
         ALTER TABLE orders ATTACH PARTITION orders_apac FOR VALUES IN ('apac');
         UPDATE orders SET note = 'changed after attach' WHERE id BETWEEN 2001 AND 2010;
         DELETE FROM orders WHERE id BETWEEN 2291 AND 2300;
         INSERT INTO orders VALUES (2400, 'apac', 7, 'inserted after attach');",
    )
    .await;
    run.wait_log("partitions attached", Duration::from_secs(30))
        .await;
    env.on_source(
        "UPDATE orders SET amount = 0 WHERE id = 2011;
         INSERT INTO orders VALUES (2500, 'apac', 8, 'after the copy'), (5001, 'us', 9, 'x');",
    )
    .await;
    env.wait_equal(&["orders"], Duration::from_secs(90)).await;
    assert!(
        run.log_text().contains("orders_apac"),
        "the log names the partition it copied"
    );
    // The topic, folded by key, holds the source's rows too.
    if kafka {
        kafka_equals_source(&env).await;
    }

    // A restart copies nothing again and goes on streaming.
    env.restart_streams_without_copying(
        run,
        &path,
        "UPDATE orders SET note = 'while stopped' WHERE id IN (2012, 3, 4);",
        &["orders"],
        "copying the rows",
    )
    .await;
}

/// The topic, folded by key, equals the source's table.
async fn kafka_equals_source(env: &Env) {
    let topic = format!("{}.public.orders", env.name);
    let mut reader = common::targets::KafkaReader::new(std::slice::from_ref(&topic));
    let src = env.source().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        reader.poll(Duration::from_millis(500));
        let copy = common::targets::materialize(
            env,
            "kafka",
            "CREATE TABLE orders (id int, region text, amount numeric(10,2), note text, PRIMARY KEY (id, region));",
            &reader.folded,
        )
        .await;
        if common::contents(&copy, "orders").await == common::contents(&src, "orders").await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kafka does not equal the source: {} rows folded",
            reader.folded.get("public.orders").map_or(0, |r| r.len())
        );
    }
}
