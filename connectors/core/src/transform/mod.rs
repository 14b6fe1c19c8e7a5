//! The transform stage: per-table rules that reshape rows on their way to a sink, applied the
//! same way to snapshot rows and to streamed changes, and by the checker to the source's rows.
//!
//! A [`TransformSpec`] is one table's rules as declared (with the place each rule was written,
//! for errors). A chain of specs (the pipeline's, then the sink's) is compiled against the
//! table's source layout into a [`TableTransform`]; compiling checks every rule against the
//! real columns, so a wrong rule is refused before anything is written.
//!
//! Within one spec, every name refers to the columns as they enter it, and the steps run in
//! this order: filter, mask, derived columns, column selection, column renames, table rename.
//! A filter and a derived column may therefore read a column that is then dropped, but not one
//! that is masked (that would leak what the mask hides).
//!
//! Key columns cannot be dropped or masked: every target applies changes by key, and the
//! checker compares by key.

pub mod predicate;
mod sink;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::change::{Change, Row, Value};
use crate::datum::{self, oid};
use crate::schema::{Column, TableName, TableSchema};
use crate::verify::canonical::{push_value, Precision};

pub use predicate::{Predicate, Verdict};
pub use sink::TransformSink;

/// A name or value as written in the pipeline file, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed<T> {
    pub value: T,
    /// `file, line L, column C`, for error messages.
    pub place: String,
}

impl<T> Placed<T> {
    pub fn new(value: T, place: impl Into<String>) -> Placed<T> {
        Placed {
            value,
            place: place.into(),
        }
    }
}

/// How a masked column's values are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// NULL in every row.
    Null,
    /// A keyed BLAKE3 hash of the value, as 64 hex characters (the column becomes text). Equal
    /// values hash equally in every table, so joins on a masked column still work; without the
    /// key the values cannot be guessed back.
    Hash,
    /// The same value in every row, given as text in the column's type.
    Value(String),
}

/// What an added column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    /// The same value in every row, of the given SQL type.
    Constant { value: String, type_name: String },
    /// Text built from the row's columns: `{first_name} {last_name}`. NULL when a column it
    /// reads is NULL (as SQL's `||`).
    Template(String),
}

/// One column added by a transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddColumn {
    pub name: Placed<String>,
    pub derived: Derived,
}

/// One table's rules, as declared for the pipeline or for one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    /// The table the rules apply to (as it enters these rules).
    pub table: Placed<TableName>,
    /// Leave the table out of this sink (or of every sink, at pipeline level).
    pub exclude: bool,
    /// Keep only these columns (key columns must be among them).
    pub columns: Option<Vec<Placed<String>>>,
    pub exclude_columns: Vec<Placed<String>>,
    pub rename: Option<Placed<TableName>>,
    /// Old name, new name.
    pub rename_columns: Vec<(Placed<String>, String)>,
    pub masks: Vec<(Placed<String>, Mask)>,
    pub add_columns: Vec<AddColumn>,
    pub filter: Option<Placed<Predicate>>,
    /// The topic, subject or collection the table goes to (message and document sinks).
    pub route: Option<Placed<String>>,
}

impl TransformSpec {
    /// A spec for `table` with no rules.
    pub fn new(table: Placed<TableName>) -> TransformSpec {
        TransformSpec {
            table,
            exclude: false,
            columns: None,
            exclude_columns: Vec::new(),
            rename: None,
            rename_columns: Vec::new(),
            masks: Vec::new(),
            add_columns: Vec::new(),
            filter: None,
            route: None,
        }
    }
}

/// The secret that keys hash masks. Never printed.
#[derive(Clone)]
pub struct MaskKey([u8; 32]);

impl MaskKey {
    /// Derives the hashing key from a secret of any length.
    pub fn from_secret(secret: &str) -> MaskKey {
        MaskKey(blake3::derive_key(
            "cutover 2026-12 column mask",
            secret.as_bytes(),
        ))
    }
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(..)")
    }
}

/// A transform rule that cannot work on the table it names: where it was written, what is
/// wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}. Fix: {fix}.")]
pub struct TransformError {
    pub place: String,
    pub message: String,
    pub fix: String,
}

fn refuse<T>(
    place: &str,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Result<T, TransformError> {
    Err(TransformError {
        place: place.to_string(),
        message: message.into(),
        fix: fix.into(),
    })
}

/// One sink's own rules: which tables it takes, and its specs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkRules {
    /// Table patterns (`schema.table`, `schema.*`, `table` in `public`) the sink takes, by
    /// their source names; `None`: every table the pipeline replicates.
    pub include: Option<Vec<String>>,
    pub specs: Vec<TransformSpec>,
}

impl SinkRules {
    /// Whether the sink takes the source table `name`.
    pub fn takes(&self, name: &TableName) -> bool {
        self.include.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.split_once('.') {
                Some((schema, "*")) => schema == name.schema,
                Some((schema, table)) => schema == name.schema && table == name.name,
                None => name.schema == "public" && p == &name.name,
            })
        })
    }
}

/// Every sink's rules: the pipeline's specs, then each sink's own, and the hash key.
#[derive(Debug, Clone, Default)]
pub struct TransformSet {
    pub pipeline: Vec<TransformSpec>,
    pub key: Option<MaskKey>,
}

impl TransformSet {
    /// Whether no rule is declared anywhere for this sink.
    pub fn is_empty_with(&self, sink: &SinkRules) -> bool {
        self.pipeline.is_empty() && sink.specs.is_empty() && sink.include.is_none()
    }

    /// Compiles the chain of rules for one table and one sink's `sink_specs`. Returns `None`
    /// when the table is excluded.
    pub fn compile(
        &self,
        sink: &SinkRules,
        source: &Arc<TableSchema>,
    ) -> Result<Option<TableTransform>, TransformError> {
        if !sink.takes(&source.name) {
            return Ok(None);
        }
        let sink_specs = &sink.specs[..];
        let mut layout = source.clone();
        let mut stages = Vec::new();
        let mut route = None;
        for specs in [&self.pipeline[..], sink_specs] {
            let Some(spec) = specs.iter().find(|s| s.table.value == layout.name) else {
                continue;
            };
            if spec.exclude {
                return Ok(None);
            }
            let stage = Stage::compile(spec, &layout, self.key.as_ref())?;
            layout = stage.output.clone();
            if let Some(r) = &spec.route {
                route = Some(r.value.clone());
            }
            stages.push(stage);
        }
        Ok(Some(TableTransform {
            source: source.clone(),
            output: layout,
            stages,
            route,
        }))
    }

    /// Checks the rules against the pipeline's tables: each spec names a table that reaches
    /// it, and no two tables end up with one name. Returns each table's transform (excluded
    /// tables are left out).
    pub fn compile_all(
        &self,
        sink: &SinkRules,
        tables: &[Arc<TableSchema>],
    ) -> Result<Vec<TableTransform>, TransformError> {
        let sink_specs = &sink.specs[..];
        let names: Vec<&TableName> = tables.iter().map(|t| &t.name).collect();
        for spec in &self.pipeline {
            if !names.contains(&&spec.table.value) {
                return refuse(
                    &spec.table.place,
                    format!(
                        "the rules name table {}, which the pipeline does not replicate",
                        spec.table.value
                    ),
                    "name a table that source.tables selects (see cutover check)",
                );
            }
        }
        let mut out: Vec<TableTransform> = Vec::new();
        let mut by_output: HashMap<TableName, TableName> = HashMap::new();
        let mut reached: Vec<TableName> = Vec::new();
        for table in tables {
            let Some(t) = self.compile(sink, table)? else {
                continue;
            };
            // The name entering the sink's rules: after the pipeline's rename.
            let mid = self
                .pipeline
                .iter()
                .find(|s| s.table.value == table.name && !s.exclude)
                .and_then(|s| s.rename.as_ref().map(|r| r.value.clone()))
                .unwrap_or_else(|| table.name.clone());
            reached.push(mid);
            if let Some(other) = by_output.insert(t.output.name.clone(), table.name.clone()) {
                let place = sink_specs
                    .iter()
                    .chain(&self.pipeline)
                    .find_map(|s| {
                        s.rename
                            .as_ref()
                            .filter(|r| r.value == t.output.name)
                            .map(|r| r.place.clone())
                    })
                    .unwrap_or_default();
                return refuse(
                    &place,
                    format!(
                        "tables {other} and {} would both be written as {}",
                        table.name, t.output.name
                    ),
                    "give each table its own name",
                );
            }
            out.push(t);
        }
        for spec in sink_specs {
            if !reached.contains(&spec.table.value) {
                return refuse(
                    &spec.table.place,
                    format!(
                        "the sink's rules name table {}, which does not reach this sink",
                        spec.table.value
                    ),
                    "name the table as it arrives at the sink (after the pipeline's renames)",
                );
            }
        }
        Ok(out)
    }
}

/// One table's compiled chain of rules.
#[derive(Debug, Clone)]
pub struct TableTransform {
    source: Arc<TableSchema>,
    output: Arc<TableSchema>,
    stages: Vec<Stage>,
    route: Option<String>,
}

#[derive(Debug, Clone)]
struct Stage {
    output: Arc<TableSchema>,
    filter: Option<predicate::Bound>,
    columns: Vec<Output>,
    /// For each output column, whether it is a key column.
    key: Vec<bool>,
    hash_key: Option<[u8; 32]>,
}

#[derive(Debug, Clone)]
enum Output {
    Column(usize),
    Null,
    Hash { index: usize, type_oid: u32 },
    Constant(Bytes),
    Template(Vec<Piece>),
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Column { index: usize, type_oid: u32 },
}

impl TableTransform {
    /// The layout the rules were compiled for.
    pub fn source(&self) -> &Arc<TableSchema> {
        &self.source
    }

    /// The table as the sink sees it.
    pub fn output(&self) -> &Arc<TableSchema> {
        &self.output
    }

    /// The destination named by a `route` rule, if any.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// Whether the rules change nothing (no stage).
    pub fn is_identity(&self) -> bool {
        self.stages.is_empty()
    }

    /// Whether some stage filters rows.
    pub fn filters(&self) -> bool {
        self.stages.iter().any(|s| s.filter.is_some())
    }

    /// A snapshot (or checker) row: `None` when a filter leaves it out.
    pub fn row(&self, row: Row) -> Option<Row> {
        let mut row = row;
        for stage in &self.stages {
            if let Some(f) = &stage.filter {
                if f.eval(&row.0) != Verdict::True {
                    return None;
                }
            }
            row = stage.project(&row);
        }
        Some(row)
    }

    /// A key row (the key columns set, the rest NULL) in the output layout.
    pub fn key_row(&self, key: Row) -> Row {
        self.stages.iter().fold(key, |k, s| s.project_key(&k))
    }

    /// A streamed change: `None` when a filter leaves it out. An update whose new row leaves
    /// the filter becomes a delete of the row at the target; one whose new row passes is sent
    /// as an update, which every sink applies as an upsert, so a row entering the filter
    /// arrives whole. Deletes are always sent (the target may hold the row).
    pub fn change(&self, change: Change) -> Option<Change> {
        let mut change = match change {
            Change::Update {
                old_key: Some(old),
                mut row,
            } if row.0.contains(&Value::Unchanged) => {
                // Under REPLICA IDENTITY FULL the old row holds every value: the target may
                // not have the row yet (it may be entering a filter), so send them.
                for (v, o) in row.0.iter_mut().zip(&old.0) {
                    if *v == Value::Unchanged && matches!(o, Value::Binary(_)) {
                        *v = o.clone();
                    }
                }
                Change::Update {
                    old_key: Some(old),
                    row,
                }
            }
            c => c,
        };
        for stage in &self.stages {
            change = match change {
                Change::Insert { row } => {
                    if let Some(f) = &stage.filter {
                        if f.eval(&row.0) != Verdict::True {
                            return None;
                        }
                    }
                    Change::Insert {
                        row: stage.project(&row),
                    }
                }
                Change::Update { old_key, row } => {
                    let verdict = stage
                        .filter
                        .as_ref()
                        .map_or(Verdict::True, |f| f.eval(&row.0));
                    match verdict {
                        Verdict::NotTrue => Change::Delete {
                            key: stage.project_key(old_key.as_ref().unwrap_or(&row)),
                        },
                        // A filter column that was not sent is unchanged, so the row stays on
                        // the side of the filter it was on: an update of a row that is out
                        // is an update of nothing at the target.
                        Verdict::True | Verdict::Unsent => Change::Update {
                            old_key: old_key.map(|k| stage.project_key(&k)),
                            row: stage.project(&row),
                        },
                    }
                }
                Change::Delete { key } => Change::Delete {
                    key: stage.project_key(&key),
                },
                Change::Truncate => Change::Truncate,
            };
        }
        Some(change)
    }
}

/// Masked input columns by index, with their mask and where it was written.
type Masked<'a> = BTreeMap<usize, (&'a Mask, &'a str)>;

/// One spec's rules, read against the layout entering them.
struct StageRules<'a> {
    spec: &'a TransformSpec,
    input: &'a Arc<TableSchema>,
}

impl<'a> StageRules<'a> {
    /// The index of the input column `name` (`what` names the rule); refuses a column the table
    /// does not have.
    fn find(&self, name: &Placed<String>, what: &str) -> Result<usize, TransformError> {
        let input = self.input;
        let table = &input.name;
        input
            .columns
            .iter()
            .position(|c| c.name == name.value)
            .map_or_else(
                || {
                    refuse(
                        &name.place,
                        format!(
                            "{what} names column {:?}, which {table} does not have (it has {})",
                            name.value,
                            column_list(input)
                        ),
                        "use one of the table's column names, spelled exactly",
                    )
                },
                Ok,
            )
    }

    /// The masked columns; refuses a mask on a key column, a second mask, a hash mask without
    /// a key or on a user-defined type, and a fixed value that is not of the column's type.
    fn masks(&self, key: Option<&MaskKey>) -> Result<Masked<'a>, TransformError> {
        let input = self.input;
        let table = &input.name;
        let mut masked: Masked<'a> = BTreeMap::new();
        for (name, mask) in &self.spec.masks {
            let i = self.find(name, "a mask")?;
            let c = &input.columns[i];
            if c.key {
                return refuse(
                    &name.place,
                    format!("column {} is part of the key of {table}, and a key cannot be masked: targets apply changes by it and the checker compares by it", c.name),
                    "mask a column that is not part of the key",
                );
            }
            if masked.insert(i, (mask, &name.place)).is_some() {
                return refuse(
                    &name.place,
                    format!("column {} is masked twice", c.name),
                    "keep one mask per column",
                );
            }
            match mask {
                Mask::Hash if key.is_none() => {
                    return refuse(
                        &name.place,
                        format!("column {} is masked with a hash, but no hash key is set", c.name),
                        "set [masking] key = \"${CUTOVER_MASK_KEY}\" in the pipeline file and export the secret",
                    )
                }
                Mask::Hash if c.type_oid >= crate::verify::canonical::FIRST_USER_OID => {
                    return refuse(
                        &name.place,
                        format!("column {} has the user-defined type {}, which hash masks do not read yet", c.name, c.type_name),
                        "mask it with \"null\" or a fixed value, or exclude the column",
                    )
                }
                Mask::Value(v) if encode_text(c.type_oid, v).is_none() => {
                    return refuse(
                        &name.place,
                        format!(
                            "the mask value {v:?} is not a value of column {}'s type {}",
                            c.name,
                            type_label(c)
                        ),
                        "write a value of that type, or mask with \"null\" or \"hash\"",
                    )
                }
                _ => {}
            }
        }
        Ok(masked)
    }

    /// The filter bound to the input layout; refuses one that reads a masked column.
    fn filter(&self, masked: &Masked) -> Result<Option<predicate::Bound>, TransformError> {
        let input = self.input;
        Ok(match &self.spec.filter {
            None => None,
            Some(f) => {
                for col in f.value.columns() {
                    if let Some((_, _)) = input
                        .columns
                        .iter()
                        .position(|c| c.name == col)
                        .and_then(|i| masked.get(&i))
                    {
                        return refuse(
                            &f.place,
                            format!("the filter reads column {col:?}, which is masked"),
                            "filter on columns that are not masked (a filter on a masked column would reveal what the mask hides)",
                        );
                    }
                }
                Some(f.value.bind(input).map_err(|message| TransformError {
                    place: f.place.clone(),
                    message,
                    fix: "correct the filter (see docs/transforms.md for its grammar)".into(),
                })?)
            }
        })
    }

    /// Which input columns are kept; refuses leaving out a key column.
    fn selection(&self) -> Result<Vec<bool>, TransformError> {
        let (spec, input) = (self.spec, self.input);
        let table = &input.name;
        let mut keep: Vec<bool> = vec![true; input.columns.len()];
        if let Some(columns) = &spec.columns {
            keep = vec![false; input.columns.len()];
            for name in columns {
                keep[self.find(name, "columns")?] = true;
            }
        }
        for name in &spec.exclude_columns {
            keep[self.find(name, "exclude_columns")?] = false;
        }
        for (i, c) in input.columns.iter().enumerate() {
            if c.key && !keep[i] {
                let place = spec
                    .exclude_columns
                    .iter()
                    .find(|n| n.value == c.name)
                    .map_or(&spec.table.place, |n| &n.place);
                return refuse(
                    place,
                    format!(
                        "column {} is part of the key of {table} and cannot be left out",
                        c.name
                    ),
                    "keep every key column (rename it if the target calls it differently)",
                );
            }
        }
        Ok(keep)
    }

    /// Each input column's name after the renames; refuses an empty new name.
    fn renames(&self) -> Result<Vec<String>, TransformError> {
        let mut names: Vec<String> = self.input.columns.iter().map(|c| c.name.clone()).collect();
        for (old, new) in &self.spec.rename_columns {
            let i = self.find(old, "rename_columns")?;
            if new.is_empty() {
                return refuse(
                    &old.place,
                    "a column cannot be renamed to an empty name",
                    "give it a name",
                );
            }
            names[i] = new.clone();
        }
        Ok(names)
    }

    /// Where the output name of input column `c` was given: its rename, else the table's rules.
    fn name_place(&self, c: &Column) -> &'a str {
        let spec = self.spec;
        spec.rename_columns
            .iter()
            .find(|(o, _)| o.value == c.name)
            .map_or(spec.table.place.as_str(), |(o, _)| o.place.as_str())
    }

    /// An added column's values, type and type name; refuses a constant of a type constants
    /// cannot have or not of its type, and a template that cannot be read.
    fn derived(
        &self,
        add: &AddColumn,
        masked: &Masked,
    ) -> Result<(Output, u32, String), TransformError> {
        let name = &add.name;
        Ok(match &add.derived {
            Derived::Constant { value, type_name } => {
                let Some(type_oid) = type_by_name(type_name) else {
                    return refuse(
                        &name.place,
                        format!("the added column {:?} has type {type_name:?}, which constants cannot have", name.value),
                        "use one of text, bigint, integer, smallint, boolean, numeric, double precision, real, uuid, date, timestamp, timestamptz, jsonb",
                    );
                };
                let Some(bytes) = encode_text(type_oid, value) else {
                    return refuse(
                        &name.place,
                        format!("{value:?} is not a {type_name}"),
                        "write a value of the column's type",
                    );
                };
                (Output::Constant(bytes), type_oid, type_name.clone())
            }
            Derived::Template(text) => (
                Output::Template(self.template(text, name, masked)?),
                oid::TEXT,
                "text".to_string(),
            ),
        })
    }

    /// A template's text and column pieces; refuses a `{` without its `}`, an unknown column
    /// and a masked column.
    fn template(
        &self,
        text: &str,
        name: &Placed<String>,
        masked: &Masked,
    ) -> Result<Vec<Piece>, TransformError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return refuse(
                    &name.place,
                    format!("the template {text:?} has a {{ without its }}"),
                    "write column references as {column_name}",
                );
            };
            let col = Placed::new(rest[open + 1..open + close].to_string(), name.place.clone());
            let index = self.find(&col, "a template")?;
            if masked.contains_key(&index) {
                return refuse(
                    &name.place,
                    format!("the template reads column {:?}, which is masked", col.value),
                    "build derived columns from columns that are not masked",
                );
            }
            pieces.push(Piece::Column {
                index,
                type_oid: self.input.columns[index].type_oid,
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(pieces)
    }
}

/// Input column `c` (at `i`) as it leaves the stage, named `name`, and how its values are made
/// under its mask, if any.
fn kept_column(c: &Column, i: usize, name: &str, mask: Option<&(&Mask, &str)>) -> (Column, Output) {
    let mut col = c.clone();
    col.name = name.to_owned();
    let output = match mask {
        None => Output::Column(i),
        Some((Mask::Null, _)) => {
            col.nullable = true;
            col.default = None;
            Output::Null
        }
        Some((Mask::Hash, _)) => {
            col.type_oid = oid::TEXT;
            col.type_name = "text".into();
            col.type_modifier = -1;
            col.default = None;
            Output::Hash {
                index: i,
                type_oid: c.type_oid,
            }
        }
        Some((Mask::Value(v), _)) => {
            col.default = None;
            Output::Constant(encode_text(c.type_oid, v).expect("checked above"))
        }
    };
    (col, output)
}

impl Stage {
    fn compile(
        spec: &TransformSpec,
        input: &Arc<TableSchema>,
        key: Option<&MaskKey>,
    ) -> Result<Stage, TransformError> {
        let table = &input.name;
        let rules = StageRules { spec, input };
        let masked = rules.masks(key)?;
        let filter = rules.filter(&masked)?;
        let keep = rules.selection()?;
        let names = rules.renames()?;
        let mut columns = Vec::new();
        let mut out_cols: Vec<Column> = Vec::new();
        let mut key_flags = Vec::new();
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (i, c) in input.columns.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let (col, output) = kept_column(c, i, &names[i], masked.get(&i));
            let place = rules.name_place(c);
            if seen.insert(col.name.clone(), place).is_some() {
                return refuse(
                    place,
                    format!("two columns of {table} would be named {:?}", col.name),
                    "give each column its own name",
                );
            }
            key_flags.push(col.key);
            out_cols.push(col);
            columns.push(output);
        }
        for add in &spec.add_columns {
            let name = &add.name;
            if seen.insert(name.value.clone(), &name.place).is_some() || name.value.is_empty() {
                return refuse(
                    &name.place,
                    format!(
                        "the added column {:?} has the name of another column of {table} (or none)",
                        name.value
                    ),
                    "give the added column a name of its own",
                );
            }
            let (output, type_oid, type_name) = rules.derived(add, &masked)?;
            key_flags.push(false);
            out_cols.push(Column {
                name: name.value.clone(),
                type_oid,
                type_modifier: -1,
                type_name,
                nullable: true,
                key: false,
                default: None,
            });
            columns.push(output);
        }
        let name = match &spec.rename {
            Some(r) => r.value.clone(),
            None => input.name.clone(),
        };
        Ok(Stage {
            output: Arc::new(TableSchema {
                name,
                columns: out_cols,
            }),
            filter,
            columns,
            key: key_flags,
            hash_key: key.map(|k| k.0),
        })
    }

    fn project(&self, row: &Row) -> Row {
        Row(self.columns.iter().map(|o| self.value(o, &row.0)).collect())
    }

    fn project_key(&self, row: &Row) -> Row {
        Row(self
            .columns
            .iter()
            .zip(&self.key)
            .map(|(o, &key)| match (o, key) {
                (Output::Column(i), true) => row.0[*i].clone(),
                _ => Value::Null,
            })
            .collect())
    }

    fn value(&self, output: &Output, values: &[Value]) -> Value {
        match output {
            Output::Column(i) => values[*i].clone(),
            Output::Null => Value::Null,
            Output::Constant(b) => Value::Binary(b.clone()),
            Output::Hash { index, type_oid } => match &values[*index] {
                Value::Binary(b) => {
                    let mut canonical = Vec::with_capacity(b.len() + 8);
                    match datum::decode(*type_oid, b) {
                        Ok(d) => push_value(&mut canonical, &d, Precision::default()),
                        Err(_) => canonical.extend_from_slice(b),
                    }
                    let key = self
                        .hash_key
                        .expect("hash masks are compiled only with a key");
                    let hash = blake3::keyed_hash(&key, &canonical);
                    Value::Binary(Bytes::from(hash.to_hex().to_string()))
                }
                v => v.clone(),
            },
            Output::Template(pieces) => {
                let mut text = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => text.push_str(t),
                        Piece::Column { index, type_oid } => match &values[*index] {
                            Value::Null => return Value::Null,
                            Value::Unchanged => return Value::Unchanged,
                            Value::Binary(b) => {
                                match datum::decode(*type_oid, b).ok().and_then(|d| d.render()) {
                                    Some(t) => text.push_str(&t),
                                    None => text.push_str(&String::from_utf8_lossy(b)),
                                }
                            }
                        },
                    }
                }
                Value::Binary(Bytes::from(text))
            }
        }
    }
}

fn column_list(t: &TableSchema) -> String {
    t.columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn type_label(c: &Column) -> String {
    if c.type_name.is_empty() {
        format!("(OID {})", c.type_oid)
    } else {
        c.type_name.clone()
    }
}

/// The built-in types a constant may be declared with.
fn type_by_name(name: &str) -> Option<u32> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "text" => oid::TEXT,
        "bigint" | "int8" => oid::INT8,
        "integer" | "int" | "int4" => oid::INT4,
        "smallint" | "int2" => oid::INT2,
        "boolean" | "bool" => oid::BOOL,
        "numeric" => oid::NUMERIC,
        "double precision" | "float8" => oid::FLOAT8,
        "real" | "float4" => oid::FLOAT4,
        "uuid" => oid::UUID,
        "date" => oid::DATE,
        "timestamp" => oid::TIMESTAMP,
        "timestamptz" => oid::TIMESTAMPTZ,
        "jsonb" => oid::JSONB,
        _ => return None,
    })
}

/// Encodes `text` as a value of `type_oid` in its binary send format; `None` when the text is
/// not a value of that type or the type has no text encoding here.
pub fn encode_text(type_oid: u32, text: &str) -> Option<Bytes> {
    let t = text.trim();
    Some(match type_oid {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Bytes::from(text.to_string()),
        oid::BOOL => Bytes::from(vec![match t.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "on" | "1" => 1u8,
            "false" | "f" | "no" | "off" | "0" => 0,
            _ => return None,
        }]),
        oid::INT2 => Bytes::copy_from_slice(&t.parse::<i16>().ok()?.to_be_bytes()),
        oid::INT4 => Bytes::copy_from_slice(&t.parse::<i32>().ok()?.to_be_bytes()),
        oid::INT8 => Bytes::copy_from_slice(&t.parse::<i64>().ok()?.to_be_bytes()),
        oid::FLOAT4 => Bytes::copy_from_slice(&t.parse::<f32>().ok()?.to_be_bytes()),
        oid::FLOAT8 => Bytes::copy_from_slice(&t.parse::<f64>().ok()?.to_be_bytes()),
        oid::NUMERIC => crate::encode::numeric(t).ok()?,
        oid::UUID => Bytes::copy_from_slice(&crate::verify::rendered::parse_uuid(t)?),
        oid::DATE => Bytes::copy_from_slice(
            &i32::try_from(crate::verify::rendered::parse_date(t)?)
                .ok()?
                .to_be_bytes(),
        ),
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let micros = predicate::parse_instant_text(t, type_oid == oid::TIMESTAMPTZ)?;
            Bytes::copy_from_slice(&micros.to_be_bytes())
        }
        oid::JSON => {
            serde_json::from_str::<serde_json::Value>(t).ok()?;
            Bytes::from(text.to_string())
        }
        oid::JSONB => {
            serde_json::from_str::<serde_json::Value>(t).ok()?;
            let mut b = vec![1u8];
            b.extend_from_slice(text.as_bytes());
            Bytes::from(b)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
