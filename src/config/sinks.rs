//! `[[sink]]` tables and transform rules: each sink resolved into one [`SinkSettings`] (its
//! target built by its kind, its rules, truncate and rate limits).

use std::collections::BTreeMap;

use cutover_core::transform::{
    AddColumn, Derived, Mask, Placed, Predicate, SinkRules, TransformSpec,
};
use cutover_core::{BuildContext, TableName};
use toml::Spanned;

use super::file::{PipelineFile, SinkCommon, SinkRulesText, TransformConfig};
use super::text::{expand, place_at, sink_error, toml_error};
use super::{ConfigError, ReadText, SinkSettings};
use crate::targets;

/// The pipeline's own `[[transform]]` rules; a route there is refused (it belongs to a sink).
pub(super) fn pipeline_rules(
    file: &PipelineFile,
    at: &ReadText<'_>,
) -> Result<Vec<TransformSpec>, ConfigError> {
    let specs = transform_specs(at.origin, at.text, &file.transforms, "transform")?;
    if let Some(spec) = specs.iter().find(|s| s.route.is_some()) {
        return Err(ConfigError(format!(
            "{}: route belongs to a sink's rules. Fix: move it to a [[sink.transform]] of the sink it is for.",
            spec.route.as_ref().map_or("", |r| r.place.as_str())
        )));
    }
    Ok(specs)
}

/// Every `[[sink]]` table, in the file's order, resolved: the keys every sink has, its kind's
/// own keys built into a target, and its transform rules with their routes.
pub(super) fn sinks(
    file: &PipelineFile,
    at: &ReadText<'_>,
) -> Result<Vec<SinkSettings>, ConfigError> {
    let rules: SinkRulesText =
        toml::from_str(at.text).map_err(|e| toml_error(at.origin, at.text, &e))?;
    let parsed = split_sink_keys(file, at)?;
    let mut sinks = Vec::with_capacity(parsed.len());
    for (i, (common, kind, own, table)) in parsed.iter().enumerate() {
        let name = &common.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(at.bad(
                &format!("sink[{i}].name"),
                format!("{name:?} is not a valid sink name. Fix: use letters, digits, - or _."),
            ));
        }
        if parsed[..i].iter().any(|(o, ..)| &o.name == name) {
            return Err(at.bad(
                &format!("sink[{i}].name"),
                format!("{name:?} is used by two sinks. Fix: give each sink its own name."),
            ));
        }
        let specs = transform_specs(
            at.origin,
            at.text,
            &rules.sinks[i].transform,
            &format!("sink[{i}].transform"),
        )?;
        let routes = routes(&specs, kind)?;
        let key = |field: &str| format!("{}: sink[{i}].{field}", at.origin);
        let expand_key =
            |value: &str, field: &str| expand(value, &key(field), at.env).map_err(|e| e.0);
        let ctx = BuildContext {
            pipeline: &file.name,
            name,
            base_dir: &at.base_dir,
            routes: &routes,
            place: &key,
            expand: &expand_key,
        };
        let target = kind.build(own.clone(), &ctx).map_err(|e| match e {
            targets::BuildError::Keys(message) => {
                sink_error(at.origin, at.text, i, table, &message)
            }
            targets::BuildError::Invalid(message) => ConfigError(message),
        })?;
        sinks.push(SinkSettings {
            target,
            truncate: common.truncate,
            rules: SinkRules {
                include: common.tables.clone(),
                specs,
            },
            rates: common.rate_limits(),
        });
    }
    Ok(sinks)
}

/// A `[[sink]]` table split into the keys every sink has, its kind, and the kind's own keys.
type SinkKeys<'f> = (
    SinkCommon,
    &'static targets::Kind,
    toml::Table,
    &'f BTreeMap<String, Spanned<toml::Value>>,
);

/// Each `[[sink]]` table's common keys, its kind, and the kind's own keys.
fn split_sink_keys<'f>(
    file: &'f PipelineFile,
    at: &ReadText<'_>,
) -> Result<Vec<SinkKeys<'f>>, ConfigError> {
    let mut parsed = Vec::with_capacity(file.sinks.len());
    for (i, table) in file.sinks.iter().enumerate() {
        let mut own = toml::Table::new();
        let mut common = toml::Table::new();
        for (key, value) in table {
            let keys = if SinkCommon::KEYS.contains(&key.as_str()) {
                &mut common
            } else {
                &mut own
            };
            keys.insert(key.clone(), value.get_ref().clone());
        }
        let common: SinkCommon = toml::Value::Table(common)
            .try_into()
            .map_err(|e: toml::de::Error| sink_error(at.origin, at.text, i, table, e.message()))?;
        let kind = targets::find(&common.kind)
            .map_err(|e| sink_error(at.origin, at.text, i, table, &e))?;
        parsed.push((common, kind, own, table));
    }
    Ok(parsed)
}

/// The destinations a sink's rules route tables to, by output table name; each checked by the
/// sink's kind.
fn routes(
    specs: &[TransformSpec],
    kind: &targets::Kind,
) -> Result<BTreeMap<TableName, String>, ConfigError> {
    let mut routes = BTreeMap::new();
    for spec in specs {
        if let Some(route) = &spec.route {
            if route.value.is_empty() || route.value.contains(['{', '}']) {
                return Err(ConfigError(format!(
                    "{}: route {:?} must be a destination name, without placeholders. Fix: write the topic, subject or collection name itself.",
                    route.place, route.value
                )));
            }
            kind.check_route(&route.value)
                .map_err(|e| ConfigError(format!("{}: {e}", route.place)))?;
            let name = spec.rename.as_ref().map_or(&spec.table.value, |r| &r.value);
            routes.insert(name.clone(), route.value.clone());
        }
    }
    Ok(routes)
}

/// Turns `[[transform]]` tables into rule specs, each name and value with its place in the
/// file. Mistakes that need no database (a filter that does not parse, two rules for one
/// table, an unknown mask) are refused here; the rest when the rules meet the tables.
pub(super) fn transform_specs(
    origin: &str,
    text: &str,
    configs: &[TransformConfig],
    key: &str,
) -> Result<Vec<TransformSpec>, ConfigError> {
    let mut specs: Vec<TransformSpec> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let rule = Rule {
            origin,
            text,
            at: format!("{key}[{i}]"),
        };
        let spec = rule.spec(c)?;
        if let Some(other) = specs.iter().find(|o| o.table.value == spec.table.value) {
            return Err(ConfigError(format!(
                "{}: table {} already has rules at {}. Fix: put all of a table's rules in one [[transform]].",
                spec.table.place, spec.table.value, other.table.place
            )));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// One `[[transform]]` table being read: where it is, for the places of its values.
struct Rule<'a> {
    origin: &'a str,
    text: &'a str,
    /// `transform[i]` or `sink[j].transform[i]`.
    at: String,
}

impl Rule<'_> {
    /// `key[i].field`.
    fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.at)
    }

    /// A value with its place: file, line, column and key.
    fn placed(&self, s: &Spanned<String>, path: String) -> Placed<String> {
        Placed::new(
            s.get_ref().clone(),
            format!(
                "{} ({path})",
                place_at(self.origin, self.text, s.span().start)
            ),
        )
    }

    /// The rule's spec.
    fn spec(&self, c: &TransformConfig) -> Result<TransformSpec, ConfigError> {
        let table = self.placed(&c.table, self.at("table"));
        if table.value.is_empty() || table.value.contains('*') {
            return Err(ConfigError(format!(
                "{}: {:?} is not one table. Fix: name one table, as schema.table.",
                table.place, table.value
            )));
        }
        let mut spec =
            TransformSpec::new(Placed::new(table_name(&table.value), table.place.clone()));
        spec.exclude = c.exclude;
        spec.columns = c.columns.as_ref().map(|cols| {
            cols.iter()
                .enumerate()
                .map(|(j, n)| self.placed(n, self.at(&format!("columns[{j}]"))))
                .collect()
        });
        spec.exclude_columns = c
            .exclude_columns
            .iter()
            .enumerate()
            .map(|(j, n)| self.placed(n, self.at(&format!("exclude_columns[{j}]"))))
            .collect();
        spec.rename = c.rename.as_ref().map(|r| {
            let p = self.placed(r, self.at("rename"));
            let name = if r.get_ref().contains('.') {
                table_name(r.get_ref())
            } else {
                TableName::new(spec.table.value.schema.clone(), r.get_ref().clone())
            };
            Placed::new(name, p.place)
        });
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &c.rename_columns {
            let p = self.placed(new, self.at(&format!("rename_columns.{old}")));
            if let Some(first) = targets.insert(new.get_ref(), old) {
                return Err(ConfigError(format!(
                "{}: columns {first} and {old} are both renamed to {:?}. Fix: give each column its own name.",
                p.place,
                new.get_ref()
            )));
            }
            spec.rename_columns
                .push((Placed::new(old.clone(), p.place), new.get_ref().clone()));
        }
        self.masks(c, &mut spec)?;
        self.added_columns(c, &mut spec)?;
        if let Some(f) = &c.filter {
            let p = self.placed(f, self.at("filter"));
            let predicate = Predicate::parse(f.get_ref()).map_err(|e| {
            ConfigError(format!(
                "{}: the filter {:?} does not parse: {e}. Fix: write conditions such as tenant_id = 42 AND status IN ('active', 'trial') (see docs/transforms.md).",
                p.place,
                f.get_ref()
            ))
        })?;
            spec.filter = Some(Placed::new(predicate, p.place));
        }
        spec.route = c.route.as_ref().map(|r| self.placed(r, self.at("route")));
        Ok(spec)
    }

    /// `mask` and `mask_values`.
    fn masks(&self, c: &TransformConfig, spec: &mut TransformSpec) -> Result<(), ConfigError> {
        for (column, how) in &c.mask {
            let p = self.placed(how, self.at(&format!("mask.{column}")));
            let mask = match how.get_ref().as_str() {
            "null" => Mask::Null,
            "hash" => Mask::Hash,
            other => {
                return Err(ConfigError(format!(
                    "{}: {other:?} is not a mask. Fix: write \"null\" or \"hash\", or put a fixed value in mask_values.",
                    p.place
                )))
            }
        };
            spec.masks
                .push((Placed::new(column.clone(), p.place), mask));
        }
        for (column, value) in &c.mask_values {
            let p = self.placed(value, self.at(&format!("mask_values.{column}")));
            spec.masks.push((
                Placed::new(column.clone(), p.place),
                Mask::Value(value.get_ref().clone()),
            ));
        }
        Ok(())
    }

    /// `add_columns`: each a constant or a template.
    fn added_columns(
        &self,
        c: &TransformConfig,
        spec: &mut TransformSpec,
    ) -> Result<(), ConfigError> {
        for (j, add) in c.add_columns.iter().enumerate() {
            let place = format!(
                "{} ({})",
                place_at(self.origin, self.text, add.span().start),
                self.at(&format!("add_columns[{j}]"))
            );
            let a = add.get_ref();
            let derived = match (&a.value, &a.template) {
            (Some(value), None) => Derived::Constant {
                value: value.clone(),
                type_name: a.type_name.clone().unwrap_or_else(|| "text".into()),
            },
            (None, Some(template)) if a.type_name.is_none() => Derived::Template(template.clone()),
            _ => {
                return Err(ConfigError(format!(
                    "{place}: an added column has either value (and optionally type) or template. Fix: e.g. {{ name = \"origin\", value = \"legacy\" }} or {{ name = \"full_name\", template = \"{{first}} {{last}}\" }}."
                )))
            }
        };
            spec.add_columns.push(AddColumn {
                name: Placed::new(a.name.clone(), place),
                derived,
            });
        }
        Ok(())
    }
}

/// `schema.table`, or `table` in `public`.
fn table_name(text: &str) -> TableName {
    match text.split_once('.') {
        Some((schema, name)) => TableName::new(schema, name),
        None => TableName::new("public", text),
    }
}
