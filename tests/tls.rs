//! TLS against real servers: the `tls` PostgreSQL cluster of scripts/services.sh takes TCP
//! connections by TLS only, with a certificate for `localhost` (and no IP address) signed by a
//! test CA; the role `cutover_cert` logs in by client certificate. `nats_tls` is a nats-server
//! that requires TLS and verifies client certificates against the same CA. `kafka_tls` is a
//! tansu broker behind a TLS terminator (socat, client certificates required) that advertises
//! itself as `localhost`; `kafka_sasl` is a tansu broker that requires a SCRAM login.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::targets::{self, KafkaReader, NatsReader};
use common::{cutover, services_var, url, Env, Services};

fn ca_dir() -> PathBuf {
    PathBuf::from(services_var("CUTOVER_TEST_CA_DIR"))
}

fn tls_port() -> u16 {
    services_var("CUTOVER_TLS_PORT").parse().unwrap()
}

/// A test database on the TLS-only cluster, with the test's own connections over its Unix
/// socket (the test's client speaks no TLS); the target is the ordinary target cluster.
async fn tls_env(prefix: &str) -> Env {
    let target = Services::get().target_port;
    let socket_dir = ca_dir().parent().unwrap().join("tls");
    let socket_url = move |db: &str| {
        format!(
            "host={} port={} user=postgres dbname={db}",
            socket_dir.display(),
            tls_port()
        )
    };
    Env::on_clusters(
        prefix,
        &[&socket_url("postgres"), &url(target, "postgres")],
        socket_url,
        |db| url(target, db),
    )
    .await
}

/// The TLS cluster's URL for `db` as `user`, through `host`, with `options` (`sslmode=...`).
fn tls_url(user: &str, host: &str, db: &str, options: &str) -> String {
    format!("postgres://{user}@{host}:{}/{db}?{options}", tls_port())
}

fn verify_full_with_client_cert(env: &Env, host: &str) -> String {
    let ca = ca_dir();
    tls_url(
        "cutover_cert",
        host,
        &env.name,
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.join("ca.pem").display(),
            ca.join("client.pem").display(),
            ca.join("client.key").display()
        ),
    )
}

/// A pipeline file whose source is `source_url` (instead of the socket the test uses).
fn pipeline_from(env: &Env, source_url: &str, more_sinks: &str) -> PathBuf {
    let path = env.pipeline_with("[\"t\"]", "", more_sinks);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&env.source_url, source_url);
    std::fs::write(&path, text).unwrap();
    path
}

/// The copy and the stream (SQL sessions and the replication connection) over TLS with
/// `verify-full` and a client certificate; the server sees every cutover session encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_source_is_copied_and_streamed_with_verify_full_and_a_client_certificate() {
    let env = tls_env("tls_full").await;
    env.on_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'copied ' || g FROM generate_series(1, 500) g;",
    )
    .await;
    let path = pipeline_from(&env, &verify_full_with_client_cert(&env, "localhost"), "");
    let (code, out, err) = cutover(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "check:\n{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.contains("tls   source:"))
        .unwrap_or_else(|| panic!("check does not report the source's TLS:\n{out}"));
    assert!(
        line.contains("TLS TLSv1.")
            && line.contains("sslmode=verify-full")
            && line.contains("client certificate"),
        "{line}"
    );

    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "INSERT INTO t VALUES (501, 'streamed'); UPDATE t SET v = 'changed' WHERE id = 1; \
         DELETE FROM t WHERE id = 2;",
    )
    .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;

    // Every session cutover holds on the source, the walsender included, is encrypted, and
    // logged in by certificate.
    let src = env.source().await;
    let rows = src
        .query(
            "SELECT a.backend_type, a.usename::text, coalesce(s.ssl, false) \
             FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
               AND a.backend_type IN ('client backend', 'walsender')",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        seen.iter().any(|(kind, _, _)| kind == "walsender"),
        "no replication connection is open: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(_, user, ssl)| *ssl && user == "cutover_cert"),
        "a cutover session is not encrypted, or not the certificate's role: {seen:?}"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// What a wrong setting does: each is refused at once, with the fix, and never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tls_settings_are_refused_with_the_fix() {
    let env = tls_env("tls_wrong").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text);")
        .await;
    let ca = ca_dir().join("ca.pem");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_host = pipeline_from(&env, &verify_full_with_client_cert(&env, "127.0.0.1"), "");
    let started = Instant::now();
    let (code, out, err) = cutover(&["check", wrong_host.to_str().unwrap()]);
    assert_ne!(code, 0, "verify-full accepted a wrong host name:\n{out}");
    assert!(
        err.contains("does not name the host") && err.contains("verify-ca"),
        "the refusal does not say why, or the fix:\n{err}"
    );
    // A run stops as well (a certificate is not retried).
    let mut run = env.start(&wrong_host);
    let status = run.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", run.log_text());
    assert!(
        run.log_text().contains("does not name the host"),
        "{}",
        run.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the refusal was retried"
    );

    // verify-ca checks the chain only: the same address is accepted.
    let chain_only = pipeline_from(
        &env,
        &tls_url(
            "postgres",
            "127.0.0.1",
            &env.name,
            &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
        ),
        "",
    );
    let (code, out, err) = cutover(&["check", chain_only.to_str().unwrap()]);
    assert_eq!(code, 0, "verify-ca:\n{out}\n{err}");

    // A plain connection: the server's refusal, with the fix.
    let plain = pipeline_from(
        &env,
        &tls_url("postgres", "127.0.0.1", &env.name, "sslmode=disable"),
        "",
    );
    let (code, _, err) = cutover(&["check", plain.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no encryption") && err.contains("sslmode=require"),
        "{err}"
    );

    // A CA file that is not there, named before anything connects.
    let missing = pipeline_from(
        &env,
        &tls_url(
            "postgres",
            "localhost",
            &env.name,
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ),
        "",
    );
    let (code, _, err) = cutover(&["check", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("sslrootcert /nonexistent/ca.pem"),
        "the missing file is not named:\n{err}"
    );
}

/// A NATS sink on a server that requires TLS and client certificates: the stream equals the
/// source; without the client certificate the sink is refused with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_over_tls_with_a_client_certificate() {
    cutover_postgres::tls::install_default_provider();
    let env = Env::new("tls_nats").await;
    let schema = "CREATE TABLE t (id int PRIMARY KEY, v text);";
    env.on_source(&format!(
        "{schema} INSERT INTO t SELECT g, 'copied ' || g FROM generate_series(1, 200) g;"
    ))
    .await;
    let ca = ca_dir();
    let port: u16 = services_var("CUTOVER_NATS_TLS_PORT").parse().unwrap();
    let sink = |cert: bool| {
        format!(
            "\n[[sink]]\nkind = \"nats\"\nname = \"nats\"\nurl = \"nats://localhost:{port}\"\n\
             tls_ca_file = \"{}\"\n{}",
            ca.join("ca.pem").display(),
            if cert {
                format!(
                    "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                    ca.join("client.pem").display(),
                    ca.join("client.key").display()
                )
            } else {
                String::new()
            }
        )
    };

    let without = env.pipeline_with("[\"t\"]", "", &sink(false));
    let (code, out, _) = cutover(&["check", without.to_str().unwrap()]);
    assert_ne!(code, 0, "a server that verifies clients took none:\n{out}");
    assert!(
        out.contains("sink nats (nats): FAIL") && out.contains("TLS required"),
        "{out}"
    );

    let path = env.pipeline_with("[\"t\"]", "", &sink(true));
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("INSERT INTO t VALUES (201, 'streamed'); DELETE FROM t WHERE id = 3;")
        .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.join("ca.pem"))
        .add_client_certificate(ca.join("client.pem"), ca.join("client.key"))
        .connect(format!("nats://localhost:{port}"))
        .await
        .expect("the test connects to the TLS server");
    let mut nats = NatsReader::over(client, &format!("cutover_{}", env.name)).await;
    targets::wait_nats_equal(&env, &mut nats, schema, &["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A MongoDB sink over TLS, with the CA given in the URI's options (the driver's own): the
/// collections equal the source; a wrong host name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_sink_over_tls() {
    cutover_postgres::tls::install_default_provider();
    let env = Env::new("tls_mongo").await;
    let schema = "CREATE TABLE t (id int PRIMARY KEY, v text);";
    env.on_source(&format!(
        "{schema} INSERT INTO t SELECT g, 'copied ' || g FROM generate_series(1, 100) g;"
    ))
    .await;
    let port: u16 = services_var("CUTOVER_MONGO_TLS_PORT").parse().unwrap();
    let ca = ca_dir().join("ca.pem");
    let mongo_url = |host: &str| {
        format!(
            "mongodb://{host}:{port}/?directConnection=true&tls=true&tlsCAFile={}",
            ca.display()
        )
    };
    let sink = |host: &str| {
        format!(
            "\n[[sink]]\nkind = \"mongodb\"\nname = \"mongo\"\nurl = \"{}\"\ndatabase = \"{}\"\n",
            mongo_url(host),
            env.name
        )
    };
    let wrong = env.pipeline_with("[\"t\"]", "", &sink("127.0.0.1"));
    let (code, out, _) = cutover(&["check", wrong.to_str().unwrap()]);
    assert_ne!(
        code, 0,
        "a certificate for localhost was taken for 127.0.0.1:\n{out}"
    );
    assert!(out.contains("sink mongo (mongodb): FAIL"), "{out}");

    let path = env.pipeline_with("[\"t\"]", "", &sink("localhost"));
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "INSERT INTO t VALUES (101, 'streamed'); UPDATE t SET v = 'changed' WHERE id = 7;",
    )
    .await;
    env.wait_equal(&["t"], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let folded = targets::mongo_rows_at(&mongo_url("localhost"), &env.name, &["t"]).await;
        match targets::folded_equal(&env, "mongo", schema, &folded, &["t"], true).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "the collection differs: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The librdkafka settings for the `kafka_tls` broker: the test CA, a client certificate, and
/// IPv4 (the terminator listens on 127.0.0.1; `localhost` also resolves to ::1).
fn kafka_tls_settings() -> Vec<(&'static str, String)> {
    let ca = ca_dir();
    vec![
        ("security.protocol", "ssl".into()),
        ("ssl.ca.location", ca.join("ca.pem").display().to_string()),
        (
            "ssl.certificate.location",
            ca.join("client.pem").display().to_string(),
        ),
        (
            "ssl.key.location",
            ca.join("client.key").display().to_string(),
        ),
        ("broker.address.family", "v4".into()),
    ]
}

fn kafka_sink(brokers: &str, settings: &[(&str, String)]) -> String {
    let mut sink =
        format!("\n[[sink]]\nkind = \"kafka\"\nname = \"kafka\"\nbrokers = \"{brokers}\"\n");
    if !settings.is_empty() {
        sink.push_str("[sink.properties]\n");
        for (k, v) in settings {
            sink.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
    }
    sink
}

/// A Kafka sink over TLS with a client certificate, through a terminator that verifies it:
/// the topics, folded, equal the source, and `check` reports the protection. The same broker
/// reached by an address its certificate does not name is refused at once, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_over_tls_with_a_client_certificate() {
    cutover_postgres::tls::install_default_provider();
    let env = Env::new("tls_kafka").await;
    let schema = "CREATE TABLE t (id int PRIMARY KEY, v text);";
    env.on_source(&format!(
        "{schema} INSERT INTO t SELECT g, 'copied ' || g FROM generate_series(1, 200) g;"
    ))
    .await;
    let port: u16 = services_var("CUTOVER_KAFKA_TLS_PORT").parse().unwrap();
    let settings = kafka_tls_settings();

    let wrong = env.pipeline_with(
        "[\"t\"]",
        "",
        &kafka_sink(&format!("127.0.0.1:{port}"), &settings),
    );
    let started = Instant::now();
    let (code, out, _) = cutover(&["check", wrong.to_str().unwrap()]);
    assert_ne!(
        code, 0,
        "a certificate for localhost was taken for 127.0.0.1:\n{out}"
    );
    assert!(
        out.contains("sink kafka (kafka): FAIL") && out.contains("certificate verify failed"),
        "the refusal does not say why:\n{out}"
    );
    assert!(out.contains("ssl.ca.location"), "no fix is given:\n{out}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a refusal waited for the timeout: {:?}",
        started.elapsed()
    );

    let brokers = format!("localhost:{port}");
    let path = env.pipeline_with("[\"t\"]", "", &kafka_sink(&brokers, &settings));
    let (code, out, _) = cutover(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tls   sink kafka: TLS (certificate and host name checked")
            && out.contains("client certificate"),
        "{out}"
    );
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source(
        "INSERT INTO t VALUES (201, 'streamed'); UPDATE t SET v = 'changed' WHERE id = 7; DELETE FROM t WHERE id = 3;",
    )
    .await;
    let topics = vec![format!("{}.public.t", env.name)];
    let mut kafka = KafkaReader::at(&brokers, &settings, &topics);
    targets::wait_kafka_equal(&env, &mut kafka, schema, &["t"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// A Kafka sink whose SCRAM login the brokers refuse: `check` and `run` stop within seconds
/// with the brokers' reason and the fix, and the password is shown nowhere. A SASL mechanism
/// librdkafka is not built with is refused when the file is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_refusals_are_clear_and_keep_the_password_out() {
    let env = Env::new("sasl_kafka").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let port: u16 = services_var("CUTOVER_KAFKA_SASL_PORT").parse().unwrap();
    let password = "scram-pw-not-a-real-secret";
    let sink = |mechanism: &str| {
        kafka_sink(
            &format!("127.0.0.1:{port}"),
            &[
                ("security.protocol", "sasl_plaintext".into()),
                ("sasl.mechanism", mechanism.into()),
                ("sasl.username", "nobody".into()),
                ("sasl.password", password.into()),
            ],
        )
    };
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let path = env.pipeline_with("[\"t\"]", "", &sink(mechanism));
        let started = Instant::now();
        let (code, out, err) = cutover(&["check", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains("sink kafka (kafka): FAIL")
                && out.contains("SASL")
                && out.contains("sasl.username"),
            "{mechanism}: the refusal does not say why or how to fix it:\n{out}"
        );
        assert!(
            !out.contains(password) && !err.contains(password),
            "{out}{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
    }
    let path = env.pipeline_with("[\"t\"]", "", &sink("SCRAM-SHA-512"));
    let mut run = env.start(&path);
    let status = run.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "run went on with a refused login");
    let log = run.log_text();
    assert!(log.contains("SASL") && !log.contains(password), "{log}");

    let gssapi = env.pipeline_with("[\"t\"]", "", &sink("GSSAPI"));
    let (code, _, err) = cutover(&["check", gssapi.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("properties.sasl.mechanism") && err.contains("SCRAM-SHA-512"),
        "{err}"
    );
    env.drop_slot().await;
}
