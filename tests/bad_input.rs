//! Bad input: each mistake gives a clear one-paragraph error and a non-zero exit, no secret
//! is printed, and nothing is half-created on the source or the target.

use crate::common;

use common::{cutover, url, Env, Services};

fn one_paragraph(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error paragraph, got:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    lines[0].to_string()
}

/// Nothing was created: no slot, no publication, no target tables or state schema.
async fn assert_nothing_created(env: &Env) {
    let src = env.source().await;
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cutover_%' AND database = current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let pubs: i64 = src
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (slots, pubs),
        (0, 0),
        "a slot or publication was left on the source"
    );
    let tgt = env.target().await;
    let made: i64 = tgt
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('public', 'cutover') AND c.relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 0, "tables were created on the target");
}

fn write(env: &Env, text: &str) -> String {
    let path = env.dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn invalid_toml_unknown_keys_and_wrong_types_name_the_place() {
    let env = Env::new("badtoml").await;
    let good = std::fs::read_to_string(env.pipeline("[\"public.*\"]", "")).unwrap();
    let cases = [
        (good.replace("[source]", "[source"), "line", "TOML"),
        (
            good.replace("tables =", "tabels ="),
            "unknown field `tabels`",
            "line",
        ),
        (
            format!("{good}\n[limits]\nqueue_bytes = true\n"),
            "invalid type",
            "line",
        ),
        (
            good.replace("kind = \"postgres\"", "kind = \"oracle\""),
            "unknown variant `oracle`",
            "line",
        ),
        (
            good.replace("name = \"target\"", ""),
            "missing field `name`",
            "Fix",
        ),
        (
            good.replace(&env.source_url, "${CUTOVER_TEST_UNSET_VARIABLE}"),
            "CUTOVER_TEST_UNSET_VARIABLE",
            "not set",
        ),
    ];
    for (text, expect_a, expect_b) in cases {
        let path = write(&env, &text);
        for cmd in ["run", "check"] {
            let (code, _, stderr) = cutover(&[cmd, &path]);
            assert_ne!(code, 0, "{cmd} accepted:\n{text}");
            let line = one_paragraph(&stderr);
            assert!(line.contains("bad.toml"), "no file name: {line}");
            assert!(line.contains(expect_a) && line.contains(expect_b), "{line}");
        }
    }
    let (code, _, stderr) = cutover(&["run", "/nonexistent/pipeline.toml"]);
    assert_ne!(code, 0);
    assert!(one_paragraph(&stderr).contains("/nonexistent/pipeline.toml"));
    assert_nothing_created(&env).await;
}

#[tokio::test]
async fn unreachable_server_and_wrong_password_are_explained_without_secrets() {
    let env = Env::new("badconn").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY)").await;
    let s = Services::get();

    // Nothing listens on port 1.
    let text = std::fs::read_to_string(env.pipeline("[\"public.*\"]", ""))
        .unwrap()
        .replace(
            &env.source_url,
            "postgres://postgres:pw-unreachable@127.0.0.1:1/x",
        );
    let (code, _, stderr) = cutover(&["run", &write(&env, &text)]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("cannot connect to the source") && line.contains("127.0.0.1:1"),
        "{line}"
    );
    assert!(line.contains("Fix:"), "{line}");
    assert!(
        !stderr.contains("pw-unreachable"),
        "password leaked: {stderr}"
    );

    // A real password-protected role, wrong password.
    let wrong = format!(
        "postgres://{}:definitely-wrong-pw@127.0.0.1:{}/{}",
        s.secret_role, s.source_port, env.name
    );
    let text = std::fs::read_to_string(env.pipeline("[\"public.*\"]", ""))
        .unwrap()
        .replace(&env.source_url, &wrong);
    for cmd in ["run", "check"] {
        let (code, out, stderr) = cutover(&[cmd, &write(&env, &text)]);
        assert_ne!(code, 0);
        let line = one_paragraph(&stderr);
        assert!(line.contains("password"), "{line}");
        assert!(
            !(out + &stderr).contains("definitely-wrong-pw"),
            "password leaked"
        );
    }

    // The right password through an environment variable: works, and is never printed.
    let right = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}",
        s.secret_role, s.secret_password, s.source_port, env.name
    );
    let text = std::fs::read_to_string(env.pipeline("[\"public.*\"]", ""))
        .unwrap()
        .replace(&env.source_url, "${CUTOVER_TEST_SOURCE}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", &write(&env, &text)])
        .env("CUTOVER_TEST_SOURCE", &right)
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("ready"), "{all}");
    assert!(!all.contains(&s.secret_password), "password printed: {all}");
    assert_nothing_created(&env).await;
}

#[tokio::test]
async fn wal_level_not_logical_is_refused_with_the_fix() {
    let env = Env::new("badwal").await;
    let s = Services::get();
    let plain = common::connect(&url(s.plain_port, "postgres")).await;
    let db = format!("{}_plain", env.name);
    plain
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let plain_db = common::connect(&url(s.plain_port, &db)).await;
    plain_db
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let text = std::fs::read_to_string(env.pipeline("[\"public.*\"]", ""))
        .unwrap()
        .replace(&env.source_url, &url(s.plain_port, &db));
    let path = write(&env, &text);
    let (code, _, stderr) = cutover(&["run", &path]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("wal_level is replica")
            && line.contains("ALTER SYSTEM SET wal_level = logical"),
        "{line}"
    );
    let (code, out, _) = cutover(&["check", &path]);
    assert_ne!(code, 0);
    assert!(out.contains("FAIL  wal_level"), "{out}");
    let pubs: i64 = plain_db
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pubs, 0);
    assert_nothing_created(&env).await;
}

#[tokio::test]
async fn table_without_key_is_refused_with_the_statements_that_fix_it() {
    let env = Env::new("badkey").await;
    env.on_source("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (a int, b text);")
        .await;
    let path = env.pipeline("[\"public.*\"]", "");
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(line.contains("public.loose has no primary key"), "{line}");
    assert!(
        line.contains("ALTER TABLE \"public\".\"loose\" ADD PRIMARY KEY")
            && line.contains("GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
            && line.contains("REPLICA IDENTITY FULL is no substitute"),
        "{line}"
    );
    assert!(!line.contains("public.keyed has no"), "{line}");
    // A unique index on NOT NULL columns is named as the replica identity to use.
    env.on_source(
        "CREATE UNIQUE INDEX loose_b_partial ON loose (b) WHERE a > 0;
         ALTER TABLE loose ALTER COLUMN b SET NOT NULL;
         CREATE UNIQUE INDEX loose_b ON loose (b);",
    )
    .await;
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("ALTER TABLE \"public\".\"loose\" REPLICA IDENTITY USING INDEX loose_b;"),
        "{line}"
    );
    // Following the fix makes the table acceptable.
    env.on_source("ALTER TABLE loose REPLICA IDENTITY USING INDEX loose_b;")
        .await;
    let (code, out, _) = cutover(&["check", path.to_str().unwrap()]);
    assert!(
        out.contains("public.loose is keyed by its replica identity index"),
        "{code} {out}"
    );
    // A keyed table whose replica identity is NOTHING would break the application's own
    // updates and deletes once published: refused.
    env.on_source("DROP TABLE loose; ALTER TABLE keyed REPLICA IDENTITY NOTHING")
        .await;
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("REPLICA IDENTITY NOTHING") && line.contains("REPLICA IDENTITY DEFAULT"),
        "{line}"
    );
    // A name that matches nothing is a typo, not an empty pipeline.
    let path = env.pipeline("[\"public.kyed\"]", "");
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        one_paragraph(&stderr).contains("public.kyed, which is not a table"),
        "{stderr}"
    );
    assert_nothing_created(&env).await;
}

/// A partitioned table with no key of its own is keyed by the one its partitions share, and
/// refused, with the fix, when they differ; a target trigger marked `ENABLE ALWAYS` fires even
/// for a replica's writes, so `check` fails on it and names it, and so does one marked
/// `ENABLE REPLICA` on the source, where the reverse stream applies after a switch.
#[tokio::test]
async fn partitions_without_a_shared_key_and_always_triggers_are_named_by_check() {
    let env = Env::new("badparts").await;
    let schema = "CREATE TABLE ev (id int NOT NULL, k int NOT NULL, v text) PARTITION BY RANGE (k);
         CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM (0) TO (100);
         CREATE TABLE ev_2 PARTITION OF ev FOR VALUES FROM (100) TO (200);
         ALTER TABLE ev_1 ADD PRIMARY KEY (id, k);
         ALTER TABLE ev_2 ADD PRIMARY KEY (id);
         CREATE TABLE keyed (id int PRIMARY KEY, v text);";
    env.on_source(schema).await;
    env.target().await.batch_execute(schema).await.unwrap();
    let path = env.pipeline("[\"public.*\"]", "");
    let p = path.to_str().unwrap();
    check_fails_saying(
        p,
        &[
            "public.ev is a partitioned table with no primary key of its own, and its partitions do not all have the same primary key",
            "add a primary key to the partitioned table",
        ],
    );
    env.on_source("ALTER TABLE ev_2 DROP CONSTRAINT ev_2_pkey, ADD PRIMARY KEY (id, k);")
        .await;
    env.target()
        .await
        .batch_execute(
            "ALTER TABLE ev_2 DROP CONSTRAINT ev_2_pkey, ADD PRIMARY KEY (id, k);
             CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.v := 'stamped'; RETURN NEW; END$$;
             CREATE TRIGGER keyed_stamp BEFORE INSERT ON keyed FOR EACH ROW EXECUTE FUNCTION stamp();
             ALTER TABLE keyed ENABLE ALWAYS TRIGGER keyed_stamp;",
        )
        .await
        .unwrap();
    let (code, out, _) = cutover(&["check", p]);
    assert!(
        out.contains("public.ev is keyed by its partitions' primary keys")
            && out.contains("sink target: connected, tables compatible"),
        "{out}"
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(
            "FAIL  sink target: these triggers are marked ENABLE ALWAYS or ENABLE REPLICA"
        ) && out.contains("keyed: keyed_stamp"),
        "{out}"
    );
    // Made an ordinary trigger, it stays quiet for the replica's writes.
    env.target()
        .await
        .batch_execute("ALTER TABLE keyed ENABLE TRIGGER keyed_stamp;")
        .await
        .unwrap();
    let (code, out, _) = cutover(&["check", p]);
    assert_eq!(code, 0, "{out}");
    // The same on the source, for the reverse stream that applies there after a switch.
    env.on_source(
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.v := 'stamped'; RETURN NEW; END$$;
         CREATE TRIGGER keyed_stamp BEFORE INSERT ON keyed FOR EACH ROW EXECUTE FUNCTION stamp();
         ALTER TABLE keyed ENABLE REPLICA TRIGGER keyed_stamp;",
    )
    .await;
    check_fails_saying(
        p,
        &[
            "FAIL  sink source (the way back, after a switch): these triggers are marked ENABLE ALWAYS or ENABLE REPLICA",
            "keyed: keyed_stamp",
        ],
    );
}

/// `cutover check` of pipeline file `p` fails, and its output says each of `lines`.
fn check_fails_saying(p: &str, lines: &[&str]) {
    let (code, out, _) = cutover(&["check", p]);
    assert_ne!(code, 0, "{out}");
    for line in lines {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
}

#[tokio::test]
async fn incompatible_or_occupied_target_is_refused_before_anything_is_created() {
    let env = Env::new("badtarget").await;
    env.on_source(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);",
    )
    .await;
    let tgt = env.target().await;
    tgt.batch_execute("CREATE TABLE b (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let path = env.pipeline("[\"public.*\"]", "");
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("column v is integer on the target but text on the source"),
        "{line}"
    );
    let created: i64 = tgt
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('a', 'checkpoints')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        created, 0,
        "table a or the state schema was created despite the error"
    );

    // Rows the pipeline did not copy are never overwritten.
    tgt.batch_execute("DROP TABLE b; CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b VALUES (1, 'precious')")
        .await
        .unwrap();
    let (code, _, stderr) = cutover(&["run", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    let line = one_paragraph(&stderr);
    assert!(
        line.contains("already holds rows") && line.contains("TRUNCATE"),
        "{line}"
    );
    let kept: String = tgt.query_one("SELECT v FROM b", &[]).await.unwrap().get(0);
    assert_eq!(kept, "precious");
    env.drop_slot().await;
}

#[tokio::test]
async fn message_sink_mistakes_are_refused_before_anything_starts() {
    let env = Env::new("badsink").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    let base = std::fs::read_to_string(env.pipeline("[\"t\"]", "")).unwrap();
    let cases = [
        ("kind = \"redis\"\nname = \"r\"", vec!["unknown variant `redis`", "kafka", "line"]),
        (
            "kind = \"kafka\"\nname = \"k\"\nbrokers = \"localhost\"",
            vec!["sink[1].brokers", "host:port"],
        ),
        (
            "kind = \"kafka\"\nname = \"k\"\nbrokers = \"127.0.0.1:9\"\ntopic = \"{prefix}.{table}\"",
            vec!["sink[1].topic", "{prefix}", "{pipeline}, {schema}, {table}"],
        ),
        (
            "kind = \"mongodb\"\nname = \"m\"\nurl = \"mongodb://127.0.0.1:9\"\ndatabase = \"app\"\ncollection = \"system.{table}\"",
            vec!["sink[1].collection", "system."],
        ),
        (
            // Nothing listens on port 9: refused when connecting, before the slot is made.
            "kind = \"kafka\"\nname = \"k\"\nbrokers = \"127.0.0.1:9\"",
            vec!["Kafka brokers 127.0.0.1:9", "Fix:"],
        ),
        (
            "kind = \"nats\"\nname = \"n\"\nurl = \"nats://user:hunter2-not-a-real-secret@127.0.0.1:9\"",
            vec!["NATS at 127.0.0.1:9", "Fix:"],
        ),
    ];
    for (sink, expected) in cases {
        let path = write(&env, &format!("{base}\n[[sink]]\n{sink}\n"));
        let (code, _out, err) = cutover(&["run", &path]);
        assert_ne!(code, 0, "{sink}: accepted");
        let line = one_paragraph(&err);
        for text in expected {
            assert!(line.contains(text), "{sink}: expected {text:?} in: {line}");
        }
        assert!(!err.contains("hunter2"), "a secret was printed: {err}");
    }
    assert_nothing_created(&env).await;
}
