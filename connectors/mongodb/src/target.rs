//! The MongoDB sink as a target plug-in: its part of a `[[sink]]` table and what cutover's
//! commands need of it.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cutover_core::verify::{Precision, TableSide};
use cutover_core::{
    BuildContext, Result, Sink, SinkState, TableName, TableSchema, Target, TargetConfig,
    TargetContext,
};
use serde::Deserialize;

use crate::verify::MongoTableSide;
use crate::{check_collection_name, MongoSink, MongoSinkOptions};

/// `kind = "mongodb"`: MongoDB collections, one per table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string, `mongodb://host:27017`, or `${ENV_VAR}`.
    pub url: String,
    /// Database the collections are written to.
    pub database: String,
    /// Collection per table; placeholders {pipeline}, {schema}, {table} (default
    /// `{schema}.{table}`).
    #[serde(default = "default_collection")]
    pub collection: String,
    /// A local file (JSON lines) where writes the server refuses for good (a collection
    /// validator, a document over 16 MiB) are parked while the rest flows on; see `cutover
    /// dlq`. Without it such a write stops the sink.
    pub dead_letter_file: Option<String>,
}

fn default_collection() -> String {
    "{schema}.{table}".into()
}

impl TargetConfig for MongoConfig {
    const KIND: &'static str = "mongodb";

    fn build(self, ctx: &BuildContext<'_>) -> std::result::Result<Arc<dyn Target>, String> {
        let collection = ctx.template("collection", &self.collection)?;
        // The literal parts must make a name MongoDB accepts for any table.
        let sample = collection.render(ctx.pipeline, &TableName::new("s", "t"), &|s| s.to_string());
        check_collection_name(&sample).map_err(|e| ctx.fail("collection", e))?;
        if self.database.is_empty()
            || self
                .database
                .contains(['/', '\\', '.', ' ', '"', '$', '\0'])
        {
            return Err(ctx.fail(
                "database",
                format!(
                    "{:?} is not a database name MongoDB accepts. Fix: use letters, digits, _ or -.",
                    self.database
                ),
            ));
        }
        Ok(Arc::new(MongoSinkOptions {
            name: ctx.name.to_string(),
            pipeline: ctx.pipeline.to_string(),
            url: ctx.expand("url", &self.url)?,
            database: self.database,
            collection,
            dead_letter_file: match &self.dead_letter_file {
                Some(p) => Some(ctx.path("dead_letter_file", p)?),
                None => None,
            },
            reverse: false,
            adopt_at: None,
            applying: false,
        }))
    }
}

impl MongoSinkOptions {
    /// These options for the direction `ctx` streams in.
    fn directed(&self, ctx: &TargetContext) -> MongoSinkOptions {
        MongoSinkOptions {
            // `cutover apply` keeps one state per topic partition, under the partition's name.
            pipeline: ctx.pipeline.clone(),
            reverse: ctx.reverse,
            adopt_at: ctx.adopt_at,
            applying: ctx.applying,
            ..self.clone()
        }
    }
}

/// What a MongoDB URI asks of TLS, read from its options (`tls`/`ssl`, `tlsCAFile`,
/// `tlsCertificateKeyFile`, `tlsAllowInvalidHostnames`); `mongodb+srv` turns TLS on. Never the
/// credentials.
fn uri_security(url: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let option = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    };
    let on = |v: Option<&str>| v.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let tls = on(option("tls")) || on(option("ssl")) || url.starts_with("mongodb+srv://");
    if !tls {
        return "not encrypted (add tls=true to the URI)".into();
    }
    let mut parts = vec![
        if on(option("tlsAllowInvalidHostnames")) || on(option("tlsInsecure")) {
            "TLS (host name NOT checked)".to_string()
        } else {
            "TLS (certificate and host name checked)".to_string()
        },
    ];
    if let Some(ca) = option("tlsCAFile") {
        parts.push(format!("CA {ca}"));
    }
    if let Some(cert) = option("tlsCertificateKeyFile") {
        parts.push(format!("client certificate {cert}"));
    }
    parts.join(", ")
}

#[async_trait]
impl Target for MongoSinkOptions {
    fn kind(&self) -> &'static str {
        MongoConfig::KIND
    }

    fn fed_by_apply(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn security(&self) -> Option<String> {
        Some(uri_security(&self.url))
    }

    async fn connect(&self, ctx: &TargetContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MongoSink::connect(self.directed(ctx)).await?))
    }

    async fn saved_state(&self, ctx: &TargetContext) -> Result<SinkState> {
        MongoSink::saved_state(&self.directed(ctx)).await
    }

    async fn forget_state(&self, ctx: &TargetContext) -> Result<String> {
        MongoSink::forget_state(&self.directed(ctx)).await?;
        Ok("saved progress deleted (the collections are left as they are)".into())
    }

    fn dead_letter_file(&self) -> Option<&std::path::Path> {
        self.dead_letter_file.as_deref()
    }

    async fn replay_letters(&self) -> Result<(u64, u64)> {
        crate::replay_dead_letters(self).await
    }

    async fn table_side(&self, table: Arc<TableSchema>) -> Result<(Box<dyn TableSide>, Precision)> {
        Ok((
            Box::new(MongoTableSide::open(self, table).await?),
            MongoTableSide::precision(),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_security_reads_the_tls_options_and_never_the_password() {
        assert!(
            uri_security("mongodb://u:pw@h:1/?directConnection=true").starts_with("not encrypted")
        );
        let s = uri_security(
            "mongodb://u:secret-pw@h:1/?tls=true&tlsCAFile=/ca.pem&tlsCertificateKeyFile=/c.pem",
        );
        assert!(
            s.contains("host name checked") && s.contains("CA /ca.pem") && s.contains("/c.pem"),
            "{s}"
        );
        assert!(!s.contains("secret-pw"), "{s}");
        assert!(uri_security("mongodb+srv://h/").starts_with("TLS"));
    }
}
