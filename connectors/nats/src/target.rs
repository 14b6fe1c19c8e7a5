//! The NATS JetStream sink as a target plug-in: its part of a `[[sink]]` table and what
//! cutover's commands need of it.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::envelope::EnvelopeFormat;
use cutover_core::verify::{Precision, TableSide};
use cutover_core::{
    BuildContext, Result, Sink, SinkState, TableSchema, Target, TargetConfig, TargetContext,
};
use serde::Deserialize;

use crate::verify::NatsTableSide;
use crate::{check_stream_name, NatsAuth, NatsSinkOptions, NatsTransport};

/// `kind = "nats"`: NATS JetStream subjects, one per table, in one stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, `nats://host:4222`, or `${ENV_VAR}`.
    pub url: String,
    /// Subject per table; placeholders {pipeline}, {schema}, {table} (default
    /// `{pipeline}.{schema}.{table}`). Dots, spaces, `*` and `>` in names become `_`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// JetStream stream holding the subjects, created if absent (default `cutover_<pipeline>`).
    pub stream: Option<String>,
    /// How long the server remembers message ids, so replays after a restart are dropped
    /// (seconds, default 120).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_s: u64,
    /// `cutover` (default) or `debezium`.
    #[serde(default)]
    pub format: EnvelopeFormat,
    /// A local file (JSON lines) where messages the server refuses for good (over its
    /// `max_payload` or the stream's maximum message size) are parked while the rest flows on;
    /// see `cutover dlq`. Without it such a message stops the sink.
    pub dead_letter_file: Option<String>,
    /// Require TLS (also implied by a `tls://` URL and by any `tls_*` file below).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate (default: the system's).
    pub tls_ca_file: Option<String>,
    /// PEM client certificate, for a server that verifies clients (`tls_key_file` with it).
    pub tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<String>,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes it.
    pub credentials_file: Option<String>,
    /// An NKey seed (`SU...`), best as `${file:...}` or `${ENV_VAR}`; never printed.
    pub nkey_seed: Option<String>,
    /// An authentication token, best as `${file:...}` or `${ENV_VAR}`; never printed.
    pub token: Option<String>,
}

fn default_subject() -> String {
    "{pipeline}.{schema}.{table}".into()
}
fn default_duplicate_window() -> u64 {
    120
}

impl TargetConfig for NatsConfig {
    const KIND: &'static str = "nats";

    fn build(self, ctx: &BuildContext<'_>) -> std::result::Result<Arc<dyn Target>, String> {
        let stream = self
            .stream
            .clone()
            .unwrap_or_else(|| format!("cutover_{}", ctx.pipeline));
        check_stream_name(&stream).map_err(|e| ctx.fail("stream", e))?;
        Ok(Arc::new(NatsSinkOptions {
            name: ctx.name.to_string(),
            pipeline: ctx.pipeline.to_string(),
            url: ctx.expand("url", &self.url)?,
            subject: ctx.template("subject", &self.subject)?,
            stream,
            duplicate_window: Duration::from_secs(self.duplicate_window_s.max(1)),
            format: self.format,
            source_database: String::new(),
            dead_letter_file: match &self.dead_letter_file {
                Some(p) => Some(ctx.path("dead_letter_file", p)?),
                None => None,
            },
            reverse: false,
            auth: NatsAuth {
                tls: self.tls,
                ca_file: match &self.tls_ca_file {
                    Some(p) => Some(ctx.existing_file("tls_ca_file", p)?),
                    None => None,
                },
                client_cert: match (&self.tls_cert_file, &self.tls_key_file) {
                    (Some(c), Some(k)) => Some((
                        ctx.existing_file("tls_cert_file", c)?,
                        ctx.existing_file("tls_key_file", k)?,
                    )),
                    (None, None) => None,
                    _ => return Err(ctx.fail(
                        "tls_cert_file",
                        "tls_cert_file and tls_key_file go together. Fix: give both, or neither."
                            .to_string(),
                    )),
                },
                credentials_file: match &self.credentials_file {
                    Some(p) => Some(ctx.existing_file("credentials_file", p)?),
                    None => None,
                },
                nkey_seed: match &self.nkey_seed {
                    Some(v) => Some(ctx.expand("nkey_seed", v)?),
                    None => None,
                },
                token: match &self.token {
                    Some(v) => Some(ctx.expand("token", v)?),
                    None => None,
                },
            },
        }))
    }
}

/// A file the sink reads when it connects, resolved and checked when the pipeline is read.
#[async_trait]
impl Target for NatsSinkOptions {
    fn kind(&self) -> &'static str {
        NatsConfig::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn security(&self) -> Option<String> {
        Some(self.auth.describe(&self.url))
    }

    async fn connect(&self, ctx: &TargetContext) -> Result<Box<dyn Sink>> {
        let mut options = self.clone();
        options.source_database = ctx.source_database.clone();
        options.reverse = ctx.reverse;
        Ok(Box::new(NatsTransport::connect(options).await?))
    }

    async fn saved_state(&self, ctx: &TargetContext) -> Result<SinkState> {
        NatsTransport::saved_state(&NatsSinkOptions {
            reverse: ctx.reverse,
            ..self.clone()
        })
        .await
    }

    async fn forget_state(&self, ctx: &TargetContext) -> Result<String> {
        NatsTransport::forget_state(&NatsSinkOptions {
            reverse: ctx.reverse,
            ..self.clone()
        })
        .await?;
        Ok("saved progress deleted (the stream is left as it is)".into())
    }

    fn dead_letter_file(&self) -> Option<&std::path::Path> {
        self.dead_letter_file.as_deref()
    }

    async fn replay_letters(&self) -> Result<(u64, u64)> {
        crate::replay_dead_letters(self).await
    }

    async fn table_side(&self, table: Arc<TableSchema>) -> Result<(Box<dyn TableSide>, Precision)> {
        Ok((
            Box::new(NatsTableSide::open(self, table).await?),
            Precision::of_envelope(self.format),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
