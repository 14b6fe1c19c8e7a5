//! The pipeline file's parsing, defaults and errors.

use super::*;

const GOOD: &str = r#"
name = "shop"
[source]
url = "${SRC}"
tables = ["public.*"]
[[sink]]
kind = "postgres"
name = "target"
url = "postgres://u:${PW}@h/db"
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "SRC" => Some("postgres://src".into()),
        "PW" => Some("pa55".into()),
        _ => None,
    }
}

#[test]
fn defaults_file_parses_and_fills_every_tunable() {
    let p = parse(GOOD, "shop.toml", &env).unwrap();
    assert_eq!(p.slot, "cutover_shop");
    assert_eq!(p.source_url, "postgres://src");
    assert_eq!(p.queue_bytes, 64 << 20);
    assert_eq!(p.batch_bytes, 16 << 20);
    assert_eq!(p.snapshot_workers, 2);
    assert_eq!(p.cutover.max_lag_bytes, 16 << 20);
    assert_eq!(p.cutover.fence_lock_timeout_ms, 5000);
    let Some(pg) = p.sinks[0]
        .as_any()
        .downcast_ref::<cutover_postgres::target::PgTarget>()
    else {
        panic!("the first sink is PostgreSQL")
    };
    assert_eq!(pg.url, "postgres://u:pa55@h/db");
}

#[test]
fn a_kafka_source_is_read_for_apply_and_its_mistakes_are_named() {
    let example = include_str!("../../pipelines/apply.toml");
    let vars = |name: &str| match name {
        "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_string()),
        "SOURCE_URL" | "TARGET_URL" => Some("postgres://h/db".to_string()),
        _ => None,
    };
    let p = parse(example, "apply.toml", &vars).unwrap();
    let apply = p.apply.as_ref().expect("a Kafka source");
    assert_eq!(apply.group, "cutover_shop_apply");
    assert_eq!(apply.topics, ["^shop\\.public\\..*"]);
    assert_eq!(apply.batch_messages, 5000);
    assert!(!apply.whole_transactions);
    let e = |text: &str| parse(text, "a.toml", &vars).unwrap_err().to_string();
    let msg = e(&example.replace("brokers = \"${KAFKA_BROKERS}\"\n", ""));
    assert!(msg.contains("source.brokers: is missing"), "{msg}");
    let msg = e(&example.replace("kind = \"kafka\"", "kind = \"mysql\""));
    assert!(
        msg.contains("source.kind") && msg.contains("\"mysql\""),
        "{msg}"
    );
    let msg = e(&GOOD.replace(
        "tables = [\"public.*\"]",
        "tables = [\"public.*\"]\ntopics = [\"t\"]",
    ));
    assert!(
        msg.contains("source.topics: belongs to a Kafka source"),
        "{msg}"
    );
    let msg = e(&example.replace("format = \"cutover\"", "format = \"avro\""));
    assert!(msg.contains("avro"), "{msg}");
    let msg = e(&example.replace(
        "tables = [\"public.*\"]",
        "tables = [\"public.*\"]\nproperties = { \"enable.auto.commit\" = \"true\" }",
    ));
    assert!(
        msg.contains("source.properties.enable.auto.commit: is set by cutover apply"),
        "{msg}"
    );
}

#[test]
fn secrets_are_read_from_files_and_masked() {
    let dir = std::env::temp_dir().join(format!("cutover-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "from-a-file-pw\n").unwrap();
    let text = GOOD.replace("${PW}", &format!("${{file:{}}}", file.display()));
    let p = parse(&text, "shop.toml", &env).unwrap();
    let Some(pg) = p.sinks[0]
        .as_any()
        .downcast_ref::<cutover_postgres::target::PgTarget>()
    else {
        panic!("the first sink is PostgreSQL")
    };
    assert_eq!(pg.url, "postgres://u:from-a-file-pw@h/db");
    let masked = cutover_core::secrets::scrub("said from-a-file-pw here");
    assert!(!masked.contains("from-a-file-pw"), "{masked}");

    let missing = dir.join("absent");
    let text = GOOD.replace("${PW}", &format!("${{file:{}}}", missing.display()));
    let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
    assert!(
        e.contains("sink[0].url")
            && e.contains("cannot read the secret file")
            && e.contains("absent"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn message_sinks_are_checked_before_anything_starts() {
    let with = |sink: &str| {
        parse(&format!("{GOOD}\n[[sink]]\n{sink}\n"), "shop.toml", &env)
            .map(|p| p.sinks.len())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"127.0.0.1:9092\""),
        Ok(2)
    );
    let e = with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"localhost\"").unwrap_err();
    assert!(
        e.contains("sink[1].brokers") && e.contains("host:port"),
        "{e}"
    );
    let e = with("kind = \"kafka\"\nname = \"k\"\nbrokers = \"h:1\"\ntopic = \"{prefix}.{table}\"")
        .unwrap_err();
    assert!(e.contains("sink[1].topic") && e.contains("{prefix}"), "{e}");
    let e = with("kind = \"mongodb\"\nname = \"m\"\nurl = \"mongodb://h\"\ndatabase = \"app\"\ncollection = \"$bad.{table}\"")
        .unwrap_err();
    assert!(e.contains("sink[1].collection"), "{e}");
    let e = with("kind = \"redis\"\nname = \"r\"").unwrap_err();
    assert!(
        e.contains("unknown variant `redis`") && e.contains("kafka"),
        "{e}"
    );
    let e = with("kind = \"nats\"\nname = \"n\"\nurl = \"nats://h:4222\"\nstream = \"a.b\"")
        .unwrap_err();
    assert!(e.contains("sink[1].stream"), "{e}");
    let kafka = "kind = \"kafka\"\nname = \"k\"\nbrokers = \"h:1\"\n";
    assert_eq!(with(&format!("{kafka}dead_letter_topic = \"dlq\"")), Ok(2));
    let e = with(&format!("{kafka}dead_letter_topic = \"d/l\"")).unwrap_err();
    assert!(
        e.contains("sink[1].dead_letter_topic") && e.contains("'/'"),
        "{e}"
    );
    let e = with(&format!(
        "{kafka}dead_letter_topic = \"dlq\"\ndead_letter_file = \"x\""
    ))
    .unwrap_err();
    assert!(e.contains("not both") && e.contains("Fix:"), "{e}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = GOOD.replace("tables = [", "tabels = [");
    let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
    assert!(e.starts_with("shop.toml, line 5"), "{e}");
    assert!(e.contains("unknown field `tabels`"), "{e}");
    assert!(e.contains("Fix:"), "{e}");
}

#[test]
fn wrong_type_is_reported_with_its_place() {
    let text = format!("{GOOD}\n[limits]\nqueue_events = \"many\"\n");
    let e = parse(&text, "shop.toml", &env).unwrap_err().to_string();
    assert!(e.contains("line 12"), "{e}");
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn unknown_sink_kind_and_unknown_sink_key_are_refused() {
    let e = parse(&GOOD.replace("\"postgres\"", "\"oracle\""), "f", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `oracle`"), "{e}");
    let e = parse(&format!("{GOOD}batch = 3\n"), "f", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `batch`"), "{e}");
}

#[test]
fn missing_variable_is_named_and_no_value_leaks() {
    let e = parse(GOOD, "f", &|n| (n == "SRC").then(|| "x".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sink[0].url") && e.contains("PW"), "{e}");
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("64 MiB"), Some(64 << 20));
    assert_eq!(parse_size("512"), Some(512));
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("lots"), None);
    let e = parse(
        &format!("{GOOD}\n[limits]\nqueue_bytes = true\n"),
        "f",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected a size"), "{e}");
    let e = parse(
        &format!("{GOOD}\n[limits]\nbatch_bytes = \"60 MiB\"\n"),
        "f",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("limits.batch_bytes"), "{e}");
}

#[test]
fn invalid_toml_is_one_line_with_a_place() {
    let e = parse("name = \"x\"\n[source\n", "f.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("f.toml, line 2"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
