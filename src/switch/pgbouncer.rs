//! PgBouncer in front of the application: `PAUSE` holds new transactions (clients wait, they
//! see no error) while the switch runs, the database entry is repointed in PgBouncer's config
//! file, `RELOAD` reads it, `RESUME` lets the held transactions go to the new primary.
//! `PAUSE` returns once every server connection is released, so PgBouncer must pool by
//! transaction (or statement): in session pooling it waits for clients to disconnect.

use std::path::Path;

use cutover_core::{ConnectorError, Result};
use tokio_postgres::{Client, NoTls};

use crate::config::PgBouncerSettings;

/// A session on PgBouncer's admin console.
pub struct Console {
    client: Client,
    database: String,
}

impl Console {
    pub async fn connect(settings: &PgBouncerSettings) -> Result<Console> {
        let (client, connection) = tokio_postgres::connect(&settings.admin_url, NoTls)
            .await
            .map_err(|e| {
                ConnectorError::fatal(format!(
                    "cannot connect to PgBouncer's admin console (cutover.pgbouncer.admin_url): {}",
                    cutover_postgres::error::classify(e, "connect").message
                ))
                .with_hint("check the address, and that the user is in PgBouncer's admin_users")
            })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Console {
            client,
            database: settings.database.clone(),
        })
    }

    async fn command(&self, sql: &str) -> Result<()> {
        self.client
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| {
                ConnectorError::fatal(format!(
                    "PgBouncer refused `{sql}`: {}",
                    e.as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_string())
                ))
            })
    }

    /// Holds new transactions on the application's database; returns once none runs. A
    /// `PAUSE` still waiting after `settings.pause_timeout_s` (a client keeps a transaction
    /// open, and PgBouncer waits for its server connection) is called off with `RESUME` from
    /// another console session, and is an error that names the cause.
    pub async fn pause(&self, settings: &PgBouncerSettings) -> Result<()> {
        let limit = std::time::Duration::from_secs(settings.pause_timeout_s);
        match tokio::time::timeout(limit, self.command(&format!("PAUSE {}", self.database))).await {
            Ok(done) => done,
            Err(_) => {
                let resumed = match Console::connect(settings).await {
                    Ok(other) => other.resume().await,
                    Err(e) => Err(e),
                };
                let mut e = ConnectorError::fatal(format!(
                    "PgBouncer's PAUSE {} did not finish within {} s: a client keeps a transaction open, and PgBouncer waits for its server connection{}",
                    self.database,
                    settings.pause_timeout_s,
                    match resumed {
                        Ok(()) => "; the pause was called off".to_string(),
                        Err(r) => format!("; calling the pause off failed too ({r}): run RESUME {} on PgBouncer's console", self.database),
                    }
                ));
                e = e.with_hint("find it with SHOW SERVERS on PgBouncer's console or state 'idle in transaction' in pg_stat_activity, end it, and switch again; or raise [cutover.pgbouncer] pause_timeout_s");
                Err(e)
            }
        }
    }

    /// Lets held transactions go. Resuming a database that is not paused is not an error.
    pub async fn resume(&self) -> Result<()> {
        match self.command(&format!("RESUME {}", self.database)).await {
            Err(e) if e.message.contains("not paused") => Ok(()),
            other => other,
        }
    }

    /// Re-reads the config file.
    pub async fn reload(&self) -> Result<()> {
        self.command("RELOAD").await
    }

    /// Whether the database entry exists (a readiness gate).
    pub async fn knows_database(&self) -> Result<bool> {
        let rows = self
            .client
            .simple_query("SHOW DATABASES")
            .await
            .map_err(|e| ConnectorError::fatal(format!("PgBouncer refused SHOW DATABASES: {e}")))?;
        Ok(rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some(&self.database),
            _ => false,
        }))
    }
}

/// Whether the switch will be able to repoint `database` in PgBouncer's config file at `path`:
/// the file is readable and has the entry in its own `[databases]` section (not in an
/// `%include`d file), and the directory takes a new file (the rewrite is written beside, then
/// renamed). Checked by the readiness gates and again before the switch fences anything.
pub fn check_config(path: &Path, database: &str) -> Result<()> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConnectorError::fatal(format!(
            "cannot read PgBouncer's config file {shown} (cutover.pgbouncer.config_file): {e}"
        ))
        .with_hint("cutover must run where it can rewrite PgBouncer's config file (on PgBouncer's host, or with the file shared)")
    })?;
    if repointed(&text, database, "h", 1, "d").is_none() {
        let included = text
            .lines()
            .any(|l| l.trim_start().to_ascii_lowercase().starts_with("%include"));
        return Err(ConnectorError::fatal(format!(
            "PgBouncer's config file {shown} has no entry {database} in its [databases] section{}",
            if included {
                " (it %includes other files: cutover rewrites only this one)"
            } else {
                ""
            }
        ))
        .with_hint(
            "put the entry in this file (e.g. `app = host=... port=... dbname=...`), or fix cutover.pgbouncer.database / config_file",
        ));
    }
    let probe = path.with_extension(format!("cutover-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            ConnectorError::fatal(format!(
                "cannot write beside PgBouncer's config file {shown}: {e}"
            ))
            .with_hint("the switch rewrites the file by writing a new one beside it and renaming it: make its directory writable for cutover")
        })
}

/// Rewrites the `database` entry of the `[databases]` section of PgBouncer's config file so it
/// points at `host`, `port` and `dbname`, keeping its other settings (user, pool size, ...).
/// The file is replaced at once (written beside it, then renamed).
pub fn repoint(path: &Path, database: &str, host: &str, port: u16, dbname: &str) -> Result<()> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConnectorError::fatal(format!(
            "cannot read PgBouncer's config file {shown} (cutover.pgbouncer.config_file): {e}"
        ))
    })?;
    let updated = repointed(&text, database, host, port, dbname).ok_or_else(|| {
        ConnectorError::fatal(format!(
            "PgBouncer's config file {shown} has no entry {database} in its [databases] section"
        ))
        .with_hint(
            "add it (e.g. `app = host=... port=... dbname=...`), or fix cutover.pgbouncer.database",
        )
    })?;
    let tmp = path.with_extension("cutover-tmp");
    std::fs::write(&tmp, updated)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ConnectorError::fatal(format!("cannot rewrite {shown}: {e}")))
}

/// `text` with the entry repointed, or None when the entry is not there.
fn repointed(text: &str, database: &str, host: &str, port: u16, dbname: &str) -> Option<String> {
    let mut section = String::new();
    let mut found = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(['[', ']']).trim().to_ascii_lowercase();
        }
        let entry = trimmed
            .split_once('=')
            .filter(|(k, _)| section == "databases" && k.trim() == database);
        match entry {
            Some((_, conn)) if !found => {
                found = true;
                let mut parts: Vec<String> = conn
                    .split_whitespace()
                    .filter(|kv| {
                        let key = kv.split('=').next().unwrap_or("");
                        !matches!(key, "host" | "port" | "dbname")
                    })
                    .map(str::to_string)
                    .collect();
                parts.insert(0, format!("host={host} port={port} dbname={dbname}"));
                out.push(format!("{database} = {}", parts.join(" ")));
            }
            _ => out.push(line.to_string()),
        }
    }
    found.then(|| out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_repointed_and_its_other_settings_kept() {
        let ini = "[databases]\nother = host=x port=1 dbname=o\napp = host=old port=5432 dbname=a pool_size=20 user=app\n\n[pgbouncer]\nlisten_port = 6432\napp = not a database\n";
        let out = repointed(ini, "app", "10.0.0.2", 6543, "b").unwrap();
        assert!(
            out.contains("app = host=10.0.0.2 port=6543 dbname=b pool_size=20 user=app\n"),
            "{out}"
        );
        assert!(out.contains("other = host=x port=1 dbname=o\n"), "{out}");
        assert!(
            out.contains("[pgbouncer]\nlisten_port = 6432\napp = not a database\n"),
            "{out}"
        );
        assert!(repointed(ini, "missing", "h", 1, "d").is_none());
    }

    #[test]
    fn the_config_file_is_checked_before_the_switch_needs_it() {
        let dir = std::env::temp_dir().join(format!("cutover-pgb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgbouncer.ini");
        std::fs::write(&file, "[databases]\napp = host=a port=1 dbname=x\n").unwrap();
        check_config(&file, "app").unwrap();
        // The entry lives in an included file: named as the reason.
        std::fs::write(
            &file,
            "[databases]\n%include /etc/pgbouncer/databases.ini\n[pgbouncer]\n",
        )
        .unwrap();
        let e = check_config(&file, "app").unwrap_err().to_string();
        assert!(e.contains("no entry app") && e.contains("%include"), "{e}");
        // Not there at all (PgBouncer on another host).
        let e = check_config(&dir.join("absent.ini"), "app")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read PgBouncer's config file"), "{e}");
        // Nothing of the probe is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
