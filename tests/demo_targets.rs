//! The demo's last step (scripts/demo.sh runs it): reads the demo's Kafka topics, NATS stream
//! and MongoDB collections back the way a consumer would, and compares each with the source,
//! every column of every row. Ignored in the test run: it needs the demo's servers and data.

use crate::common;

use std::time::{Duration, Instant};

use common::targets::{self, KafkaReader, NatsReader};
use common::Env;

const TABLES: &[&str] = &["customers", "orders", "order_items", "documents"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/demo.sh against the demo's servers"]
async fn demo_message_targets_equal_the_source() {
    let env = Env::existing("shop").await;
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/demo-schema.sql"
    ))
    .unwrap();
    let source = env.source().await;
    let topics: Vec<String> = TABLES.iter().map(|t| format!("demo.public.{t}")).collect();
    let mut kafka = KafkaReader::new(&topics);
    let mut nats = NatsReader::new("cutover_demo").await;
    let wait: u64 = std::env::var("DEMO_READ_BACK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut pending = vec!["kafka", "nats", "mongo"];
    while !pending.is_empty() {
        kafka.poll(Duration::from_secs(2));
        nats.poll().await;
        for label in pending.clone() {
            let (folded, millis) = match label {
                "kafka" => (kafka.folded.clone(), false),
                "nats" => (nats.folded.clone(), false),
                _ => (targets::mongo_rows("shop", TABLES).await, true),
            };
            let copy = targets::materialize(&env, label, &schema, &folded).await;
            match targets::compare(&source, &copy, TABLES, millis).await {
                Ok(()) => {
                    let rows: usize = folded.values().map(|t| t.len()).sum();
                    println!(
                        "   {label}: equal ({rows} rows, every column compared{})",
                        if millis {
                            "; timestamps at MongoDB's millisecond precision"
                        } else {
                            ""
                        }
                    );
                    pending.retain(|p| *p != label);
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{label} differs from the source: {e}"
                ),
            }
        }
    }
    println!(
        "   kafka: {} messages read; nats: {} messages, {} duplicates",
        kafka.messages,
        nats.ids.len(),
        nats.duplicate_ids().len()
    );
    assert!(nats.duplicate_ids().is_empty());
}
