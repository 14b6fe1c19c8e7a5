//! The admin server of `cutover run` on a real pipeline: `/metrics` checked against the truth
//! (rows copied, changes applied, lag back to 0, dead letters parked), `promtool check metrics`
//! on its body, the probes, the status JSON, and the token-protected actions (pause and resume
//! stop and restart the flow; a verify on demand lands in the metrics).

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Env, Pipeline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TOKEN: &str = "admin-token-for-tests-0123456789";

/// The SCRAM role scripts/services.sh creates, whose password holds every character a URL
/// must escape: no endpoint may show it.
const ODD_ROLE: &str = "cutover_odd";
const ODD_PASSWORD: &str = "p@ss:w/rd%ü-odd-not-a-real-secret";
const ODD_ESCAPED: &str = "p%40ss%3Aw%2Frd%25%C3%BC-odd-not-a-real-secret";

/// One HTTP/1.1 request; returns (status code, body).
async fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    request(port, "127.0.0.1", method, path, token).await
}

/// One HTTP/1.1 request with a chosen `Host`; returns (status code, body).
async fn request(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the admin server");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The samples of a metrics body, by `name{labels}` as written.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(body: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{pipeline=\"{}\"{labels}}}", pipeline_of(body));
    *samples(body)
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{body}"))
}

fn pipeline_of(body: &str) -> String {
    let line = body
        .lines()
        .find(|l| l.starts_with("cutover_up{"))
        .expect("cutover_up");
    line.split('"').nth(1).unwrap().to_string()
}

/// The admin server's port, from the run's log.
async fn admin_port(run: &Pipeline) -> u16 {
    run.wait_log("admin server listening", Duration::from_secs(60))
        .await;
    let log = run.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("admin server listening"))
        .unwrap();
    let at = line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `done` holds for its body.
async fn wait_metrics(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http(port, "GET", "/metrics", None).await;
        assert_eq!(code, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_probes_status_and_actions_on_a_real_run() {
    let env = Env::new("admin").await;
    env.on_source(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int);
         INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 2500) g;",
    )
    .await;
    // The target refuses negative balances: one change will be parked as a dead letter.
    env.target()
        .await
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int CHECK (balance >= 0))",
        )
        .await
        .unwrap();
    let path = env.pipeline(
        "[\"accounts\"]",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${CUTOVER_TEST_ADMIN_TOKEN}\"\n",
    );
    // Both connections as a role with a password, to prove no endpoint shows it.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "postgres://postgres@",
        &format!("postgres://{ODD_ROLE}:{ODD_ESCAPED}@"),
    );
    std::fs::write(&path, text).unwrap();
    let mut run = env.start_with_env(&path, &[("CUTOVER_TEST_ADMIN_TOKEN", TOKEN)]);
    let port = admin_port(&run).await;
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["accounts"], Duration::from_secs(60)).await;

    // Rows copied = the table's rows.
    let body = wait_metrics(port, "the copy", |b| {
        b.contains("cutover_snapshot_table_done")
    })
    .await;
    let table = ",table=\"public.accounts\"";
    assert_eq!(
        metric(&body, "cutover_snapshot_rows_copied_total", table),
        2500.0
    );
    assert_eq!(metric(&body, "cutover_snapshot_table_done", table), 1.0);

    // 300 changes, one of them refused by the target: applied counts all that were handed on,
    // the dead-letter gauge the one parked, and lag falls back once writes stop. Not to 0 bytes:
    // the source cluster is shared with other tests, whose WAL moves its position; a quiet
    // pipeline's sinks record a heartbeat at the WAL end every second, so it stays within that.
    env.on_source("UPDATE accounts SET balance = balance + 1 WHERE id <= 299; UPDATE accounts SET balance = -1 WHERE id = 300;")
        .await;
    let sink = ",sink=\"target\"";
    let body = wait_metrics(port, "the changes and lag 0", |b| {
        let s = samples(b);
        let key = |n: &str| format!("{n}{{pipeline=\"{}\"{sink}}}", pipeline_of(b));
        s.get(&key("cutover_sink_changes_applied_total")) == Some(&300.0)
            && s.get(&key("cutover_sink_lag_bytes"))
                .is_some_and(|l| *l < 1_048_576.0)
            && s.get(&key("cutover_sink_lag_seconds"))
                .is_some_and(|l| *l < 5.0)
    })
    .await;
    assert_eq!(metric(&body, "cutover_sink_dead_letters", sink), 1.0);
    assert!(metric(&body, "cutover_sink_change_bytes_total", sink) > 300.0 * 20.0);
    let writes = metric(&body, "cutover_sink_write_seconds_count", sink);
    assert!(writes >= 1.0, "no write observed:\n{body}");
    assert_eq!(
        metric(
            &body,
            "cutover_sink_write_seconds_bucket",
            &format!("{sink},le=\"+Inf\"")
        ),
        writes
    );
    assert!(metric(&body, "cutover_sink_commit_to_durable_seconds_count", sink) >= 1.0);
    assert_eq!(metric(&body, "cutover_phase", ",phase=\"streaming\""), 1.0);
    let (code, out, err) = common::cutover(&["dlq", "list", path.to_str().unwrap()]);
    assert!(
        out.contains("1 parked change(s)"),
        "the metric disagrees with the parked changes ({code}):\n{out}\n{err}"
    );
    {
        let promtool = common::services_var("CUTOVER_PROMTOOL_BIN");
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Probes and the status document.
    let (code, body) = http(port, "GET", "/healthz", None).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, body) = http(port, "GET", "/api/status", None).await;
        if code == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "no status report: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["pipeline"], env.name.as_str(), "{status}");
    let (code, body) = http(port, "GET", "/api/switch", None).await;
    assert_eq!(code, 200, "{body}");
    let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (rec["step"].as_str(), rec["epoch"].as_i64()),
        (Some("idle"), Some(0)),
        "{body}"
    );
    let (code, body) = http(port, "GET", "/readyz", None).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code == 200, ready["ready"] == true, "{body}");
    assert_eq!(ready["ready"], doc["ready"], "{body}\n{status}");

    // Actions: refused without the token or with a wrong one.
    let (code, _) = http(port, "POST", "/api/pause", None).await;
    assert_eq!(code, 401);
    let (code, _) = http(port, "POST", "/api/pause", Some("wrong-token-wrong-token")).await;
    assert_eq!(code, 401);
    // Paused, a write does not arrive; resumed, it does.
    let (code, body) = http(port, "POST", "/api/pause", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    wait_metrics(port, "the reader paused", |b| {
        b.contains(&format!(
            "cutover_reader_paused{{pipeline=\"{}\"}} 1",
            pipeline_of(b)
        ))
    })
    .await;
    env.on_source("INSERT INTO accounts VALUES (5000, 1)").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = env
        .target()
        .await
        .query_opt("SELECT 1 FROM accounts WHERE id = 5000", &[])
        .await
        .unwrap();
    assert!(
        arrived.is_none(),
        "a change arrived while the reader was paused"
    );
    let (code, body) = http(port, "POST", "/api/resume", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(port, "POST", "/api/pause?sink=nosuch", Some(TOKEN)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("nosuch"), "{body}");

    // A rate limit set while running holds the sink back (its throttled time grows), and is
    // lifted the same way.
    let (code, body) = http(port, "POST", "/api/rate?changes_per_s=100", Some(TOKEN)).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        port,
        "POST",
        "/api/rate?sink=target&changes_per_s=100",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    env.on_source("INSERT INTO accounts SELECT g, 1 FROM generate_series(6001, 6300) g")
        .await;
    wait_metrics(port, "the sink throttled", |b| {
        samples(b)
            .get(&format!(
                "cutover_sink_throttled_seconds_total{{pipeline=\"{}\"{sink}}}",
                pipeline_of(b)
            ))
            .is_some_and(|t| *t > 1.0)
    })
    .await;
    let (code, body) = http(port, "POST", "/api/rate?sink=target", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert!(run
        .log_text()
        .contains("sink rate limits set by the operator"));

    // No endpoint shows the password, in any form.
    for (method, route) in [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/api/status"),
        ("GET", "/api/live"),
        ("POST", "/api/pause?sink=nosuch"),
    ] {
        let (_, body) = http(port, method, route, Some(TOKEN)).await;
        for secret in [ODD_PASSWORD, ODD_ESCAPED, "odd-not-a-real", TOKEN] {
            assert!(!body.contains(secret), "{route} shows a secret:\n{body}");
        }
    }

    // A verify on demand: the key parked on the target differs, and the metrics say so.
    let (code, body) = http(port, "POST", "/api/verify", Some(TOKEN)).await;
    assert_eq!(code, 202, "{body}");
    let body = wait_metrics(port, "the verify's result", |b| {
        b.contains("cutover_verify_drift_rows")
    })
    .await;
    assert_eq!(
        metric(&body, "cutover_verify_drift_rows", ""),
        1.0,
        "{body}"
    );
    // The status names the differing key (what the console lists), once its report is read again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(port, "GET", "/api/status", None).await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let keys = doc["last_verify"]["drift_keys"]["target/public.accounts"].to_string();
        if keys.contains("300") {
            assert!(
                keys.contains("differs") && keys.contains("balance"),
                "{keys}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no differing key in the status:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// Every metric name in `text` (a rule file, a dashboard).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cutover_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The alert rules pass promtool's check and their unit tests (each alert fires on the series
/// it is for, and not before its time), and every metric the rules and the Grafana dashboard
/// query is one `cutover run` serves.
#[test]
fn alert_rules_and_dashboard_query_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let promtool = common::services_var("CUTOVER_PROMTOOL_BIN");
    for args in [
        ["check", "rules", "cutover-alerts.yml"],
        ["test", "rules", "cutover-alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(root.join("config/prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every family the server can serve: a status with a sink, a table and a check, and a
    // report with gates.
    let mut status = cutover::status::Status::new();
    status.sinks.push(cutover::status::SinkProgress {
        name: "target".into(),
        durable: cutover_core::Lsn(1),
        ..Default::default()
    });
    status.retries.insert("connection".into(), 1);
    status.tables.push(cutover::status::TableProgress {
        name: "public.t".into(),
        rows_copied: 1,
        rows_estimate: 1,
        done: true,
        ..Default::default()
    });
    status.last_verify = Some(cutover::status::VerifySummary {
        at: std::time::SystemTime::now(),
        drift_rows: 0,
        in_flight_rows: 0,
        last_clean: Some(std::time::SystemTime::now()),
    });
    let report = serde_json::json!({"gates": [{"gate": "lag", "ok": true}], "switch_step": "idle"});
    let body = cutover::admin::render_metrics("p", &status, Some((report, true, 1.0)));
    let served = metric_names(&body);
    for file in [
        "config/prometheus/cutover-alerts.yml",
        "config/grafana/cutover-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} queries no cutover metric");
        let unknown: Vec<_> = used.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics cutover does not serve: {unknown:?}"
        );
    }
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(root.join("config/grafana/cutover-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
}

/// The web console in a headless Chromium: the page the binary serves (no external assets)
/// fills itself from the live view and the status report: the pipeline, the table's copy, the
/// sink, the lag chart, the gates and the verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_pipeline_in_a_headless_browser() {
    let env = Env::new("console").await;
    env.on_source(
        "CREATE TABLE orders (id int PRIMARY KEY, total int);
         INSERT INTO orders SELECT g, g FROM generate_series(1, 500) g;",
    )
    .await;
    let path = env.pipeline("[\"orders\"]", "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let mut run = env.start(&path);
    let port = admin_port(&run).await;
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["orders"], Duration::from_secs(60)).await;
    // Two samples of lag for the chart, and the first status report.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let profile = env.dir.join("chromium-profile");
    let out = tokio::process::Command::new(common::services_var("CUTOVER_CHROMIUM_BIN"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .await
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    for (what, text) in [
        ("the pipeline", env.name.as_str()),
        ("the phase", "streaming"),
        ("the table", "public.orders"),
        ("the copy done", " done"),
        ("the sink", "<td>target</td>"),
        ("the lag chart", "<polyline"),
        ("a readiness gate", "pipeline streaming"),
        ("the switch record", "direction forward, epoch 0, step idle"),
    ] {
        assert!(
            dom.contains(text),
            "the console does not show {what} ({text:?}):\n{dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        dom.contains(">READY<") || dom.contains(">NOT READY<"),
        "no verdict:\n{dom}"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// The console's actions in Chromium (playwright-core): the sink paused from the page while
/// the source takes writes shows its lag growing; resumed from the page, it drains and the
/// target ends equal to the source. The page's screenshot goes to the test's directory, or
/// where `CUTOVER_TEST_CONSOLE_SHOT` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_paused_and_resumed_from_the_console_falls_behind_then_drains() {
    let env = Env::new("console_pause").await;
    env.on_source(
        "CREATE TABLE events (id int PRIMARY KEY, payload text);
         INSERT INTO events SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;",
    )
    .await;
    let path = env.pipeline(
        "[\"events\"]",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${CUTOVER_TEST_ADMIN_TOKEN}\"\n",
    );
    let mut run = env.start_with_env(&path, &[("CUTOVER_TEST_ADMIN_TOKEN", TOKEN)]);
    let port = admin_port(&run).await;
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.wait_equal(&["events"], Duration::from_secs(60)).await;
    // Writes for ten seconds while the page pauses the sink.
    let src = env.source().await;
    let writer = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(10);
        let mut id = 10_000;
        while Instant::now() < until {
            src.execute("INSERT INTO events VALUES ($1, repeat('y', 200))", &[&id])
                .await
                .unwrap();
            id += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id - 10_000
    });
    // CUTOVER_TEST_CONSOLE_SHOT=$PWD/docs/console.png keeps it (how docs/console.png is made).
    let shot = std::env::var("CUTOVER_TEST_CONSOLE_SHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| env.dir.join("console.png"));
    let out = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console/pause_resume.cjs"
        ))
        .env(
            "PLAYWRIGHT_CORE",
            common::services_var("CUTOVER_PLAYWRIGHT_CORE"),
        )
        .env("CHROMIUM", common::services_var("CUTOVER_CHROMIUM_BIN"))
        .env("URL", format!("http://127.0.0.1:{port}/"))
        .env("TOKEN", TOKEN)
        .env("SINK", "target")
        .env("SHOT", &shot)
        .output()
        .await
        .expect("run node");
    let written = writer.await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the console script failed:\n{said}\n{}",
        run.log_text()
    );
    assert!(
        said.contains("lag grew") && said.contains("lag drained"),
        "{said}"
    );
    assert!(written > 50, "only {written} rows written");
    assert!(
        run.log_text()
            .contains("sink paused or resumed by the operator"),
        "the pipeline did not log the page's actions"
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot"
    );
    env.wait_equal(&["events"], Duration::from_secs(60)).await;
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}

/// `cutover status` shows the running pipeline's live view (its phase, each sink's lag and
/// changes applied) when its admin server answers, and says it reads the saved state when
/// nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_running_pipeline_and_falls_back_without_it() {
    let env = Env::new("status_live").await;
    env.on_source("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1), (2);")
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = env.pipeline(
        "[\"items\"]",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let file = path.to_str().unwrap();
    let mut run = env.start(&path);
    run.wait_log("admin server listening", Duration::from_secs(60))
        .await;
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    env.on_source("INSERT INTO items VALUES (3);").await;
    env.wait_equal(&["items"], Duration::from_secs(60)).await;
    let (_, out, err) = common::cutover(&["status", file]);
    assert!(
        out.contains("running: streaming (live from the pipeline's admin server)")
            && out.contains("sink target: ")
            && out.contains("changes applied this run"),
        "no live view in:\n{out}\n{err}"
    );
    let (_, out, _) = common::cutover(&["status", "--format", "json", file]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["live"]["phase"], "streaming", "{out}");
    assert!(run.terminate().success(), "{}", run.log_text());
    let (_, out, _) = common::cutover(&["status", file]);
    assert!(out.contains("running: no `cutover run` answers"), "{out}");
    env.drop_slot().await;
}

/// One GET with a chosen `Host`; returns the status code and body.
async fn http_to_host(port: u16, host: &str, path: &str) -> (u16, String) {
    request(port, host, "GET", path, None).await
}

/// The admin server answers only requests addressed to an IP address, localhost or a name in
/// `[admin] allowed_hosts` (a page cannot read it through DNS rebinding), and drops a client
/// that does not finish its request's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_refuses_other_hosts_and_slow_clients() {
    let env = Env::new("adminhost").await;
    env.on_source("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let path = env.pipeline(
        "[\"t\"]",
        "[admin]\nlisten = \"127.0.0.1:0\"\nallowed_hosts = [\"Cutover.Internal\"]\n",
    );
    let mut run = env.start(&path);
    let port = admin_port(&run).await;
    run.wait_log("streaming changes", Duration::from_secs(60))
        .await;
    // The first status report is read in the background (503 until then).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while http_to_host(port, "127.0.0.1", "/api/status").await.0 == 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "no status report within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for host in [
        "127.0.0.1",
        &format!("localhost:{port}"),
        "cutover.internal",
    ] {
        let (code, body) = http_to_host(port, host, "/api/status").await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }
    for host in ["attacker.example", &format!("attacker.example:{port}")] {
        let (code, body) = http_to_host(port, host, "/api/status").await;
        assert_eq!(code, 403, "Host {host} was answered: {body}");
        assert!(body.contains("allowed_hosts"), "{body}");
    }
    // The switch record, asked many times at once, is read once and shared.
    let asks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(http_to_host(port, "127.0.0.1", "/api/switch")))
        .collect();
    for ask in asks {
        let (code, body) = ask.await.unwrap();
        assert!(code == 200 || code == 503, "{code}: {body}");
    }
    // A client that sends half a request line and waits is dropped.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the server kept a client that never finished its headers for 30 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "dropped too soon"
    );
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
