//! Databases shaped like real ones: an application schema restored on the target with
//! `pg_dump -s` (foreign keys, triggers, an audit table, identity keys, free-standing and shared
//! sequences, a generated column, an enum, domains, a partitioned table), and sources and
//! targets of other PostgreSQL versions than 15 (the clusters `scripts/services.sh` starts from
//! `CUTOVER_PG_VERSIONS`). Each migrates through copy, stream, verify, switch and rollback,
//! compared table by table with the source by a method of its own (every row's text).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{cutover, services_var, Env};

fn pg_tool(name: &str) -> String {
    format!("{}/{name}", services_var("CUTOVER_PG_BIN"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs a SQL file with psql (stopping at the first error).
fn psql_file(url: &str, file: &Path) {
    let out = Command::new(pg_tool("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql -f {} on {url}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The application schema for a server of `version_num` (and the one it migrates with, the
/// older of the two deciding what the schema may use), then its seed data.
fn app_schema(url: &str, version_num: u32) {
    psql_file(url, &fixture("app_schema.sql"));
    if version_num >= 110000 {
        psql_file(url, &fixture("app_schema_11.sql"));
    }
    if version_num >= 120000 {
        psql_file(url, &fixture("app_schema_12.sql"));
    }
}

/// The target's schema as a user restores it: `pg_dump -s` of the source into `psql`.
fn restore_schema(source_url: &str, target_url: &str) {
    let dump = Command::new(pg_tool("pg_dump"))
        .args(["-s", "--no-owner", "--no-privileges", "-d", source_url])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "pg_dump -s: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let file = std::env::temp_dir().join(format!("cutover-schema-{}.sql", std::process::id()));
    std::fs::write(&file, &dump.stdout).unwrap();
    psql_file(target_url, &file);
    let _ = std::fs::remove_file(&file);
}

/// `clients` pgbench clients running the application's transaction `transactions` times each.
fn workload(url: &str, clients: u32, transactions: u32, dir: &Path) -> std::process::Child {
    Command::new(pg_tool("pgbench"))
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-t",
            &transactions.to_string(),
        ])
        .arg("-f")
        .arg(fixture("app_workload.sql"))
        .arg(url)
        .stdout(std::fs::File::create(dir.join("workload.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("workload.err")).unwrap())
        .spawn()
        .unwrap()
}

fn workload_done(mut child: std::process::Child, dir: &Path) {
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(dir.join("workload.out")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("workload.err")).unwrap_or_default();
    assert!(
        status.success() && !err.contains("aborted"),
        "the workload failed:\n{out}\n{err}"
    );
}

/// The source's tables (partitions by their root), by name.
async fn tables(env: &Env) -> Vec<String> {
    env.source()
        .await
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every sequence of the source with its value, and the target's value of the same one.
async fn sequences(env: &Env) -> Vec<(String, i64, i64)> {
    let read = |client: tokio_postgres::Client| async move {
        let names: Vec<String> = client
            .query(
                "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::new();
        for n in names {
            let v: i64 = client
                .query_one(&format!("SELECT last_value FROM {n}"), &[])
                .await
                .unwrap()
                .get(0);
            out.push((n, v));
        }
        out
    };
    let source = read(env.source().await).await;
    let target = read(env.target().await).await;
    source
        .into_iter()
        .map(|(n, s)| {
            let t = target
                .iter()
                .find(|(m, _)| *m == n)
                .unwrap_or_else(|| panic!("sequence {n} is missing on the target"))
                .1;
            (n, s, t)
        })
        .collect()
}

async fn dead_letters(env: &Env) -> i64 {
    env.target()
        .await
        .query_one("SELECT count(*) FROM cutover.dead_letters", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// The migration of one application database from `env`'s source to its target (whose schema
/// is already there): copy and stream under the workload, every table equal, no dead letter,
/// a clean verify, every sequence ahead, then a switch and a rollback with writes in each
/// direction arriving on the other side.
async fn migrate(env: &Env) {
    let names = tables(env).await;
    let table_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let path = env.pipeline(
        "[\"public.*\"]",
        "[cutover]\nmax_lag_s = 30\nmax_lag_bytes = \"1 GiB\"\nverify_max_age_s = 600\n",
    );
    let p = path.to_str().unwrap();
    let (code, out, err) = cutover(&["check", p]);
    assert_eq!(code, 0, "check:\n{out}\n{err}");
    let load = workload(&env.source_url, 2, 40, &env.dir);
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(120))
        .await;
    workload_done(load, &env.dir);
    env.wait_equal(&table_refs, Duration::from_secs(120)).await;
    assert_eq!(dead_letters(env).await, 0, "{}", run.log_text());
    let (code, out, err) = cutover(&["verify", p]);
    assert_eq!(code, 0, "verify:\n{out}\n{err}");

    let (code, out, err) = cutover(&["sync-sequences", p]);
    assert_eq!(code, 0, "sync-sequences:\n{out}\n{err}");
    for (name, source, target) in sequences(env).await {
        assert!(
            target > source,
            "{name}: target at {target}, source at {source}\n{out}"
        );
        assert!(
            out.contains(&name) || out.contains(name.trim_start_matches("public.")),
            "{name} not named:\n{out}"
        );
    }

    let (code, out, err) = cutover(&["switch", p]);
    assert_eq!(code, 0, "switch:\n{out}\n{err}\n{}", run.log_text());
    // The application writes to the new primary; the reverse stream brings it back.
    psql_file(&env.target_url, &fixture("app_workload.sql"));
    env.wait_equal(&table_refs, Duration::from_secs(60)).await;
    run.wait_log("streaming after a switch", Duration::from_secs(30))
        .await;
    let (code, out, err) = cutover(&["verify", p]);
    assert_eq!(code, 0, "verify after the switch:\n{out}\n{err}");
    let (code, out, err) = cutover(&["rollback", p]);
    assert_eq!(code, 0, "rollback:\n{out}\n{err}\n{}", run.log_text());
    psql_file(&env.source_url, &fixture("app_workload.sql"));
    env.wait_equal(&table_refs, Duration::from_secs(60)).await;
    assert_eq!(dead_letters(env).await, 0, "{}", run.log_text());
    assert!(run.terminate().success(), "{}", run.log_text());
    for slot in [env.name.clone(), format!("{}_reverse", env.name)] {
        for client in [env.source().await, env.target().await] {
            let _ = client
                .batch_execute(&format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'cutover_{slot}' AND NOT active"
                ))
                .await;
        }
    }
}

/// The application schema restored by `pg_dump -s` migrates exactly: the target's triggers
/// and foreign keys do not fire for replicated rows (the sink sessions apply as replicas), so
/// nothing is parked, no audit row is written twice, no `updated_at` is rewritten, and a child
/// copied before its parent is taken. Fails when the sinks apply as ordinary sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_schema_restored_by_pg_dump_migrates_exactly() {
    let env = Env::new("appschema").await;
    app_schema(&env.source_url, 150000);
    psql_file(&env.source_url, &fixture("app_seed.sql"));
    restore_schema(&env.source_url, &env.target_url);
    migrate(&env).await;
}

/// A cluster of another PostgreSQL version started by `scripts/services.sh`
/// (`CUTOVER_PG_VERSIONS`): its admin URL, or `None` when it was not started.
fn cluster(major: u32) -> Option<String> {
    if major == 15 {
        return Some(common::url(
            services_var("CUTOVER_SOURCE_PORT").parse().unwrap(),
            "postgres",
        ));
    }
    std::panic::catch_unwind(|| services_var(&format!("CUTOVER_PG{major}_URL"))).ok()
}

/// One source and target pair of versions through the whole migration. Both schemas come
/// from the fixture files (Debian's pg_dump 15 cannot dump a newer server).
async fn version_pair(from: u32, to: u32) {
    let (Some(source), Some(target)) = (cluster(from), cluster(to)) else {
        panic!(
            "PostgreSQL {from} or {to} is not running: scripts/services.sh starts the versions in CUTOVER_PG_VERSIONS (default \"10 12 18\")"
        );
    };
    let base = |u: &str| u.rsplit_once('/').unwrap().0.to_string();
    let (source_base, target_base) = (base(&source), base(&target));
    let env = Env::on_clusters(
        &format!("pg{from}to{to}"),
        &[&source, &target],
        |db| format!("{source_base}/{db}"),
        |db| format!("{target_base}/{db}"),
    )
    .await;
    let oldest = from.min(to) * 10000;
    app_schema(&env.source_url, oldest);
    psql_file(&env.source_url, &fixture("app_seed.sql"));
    app_schema(&env.target_url, oldest);
    migrate(&env).await;
}

/// PostgreSQL 12 (text-format values, the old slot syntax, no `wal_status`) into 18.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_12_source_migrates_into_18() {
    version_pair(12, 18).await;
}

/// PostgreSQL 10 into 18, and back at the rollback. On 10 the partitioned table cannot have a
/// primary key of its own (both schemas come from the 10 files): it is keyed by the one its
/// partitions share, on the 10 source (its partitions published by themselves), on the 18
/// target (no unique index of the root's for `ON CONFLICT`), and on 18 as the reverse stream's
/// source (published through the root). Fails when such a table is refused or written with
/// `ON CONFLICT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_10_source_migrates_into_18() {
    version_pair(10, 18).await;
}

/// PostgreSQL 18 into 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_18_source_migrates_into_15() {
    version_pair(18, 15).await;
}
