//! The checker's MongoDB reader against a real server (SecantusDB or MongoDB 8): rows written
//! through the real sink read back to exactly the canonical form of the source rows, and
//! documents changed behind the sink's back show up as the right differences.
//!
//! The server's url comes from `CUTOVER_TEST_MONGO_URL` (or the line exporting it in
//! `/tmp/cutover-services/env`); every test writes to a database of its own.

mod common;

use common::column;

use std::slice::from_ref;
use std::sync::Arc;

use bytes::Bytes;
use cutover_core::datum::oid;
use cutover_core::naming::Template;
use cutover_core::verify::canonical::{render_value, tag};
use cutover_core::verify::{
    canon_row, compare_rows, key_columns, Bound, CanonRow, KeyBound, Precision, RowDiff,
    ScanLimits, TableSide,
};
use cutover_core::{Change, Row, Sink, StreamEvent, TableName, TableSchema, Value};
use cutover_mongodb::verify::MongoTableSide;
use cutover_mongodb::{MongoSink, MongoSinkOptions};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{Client, Collection};

fn options(database: &str) -> MongoSinkOptions {
    MongoSinkOptions {
        name: "docs".to_string(),
        pipeline: "shop".to_string(),
        url: common::url(),
        database: database.to_string(),
        collection: Template::parse("{schema}_{table}").unwrap(),
        dead_letter_file: None,
        reverse: false,
        adopt_at: None,
        applying: false,
    }
}

async fn collection(database: &str, name: &str) -> Collection<Document> {
    Client::with_uri_str(common::url())
        .await
        .unwrap()
        .database(database)
        .collection(name)
}

fn bin(b: &[u8]) -> Value {
    Value::Binary(Bytes::copy_from_slice(b))
}

fn i2(v: i16) -> Value {
    bin(&v.to_be_bytes())
}

fn i4(v: i32) -> Value {
    bin(&v.to_be_bytes())
}

fn i8(v: i64) -> Value {
    bin(&v.to_be_bytes())
}

fn text(s: &str) -> Value {
    bin(s.as_bytes())
}

/// numeric's binary form from base-10000 digits.
fn numeric(digits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((digits.len() as i16).to_be_bytes());
    b.extend(weight.to_be_bytes());
    b.extend(sign.to_be_bytes());
    b.extend(dscale.to_be_bytes());
    for d in digits {
        b.extend(d.to_be_bytes());
    }
    b
}

/// A PostgreSQL array in binary send format: `dims` lengths, `None` for NULL elements.
fn array(element: u32, dims: &[i32], items: &[Option<Vec<u8>>]) -> Value {
    let mut b = Vec::new();
    b.extend((dims.len() as i32).to_be_bytes());
    b.extend(i32::from(items.iter().any(Option::is_none)).to_be_bytes());
    b.extend(element.to_be_bytes());
    for d in dims {
        b.extend(d.to_be_bytes());
        b.extend(1i32.to_be_bytes());
    }
    for item in items {
        match item {
            Some(v) => {
                b.extend((v.len() as i32).to_be_bytes());
                b.extend(v);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
    }
    bin(&b)
}

/// One source transaction of inserts committed at `lsn`.
fn inserts(lsn: u64, table: &Arc<TableSchema>, rows: &[Row]) -> Vec<StreamEvent> {
    let changes = rows
        .iter()
        .map(|row| Change::Insert { row: row.clone() })
        .collect();
    common::txn(lsn, table, changes)
}

/// Writes `rows` through the real sink.
async fn write(database: &str, table: &Arc<TableSchema>, rows: &[Row]) {
    let mut sink = MongoSink::connect(options(database)).await.unwrap();
    sink.open(from_ref(table)).await.unwrap();
    sink.apply_all(inserts(100, table, rows)).await.unwrap();
    sink.seal().await.unwrap();
}

/// What a MongoDB target keeps: timestamps in whole milliseconds.
fn millis() -> Precision {
    Precision {
        timestamp_millis: true,
        ..Precision::default()
    }
}

/// The source rows in canonical form at a MongoDB target's precision, in key order.
fn source_rows(table: &TableSchema, rows: &[Row]) -> Vec<CanonRow> {
    let keys = key_columns(table);
    let mut out: Vec<CanonRow> = rows
        .iter()
        .map(|r| canon_row(table, &keys, r, millis()).unwrap())
        .collect();
    out.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
    out
}

async fn scan_all(side: &MongoTableSide) -> Vec<CanonRow> {
    let limits = ScanLimits {
        keep_rows: usize::MAX,
        split_every: 0,
    };
    side.scan(&Bound::Unbounded, &Bound::Unbounded, limits)
        .await
        .unwrap()
        .rows
        .unwrap()
}

fn shown(row: &CanonRow, c: usize) -> String {
    render_value(row.column(c)).map_or_else(|| format!("{:?}", row.column(c)), |(t, _)| t)
}

/// Asserts two lists of rows are equal, naming the first differing column.
fn assert_same_rows(table: &TableSchema, source: &[CanonRow], target: &[CanonRow]) {
    assert_eq!(source.len(), target.len(), "row counts");
    for (s, t) in source.iter().zip(target) {
        for (c, col) in table.columns.iter().enumerate() {
            assert_eq!(
                s.column(c),
                t.column(c),
                "column {}: source {} target {}",
                col.name,
                shown(s, c),
                shown(t, c)
            );
        }
        assert_eq!(s, t);
    }
}

fn names(table: &TableSchema) -> Vec<String> {
    table.columns.iter().map(|c| c.name.clone()).collect()
}

fn key_of(diff: &RowDiff) -> Arc<KeyBound> {
    Arc::new(match diff {
        RowDiff::Missing(r) | RowDiff::Extra(r) => KeyBound::of(r),
        RowDiff::Different { source, .. } => KeyBound::of(source),
    })
}

#[tokio::test]
async fn every_type_reads_back_as_the_source_row() {
    let db = common::unique_database("cutover_v", "types");
    let table = Arc::new(TableSchema {
        name: TableName::new("public", "typed"),
        columns: vec![
            column("id", oid::INT4, true),
            column("i2", oid::INT2, false),
            column("i8", oid::INT8, false),
            column("f4", oid::FLOAT4, false),
            column("f8", oid::FLOAT8, false),
            column("num", oid::NUMERIC, false),
            column("cash", oid::MONEY, false),
            column("t", oid::TEXT, false),
            column("pad", oid::BPCHAR, false),
            column("raw", oid::BYTEA, false),
            column("flag", oid::BOOL, false),
            column("day", oid::DATE, false),
            column("tm", oid::TIME, false),
            column("ttz", oid::TIMETZ, false),
            column("ts", oid::TIMESTAMP, false),
            column("tstz", oid::TIMESTAMPTZ, false),
            column("iv", oid::INTERVAL, false),
            column("u", oid::UUID, false),
            column("j", oid::JSONB, false),
            column("js", oid::JSON, false),
            column("ip", oid::INET, false),
            column("grid", 1007, false),
            column("tags", 1009, false),
            column("nums", 1231, false),
            column("mood", 99_999, false),
        ],
    });
    let timetz = |micros: i64, west: i32| {
        let mut b = micros.to_be_bytes().to_vec();
        b.extend(west.to_be_bytes());
        bin(&b)
    };
    let interval = |micros: i64, days: i32, months: i32| {
        let mut b = micros.to_be_bytes().to_vec();
        b.extend(days.to_be_bytes());
        b.extend(months.to_be_bytes());
        bin(&b)
    };
    let int4 = |v: i32| Some(v.to_be_bytes().to_vec());
    let full = Row(vec![
        i4(1),
        i2(-3),
        i8(5_000_000_000),
        bin(&1.1f32.to_be_bytes()),
        bin(&0.1f64.to_be_bytes()),
        // 12.50
        bin(&numeric(&[12, 5000], 0, 0, 2)),
        i8(-1234),
        text("héllo 🦀 wörld"),
        text("ab  "),
        bin(&[0, 255, 7]),
        bin(&[1]),
        i4(9000),
        // 12:34:56.789
        i8(45_296_789_000),
        // 01:00:00+02:00 (PostgreSQL sends seconds west of UTC)
        timetz(3_600_000_000, -7200),
        i8(1_234_567_890_123_456),
        i8(778_123_456_789_012),
        interval(-3_723_000_001, -2, 14),
        bin(b"0123456789abcdef"),
        text("\x01{\"b\": [1, 2.5, 1.0, true], \"a\": {\"$oid\": \"x\"}, \"big\": 18446744073709551615, \"n\": null, \"s\": \"\u{e9}\"}"),
        text("[1, {\"k\": \"v\", \"a\": [[]]}, \"s\", -7]"),
        bin(&[2, 32, 0, 4, 10, 0, 0, 1]),
        array(oid::INT4, &[2, 2], &[int4(1), None, int4(3), int4(4)]),
        array(
            oid::TEXT,
            &[3],
            &[Some(b"a".to_vec()), Some(b"b c".to_vec()), Some(Vec::new())],
        ),
        array(
            oid::NUMERIC,
            &[2],
            &[
                Some(numeric(&[1, 5000], 0, 0, 2)),
                Some(numeric(&[], 0, 0xC000, 0)),
            ],
        ),
        text("happy"),
    ]);
    let specials = Row(vec![
        i4(2),
        i2(i16::MIN),
        i8(i64::MAX),
        bin(&f32::NAN.to_be_bytes()),
        bin(&f64::INFINITY.to_be_bytes()),
        // NaN
        bin(&numeric(&[], 0, 0xC000, 0)),
        i8(0),
        text(""),
        text("x"),
        bin(&[]),
        bin(&[0]),
        i4(i32::MAX),
        i8(0),
        timetz(0, 0),
        // 1 µs before 2000-01-01: the millisecond before it
        i8(-1),
        i8(i64::MIN),
        interval(0, 0, 0),
        bin(&[0xff; 16]),
        text("\x01\"s\""),
        text("123456789012345678901234567890"),
        bin(&[2, 16, 0, 4, 192, 168, 0, 0]),
        array(oid::INT4, &[], &[]),
        array(oid::TEXT, &[1], &[None]),
        array(oid::NUMERIC, &[], &[]),
        text("sad"),
    ]);
    let mut sparse = vec![Value::Null; table.columns.len()];
    sparse[0] = i4(3);
    // 0.0005 and -Infinity
    sparse[5] = bin(&numeric(&[5], -1, 0, 4));
    sparse[4] = bin(&f64::NEG_INFINITY.to_be_bytes());
    sparse[3] = bin(&(-0.0f32).to_be_bytes());
    sparse[11] = i4(i32::MIN);
    let mut more = vec![Value::Null; table.columns.len()];
    more[0] = i4(4);
    // -3
    more[5] = bin(&numeric(&[3], 0, 0x4000, 0));
    more[14] = i8(i64::MAX);
    more[15] = i8(-86_400_000_001);
    more[6] = i8(i64::MIN);
    let rows = vec![full, specials, Row(sparse), Row(more)];
    write(&db, &table, &rows).await;

    let side = MongoTableSide::open(&options(&db), table.clone())
        .await
        .unwrap();
    assert_eq!(side.len(), rows.len());
    assert_eq!(MongoTableSide::precision(), millis());
    let scanned = scan_all(&side).await;
    let expected = source_rows(&table, &rows);
    assert_same_rows(&table, &expected, &scanned);
    assert!(compare_rows(&expected, &scanned).is_empty());

    // Read again by key: the same rows.
    let keys: Vec<Arc<KeyBound>> = expected.iter().map(|r| Arc::new(KeyBound::of(r))).collect();
    let fetched: Vec<CanonRow> = side
        .fetch(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_same_rows(&table, &expected, &fetched);
}

/// `public.orders (region text, n int8, v text, qty int4, at timestamptz, primary key (region, n))`.
fn orders() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: TableName::new("public", "orders"),
        columns: vec![
            column("region", oid::TEXT, true),
            column("n", oid::INT8, true),
            column("v", oid::TEXT, false),
            column("qty", oid::INT4, false),
            column("at", oid::TIMESTAMPTZ, false),
        ],
    })
}

fn order(n: i64, v: &str) -> Row {
    Row(vec![
        text("eu"),
        i8(n),
        text(v),
        i4(n as i32 * 10),
        i8(800_000_000_000_000 + n * 1_000_123),
    ])
}

#[tokio::test]
async fn drift_is_reported_as_absent_null_changed_missing_and_extra() {
    let db = common::unique_database("cutover_v", "drift");
    let table = orders();
    let rows: Vec<Row> = (1..=6).map(|n| order(n, &format!("v{n}"))).collect();
    write(&db, &table, &rows).await;

    let docs = collection(&db, "public_orders").await;
    let id = |n: i64| doc! {"_id": {"region": "eu", "n": n}};
    let set = |d: Document| doc! {"$set": d};
    docs.update_one(id(1), doc! {"$unset": {"v": ""}})
        .await
        .unwrap();
    docs.update_one(id(2), set(doc! {"qty": Bson::Null}))
        .await
        .unwrap();
    docs.update_one(id(3), set(doc! {"v": "changed"}))
        .await
        .unwrap();
    docs.delete_one(id(4)).await.unwrap();
    let at = DateTime::from_millis(1_000);
    let foreign = doc! {"_id": {"region": "eu", "n": 7i64}, "region": "eu", "n": 7i64, "v": "new", "qty": 70, "at": at};
    docs.insert_one(foreign.clone()).await.unwrap();

    let side = MongoTableSide::open(&options(&db), table.clone())
        .await
        .unwrap();
    let source = source_rows(&table, &rows);
    let target = scan_all(&side).await;
    let diffs = compare_rows(&source, &target);
    let names = names(&table);
    let found: Vec<(&str, String, Vec<usize>)> = diffs
        .iter()
        .map(|d| match d {
            RowDiff::Different {
                source, columns, ..
            } => (d.kind(), source.key_text(&names), columns.clone()),
            RowDiff::Missing(r) | RowDiff::Extra(r) => (d.kind(), r.key_text(&names), vec![]),
        })
        .collect();
    let key = |n: i64| format!("{{\"region\": \"eu\", \"n\": {n}}}");
    assert_eq!(
        found,
        vec![
            ("different", key(1), vec![2]),
            ("different", key(2), vec![3]),
            ("different", key(3), vec![2]),
            ("missing", key(4), vec![]),
            ("extra", key(7), vec![]),
        ]
    );
    let target_of = |i: usize| match &diffs[i] {
        RowDiff::Different { target, .. } => target.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(target_of(0).column(2), [tag::ABSENT]);
    assert_eq!(target_of(1).column(3), [tag::NULL]);
    assert_eq!(shown(&target_of(2), 2), "\"changed\"");
    // The extra row's key values are those the source would be asked for.
    match &diffs[4] {
        RowDiff::Extra(r) => assert_eq!(
            r.key_values(),
            [
                Some(Bytes::from_static(b"eu")),
                Some(Bytes::copy_from_slice(&7i64.to_be_bytes()))
            ]
        ),
        other => panic!("{other:?}"),
    }

    // Re-checks read the collection as it is now, not as it was scanned.
    docs.update_one(id(3), set(doc! {"v": "changed again"}))
        .await
        .unwrap();
    let restored = doc! {"_id": {"region": "eu", "n": 4i64}, "region": "eu", "n": 4i64, "v": "v4", "qty": 40, "at": DateTime::from_millis(946_684_800_000 + 800_000_000_000 + 4_000)};
    docs.insert_one(restored).await.unwrap();
    let keys: Vec<Arc<KeyBound>> = diffs.iter().map(key_of).collect();
    let fetched = side.fetch(&keys).await.unwrap();
    assert_eq!(fetched.len(), 5);
    assert_eq!(fetched[0].as_ref(), Some(&target_of(0)));
    assert_eq!(fetched[1].as_ref(), Some(&target_of(1)));
    let again = fetched[2].as_ref().unwrap();
    assert_eq!(shown(again, 2), "\"changed again\"");
    assert_eq!(again.sort_key, source[2].sort_key);
    // Written back with the source's values (at millisecond precision): equal again.
    assert_eq!(fetched[3].as_ref(), Some(&source[3]));
    assert_eq!(fetched[4].as_ref(), Some(&target[5]));
    docs.delete_one(id(7)).await.unwrap();
    docs.delete_one(id(1)).await.unwrap();
    let fetched = side.fetch(&keys[..1]).await.unwrap();
    assert_eq!(fetched, [None]);
    let fetched = side.fetch(&keys[4..]).await.unwrap();
    assert_eq!(fetched, [None]);
}

#[tokio::test]
async fn keys_of_every_orderable_type_read_back_with_their_binary_values() {
    let db = common::unique_database("cutover_v", "keys");
    let table = Arc::new(TableSchema {
        name: TableName::new("public", "keyed"),
        columns: vec![
            column("v", oid::TEXT, false),
            column("t", oid::VARCHAR, true),
            column("num", oid::NUMERIC, true),
            column("ts", oid::TIMESTAMPTZ, true),
            column("u", oid::UUID, true),
            column("d", oid::DATE, true),
            column("f", oid::FLOAT8, true),
            column("m", oid::MONEY, true),
            column("s", oid::INT2, true),
            column("flag", oid::BOOL, true),
            column("tm", oid::TIME, true),
            column("by", oid::BYTEA, true),
            column("o", oid::OID, true),
        ],
    });
    let key = |v: &str, t: &str, num: Vec<u8>, ms: i64, day: i32, f: f64| {
        Row(vec![
            text(v),
            text(t),
            bin(&num),
            // Whole milliseconds: a MongoDB key keeps no more.
            i8(ms * 1000),
            bin(&[day as u8; 16]),
            i4(day),
            bin(&f.to_be_bytes()),
            i8(-(day as i64)),
            i2(day as i16),
            bin(&[u8::from(day > 0)]),
            i8((day as i64 + 10) * 1_000_001),
            bin(&[0, day as u8, 0]),
            bin(&((day + 10) as u32 * 7).to_be_bytes()),
        ])
    };
    let rows = vec![
        // 12.50
        key(
            "a",
            "k ey",
            numeric(&[12, 5000], 0, 0, 2),
            1_234_567,
            3,
            -0.5,
        ),
        // -0.0005
        key("b", "k", numeric(&[5], -1, 0x4000, 4), -5, -2, -1e-300),
        // 100000000 (one digit of weight 2)
        key("c", "é", numeric(&[1], 2, 0, 0), 0, 0, 1e300),
        // 0.00
        key("d", "k", numeric(&[], 0, 0, 2), 7, 1, 0.0),
    ];
    write(&db, &table, &rows).await;
    let side = MongoTableSide::open(&options(&db), table.clone())
        .await
        .unwrap();
    let expected = source_rows(&table, &rows);
    let scanned = scan_all(&side).await;
    // Equal rows, key order and the keys' binary values (as PostgreSQL would send them).
    assert_same_rows(&table, &expected, &scanned);
    for (s, t) in expected.iter().zip(&scanned) {
        assert_eq!(s.key_values(), t.key_values());
    }
    // Looked up by the keys either side gives: the same rows.
    for rows in [&expected, &scanned] {
        let keys: Vec<Arc<KeyBound>> = rows.iter().map(|r| Arc::new(KeyBound::of(r))).collect();
        let fetched: Vec<CanonRow> = side
            .fetch(&keys)
            .await
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_same_rows(&table, &expected, &fetched);
    }
}

/// `public.items (id int4 primary key, name text, qty int8)`.
fn items() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: TableName::new("public", "items"),
        columns: vec![
            column("id", oid::INT4, true),
            column("name", oid::TEXT, false),
            column("qty", oid::INT8, false),
        ],
    })
}

#[tokio::test]
async fn stray_ids_and_wrong_types_are_differences_not_failures() {
    let db = common::unique_database("cutover_v", "stray");
    let table = items();
    let rows: Vec<Row> = (1..=3)
        .map(|n| Row(vec![i4(n), text(&format!("item {n}")), i8(n as i64)]))
        .collect();
    write(&db, &table, &rows).await;
    let docs = collection(&db, "public_items").await;
    docs.update_one(doc! {"_id": 2}, doc! {"$set": {"qty": "many", "name": 2.5}})
        .await
        .unwrap();
    let object_id = ObjectId::new();
    docs.insert_one(doc! {"_id": object_id, "name": "stray"})
        .await
        .unwrap();
    docs.insert_one(doc! {"_id": "9", "id": 9, "name": "text id", "qty": 9i64})
        .await
        .unwrap();

    let side = MongoTableSide::open(&options(&db), table.clone())
        .await
        .unwrap();
    let source = source_rows(&table, &rows);
    let target = scan_all(&side).await;
    let diffs = compare_rows(&source, &target);
    let kinds: Vec<&str> = diffs.iter().map(RowDiff::kind).collect();
    assert_eq!(kinds, ["different", "extra", "extra"], "{diffs:?}");
    match &diffs[0] {
        RowDiff::Different {
            source,
            target,
            columns,
        } => {
            assert_eq!(source.key_text(&names(&table)), "{\"id\": 2}");
            assert_eq!(columns, &[1, 2]);
            assert_eq!(target.column(2)[0], tag::OPAQUE);
            assert!(
                shown(target, 2).contains(&hex(b"\"many\"")),
                "{}",
                shown(target, 2)
            );
        }
        other => panic!("{other:?}"),
    }
    // Strays sort after every key and carry the greatest key's values.
    for d in &diffs[1..] {
        let RowDiff::Extra(r) = d else {
            panic!("{d:?}")
        };
        assert!(r.sort_key > source[2].sort_key);
        assert_eq!(r.key_values(), source[2].key_values());
    }
    let keys: Vec<Arc<KeyBound>> = diffs.iter().map(key_of).collect();
    let fetched = side.fetch(&keys).await.unwrap();
    assert_eq!(fetched[1].as_ref(), Some(&target[3]));
    assert_eq!(fetched[2].as_ref(), Some(&target[4]));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
