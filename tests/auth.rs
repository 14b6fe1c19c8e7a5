//! Passwords: md5 and SCRAM authentication on both connection kinds (SQL and replication),
//! and no command ever printing a password, whatever characters it holds. The roles and their
//! `pg_hba.conf` lines come from scripts/services.sh.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::targets::MessageServices;
use common::Env;

/// Every character a URL must escape, and one outside ASCII.
const ODD_PASSWORD: &str = "p@ss:w/rd%ü-odd-not-a-real-secret";
const ODD_ESCAPED: &str = "p%40ss%3Aw%2Frd%25%C3%BC-odd-not-a-real-secret";
const MD5_PASSWORD: &str = "md5-pw-not-a-real-secret";
/// Given to the Kafka sink under a secret's name, and under a misspelt one.
const KAFKA_SECRET: &str = "kafka-sasl-not-a-real-secret";
const MISSPELT_SECRET: &str = "misspelt-not-a-real-secret";

/// A pipeline whose source and target connect as `role`, with `more` appended.
fn pipeline_as(env: &Env, role: &str, password: &str, more: &str) -> PathBuf {
    let as_role = |url: &str| url.replacen("postgres@", &format!("{role}:{password}@"), 1);
    let path = env.pipeline("[\"t\"]", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&env.source_url, &as_role(&env.source_url))
        .replace(&env.target_url, &as_role(&env.target_url));
    std::fs::write(&path, format!("{text}{more}")).unwrap();
    path
}

async fn replicate_as(role: &str, password: &str) {
    let env = Env::new(&format!("auth_{role}")).await;
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'copied');",
    )
    .await;
    let path = pipeline_as(&env, role, password, "");
    assert!(
        std::fs::read_to_string(&path).unwrap().contains(role),
        "the pipeline does not connect as {role}"
    );
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("INSERT INTO t VALUES (2, 'streamed'); UPDATE t SET v = 'changed' WHERE id = 1;")
        .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The role's password is stored as an md5 hash and `pg_hba.conf` asks for md5: the slot is
/// created and streamed over the replication connection, the copy and the writes over SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_authentication_on_both_connection_kinds() {
    let env = Env::new("md5check").await;
    let stored: bool = env
        .source()
        .await
        .query_one(
            "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'cutover_md5'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored, "cutover_md5's password is not an md5 hash");
    replicate_as("cutover_md5", MD5_PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_authentication_with_a_password_every_url_must_escape() {
    replicate_as("cutover_odd", ODD_ESCAPED).await;
}

/// Runs a cutover command (global flags first); returns everything it printed.
fn output_of(args: &[&str], vars: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [
        ODD_PASSWORD,
        ODD_ESCAPED,
        "odd-not-a-real",
        "p@ss:w",
        KAFKA_SECRET,
        MISSPELT_SECRET,
    ] {
        assert!(
            !text.contains(secret),
            "{what} printed the secret {secret:?}:\n{text}"
        );
    }
}

/// Every command, in text and JSON, with debug logs, on a pipeline whose passwords hold @ : / %
/// and a non-ASCII letter, and a Kafka sink given secrets in its properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_a_password() {
    let env = Env::new("nosecret").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let kafka = format!(
        "\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{}\"\n\
         [sink.properties]\n\"sasl.password\" = \"{KAFKA_SECRET}\"\n",
        MessageServices::get().kafka_brokers
    );
    let path = pipeline_as(&env, "cutover_odd", ODD_ESCAPED, &kafka);
    let file = path.to_str().unwrap();
    let debug = [("CUTOVER_LOG", "debug")];
    let mut seen = Vec::new();

    let (code, out) = output_of(&["--log-format", "text", "check", file], &debug);
    assert_eq!(code, 0, "check:\n{out}");
    seen.push(("check", out));
    let mut run = env.start_with_env(&path, &debug);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("INSERT INTO t VALUES (2, 'b');").await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    for args in [
        vec!["--log-format", "text", "status", file],
        vec!["--log-format", "json", "status", "--format", "json", file],
        vec!["--log-format", "text", "verify", file],
        vec!["--log-format", "json", "verify", "--format", "json", file],
        vec!["--log-format", "text", "dlq", "list", file],
        vec!["--log-format", "text", "switch", "--dry-run", file],
    ] {
        let (_, out) = output_of(&args, &debug);
        seen.push((args[2], out));
    }
    assert!(run.terminate().success(), "{}", run.log_text());
    seen.push(("run (JSON logs)", run.log_text()));
    // Text logs, and the error of a wrong password holding the same characters.
    let text_run = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["--log-format", "text", "run", file])
        .env("CUTOVER_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    sigterm(text_run.id());
    let out = text_run.wait_with_output().unwrap();
    seen.push((
        "run (text logs)",
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ));
    let wrong = pipeline_as(
        &env,
        "cutover_odd",
        &ODD_ESCAPED.replace("p%40", "q%40"),
        "",
    );
    let (code, out) = output_of(&["check", wrong.to_str().unwrap()], &debug);
    assert_ne!(code, 0, "a wrong password was accepted:\n{out}");
    seen.push(("check with a wrong password", out));
    // librdkafka's own message for a refused setting carries its value.
    let misspelt = pipeline_as(
        &env,
        "cutover_odd",
        ODD_ESCAPED,
        &kafka.replace(
            &format!("\"sasl.password\" = \"{KAFKA_SECRET}\""),
            &format!("\"sasl.pasword\" = \"{MISSPELT_SECRET}\""),
        ),
    );
    let (code, out) = output_of(&["run", misspelt.to_str().unwrap()], &debug);
    assert_ne!(code, 0, "a misspelt setting was accepted:\n{out}");
    assert!(
        out.contains("sasl.pasword"),
        "the setting is not named:\n{out}"
    );
    seen.push(("run with a misspelt Kafka setting", out));
    let (code, out) = output_of(&["teardown", file], &debug);
    assert_eq!(code, 0, "teardown:\n{out}");
    seen.push(("teardown", out));

    for (what, text) in &seen {
        assert_no_secret(what, text);
    }
}

/// SIGTERM, so the run drains and exits as an operator's stop would.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
