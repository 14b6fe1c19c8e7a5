//! Commit-to-consumer latency of the Kafka and NATS sinks, for `scripts/bench.sh latency`
//! (ignored in the test run: they need the benchmark's servers and a running pipeline). Each
//! reads new messages (the topic `BENCH_TOPIC`, or the stream `BENCH_STREAM`) for
//! `BENCH_SECONDS` and reports, over every message, the time from the source transaction's
//! commit (`commit_ts` in the envelope) to the moment this consumer received it: an upper bound
//! of commit-to-durable, since a message is readable only once the broker made it durable
//! (`acks=all`; a JetStream publish is acknowledged after it is stored).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Microseconds since the Unix epoch of an RFC 3339 UTC time such as `2026-11-22T08:00:00.123456Z`.
fn parse_utc_micros(text: &str) -> i64 {
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .expect("date and time");
    let mut d = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().unwrap());
    let secs = t.next().unwrap() * 3600 + t.next().unwrap() * 60 + t.next().unwrap();
    let micros: i64 = format!("{frac:0<6}")[..6].parse().unwrap();
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + secs) * 1_000_000 + micros
}

#[test]
#[ignore = "run by scripts/bench.sh latency"]
fn kafka_commit_to_consumer_latency() {
    let brokers = std::env::var("CUTOVER_TEST_KAFKA_BROKERS").expect("CUTOVER_TEST_KAFKA_BROKERS");
    let topic = std::env::var("BENCH_TOPIC").expect("BENCH_TOPIC");
    let seconds: u64 = std::env::var("BENCH_SECONDS").map_or(30, |s| s.parse().unwrap());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "cutover-bench-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&topic, p, Offset::End).unwrap();
    }
    consumer.assign(&list).unwrap();
    println!("ready");
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut latencies_ms = Vec::new();
    while Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64;
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let committed = parse_utc_micros(payload["commit_ts"].as_str().unwrap());
            latencies_ms.push((now - committed) as f64 / 1000.0);
        }
    }
    report("kafka", latencies_ms);
}

/// Milliseconds from the commit in the envelope `payload` until now.
fn latency_ms(payload: &[u8]) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
    let committed = parse_utc_micros(payload["commit_ts"].as_str().unwrap());
    (now - committed) as f64 / 1000.0
}

fn report(sink: &str, mut latencies_ms: Vec<f64>) {
    assert!(!latencies_ms.is_empty(), "no message arrived");
    latencies_ms.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_ms[((latencies_ms.len() - 1) as f64 * q) as usize];
    println!(
        "{sink} latency over {} messages: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies_ms.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::test]
#[ignore = "run by scripts/bench.sh latency"]
async fn nats_commit_to_consumer_latency() {
    use async_nats::jetstream::consumer::{push, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let url = std::env::var("CUTOVER_TEST_NATS_URL").expect("CUTOVER_TEST_NATS_URL");
    let stream = std::env::var("BENCH_STREAM").expect("BENCH_STREAM");
    let seconds: u64 = std::env::var("BENCH_SECONDS").map_or(30, |s| s.parse().unwrap());
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&stream).await.unwrap();
    let inbox = client.new_inbox();
    let consumer = stream
        .create_consumer(push::Config {
            deliver_subject: inbox,
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    println!("ready");
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut latencies_ms = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(until, messages.next()).await {
        latencies_ms.push(latency_ms(&m.unwrap().payload));
    }
    report("nats", latencies_ms);
}

#[test]
fn utc_times_parse_to_unix_micros() {
    assert_eq!(parse_utc_micros("1970-01-01T00:00:00Z"), 0);
    assert_eq!(
        parse_utc_micros("2000-01-01T00:00:00.5Z"),
        946_684_800_500_000
    );
    assert_eq!(
        parse_utc_micros("2026-11-22T08:00:00.123456Z") % 1_000_000,
        123_456
    );
}
