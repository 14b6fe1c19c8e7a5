//! Checks run before anything is created: each failed check says what is wrong and the fix.

use std::ops::ControlFlow;

use cutover_core::Result;
use tokio_postgres::{Client, Row};

use crate::catalog::SourceTable;
use crate::error::classify;
use crate::version::Capabilities;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    /// What was found (for a failure: what is wrong).
    pub detail: String,
    /// For a failure: the statement or setting that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    /// Not a failure, but something to act on: `ok` with a fix.
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            ok: true,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Checks the source server: logical WAL, the role's privileges, a key for every table, free
/// replication slots and WAL senders, and that our slot is not held by another process.
pub async fn check_source(
    client: &Client,
    caps: Capabilities,
    tables: &[SourceTable],
    slot: &str,
    publication: &str,
) -> Result<Vec<Finding>> {
    let mut out = vec![version_finding(caps)];
    if !caps.publish_via_root() {
        partition_notes(caps, tables, &mut out);
    }

    let wal_level: String = preflight_row(client, "SHOW wal_level").await?.get(0);
    out.push(wal_level_finding(&wal_level));

    let role = preflight_row(client, "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").await?;
    let (user, superuser, replication): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    out.push(replication_finding(&user, superuser, replication));

    let publication_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(|e| classify(e, "cannot read pg_publication"))?
        .get(0);
    let checks = TableChecks {
        client,
        caps,
        user: &user,
        superuser,
        publication,
        publication_exists,
    };
    for t in tables {
        checks.table(t, &mut out).await?;
    }

    let slots = preflight_row(
        client,
        "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int",
    )
    .await?;
    let (free_slots, free_senders): (i32, i32) = (slots.get(0), slots.get(1));
    let slot_sql = if caps.slot_wal_status() {
        "SELECT plugin::text, active_pid, database::text = current_database(), wal_status,
                safe_wal_size, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))
           FROM pg_replication_slots WHERE slot_name = $1"
    } else {
        "SELECT plugin::text, active_pid, database::text = current_database(), NULL::text,
                NULL::int8, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))
           FROM pg_replication_slots WHERE slot_name = $1"
    };
    let existing = client
        .query_opt(slot_sql, &[&slot])
        .await
        .map_err(|e| classify(e, "cannot read pg_replication_slots"))?;
    match &existing {
        Some(r) => {
            if existing_slot_findings(slot, r, &mut out).is_break() {
                return Ok(out);
            }
        }
        None if free_slots < 2 => out.push(Finding::fail(
            "replication slot",
            format!("only {free_slots} replication slots are free; cutover needs 2 (its slot, and a temporary one while it copies)"),
            "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = ...; then restart) or drop unused slots",
        )),
        None => out.push(Finding::pass("replication slot", format!("{free_slots} slots free"))),
    }
    out.push(keep_size_advice(client, caps).await?);
    out.push(if free_senders >= 2 {
        Finding::pass("wal senders", format!("{free_senders} WAL senders free"))
    } else {
        Finding::fail(
            "wal senders",
            format!("only {free_senders} WAL senders are free; cutover needs 2"),
            "raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = ...; then restart)",
        )
    });
    Ok(out)
}

/// The one row `sql` returns; a failure is an error of the preflight checks.
async fn preflight_row(client: &Client, sql: &'static str) -> Result<Row> {
    client
        .query_one(sql, &[])
        .await
        .map_err(|e| classify(e, "cannot run the source preflight checks"))
}

/// Before PostgreSQL 13: how each partitioned table is replicated through its partitions.
fn partition_notes(caps: Capabilities, tables: &[SourceTable], out: &mut Vec<Finding>) {
    for t in tables.iter().filter(|t| t.relkind == 'p') {
        out.push(Finding::pass(
            "partitioned table",
            format!(
                "{} is a partitioned table, which PostgreSQL {} cannot publish \
                 (publish_via_partition_root came with 13): cutover publishes its partitions \
                 and applies their changes to it; a partition attached later joins the \
                 publication and its rows are copied",
                t.schema.name,
                caps.major()
            ),
        ));
    }
}

/// Passes when `wal_level` is logical.
fn wal_level_finding(wal_level: &str) -> Finding {
    if wal_level == "logical" {
        Finding::pass("wal_level", "wal_level is logical")
    } else {
        Finding::fail(
            "wal_level",
            format!("wal_level is {wal_level}; logical replication needs logical"),
            "run ALTER SYSTEM SET wal_level = logical; on the source, then restart it",
        )
    }
}

/// Passes when the role is a superuser or has REPLICATION.
fn replication_finding(user: &str, superuser: bool, replication: bool) -> Finding {
    if superuser || replication {
        Finding::pass(
            "replication privilege",
            format!("role {user} may replicate"),
        )
    } else {
        Finding::fail(
            "replication privilege",
            format!("role {user} has neither REPLICATION nor SUPERUSER"),
            format!("ALTER ROLE \"{user}\" REPLICATION;"),
        )
    }
}

/// What the per-table checks know of the role and the publication.
struct TableChecks<'a> {
    client: &'a Client,
    caps: Capabilities,
    user: &'a str,
    superuser: bool,
    publication: &'a str,
    publication_exists: bool,
}

impl TableChecks<'_> {
    /// One table's findings: whether the role can read it, whether it can add it to the
    /// publication, and its row key.
    async fn table(&self, t: &SourceTable, out: &mut Vec<Finding>) -> Result<()> {
        let (user, publication) = (self.user, self.publication);
        let name = t.schema.name.quoted();
        let (select, owner): (bool, bool) = {
            let r = self
                .client
                .query_one(
                    "SELECT has_table_privilege(c.oid, 'SELECT'),
                            pg_has_role(c.relowner, 'USAGE')
                       FROM pg_class c WHERE c.oid = $1",
                    &[&t.oid],
                )
                .await
                .map_err(|e| classify(e, "cannot read table privileges"))?;
            (r.get(0), r.get(1))
        };
        if !select {
            out.push(Finding::fail(
                "table privilege",
                format!("role {user} cannot read {}", t.schema.name),
                format!("GRANT SELECT ON {name} TO \"{user}\";"),
            ));
        }
        if !self.publication_exists && !self.superuser && !owner {
            out.push(Finding::fail(
                "publication ownership",
                format!("role {user} does not own {}, so it cannot add it to the publication", t.schema.name),
                format!("let the owner run CREATE PUBLICATION \"{publication}\" FOR TABLE ... (every selected table) before cutover starts"),
            ));
        }
        out.push(self.row_key(t, &name).await?);
        Ok(())
    }

    /// Whether changes to the table can be applied by key, and if not, the fix (`name` is
    /// the table's quoted name).
    async fn row_key(&self, t: &SourceTable, name: &str) -> Result<Finding> {
        // A published table without a replica identity makes the application's own UPDATE and
        // DELETE statements fail on the source: never let that happen.
        if t.replica_identity == 'n' {
            return Ok(Finding::fail(
                "row key",
                format!(
                    "{} has REPLICA IDENTITY NOTHING: once published, updates and deletes on it would fail on the source",
                    t.schema.name
                ),
                format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"),
            ));
        }
        if t.key_origin.is_none() && t.relkind == 'p' {
            let fix = if self.caps.major() == 10 {
                "give every partition the same primary key, holding the partition key (PostgreSQL 10 \
                 cannot give the partitioned table one: 11 can), or leave the table out of source.tables"
            } else {
                "add a primary key to the partitioned table (ALTER TABLE ... ADD PRIMARY KEY (...), \
                 holding the partition key), or give every partition the same one"
            };
            return Ok(Finding::fail(
                "row key",
                format!(
                    "{} is a partitioned table with no primary key of its own, and its partitions do \
                     not all have the same primary key (or replica identity index), so its changes \
                     cannot be applied by key",
                    t.schema.name
                ),
                fix,
            ));
        }
        Ok(match t.key_origin {
            Some(origin) => Finding::pass("row key", format!("{} is keyed by its {origin}", t.schema.name)),
            None => Finding::fail(
                "row key",
                format!(
                    "{} has no primary key and no replica identity index, so its updates and deletes cannot be applied by key",
                    t.schema.name
                ),
                key_fix(self.client, t.oid, name).await?,
            ),
        })
    }
}

/// The findings for our slot when it exists (`r`: its row of pg_replication_slots): its WAL,
/// and whether the run can use it. Breaks when the slot is lost, which ends the checks.
fn existing_slot_findings(slot: &str, r: &Row, out: &mut Vec<Finding>) -> ControlFlow<()> {
    let plugin: Option<String> = r.get(0);
    let pid: Option<i32> = r.get(1);
    let same_db: Option<bool> = r.get(2);
    let wal_status: Option<String> = r.get(3);
    let safe: Option<i64> = r.get(4);
    let retained: Option<String> = r.get(5);
    if wal_status.as_deref() == Some("lost") {
        out.push(Finding::fail(
            "replication slot",
            format!(
                "slot {slot} was invalidated by the source (wal_status = lost): it fell more than \
                 max_slot_wal_keep_size behind, and the WAL it needed was removed. The changes \
                 in that WAL cannot be streamed to the targets any more"
            ),
            crate::error::RECOVER_FIX,
        ));
        return ControlFlow::Break(());
    }
    if wal_status.as_deref() == Some("unreserved") {
        out.push(Finding::warn(
            "slot WAL",
            format!(
                "slot {slot} retains {} of WAL and is past max_slot_wal_keep_size (wal_status = unreserved): \
                 the next checkpoint can remove WAL it needs, and the slot is then lost",
                retained.as_deref().unwrap_or("?")
            ),
            "start `cutover run` now so the slot catches up, or raise max_slot_wal_keep_size \
             (ALTER SYSTEM SET max_slot_wal_keep_size = ...; SELECT pg_reload_conf();)",
        ));
    } else if let (Some(safe), Some(retained)) = (safe, &retained) {
        out.push(Finding::pass(
            "slot WAL",
            format!(
                "slot {slot} retains {retained} of WAL; it is lost after {} more",
                pretty_bytes(safe)
            ),
        ));
    }
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        out.push(Finding::fail(
            "replication slot",
            format!("slot {slot} exists but is not a pgoutput slot of this database"),
            "choose another source.slot, or drop that slot if nothing uses it",
        ));
    } else if let Some(pid) = pid {
        out.push(Finding::fail(
            "replication slot",
            format!("slot {slot} is in use by process {pid} (another cutover run?)"),
            format!("stop the other run, or end that session: SELECT pg_terminate_backend({pid});"),
        ));
    } else {
        out.push(Finding::pass(
            "replication slot",
            format!("slot {slot} exists and is free; the run resumes from it"),
        ));
    }
    ControlFlow::Continue(())
}

/// The source's version and what it means for the run.
fn version_finding(caps: Capabilities) -> Finding {
    let v = format!("PostgreSQL {}.{}", caps.major(), caps.version_num % 10000);
    Finding::pass(
        "server version",
        if caps.binary_values() {
            format!("{v}: values stream in binary")
        } else {
            format!(
                "{v}: values stream as text (binary came with 14) and are converted to the \
                 same values cutover reads in binary"
            )
        },
    )
}

/// `max_slot_wal_keep_size` explained: unbounded WAL for a stopped pipeline, or the point past
/// which the slot is lost.
async fn keep_size_advice(client: &Client, caps: Capabilities) -> Result<Finding> {
    if !caps.slot_wal_status() {
        return Ok(Finding::pass(
            "max_slot_wal_keep_size",
            format!(
                "PostgreSQL {} has no max_slot_wal_keep_size: while cutover is stopped or behind, the \
                 source keeps all the WAL the slot needs, without bound, until its disk fills; watch \
                 the slot's retained WAL (cutover status)",
                caps.major()
            ),
        ));
    }
    let row = client
        .query_one(
            "SELECT current_setting('max_slot_wal_keep_size'), \
                    pg_size_bytes(current_setting('max_slot_wal_keep_size')) < 0",
            &[],
        )
        .await
        .map_err(|e| classify(e, "cannot read max_slot_wal_keep_size"))?;
    let (value, unlimited): (String, bool) = (row.get(0), row.get(1));
    Ok(Finding::pass(
        "max_slot_wal_keep_size",
        if unlimited {
            "unlimited (-1): while cutover is stopped or behind, the source keeps all the WAL the slot \
             needs, without bound, until its disk fills. A bound (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB') \
             protects the source; a slot that outgrows it is lost, and `cutover recover` copies again"
                .to_string()
        } else {
            format!(
                "{value}: a slot further behind than that is lost (the source removes its WAL), and \
                 `cutover recover` must copy every table again; keep the pipeline's downtime within it"
            )
        },
    ))
}

fn pretty_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The statement that gives a keyless table a key: its own unique index on NOT NULL columns
/// as the replica identity when it has one (no rewrite, no lock beyond a moment), else a
/// primary key, with REPLICA IDENTITY FULL explained as no substitute.
async fn key_fix(client: &Client, oid: u32, name: &str) -> Result<String> {
    let candidate: Option<String> = client
        .query_opt(
            "SELECT i.indexrelid::regclass::text
               FROM pg_index i
              WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indisvalid
                AND i.indpred IS NULL AND i.indexprs IS NULL
                AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                                   AND NOT a.attnotnull)
              ORDER BY i.indnatts, i.indexrelid
              LIMIT 1",
            &[&oid],
        )
        .await
        .map_err(|e| classify(e, "cannot read the table's indexes"))?
        .map(|r| r.get(0));
    Ok(match candidate {
        Some(index) => format!(
            "its unique index {index} covers only NOT NULL columns and can identify rows: ALTER TABLE {name} REPLICA IDENTITY USING INDEX {index};"
        ),
        None => format!(
            "add a primary key on the columns that identify a row (ALTER TABLE {name} ADD PRIMARY KEY (col, ...);), or, if none do, a surrogate one (ALTER TABLE {name} ADD COLUMN row_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY; this rewrites the table under an exclusive lock). REPLICA IDENTITY FULL is no substitute: it writes every updated or deleted row whole into the WAL and still cannot tell duplicate rows apart, so cutover refuses it without a key"
        ),
    })
}
