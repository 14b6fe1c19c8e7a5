//! Partitions attached to a replicated partitioned table since its root was copied: their rows
//! are written to every sink before streaming resumes (see `cutover_postgres::partitions`).

use cutover_core::{
    Change, Checkpoint, ConnectorError, Lsn, Result, Row, Sink, SinkState, StreamEvent,
};
use cutover_postgres::PgSource;
use tokio::sync::mpsc;

use super::transaction_at;
use crate::config::Pipeline;

/// Writes the rows of partitions attached since their root was copied (see
/// `cutover_postgres::partitions`) to every sink, as inserts in transactions at the sink's own
/// checkpoint (so the checkpoint does not move), chunk by chunk, then records them as copied.
/// Streaming then replays the changes made to those rows since the sink's checkpoint.
/// Returns the roots that took rows this way (not as changes: the switch's final check must
/// compare them whole).
pub async fn merge_partitions(
    source: &PgSource,
    sinks: &mut [Box<dyn Sink>],
    states: &[SinkState],
    cfg: &Pipeline,
) -> Result<Vec<cutover_core::TableName>> {
    let (merge, record) = source.partition_plan().await?;
    let mut merged = Vec::new();
    for (root, partition) in &merge {
        let Some(table) = source.tables().iter().find(|t| &t.schema.name == root) else {
            continue;
        };
        tracing::info!(%root, %partition, "copying the rows a partition held when it was attached");
        let (tx, mut rx) = mpsc::channel::<Vec<Row>>(4);
        let read = source.copy_partition(table, partition, cfg.chunk_bytes, tx);
        let write = async {
            let mut rows_total = 0u64;
            while let Some(rows) = rx.recv().await {
                for (sink, state) in sinks.iter_mut().zip(states) {
                    let at = state.checkpoint.unwrap_or_else(|| {
                        // Never streamed: the oldest copy's position, which every table's own
                        // snapshot position is at or past.
                        let lsn = state
                            .copied_tables
                            .values()
                            .min()
                            .copied()
                            .unwrap_or(Lsn::ZERO);
                        Checkpoint {
                            commit_lsn: lsn,
                            end_lsn: lsn,
                        }
                    });
                    let inserts = rows
                        .iter()
                        .enumerate()
                        .map(|(n, row)| {
                            StreamEvent::Change(cutover_core::ChangeEvent {
                                position: cutover_core::Position {
                                    commit_lsn: at.commit_lsn,
                                    ordinal: n as u32,
                                },
                                table: table.schema.clone(),
                                change: Change::Insert { row: row.clone() },
                            })
                        })
                        .collect();
                    sink.apply_all(transaction_at(at, inserts)).await?;
                    sink.seal().await?;
                }
                rows_total += rows.len() as u64;
            }
            Ok::<u64, ConnectorError>(rows_total)
        };
        let (read, write) = tokio::join!(read, write);
        let rows = write?;
        read?;
        merged.push(root.clone());
        tracing::info!(%root, %partition, rows, "partition rows copied; its later changes follow from the stream");
    }
    if let Err(e) = source.record_partitions(&record).await {
        // Without the record, partitions attached later cannot be told apart: say so.
        tracing::warn!(error = %e, "cannot record the partitions of the partitioned tables on the publication; rows of partitions attached later will not be copied (make cutover's user own the publication)");
    }
    Ok(merged)
}
