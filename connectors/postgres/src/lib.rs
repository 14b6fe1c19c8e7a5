//! PostgreSQL for cutover: the source (publication and slot management, snapshot by binary COPY
//! under the slot's exported snapshot, pgoutput streaming over our own replication connection
//! and decoder, with what each server version can do decided in [`version`]) and the sink (set-based apply of whole transactions, checkpoint in the same
//! target transaction).

pub mod catalog;
pub mod conn;
pub mod copy_binary;
pub mod dead_letters;
pub mod error;
pub mod partitions;
pub mod pgoutput;
pub mod preflight;
pub mod replication;
pub mod sequences;
pub mod sink;
pub mod source;
pub mod target;
pub mod text_values;
pub mod tls;
pub mod verify;
pub mod version;

pub use conn::PgEndpoint;
pub use sink::{PgSink, PgSinkOptions};
pub use source::{PgSource, PgSourceOptions, PgStream, SlotStart};
