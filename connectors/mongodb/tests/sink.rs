//! The MongoDB sink against a real server (SecantusDB or MongoDB 8), driven through the `Sink`
//! trait, with each test's documents read back in full.
//!
//! The server's url comes from `CUTOVER_TEST_MONGO_URL`; every test writes to a database of its
//! own, so the tests run in parallel.

mod common;

use common::{column, txn};

use std::slice::from_ref;
use std::sync::Arc;

use bytes::Bytes;
use cutover_core::datum::oid;
use cutover_core::naming::Template;
use cutover_core::{
    Change, Checkpoint, ErrorKind, Lsn, Row, Sink, SinkState, StreamEvent, TableName, TableSchema,
    Value,
};
use cutover_mongodb::{MongoSink, MongoSinkOptions};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime, Decimal128, Document, RawDocumentBuf};
use mongodb::Client;

fn options(database: &str, name: &str) -> MongoSinkOptions {
    MongoSinkOptions {
        url: common::url(),
        name: name.to_string(),
        ..options_without_url(database)
    }
}

/// Options for tests that need no server.
fn options_without_url(database: &str) -> MongoSinkOptions {
    MongoSinkOptions {
        name: "docs".to_string(),
        pipeline: "shop".to_string(),
        url: String::new(),
        database: database.to_string(),
        collection: Template::parse("{schema}_{table}").unwrap(),
        dead_letter_file: None,
        reverse: false,
        adopt_at: None,
        applying: false,
    }
}

async fn connect(database: &str) -> MongoSink {
    MongoSink::connect(options(database, "docs")).await.unwrap()
}

async fn client() -> Client {
    Client::with_uri_str(common::url()).await.unwrap()
}

/// Every document of a collection, exactly as stored (read raw: reading into a `Document`
/// through serde would interpret keys such as `$oid`), ordered by `_id`'s text.
async fn documents(database: &str, collection: &str) -> Vec<Document> {
    let client = client().await;
    let mut cursor = client
        .database(database)
        .collection::<RawDocumentBuf>(collection)
        .find(doc! {})
        .await
        .unwrap();
    let mut docs = Vec::new();
    while cursor.advance().await.unwrap() {
        docs.push(Document::try_from(cursor.current()).unwrap());
    }
    sorted(docs)
}

fn sorted(mut docs: Vec<Document>) -> Vec<Document> {
    docs.sort_by_key(|d| format!("{:?}", d.get("_id")));
    docs
}

/// `public.items (id int4 primary key, name text, big text, qty int8)`; `big` stands for a
/// TOASTed column.
fn items() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: TableName::new("public", "items"),
        columns: vec![
            column("id", oid::INT4, true),
            column("name", oid::TEXT, false),
            column("big", oid::TEXT, false),
            column("qty", oid::INT8, false),
        ],
    })
}

fn i4(v: i32) -> Value {
    Value::Binary(Bytes::copy_from_slice(&v.to_be_bytes()))
}

fn i8(v: i64) -> Value {
    Value::Binary(Bytes::copy_from_slice(&v.to_be_bytes()))
}

fn text(s: &str) -> Value {
    Value::Binary(Bytes::copy_from_slice(s.as_bytes()))
}

/// A row of `items`; `big: None` is a TOAST value the update did not send.
fn item(id: i32, name: &str, big: Option<&str>, qty: i64) -> Row {
    Row(vec![
        i4(id),
        text(name),
        big.map_or(Value::Unchanged, text),
        i8(qty),
    ])
}

/// The document of an `items` row.
fn item_doc(id: i32, name: &str, big: &str, qty: i64) -> Document {
    doc! {"_id": id, "id": id, "name": name, "big": big, "qty": qty}
}

fn key(id: i32) -> Row {
    Row(vec![i4(id), Value::Null, Value::Null, Value::Null])
}

fn checkpoint(lsn: u64) -> Option<Checkpoint> {
    Some(Checkpoint {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 1),
    })
}

async fn apply_and_seal(sink: &mut MongoSink, events: Vec<StreamEvent>) -> Option<Checkpoint> {
    sink.apply_all(events).await.unwrap();
    sink.seal().await.unwrap()
}

/// The saved state, read back from the state document (`None` before the first save).
async fn saved_state(database: &str, id: &str) -> Option<SinkState> {
    let found = client()
        .await
        .database(database)
        .collection::<Document>("cutover_state")
        .find_one(doc! {"_id": id})
        .await
        .unwrap()?;
    Some(SinkState::from_json(found.get_str("state").unwrap().as_bytes()).unwrap())
}

/// Opens the sink and records `tables` as copied (empty) at LSN 1, as the runtime would before
/// streaming.
async fn open_copied(sink: &mut MongoSink, tables: &[Arc<TableSchema>]) {
    sink.open(tables).await.unwrap();
    for table in tables {
        let copy = sink.begin_copy(table.clone(), Lsn(1)).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn inserts_updates_deletes_and_key_changes_reach_the_collection() {
    let db = common::unique_database("cutover_t", "stream");
    let table = items();
    let mut sink = connect(&db).await;
    assert_eq!(
        sink.open(from_ref(&table)).await.unwrap(),
        SinkState::default()
    );

    let cp = apply_and_seal(
        &mut sink,
        txn(
            100,
            &table,
            vec![
                Change::Insert {
                    row: item(1, "one", Some("B1"), 10),
                },
                Change::Insert {
                    row: item(2, "two", Some("B2"), 20),
                },
                Change::Insert {
                    row: item(3, "three", Some("B3"), 30),
                },
            ],
        ),
    )
    .await;
    assert_eq!(cp, checkpoint(100));
    assert_eq!(
        documents(&db, "public_items").await,
        vec![
            item_doc(1, "one", "B1", 10),
            item_doc(2, "two", "B2", 20),
            item_doc(3, "three", "B3", 30)
        ]
    );

    let mut events = txn(
        200,
        &table,
        vec![
            Change::Update {
                old_key: None,
                row: item(1, "uno", Some("B1x"), 11),
            },
            Change::Delete { key: key(2) },
            Change::Update {
                old_key: Some(key(3)),
                row: item(4, "four", Some("B4"), 40),
            },
        ],
    );
    events.extend(txn(
        300,
        &table,
        vec![Change::Insert {
            row: item(5, "five", Some("B5"), 50),
        }],
    ));
    assert_eq!(apply_and_seal(&mut sink, events).await, checkpoint(300));
    assert_eq!(
        documents(&db, "public_items").await,
        vec![
            item_doc(1, "uno", "B1x", 11),
            item_doc(4, "four", "B4", 40),
            item_doc(5, "five", "B5", 50)
        ]
    );
    assert_eq!(
        saved_state(&db, "shop/docs").await.unwrap().checkpoint,
        checkpoint(300)
    );
}

#[tokio::test]
async fn an_update_without_a_toast_value_keeps_the_stored_one() {
    let db = common::unique_database("cutover_t", "toast");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    apply_and_seal(
        &mut sink,
        txn(
            100,
            &table,
            vec![
                Change::Insert {
                    row: item(1, "one", Some("B1"), 10),
                },
                Change::Insert {
                    row: item(2, "two", Some("B2"), 20),
                },
                Change::Insert {
                    row: item(3, "three", Some("B3"), 30),
                },
            ],
        ),
    )
    .await;

    // The document is in MongoDB only: a $set of the sent fields.
    let first = txn(
        200,
        &table,
        vec![
            Change::Update {
                old_key: None,
                row: item(1, "uno", None, 11),
            },
            Change::Update {
                old_key: None,
                row: item(2, "dos", None, 22),
            },
            Change::Update {
                old_key: None,
                row: item(2, "dos", None, 23),
            },
            // A key change without the TOAST value: the old document's value moves along.
            Change::Update {
                old_key: Some(key(3)),
                row: item(30, "thirty", None, 300),
            },
            // In one batch with its insert: folded into a full replace.
            Change::Insert {
                row: item(7, "seven", Some("B7"), 70),
            },
            Change::Update {
                old_key: None,
                row: item(7, "siete", None, 77),
            },
        ],
    );
    assert_eq!(
        apply_and_seal(&mut sink, first.clone()).await,
        checkpoint(200)
    );
    let expected = vec![
        item_doc(1, "uno", "B1", 11),
        item_doc(2, "dos", "B2", 23),
        item_doc(30, "thirty", "B3", 300),
        item_doc(7, "siete", "B7", 77),
    ];
    assert_eq!(
        documents(&db, "public_items").await,
        sorted(expected.clone())
    );

    // Replayed after a crash: the moved document is found at its new key, nothing is lost.
    assert_eq!(apply_and_seal(&mut sink, first).await, checkpoint(200));
    assert_eq!(documents(&db, "public_items").await, sorted(expected));
}

#[tokio::test]
async fn a_dotted_column_name_is_a_field_not_a_path() {
    let db = common::unique_database("cutover_t", "dotted");
    let notes = Arc::new(TableSchema {
        name: TableName::new("public", "notes"),
        columns: vec![
            column("id", oid::INT4, true),
            column("big", oid::JSONB, false),
            column("note.x", oid::TEXT, false),
        ],
    });
    let mut sink = connect(&db).await;
    sink.open(from_ref(&notes)).await.unwrap();
    let row = |big: Option<&str>, note: &str| {
        Row(vec![i4(1), big.map_or(Value::Unchanged, text), text(note)])
    };
    apply_and_seal(
        &mut sink,
        txn(
            100,
            &notes,
            vec![Change::Insert {
                row: row(Some("\x01{\"$numberLong\": \"5\"}"), "n1"),
            }],
        ),
    )
    .await;
    // `$set` would read "note.x" as a path: the sink reads the document and replaces it, and
    // keeps the stored JSON exactly (a key like "$numberLong" is not read as a number).
    apply_and_seal(
        &mut sink,
        txn(
            200,
            &notes,
            vec![Change::Update {
                old_key: None,
                row: row(None, "n2"),
            }],
        ),
    )
    .await;
    assert_eq!(
        documents(&db, "public_notes").await,
        vec![doc! {"_id": 1, "id": 1, "big": {"$numberLong": "5"}, "note.x": "n2"}]
    );
}

#[tokio::test]
async fn truncate_empties_the_collection_in_order() {
    let db = common::unique_database("cutover_t", "truncate");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    let mut events = txn(
        100,
        &table,
        vec![
            Change::Insert {
                row: item(1, "one", Some("B1"), 10),
            },
            Change::Insert {
                row: item(2, "two", Some("B2"), 20),
            },
        ],
    );
    events.extend(txn(200, &table, vec![Change::Truncate]));
    events.extend(txn(
        300,
        &table,
        vec![
            Change::Insert {
                row: item(2, "again", Some("B"), 2),
            },
            Change::Insert {
                row: item(3, "three", Some("B3"), 30),
            },
        ],
    ));
    assert_eq!(apply_and_seal(&mut sink, events).await, checkpoint(300));
    assert_eq!(
        documents(&db, "public_items").await,
        vec![item_doc(2, "again", "B", 2), item_doc(3, "three", "B3", 30)]
    );
    apply_and_seal(&mut sink, txn(400, &table, vec![Change::Truncate])).await;
    assert!(documents(&db, "public_items").await.is_empty());
}

#[tokio::test]
async fn a_seal_inside_a_transaction_writes_without_a_checkpoint() {
    let db = common::unique_database("cutover_t", "midtxn");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    let mut events = txn(
        100,
        &table,
        vec![
            Change::Insert {
                row: item(1, "one", Some("B1"), 10),
            },
            Change::Insert {
                row: item(2, "two", Some("B2"), 20),
            },
        ],
    );
    let commit = events.pop().unwrap();
    assert_eq!(sink.buffered_bytes(), 0);
    sink.apply_all(events).await.unwrap();
    assert!(sink.buffered_bytes() > 0);
    assert_eq!(sink.seal().await.unwrap(), None);
    assert_eq!(sink.buffered_bytes(), 0);
    assert_eq!(documents(&db, "public_items").await.len(), 2);
    assert_eq!(saved_state(&db, "shop/docs").await, None);
    sink.apply(commit).await.unwrap();
    assert_eq!(sink.seal().await.unwrap(), checkpoint(100));
    assert_eq!(
        saved_state(&db, "shop/docs").await.unwrap().checkpoint,
        checkpoint(100)
    );
    // Nothing buffered: nothing to do.
    assert_eq!(sink.seal().await.unwrap(), None);
}

#[tokio::test]
async fn a_sealed_write_runs_while_the_sink_buffers_more() {
    let db = common::unique_database("cutover_t", "overlap");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    sink.apply_all(txn(
        100,
        &table,
        vec![Change::Insert {
            row: item(1, "one", Some("B1"), 10),
        }],
    ))
    .await
    .unwrap();
    let first = tokio::spawn(sink.seal());
    sink.apply_all(txn(
        200,
        &table,
        vec![Change::Update {
            old_key: None,
            row: item(1, "uno", None, 11),
        }],
    ))
    .await
    .unwrap();
    assert_eq!(first.await.unwrap().unwrap(), checkpoint(100));
    assert_eq!(sink.seal().await.unwrap(), checkpoint(200));
    assert_eq!(
        documents(&db, "public_items").await,
        vec![item_doc(1, "uno", "B1", 11)]
    );
}

#[tokio::test]
async fn replaying_a_batch_gives_the_same_documents() {
    let db = common::unique_database("cutover_t", "replay");
    let table = items();
    let mut sink = connect(&db).await;
    open_copied(&mut sink, from_ref(&table)).await;
    apply_and_seal(
        &mut sink,
        txn(
            100,
            &table,
            vec![
                Change::Insert {
                    row: item(1, "one", Some("B1"), 10),
                },
                Change::Insert {
                    row: item(2, "two", Some("B2"), 20),
                },
            ],
        ),
    )
    .await;
    let mut batch = txn(
        200,
        &table,
        vec![
            Change::Insert {
                row: item(3, "three", Some("B3"), 30),
            },
            Change::Update {
                old_key: None,
                row: item(1, "uno", None, 11),
            },
            Change::Update {
                old_key: Some(key(2)),
                row: item(20, "veinte", None, 200),
            },
            Change::Delete { key: key(3) },
        ],
    );
    batch.extend(txn(
        300,
        &table,
        vec![
            Change::Update {
                old_key: Some(key(20)),
                row: item(21, "x", Some("B21"), 210),
            },
            Change::Insert {
                row: item(4, "four", Some("B4"), 40),
            },
        ],
    ));
    assert_eq!(
        apply_and_seal(&mut sink, batch.clone()).await,
        checkpoint(300)
    );
    let once = documents(&db, "public_items").await;
    assert_eq!(
        once,
        vec![
            item_doc(1, "uno", "B1", 11),
            item_doc(21, "x", "B21", 210),
            item_doc(4, "four", "B4", 40)
        ]
    );
    // A new sink (a restart) replays the same batch.
    let mut again = connect(&db).await;
    assert_eq!(
        again.open(from_ref(&table)).await.unwrap().checkpoint,
        checkpoint(300)
    );
    assert_eq!(apply_and_seal(&mut again, batch).await, checkpoint(300));
    assert_eq!(documents(&db, "public_items").await, once);
}

#[tokio::test]
async fn snapshot_copies_are_recorded_and_reopened() {
    let db = common::unique_database("cutover_t", "copy");
    let table = items();
    let other = Arc::new(TableSchema {
        name: TableName::new("sales", "orders"),
        columns: vec![
            column("id", oid::INT8, true),
            column("total", oid::NUMERIC, false),
        ],
    });
    let mut sink = connect(&db).await;
    assert_eq!(
        sink.open(&[table.clone(), other.clone()]).await.unwrap(),
        SinkState::default()
    );

    // Two copies at once.
    let mut a = sink.begin_copy(table.clone(), Lsn(50)).await.unwrap();
    let mut b = sink.begin_copy(other.clone(), Lsn(50)).await.unwrap();
    a.write(&[
        item(1, "one", Some("B1"), 10),
        item(2, "two", Some("B2"), 20),
    ])
    .await
    .unwrap();
    // numeric 12.50: ndigits 2, weight 0, sign +, dscale 2, digits 12 5000.
    let total = Value::Binary(Bytes::from_static(&[
        0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88,
    ]));
    b.write(&[Row(vec![i8(9), total])]).await.unwrap();
    // A copy repeated after a crash upserts; it never fails on existing documents.
    a.write(&[
        item(2, "two", Some("B2"), 20),
        item(3, "three", Some("B3"), 30),
    ])
    .await
    .unwrap();
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    assert_eq!((ra.unwrap(), rb.unwrap()), (4, 1));
    assert_eq!(
        documents(&db, "public_items").await,
        vec![
            item_doc(1, "one", "B1", 10),
            item_doc(2, "two", "B2", 20),
            item_doc(3, "three", "B3", 30)
        ]
    );
    assert_eq!(
        documents(&db, "sales_orders").await,
        vec![doc! {"_id": 9i64, "id": 9i64, "total": "12.50".parse::<Decimal128>().unwrap()}]
    );
    apply_and_seal(
        &mut sink,
        txn(60, &table, vec![Change::Delete { key: key(1) }]),
    )
    .await;

    let mut reopened = connect(&db).await;
    let state = reopened
        .open(&[table.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(
        state,
        SinkState {
            checkpoint: checkpoint(60),
            copied_tables: [(table.name.clone(), Lsn(50)), (other.name.clone(), Lsn(50))].into(),
            ..SinkState::default()
        }
    );
    assert_eq!(saved_state(&db, "shop/docs").await, Some(state));
}

#[tokio::test]
async fn an_unfinished_copy_is_redone_from_scratch_after_a_restart() {
    let db = common::unique_database("cutover_t", "recopy");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    let mut copy = sink.begin_copy(table.clone(), Lsn(50)).await.unwrap();
    copy.write(&[
        item(1, "one", Some("B1"), 10),
        item(2, "two", Some("B2"), 20),
    ])
    .await
    .unwrap();
    drop(copy); // the process dies before the copy finishes

    // The restarted sink knows the documents are its own, and not copied.
    let mut restarted = connect(&db).await;
    assert_eq!(
        restarted.open(from_ref(&table)).await.unwrap(),
        SinkState::default()
    );
    // A new snapshot, in which row 1 no longer exists.
    let mut copy = restarted.begin_copy(table.clone(), Lsn(80)).await.unwrap();
    copy.write(&[item(2, "two", Some("B2"), 20)]).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 1);
    assert_eq!(
        documents(&db, "public_items").await,
        vec![item_doc(2, "two", "B2", 20)]
    );
    let state = saved_state(&db, "shop/docs").await.unwrap();
    assert_eq!(state.copied_tables, [(table.name.clone(), Lsn(80))].into());
}

#[tokio::test]
async fn documents_cutover_did_not_write_are_refused() {
    let db = common::unique_database("cutover_t", "foreign");
    client()
        .await
        .database(&db)
        .collection::<Document>("public_items")
        .insert_one(doc! {"_id": 1, "theirs": true})
        .await
        .unwrap();
    let mut sink = connect(&db).await;
    let e = sink.open(&[items()]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal);
    assert!(e.message.contains("public_items"), "{e}");
    assert!(e.hint.is_some());
}

#[tokio::test]
async fn tables_mongodb_cannot_key_are_refused_at_open() {
    let db = common::unique_database("cutover_t", "nokey");
    let mut sink = connect(&db).await;
    let keyless = Arc::new(TableSchema {
        name: TableName::new("public", "log"),
        columns: vec![column("line", oid::TEXT, false)],
    });
    let e = sink.open(&[keyless]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal);
    assert!(e.message.contains("public.log") && e.hint.is_some(), "{e}");

    // Two tables in one collection would mix their _ids.
    let mut options = options(&db, "docs");
    options.collection = Template::parse("all").unwrap();
    let mut sink = MongoSink::connect(options).await.unwrap();
    let other = Arc::new(TableSchema {
        name: TableName::new("public", "other"),
        ..(*items()).clone()
    });
    let e = sink.open(&[items(), other]).await.unwrap_err();
    assert!(e.message.contains("both"), "{e}");
}

#[tokio::test]
async fn every_type_maps_as_documented() {
    let db = common::unique_database("cutover_t", "types");
    let table = Arc::new(TableSchema {
        name: TableName::new("public", "typed"),
        columns: vec![
            column("region", oid::TEXT, true),
            column("n", oid::INT8, true),
            column("flag", oid::BOOL, false),
            column("small", oid::INT2, false),
            column("ratio", oid::FLOAT8, false),
            column("price", oid::NUMERIC, false),
            column("at", oid::TIMESTAMPTZ, false),
            column("day", oid::DATE, false),
            column("until", oid::TIMESTAMP, false),
            column("uid", oid::UUID, false),
            column("raw", oid::BYTEA, false),
            column("meta", oid::JSONB, false),
            column("tags", 1007, false),
            column("mood", 99_999, false),
        ],
    });
    let b = |v: &[u8]| Value::Binary(Bytes::copy_from_slice(v));
    let mut tags = Vec::new();
    for v in [1i32, 1, 23, 2, 1] {
        tags.extend(v.to_be_bytes());
    }
    for v in [Some(7i32), None] {
        match v {
            Some(v) => {
                tags.extend(4i32.to_be_bytes());
                tags.extend(v.to_be_bytes());
            }
            None => tags.extend((-1i32).to_be_bytes()),
        }
    }
    let uuid: [u8; 16] = *b"0123456789abcdef";
    let row = Row(vec![
        text("eu"),
        i8(5),
        b(&[1]),
        b(&(-3i16).to_be_bytes()),
        b(&f64::NAN.to_be_bytes()),
        // numeric NaN
        b(&[0, 0, 0, 0, 0xC0, 0, 0, 0]),
        b(&1_500i64.to_be_bytes()),
        b(&1i32.to_be_bytes()),
        b(&i64::MAX.to_be_bytes()),
        b(&uuid),
        b(&[0, 255]),
        b(b"\x01{\"b\": [1, 2.5], \"a\": {\"$oid\": \"x\"}}"),
        b(&tags),
        b(b"happy"),
    ]);
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    apply_and_seal(&mut sink, txn(100, &table, vec![Change::Insert { row }])).await;
    let docs = documents(&db, "public_typed").await;
    assert_eq!(docs.len(), 1);
    let got = &docs[0];
    let epoch_2000 = 946_684_800_000i64;
    let expected = doc! {
        "_id": {"region": "eu", "n": 5i64},
        "region": "eu",
        "n": 5i64,
        "flag": true,
        "small": -3i32,
        "ratio": f64::NAN,
        "price": "NaN".parse::<Decimal128>().unwrap(),
        "at": DateTime::from_millis(epoch_2000 + 1),
        "day": DateTime::from_millis(epoch_2000 + 86_400_000),
        "until": "infinity",
        "uid": Binary { subtype: BinarySubtype::Uuid, bytes: uuid.to_vec() },
        "raw": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 255] },
        "meta": {"b": [1i32, 2.5], "a": {"$oid": "x"}},
        "tags": [7i32, Bson::Null],
        "mood": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: b"happy".to_vec() },
    };
    // NaN is not equal to itself: compare it apart, and everything else exactly.
    assert!(matches!(got.get("ratio"), Some(Bson::Double(d)) if d.is_nan()));
    let without_nan = |d: &Document| {
        let mut d = d.clone();
        d.insert("ratio", 0.0);
        d
    };
    assert_eq!(without_nan(got), without_nan(&expected));
    let keys: Vec<&String> = got.keys().collect();
    let expected_keys: Vec<&String> = expected.keys().collect();
    assert_eq!(keys, expected_keys);
}

#[tokio::test]
async fn a_value_mongodb_cannot_hold_is_poison_naming_table_column_and_key() {
    let db = common::unique_database("cutover_t", "poison");
    let table = Arc::new(TableSchema {
        name: TableName::new("public", "amounts"),
        columns: vec![
            column("id", oid::INT4, true),
            column("amount", oid::NUMERIC, false),
        ],
    });
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    // 37 significant digits: 1 2345 6789 0123 4567 8901 2345 6789 0123 4567.
    let mut big = Vec::new();
    for v in [10i16, 9, 0, 0] {
        big.extend(v.to_be_bytes());
    }
    for d in [1i16, 2345, 6789, 123, 4567, 8901, 2345, 6789, 123, 4567] {
        big.extend(d.to_be_bytes());
    }
    let e = sink
        .apply_all(txn(
            100,
            &table,
            vec![Change::Insert {
                row: Row(vec![i4(7), Value::Binary(Bytes::from(big))]),
            }],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Poison);
    for part in ["public.amounts", "amount", "_id 7"] {
        assert!(e.message.contains(part), "{part} is not in: {e}");
    }
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_without_showing_the_password() {
    let started = std::time::Instant::now();
    let e = MongoSink::connect(MongoSinkOptions {
        url: "mongodb://app:hunter2@127.0.0.1:9/?serverSelectionTimeoutMS=500".into(),
        ..options_without_url("shop")
    })
    .await
    .err()
    .expect("no server listens on port 9");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(e.kind, ErrorKind::Retryable);
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("127.0.0.1:9"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn a_write_the_server_refuses_is_poison_naming_the_row() {
    let db = common::unique_database("cutover_t", "dup");
    let table = items();
    let mut sink = connect(&db).await;
    sink.open(from_ref(&table)).await.unwrap();
    // An index the operator added: two rows may not share a name.
    client()
        .await
        .database(&db)
        .collection::<Document>("public_items")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"name": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    sink.apply_all(txn(
        100,
        &table,
        vec![
            Change::Insert {
                row: item(1, "same", Some("B1"), 10),
            },
            Change::Insert {
                row: item(2, "same", Some("B2"), 20),
            },
        ],
    ))
    .await
    .unwrap();
    let e = sink.seal().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Poison, "{e}");
    assert!(
        e.message.contains("_id 2") && e.message.contains("public.items"),
        "{e}"
    );
    // Ordered: the first row was written, nothing after the refused one.
    assert_eq!(
        documents(&db, "public_items").await,
        vec![item_doc(1, "same", "B1", 10)]
    );
    assert_eq!(saved_state(&db, "shop/docs").await, None);
}

#[tokio::test]
async fn a_bad_url_is_fatal_without_showing_the_password() {
    let bad = MongoSinkOptions {
        url: "mongodb://app:s3cret-pw@db.internal:notaport/".into(),
        ..options_without_url("shop")
    };
    let e = MongoSink::connect(bad)
        .await
        .err()
        .expect("the port is not a number");
    assert_eq!(e.kind, ErrorKind::Fatal);
    assert!(e.hint.is_some());
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
}
