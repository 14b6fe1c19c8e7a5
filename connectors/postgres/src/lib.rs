//! PostgreSQL for cutover: the source (publication and slot management, snapshot by binary COPY
//! under the slot's exported snapshot, pgoutput streaming through `pgwire-replication` with our
//! own decoder) and the sink (set-based apply of whole transactions, checkpoint in the same
//! target transaction).

pub mod catalog;
pub mod conn;
pub mod copy_binary;
pub mod dead_letters;
pub mod error;
pub mod partitions;
pub mod pgoutput;
pub mod preflight;
pub mod sequences;
pub mod sink;
pub mod source;
pub mod target;
pub mod tls;
pub mod verify;

pub use conn::PgEndpoint;
pub use sink::{PgSink, PgSinkOptions};
pub use source::{PgSource, PgSourceOptions, PgStream, SlotStart};
