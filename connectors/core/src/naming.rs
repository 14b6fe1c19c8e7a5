//! Name templates for per-table destinations: Kafka topics, NATS subjects, MongoDB collections.
//!
//! A template is text with placeholders: `{pipeline}`, `{schema}` and `{table}`, for example
//! `{pipeline}.{schema}.{table}`. Templates are checked when the pipeline file is loaded, so an
//! unknown placeholder is refused before anything starts.

use crate::schema::TableName;

/// A parsed destination-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    text: String,
    /// Tables sent to a destination of their own (`route` transform rules), by the table's
    /// name as the sink sees it.
    routes: std::collections::BTreeMap<TableName, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Pipeline,
    Schema,
    Table,
}

/// The placeholders a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{pipeline}, {schema}, {table}";

impl Template {
    /// Parses `text`; the error says what is wrong and how to fix it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| {
                format!(
                    "{text:?} has a {{ without its }}. Fix: use the placeholders {PLACEHOLDERS}."
                )
            })?;
            parts.push(match &after[..close] {
                "pipeline" => Part::Pipeline,
                "schema" => Part::Schema,
                "table" => Part::Table,
                other => {
                    return Err(format!(
                        "{text:?} uses the unknown placeholder {{{other}}}. Fix: use only {PLACEHOLDERS}."
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!(
                "{text:?} has a }} without its {{. Fix: use the placeholders {PLACEHOLDERS}."
            ));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("the template is empty. Fix: e.g. \"{pipeline}.{schema}.{table}\".".into());
        }
        Ok(Template {
            parts,
            text: text.to_string(),
            routes: Default::default(),
        })
    }

    /// The template with some tables routed to fixed destinations, used as written.
    pub fn with_routes(mut self, routes: std::collections::BTreeMap<TableName, String>) -> Self {
        self.routes = routes;
        self
    }

    /// The name for one table. `clean` rewrites each substituted name part (a schema or table
    /// name may hold characters the destination does not allow); literal text is kept as written.
    pub fn render(
        &self,
        pipeline: &str,
        table: &TableName,
        clean: &dyn Fn(&str) -> String,
    ) -> String {
        if let Some(route) = self.routes.get(table) {
            return route.clone();
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Pipeline => out.push_str(&clean(pipeline)),
                Part::Schema => out.push_str(&clean(&table.schema)),
                Part::Table => out.push_str(&clean(&table.name)),
            }
        }
        out
    }

    /// Whether the name depends on the table (otherwise every table goes to one destination).
    pub fn per_table(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Table))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Replaces every character `allowed` refuses with `_`.
pub fn replace_disallowed(name: &str, allowed: impl Fn(char) -> bool) -> String {
    name.chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_refuse_unknown_placeholders() {
        let t = Template::parse("cdc.{pipeline}.{schema}.{table}").unwrap();
        let name = TableName::new("public", "order items");
        let clean = |s: &str| replace_disallowed(s, |c| c.is_ascii_alphanumeric());
        assert_eq!(
            t.render("shop", &name, &clean),
            "cdc.shop.public.order_items"
        );
        assert!(t.per_table());
        assert!(!Template::parse("all").unwrap().per_table());
        let e = Template::parse("{prefix}.{table}").unwrap_err();
        assert!(e.contains("{prefix}") && e.contains("Fix"), "{e}");
        assert!(Template::parse("{table").is_err());
        assert!(Template::parse("table}").is_err());
        assert!(Template::parse("").is_err());
        let routed = t.with_routes([(name.clone(), "orders-v2".to_string())].into());
        assert_eq!(routed.render("shop", &name, &clean), "orders-v2");
        assert_eq!(
            routed.render("shop", &TableName::new("public", "x"), &clean),
            "cdc.shop.public.x"
        );
    }
}
