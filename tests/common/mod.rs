//! Test harness: real PostgreSQL clusters started by `scripts/services.sh`, one fresh source and
//! target database per test (so tests run in parallel), the real `cutover` binary.

#![allow(dead_code)]

pub mod proxy;
pub mod targets;
pub mod workload;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// One setting of the started servers: from the environment, else from the env file that
/// `scripts/services.sh start` wrote. Panics with the command to run when they are not started.
pub fn services_var(name: &str) -> String {
    let file = std::env::var("CUTOVER_SERVICES_DIR")
        .map(|d| PathBuf::from(d).join("env"))
        .unwrap_or_else(|_| PathBuf::from("/tmp/cutover-services/env"));
    std::env::var(name).ok().unwrap_or_else(|| {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
            .unwrap_or_else(|| {
                panic!("{name} is not set: start the servers with `scripts/services.sh start` (or run scripts/test.sh)")
            })
    })
}

/// Connection settings of the throwaway clusters.
pub struct Services {
    pub source_port: u16,
    pub target_port: u16,
    pub plain_port: u16,
    pub secret_role: String,
    pub secret_password: String,
}

impl Services {
    /// Reads the env file that `scripts/services.sh start` wrote (or the same variables from the
    /// environment). Panics with the command to run when the servers are not started.
    pub fn get() -> Services {
        let var = services_var;
        Services {
            source_port: var("CUTOVER_SOURCE_PORT").parse().unwrap(),
            target_port: var("CUTOVER_TARGET_PORT").parse().unwrap(),
            plain_port: var("CUTOVER_PLAIN_PORT").parse().unwrap(),
            secret_role: var("CUTOVER_TEST_SECRET_ROLE"),
            secret_password: var("CUTOVER_TEST_SECRET_PASSWORD"),
        }
    }
}

pub fn url(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A test's hold on the servers every test shares. The end-to-end tests run in one process,
/// two at a time; a test that crashes a shared cluster (the chaos smoke restarts the source,
/// the target-crash test the spare) holds them alone, and every other test holds them shared
/// for as long as its [`Env`] lives, so none runs while such a test does.
pub enum Hold {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

fn servers() -> Arc<tokio::sync::RwLock<()>> {
    static SERVERS: OnceLock<Arc<tokio::sync::RwLock<()>>> = OnceLock::new();
    SERVERS
        .get_or_init(|| Arc::new(tokio::sync::RwLock::new(())))
        .clone()
}

impl Hold {
    /// Shares the servers with the other tests (waits while a test holds them alone).
    pub async fn shared() -> Hold {
        Hold::Shared(servers().read_owned().await)
    }

    /// Holds the servers alone (waits until every running test has let them go).
    pub async fn alone() -> Hold {
        Hold::Alone(servers().write_owned().await)
    }
}

/// A source and a target database made for one test, and the pipeline between them.
pub struct Env {
    pub name: String,
    pub services: Services,
    pub source_url: String,
    pub target_url: String,
    pub dir: PathBuf,
    _hold: Hold,
}

impl Env {
    /// Creates empty databases `<prefix>_<pid>_<n>` on the source and target clusters.
    pub async fn new(prefix: &str) -> Env {
        Env::held(prefix, Hold::shared().await).await
    }

    /// [`Env::new`] for a test that crashes a shared cluster: no other test runs meanwhile.
    pub async fn alone(prefix: &str) -> Env {
        Env::held(prefix, Hold::alone().await).await
    }

    async fn held(prefix: &str, hold: Hold) -> Env {
        let services = Services::get();
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        for port in [services.source_port, services.target_port] {
            create_database(port, &name).await;
        }
        let dir = std::env::temp_dir().join(format!("cutover-e2e-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            source_url: url(services.source_port, &name),
            target_url: url(services.target_port, &name),
            name,
            services,
            dir,
            _hold: hold,
        }
    }

    /// An environment on other clusters: creates the database `<prefix>_<pid>` through each
    /// admin URL (a connection string to the cluster's `postgres` database, without the
    /// database name's key when key=value) and gives `source` and `target` as the URLs of that
    /// database (built by the given functions).
    pub async fn on_clusters(
        prefix: &str,
        admins: &[&str],
        source: impl Fn(&str) -> String,
        target: impl Fn(&str) -> String,
    ) -> Env {
        let hold = Hold::shared().await;
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        for admin in admins {
            connect(admin)
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
        let dir = std::env::temp_dir().join(format!("cutover-e2e-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            source_url: source(&name),
            target_url: target(&name),
            name,
            services: Services::get(),
            dir,
            _hold: hold,
        }
    }

    /// Moves the target to a database of the same name on the cluster at `port` (the spare
    /// cluster, which the crash tests may crash), creating it.
    pub async fn target_on(&mut self, port: u16) {
        create_database(port, &self.name).await;
        self.target_url = url(port, &self.name);
    }

    /// An environment for databases that already exist (the demo's), named `name` on both
    /// clusters; nothing is created.
    pub async fn existing(name: &str) -> Env {
        let hold = Hold::shared().await;
        let services = Services::get();
        let dir = std::env::temp_dir().join(format!("cutover-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            source_url: url(services.source_port, name),
            target_url: url(services.target_port, name),
            name: name.to_string(),
            services,
            dir,
            _hold: hold,
        }
    }

    pub async fn source(&self) -> Client {
        connect(&self.source_url).await
    }

    pub async fn target(&self) -> Client {
        connect(&self.target_url).await
    }

    /// Runs SQL on the test's source database.
    pub async fn on_source(&self, sql: &str) {
        self.source()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("on the source: {e}\n{sql}"));
    }

    /// Writes a pipeline file replicating `tables`, with extra TOML appended, and returns its
    /// path.
    pub fn pipeline(&self, tables: &str, extra: &str) -> PathBuf {
        self.pipeline_with(tables, extra, "")
    }

    /// Like [`Env::pipeline`], with more `[[sink]]` tables after the PostgreSQL one.
    pub fn pipeline_with(&self, tables: &str, extra: &str, more_sinks: &str) -> PathBuf {
        let path = self.dir.join("pipeline.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n{extra}\n[source]\nurl = \"{src}\"\ntables = {tables}\n\n[[sink]]\nkind = \"postgres\"\nname = \"target\"\nurl = \"{tgt}\"\n{more_sinks}",
                name = self.name,
                src = self.source_url,
                tgt = self.target_url,
            ),
        )
        .unwrap();
        path
    }

    /// Starts `cutover run` in the background; its output goes to a log file in the test dir.
    pub fn start(&self, pipeline: &PathBuf) -> Pipeline {
        self.start_with_env(pipeline, &[])
    }

    /// Like [`Env::start`], with extra environment variables for the process.
    pub fn start_with_env(&self, pipeline: &PathBuf, vars: &[(&str, &str)]) -> Pipeline {
        self.start_command("run", pipeline, vars)
    }

    /// Starts `cutover apply` (one consumer-group worker) in the background.
    pub fn start_apply(&self, pipeline: &PathBuf) -> Pipeline {
        self.start_command("apply", pipeline, &[])
    }

    /// Starts `cutover <command> <pipeline>` in the background, logging JSON to a file in the
    /// test dir.
    pub fn start_command(
        &self,
        command: &str,
        pipeline: &PathBuf,
        vars: &[(&str, &str)],
    ) -> Pipeline {
        let log = self.dir.join(format!(
            "{command}-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["--log-format", "json", command])
            .arg(pipeline)
            .env(
                "CUTOVER_LOG",
                std::env::var("CUTOVER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start cutover");
        Pipeline { child, log }
    }

    /// Waits until every listed table has the same full contents on both sides.
    /// Stops `run`, changes the source with `while_stopped`, and starts the pipeline again: it
    /// must copy nothing again (no `copy_line` in its log), catch up on `tables` and verify
    /// clean. Then it stops and the slot is dropped.
    pub async fn restart_streams_without_copying(
        &self,
        run: Pipeline,
        path: &PathBuf,
        while_stopped: &str,
        tables: &[&str],
        copy_line: &str,
    ) {
        let mut run = run;
        assert!(run.terminate().success(), "{}", run.log_text());
        self.on_source(while_stopped).await;
        let mut run = self.start(path);
        self.wait_equal(tables, Duration::from_secs(60)).await;
        assert!(!run.log_text().contains(copy_line), "{}", run.log_text());
        let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(run.terminate().success(), "{}", run.log_text());
        self.drop_slot().await;
    }

    pub async fn wait_equal(&self, tables: &[&str], timeout: Duration) {
        if let Err(differs) = self.until_equal(tables, timeout).await {
            panic!("{differs}");
        }
    }

    /// Like [`Env::wait_equal`], returning the first difference left after `timeout`.
    pub async fn until_equal(&self, tables: &[&str], timeout: Duration) -> Result<(), String> {
        let src = self.source().await;
        let tgt = self.target().await;
        let deadline = Instant::now() + timeout;
        'read: loop {
            for t in tables {
                let a = contents(&src, t).await;
                let b = contents(&tgt, t).await;
                if a != b {
                    // The difference is worked out only once it is the answer: each reading
                    // before the deadline is compared, and the next one taken at once.
                    if Instant::now() > deadline {
                        return Err(difference(t, &a, &b, timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'read;
                }
            }
            return Ok(());
        }
    }

    /// Drops the pipeline's slot so the databases can be dropped later.
    pub async fn drop_slot(&self) {
        let src = self.source().await;
        let _ = src
            .batch_execute(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'cutover_{}' AND NOT active",
                self.name
            ))
            .await;
    }
}

/// How table `t`'s rows on the source (`a`) and the target (`b`) differ: counts and a few
/// rows missing and extra on the target. In time linear in the rows: on 300k-row tables a
/// pairwise search took minutes of a debug build, long enough to outlast a test's deadline
/// with a stale reading.
fn difference(t: &str, a: &[String], b: &[String], timeout: Duration) -> String {
    let on_source: std::collections::HashSet<&String> = a.iter().collect();
    let on_target: std::collections::HashSet<&String> = b.iter().collect();
    let missing: Vec<_> = a
        .iter()
        .filter(|r| !on_target.contains(r))
        .take(3)
        .collect();
    let extra: Vec<_> = b
        .iter()
        .filter(|r| !on_source.contains(r))
        .take(3)
        .collect();
    format!(
        "{t} differs after {timeout:?}: source {} rows, target {} rows; \
         missing on target e.g. {missing:?}; extra on target e.g. {extra:?}",
        a.len(),
        b.len()
    )
}

impl Drop for Env {
    /// Removes the test's directory (pipeline file, logs) when the test passed; keeps it for
    /// reading when it failed, or when `CUTOVER_TEST_KEEP` is set.
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("CUTOVER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates database `name` on the cluster at `port`.
pub async fn create_database(port: u16, name: &str) {
    connect(&url(port, "postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
}

/// Crashes a cluster of scripts/services.sh (immediate stop: nothing more is written) and
/// starts it again. Whether it succeeded.
pub fn crash_cluster(name: &str) -> bool {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .args(["crash", name])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Every row of `table` as text, in key order: the full content, compared value by value.
pub async fn contents(client: &Client, table: &str) -> Vec<String> {
    match client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        Err(_) => vec!["<table missing>".to_string()],
    }
}

/// A running `cutover run`.
pub struct Pipeline {
    pub child: Child,
    pub log: PathBuf,
}

impl Pipeline {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_status(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the process to end by itself; panics with its log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cutover did not end within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "cutover did not stop within 60 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits until the log shows `text`.
    pub async fn wait_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(text) {
            if Instant::now() > deadline {
                panic!("log never showed {text:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a cutover subcommand to completion; returns (exit code, stdout, stderr).
pub fn cutover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run cutover");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // No command ends in a panic, not even one in a client library's background task while
    // the process exits (the MongoDB driver's, once).
    assert!(
        !stderr.contains("panicked at"),
        "cutover {args:?} panicked:\n{stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// A PgBouncer of the test's own in front of `target_url`'s database, pooling by transaction,
/// its admin console open to `postgres`; its config file is the test's (the switch rewrites it).
pub struct Bouncer {
    pub child: Child,
    pub port: u16,
    pub config: PathBuf,
    /// The database entry the application connects to.
    pub database: String,
}

impl Bouncer {
    pub fn start(dir: &std::path::Path, database: &str, port_of_db: u16, dbname: &str) -> Bouncer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &config,
            format!(
                "[databases]\n{database} = host=127.0.0.1 port={port_of_db} dbname={dbname}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\nadmin_users = postgres\npool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 20\nignore_startup_parameters = extra_float_digits,options\nlogfile =\n",
                users.display()
            ),
        )
        .unwrap();
        let bin = services_var("CUTOVER_PGBOUNCER_BIN");
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        // PgBouncer refuses to run as root.
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &bin]);
            c
        } else {
            Command::new(&bin)
        };
        let child = cmd
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Bouncer {
            child,
            port,
            config,
            database: database.to_string(),
        }
    }

    /// What the application connects to.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port, self.database
        )
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/pgbouncer", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
