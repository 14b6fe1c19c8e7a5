//! One process per pipeline: session advisory locks on the source database.
//!
//! Two locks per pipeline, both keyed by the pipeline's configured slot name (which names the
//! pipeline on its source across every epoch of a switch):
//! - **run** (`pg_try_advisory_lock(1668641793, hashtext(slot))`): held by `cutover run` from its
//!   start (before the slot exists, through the snapshot, while streaming, across switches),
//!   and taken as well by the commands that must not meet a running pipeline (`teardown`,
//!   `forget`).
//! - **change** (`pg_try_advisory_lock(1668641794, hashtext(slot))`): held by each command that
//!   changes the pipeline beside a running one (`switch`, `rollback`, `verify --repair`,
//!   `dlq replay`, `sync-sequences`, and `teardown` and `forget` again), so two of them never
//!   run at once.
//!
//! The locks live in a session of the source database, so they hold across machines. They go
//! with the session: a killed process frees them at once, and nothing is left to clean up. Each
//! holder's session has an `application_name` that says which command, host and process hold
//! it; a refusal reads it back from `pg_locks` and `pg_stat_activity`.

use std::time::Duration;

use cutover_core::ConnectorError;
use cutover_postgres::PgEndpoint;
use tokio_postgres::Client;

use crate::config::Pipeline;

/// The first half of the key of the run lock (`"cut"` and 1 in its bytes).
pub const RUN_LOCK: i32 = 0x6375_7401;
/// The first half of the key of the change lock.
pub const CHANGE_LOCK: i32 = 0x6375_7402;

/// What a command holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The pipeline runs: `cutover run`.
    Run,
    /// The pipeline is changed by an operator's command.
    Change,
}

impl Hold {
    fn key(self) -> i32 {
        match self {
            Hold::Run => RUN_LOCK,
            Hold::Change => CHANGE_LOCK,
        }
    }
}

/// Held locks: dropping this closes the session, which frees them.
pub struct PipelineLock {
    client: Client,
    endpoint: PgEndpoint,
    slot: String,
    holds: Vec<Hold>,
    label: String,
}

/// Takes `holds` for `command` (`run`, `teardown`, ...), or says who holds one of them.
pub async fn take(file: &Pipeline, holds: &[Hold], command: &str) -> Result<PipelineLock, String> {
    let endpoint = PgEndpoint::parse(&file.source_url, "source").map_err(|e| e.to_string())?;
    let label = label(command);
    let lock = PipelineLock {
        client: session(&endpoint, &label)
            .await
            .map_err(|e| e.to_string())?,
        endpoint,
        slot: file.slot.clone(),
        holds: holds.to_vec(),
        label,
    };
    lock.acquire(command).await?;
    Ok(lock)
}

impl PipelineLock {
    /// Takes `hold` if no other session has it.
    async fn try_take(&self, hold: Hold) -> Result<bool, String> {
        Ok(self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&hold.key(), &self.slot],
            )
            .await
            .map_err(|e| format!("cannot take the pipeline's lock on the source: {e}"))?
            .get(0))
    }

    async fn acquire(&self, command: &str) -> Result<(), String> {
        for hold in &self.holds {
            if !self.try_take(*hold).await? {
                self.wait_out_a_dead_holder(command, *hold).await?;
            }
        }
        Ok(())
    }

    /// The lock is held. A process of this host that has ended (killed, crashed) still holds
    /// it for as long as its session takes to notice: on a busy machine a restart can be
    /// quicker than that. So while the holder's label names this host and a process that is
    /// gone, this waits (up to [`DEAD_HOLDER_GRACE`]) for the session to go; any other holder
    /// is refused at once, with its name.
    async fn wait_out_a_dead_holder(&self, command: &str, hold: Hold) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + DEAD_HOLDER_GRACE;
        let mut said = false;
        loop {
            let holder = holder(&self.client, hold, &self.slot).await;
            let dead = holder
                .as_ref()
                .and_then(|h| ended_here(&h.name, &this_host()))
                .or(holder.is_none().then_some(0));
            match dead {
                Some(pid) if tokio::time::Instant::now() < deadline => {
                    if !said && pid != 0 {
                        tracing::info!(pid, "the pipeline's lock is held by a process of this host that has ended; waiting for its session to close");
                        said = true;
                    }
                }
                _ => return Err(refusal(command, hold, &self.slot, holder)),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.try_take(hold).await? {
                return Ok(());
            }
        }
    }

    /// Keeps the locks for as long as the process runs: when the session is lost (the source
    /// restarted, the network cut it), takes them again in a new one. If another process took
    /// them in between, this process must not go on: it says so and exits.
    pub fn keep(mut self) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !self.client.is_closed() {
                    continue;
                }
                tracing::warn!("the session holding the pipeline's lock closed; taking it again");
                let client = loop {
                    match session(&self.endpoint, &self.label).await {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reach the source to take the pipeline's lock again; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                };
                self.client = client;
                if let Err(refused) = self.acquire("run").await {
                    crate::say_err!("error: the pipeline's lock was lost while the source was unreachable, and another process holds it now: {refused}");
                    std::process::exit(1);
                }
                tracing::info!("the pipeline's lock is held again");
            }
        });
    }
}

/// How long a command waits for the session of a process of this host that has ended.
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(15);

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
        .trim()
        .to_string()
}

/// The `application_name` of the lock's session: which command, host and process.
fn label(command: &str) -> String {
    label_of(command, &this_host(), std::process::id())
}

/// The pid a holder's label names, when the label is one of ours, names `host` (as
/// [`label_of`] cuts it) and that process has ended here (no `/proc/PID`, or a zombie).
/// `None` when the holder may be alive, or lives elsewhere, or this is not Linux.
fn ended_here(label: &str, host: &str) -> Option<u32> {
    let (head, pid) = label.rsplit_once(" pid ")?;
    let pid: u32 = pid.parse().ok()?;
    let (_, named) = head.strip_prefix("cutover ")?.split_once(" on ")?;
    if named.is_empty() || !host.starts_with(named) || !std::path::Path::new("/proc/self").exists()
    {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => Some(pid),
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().starts_with('Z').then_some(pid)),
    }
}

/// `cutover COMMAND on HOST pid PID`, within the 63 bytes `application_name` holds: a long
/// host name is cut (at a character boundary), never the pid, which the operator needs.
fn label_of(command: &str, host: &str, pid: u32) -> String {
    let head = format!("cutover {command} on ");
    let tail = format!(" pid {pid}");
    let room = 63usize.saturating_sub(head.len() + tail.len());
    let mut end = host.len().min(room);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    format!("{head}{}{tail}", &host[..end])
}

async fn session(endpoint: &PgEndpoint, label: &str) -> Result<Client, ConnectorError> {
    let client = endpoint.connect().await?;
    client
        .execute(
            "SELECT set_config('application_name', $1, false)",
            &[&label],
        )
        .await
        .map_err(|e| {
            cutover_postgres::error::classify(e, "cannot name the pipeline lock's session")
        })?;
    Ok(client)
}

/// Who holds a lock, as its session names itself, with since when and from where.
struct Holder {
    name: String,
    since: String,
    client_addr: Option<String>,
    backend_pid: i32,
}

async fn holder(client: &Client, hold: Hold, slot: &str) -> Option<Holder> {
    let row = client
        .query_opt(
            "SELECT a.application_name, \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"'), \
                    host(a.client_addr), a.pid \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
               AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid \
             LIMIT 1",
            &[&hold.key(), &slot],
        )
        .await
        .ok()??;
    Some(Holder {
        name: row.get(0),
        since: row.get(1),
        client_addr: row.get(2),
        backend_pid: row.get(3),
    })
}

fn refusal(command: &str, hold: Hold, slot: &str, holder: Option<Holder>) -> String {
    let what = match hold {
        Hold::Run => "is running",
        Hold::Change => "is being changed by another command",
    };
    let who = match holder {
        Some(h) => format!(
            ": {} holds it, since {} (source session pid {}{})",
            if h.name.is_empty() {
                "a session without a name"
            } else {
                &h.name
            },
            h.since,
            h.backend_pid,
            h.client_addr
                .map(|a| format!(", from {a}"))
                .unwrap_or_default()
        ),
        None => String::new(),
    };
    let fix = match (command, hold) {
        ("run", _) => "stop that process first; one `cutover run` per pipeline",
        (_, Hold::Run) => "stop `cutover run` for this pipeline first",
        _ => "wait for that command to finish, then run this one again",
    };
    format!("the pipeline (slot {slot}) {what}{who}. `cutover {command}` changes nothing while it does. Fix: {fix}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_keeps_the_pid_whatever_the_host_name() {
        let host = "ip-10-20-130-47.eu-central-1.compute.internal";
        let label = label_of("run", host, 4_194_304);
        assert!(label.len() <= 63, "{label}");
        assert!(label.ends_with(" pid 4194304"), "{label}");
        assert!(
            label.starts_with("cutover run on ip-10-20-130-47"),
            "{label}"
        );
        assert_eq!(label_of("run", "db1", 7), "cutover run on db1 pid 7");
        // A multi-byte character at the cut is not split.
        let label = label_of("switch", &"é".repeat(40), 1);
        assert!(label.len() <= 63 && label.ends_with(" pid 1"), "{label}");
    }

    #[test]
    fn refusals_name_the_holder_and_the_fix() {
        let holder = Holder {
            name: "cutover run on db-7 pid 4242".into(),
            since: "2026-12-06 02:00:00 UTC".into(),
            client_addr: Some("10.0.0.5".into()),
            backend_pid: 99,
        };
        let text = refusal("run", Hold::Run, "cutover_shop", Some(holder));
        assert!(
            text.contains("db-7 pid 4242")
                && text.contains("since 2026-12-06")
                && text.contains("10.0.0.5"),
            "{text}"
        );
        assert!(text.contains("one `cutover run` per pipeline"), "{text}");
        let text = refusal("teardown", Hold::Run, "cutover_shop", None);
        assert!(text.contains("stop `cutover run`"), "{text}");
    }

    #[test]
    fn only_an_ended_process_of_this_host_is_waited_for() {
        let host = this_host();
        let me = std::process::id();
        // Alive: this very process.
        assert_eq!(ended_here(&label_of("run", &host, me), &host), None);
        // Ended: a child that has been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(ended_here(&label_of("run", &host, pid), &host), Some(pid));
        // Another host, or a session that is not ours: never waited for.
        assert_eq!(
            ended_here(&label_of("run", "elsewhere-db-9", pid), &host),
            None
        );
        assert_eq!(ended_here("psql", &host), None);
        assert_eq!(
            ended_here(&format!("cutover run on  pid {pid}"), &host),
            None
        );
    }

    #[test]
    fn the_label_fits_application_name() {
        let l = label("verify --repair");
        assert!(
            l.len() <= 63 && l.starts_with("cutover verify --repair on "),
            "{l}"
        );
    }
}
