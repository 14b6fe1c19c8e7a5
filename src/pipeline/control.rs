//! Commands an operator (or the switch) sends a running pipeline, and the state they leave that
//! outlives one run of the stream (a retry keeps a pause and a drain target).

use std::collections::HashSet;
use std::path::PathBuf;

use cutover_core::Lsn;
use tokio::sync::{mpsc, oneshot};

/// What a running pipeline can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stop reading the source (sinks go on writing what they have; the replication connection
    /// stays open and answers the server).
    PauseReader,
    ResumeReader,
    /// Stop handing changes to one sink: its queue fills, and then the reader waits for it,
    /// so the whole pipeline holds (the slot cannot move past what that sink has).
    PauseSink(String),
    ResumeSink(String),
    /// Read until every transaction that ended at or before this position is handed to the
    /// sinks (or the source is idle past it), then stop as on SIGTERM: every sink makes what
    /// it has durable and the slot is confirmed there. `run` then returns.
    DrainTo(Lsn),
    /// Once every transaction that ended at or before this position is handed to the sinks,
    /// write the keys they changed to `path` (the switch's final check reads them; see
    /// [`super::changed`]).
    WriteChangedKeys {
        through: Lsn,
        path: PathBuf,
    },
    /// Copy one of the pipeline's tables again into every sink, beside the stream (`cutover
    /// resnapshot`): each sink's rows of it are replaced by the copy.
    Resnapshot(cutover_core::TableName),
    /// Replace one sink's write rate limits until the process ends (`None`: no limit).
    SetRate(String, crate::config::RateLimits),
}

/// A command with the channel its answer goes back on.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Sends commands to a running pipeline.
#[derive(Clone)]
pub struct Handle(mpsc::Sender<Request>);

impl Handle {
    /// Sends `command` and waits for the pipeline's answer.
    pub async fn send(&self, command: Command) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Request { command, reply })
            .await
            .map_err(|_| "the pipeline is not running".to_string())?;
        answer
            .await
            .map_err(|_| "the pipeline stopped before it answered".to_string())?
    }
}

/// The operator's side of a pipeline: the commands it receives and what they set.
#[derive(Default)]
pub struct Operator {
    pub commands: Option<mpsc::Receiver<Request>>,
    pub reader_paused: bool,
    pub paused_sinks: HashSet<String>,
    pub drain_to: Option<Lsn>,
    /// The keys of the changes handed to the sinks, for the switch's final check.
    pub changed: super::changed::ChangedKeys,
    /// A journal of them to write once the reader is past a position.
    pub write_changed: Option<(Lsn, PathBuf)>,
    /// The saved consistency check, read now and then to forget the keys a clean one covers,
    /// and the databases this run streams between (a check of others is not taken).
    pub report_path: Option<PathBuf>,
    pub identity: Option<crate::state::Identity>,
    /// Rate limits an operator set while running, by sink: they replace the file's until the
    /// process ends (a retried run keeps them).
    pub rates: std::collections::HashMap<String, crate::config::RateLimits>,
}

impl Operator {
    /// An operator side and the handle that commands it.
    pub fn new() -> (Self, Handle) {
        let (tx, rx) = mpsc::channel(16);
        (
            Operator {
                commands: Some(rx),
                ..Operator::default()
            },
            Handle(tx),
        )
    }

    /// Tracks at most `max_keys` changed keys for the switch's final check, forgetting those a
    /// clean check of the databases `identity` saved at `report_path` covers (None: the
    /// databases are unknown, nothing is forgotten).
    pub fn tracking(
        mut self,
        max_keys: usize,
        report_path: PathBuf,
        identity: Option<crate::state::Identity>,
    ) -> Self {
        self.changed = super::changed::ChangedKeys::new(max_keys);
        self.report_path = Some(report_path);
        self.identity = identity;
        self
    }
}
