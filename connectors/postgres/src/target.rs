//! The PostgreSQL sink as a target plug-in: its part of a `[[sink]]` table and what cutover's
//! commands need of it. Operations only a PostgreSQL target has (sequences, repair, its dead
//! letters inside the target) reach it through [`PgTarget`].

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cutover_core::verify::{Precision, TableSide};
use cutover_core::{
    BuildContext, Result, Sink, SinkState, TableSchema, Target, TargetConfig, TargetContext,
};
use serde::Deserialize;

use crate::verify::PgTableSide;
use crate::{PgEndpoint, PgSink, PgSinkOptions};

/// `kind = "postgres"`: a PostgreSQL database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgConfig {
    /// Connection string, or `${ENV_VAR}`.
    pub url: String,
    /// Create missing target tables from the source's definitions (default true).
    #[serde(default = "yes")]
    pub create_tables: bool,
}

fn yes() -> bool {
    true
}

/// A configured PostgreSQL target.
#[derive(Clone)]
pub struct PgTarget {
    pub name: String,
    /// The connection string (may hold a password: never printed).
    pub url: String,
    pub create_tables: bool,
}

impl TargetConfig for PgConfig {
    const KIND: &'static str = "postgres";

    fn check_route(_route: &str) -> std::result::Result<(), String> {
        Err("route applies to Kafka, NATS and MongoDB sinks. Fix: use rename = \"schema.table\" to write the table under another name in PostgreSQL.".into())
    }

    fn build(self, ctx: &BuildContext<'_>) -> std::result::Result<Arc<dyn Target>, String> {
        Ok(Arc::new(PgTarget {
            name: ctx.name.to_string(),
            url: ctx.expand("url", &self.url)?,
            create_tables: self.create_tables,
        }))
    }
}

impl PgTarget {
    /// The target's endpoint.
    pub fn endpoint(&self) -> Result<PgEndpoint> {
        PgEndpoint::parse(&self.url, "target")
    }

    /// Connects the PostgreSQL sink itself (for the operations only it has).
    pub async fn connect_sink(&self, ctx: &TargetContext) -> Result<PgSink> {
        PgSink::connect(
            self.endpoint()?,
            PgSinkOptions {
                apply_schema_changes: ctx.apply_schema_changes,
                name: self.name.clone(),
                pipeline: ctx.pipeline.clone(),
                create_tables: self.create_tables,
                batch_bytes: ctx.batch_bytes,
                adopt_at: ctx.adopt_at,
                applying: ctx.applying,
            },
        )
        .await
    }
}

#[async_trait]
impl Target for PgTarget {
    fn kind(&self) -> &'static str {
        PgConfig::KIND
    }

    fn fed_by_apply(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self, ctx: &TargetContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(self.connect_sink(ctx).await?))
    }

    async fn saved_state(&self, ctx: &TargetContext) -> Result<SinkState> {
        self.connect_sink(ctx).await?.read_checkpoint().await
    }

    async fn forget_state(&self, ctx: &TargetContext) -> Result<String> {
        self.connect_sink(ctx).await?.forget_state().await?;
        Ok("checkpoints and copy records deleted".into())
    }

    /// Marks every copied table to be copied again; each copy replaces the table's rows in one
    /// transaction, so the target keeps serving its rows meanwhile.
    async fn prepare_recopy(&self, ctx: &TargetContext) -> Result<String> {
        let marked = self.connect_sink(ctx).await?.mark_for_recopy().await?;
        Ok(format!("{marked} table(s) marked to be copied again; each copy replaces the table's rows in one transaction"))
    }

    async fn table_side(&self, table: Arc<TableSchema>) -> Result<(Box<dyn TableSide>, Precision)> {
        let precision = Precision {
            user_types_as_text: true,
            ..Precision::default()
        };
        Ok((
            Box::new(PgTableSide::open(&self.endpoint()?, table, precision).await?),
            precision,
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
