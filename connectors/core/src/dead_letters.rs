//! Dead-letter stores for sinks whose target cannot keep their rejected messages itself
//! (Kafka: a message larger than the brokers accept): the [`LetterStore`] contract, the local
//! file store, and the [`Parking`] a running sink keeps over either.
//!
//! The file holds one JSON document per line, oldest first. Every reader and writer takes an
//! advisory lock on `<file>.lock` first, so `cutover dlq replay` can rewrite the file while
//! `cutover run` appends to it. Appends are flushed to disk before the write that parked them
//! reports its checkpoint: a parked message is never lost (after a crash it may be parked twice;
//! replay then sends it twice, which a consumer keeping the latest message per key absorbs).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};
use crate::schema::TableName;

/// One parked message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// Increasing within the file.
    pub id: u64,
    pub schema: String,
    pub table: String,
    /// The message key as the sink wrote it (JSON text); parked keys hold back their later
    /// messages.
    pub key: String,
    /// insert, update, delete, snapshot.
    pub op: String,
    pub commit_lsn: String,
    pub ordinal: u64,
    /// Where the message was going (topic, subject).
    pub destination: String,
    /// The message body, as it was to be sent.
    pub payload: Option<String>,
    pub reason: String,
    pub attempts: u32,
    /// Seconds since the Unix epoch.
    pub parked_at: u64,
    /// Where the message was read, for a message `cutover apply` could not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_from: Option<ReadFrom>,
}

/// The Kafka position of a message `cutover apply` parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFrom {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Letter {
    pub fn table_name(&self) -> TableName {
        TableName::new(self.schema.clone(), self.table.clone())
    }

    /// The letter of a message that was going to `destination`, refused for `reason`.
    pub fn of(out: &crate::outbox::Outgoing, destination: &str, reason: String) -> Letter {
        let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
        Letter {
            id: 0,
            schema: out.table.name.schema.clone(),
            table: out.table.name.name.clone(),
            key: out.message.key.as_ref().map(text).unwrap_or_default(),
            op: out.message.op.name().to_string(),
            commit_lsn: out.position.commit_lsn.to_string(),
            ordinal: u64::from(out.position.ordinal),
            destination: destination.to_string(),
            payload: out.message.payload.as_ref().map(text),
            reason,
            attempts: 1,
            parked_at: now_secs(),
            read_from: None,
        }
    }
}

/// Where a sink's dead letters are kept. Every method may block (file locks, broker round
/// trips): call them through [`blocking`].
pub trait LetterStore: Send + Sync + std::fmt::Debug {
    /// Names the store in messages: "the dead-letter file x", "the dead-letter topic y".
    fn describe(&self) -> String;

    /// A value that differs whenever the letters may have changed since the last read (a
    /// running sink re-reads only then). `None`: nothing was ever parked.
    fn stamp(&self) -> Result<Option<String>>;

    /// Opens the store for one reader-writer (exclusive where the store can lock).
    fn open(&self) -> Result<Box<dyn LetterSession + '_>>;
}

/// The store, opened by one reader-writer.
pub trait LetterSession: Send {
    /// Every parked letter, oldest first (by id), including those this process parked.
    fn read(&mut self) -> Result<Vec<Letter>>;

    /// Parks letters durably (returns once they would survive a crash); their ids are assigned
    /// here, increasing.
    fn append(&mut self, letters: Vec<Letter>) -> Result<()>;

    /// Ends a replay of `read` (what `read` returned): letters missing from `kept` are removed,
    /// kept ones are stored as given (a new reason, one more attempt).
    fn settle(&mut self, read: &[Letter], kept: &[Letter]) -> Result<()>;
}

/// The file store. Cheap to share; every call locks the file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

/// The store, locked for one reader-writer.
pub struct Locked<'a> {
    store: &'a FileStore,
    _lock: File,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> ConnectorError {
    ConnectorError::fatal(format!(
        "cannot {what} the dead-letter file {}: {e}",
        path.display()
    ))
    .with_hint(
        "check that the directory exists and is writable (dead_letter_file in the pipeline file)",
    )
}

/// The file store at `path`, if the sink configures one (`dead_letter_file`).
pub fn file_store(path: Option<&std::path::Path>) -> Option<Box<dyn LetterStore>> {
    path.map(|p| Box::new(FileStore::new(p.to_path_buf())) as Box<dyn LetterStore>)
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the store's lock (blocking until another process releases it).
    pub fn lock(&self) -> Result<Locked<'_>> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(&self.path, "create the directory of", e))?;
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&self.path, "lock", e))?;
        lock.lock().map_err(|e| io(&self.path, "lock", e))?;
        Ok(Locked {
            store: self,
            _lock: lock,
        })
    }

    /// When the file last changed and its length (None: no file).
    pub fn modified(&self) -> Option<(SystemTime, u64)> {
        std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok()
    }
}

impl LetterStore for FileStore {
    fn describe(&self) -> String {
        format!("the dead-letter file {}", self.path.display())
    }

    fn stamp(&self) -> Result<Option<String>> {
        Ok(self.modified().map(|(at, len)| format!("{at:?}/{len}")))
    }

    fn open(&self) -> Result<Box<dyn LetterSession + '_>> {
        Ok(Box::new(self.lock()?))
    }
}

impl LetterSession for Locked<'_> {
    fn read(&mut self) -> Result<Vec<Letter>> {
        Locked::read(self)
    }

    fn append(&mut self, letters: Vec<Letter>) -> Result<()> {
        Locked::append(self, letters)
    }

    fn settle(&mut self, _read: &[Letter], kept: &[Letter]) -> Result<()> {
        // Nobody appended since the read: the lock is held.
        self.replace(kept)
    }
}

impl Locked<'_> {
    /// Every parked message, oldest first. A partial last line (an append cut off by a crash or
    /// a full disk) is no letter: it is skipped with a warning, and the next append removes it.
    /// A damaged line anywhere else is an error naming the line.
    pub fn read(&self) -> Result<Vec<Letter>> {
        let path = &self.store.path;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(path, "read", e)),
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                bytes = bytes.len() - complete,
                "the dead-letter file ends in a partial line (an interrupted write); it is ignored, and removed by the next append"
            );
        }
        let mut out = Vec::new();
        for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let letter: Letter = serde_json::from_slice(line).map_err(|e| {
                ConnectorError::fatal(format!(
                    "the dead-letter file {} is damaged at line {}: {e}",
                    path.display(),
                    n + 1
                ))
                .with_hint("repair or remove that line; every line is one JSON document")
            })?;
            out.push(letter);
        }
        Ok(out)
    }

    /// Appends letters (their ids are assigned here, after the last one in the file) and
    /// flushes them to disk. Reads only the file's last line, not the whole file; a partial
    /// last line left by an interrupted append is cut off first (it was never a letter).
    pub fn append(&self, mut letters: Vec<Letter>) -> Result<()> {
        let path = &self.store.path;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, "write", e))?;
        let first = last_id(&mut file, path)? + 1;
        let mut text = String::new();
        for (id, l) in (first..).zip(letters.iter_mut()) {
            l.id = id;
            text.push_str(&serde_json::to_string(l).expect("a letter always serializes"));
            text.push('\n');
        }
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| io(path, "write", e))
    }

    /// Replaces the file's content (atomically: a new file renamed over the old).
    pub fn replace(&self, letters: &[Letter]) -> Result<()> {
        let path = &self.store.path;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut text = String::new();
        for l in letters {
            text.push_str(&serde_json::to_string(l).expect("a letter always serializes"));
            text.push('\n');
        }
        let mut file = File::create(&tmp).map_err(|e| io(path, "write", e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| io(path, "write", e))
    }
}

/// The id of the file's last letter (0 when it has none), reading backwards from its end. A
/// partial last line (no newline: an interrupted append) is cut off, with a warning.
fn last_id(file: &mut File, path: &Path) -> Result<u64> {
    let len = file.metadata().map_err(|e| io(path, "read", e))?.len();
    let end = match newline_before(file, len).map_err(|e| io(path, "read", e))? {
        Some(at) => at,
        None => {
            if len > 0 {
                tracing::warn!(file = %path.display(), bytes = len, "the dead-letter file holds only a partial line (an interrupted write); removing it");
                file.set_len(0).map_err(|e| io(path, "write", e))?;
            }
            return Ok(0);
        }
    };
    if end + 1 < len {
        tracing::warn!(file = %path.display(), bytes = len - end - 1, "the dead-letter file ends in a partial line (an interrupted write); removing it");
        file.set_len(end + 1).map_err(|e| io(path, "write", e))?;
    }
    let start = newline_before(file, end)
        .map_err(|e| io(path, "read", e))?
        .map_or(0, |at| at + 1);
    let mut line = vec![0; (end - start) as usize];
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut line))
        .map_err(|e| io(path, "read", e))?;
    let last: Letter = serde_json::from_slice(&line).map_err(|e| {
        ConnectorError::fatal(format!(
            "the dead-letter file {} is damaged at its last line: {e}",
            path.display()
        ))
        .with_hint("repair or remove that line; every line is one JSON document")
    })?;
    Ok(last.id)
}

/// The position of the last newline before `before`, reading backwards in chunks.
fn newline_before(file: &mut File, before: u64) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek};
    const CHUNK: u64 = 64 << 10;
    let mut end = before;
    let mut buf = vec![0; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// When the store was read (its stamp) and the keys it held then.
type Held = (Option<Option<String>>, HashSet<(TableName, String)>);

/// What a running sink knows of its dead letters: the keys that hold back their later
/// messages, reloaded when the store changes (a replay removes keys), and how many this process
/// parked.
#[derive(Debug)]
pub struct Parking {
    pub store: Box<dyn LetterStore>,
    keys: Mutex<Held>,
    pub parked: AtomicU64,
}

impl Parking {
    /// The parking of a sink with a dead-letter file (`None` without one).
    pub fn for_file(file: Option<&PathBuf>) -> Option<std::sync::Arc<Parking>> {
        file.map(|path| std::sync::Arc::new(Parking::new(Box::new(FileStore::new(path.clone())))))
    }

    /// Letters parked by this process (0 without a parking).
    pub fn count(parking: Option<&std::sync::Arc<Parking>>) -> u64 {
        parking.map_or(0, |p| p.parked.load(Ordering::Relaxed))
    }

    pub fn new(store: Box<dyn LetterStore>) -> Parking {
        Parking {
            store,
            keys: Mutex::new((None, HashSet::new())),
            parked: AtomicU64::new(0),
        }
    }

    /// Reloads the parked keys if the store changed since they were read.
    pub fn refresh(&self) -> Result<()> {
        let stamp = self.store.stamp()?;
        let mut keys = self.keys.lock().expect("not poisoned");
        if keys.0.as_ref() == Some(&stamp) {
            return Ok(());
        }
        let letters = self.store.open()?.read()?;
        keys.1 = letters
            .iter()
            .map(|l| (l.table_name(), l.key.clone()))
            .collect();
        keys.0 = Some(stamp);
        Ok(())
    }

    /// Whether any key has a parked message.
    pub fn any(&self) -> bool {
        !self.keys.lock().expect("not poisoned").1.is_empty()
    }

    /// Whether `key` of `table` has a parked message.
    pub fn holds(&self, table: &TableName, key: &str) -> bool {
        let keys = self.keys.lock().expect("not poisoned");
        !keys.1.is_empty() && keys.1.contains(&(table.clone(), key.to_string()))
    }

    /// Parks letters (durably) and holds back their keys from now on.
    pub fn park(&self, letters: Vec<Letter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        for l in &letters {
            tracing::warn!(
                table = %l.table_name(),
                key = %l.key,
                destination = %l.destination,
                reason = %l.reason,
                "message parked as a dead letter; other keys go on (see `cutover dlq list`)"
            );
        }
        let n = letters.len() as u64;
        let keys: Vec<(TableName, String)> = letters
            .iter()
            .map(|l| (l.table_name(), l.key.clone()))
            .collect();
        self.store.open()?.append(letters)?;
        let mut held = self.keys.lock().expect("not poisoned");
        held.1.extend(keys);
        // Read again next time: the stamp now covers the letters just parked.
        held.0 = None;
        self.parked.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Sends a store's letters again, oldest first, through `send`, with the store open (locked,
/// where it can be) meanwhile. A letter sent is removed; one refused for good
/// (`ErrorKind::Poison`) stays, with the new reason and one more attempt, and holds back the
/// later letters of its key. Any other error stops the replay with nothing removed (letters
/// already sent are sent again next time). Returns (sent, still parked).
pub async fn replay<F, Fut>(store: &dyn LetterStore, mut send: F) -> Result<(u64, u64)>
where
    F: FnMut(Letter) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut session = blocking(|| store.open())?;
    let letters = blocking(|| session.read())?;
    let mut keep = Vec::new();
    let mut blocked: HashSet<(TableName, String)> = HashSet::new();
    let mut sent = 0u64;
    for l in &letters {
        let mut l = l.clone();
        let id = (l.table_name(), l.key.clone());
        if blocked.contains(&id) {
            keep.push(l);
            continue;
        }
        match send(l.clone()).await {
            Ok(()) => sent += 1,
            Err(e) if e.kind == crate::ErrorKind::Poison => {
                l.attempts += 1;
                l.reason = e.message;
                blocked.insert(id);
                keep.push(l);
            }
            Err(e) => return Err(e),
        }
    }
    let still = keep.len() as u64;
    blocking(|| session.settle(&letters, &keep))?;
    Ok((sent, still))
}

/// Runs file work that may wait for another process's lock without stalling the runtime's
/// other tasks (on a multi-threaded runtime; a current-thread runtime just runs it).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Seconds since the Unix epoch, for `parked_at`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(key: &str) -> Letter {
        Letter {
            id: 0,
            schema: "public".into(),
            table: "t".into(),
            key: key.into(),
            op: "insert".into(),
            commit_lsn: "0/1".into(),
            ordinal: 1,
            destination: "topic".into(),
            payload: Some("{}".into()),
            reason: "too large".into(),
            attempts: 1,
            parked_at: 0,
            read_from: None,
        }
    }

    #[test]
    fn letters_are_appended_read_back_and_hold_their_keys() {
        let dir = std::env::temp_dir().join(format!("cutover-dl-{}", std::process::id()));
        let path = dir.join("sink.jsonl");
        let parking = Parking::new(Box::new(FileStore::new(path.clone())));
        parking.refresh().unwrap();
        let t = TableName::new("public", "t");
        assert!(!parking.holds(&t, "{\"id\":1}"));
        parking
            .park(vec![letter("{\"id\":1}"), letter("{\"id\":2}")])
            .unwrap();
        assert!(parking.holds(&t, "{\"id\":1}"));
        let file = FileStore::new(path);
        let locked = file.lock().unwrap();
        let read = locked.read().unwrap();
        assert_eq!(read.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 2]);
        locked.replace(&read[1..]).unwrap();
        drop(locked);
        // Another process replayed key 1: after a refresh it no longer holds messages back.
        std::thread::sleep(std::time::Duration::from_millis(20));
        parking.refresh().unwrap();
        assert!(!parking.holds(&t, "{\"id\":1}"));
        assert!(parking.holds(&t, "{\"id\":2}"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_no_letter_before_it_is_lost() {
        let dir = std::env::temp_dir().join(format!("cutover-dl-torn-{}", std::process::id()));
        let path = dir.join("sink.jsonl");
        let file = FileStore::new(path.clone());
        let locked = file.lock().unwrap();
        locked
            .append(vec![letter("{\"id\":1}"), letter("{\"id\":2}")])
            .unwrap();
        // A crash in the middle of the next append: half a line, no newline.
        let whole = std::fs::read(&path).unwrap();
        let one_line = whole.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..one_line / 2]);
        std::fs::write(&path, &torn).unwrap();
        let read = locked.read().unwrap();
        assert_eq!(read.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 2]);
        locked.append(vec![letter("{\"id\":3}")]).unwrap();
        let read = locked.read().unwrap();
        assert_eq!(read.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(read[2].key, "{\"id\":3}");
        assert!(std::fs::read(&path).unwrap().ends_with(b"\n"));
        // A damaged line in the middle is an error that names it.
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[one_line + 1] = b'#';
        std::fs::write(&path, &damaged).unwrap();
        let e = locked.read().unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        // A file holding only a partial line: the append starts over at id 1.
        std::fs::write(&path, b"{\"id\":7,\"sche").unwrap();
        locked.append(vec![letter("{\"id\":9}")]).unwrap();
        assert_eq!(
            locked
                .read()
                .unwrap()
                .iter()
                .map(|l| l.id)
                .collect::<Vec<_>>(),
            vec![1]
        );
        drop(locked);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn append_finds_the_last_id_behind_a_long_line() {
        let dir = std::env::temp_dir().join(format!("cutover-dl-long-{}", std::process::id()));
        let path = dir.join("sink.jsonl");
        let file = FileStore::new(path.clone());
        let locked = file.lock().unwrap();
        let mut big = letter("{\"id\":1}");
        big.payload = Some("x".repeat(200_000));
        locked.append(vec![letter("{\"id\":0}"), big]).unwrap();
        locked.append(vec![letter("{\"id\":2}")]).unwrap();
        let ids: Vec<u64> = locked.read().unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        drop(locked);
        let _ = std::fs::remove_dir_all(dir);
    }
}
