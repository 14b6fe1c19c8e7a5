//! `cutover check` as data: what was checked of the pipeline file, the source, every target and
//! the way back, each finding with its mark and its fix. Nothing is changed anywhere. The
//! command line prints the findings ([`Finding::lines`]) and decides the exit code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cutover_core::{ConnectorError, Sink, TableSchema, TargetContext};
use cutover_postgres::conn::ApplyRole;
use cutover_postgres::sink::Firing;

use crate::config::{ApplySettings, Pipeline};
use crate::connect;
use crate::switch::{self, Direction};

/// How a finding is shown, and whether it fails the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `  ok    ...`
    Ok,
    /// `  warn  ...`: worth a look, does not fail the check.
    Warn,
    /// `  FAIL  ...`
    Fail,
    /// `  tls   ...`: how a connection is secured.
    Tls,
    /// A line of its own, e.g. `sink x: connected, tables compatible`.
    Note,
    /// A line of its own that fails the check, e.g. `sink x: FAIL ...`.
    FailNote,
}

/// One finding of `cutover check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub mark: Mark,
    /// What was found, after the mark.
    pub text: String,
    /// Lines listed under it (the triggers that fire, the foreign keys checked).
    pub items: Vec<String>,
    /// The statement or setting that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn new(mark: Mark, text: impl Into<String>) -> Finding {
        Finding {
            mark,
            text: text.into(),
            items: Vec::new(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }

    /// Whether it fails the check.
    pub fn failed(&self) -> bool {
        matches!(self.mark, Mark::Fail | Mark::FailNote)
    }

    /// The lines `cutover check` prints for it.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![match self.mark {
            Mark::Ok => format!("  ok    {}", self.text),
            Mark::Warn => format!("  warn  {}", self.text),
            Mark::Fail => format!("  FAIL  {}", self.text),
            Mark::Tls => format!("  tls   {}", self.text),
            Mark::Note | Mark::FailNote => self.text.clone(),
        }];
        lines.extend(self.items.iter().map(|item| format!("        {item}")));
        if let Some(fix) = &self.fix {
            lines.push(format!("        fix: {fix}"));
        }
        lines
    }
}

/// The findings so far, in the order they were made.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    fn push(&mut self, finding: Finding) {
        self.0.push(finding);
    }

    /// How many findings fail the check.
    pub fn failed(&self) -> usize {
        self.0.iter().filter(|f| f.failed()).count()
    }
}

/// Checks a pipeline that reads a PostgreSQL source: `file` as written, `cfg` as it runs now
/// (after a switch, from the new primary). Findings go to `out` as they are made, so those made
/// before an error are kept; an error is a store that could not be asked at all.
pub async fn postgres_pipeline(
    path: &Path,
    cfg: &Pipeline,
    out: &mut Findings,
) -> Result<(), ConnectorError> {
    out.push(Finding::new(
        Mark::Note,
        format!("pipeline file {}: ok", path.display()),
    ));
    let source = connect::source(cfg).await?;
    out.push(Finding::new(
        Mark::Note,
        format!(
            "source {}: connected, {} tables selected",
            source.endpoint(),
            source.tables().len()
        ),
    ));
    out.push(Finding::new(
        Mark::Tls,
        format!("source: {}", source.endpoint().tls_state().await?),
    ));
    for f in source.preflight().await? {
        out.push(preflight_finding(f));
    }
    let schemas = source.schemas();
    let shaped = shaped_tables(cfg, &source, &schemas, out).await?;
    postgres_targets(cfg, &shaped, out).await?;
    way_back(cfg, &schemas, out).await;
    let ctx = connect::target_context(cfg, &source.endpoint().database());
    other_targets(cfg, &ctx, out).await;
    // What `cutover run` refuses at start: progress saved in a sink while the slot is gone
    // (changes since may be missing from it, and no slot can give them again).
    if !source.slot_exists().await? {
        for sink in &cfg.sinks {
            let Ok(state) = sink.saved_state(&ctx).await else {
                continue; // an unreachable sink was reported above
            };
            if state.checkpoint.is_some() || !state.copied_tables.is_empty() {
                out.push(Finding::new(Mark::Fail, format!(
                    "sink {}: holds progress from an earlier run, and replication slot {} does not exist on the source: changes made since that run may be missing from it",
                    sink.name(),
                    cfg.slot
                )).fix(format!("run `cutover recover {}` (every table is copied again into the targets, replacing the rows on PostgreSQL targets), or `cutover teardown --target-state {}` to start over", path.display(), path.display())));
            }
        }
    }
    Ok(())
}

/// One of the source's preflight findings as `cutover check` shows it: a passed check with a
/// fix is a warning.
fn preflight_finding(f: cutover_postgres::preflight::Finding) -> Finding {
    let text = format!("{}: {}", f.check, f.detail);
    match (f.ok, f.fix) {
        (true, Some(fix)) => Finding::new(Mark::Warn, text).fix(fix),
        (true, None) => Finding::new(Mark::Ok, text),
        (false, fix) => Finding {
            fix,
            ..Finding::new(Mark::Fail, text)
        },
    }
}

/// Each sink's tables as its transform rules shape them, by sink name; a wrong rule is named
/// with its place in the file, a filter on a table whose updates may leave values unsent warns.
async fn shaped_tables(
    cfg: &Pipeline,
    source: &cutover_postgres::PgSource,
    schemas: &[Arc<TableSchema>],
    out: &mut Findings,
) -> Result<HashMap<String, Vec<Arc<TableSchema>>>, ConnectorError> {
    let mut shaped = HashMap::new();
    for sink in &cfg.sinks {
        let ts = match cfg.transforms.compile_all(&sink.rules, schemas) {
            Ok(ts) => ts,
            Err(e) => {
                out.push(Finding::new(
                    Mark::FailNote,
                    format!("sink {}: FAIL transform rules: {e}", sink.name()),
                ));
                continue;
            }
        };
        if !cfg.transforms.is_empty_with(&sink.rules) {
            out.push(Finding::new(
                Mark::Note,
                format!(
                    "sink {}: transform rules fit the tables ({} table(s) reach it)",
                    sink.name(),
                    ts.len()
                ),
            ));
        }
        for t in ts.iter().filter(|t| t.filters()) {
            let name = &t.source().name;
            if !source.replica_identity_full(name).await? {
                out.push(Finding::new(Mark::Warn, format!(
                    "sink {}: {name} is filtered but has no REPLICA IDENTITY FULL: a row that enters the filter through an update leaving a TOASTed value (over ~2 kB) untouched arrives without that value (cutover verify finds it)",
                    sink.name()
                )).fix(format!("ALTER TABLE {} REPLICA IDENTITY FULL (more WAL per update), or accept it", name.quoted())));
            }
        }
        shaped.insert(
            sink.name().to_string(),
            ts.iter().map(|t| t.output().clone()).collect(),
        );
    }
    Ok(shaped)
}

/// Each PostgreSQL target: its tables against the shaped source tables, what fires there for
/// replicated rows, how it is secured.
async fn postgres_targets(
    cfg: &Pipeline,
    shaped: &HashMap<String, Vec<Arc<TableSchema>>>,
    out: &mut Findings,
) -> Result<(), ConnectorError> {
    for sink in connect::pg_sinks(cfg).await? {
        let Some(tables) = shaped.get(sink.name()) else {
            continue;
        };
        if let Err(e) = sink.preflight(tables).await {
            out.push(Finding::new(
                Mark::FailNote,
                format!("sink {}: FAIL {e}", sink.name()),
            ));
            continue;
        }
        out.push(Finding::new(
            Mark::Note,
            format!("sink {}: connected, tables compatible", sink.name()),
        ));
        let firing = sink.fires_on_apply(tables).await?;
        out.0
            .extend(firing_findings(sink.name(), sink.apply_role(), &firing));
        out.push(match sink.endpoint().tls_state().await {
            Ok(state) => Finding::new(Mark::Tls, format!("sink {}: {state}", sink.name())),
            Err(e) => Finding::new(Mark::Warn, format!("sink {}: {e}", sink.name())),
        });
    }
    Ok(())
}

/// The targets other than PostgreSQL (those were connected and checked with their tables):
/// each is connected once.
async fn other_targets(cfg: &Pipeline, ctx: &TargetContext, out: &mut Findings) {
    let checked: Vec<&str> = connect::postgres_targets(cfg)
        .map(|t| t.name.as_str())
        .collect();
    for sink in cfg.sinks.iter().filter(|s| !checked.contains(&s.name())) {
        match sink.connect(ctx).await {
            Ok(connected) => {
                connected.close().await;
                out.push(Finding::new(
                    Mark::Note,
                    format!("sink {} ({}): connected", sink.name(), sink.kind()),
                ));
                if let Some(security) = sink.security() {
                    out.push(Finding::new(
                        Mark::Tls,
                        format!("sink {}: {security}", sink.name()),
                    ));
                }
            }
            Err(e) => out.push(Finding::new(
                Mark::FailNote,
                format!("sink {} ({}): FAIL {e}", sink.name(), sink.kind()),
            )),
        }
    }
}

/// What fires on the source for the rows the reverse stream brings back after a switch (it
/// applies there as the forward sinks apply on their targets). Nothing for a pipeline that
/// cannot switch (no PostgreSQL target to move to).
async fn way_back(cfg: &Pipeline, tables: &[Arc<TableSchema>], out: &mut Findings) {
    let Ok(back) = switch::pipeline_for(cfg, Direction::Reverse, None) else {
        return;
    };
    let sinks = match connect::pg_sinks(&back).await {
        Ok(sinks) => sinks,
        Err(e) => {
            out.push(Finding::new(
                Mark::Warn,
                format!("the way back (the source as the reverse stream's target): {e}"),
            ));
            return;
        }
    };
    // The other targets are checked as they are in the forward direction.
    for sink in sinks.iter().filter(|s| s.name() == "source") {
        match sink.fires_on_apply(tables).await {
            Ok(firing) => out.0.extend(firing_findings(
                &format!("{} (the way back, after a switch)", sink.name()),
                sink.apply_role(),
                &firing,
            )),
            Err(e) => out.push(Finding::new(
                Mark::Warn,
                format!("sink {} (the way back): {e}", sink.name()),
            )),
        }
    }
}

/// What fires on a PostgreSQL target for replicated rows (see `PgSink::fires_on_apply`). A
/// trigger fails the check (it writes or changes rows the source did not); foreign keys the
/// copy and the batches can order (parents first) only warn, a cycle of them fails.
pub fn firing_findings(sink: &str, role: ApplyRole, firing: &Firing) -> Vec<Finding> {
    let mut found = Vec::new();
    if !firing.triggers.is_empty() {
        let (text, fix) = if role == ApplyRole::Replica {
            (
                format!("sink {sink}: these triggers are marked ENABLE ALWAYS or ENABLE REPLICA, so they fire for every replicated row even though cutover applies as a replica (they write or change rows the source did not):"),
                "ALTER TABLE ... ENABLE TRIGGER name (fires for the application only), or DISABLE TRIGGER name until the switch",
            )
        } else {
            (
                format!("sink {sink}: the role may not set session_replication_role = replica, so these triggers fire for every replicated row (they write or change rows the source did not):"),
                "connect as a superuser, or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO the role; or disable them until the switch (ALTER TABLE ... DISABLE TRIGGER USER)",
            )
        };
        found.push(Finding {
            items: firing.triggers.clone(),
            ..Finding::new(Mark::Fail, text).fix(fix)
        });
    }
    if !firing.foreign_keys.is_empty() {
        let cyclic = firing.cyclic();
        let text = format!(
            "sink {sink}: the role may not set session_replication_role = replica, so these foreign keys are checked for replicated rows; cutover copies and writes referenced tables first{}:",
            if cyclic { ", which a cycle of foreign keys defeats" } else { "" }
        );
        found.push(Finding {
            items: firing.foreign_keys.clone(),
            ..Finding::new(if cyclic { Mark::Fail } else { Mark::Warn }, text)
                .fix("connect as a superuser, or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO the role; or drop the foreign keys and add them back after the switch")
        });
    }
    found
}

/// Checks a pipeline that reads Kafka topics (`cutover apply`): the brokers answer and hold the
/// named topics, and every target can be fed by `apply` and be reached.
pub async fn apply_pipeline(
    path: &Path,
    cfg: &Pipeline,
    apply: &ApplySettings,
    out: &mut Findings,
) -> Result<(), ConnectorError> {
    out.push(Finding::new(
        Mark::Note,
        format!("pipeline file {}: ok", path.display()),
    ));
    out.push(Finding::new(
        Mark::Note,
        format!(
            "source: Kafka {}, group {}, {:?} envelopes",
            apply.brokers, apply.group, apply.read.format
        ),
    ));
    out.push(Finding::new(
        Mark::Tls,
        format!(
            "source: {}",
            cutover_kafka::security::describe(&apply.properties)
        ),
    ));
    let named: Vec<String> = apply
        .topics
        .iter()
        .filter(|t| !t.starts_with('^'))
        .cloned()
        .collect();
    let found =
        cutover_kafka::group::topic_partitions(&apply.brokers, &apply.properties, &named).await?;
    for (topic, partitions) in found {
        out.push(if partitions > 0 {
            Finding::new(
                Mark::Ok,
                format!("topic {topic}: {partitions} partition(s)"),
            )
        } else {
            Finding::new(
                Mark::Fail,
                format!("topic {topic}: the brokers have no such topic"),
            )
            .fix("correct source.topics, or start the capture that writes it")
        });
    }
    for pattern in apply.topics.iter().filter(|t| t.starts_with('^')) {
        out.push(Finding::new(
            Mark::Ok,
            format!("pattern {pattern}: matched by the brokers when the workers join"),
        ));
    }
    let ctx = connect::target_context(cfg, "");
    for sink in &cfg.sinks {
        if !sink.fed_by_apply() {
            out.push(Finding::new(
                Mark::Fail,
                format!(
                    "sink {}: a {} sink cannot be fed by cutover apply",
                    sink.name(),
                    sink.kind()
                ),
            ));
            continue;
        }
        out.push(match sink.saved_state(&ctx).await {
            Ok(_) => Finding::new(
                Mark::Ok,
                format!("sink {} ({}): reachable", sink.name(), sink.kind()),
            ),
            Err(e) => Finding::new(
                Mark::Fail,
                format!("sink {} ({}): {e}", sink.name(), sink.kind()),
            ),
        });
        if let Some(security) = sink.security() {
            out.push(Finding::new(
                Mark::Tls,
                format!("sink {}: {security}", sink.name()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(triggers: &[&str], foreign_keys: &[&str]) -> Firing {
        Firing {
            triggers: triggers.iter().map(|s| s.to_string()).collect(),
            foreign_keys: foreign_keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_trigger_that_fires_for_replicated_rows_fails_with_the_fix_for_the_role() {
        let found = firing_findings(
            "t",
            ApplyRole::Replica,
            &firing(&["public.orders: audit"], &[]),
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].failed());
        assert_eq!(found[0].items, ["public.orders: audit"]);
        assert!(found[0]
            .fix
            .as_deref()
            .unwrap()
            .starts_with("ALTER TABLE ... ENABLE TRIGGER"));
        let found = firing_findings(
            "t",
            ApplyRole::Origin,
            &firing(&["public.orders: audit"], &[]),
        );
        assert!(found[0]
            .fix
            .as_deref()
            .unwrap()
            .starts_with("connect as a superuser"));
    }

    #[test]
    fn foreign_keys_warn_and_only_a_cycle_fails() {
        let plain = firing_findings(
            "t",
            ApplyRole::Origin,
            &firing(&[], &["public.items: items_order_fk to public.orders"]),
        );
        assert_eq!(plain[0].mark, Mark::Warn);
        let cycle = firing_findings(
            "t",
            ApplyRole::Origin,
            &firing(&[], &["public.a: a_b_fk to public.b (in a cycle)"]),
        );
        assert_eq!(cycle[0].mark, Mark::Fail);
        assert!(cycle[0]
            .text
            .contains("which a cycle of foreign keys defeats"));
        assert!(firing_findings("t", ApplyRole::Replica, &firing(&[], &[])).is_empty());
    }

    #[test]
    fn a_finding_prints_its_mark_items_and_fix_in_columns() {
        let f = Finding {
            items: vec!["one".into(), "two".into()],
            ..Finding::new(Mark::Fail, "sink t: bad").fix("do this")
        };
        assert_eq!(
            f.lines(),
            [
                "  FAIL  sink t: bad",
                "        one",
                "        two",
                "        fix: do this"
            ]
        );
        assert_eq!(
            Finding::new(Mark::Tls, "source: off").lines(),
            ["  tls   source: off"]
        );
        assert_eq!(
            Finding::new(Mark::FailNote, "sink t: FAIL x").lines(),
            ["sink t: FAIL x"]
        );
    }

    #[test]
    fn a_passed_preflight_check_with_a_fix_is_a_warning() {
        let finding = |ok, fix: Option<&str>| {
            preflight_finding(cutover_postgres::preflight::Finding {
                check: "wal_level",
                ok,
                detail: "logical".into(),
                fix: fix.map(str::to_string),
            })
        };
        assert_eq!(finding(true, None).mark, Mark::Ok);
        assert_eq!(finding(true, Some("raise it")).mark, Mark::Warn);
        let failed = finding(false, Some("set it"));
        assert!(failed.failed());
        assert_eq!(
            failed.lines(),
            ["  FAIL  wal_level: logical", "        fix: set it"]
        );
        let mut all = Findings::default();
        all.push(failed);
        all.push(finding(true, Some("raise it")));
        assert_eq!(all.failed(), 1);
    }
}
