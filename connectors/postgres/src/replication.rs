//! The replication connection: a walsender session (`replication=database`) that runs
//! replication commands (`CREATE_REPLICATION_SLOT`, `IDENTIFY_SYSTEM`) and streams a logical
//! slot with the pgoutput options cutover chooses for the server's version (see
//! [`crate::version::Capabilities`]).
//!
//! TLS and the certificate checks are the SQL sessions' own ([`crate::tls`]), so a connection
//! string means the same on both paths. Authentication: trust, password, md5 and SCRAM-SHA-256.
//!
//! Streaming runs two tasks on the connection: a reader that hands `XLogData` and keepalives on
//! through a small bounded channel (a slow consumer slows the read), and a writer that reports
//! the applied position to the server whenever it rises (at most every
//! [`STATUS_INTERVAL`]), at once when the server asks, and every [`HEARTBEAT`] in any case. The
//! writer never waits for the reader, so the server keeps hearing from cutover (and does not
//! end the session at `wal_sender_timeout`) however slowly the stream is consumed.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cutover_core::Lsn;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::tls::TlsConnect;

use crate::conn::PgEndpoint;
use crate::tls::SslMode;

/// The least time between two status updates sent because the applied position rose.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// A status update is sent at least this often, moved or not: the server's
/// `wal_sender_timeout` counts from the last one, and on an idle stream the server answers one
/// that lags its send position with a keepalive carrying its WAL end.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The largest backend message accepted (PostgreSQL's own limit for a row is 1 GB).
const MAX_MESSAGE: usize = 1 << 30;
/// How long connecting and authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub use crate::error::{ReplicationError, ServerError};

type Result<T> = std::result::Result<T, ReplicationError>;

/// What the connection runs over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// One backend message: its type byte and its body.
struct Frame {
    tag: u8,
    body: Bytes,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReplicationError::Io("the server closed the replication connection".into())
        } else {
            e.into()
        }
    })?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .filter(|l| *l <= MAX_MESSAGE)
        .ok_or_else(|| {
            ReplicationError::Protocol(format!("message {:?} has length {len}", header[0] as char))
        })?;
    let mut body = BytesMut::zeroed(body_len);
    r.read_exact(&mut body).await?;
    Ok(Frame {
        tag: header[0],
        body: body.freeze(),
    })
}

/// Reads a NUL-terminated string off `b`.
fn cstring(b: &mut Bytes) -> Result<String> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| ReplicationError::Protocol("a string without its terminator".into()))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn server_error(mut body: Bytes) -> ReplicationError {
    let mut e = ServerError {
        code: "XX000".into(),
        message: String::new(),
        detail: None,
    };
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let Ok(value) = cstring(&mut body) else { break };
        match field {
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server(e)
}

fn need(body: &Bytes, n: usize, what: &str) -> Result<()> {
    if body.remaining() < n {
        return Err(ReplicationError::Protocol(format!("{what} ends early")));
    }
    Ok(())
}

/// One result row of a replication command, each value as the server's text (`None`: NULL).
pub type QueryRow = Vec<Option<Bytes>>;

/// An authenticated walsender session, before streaming.
pub struct ReplicationSession {
    io: BufReader<Box<dyn Io>>,
    /// `server_version_num` from the startup's ParameterStatus (`server_version`).
    server_version: u32,
}

impl fmt::Debug for ReplicationSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicationSession(server {})", self.server_version)
    }
}

impl ReplicationSession {
    /// Connects to `endpoint` as a walsender for its database, with `application_name` and
    /// the session settings that fix how values print as text (so a text-format value means
    /// one thing whatever the server's defaults).
    pub async fn connect(endpoint: &PgEndpoint, application_name: &str) -> Result<Self> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open(endpoint, application_name))
            .await
            .map_err(|_| {
                ReplicationError::Io(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
            })?
    }

    /// Tries the URL's hosts in order, as libpq does: the first that takes the session (and,
    /// with `target_session_attrs=read-write`, is not read-only) is the one streamed from.
    async fn open(endpoint: &PgEndpoint, application_name: &str) -> Result<Self> {
        let hosts = endpoint.tcp_hosts();
        let mut last = None;
        for (host, port) in &hosts {
            match Self::open_at(endpoint, host, *port, application_name).await {
                Ok(session) => return Ok(session),
                Err(e) if hosts.len() > 1 => {
                    tracing::debug!(host = %host, port, error = %e, "replication connection: trying the next host");
                    last = Some(ReplicationError::Io(format!("{host}:{port}: {e}")));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ReplicationError::Io("the URL names no TCP host".into())))
    }

    async fn open_at(
        endpoint: &PgEndpoint,
        host: &str,
        port: u16,
        application_name: &str,
    ) -> Result<Self> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let io = negotiate_tls(tcp, endpoint, host).await?;
        let mut session = ReplicationSession {
            io: BufReader::with_capacity(128 * 1024, io),
            server_version: 0,
        };
        session.startup(endpoint, application_name).await?;
        if endpoint.wants_read_write() {
            let rows = session.simple_query("SHOW transaction_read_only").await?;
            let read_only = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .is_some_and(|v| &v[..] == b"on");
            if read_only {
                return Err(ReplicationError::Io(
                    "the server is read-only (a standby); target_session_attrs=read-write asks for the primary".into(),
                ));
            }
        }
        Ok(session)
    }

    /// The server's version as `server_version_num` (for example 130012).
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    async fn send(&mut self, buf: &BytesMut) -> Result<()> {
        self.io.get_mut().write_all(buf).await?;
        self.io.get_mut().flush().await?;
        Ok(())
    }

    async fn startup(&mut self, endpoint: &PgEndpoint, application_name: &str) -> Result<()> {
        let user = endpoint.user();
        let database = endpoint.database();
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", application_name),
            (
                "options",
                "-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=3 \
                 -c bytea_output=hex -c TimeZone=UTC",
            ),
        ];
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf)?;
        self.send(&buf).await?;
        let password = endpoint.password();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut frame = read_frame(&mut self.io).await?;
            match frame.tag {
                b'R' => {
                    need(&frame.body, 4, "an authentication request")?;
                    let code = frame.body.get_i32();
                    buf.clear();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password.as_bytes(), &mut buf)?,
                        5 => {
                            need(&frame.body, 4, "an MD5 request")?;
                            let mut salt = [0u8; 4];
                            frame.body.copy_to_slice(&mut salt);
                            let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut buf)?;
                        }
                        10 => {
                            let mut offered = Vec::new();
                            while frame.body.first().is_some_and(|b| *b != 0) {
                                offered.push(cstring(&mut frame.body)?);
                            }
                            if !offered.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(ReplicationError::Auth(format!(
                                    "the server offers only {}",
                                    offered.join(", ")
                                )));
                            }
                            let s =
                                ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut buf)?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL continue without a start".into())
                            })?;
                            s.update(&frame.body)
                                .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut buf)?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL final without a start".into())
                            })?;
                            s.finish(&frame.body)
                                .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                            continue;
                        }
                        other => {
                            return Err(ReplicationError::Auth(format!(
                                "the server asks for authentication method {other}, which cutover does not support (use scram-sha-256, md5, password or trust in pg_hba.conf)"
                            )))
                        }
                    }
                    self.send(&buf).await?;
                }
                b'S' => {
                    let name = cstring(&mut frame.body)?;
                    let value = cstring(&mut frame.body)?;
                    if name == "server_version" {
                        self.server_version = crate::version::parse_server_version(&value)
                            .ok_or_else(|| {
                                ReplicationError::Protocol(format!(
                                    "server_version {value:?} is not a version"
                                ))
                            })?;
                    }
                }
                b'E' => {
                    let e = server_error(frame.body);
                    return Err(match e.code() {
                        Some("28P01") | Some("28000") => ReplicationError::Auth(e.to_string()),
                        _ => e,
                    });
                }
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs one replication command (or SQL) with the simple query protocol; its rows in text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryRow>> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let mut frame = read_frame(&mut self.io).await?;
            match frame.tag {
                b'D' => {
                    need(&frame.body, 2, "a data row")?;
                    let count = frame.body.get_i16().max(0) as usize;
                    let mut row = Vec::with_capacity(count);
                    for _ in 0..count {
                        need(&frame.body, 4, "a data row")?;
                        let len = frame.body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            need(&frame.body, len as usize, "a data row")?;
                            row.push(Some(frame.body.split_to(len as usize)));
                        }
                    }
                    rows.push(row);
                }
                b'E' => failed = Some(server_error(frame.body)),
                b'Z' => {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Starts streaming `slot` from `start` with pgoutput `options` (the text inside
    /// `START_REPLICATION`'s parentheses). The applied position reported to the server starts
    /// at `start`; raise it with [`WalStream::set_applied`].
    pub async fn start(mut self, slot: &str, start: Lsn, options: &str) -> Result<WalStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({options})",
            cutover_core::quote_ident(slot)
        );
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf)?;
        self.send(&buf).await?;
        loop {
            let frame = read_frame(&mut self.io).await?;
            match frame.tag {
                b'W' => break,
                b'E' => return Err(server_error(frame.body)),
                _ => {}
            }
        }
        let (read, write) = tokio::io::split(self.io);
        let (events_tx, events) = mpsc::channel(16);
        let (applied, applied_rx) = watch::channel(start);
        let (stop, stop_rx) = oneshot::channel();
        let asked = std::sync::Arc::new(Notify::new());
        let writer = tokio::spawn(report(write, applied_rx, asked.clone(), stop_rx));
        let reader = tokio::spawn(receive(read, events_tx, asked));
        Ok(WalStream {
            events,
            applied,
            stop: Some(stop),
            reader: Some(reader),
            writer: Some(writer),
        })
    }
}

/// Asks for TLS as the endpoint's `sslmode` says, and does the handshake with the SQL
/// sessions' rustls configuration.
async fn negotiate_tls(
    mut tcp: TcpStream,
    endpoint: &PgEndpoint,
    host: &str,
) -> Result<Box<dyn Io>> {
    let tls = endpoint.tls();
    if tls.mode() == SslMode::Disable {
        return Ok(Box::new(tcp));
    }
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            use tokio_postgres::tls::MakeTlsConnect;
            let connect = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls.connector(), host)
                .map_err(|e| ReplicationError::Tls(e.0))?;
            let stream = connect
                .connect(tcp)
                .await
                .map_err(|e| ReplicationError::Tls(e.0))?;
            Ok(Box::new(stream))
        }
        b'N' if tls.mode() == SslMode::Prefer => Ok(Box::new(tcp)),
        b'N' => Err(ReplicationError::Tls(format!(
            "the server does not support TLS, and sslmode={} requires it",
            tls.mode().as_str()
        ))),
        other => Err(ReplicationError::Protocol(format!(
            "the server answered the TLS request with {:?}",
            other as char
        ))),
    }
}

/// One message of a running stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// A pgoutput message.
    XLogData { wal_end: Lsn, data: Bytes },
    /// The server's keepalive: everything up to `wal_end` has been sent.
    KeepAlive { wal_end: Lsn },
}

impl WalEvent {
    /// Bytes the event holds, for memory accounting.
    pub fn size(&self) -> usize {
        match self {
            WalEvent::XLogData { data, .. } => data.len() + 64,
            WalEvent::KeepAlive { .. } => 64,
        }
    }
}

/// A streaming slot. Dropping it ends the session.
pub struct WalStream {
    events: mpsc::Receiver<Result<WalEvent>>,
    applied: watch::Sender<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<()>>>,
}

impl WalStream {
    /// The next message; `Ok(None)` once the stream has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<WalEvent>> {
        self.events.recv().await.transpose()
    }

    /// The next message if one is already there.
    pub fn try_recv(&mut self) -> Option<Result<WalEvent>> {
        self.events.try_recv().ok()
    }

    /// Reports `lsn` as written, flushed and applied (the slot confirms it) with the next
    /// status update. A lower position than one reported before is ignored.
    pub fn set_applied(&self, lsn: Lsn) {
        self.applied.send_if_modified(|a| {
            let raise = lsn > *a;
            if raise {
                *a = lsn;
            }
            raise
        });
    }

    /// Ends the stream: reports the applied position a last time, says CopyDone and closes.
    pub async fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
        match self.writer.take() {
            Some(w) => w.await.unwrap_or_else(|e| {
                Err(ReplicationError::Io(format!("the status task failed: {e}")))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for WalStream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// The reader task: CopyData frames into events, until the connection ends or the stream is
/// dropped. A keepalive that asks for a reply wakes the writer.
async fn receive<R: AsyncRead + Unpin>(
    mut read: R,
    out: mpsc::Sender<Result<WalEvent>>,
    asked: std::sync::Arc<Notify>,
) {
    loop {
        let event = match read_frame(&mut read).await {
            Ok(frame) => match parse_copy(frame) {
                Ok(Some(Parsed::Event(e))) => Ok(e),
                Ok(Some(Parsed::KeepAlive { wal_end, reply })) => {
                    if reply {
                        asked.notify_one();
                    }
                    Ok(WalEvent::KeepAlive { wal_end })
                }
                Ok(None) => continue,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let end = event.is_err();
        if out.send(event).await.is_err() || end {
            return;
        }
    }
}

enum Parsed {
    Event(WalEvent),
    KeepAlive { wal_end: Lsn, reply: bool },
}

/// A backend frame of the streaming phase.
fn parse_copy(mut frame: Frame) -> Result<Option<Parsed>> {
    match frame.tag {
        b'd' => {
            need(&frame.body, 1, "a CopyData message")?;
            match frame.body.get_u8() {
                b'w' => {
                    need(&frame.body, 24, "an XLogData message")?;
                    let _start = frame.body.get_u64();
                    let wal_end = Lsn(frame.body.get_u64());
                    let _sent_at = frame.body.get_i64();
                    Ok(Some(Parsed::Event(WalEvent::XLogData {
                        wal_end,
                        data: frame.body,
                    })))
                }
                b'k' => {
                    need(&frame.body, 17, "a keepalive")?;
                    let wal_end = Lsn(frame.body.get_u64());
                    let _sent_at = frame.body.get_i64();
                    let reply = frame.body.get_u8() != 0;
                    Ok(Some(Parsed::KeepAlive { wal_end, reply }))
                }
                other => Err(ReplicationError::Protocol(format!(
                    "unknown replication message {:?}",
                    other as char
                ))),
            }
        }
        b'E' => Err(server_error(frame.body)),
        b'c' => Err(ReplicationError::Io(
            "the server ended the replication stream".into(),
        )),
        // Notices and parameter changes may come at any time.
        _ => Ok(None),
    }
}

/// A standby status update reporting `lsn` as written, flushed and applied.
fn status_update(lsn: Lsn, reply: bool) -> BytesMut {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_MICROS;
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(lsn.0);
    body.put_u64(lsn.0);
    body.put_u64(lsn.0);
    body.put_i64(now);
    body.put_u8(u8::from(reply));
    let mut buf = BytesMut::new();
    frontend::CopyData::new(body.freeze())
        .expect("a status update fits a message")
        .write(&mut buf);
    buf
}

/// The writer task (see the module's doc). Ends with CopyDone and Terminate on stop.
async fn report<W: AsyncWrite + Unpin>(
    mut write: W,
    mut applied: watch::Receiver<Lsn>,
    asked: std::sync::Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let mut last_sent = tokio::time::Instant::now() - HEARTBEAT;
    let mut sent: Option<Lsn> = None;
    loop {
        let now = *applied.borrow_and_update();
        let moved = sent.is_none_or(|s| now > s);
        let due = if moved {
            last_sent + STATUS_INTERVAL
        } else {
            last_sent + HEARTBEAT
        };
        let reply = tokio::select! {
            biased;
            _ = &mut stop => {
                let mut buf = status_update(*applied.borrow(), false);
                frontend::copy_done(&mut buf);
                frontend::terminate(&mut buf);
                let _ = write.write_all(&buf).await;
                let _ = write.flush().await;
                return Ok(());
            }
            _ = asked.notified() => true,
            _ = tokio::time::sleep_until(due) => false,
            Ok(()) = applied.changed(), if !moved => continue,
        };
        let lsn = *applied.borrow_and_update();
        write.write_all(&status_update(lsn, reply)).await?;
        write.flush().await?;
        sent = Some(lsn);
        last_sent = tokio::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(body: &[u8]) -> Frame {
        Frame {
            tag: b'd',
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn xlogdata_and_keepalives_are_read_and_short_frames_refused() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend_from_slice(b"Ipayload");
        match parse_copy(copy(&w)).unwrap() {
            Some(Parsed::Event(WalEvent::XLogData { wal_end, data })) => {
                assert_eq!(wal_end, Lsn(0x1_0000_0020));
                assert_eq!(&data[..], b"Ipayload");
            }
            _ => panic!("not XLogData"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert!(matches!(
            parse_copy(copy(&k)).unwrap(),
            Some(Parsed::KeepAlive {
                wal_end: Lsn(7),
                reply: true
            })
        ));
        assert!(parse_copy(copy(&k[..10])).is_err());
        assert!(parse_copy(copy(&w[..20])).is_err());
        assert!(parse_copy(copy(b"x")).is_err());
        assert!(parse_copy(copy(b"")).is_err());
    }

    #[test]
    fn a_status_update_carries_the_position_three_times() {
        let buf = status_update(Lsn(0xABCD), true);
        assert_eq!(buf[0], b'd');
        assert_eq!(i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]), 4 + 34);
        assert_eq!(buf[5], b'r');
        for i in 0..3 {
            let at = 6 + i * 8;
            assert_eq!(
                u64::from_be_bytes(buf[at..at + 8].try_into().unwrap()),
                0xABCD
            );
        }
        assert_eq!(buf[buf.len() - 1], 1);
    }

    #[test]
    fn server_errors_keep_code_message_and_detail() {
        let mut b = BytesMut::new();
        for (f, v) in [
            (b'S', "ERROR"),
            (b'C', "42704"),
            (b'M', "no slot"),
            (b'D', "more"),
        ] {
            b.put_u8(f);
            b.put_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        let e = server_error(b.freeze());
        assert_eq!(e.code(), Some("42704"));
        assert_eq!(
            e.to_string(),
            "server error: no slot (SQLSTATE 42704); more"
        );
    }
}
