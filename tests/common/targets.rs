//! Reading message and document targets back, the way a consumer would, and comparing them with
//! the source through PostgreSQL itself.
//!
//! Kafka topics and NATS streams are consumed from the beginning and folded to the latest row
//! per key (deletes and truncates remove keys; unchanged TOAST columns keep the earlier value).
//! MongoDB collections are read whole. The folded rows are then loaded, through PostgreSQL's own
//! input functions (`jsonb_populate_recordset`), into a scratch database with the source's
//! schema, and compared with the source row by row as text: every column of every row.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value as Json};
use tokio_postgres::Client;

use super::{connect, url, Env};

/// Rows by table (`schema.table`), then by key (the key's JSON text).
pub type Folded = BTreeMap<String, BTreeMap<String, Map<String, Json>>>;

/// The message targets' addresses, from the services env file.
pub struct MessageServices {
    pub kafka_brokers: String,
    pub nats_url: String,
    pub mongo_url: String,
}

impl MessageServices {
    pub fn get() -> MessageServices {
        let var = super::services_var;
        MessageServices {
            kafka_brokers: var("CUTOVER_TEST_KAFKA_BROKERS"),
            nats_url: var("CUTOVER_TEST_NATS_URL"),
            mongo_url: var("CUTOVER_TEST_MONGO_URL"),
        }
    }
}

/// The `[[sink]]` tables for Kafka, NATS and MongoDB targets of a test's pipeline (named
/// `kafka`, `nats`, `mongo`), writing to destinations named after the test.
pub fn message_sinks(env: &Env, kafka_extra: &str) -> String {
    let m = MessageServices::get();
    format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\n{kafka_extra}\n\
         \n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"{}\"\n\
         \n[[sink]]\nkind = \"mongodb\"\nname = \"mongo\"\nurl = \"{}\"\ndatabase = \"{}\"\n",
        m.kafka_brokers, m.nats_url, m.mongo_url, env.name
    )
}

/// Applies one envelope (cutover or Debezium format) to the folded state. `partition` scopes a
/// truncate to the keys last written in that partition (a truncate is sent to every one).
fn fold_envelope(
    folded: &mut Folded,
    partitions: &mut HashMap<(String, String), i32>,
    partition: i32,
    topic_table: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) {
    let key_text = key.map(|k| {
        let v: Json = serde_json::from_slice(k).expect("message key is JSON");
        v.to_string()
    });
    let Some(payload) = payload else {
        // A tombstone.
        if let Some(k) = key_text {
            folded
                .entry(topic_table.to_string())
                .or_default()
                .remove(&k);
        }
        return;
    };
    let env: Json = serde_json::from_slice(payload).expect("payload is JSON");
    // NATS messages have no key of their own: the cutover envelope carries it.
    let key_text = key_text.or_else(|| {
        env.get("key")
            .filter(|k| k.is_object())
            .map(Json::to_string)
    });
    let (op, table, row, unchanged) = if env.get("after").is_some() {
        let op = match env["op"].as_str().unwrap() {
            "c" | "r" => "insert",
            "u" => "update",
            "d" => "delete",
            "t" => "truncate",
            other => panic!("unknown Debezium op {other}"),
        };
        let table = format!(
            "{}.{}",
            env["source"]["schema"].as_str().unwrap(),
            env["source"]["table"].as_str().unwrap()
        );
        let mut row = env["after"].as_object().cloned();
        let mut unchanged = Vec::new();
        if let Some(r) = row.as_mut() {
            r.retain(|name, v| {
                let placeholder = v.as_str() == Some("__debezium_unavailable_value");
                if placeholder {
                    unchanged.push(name.clone());
                }
                !placeholder
            });
        }
        (op.to_string(), table, row, unchanged)
    } else {
        let unchanged = env["unchanged"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        (
            env["op"].as_str().unwrap().to_string(),
            env["table"].as_str().unwrap().to_string(),
            env["row"].as_object().cloned(),
            unchanged,
        )
    };
    let rows = folded.entry(table.clone()).or_default();
    match op.as_str() {
        "truncate" => {
            rows.retain(|k, _| partitions.get(&(table.clone(), k.clone())) != Some(&partition));
        }
        "delete" => {
            rows.remove(&key_text.expect("a delete has a key"));
        }
        _ => {
            let k = key_text.expect("a row message has a key");
            let mut row = row.expect("a row message has a row");
            if let Some(old) = rows.get(&k) {
                for name in unchanged {
                    if let Some(v) = old.get(&name) {
                        row.insert(name, v.clone());
                    }
                }
            }
            partitions.insert((table, k.clone()), partition);
            rows.insert(k, row);
        }
    }
}

/// A consumer of every partition of some topics, from the beginning, folding as it reads.
pub struct KafkaReader {
    consumer: BaseConsumer,
    pub folded: Folded,
    partitions: HashMap<(String, String), i32>,
    pub messages: u64,
}

impl KafkaReader {
    pub fn new(topics: &[String]) -> KafkaReader {
        KafkaReader::at(&MessageServices::get().kafka_brokers, &[], topics)
    }

    /// A reader of `topics` on `brokers`, with extra librdkafka `settings` (TLS, SASL).
    pub fn at(brokers: &str, settings: &[(&str, String)], topics: &[String]) -> KafkaReader {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("cutover-test-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000");
        for (k, v) in settings {
            config.set(*k, v);
        }
        let consumer: BaseConsumer = config.create().expect("kafka consumer");
        let mut list = TopicPartitionList::new();
        for topic in topics {
            let deadline = Instant::now() + Duration::from_secs(20);
            let count = loop {
                let md = consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .expect("topic metadata");
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len());
                if n > 0 || Instant::now() > deadline {
                    break n;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            assert!(count > 0, "topic {topic} does not exist");
            for p in 0..count as i32 {
                list.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&list).expect("assign partitions");
        KafkaReader {
            consumer,
            folded: Folded::new(),
            partitions: HashMap::new(),
            messages: 0,
        }
    }

    /// The partition the last message of `key` (its JSON text) in `table` came from.
    pub fn partition_of(&self, table: &str, key: &str) -> Option<i32> {
        self.partitions
            .get(&(table.to_string(), key.to_string()))
            .copied()
    }

    /// Reads whatever arrives within `wait`.
    pub fn poll(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    self.messages += 1;
                    assert!(
                        m.headers()
                            .is_some_and(|h| h.iter().any(|h| h.key == "cutover.lsn")),
                        "every message carries its source position"
                    );
                    // Topics are `<pipeline>.<schema>.<table>`; tombstones carry no table.
                    let table = m.topic().split_once('.').map_or("", |(_, t)| t).to_string();
                    fold_envelope(
                        &mut self.folded,
                        &mut self.partitions,
                        m.partition(),
                        &table,
                        m.key(),
                        m.payload(),
                    );
                }
                Some(Err(e)) => panic!("kafka consume: {e}"),
                None => {}
            }
        }
    }
}

/// Every record of a one-partition topic, oldest first: (key, value), read until `idle` passes
/// without a new one.
pub fn kafka_records(topic: &str, idle: Duration) -> Vec<(String, Option<Vec<u8>>)> {
    let m = MessageServices::get();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &m.kafka_brokers)
        .set(
            "group.id",
            format!("cutover-test-raw-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).expect("assign partition");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                out.push((key, m.payload().map(<[u8]>::to_vec)));
                last = Instant::now();
            }
            Some(Err(e)) => panic!("kafka consume: {e}"),
            None => {}
        }
    }
    out
}

/// Reads a JetStream stream from the first message, folding as it reads, and records every
/// `Nats-Msg-Id` it sees.
pub struct NatsReader {
    consumer: async_nats::jetstream::consumer::PullConsumer,
    pub folded: Folded,
    partitions: HashMap<(String, String), i32>,
    pub ids: Vec<String>,
    /// What each message says it is: table, source position, op and key (unique per change).
    pub changes: Vec<String>,
}

impl NatsReader {
    pub async fn new(stream: &str) -> NatsReader {
        let m = MessageServices::get();
        let client = async_nats::connect(m.nats_url.as_str())
            .await
            .expect("nats connect");
        NatsReader::over(client, stream).await
    }

    /// A reader over a client connected by the test (to another server, or with TLS).
    pub async fn over(client: async_nats::Client, stream: &str) -> NatsReader {
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(stream)
            .await
            .expect("the sink created its stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("nats consumer");
        NatsReader {
            consumer,
            folded: Folded::new(),
            partitions: HashMap::new(),
            ids: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Reads what the stream holds beyond what was read already.
    pub async fn poll(&mut self) {
        loop {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(5000)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .expect("nats fetch");
            let mut got = 0;
            while let Some(m) = batch.next().await {
                // A batch that ends early (the server's request timeout) is fetched again.
                let Ok(m) = m else { break };
                got += 1;
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .expect("every message has a Nats-Msg-Id");
                self.ids.push(id);
                let env: Json = serde_json::from_slice(&m.payload).expect("payload is JSON");
                self.changes.push(format!(
                    "{}|{}|{}|{}|{}",
                    env["table"], env["lsn"], env["ordinal"], env["op"], env["key"]
                ));
                fold_envelope(
                    &mut self.folded,
                    &mut self.partitions,
                    0,
                    m.subject.as_str(),
                    None,
                    Some(&m.payload),
                );
            }
            if got == 0 {
                return;
            }
        }
    }

    /// Messages stored more than once: the same message id, or the same change (table,
    /// position, op and key) under two ids.
    pub fn duplicate_ids(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut dups: Vec<String> = self
            .ids
            .iter()
            .filter(|id| !seen.insert(*id))
            .cloned()
            .collect();
        let mut seen = std::collections::HashSet::new();
        dups.extend(self.changes.iter().filter(|c| !seen.insert(*c)).cloned());
        dups
    }
}

/// Every document of a MongoDB collection per table, as JSON rows in PostgreSQL's input forms.
pub async fn mongo_rows(database: &str, tables: &[&str]) -> Folded {
    mongo_rows_at(&MessageServices::get().mongo_url, database, tables).await
}

/// Like [`mongo_rows`], from the server at `url` (another server, or with TLS).
pub async fn mongo_rows_at(url: &str, database: &str, tables: &[&str]) -> Folded {
    let client = mongodb::Client::with_uri_str(url)
        .await
        .expect("mongo connect");
    let db = client.database(database);
    let mut folded = Folded::new();
    for table in tables {
        let name = format!("public.{table}");
        let mut cursor = db
            .collection::<mongodb::bson::Document>(&name)
            .find(mongodb::bson::doc! {})
            .await
            .expect("mongo find");
        let rows = folded.entry(name).or_default();
        while let Some(doc) = cursor.next().await {
            let mut doc = doc.expect("mongo document");
            let id = doc.remove("_id").expect("every document has an _id");
            let row = match bson_to_json(mongodb::bson::Bson::Document(doc)) {
                Json::Object(o) => o,
                _ => unreachable!(),
            };
            rows.insert(bson_to_json(id).to_string(), row);
        }
    }
    folded
}

/// A BSON value in the JSON form PostgreSQL's input functions read back to the source value.
fn bson_to_json(v: mongodb::bson::Bson) -> Json {
    use mongodb::bson::{spec::BinarySubtype, Bson};
    match v {
        Bson::Null => Json::Null,
        Bson::Boolean(b) => Json::Bool(b),
        Bson::Int32(i) => i.into(),
        Bson::Int64(i) => i.into(),
        Bson::Double(f) if f.is_finite() => f.into(),
        Bson::Double(f) => Json::String(
            if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .into(),
        ),
        Bson::Decimal128(d) => Json::String(d.to_string()),
        Bson::String(s) => Json::String(s),
        Bson::DateTime(d) => Json::String(d.try_to_rfc3339_string().expect("date in range")),
        Bson::Binary(b) if b.subtype == BinarySubtype::Uuid => {
            let h: String = b.bytes.iter().map(|x| format!("{x:02x}")).collect();
            Json::String(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        Bson::Binary(b) => Json::String(format!(
            "\\x{}",
            b.bytes
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        )),
        Bson::Array(a) => Json::Array(a.into_iter().map(bson_to_json).collect()),
        Bson::Document(d) => {
            Json::Object(d.into_iter().map(|(k, v)| (k, bson_to_json(v))).collect())
        }
        other => panic!("unexpected BSON value {other:?}"),
    }
}

/// Loads folded rows into a fresh database `<test>_<label>` with the source's schema (`schema`
/// SQL) and returns a client on it. Base64 values of bytea columns (as envelopes carry them)
/// are turned into PostgreSQL's hex input form first.
pub async fn materialize(env: &Env, label: &str, schema: &str, folded: &Folded) -> Client {
    let db = format!("{}_{label}", env.name);
    let admin = connect(&url(env.services.target_port, "postgres")).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let client = connect(&url(env.services.target_port, &db)).await;
    client.batch_execute(schema).await.unwrap();
    for (table, rows) in folded {
        let bytea: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema || '.' || table_name = $1 AND data_type = 'bytea'",
                &[table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rows: Vec<Json> = rows
            .values()
            .map(|row| {
                let mut row = row.clone();
                for col in &bytea {
                    if let Some(Json::String(s)) = row.get(col) {
                        if !s.starts_with("\\x") {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .expect("bytea values are base64");
                            let hex: String = raw.iter().map(|x| format!("{x:02x}")).collect();
                            row.insert(col.clone(), Json::String(format!("\\x{hex}")));
                        }
                    }
                }
                Json::Object(row)
            })
            .collect();
        client
            .execute(
                &format!("INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)"),
                &[&Json::Array(rows).to_string()],
            )
            .await
            .unwrap_or_else(|e| panic!("materialize {table}: {e}"));
    }
    client
}

/// Every row of `table` as text, with timestamps cut to milliseconds when `millis` (what a
/// MongoDB Date holds).
pub async fn contents_at(client: &Client, table: &str, millis: bool) -> Vec<String> {
    if !millis {
        return super::contents(client, table).await;
    }
    let cols: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema || '.' || table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let list: Vec<String> = cols
        .iter()
        .map(|(c, t)| {
            if t.starts_with("timestamp") {
                format!("date_trunc('milliseconds', \"{c}\")")
            } else {
                format!("\"{c}\"")
            }
        })
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT ROW({})::text FROM {table} ORDER BY 1",
                list.join(", ")
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Compares tables of the source with a materialized target; the error names the first
/// differences.
pub async fn compare(
    source: &Client,
    target: &Client,
    tables: &[&str],
    millis: bool,
) -> Result<(), String> {
    for t in tables {
        let table = format!("public.{t}");
        let a = contents_at(source, &table, millis).await;
        let b = contents_at(target, &table, millis).await;
        if a != b {
            let missing: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(2).collect();
            let extra: Vec<_> = b.iter().filter(|r| !a.contains(r)).take(2).collect();
            return Err(format!(
                "{table}: source {} rows, target {} rows; missing e.g. {missing:?}; extra e.g. {extra:?}",
                a.len(),
                b.len()
            ));
        }
    }
    Ok(())
}

/// Loads `folded` into a scratch database `<test>_<label>` with `schema` and compares `tables`
/// with the source (timestamps at millisecond precision when `millis`).
pub async fn folded_equal(
    env: &Env,
    label: &str,
    schema: &str,
    folded: &Folded,
    tables: &[&str],
    millis: bool,
) -> Result<(), String> {
    let source = env.source().await;
    let copy = materialize(env, label, schema, folded).await;
    compare(&source, &copy, tables, millis).await
}

/// Reads the topics until their folded state equals the source's `tables`; panics with the
/// difference after `timeout`.
pub async fn wait_kafka_equal(
    env: &Env,
    kafka: &mut KafkaReader,
    schema: &str,
    tables: &[&str],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        kafka.poll(Duration::from_millis(500));
        match folded_equal(env, "kafka", schema, &kafka.folded, tables, false).await {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the Kafka topics differ from the source after {timeout:?}: {e}"
            ),
        }
    }
}

/// Reads the stream until its folded state equals the source's `tables`; panics with the
/// difference after `timeout`.
pub async fn wait_nats_equal(
    env: &Env,
    nats: &mut NatsReader,
    schema: &str,
    tables: &[&str],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        nats.poll().await;
        match folded_equal(env, "nats", schema, &nats.folded, tables, false).await {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the NATS stream differs from the source after {timeout:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the Kafka topics, the NATS stream and the MongoDB collections, each folded to
/// the latest row per key and loaded into a scratch database, equal the source.
pub async fn wait_all_equal(
    env: &Env,
    schema: &str,
    tables: &[&str],
    kafka: &mut KafkaReader,
    nats: &mut NatsReader,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut pending = vec!["kafka", "nats", "mongo"];
    loop {
        kafka.poll(Duration::from_millis(500));
        nats.poll().await;
        let mut failures = Vec::new();
        for label in pending.clone() {
            let (folded, millis) = match label {
                "kafka" => (kafka.folded.clone(), false),
                "nats" => (nats.folded.clone(), false),
                _ => (mongo_rows(&env.name, tables).await, true),
            };
            match folded_equal(env, label, schema, &folded, tables, millis).await {
                Ok(()) => pending.retain(|p| *p != label),
                Err(e) => failures.push(format!("{label}: {e}")),
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "targets differ from the source after {timeout:?}:\n{}",
            failures.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
