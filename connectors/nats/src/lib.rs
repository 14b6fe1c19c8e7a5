//! NATS JetStream sink for cutover: one subject per table (from a template) in one stream, one
//! message per row change in cutover's JSON envelope (or the Debezium-compatible one).
//!
//! Contract: a write is durable when JetStream acknowledged every message of it. Each message
//! carries `Nats-Msg-Id` derived from its source position (`<commit LSN>:<ordinal>:<part>`, and
//! for snapshot rows `<snapshot LSN>:r:<hash of table and key>`), so a change sent again after
//! a restart, within the stream's duplicate window, is dropped by the server: replays leave no
//! duplicate. Messages are published in source order on one connection, so the stream holds
//! every key's changes in order. The sink's progress (checkpoint, copied tables) is kept in the
//! JetStream key-value bucket `cutover_state`, saved after the messages it covers were acked.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::dead_letters::{self, blocking, FileStore, Letter, Parking};
use cutover_core::envelope::{Encoder, EnvelopeFormat};
use cutover_core::event_sink::{EventSink, Routes, Transport};
use cutover_core::naming::{replace_disallowed, Template};
use cutover_core::outbox::Outgoing;
use cutover_core::{ConnectorError, ErrorKind, Result, SinkState, TableName, TableSchema};

/// Acknowledgements awaited at most at once (the client's in-flight limit is set above it).
pub mod target;
pub mod verify;

const ACK_WINDOW: usize = 4096;
const STATE_BUCKET: &str = "cutover_state";

/// Settings of one NATS sink.
/// `Debug` shows the server without the URL's credentials.
#[derive(Clone)]
pub struct NatsSinkOptions {
    /// Names the sink in status output, logs and its state key.
    pub name: String,
    pub pipeline: String,
    /// Server URL, `nats://host:port` (credentials in it are never printed).
    pub url: String,
    /// Subject per table.
    pub subject: Template,
    /// The JetStream stream that stores the subjects (created if absent).
    pub stream: String,
    /// How long the server remembers message ids to drop replays.
    pub duplicate_window: Duration,
    pub format: EnvelopeFormat,
    /// Source database name, for Debezium's `source.db`.
    pub source_database: String,
    /// Where messages the server refuses for good (over `max_payload` or the stream's
    /// maximum message size) are parked; `None`: such a message stops the sink.
    pub dead_letter_file: Option<std::path::PathBuf>,
    /// Streams the other way after a switch: the saved state is this direction's own, and
    /// message ids carry an `r` so that no position of the other server is taken for a replay
    /// (see [`cutover_core::TargetContext::reverse`]).
    pub reverse: bool,
    /// TLS and credentials beyond the URL's user and password.
    pub auth: NatsAuth,
}

/// How the sink proves itself to the server and checks the server. `Debug` never shows the
/// seed or the token.
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// Require TLS.
    pub tls: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub credentials_file: Option<std::path::PathBuf>,
    pub nkey_seed: Option<String>,
    pub token: Option<String>,
}

impl NatsAuth {
    /// Whether the connection must be encrypted.
    pub fn requires_tls(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.client_cert.is_some()
    }

    /// `TLS, CA ca.pem, client certificate c.pem; credentials file x.creds` (no secret).
    pub fn describe(&self, url: &str) -> String {
        let mut parts = Vec::new();
        if self.requires_tls() || url.starts_with("tls://") {
            let mut tls = "TLS required".to_string();
            if let Some(ca) = &self.ca_file {
                tls.push_str(&format!(", CA {}", ca.display()));
            }
            if let Some((c, _)) = &self.client_cert {
                tls.push_str(&format!(", client certificate {}", c.display()));
            }
            parts.push(tls);
        } else {
            parts.push("TLS if the server asks for it".to_string());
        }
        if let Some(f) = &self.credentials_file {
            parts.push(format!("credentials file {}", f.display()));
        }
        if self.nkey_seed.is_some() {
            parts.push("NKey".to_string());
        }
        if self.token.is_some() {
            parts.push("token".to_string());
        }
        parts.join("; ")
    }
}

impl std::fmt::Debug for NatsSinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkOptions")
            .field("name", &self.name)
            .field("server", &redacted(&self.url))
            .field("subject", &self.subject.as_str())
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Characters allowed in one subject token (a table or schema name substituted into it).
fn subject_char(c: char) -> bool {
    !(c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

/// Checks a stream name NATS would refuse; the error says what is wrong and the fix.
pub fn check_stream_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| !subject_char(c) || c == '/' || c == '\\')
    {
        return Err(format!(
            "stream name {name:?} is not allowed: it needs 1 to 255 characters without '.', '*', '>', '/', '\\' or spaces. Fix: set the sink's stream to e.g. \"cutover_shop\"."
        ));
    }
    Ok(())
}

/// Checks a rendered subject; the error says what is wrong and the fix.
pub fn check_subject(subject: &str) -> std::result::Result<(), String> {
    if subject.is_empty()
        || subject
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
    {
        return Err(format!(
            "subject {subject:?} is not a valid NATS subject (dot-separated, non-empty tokens without '*', '>' or spaces). Fix: change the literal text of the subject template."
        ));
    }
    Ok(())
}

/// The NATS sink. See the crate documentation for its delivery contract.
pub type NatsSink = EventSink<NatsTransport>;

/// How the NATS sink reaches JetStream and keeps its progress (a key-value bucket).
pub struct NatsTransport {
    options: NatsSinkOptions,
    js: jetstream::Context,
    /// The state bucket, opened by the first `load_state`.
    store: tokio::sync::OnceCell<kv::Store>,
}

fn nats_error(
    kind: ErrorKind,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ConnectorError {
    ConnectorError::new(kind, format!("{what}: {e}")).with_source(e)
}

/// The server part of a NATS URL, without credentials.
fn redacted(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Connects to the sink's server as `name` (shown by the server); fails at once (retryable)
/// when it does not answer. The url's credentials never reach a message.
pub(crate) async fn open_client(
    options: &NatsSinkOptions,
    name: String,
) -> Result<async_nats::Client> {
    let auth = &options.auth;
    let mut connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .name(name)
        .require_tls(auth.requires_tls());
    if let Some(ca) = &auth.ca_file {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &auth.client_cert {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(file) = &auth.credentials_file {
        connect = connect.credentials_file(file).await.map_err(|e| {
            ConnectorError::fatal(format!(
                "sink {}: cannot read the credentials file {}: {e}",
                options.name,
                file.display()
            ))
            .with_hint("give the .creds file nsc wrote for the user (a JWT and an NKey seed)")
        })?;
    }
    if let Some(seed) = &auth.nkey_seed {
        connect = connect.nkey(seed.clone());
    }
    if let Some(token) = &auth.token {
        connect = connect.token(token.clone());
    }
    connect
        .connect(options.url.as_str())
        .await
        .map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let message = format!(
                "cannot connect to NATS at {} (sink {}, {}): {}",
                redacted(&options.url),
                options.name,
                auth.describe(&options.url),
                e
            );
            match e.kind() {
                // The same certificate or credentials fail again: stop with the fix.
                K::Tls => ConnectorError::fatal(message).with_hint(
                    "check tls_ca_file (the CA that signed the server's certificate), the host name in the url against the certificate, and tls_cert_file/tls_key_file if the server verifies clients",
                ),
                K::AuthorizationViolation | K::Authentication => ConnectorError::fatal(message)
                    .with_hint("check the credentials: the url's user and password, credentials_file, nkey_seed or token"),
                _ => ConnectorError::retryable(message).with_hint(
                    "check the sink's url and that nats-server runs with JetStream (-js)",
                ),
            }
        })
}

impl NatsTransport {
    /// Connects to the server and returns the sink; fails at once (retryable) when the server
    /// does not answer.
    pub async fn connect(options: NatsSinkOptions) -> Result<NatsSink> {
        let encoder = Encoder {
            format: options.format,
            tombstones: false,
            source_name: options.pipeline.clone(),
            database: options.source_database.clone(),
            truncates: Default::default(),
        };
        let parking = Parking::for_file(options.dead_letter_file.as_ref());
        Ok(EventSink::new(
            NatsTransport::open(options).await?,
            encoder,
            parking,
        ))
    }

    async fn open(options: NatsSinkOptions) -> Result<NatsTransport> {
        let client = open_client(
            &options,
            format!("cutover-{}-{}", options.pipeline, options.name),
        )
        .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_ack_inflight(ACK_WINDOW * 2)
            .build(client);
        Ok(NatsTransport {
            options,
            js,
            store: tokio::sync::OnceCell::new(),
        })
    }

    /// Reads the sink's saved progress without preparing anything (`cutover status`).
    pub async fn saved_state(options: &NatsSinkOptions) -> Result<SinkState> {
        let sink = NatsTransport::open(options.clone()).await?;
        let Ok(store) = sink.js.get_key_value(STATE_BUCKET).await else {
            return Ok(SinkState::default());
        };
        match store
            .get(sink.state_key())
            .await
            .map_err(|e| nats_error(ErrorKind::Retryable, "cannot read the sink's progress", e))?
        {
            Some(doc) => SinkState::from_json(&doc),
            None => Ok(SinkState::default()),
        }
    }

    /// Deletes the sink's saved progress (`cutover teardown --target-state`), so the next run
    /// copies every table again. The stream and its messages are left alone.
    pub async fn forget_state(options: &NatsSinkOptions) -> Result<()> {
        let sink = NatsTransport::open(options.clone()).await?;
        if let Ok(store) = sink.js.get_key_value(STATE_BUCKET).await {
            store.purge(sink.state_key()).await.map_err(|e| {
                nats_error(ErrorKind::Retryable, "cannot delete the sink's progress", e)
            })?;
        }
        Ok(())
    }

    fn state_key(&self) -> String {
        cutover_core::target::directed_state_key(
            &format!("{}.{}", self.options.pipeline, self.options.name),
            self.options.reverse,
        )
    }

    /// The subject of a table's messages, checked; a table without a key is refused.
    fn subject_for(&self, table: &TableSchema) -> Result<String> {
        if !table.has_key() {
            return Err(ConnectorError::fatal(format!(
                "table {} has no key, so its messages could not be folded by key",
                table.name
            ))
            .with_hint("add a primary key or a replica identity index to the source table"));
        }
        let clean = |s: &str| replace_disallowed(s, subject_char);
        let subject = self
            .options
            .subject
            .render(&self.options.pipeline, &table.name, &clean);
        check_subject(&subject).map_err(|e| {
            ConnectorError::fatal(format!(
                "sink {}: table {}: {e}",
                self.options.name, table.name
            ))
        })?;
        Ok(subject)
    }

    /// Creates the stream, or adds missing subjects to an existing one.
    async fn prepare_stream(&self, subjects: &[String]) -> Result<()> {
        let name = &self.options.stream;
        match self.js.get_stream(name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| nats_error(ErrorKind::Retryable, "cannot read the stream", e))?;
                let mut config = info.config.clone();
                let missing: Vec<&String> = subjects
                    .iter()
                    .filter(|s| !config.subjects.iter().any(|have| subject_matches(have, s)))
                    .collect();
                if !missing.is_empty() {
                    config.subjects.extend(missing.into_iter().cloned());
                    self.js.update_stream(config).await.map_err(|e| {
                        nats_error(
                            ErrorKind::Fatal,
                            &format!("cannot add the tables' subjects to stream {name}"),
                            e,
                        )
                    })?;
                }
                Ok(())
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                self.js
                    .create_stream(stream::Config {
                        name: name.clone(),
                        subjects: subjects.to_vec(),
                        duplicate_window: self.options.duplicate_window,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        nats_error(ErrorKind::Fatal, &format!("cannot create stream {name}"), e)
                    })
                    .map_err(|e| {
                        e.with_hint("check that JetStream is enabled and no other stream already takes these subjects")
                    })?;
                Ok(())
            }
            Err(e) => Err(nats_error(
                ErrorKind::Retryable,
                &format!("cannot look up stream {name}"),
                e,
            )
            .with_hint("check that nats-server runs with JetStream enabled (-js)")),
        }
    }

    async fn state_store(&self) -> Result<kv::Store> {
        match self.js.get_key_value(STATE_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .js
                .create_key_value(kv::Config {
                    bucket: STATE_BUCKET.into(),
                    description: "cutover sink progress".into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_error(ErrorKind::Retryable, "cannot create the state bucket", e)),
        }
    }
}

/// Whether a stream subject filter (with `*` and `>` wildcards) covers `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The message id that lets the server drop a replayed message; `r` first while streaming the
/// other way after a switch (positions on the two servers are unrelated).
fn message_id(out: &Outgoing, reverse: bool) -> String {
    let id = position_id(out);
    if reverse {
        format!("r{id}")
    } else {
        id
    }
}

fn position_id(out: &Outgoing) -> String {
    match out.message.op {
        cutover_core::envelope::Op::Snapshot => {
            let mut h = blake3::Hasher::new();
            h.update(out.table.name.schema.as_bytes());
            h.update(&[0]);
            h.update(out.table.name.name.as_bytes());
            h.update(&[0]);
            h.update(out.message.key.as_deref().unwrap_or_default());
            let hash = h.finalize();
            format!("{}:r:{}", out.position.commit_lsn, &hash.to_hex()[..32])
        }
        _ => format!(
            "{}:{}:{}",
            out.position.commit_lsn, out.position.ordinal, out.part
        ),
    }
}

/// A message published and not yet acknowledged, kept (with parking) so that a refusal can
/// park it. Nothing is copied for it: the payload is shared with the published message, and
/// the letter is written only if the server refuses.
struct Unacked<'a> {
    out: Outgoing,
    payload: Bytes,
    subject: &'a str,
}

impl Unacked<'_> {
    fn letter(self, reason: String) -> Letter {
        let mut letter = Letter::of(&self.out, self.subject, reason);
        letter.payload = Some(String::from_utf8_lossy(&self.payload).into_owned());
        letter
    }
}

/// Publishes messages in order and waits for every acknowledgement (at most `ACK_WINDOW`
/// outstanding, so memory stays bounded). With `parking`, a message the server refuses for good
/// is parked instead of failing the write, and so is every later message of a key that has a
/// parked message. `reverse`: see [`NatsSinkOptions::reverse`].
async fn publish(
    js: &jetstream::Context,
    subjects: &HashMap<TableName, String>,
    messages: Vec<Outgoing>,
    parking: Option<&Parking>,
    reverse: bool,
) -> Result<()> {
    if let Some(p) = parking {
        blocking(|| p.refresh())?;
    }
    let mut parked: Vec<Letter> = Vec::new();
    let mut acks: VecDeque<(PublishAckFuture, Option<Unacked>)> =
        VecDeque::with_capacity(ACK_WINDOW);
    for mut out in messages {
        let subject = subjects.get(&out.table.name).ok_or_else(|| {
            ConnectorError::fatal(format!(
                "table {} has no subject: it was not known when the sink opened",
                out.table.name
            ))
        })?;
        if let (Some(p), Some(key)) = (parking, out.message.key.as_deref()) {
            let key = String::from_utf8_lossy(key);
            if !key.is_empty()
                && (p.holds(&out.table.name, &key)
                    || parked
                        .iter()
                        .any(|o| o.key == key && o.table_name() == out.table.name))
            {
                parked.push(Letter::of(
                    &out,
                    subject,
                    "waiting behind an earlier parked message of this key".into(),
                ));
                continue;
            }
        }
        let id = message_id(&out, reverse);
        let payload = Bytes::from(out.message.payload.take().unwrap_or_default());
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(id)
            .header("Cutover-Lsn", out.position.commit_lsn.to_string().as_str())
            .header("Cutover-Op", out.message.op.name());
        if acks.len() >= ACK_WINDOW {
            let (ack, unacked) = acks.pop_front().expect("the window is full");
            settle(ack.await, unacked, &mut parked)?;
        }
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => acks.push_back((
                ack,
                parking.map(|_| Unacked {
                    out,
                    payload,
                    subject,
                }),
            )),
            Err(e) => {
                let kind = match e.kind() {
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => ErrorKind::Poison,
                    _ => ErrorKind::Retryable,
                };
                let e = nats_error(kind, &format!("cannot publish to {subject}"), e);
                if kind != ErrorKind::Poison || parking.is_none() {
                    return Err(e);
                }
                let unacked = Unacked {
                    out,
                    payload,
                    subject,
                };
                parked.push(unacked.letter(e.message));
            }
        }
    }
    for (ack, unacked) in acks {
        settle(ack.await, unacked, &mut parked)?;
    }
    if let Some(p) = parking {
        if !parked.is_empty() {
            blocking(|| p.park(parked))?;
        }
    }
    Ok(())
}

/// One acknowledgement of [`publish`]: a refusal for good parks the message when it was kept
/// for parking.
fn settle(
    ack: std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    unacked: Option<Unacked>,
    parked: &mut Vec<Letter>,
) -> Result<()> {
    if let Some(reason) = check_ack(ack, unacked.is_some())? {
        let unacked = unacked.expect("only a message kept for parking is refused for parking");
        parked.push(unacked.letter(reason));
    }
    Ok(())
}

/// Checks one acknowledgement: `Ok(None)` when the server took the message; `Ok(Some(why))`
/// when it refused it for good (the stream's maximum message or header size) and the message
/// can be `parkable`; an error otherwise (retryable unless refused for good).
fn check_ack(
    ack: std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    parkable: bool,
) -> Result<Option<String>> {
    let Err(e) = ack else {
        return Ok(None);
    };
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| {
            matches!(
                j.error_code(),
                jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        });
    let kind = if refused {
        ErrorKind::Poison
    } else {
        ErrorKind::Retryable
    };
    let e = nats_error(kind, "JetStream did not acknowledge a message", e);
    if refused && parkable {
        Ok(Some(format!(
            "{} (refused after later messages of the key may have been sent)",
            e.message
        )))
    } else {
        Err(e)
    }
}

/// Sends the sink's parked messages again, oldest first: those the server accepts now are
/// removed from the file; one still refused stays (with the new reason) and holds back its
/// key's later messages. Returns (sent, still parked). Safe while the pipeline runs.
pub async fn replay_dead_letters(options: &NatsSinkOptions) -> Result<(u64, u64)> {
    let Some(path) = &options.dead_letter_file else {
        return Ok((0, 0));
    };
    let client = open_client(
        options,
        format!("cutover-{}-{}-replay", options.pipeline, options.name),
    )
    .await?;
    let js = &jetstream::new(client);
    dead_letters::replay(&FileStore::new(path.clone()), |l| async move {
        // Its own id: a replay repeated within the duplicate window is dropped by the server.
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(l.payload.clone().unwrap_or_default()))
            .message_id(format!(
                "{}:{}:dead-letter-{}",
                l.commit_lsn, l.ordinal, l.id
            ))
            .header("Cutover-Lsn", l.commit_lsn.as_str())
            .header("Cutover-Op", l.op.as_str());
        let ack = js
            .send_publish(l.destination.clone(), message)
            .await
            .map_err(|e| {
                let kind = match e.kind() {
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => ErrorKind::Poison,
                    _ => ErrorKind::Retryable,
                };
                nats_error(kind, "cannot publish a parked message", e)
            })?;
        match check_ack(ack.await, true)? {
            None => Ok(()),
            Some(reason) => Err(ConnectorError::new(ErrorKind::Poison, reason)),
        }
    })
    .await
}

#[async_trait]
impl Transport for NatsTransport {
    type Route = String;

    fn name(&self) -> &str {
        &self.options.name
    }

    async fn prepare(&self, tables: &[Arc<TableSchema>]) -> Result<Routes<String>> {
        let mut subjects = HashMap::new();
        for table in tables {
            subjects.insert(table.name.clone(), self.subject_for(table)?);
        }
        let mut unique: Vec<String> = subjects.values().cloned().collect();
        unique.sort_unstable();
        unique.dedup();
        self.prepare_stream(&unique).await?;
        Ok(subjects)
    }

    async fn publish(
        &self,
        routes: &Routes<String>,
        messages: Vec<Outgoing>,
        parking: Option<&Parking>,
    ) -> Result<()> {
        publish(&self.js, routes, messages, parking, self.options.reverse).await
    }

    async fn load_state(&self) -> Result<SinkState> {
        let store = self.store.get_or_try_init(|| self.state_store()).await?;
        match store
            .get(self.state_key())
            .await
            .map_err(|e| nats_error(ErrorKind::Retryable, "cannot read the sink's progress", e))?
        {
            Some(doc) => SinkState::from_json(&doc),
            None => Ok(SinkState::default()),
        }
    }

    async fn save_state(&self, state: &SinkState) -> Result<()> {
        let store = self
            .store
            .get()
            .ok_or_else(|| ConnectorError::fatal("the sink was not opened"))?;
        store
            .put(self.state_key(), Bytes::from(state.to_json()))
            .await
            .map_err(|e| nats_error(ErrorKind::Retryable, "cannot save the sink's progress", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_filters_match() {
        assert!(check_stream_name("cutover_shop").is_ok());
        assert!(check_stream_name("a.b").is_err());
        assert!(check_subject("shop.public.orders").is_ok());
        assert!(check_subject("shop..orders").is_err());
        assert!(subject_matches("shop.>", "shop.public.orders"));
        assert!(subject_matches("shop.*.orders", "shop.public.orders"));
        assert!(!subject_matches("shop.*", "shop.public.orders"));
        assert_eq!(redacted("nats://user:pw@host:4222/x"), "host:4222");
    }
}
