//! Connection strings: parsing, redacted display, connecting with classified errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cutover_core::{ConnectorError, Result};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use crate::error::classify;
use crate::tls::PgTls;

/// A PostgreSQL server and database to connect to. Its `Display` and `Debug` name the server by
/// user, host, port and database only: the password never appears.
#[derive(Clone)]
pub struct PgEndpoint {
    config: Config,
    tls: PgTls,
    role: &'static str,
}

impl PgEndpoint {
    /// Parses a libpq-style URL or key=value string, with libpq's TLS options (see
    /// [`crate::tls`]). `role` names the endpoint in messages (`source`, `target`).
    pub fn parse(url: &str, role: &'static str) -> Result<Self> {
        let (url, tls) = PgTls::split(url, role)?;
        let url = url.as_str();
        if let Some((_, rest)) = url.split_once("://") {
            // The URL parser splits at the first @: the rest of a password holding an @ would
            // be taken for the host name (and shown in messages).
            if rest.matches('@').count() > 1 {
                return Err(ConnectorError::fatal(format!(
                    "the {role} connection string has more than one unescaped @ before the host"
                ))
                .with_hint("write an @ in the user name or password as %40"));
            }
        }
        let mut config = Config::from_str(url).map_err(|e| {
            ConnectorError::fatal(format!(
                "the {role} connection string is not valid: {}",
                redact_error(&e.to_string())
            ))
            .with_hint(
                "use the form postgres://USER[:PASSWORD]@HOST:PORT/DATABASE, \
                 or put it in an environment variable and write url = \"${VAR}\"",
            )
        })?;
        if config.get_hosts().is_empty() {
            config.host("127.0.0.1");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("cutover");
        config.ssl_mode(tls.driver_mode());
        Ok(PgEndpoint { config, tls, role })
    }

    /// The TLS options this endpoint connects with.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    pub fn role(&self) -> &'static str {
        self.role
    }

    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// Every TCP host of the URL with its port, in the URL's order (libpq's rules: one port
    /// for all hosts, or one per host). A multi-host URL (`postgres://u@a:5432,b:5432/db`)
    /// names a primary and its standbys; sessions that are not SQL (the replication
    /// connection) try them in this order.
    pub fn tcp_hosts(&self) -> Vec<(String, u16)> {
        let ports = self.config.get_ports();
        let hosts: Vec<(String, u16)> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match h {
                Host::Tcp(name) => Some((
                    name.clone(),
                    ports.get(i).or(ports.first()).copied().unwrap_or(5432),
                )),
                #[cfg(unix)]
                Host::Unix(_) => None,
            })
            .collect();
        if hosts.is_empty() {
            vec![(self.host(), self.port())]
        } else {
            hosts
        }
    }

    /// Whether the URL asks for a read-write server (`target_session_attrs=read-write`).
    pub fn wants_read_write(&self) -> bool {
        matches!(
            self.config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        )
    }

    pub fn user(&self) -> String {
        self.config.get_user().unwrap_or("postgres").to_string()
    }

    pub fn password(&self) -> String {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    pub fn database(&self) -> String {
        self.config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| self.user())
    }

    /// Opens an ordinary SQL session, with cutover's own session settings (see
    /// [`SESSION_SETTINGS`]). The connection task runs in the background.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(self.tls.connector())
            .await
            .map_err(|e| classify(e, &format!("cannot connect to the {} {self}", self.role)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        client.batch_execute(SESSION_SETTINGS).await.map_err(|e| {
            classify(
                e,
                &format!(
                    "cannot set cutover's session settings on the {} {self}",
                    self.role
                ),
            )
        })?;
        Ok(client)
    }
}

impl PgEndpoint {
    /// Opens a session that `LISTEN`s on `channel`: the receiver yields the payload of each
    /// notification sent on it, and ends when the connection does (the caller opens another).
    /// The session takes no other part: notifications arrive only while the returned client
    /// is kept.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.connector())
            .await
            .map_err(|e| classify(e, &format!("cannot connect to the {} {self}", self.role)))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Polling the connection's messages is what drives it.
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "PostgreSQL listening connection closed");
                        break;
                    }
                }
            }
        });
        let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
        client
            .batch_execute(&format!("LISTEN {quoted}"))
            .await
            .map_err(|e| classify(e, &format!("cannot listen on the {} {self}", self.role)))?;
        Ok((client, rx))
    }
}

/// Which database a session is connected to, as `system_identifier/database OID`: a cluster
/// built again (its WAL positions start over) or a database dropped and created again gets
/// another. Saved state that holds positions or results of one database is bound to it. Where
/// the role may not read `pg_control_system()` (some managed services), the server's start time
/// stands in for the system identifier: a restart then also counts as another database, which
/// costs a new check, never a wrong one.
pub async fn database_identity(client: &Client) -> Result<String> {
    const OID: &str = "(SELECT oid FROM pg_database WHERE datname = current_database())::text";
    let by_system =
        format!("SELECT (SELECT system_identifier FROM pg_control_system())::text || '/' || {OID}");
    let row = match client.query_one(&by_system, &[]).await {
        Ok(row) => row,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            client
                .query_one(
                    &format!(
                        "SELECT 'started ' || pg_postmaster_start_time()::text || '/' || {OID}"
                    ),
                    &[],
                )
                .await
                .map_err(|e| classify(e, "cannot read the database's identity"))?
        }
        Err(e) => return Err(classify(e, "cannot read the database's identity")),
    };
    Ok(row.get(0))
}

/// What the session `pid` of `endpoint`'s server is doing, in one line for the log: its state,
/// wait event, how long its transaction and statement have run, the lock it waits for, and
/// each session blocking it (pid, name, user, state: never their statements, which may hold
/// an application's values or secrets). With `end_it`, the session is then terminated
/// (`pg_terminate_backend`), so a retry does not queue behind it. Looked at through a session
/// of its own; a failure to look is said in the line.
pub async fn what_session_waits_on(endpoint: &PgEndpoint, pid: i32, end_it: bool) -> String {
    let client = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return format!("cannot look at session {pid}: {e}"),
    };
    let seen = client
        .query_opt(
            "SELECT coalesce(a.state, '?'), \
                    coalesce(a.wait_event_type || ':' || a.wait_event, 'no wait event'), \
                    coalesce(extract(epoch FROM now() - a.xact_start)::int, -1), \
                    coalesce(extract(epoch FROM now() - a.query_start)::int, -1), \
                    split_part(ltrim(a.query), ' ', 1), \
                    (SELECT string_agg(l.mode || ' on ' || coalesce(l.relation::regclass::text, l.locktype), ', ') \
                       FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted), \
                    (SELECT string_agg(format('pid %s (%s, user %s, %s for %s s)', b.pid, \
                            coalesce(nullif(b.application_name, ''), 'no name'), b.usename, \
                            coalesce(b.state, '?'), \
                            coalesce(extract(epoch FROM now() - b.xact_start)::int, 0)), '; ') \
                       FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))) \
             FROM pg_stat_activity a WHERE a.pid = $1",
            &[&pid],
        )
        .await;
    let mut line = match seen {
        Ok(Some(r)) => {
            let (state, wait, xact, stmt, verb): (String, String, i32, i32, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let mut line = format!(
                "session {pid} is {state} ({wait}), its transaction {xact} s old, its statement ({verb}) {stmt} s"
            );
            if let Some(lock) = r.get::<_, Option<String>>(5) {
                line.push_str(&format!("; it waits for {lock}"));
            }
            if let Some(blockers) = r.get::<_, Option<String>>(6) {
                line.push_str(&format!("; blocked by {blockers}"));
            }
            line
        }
        Ok(None) => format!("session {pid} is gone from the server"),
        Err(e) => format!(
            "cannot look at session {pid}: {}",
            classify(e, "pg_stat_activity")
        ),
    };
    if end_it {
        match client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
        {
            Ok(r) if r.get::<_, bool>(0) => line.push_str("; the session was ended"),
            Ok(_) => {}
            Err(e) => line.push_str(&format!(
                "; cannot end it: {}",
                classify(e, "pg_terminate_backend")
            )),
        }
    }
    line
}

/// How a session that applies replicated rows runs, as native logical replication's apply
/// worker does: user triggers and foreign-key checks do not fire for the rows it writes
/// (triggers marked `ENABLE REPLICA` or `ENABLE ALWAYS` still do).
pub const REPLICA_ROLE: &str = "SET session_replication_role = replica";

/// Whether an applying session took [`REPLICA_ROLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyRole {
    /// `session_replication_role = replica`: the target's own triggers stay quiet.
    Replica,
    /// The role may not set it (not a superuser, and no `GRANT SET ON PARAMETER
    /// session_replication_role`): the target's triggers and foreign keys fire for every row.
    Origin,
}

impl PgEndpoint {
    /// Opens a session that writes replicated rows: [`PgEndpoint::connect`], then
    /// [`REPLICA_ROLE`] where the role may set it (superusers; managed services' admin roles
    /// that may; PostgreSQL 15+ roles granted `SET ON PARAMETER session_replication_role`).
    /// Where it may not, the session applies as an ordinary one and says so in its answer
    /// (`cutover check` lists what will fire then).
    pub async fn connect_applying(&self) -> Result<(Client, ApplyRole)> {
        let client = self.connect().await?;
        match client.batch_execute(REPLICA_ROLE).await {
            Ok(()) => Ok((client, ApplyRole::Replica)),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                Ok((client, ApplyRole::Origin))
            }
            Err(e) => Err(classify(
                e,
                &format!(
                    "cannot set session_replication_role on the {} {self}",
                    self.role
                ),
            )),
        }
    }
}

impl PgEndpoint {
    /// How a session to this endpoint is protected, for `cutover check`: the TLS version and
    /// cipher the server reports for a new session, or that it is not encrypted, with the
    /// connection string's TLS options.
    pub async fn tls_state(&self) -> Result<String> {
        let client = self.connect().await?;
        let row = client
            .query_opt(
                "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                &[],
            )
            .await
            .map_err(|e| classify(e, "cannot read pg_stat_ssl"))?;
        Ok(match row {
            Some(r) => format!(
                "TLS {} {} ({})",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                self.tls.describe()
            ),
            None if self.tls.mode() == crate::tls::SslMode::Disable => {
                format!("not encrypted ({})", self.tls.describe())
            }
            None => format!(
                "not encrypted: the server offers no TLS ({})",
                self.tls.describe()
            ),
        })
    }
}

/// What every cutover session sets first, over the role's and the database's defaults: no
/// statement, lock or idle-in-transaction timeout. A role-level `statement_timeout` would
/// otherwise cancel a long snapshot COPY or merge, which is retried from its start forever.
/// `cutover.apply = on` lets cutover's writes through the write fence a switch puts on the
/// database that is not the primary (the `cutover.fence()` trigger).
/// `idle_session_timeout` (PostgreSQL 14+) is set through `pg_settings` so that older servers,
/// which lack it, are not asked: left on, it would close the session holding the pipeline's
/// lock while it idles, opening a window for a second `cutover run`.
pub const SESSION_SETTINGS: &str =
    "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
     SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'idle_session_timeout'; \
     SET cutover.apply = on";

impl fmt::Display for PgEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user(),
            self.host(),
            self.port(),
            self.database()
        )
    }
}

impl fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgEndpoint({self})")
    }
}

/// Removes anything that looks like a password from a driver message.
fn redact_error(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            if w.contains("password") {
                "password=***"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_never_shows_the_password() {
        let e =
            PgEndpoint::parse("postgres://app:s3cret-pw@db.internal:6543/shop", "source").unwrap();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert_eq!(e.to_string(), "postgres://app@db.internal:6543/shop");
        assert_eq!(e.password(), "s3cret-pw");
    }

    #[test]
    fn every_host_of_a_multi_host_url_is_listed_with_its_port() {
        let e = PgEndpoint::parse(
            "postgres://app@db-a:5433,db-b:5434/shop?target_session_attrs=read-write",
            "source",
        )
        .unwrap();
        assert_eq!(
            e.tcp_hosts(),
            vec![("db-a".to_string(), 5433), ("db-b".to_string(), 5434)]
        );
        assert!(e.wants_read_write());
        let one = PgEndpoint::parse("postgres://app@db-a/shop", "source").unwrap();
        assert_eq!(one.tcp_hosts(), vec![("db-a".to_string(), 5432)]);
        assert!(!one.wants_read_write());
    }

    #[test]
    fn an_unescaped_at_in_a_password_is_refused_without_showing_it() {
        let e = PgEndpoint::parse("postgres://app:tail@of-secret@db:5432/shop", "target")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("of-secret") && !e.contains("tail"), "{e}");
        assert!(e.contains("%40"), "{e}");
        let ok =
            PgEndpoint::parse("postgres://app:tail%40of-secret@db:5432/shop", "target").unwrap();
        assert_eq!(ok.password(), "tail@of-secret");
        assert_eq!(ok.to_string(), "postgres://app@db:5432/shop");
    }

    #[test]
    fn bad_url_is_a_fatal_error_with_a_fix() {
        let err = PgEndpoint::parse("postgres://a:b@host:notaport/db", "target").unwrap_err();
        assert_eq!(err.kind, cutover_core::ErrorKind::Fatal);
        assert!(err.to_string().contains("target connection string"));
        assert!(!err.to_string().contains(":b@"));
    }
}
