//! The sink: buffering and folding changes, sealed writes, snapshot copies and the state
//! document.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{
    Checkpoint, ConnectorError, ErrorKind, Lsn, PendingWrite, Result, Row, Sink, SinkState,
    StreamEvent, TableCopy, TableName, TableSchema,
};
use mongodb::bson::{doc, Bson, DateTime, Document, RawDocumentBuf};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, DeleteManyModel, DeleteOneModel,
    ReplaceOneModel, UpdateOneModel, WriteConcern, WriteModel,
};
use mongodb::{Client, Collection, Namespace};
use tokio::sync::Mutex;

use crate::batch::{check_table, overlay, Batch, Op, Target};
use crate::error::{classify, failed_write, redact};
use crate::mapping::{document_id, plain_field_name, row_fields, with_id};
use crate::{
    check_collection_name, check_database_name, clean_name_part, MongoSinkOptions,
    MAX_NAMESPACE_BYTES, STATE_COLLECTION,
};
use cutover_core::dead_letters::{self, blocking, FileStore, Letter, Parking};

/// Write models sent per `bulkWrite` call (the driver splits further to the server's limits).
const MODELS_PER_CALL: usize = 10_000;

/// How long the driver looks for a reachable server before an operation fails, unless the url
/// sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// MongoDB 8.0's wire version: the first with the client-level `bulkWrite` command.
const BULK_WRITE_WIRE_VERSION: i64 = 25;

/// A MongoDB target: one collection per table, one document per row.
///
/// Contract (see [`Sink`]): changes are applied in the order they were buffered, each sealed
/// write with ordered bulk writes, so the changes of one row reach MongoDB in source order. Every
/// write is a replace, a partial update or a delete by `_id` (idempotent), so a replay after a
/// crash leaves the same documents. A write that ends at a source commit returns its checkpoint
/// only after the data and then the state document (write concern `majority`, journaled) are
/// written.
pub struct MongoSink {
    options: MongoSinkOptions,
    client: Client,
    /// `host:port,...` of the servers, for messages (never the url).
    servers: String,
    /// The target of each table seen, with the column layout it was checked for.
    targets: HashMap<TableName, (Arc<TableSchema>, Arc<Target>)>,
    /// Which table writes to which collection, to refuse two tables in one collection.
    collections: HashMap<String, TableName>,
    store: StateStore,
    batch: Batch,
    /// The commit that ended what was applied, if nothing was applied after it.
    last_commit: Option<Checkpoint>,
    buffered: usize,
    /// Where refused writes are parked, when the sink has a dead-letter file.
    parking: Option<Arc<Parking>>,
}

impl MongoSink {
    /// Connects and checks that the server answers (within 10 s unless the url sets
    /// `serverSelectionTimeoutMS`) and supports the `bulkWrite` command (MongoDB 8.0 or later).
    /// An unreachable server is a retryable error naming the server by host and port; a bad
    /// connection string, bad credentials or an old server are fatal with a fix.
    pub async fn connect(options: MongoSinkOptions) -> Result<MongoSink> {
        check_database_name(&options.database)
            .map_err(|e| ConnectorError::fatal(format!("MongoDB sink {}: {e}", options.name)))?;
        let (client, servers, hello) = open_client(&options).await?;
        let wire = match hello.get("maxWireVersion") {
            Some(Bson::Int32(v)) => i64::from(*v),
            Some(Bson::Int64(v)) => *v,
            _ => 0,
        };
        if wire < BULK_WRITE_WIRE_VERSION {
            return Err(ConnectorError::fatal(format!(
                "MongoDB sink {}: the server at {servers} speaks wire version {wire}, older than MongoDB 8.0 (25)",
                options.name
            ))
            .with_hint("cutover writes with the bulkWrite command of MongoDB 8.0: upgrade the server to 8.0 or later"));
        }
        let journaled = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build();
        let store = StateStore {
            collection: client.database(&options.database).collection_with_options(
                STATE_COLLECTION,
                CollectionOptions::builder()
                    .write_concern(journaled)
                    .build(),
            ),
            id: state_id(&options),
            shared: Arc::new(Mutex::new(Shared::default())),
        };
        tracing::info!(
            sink = %options.name,
            servers = %servers,
            database = %options.database,
            "connected to MongoDB"
        );
        Ok(MongoSink {
            client,
            servers,
            targets: HashMap::new(),
            collections: HashMap::new(),
            store,
            batch: Batch::default(),
            last_commit: None,
            buffered: 0,
            parking: Parking::for_file(options.dead_letter_file.as_ref()),
            options,
        })
    }

    /// The collection of a table, checked.
    fn collection_for(&self, table: &TableName) -> Result<String> {
        let name = self
            .options
            .collection
            .render(&self.options.pipeline, table, &clean_name_part);
        let refuse = |problem: String| {
            ConnectorError::fatal(format!(
                "MongoDB sink {}: table {table} cannot be written: {problem}",
                self.options.name
            ))
        };
        check_collection_name(&name).map_err(refuse)?;
        let namespace = self.options.database.len() + 1 + name.len();
        if namespace > MAX_NAMESPACE_BYTES {
            return Err(refuse(format!(
                "the namespace {}.{name} is {namespace} bytes long; MongoDB allows at most {MAX_NAMESPACE_BYTES}. \
                 Fix: shorten the sink's collection template or database name.",
                self.options.database
            )));
        }
        Ok(name)
    }

    /// The target of a change's table, checked when its layout is new.
    fn target(&mut self, layout: &Arc<TableSchema>) -> Result<Arc<Target>> {
        if let Some((known, target)) = self.targets.get_mut(&layout.name) {
            if !Arc::ptr_eq(known, layout) {
                check_table(layout)?;
                *known = layout.clone();
            }
            return Ok(target.clone());
        }
        check_table(layout)?;
        let coll = self.collection_for(&layout.name)?;
        if let Some(other) = self.collections.get(&coll) {
            return Err(ConnectorError::fatal(format!(
                "MongoDB sink {}: tables {other} and {} would both be written to collection {coll}, where their _ids could collide",
                self.options.name, layout.name
            ))
            .with_hint("put {table} (and {schema} when two schemas have tables of one name) in the sink's collection template"));
        }
        let target = Arc::new(Target {
            index: self.targets.len() as u32,
            table: layout.name.clone(),
            ns: Namespace::new(self.options.database.clone(), coll.clone()),
        });
        self.collections.insert(coll, layout.name.clone());
        self.targets
            .insert(layout.name.clone(), (layout.clone(), target.clone()));
        Ok(target)
    }

    fn collection(&self, name: &str) -> Collection<Document> {
        self.client
            .database(&self.options.database)
            .collection(name)
    }

    /// Refuses a collection that holds documents cutover did not write (the table is not copied
    /// and no copy of it was started): they would be mixed with the copy.
    /// Reads the sink's saved progress without preparing anything (`cutover status`).
    pub async fn saved_state(options: &MongoSinkOptions) -> Result<SinkState> {
        let sink = MongoSink::connect(options.clone()).await?;
        let loaded = sink.store.load().await;
        sink.client.shutdown().await;
        Ok(loaded?.state)
    }

    /// Deletes the sink's state document (`cutover teardown --target-state`), so the next run
    /// copies every table again. The collections are left as they are.
    pub async fn forget_state(options: &MongoSinkOptions) -> Result<()> {
        let sink = MongoSink::connect(options.clone()).await?;
        let deleted = sink
            .store
            .collection
            .delete_one(mongodb::bson::doc! {"_id": sink.store.id.clone()})
            .await
            .map_err(|e| classify(e, &sink.store.context()));
        sink.client.shutdown().await;
        deleted.map(|_| ())
    }

    async fn refuse_foreign_documents(&self, table: &TableName, coll: &str) -> Result<()> {
        let found = self
            .client
            .database(&self.options.database)
            .collection::<RawDocumentBuf>(coll)
            .find_one(doc! {})
            .projection(doc! {"_id": 1})
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!(
                        "MongoDB sink {}: cannot read collection {}.{coll} on {}",
                        self.options.name, self.options.database, self.servers
                    ),
                )
            })?;
        if found.is_none() {
            return Ok(());
        }
        Err(ConnectorError::fatal(format!(
            "MongoDB sink {}: collection {}.{coll} (for table {table}) already holds documents that cutover did not copy, and cutover will not overwrite them",
            self.options.name, self.options.database
        ))
        .with_hint(format!(
            "if they can go, drop the collection (db.getCollection(\"{coll}\").drop()); otherwise point the sink at another database or collection template"
        )))
    }
}

/// What the state document holds, shared by the sink's writes and its table copies.
#[derive(Debug, Clone, Default)]
struct Shared {
    state: SinkState,
    /// Collections whose snapshot copy was started and has not finished, with the snapshot's
    /// LSN: what they hold is cutover's, from that copy.
    copying: BTreeMap<String, Lsn>,
}

/// The `_id` of the sink's state document: `<pipeline>/<sink>`, with `.reverse` appended while
/// the pipeline streams the other way after a switch.
fn state_id(options: &MongoSinkOptions) -> String {
    cutover_core::target::directed_state_key(
        &format!("{}/{}", options.pipeline, options.name),
        options.reverse,
    )
}

/// The sink's state document: `{_id: "<pipeline>/<sink>", state: "<SinkState JSON>", copying:
/// [[collection, lsn], ...], updated_at: Date}` in the collection `cutover_state`.
#[derive(Clone)]
struct StateStore {
    /// With write concern `majority`, journaled: a saved state is durable, and so is everything
    /// the sink wrote before it.
    collection: Collection<Document>,
    id: String,
    shared: Arc<Mutex<Shared>>,
}

impl StateStore {
    fn context(&self) -> String {
        format!(
            "cannot save the state of MongoDB sink {} in {}.{STATE_COLLECTION}",
            self.id,
            self.collection.namespace().db
        )
    }

    /// Reads the saved state (the default when there is none).
    async fn load(&self) -> Result<Shared> {
        let found = self
            .collection
            .find_one(doc! {"_id": &self.id})
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!(
                        "cannot read the state of MongoDB sink {} from {}.{STATE_COLLECTION}",
                        self.id,
                        self.collection.namespace().db
                    ),
                )
            })?;
        let Some(found) = found else {
            return Ok(Shared::default());
        };
        let damaged = |what: &str| {
            ConnectorError::fatal(format!(
                "the state document {:?} in {}.{STATE_COLLECTION} is damaged: {what}",
                self.id,
                self.collection.namespace().db
            ))
            .with_hint("delete that document and drop the sink's collections, so that the tables are copied again")
        };
        let state = match found.get("state") {
            Some(Bson::String(json)) => SinkState::from_json(json.as_bytes())?,
            _ => return Err(damaged("no state string")),
        };
        let mut copying = BTreeMap::new();
        if let Some(Bson::Array(entries)) = found.get("copying") {
            for entry in entries {
                match entry.as_array().map(Vec::as_slice) {
                    Some([Bson::String(coll), Bson::String(lsn)]) => {
                        let lsn = lsn.parse().map_err(|_| damaged("a copy's LSN"))?;
                        copying.insert(coll.clone(), lsn);
                    }
                    _ => return Err(damaged("a copy entry is not [collection, lsn]")),
                }
            }
        }
        Ok(Shared { state, copying })
    }

    /// Changes the state and saves it, under the lock; the change is kept only when it is saved.
    async fn change(&self, f: impl FnOnce(&mut Shared)) -> Result<()> {
        let mut shared = self.shared.lock().await;
        let mut next = shared.clone();
        f(&mut next);
        let json = String::from_utf8(next.state.to_json()).expect("JSON text is UTF-8");
        let copying: Vec<Bson> = next
            .copying
            .iter()
            .map(|(coll, lsn)| Bson::Array(vec![coll.as_str().into(), lsn.to_string().into()]))
            .collect();
        self.collection
            .replace_one(
                doc! {"_id": &self.id},
                doc! {
                    "_id": &self.id,
                    "state": json,
                    "copying": copying,
                    "updated_at": DateTime::now(),
                },
            )
            .upsert(true)
            .await
            .map_err(|e| classify(e, &self.context()))?;
        *shared = next;
        Ok(())
    }
}

/// A write by `_id` in a form that can be parked and sent again.
#[derive(Debug, Clone)]
enum Form {
    /// Replace (or insert) the whole document.
    Replace(Document),
    Delete,
    /// `$set` of these fields, the document created if missing.
    Set(Document),
}

impl Form {
    fn op(&self) -> &'static str {
        match self {
            Form::Replace(_) => "replace",
            Form::Delete => "delete",
            Form::Set(_) => "set",
        }
    }

    fn model(self, ns: &Namespace, id: Bson) -> WriteModel {
        match self {
            Form::Replace(doc) => ReplaceOneModel::builder()
                .namespace(ns.clone())
                .filter(doc! {"_id": id})
                .replacement(doc)
                .upsert(true)
                .build()
                .into(),
            Form::Delete => DeleteOneModel::builder()
                .namespace(ns.clone())
                .filter(doc! {"_id": id})
                .build()
                .into(),
            Form::Set(fields) => UpdateOneModel::builder()
                .namespace(ns.clone())
                .filter(doc! {"_id": id})
                .update(doc! {"$set": fields})
                .upsert(true)
                .build()
                .into(),
        }
    }
}

/// A document `_id` as text, for dead letters (relaxed extended JSON).
fn id_text(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// Write models waiting to be sent, with the change each came from (for error messages) and,
/// when the sink parks refused writes, the form each can be parked in.
#[derive(Default)]
struct Models {
    models: Vec<WriteModel>,
    origins: Vec<(Arc<Target>, Option<Bson>)>,
    forms: Vec<Option<Form>>,
    parking: Option<Arc<Parking>>,
    /// The source position of the write, for dead letters.
    position: String,
}

impl Models {
    fn new(parking: Option<Arc<Parking>>, position: String) -> Models {
        Models {
            parking,
            position,
            ..Models::default()
        }
    }

    fn push(&mut self, target: &Arc<Target>, id: Option<Bson>, model: WriteModel) {
        self.models.push(model);
        self.origins.push((target.clone(), id));
        self.forms.push(None);
    }

    fn push_form(&mut self, target: &Arc<Target>, id: Bson, form: Form) {
        let kept = self.parking.as_ref().map(|_| form.clone());
        self.models.push(form.model(&target.ns, id.clone()));
        self.origins.push((target.clone(), Some(id)));
        self.forms.push(kept);
    }

    fn replace(&mut self, target: &Arc<Target>, doc: Document) {
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        self.push_form(target, id, Form::Replace(doc));
    }

    fn delete(&mut self, target: &Arc<Target>, id: Bson) {
        self.push_form(target, id, Form::Delete);
    }

    /// `$set` of `fields` (names that are not paths) on the document `id`, created if missing.
    fn set(&mut self, target: &Arc<Target>, id: Bson, mut fields: Document) {
        if fields.len() > 1 {
            // _id never changes; keep it only when it is all there is to set.
            fields.remove("_id");
        }
        self.push_form(target, id, Form::Set(fields));
    }

    fn truncate(&mut self, target: &Arc<Target>) {
        let model = DeleteManyModel::builder()
            .namespace(target.ns.clone())
            .filter(doc! {})
            .build();
        self.push(target, None, model.into());
    }

    /// The dead letter of write `i`, if it can be parked.
    fn letter(&self, i: usize, reason: String) -> Option<Letter> {
        let (target, id) = &self.origins[i];
        let form = self.forms[i].as_ref()?;
        let id = id.as_ref()?;
        let payload = match form {
            Form::Replace(d) | Form::Set(d) => Some(
                Bson::Document(d.clone())
                    .into_canonical_extjson()
                    .to_string(),
            ),
            Form::Delete => None,
        };
        Some(Letter {
            id: 0,
            schema: target.table.schema.clone(),
            table: target.table.name.clone(),
            key: id_text(id),
            op: form.op().to_string(),
            commit_lsn: self.position.clone(),
            ordinal: 0,
            destination: format!("{}.{}", target.ns.db, target.ns.coll),
            payload,
            reason,
            attempts: 1,
            parked_at: dead_letters::now_secs(),
            read_from: None,
        })
    }

    /// Whether write `i` is of a document that has a parked write (and so must wait).
    fn held(&self, i: usize, also: &[Letter]) -> bool {
        let Some(p) = &self.parking else {
            return false;
        };
        if also.is_empty() && !p.any() {
            return false;
        }
        let (target, Some(id)) = &self.origins[i] else {
            return false;
        };
        let key = id_text(id);
        p.holds(&target.table, &key)
            || also
                .iter()
                .any(|l| l.key == key && l.table_name() == target.table)
    }

    /// Sends everything waiting, in order, in ordered bulk writes. With parking, a write the
    /// server refuses for good is parked, and so is every later write of its document; the
    /// rest is sent.
    async fn send(&mut self, client: &Client, sink: &str) -> Result<()> {
        let mut parked: Vec<Letter> = Vec::new();
        if let Some(p) = &self.parking {
            blocking(|| p.refresh())?;
        }
        while !self.models.is_empty() {
            // Writes of documents with a parked write wait behind it (parked too).
            if self.held(0, &parked) {
                let letter = self
                    .letter(
                        0,
                        "waiting behind an earlier parked write of this document".into(),
                    )
                    .ok_or_else(|| ConnectorError::fatal("a held write cannot be parked"))?;
                parked.push(letter);
                self.models.remove(0);
                self.origins.remove(0);
                self.forms.remove(0);
                continue;
            }
            let mut n = self.models.len().min(MODELS_PER_CALL);
            if self.parking.is_some() {
                // Stop before the next held write so it can be parked in order.
                if let Some(h) = (1..n).find(|&i| self.held(i, &parked)) {
                    n = h;
                }
            }
            let models: Vec<WriteModel> = self.models.drain(..n).collect();
            let origins: Vec<_> = self.origins.drain(..n).collect();
            let forms: Vec<_> = self.forms.drain(..n).collect();
            if let Err(e) = client.bulk_write(models).ordered(true).await {
                let failed = failed_write(&e);
                let what = match failed.and_then(|i| origins.get(i)) {
                    Some((target, Some(id))) => format!(
                        "MongoDB sink {sink}: cannot write the row with _id {id} of table {} to {}.{}",
                        target.table, target.ns.db, target.ns.coll
                    ),
                    Some((target, None)) => format!(
                        "MongoDB sink {sink}: cannot empty {}.{} (truncate of table {})",
                        target.ns.db, target.ns.coll, target.table
                    ),
                    None => format!("MongoDB sink {sink}: cannot write"),
                };
                let e = classify(e, &what);
                let Some(i) =
                    failed.filter(|_| e.kind == ErrorKind::Poison && self.parking.is_some())
                else {
                    return Err(e);
                };
                // Writes before `i` are done; park `i`; put the rest back in front of what is
                // waiting (rebuilt from their forms: the driver took the models).
                let refused = Models {
                    origins,
                    forms,
                    position: self.position.clone(),
                    ..Models::default()
                };
                parked.push(refused.letter(i, e.message.clone()).ok_or(e)?);
                let mut tail = Vec::new();
                for (target, id) in &refused.origins[i + 1..] {
                    let j = tail.len() + i + 1;
                    let (Some(id), Some(form)) = (id, &refused.forms[j]) else {
                        return Err(ConnectorError::fatal(format!(
                            "{what}: a truncate followed a refused write in the same batch"
                        )));
                    };
                    tail.push(form.clone().model(&target.ns, id.clone()));
                }
                let Models { origins, forms, .. } = refused;
                self.models.splice(0..0, tail);
                self.origins.splice(0..0, origins.into_iter().skip(i + 1));
                self.forms.splice(0..0, forms.into_iter().skip(i + 1));
            }
        }
        if let Some(p) = &self.parking {
            if !parked.is_empty() {
                blocking(|| p.park(parked))?;
            }
        }
        Ok(())
    }
}

/// Sends the sink's parked writes again, oldest first: those the server accepts now are
/// removed from the file; one still refused stays (with the new reason) and holds back the
/// later writes of its document. Returns (written, still parked). Safe while the pipeline runs.
pub async fn replay_dead_letters(options: &MongoSinkOptions) -> Result<(u64, u64)> {
    let Some(path) = &options.dead_letter_file else {
        return Ok((0, 0));
    };
    let (owned, _, _) = open_client(options).await?;
    let client = &owned;
    let replayed = dead_letters::replay(&FileStore::new(path.clone()), |l| async move {
        let damaged = || {
            ConnectorError::fatal(format!(
                "dead letter {} in {} cannot be read back",
                l.id,
                path.display()
            ))
            .with_hint("repair or remove that line")
        };
        let bson = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| Bson::try_from(v).ok())
        };
        let (db, coll) = l.destination.split_once('.').ok_or_else(damaged)?;
        let doc_id = bson(&l.key).ok_or_else(damaged)?;
        let form = match (l.op.as_str(), l.payload.as_deref().map(bson)) {
            ("replace", Some(Some(Bson::Document(d)))) => Form::Replace(d),
            ("set", Some(Some(Bson::Document(d)))) => Form::Set(d),
            ("delete", None) => Form::Delete,
            _ => return Err(damaged()),
        };
        client
            .bulk_write([form.model(&Namespace::new(db, coll), doc_id)])
            .ordered(true)
            .await
            .map(|_| ())
            .map_err(|e| {
                classify(
                    e,
                    &format!("MongoDB sink {}: cannot write a parked write", options.name),
                )
            })
    })
    .await;
    owned.shutdown().await;
    replayed
}

/// Reads one document by `_id`, exactly as stored: it is read raw, because reading into a
/// `Document` through serde would turn a JSON column's `{"$numberLong": "5"}` into a number.
async fn read(client: &Client, target: &Target, id: &Bson, sink: &str) -> Result<Option<Document>> {
    let what = || {
        format!(
            "MongoDB sink {sink}: cannot read the document with _id {id} of table {} from {}.{}",
            target.table, target.ns.db, target.ns.coll
        )
    };
    let raw = client
        .database(&target.ns.db)
        .collection::<RawDocumentBuf>(&target.ns.coll)
        .find_one(doc! {"_id": id.clone()})
        .await
        .map_err(|e| classify(e, &what()))?;
    raw.map(Document::try_from)
        .transpose()
        .map_err(|e| ConnectorError::fatal(format!("{}: {e}", what())).with_source(e))
}

/// Sets `fields` on the document `id` and keeps its other fields.
async fn patch(
    client: &Client,
    models: &mut Models,
    target: &Arc<Target>,
    id: Bson,
    fields: Document,
    sink: &str,
) -> Result<()> {
    if fields.keys().all(|k| plain_field_name(k)) {
        models.set(target, id, fields);
        return Ok(());
    }
    // `$set` would read these names as paths: read the document and replace it.
    models.send(client, sink).await?;
    let doc = match read(client, target, &id, sink).await? {
        Some(mut doc) => {
            overlay(&mut doc, fields);
            doc
        }
        None => with_id(id, fields),
    };
    models.replace(target, doc);
    Ok(())
}

/// Applies folded operations in order.
async fn write_ops(
    client: &Client,
    ops: Vec<Op>,
    sink: &str,
    parking: Option<Arc<Parking>>,
    position: String,
) -> Result<()> {
    let mut models = Models::new(parking, position);
    for op in ops {
        match op {
            Op::Replace { target, doc } => models.replace(&target, doc),
            Op::Delete { target, id } => models.delete(&target, id),
            Op::Truncate { target } => models.truncate(&target),
            Op::Patch { target, id, fields } => {
                patch(client, &mut models, &target, id, fields, sink).await?
            }
            Op::Move {
                target,
                from,
                id,
                fields,
            } => {
                // The read must see every earlier write.
                models.send(client, sink).await?;
                match read(client, &target, &from, sink).await? {
                    Some(old) => {
                        let mut doc = with_id(id, old);
                        overlay(&mut doc, fields);
                        models.delete(&target, from);
                        models.replace(&target, doc);
                    }
                    // Already moved (a replay), or never copied: keep what `id` has.
                    None => patch(client, &mut models, &target, id, fields, sink).await?,
                }
            }
        }
        if models.models.len() >= MODELS_PER_CALL {
            models.send(client, sink).await?;
        }
    }
    models.send(client, sink).await
}

/// Everything one sealed write needs, owned, so that it can run while the sink buffers more.
struct Write {
    client: Client,
    ops: Vec<Op>,
    checkpoint: Option<Checkpoint>,
    store: StateStore,
    sink: String,
    parking: Option<Arc<Parking>>,
}

impl Write {
    async fn run(self) -> Result<Option<Checkpoint>> {
        let n = self.ops.len();
        let position = self
            .checkpoint
            .map(|cp| cp.commit_lsn.to_string())
            .unwrap_or_default();
        write_ops(&self.client, self.ops, &self.sink, self.parking, position).await?;
        if let Some(cp) = self.checkpoint {
            self.store
                .change(|shared| shared.state.checkpoint = Some(cp))
                .await?;
        }
        tracing::debug!(sink = %self.sink, writes = n, checkpoint = ?self.checkpoint, "MongoDB write done");
        Ok(self.checkpoint)
    }
}

#[async_trait]
impl Sink for MongoSink {
    fn name(&self) -> &str {
        &self.options.name
    }

    /// Ends the client's server sessions and closes its connections here. Left to its drop,
    /// the driver does that in a task of its own, and a process that exits meanwhile (`cutover
    /// check` right after its last look) saw the driver panic in that task.
    async fn close(self: Box<Self>) {
        self.client.shutdown().await;
    }

    /// Checks every table (a key, a valid collection name, one collection per table), reads the
    /// state document, and refuses collections of tables not yet copied that hold documents
    /// cutover did not write.
    async fn open(&mut self, tables: &[Arc<TableSchema>]) -> Result<SinkState> {
        for table in tables {
            self.target(table)?;
        }
        let shared = self.store.load().await?;
        for table in tables {
            let coll = self.targets[&table.name].1.ns.coll.clone();
            if !shared.state.copied_tables.contains_key(&table.name)
                && !shared.copying.contains_key(&coll)
                && self.options.adopt_at.is_none()
                && !self.options.applying
            {
                self.refuse_foreign_documents(&table.name, &coll).await?;
            }
        }
        let state = shared.state.clone();
        *self.store.shared.lock().await = shared;
        tracing::info!(
            sink = %self.options.name,
            database = %self.options.database,
            tables = tables.len(),
            checkpoint = ?state.checkpoint,
            copied = state.copied_tables.len(),
            "MongoDB sink open"
        );
        Ok(state)
    }

    /// Starts a copy. A copy of an older snapshot that did not finish is wiped first (it may hold
    /// rows deleted since); a copy of the same snapshot is continued (its rows are upserted).
    async fn add_table(&mut self, table: Arc<TableSchema>) -> Result<()> {
        self.target(&table)?;
        if self.options.applying {
            return Ok(());
        }
        let coll = self.targets[&table.name].1.ns.coll.clone();
        self.refuse_foreign_documents(&table.name, &coll).await
    }

    async fn begin_copy(
        &self,
        table: Arc<TableSchema>,
        snapshot_lsn: Lsn,
    ) -> Result<Box<dyn TableCopy>> {
        check_table(&table)?;
        let coll = self.collection_for(&table.name)?;
        let earlier = self.store.shared.lock().await.copying.get(&coll).copied();
        if let Some(lsn) = earlier.filter(|lsn| *lsn != snapshot_lsn) {
            tracing::info!(
                sink = %self.options.name,
                table = %table.name,
                collection = %coll,
                earlier_snapshot = %lsn,
                "removing the documents of an unfinished copy"
            );
            self.collection(&coll)
                .delete_many(doc! {})
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &format!(
                            "MongoDB sink {}: cannot empty {}.{coll} before copying {}",
                            self.options.name, self.options.database, table.name
                        ),
                    )
                })?;
        }
        if earlier != Some(snapshot_lsn) {
            let coll = coll.clone();
            self.store
                .change(move |shared| {
                    shared.copying.insert(coll, snapshot_lsn);
                })
                .await?;
        }
        Ok(Box::new(MongoCopy {
            client: self.client.clone(),
            target: Arc::new(Target {
                index: 0,
                table: table.name.clone(),
                ns: Namespace::new(self.options.database.clone(), coll),
            }),
            table,
            snapshot_lsn,
            rows: 0,
            store: self.store.clone(),
            sink: self.options.name.clone(),
            parking: self.parking.clone(),
        }))
    }

    async fn apply(&mut self, event: StreamEvent) -> Result<()> {
        self.buffered += event.size();
        match event {
            StreamEvent::Begin { .. } => self.last_commit = None,
            StreamEvent::Change(change) => {
                self.last_commit = None;
                let target = self.target(&change.table)?;
                self.batch.push(&target, &change.table, change.change)?;
            }
            StreamEvent::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.last_commit = Some(Checkpoint {
                    commit_lsn,
                    end_lsn,
                })
            }
        }
        Ok(())
    }

    /// The write applies the buffered changes in order; when the last event buffered was a
    /// commit, it then saves the state document with that checkpoint and returns it.
    fn seal(&mut self) -> PendingWrite {
        let ops = self.batch.take();
        let checkpoint = self.last_commit.take();
        self.buffered = 0;
        if ops.is_empty() && checkpoint.is_none() {
            return Box::pin(async { Ok(None) });
        }
        let write = Write {
            client: self.client.clone(),
            ops,
            checkpoint,
            store: self.store.clone(),
            sink: self.options.name.clone(),
            parking: self.parking.clone(),
        };
        Box::pin(write.run())
    }

    fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    fn parked(&self) -> u64 {
        Parking::count(self.parking.as_ref())
    }
}

/// One table's snapshot copy: rows are upserted by `_id` (a copy may be repeated after a crash),
/// and `finish` records the table as copied in the state document.
struct MongoCopy {
    client: Client,
    target: Arc<Target>,
    table: Arc<TableSchema>,
    snapshot_lsn: Lsn,
    rows: u64,
    store: StateStore,
    sink: String,
    parking: Option<Arc<Parking>>,
}

#[async_trait]
impl TableCopy for MongoCopy {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let mut models = Models::new(self.parking.clone(), self.snapshot_lsn.to_string());
        for row in rows {
            let id = document_id(&self.table, row)?;
            let fields = row_fields(&self.table, row, &id)?;
            models.replace(&self.target, with_id(id, fields));
            if models.models.len() >= MODELS_PER_CALL {
                models.send(&self.client, &self.sink).await?;
            }
        }
        models.send(&self.client, &self.sink).await?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let (name, coll, lsn) = (
            self.table.name.clone(),
            self.target.ns.coll.clone(),
            self.snapshot_lsn,
        );
        self.store
            .change(move |shared| {
                shared.state.copied_tables.insert(name, lsn);
                shared.copying.remove(&coll);
            })
            .await?;
        tracing::info!(
            sink = %self.sink,
            table = %self.table.name,
            rows = self.rows,
            snapshot_lsn = %self.snapshot_lsn,
            "MongoDB copy finished"
        );
        Ok(self.rows)
    }
}

/// Connects with the sink's url handling and timeouts and asks the server `hello`. Returns the
/// client, the servers as `host:port,...` for messages, and the server's `hello` answer. An
/// unreachable server is retryable; a bad connection string is fatal with a fix; the url (which
/// may hold a password) never reaches a message.
pub(crate) async fn open_client(options: &MongoSinkOptions) -> Result<(Client, String, Document)> {
    let mut client_options = ClientOptions::parse(&options.url).await.map_err(|e| {
        let kind = match *e.kind {
            mongodb::error::ErrorKind::DnsResolve { .. } => ErrorKind::Retryable,
            _ => ErrorKind::Fatal,
        };
        // The driver error is not kept as the source: its text may quote the url.
        ConnectorError::new(
            kind,
            format!(
                "the url of MongoDB sink {} is not a usable connection string: {}",
                options.name,
                redact(&e.kind.to_string(), &options.url)
            ),
        )
        .with_hint(
            "write it as mongodb://USER:PASSWORD@HOST:PORT/?OPTIONS (percent-encode ':', '/', '?', '#', '@' and '%' in the user name and password)",
        )
    })?;
    let servers = client_options
        .hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    client_options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    client_options
        .connect_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    client_options
        .app_name
        .get_or_insert_with(|| "cutover".to_string());
    let client = Client::with_options(client_options).map_err(|e| {
        classify(
            e,
            &format!("MongoDB sink {}: cannot set up the client", options.name),
        )
    })?;
    let hello = client
        .database(&options.database)
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| {
            classify(
                e,
                &format!(
                    "MongoDB sink {}: cannot reach the server at {servers}",
                    options.name
                ),
            )
        })?;
    Ok((client, servers, hello))
}
