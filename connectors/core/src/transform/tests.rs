use super::*;
use crate::datum::Datum;

fn table() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: TableName::new("public", "customers"),
        columns: vec![
            Column::new("id", oid::INT8, true),
            Column::new("email", oid::TEXT, false),
            Column::new("tenant", oid::INT4, false),
            Column::new("first", oid::TEXT, false),
            Column::new("last", oid::TEXT, false),
        ],
    })
}

fn at(s: &str) -> String {
    format!("shop.toml, line 1 ({s})")
}

fn placed(s: &str) -> Placed<String> {
    Placed::new(s.to_string(), at(s))
}

fn int8(v: i64) -> Value {
    Value::Binary(Bytes::copy_from_slice(&v.to_be_bytes()))
}
fn int4(v: i32) -> Value {
    Value::Binary(Bytes::copy_from_slice(&v.to_be_bytes()))
}
fn text(s: &str) -> Value {
    Value::Binary(Bytes::from(s.to_string()))
}

fn row(id: i64, email: &str, tenant: i32) -> Row {
    Row(vec![
        int8(id),
        text(email),
        int4(tenant),
        text("Ada"),
        text("Lovelace"),
    ])
}

fn spec() -> TransformSpec {
    let mut s = TransformSpec::new(Placed::new(
        TableName::new("public", "customers"),
        at("table"),
    ));
    s.rename = Some(Placed::new(TableName::new("crm", "people"), at("rename")));
    s.rename_columns = vec![(placed("last"), "surname".into())];
    s.masks = vec![(placed("email"), Mask::Hash)];
    s.exclude_columns = vec![placed("first")];
    s.add_columns = vec![
        AddColumn {
            name: placed("full_name"),
            derived: Derived::Template("{first} {last}".into()),
        },
        AddColumn {
            name: placed("origin"),
            derived: Derived::Constant {
                value: "legacy".into(),
                type_name: "text".into(),
            },
        },
    ];
    s.filter = Some(Placed::new(
        Predicate::parse("tenant = 42").unwrap(),
        at("filter"),
    ));
    s
}

fn set(specs: Vec<TransformSpec>) -> TransformSet {
    TransformSet {
        pipeline: specs,
        key: Some(MaskKey::from_secret("s3cret")),
    }
}

#[test]
fn a_chain_renames_masks_derives_and_filters() {
    let t = set(vec![spec()])
        .compile(&SinkRules::default(), &table())
        .unwrap()
        .unwrap();
    let out = t.output();
    assert_eq!(out.name, TableName::new("crm", "people"));
    let names: Vec<&str> = out.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "email", "tenant", "surname", "full_name", "origin"]
    );
    assert_eq!(out.columns[1].type_oid, oid::TEXT);
    let r = t.row(row(1, "ada@example.com", 42)).unwrap();
    assert_eq!(r.0[0], int8(1));
    assert_eq!(r.0[3], text("Lovelace"));
    assert_eq!(r.0[4], text("Ada Lovelace"));
    assert_eq!(r.0[5], text("legacy"));
    // The hash is keyed, 64 hex characters, equal for equal values and for int4/int8 alike.
    let Value::Binary(h) = &r.0[1] else {
        panic!("hashed")
    };
    assert_eq!(h.len(), 64);
    assert_ne!(h.as_ref(), b"ada@example.com");
    let again = t.row(row(2, "ada@example.com", 42)).unwrap();
    assert_eq!(again.0[1], r.0[1]);
    let other_key = TransformSet {
        pipeline: vec![spec()],
        key: Some(MaskKey::from_secret("other")),
    }
    .compile(&SinkRules::default(), &table())
    .unwrap()
    .unwrap();
    assert_ne!(
        other_key.row(row(1, "ada@example.com", 42)).unwrap().0[1],
        r.0[1]
    );
    assert!(t.row(row(1, "x", 7)).is_none(), "tenant 7 is filtered out");
}

#[test]
fn updates_moving_across_the_filter_become_inserts_or_deletes() {
    let t = set(vec![spec()])
        .compile(&SinkRules::default(), &table())
        .unwrap()
        .unwrap();
    // Insert outside: dropped. Update into the filter: an upsert with the whole row.
    assert_eq!(
        t.change(Change::Insert {
            row: row(1, "a", 7)
        }),
        None
    );
    let Some(Change::Update { row: r, .. }) = t.change(Change::Update {
        old_key: None,
        row: row(1, "a", 42),
    }) else {
        panic!("an update into the filter is sent")
    };
    assert_eq!(r.0[2], int4(42));
    // Update out of the filter: a delete by key, other columns NULL.
    let Some(Change::Delete { key }) = t.change(Change::Update {
        old_key: None,
        row: row(1, "a", 7),
    }) else {
        panic!("an update out of the filter is a delete")
    };
    assert_eq!(key.0[0], int8(1));
    assert!(key.0[1..].iter().all(|v| *v == Value::Null));
    // Deletes always pass; truncates too.
    assert!(matches!(
        t.change(Change::Delete {
            key: row(1, "a", 7)
        }),
        Some(Change::Delete { .. })
    ));
    assert_eq!(t.change(Change::Truncate), Some(Change::Truncate));
    // An unchanged (TOASTed) value is taken from a full old row.
    let mut new = row(1, "a", 42);
    new.0[4] = Value::Unchanged;
    let Some(Change::Update { row: r, .. }) = t.change(Change::Update {
        old_key: Some(row(1, "a", 7)),
        row: new,
    }) else {
        panic!("sent")
    };
    assert_eq!(r.0[3], text("Lovelace"));
}

#[test]
fn wrong_rules_name_their_place() {
    let compile = |s: TransformSpec| {
        set(vec![s])
            .compile(&SinkRules::default(), &table())
            .map(|_| ())
            .unwrap_err()
    };
    let mut s = spec();
    s.masks = vec![(placed("emial"), Mask::Null)];
    let e = compile(s);
    assert_eq!(e.place, at("emial"));
    assert!(e.message.contains("does not have"), "{e}");
    let mut s = spec();
    s.rename_columns = vec![(placed("last"), "email".into())];
    assert!(compile(s).message.contains("would be named \"email\""));
    let mut s = spec();
    s.filter = Some(Placed::new(
        Predicate::parse("email = 'x'").unwrap(),
        at("filter"),
    ));
    let e = compile(s);
    assert!(
        e.message.contains("masked") && e.place == at("filter"),
        "{e}"
    );
    let mut s = spec();
    s.masks = vec![(placed("id"), Mask::Null)];
    assert!(compile(s).message.contains("key"));
    let mut s = spec();
    s.exclude_columns = vec![placed("id")];
    assert!(compile(s).message.contains("cannot be left out"));
    let mut s = spec();
    s.masks = vec![(placed("tenant"), Mask::Value("many".into()))];
    assert!(compile(s).message.contains("not a value"));
    let no_key = TransformSet {
        pipeline: vec![spec()],
        key: None,
    };
    assert!(no_key
        .compile(&SinkRules::default(), &table())
        .unwrap_err()
        .fix
        .contains("[masking]"));
    // Two tables renamed to one name.
    let other = Arc::new(TableSchema {
        name: TableName::new("public", "leads"),
        columns: table().columns.clone(),
    });
    let mut s2 = TransformSpec::new(Placed::new(other.name.clone(), at("t2")));
    s2.rename = Some(Placed::new(TableName::new("crm", "people"), at("rename2")));
    let e = set(vec![spec(), s2])
        .compile_all(&SinkRules::default(), &[table(), other])
        .unwrap_err();
    assert!(e.message.contains("both be written as crm.people"), "{e}");
}

#[test]
fn constants_encode_in_their_type() {
    for (ty, text, want) in [
        (oid::NUMERIC, "-12.50", "-12.50"),
        (oid::NUMERIC, "10000.0001", "10000.0001"),
        (oid::NUMERIC, "0", "0"),
        (oid::NUMERIC, "0.000", "0.000"),
        (oid::INT4, "-7", "-7"),
        (oid::BOOL, "true", "true"),
        (oid::DATE, "2026-12-01", "2026-12-01"),
    ] {
        let b = encode_text(ty, text).unwrap();
        let d = datum::decode(ty, &b).unwrap();
        assert_eq!(d.render().unwrap(), want, "{ty} {text}");
    }
    assert!(matches!(
        datum::decode(
            oid::TIMESTAMPTZ,
            &encode_text(oid::TIMESTAMPTZ, "2000-01-01 01:00:00+01").unwrap()
        ),
        Ok(Datum::TimestampTz(0))
    ));
    assert!(encode_text(oid::INT2, "70000").is_none());
    assert!(encode_text(oid::INTERVAL, "1 day").is_none());
}

#[test]
fn a_sink_takes_only_the_tables_it_lists() {
    let rules = |p: &[&str]| SinkRules {
        include: Some(p.iter().map(|s| s.to_string()).collect()),
        specs: Vec::new(),
    };
    let t = table();
    assert!(set(vec![])
        .compile(&rules(&["public.customers"]), &t)
        .unwrap()
        .is_some());
    assert!(set(vec![])
        .compile(&rules(&["customers"]), &t)
        .unwrap()
        .is_some());
    assert!(set(vec![])
        .compile(&rules(&["public.*"]), &t)
        .unwrap()
        .is_some());
    assert!(set(vec![])
        .compile(&rules(&["sales.*", "orders"]), &t)
        .unwrap()
        .is_none());
}
