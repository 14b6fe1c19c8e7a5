//! Text-format values against a real server: for many values of every type cutover converts,
//! the text the server prints (under the replication session's settings, and under other zones,
//! float digits and bytea outputs) converts to exactly the bytes the type's binary send function
//! gives; and pgoutput frames with text values, taken from a real slot, decode to the table's
//! binary values.
//!
//! The server is `CUTOVER_TEST_SOURCE_URL` (also read from the env file `scripts/services.sh
//! start` writes), and every `CUTOVER_PG<N>_URL` there (10 to 18; CI starts 12 and 18 beside
//! the Debian 15). A case a version cannot write is left out for it (`Case::since`). Without a
//! server the tests print why and pass.

use std::sync::atomic::{AtomicU32, Ordering};

use cutover_core::Value;
use cutover_postgres::pgoutput::{DecodeError, Decoder, Message};
use cutover_postgres::text_values::{to_binary, TextValueError, UserTypes};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls};

/// The session settings the replication connection uses (`replication.rs`).
const REPLICATION_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = postgres; \
     SET extra_float_digits = 3; SET bytea_output = hex; SET TimeZone = 'UTC'";

/// Other settings text must convert under too: zones with odd offsets (and local mean time
/// before 1900s), the default float digits, bytea's escape output.
const OTHER_SETTINGS: &[&str] = &[
    "SET TimeZone = 'Asia/Kolkata'; SET extra_float_digits = 1; SET bytea_output = escape",
    "SET TimeZone = 'America/St_Johns'; SET extra_float_digits = 2",
    "SET TimeZone = 'Europe/Amsterdam'; SET bytea_output = escape",
];

/// A value's bytes as the server sent them, whatever its type.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The test servers' URLs: `CUTOVER_TEST_SOURCE_URL` and any `CUTOVER_PG<N>_URL`, from the
/// environment or the services env file.
fn server_urls() -> Vec<String> {
    let file = std::env::var("CUTOVER_SERVICES_DIR")
        .map(|d| std::path::PathBuf::from(d).join("env"))
        .unwrap_or_else(|_| "/tmp/cutover-services/env".into());
    let env_file = std::fs::read_to_string(file).unwrap_or_default();
    let var = |name: &str| {
        std::env::var(name).ok().or_else(|| {
            env_file.lines().find_map(|l| {
                l.strip_prefix(&format!("export {name}="))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        })
    };
    let mut urls: Vec<String> = var("CUTOVER_TEST_SOURCE_URL").into_iter().collect();
    // Cases a version cannot write (numeric infinities before 14, the extreme interval
    // literals) are left out for it (`Case::since`).
    for major in 10..=18 {
        if let Some(url) = var(&format!("CUTOVER_PG{major}_URL")) {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn version(client: &Client) -> u32 {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap();
    row.get::<_, i32>(0) as u32
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

fn quote(literal: &str) -> String {
    format!("'{}'", literal.replace('\'', "''"))
}

/// Values (as input literals) of each built-in type, edge cases first. `since` is the first
/// server version that has them.
struct Case {
    sql_type: &'static str,
    literals: &'static [&'static str],
    since: u32,
}

const fn case(sql_type: &'static str, literals: &'static [&'static str]) -> Case {
    Case {
        sql_type,
        literals,
        since: 0,
    }
}

const CASES: &[Case] = &[
    case("bool", &["t", "f"]),
    case("int2", &["0", "1", "-1", "32767", "-32768"]),
    case("int4", &["0", "42", "2147483647", "-2147483648"]),
    case(
        "int8",
        &["0", "-5", "9223372036854775807", "-9223372036854775808"],
    ),
    case("oid", &["0", "12345", "4294967295"]),
    case(
        "float4",
        &[
            "0",
            "-0",
            "1",
            "-1",
            "0.1",
            "3.4028235e38",
            "-3.4028235e38",
            "1.17549435e-38",
            "1.4e-45",
            "6e-45",
            "NaN",
            "Infinity",
            "-Infinity",
            "123456.79",
            "16777216",
            "1e10",
            "0.3",
            "2.5e-7",
        ],
    ),
    case(
        "float8",
        &[
            "0",
            "-0",
            "0.1",
            "0.30000000000000004",
            "1e308",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "4.9e-324",
            "1e-320",
            "NaN",
            "Infinity",
            "-Infinity",
            "3.141592653589793",
            "-2.5e-10",
            "123456789012345680",
            "1e15",
            "1e16",
            "1e17",
            "100",
            "-1.5",
        ],
    ),
    case(
        "numeric",
        &[
            "0",
            "0.00",
            "-0",
            "1",
            "-1",
            "12.50",
            "-12.50",
            "NaN",
            "0.0001",
            "0.00000001",
            "10000",
            "100000000",
            "123456789012345678901234567890.123456789",
            "0.00000000000000000001",
            "9999.9999",
            "-0.5",
            "1e100",
            "1.000000",
            "0.1000",
            "99999999999999999999",
            "3.14159265358979323846264338327950288419716939937510",
            "-0.000000000000000000000000000000001",
        ],
    ),
    Case {
        sql_type: "numeric",
        literals: &["Infinity", "-Infinity"],
        since: 140000,
    },
    case("numeric(12,2)", &["1.5", "-1234567890.12", "0"]),
    case(
        "money",
        &[
            "0",
            "1.23",
            "-1234567.89",
            "0.01",
            "92233720368547758.07",
            "-92233720368547758.08",
        ],
    ),
    case(
        "text",
        &[
            "",
            "abc",
            "a b",
            "é😀",
            "quote\"s",
            "back\\slash",
            "NULL",
            "null",
            "{braces}",
            "comma,",
            " leading",
            "trailing ",
            "new\nline",
            "tab\there",
            "semi;colon",
            "'",
        ],
    ),
    case("varchar(10)", &["", "abc", "é"]),
    case("char(5)", &["a", "ab ", "abcde", ""]),
    case("bpchar", &["x", "trailing  "]),
    case(
        "name",
        &[
            "pg_class",
            "",
            "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk",
        ],
    ),
    case("\"char\"", &["a", "", "\\", "\"", "{", " "]),
    Case {
        // A byte above 127 prints as \ooo from 15 (as the raw byte before).
        sql_type: "\"char\"",
        literals: &["\\310", "\\377", "\\200"],
        since: 150000,
    },
    case(
        "bytea",
        &[
            "\\x",
            "\\x00ff10",
            "abc",
            "\\000\\001\\\\\\177",
            "\\x5c22",
            "\\x7b7d2c",
        ],
    ),
    case(
        "uuid",
        &[
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        ],
    ),
    case(
        "json",
        &[
            "{\"a\": [1, 2.50, \"x\"]}",
            "\"s\"",
            "null",
            "[]",
            " {\"b\":1} ",
        ],
    ),
    case(
        "jsonb",
        &[
            "{\"b\": 1, \"a\": [1, 2.50, {\"c\": null}]}",
            "\"é\\n\"",
            "1e3",
            "[]",
            "{}",
            "null",
        ],
    ),
    case("xml", &["<a>x</a>", "text", "<r a=\"1\"/>"]),
    case(
        "date",
        &[
            "2000-01-01",
            "1999-12-31",
            "2024-02-29",
            "infinity",
            "-infinity",
            "0001-01-01",
            "0001-12-31 BC",
            "4713-01-01 BC",
            "4714-11-24 BC",
            "5874897-12-31",
            "10000-01-01",
            "1970-01-01",
        ],
    ),
    case(
        "time",
        &[
            "00:00:00",
            "23:59:59.999999",
            "24:00:00",
            "12:30:00.5",
            "00:00:00.000001",
            "13:14:15.1",
        ],
    ),
    case("time(2)", &["12:30:00.555", "00:00:00"]),
    case(
        "timetz",
        &[
            "00:00:00+00",
            "12:00:00+05:30",
            "23:59:59.999999-15:59:59",
            "12:00:00-03:30",
            "24:00:00+15:59",
            "01:02:03.4+00:00:30",
            "12:00:00-00:00:01",
        ],
    ),
    case(
        "timestamp",
        &[
            "2000-01-01 00:00:00",
            "1999-12-31 23:59:59.999999",
            "infinity",
            "-infinity",
            "4714-11-24 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "0044-03-15 12:00:00 BC",
            "0001-01-01 00:00:00",
            "0001-12-31 23:59:59.5 BC",
            "2024-02-29 12:34:56.789",
            "1900-01-01",
            "10000-01-01 00:00:00",
            "1970-01-01 00:00:00.000001",
        ],
    ),
    case(
        "timestamptz",
        &[
            "2000-01-01 00:00:00+00",
            "1999-12-31 23:59:59.999999+00",
            "infinity",
            "-infinity",
            "2024-05-01 12:00:00+05:30",
            "1900-01-01 00:00:00+00",
            "1800-06-01 12:00:00+00",
            "0044-03-15 12:00:00+00 BC",
            "4714-11-25 00:00:00+00 BC",
            "294276-12-31 23:59:59.999999+00",
            "2024-03-31 01:30:00+00",
            "1937-06-30 23:59:59.5+00",
            "1970-01-01 00:00:00.000001+00",
        ],
    ),
    case(
        "interval",
        &[
            "0",
            "1 year 2 mons 3 days 04:05:06.789",
            "-1 year -2 mons +3 days -04:05:06",
            "-1 sec",
            "1 day -00:00:01",
            "-1 days +00:00:01",
            "178956970 years 7 mons",
            "-178956970 years -8 mons",
            "2147483647 days",
            "-2147483648 days",
            "0.000001 sec",
            "1 mon",
            "2 mons",
            "-1 mon",
            "100 hours",
            "1 year",
            "-1 year",
            "1 day",
            "-0.5 sec",
            "1 year -1 sec",
        ],
    ),
    // Hours past 2^31 are refused on input before PostgreSQL 14 (the values exist there too,
    // reached by arithmetic, and the random intervals cover the type).
    Case {
        sql_type: "interval",
        literals: &["2562047788:00:54.775807", "-2562047788:00:54.775807"],
        since: 140000,
    },
    case(
        "inet",
        &[
            "10.0.0.1",
            "10.0.0.0/8",
            "10.0.0.1/8",
            "::1",
            "2001:db8::1/64",
            "::ffff:1.2.3.4",
            "0.0.0.0/0",
            "::/0",
            "::1.2.3.4",
            "2001:db8:0:0:1:0:0:1",
            "255.255.255.255",
        ],
    ),
    case(
        "cidr",
        &[
            "10.0.0.0/8",
            "10.0.0.1/32",
            "2001:db8::/32",
            "0.0.0.0/0",
            "::/0",
            "192.168.1/24",
            "::ffff:1.2.3.0/120",
        ],
    ),
    case(
        "macaddr",
        &[
            "08:00:2b:01:02:03",
            "ff:ff:ff:ff:ff:ff",
            "00-00-00-00-00-00",
        ],
    ),
    case(
        "macaddr8",
        &["08:00:2b:01:02:03:04:05", "08:00:2b:01:02:03"],
    ),
    case("bit(3)", &["101", "000"]),
    case("bit(11)", &["10100000111"]),
    case("varbit", &["", "1", "101010101010101010", "00000000"]),
    case("pg_lsn", &["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"]),
    case("tid", &["(0,1)", "(4294967295,65535)"]),
    case("xid", &["0", "4294967295"]),
    case("cid", &["0", "42"]),
    Case {
        sql_type: "xid8",
        literals: &["0", "18446744073709551615"],
        since: 130000,
    },
    case(
        "point",
        &[
            "(1,2)",
            "(-0,NaN)",
            "(1e300,-1.5e-300)",
            "(Infinity,-Infinity)",
            "(0.1,0.2)",
        ],
    ),
    case("lseg", &["[(1,2),(3,4)]"]),
    case(
        "box",
        &["(3,4),(1,2)", "(1,2),(3,4)", "(0.1,-0.5),(0.1,-0.5)"],
    ),
    case(
        "path",
        &["[(1,2),(3,4)]", "((1,2),(3,4),(5,6))", "[(0.5,0.5)]"],
    ),
    case("polygon", &["((1,2),(3,4),(5,6))", "((0,0))"]),
    case("line", &["{1,2,3}", "{0.1,-1,0}"]),
    case("circle", &["<(1,2),3>", "<(0.5,-0.5),0.1>"]),
    case(
        "int4range",
        &["empty", "[1,10)", "(,5]", "[3,)", "(,)", "[1,1]", "(-5,-2)"],
    ),
    case("int8range", &["[-9223372036854775808,0)", "(,)"]),
    case("numrange", &["[1.5,2.50)", "(,1e-5]", "[NaN,NaN]", "empty"]),
    case(
        "daterange",
        &["[2000-01-01,infinity)", "[0044-03-15 BC,2000-01-01]"],
    ),
    case(
        "tsrange",
        &[
            "[\"2000-01-01 00:00:00\",\"2000-01-02 12:00:00.5\")",
            "[-infinity,infinity]",
            "(,\"0044-03-15 12:00:00 BC\"]",
        ],
    ),
    case(
        "tstzrange",
        &[
            "[\"2000-01-01 00:00:00+00\",\"2000-01-02 12:00:00.5+05:30\")",
            "[-infinity,)",
        ],
    ),
];

/// Explicit array literals: dimensions, bounds, quoting, NULLs.
const ARRAYS: &[(&str, &str)] = &[
    ("int4[]", "{}"),
    ("int4[]", "[0:1]={1,2}"),
    ("int4[]", "[-2:-1]={NULL,2}"),
    ("int4[]", "{{1,2},{3,4},{5,NULL}}"),
    ("int4[]", "[1:2][0:0]={{1},{2}}"),
    ("int4[]", "{{{1,2},{3,4}},{{5,6},{7,8}}}"),
    ("int4[]", "{{{{{{1}}}}}}"),
    (
        "text[]",
        "{\"a b\",\"c\\\"d\",NULL,\"NULL\",\"\",x,\"\\\\\",\"{}\",\"a,b\",\" \"}",
    ),
    ("text[]", "[5:6]={é,😀}"),
    ("text[]", "{{a,b},{NULL,\"}\"}}"),
    ("date[]", "[0:2]={2000-01-01,infinity,\"0044-03-15 BC\"}"),
    ("box[]", "{(3,4),(1,2);(5,6),(1,1)}"),
    ("\"char\"[]", "{a,\"\",\"\\\\\",\"\\\"\"}"),
];

/// Checks every row of `sql` (a value, then its text) and returns how many it checked; a value
/// whose conversion differs from the server's bytes is added to `failures`.
async fn check(client: &Client, types: &UserTypes, sql: &str, failures: &mut Vec<String>) -> usize {
    let stmt = match client.prepare(sql).await {
        Ok(s) => s,
        Err(e) => {
            failures.push(format!("{sql}: {e}"));
            return 0;
        }
    };
    let oid = stmt.columns()[0].type_().oid();
    let rows = match client.query(&stmt, &[]).await {
        Ok(rows) => rows,
        // A server built without libxml has no xml values to convert.
        Err(e) if format!("{e:?}").contains("libxml") => return 0,
        Err(e) => {
            failures.push(format!("{sql}: {e:?}"));
            return 0;
        }
    };
    let mut checked = 0;
    for row in rows {
        let binary: Option<Raw> = row.get(0);
        let text: Option<Raw> = row.get(1);
        let (Some(binary), Some(text)) = (binary, text) else {
            continue;
        };
        checked += 1;
        let converted = match std::str::from_utf8(&text.0) {
            Ok(t) if types == &UserTypes::default() => to_binary(oid, t),
            _ => types.raw_to_binary(oid, &text.0),
        };
        match converted {
            Ok(b) if b[..] == binary.0[..] => {}
            Ok(b) => failures.push(format!(
                "type {oid}, text {:?}: server {} converted {}",
                String::from_utf8_lossy(&text.0),
                hex(&binary.0),
                hex(&b)
            )),
            Err(e) => failures.push(format!(
                "type {oid}, text {:?}: {e}",
                String::from_utf8_lossy(&text.0)
            )),
        }
    }
    checked
}

/// Every literal of [`CASES`] and [`ARRAYS`] alone, and each type's literals as a 1-D array
/// with a NULL and as a 2-D array.
fn value_queries(server: u32) -> Vec<String> {
    let mut queries = Vec::new();
    for c in CASES.iter().filter(|c| server >= c.since) {
        let t = c.sql_type;
        let values: Vec<String> = c
            .literals
            .iter()
            .map(|l| format!("{}::{t}", quote(l)))
            .collect();
        for v in &values {
            queries.push(format!(
                "SELECT v, format('%s', v) FROM (SELECT {v} AS v) s"
            ));
        }
        queries.push(format!(
            "SELECT v, format('%s', v) FROM (SELECT ARRAY[{}, NULL::{t}] AS v) s",
            values.join(", ")
        ));
        if values.len() >= 2 {
            queries.push(format!(
                "SELECT v, format('%s', v) FROM (SELECT ARRAY[[{a}, {b}], [{b}, NULL::{t}]] AS v) s",
                a = values[0],
                b = values[1]
            ));
        }
    }
    for (t, literal) in ARRAYS {
        queries.push(format!(
            "SELECT v, format('%s', v) FROM (SELECT {}::{t} AS v) s",
            quote(literal)
        ));
    }
    queries
}

/// Thousands of random values per type, generated by the server.
const RANDOM: &[&str] = &[
    "SELECT v, format('%s', v) FROM (SELECT sign(random() - 0.5) * (0.5 + random()) * 10 ^ (random() * 600 - 300) AS v FROM generate_series(1, 3000)) s",
    "SELECT v, format('%s', v) FROM (SELECT '4.9e-324'::float8 * (random() * 1e6)::int AS v FROM generate_series(1, 500)) s",
    "SELECT v, format('%s', v) FROM (SELECT (sign(random() - 0.5) * (0.5 + random()) * 10 ^ (random() * 74 - 37))::float4 AS v FROM generate_series(1, 3000)) s",
    "SELECT v, format('%s', v) FROM (SELECT round(((random() - 0.5) * 10 ^ (random() * 40))::numeric, (random() * 30)::int) AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT (random() * 1e15)::int8::numeric / 10::numeric ^ (random() * 60)::int AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT ((random() - 0.5) * 1e6)::numeric(20, 4)::money AS v FROM generate_series(1, 500)) s",
    "SELECT v, format('%s', v) FROM (SELECT timestamp '4000-01-01 BC' + random() * interval '2900000 days' AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT timestamptz '4000-01-01 00:00:00+00 BC' + random() * interval '2900000 days' AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT date '4000-01-01 BC' + (random() * 2900000)::int AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT time '00:00' + random() * interval '24 hours' AS v FROM generate_series(1, 1000)) s",
    "SELECT v, format('%s', v) FROM (SELECT (time '00:00' + random() * interval '24 hours')::timetz AS v FROM generate_series(1, 1000)) s",
    "SELECT v, format('%s', v) FROM (SELECT make_interval((random() * 200 - 100)::int, (random() * 40 - 20)::int, 0, (random() * 100 - 50)::int, 0, 0, (random() - 0.5) * 1e7) AS v FROM generate_series(1, 2000)) s",
    "SELECT v, format('%s', v) FROM (SELECT ARRAY[random(), NULL, -random()] AS v FROM generate_series(1, 200)) s",
    "SELECT v, format('%s', v) FROM (SELECT int4range(l, l + (random() * 100)::int) AS v FROM (SELECT (random() * 1000)::int AS l FROM generate_series(1, 300)) x) s",
];

#[tokio::test]
async fn text_of_every_converted_type_gives_the_servers_binary_bytes() {
    let urls = server_urls();
    if urls.is_empty() {
        println!("skipped: no CUTOVER_TEST_SOURCE_URL (run scripts/services.sh start)");
        return;
    }
    for url in urls {
        let client = connect(&url).await;
        let server = version(&client).await;
        let mut failures = Vec::new();
        let mut checked = 0;
        let types = UserTypes::default();
        for settings in std::iter::once(REPLICATION_SETTINGS).chain(OTHER_SETTINGS.iter().copied())
        {
            client.batch_execute(settings).await.unwrap();
            if server < 120000 {
                // Before 12, extra_float_digits below 3 rounds floats (12 on prints the
                // shortest exact text at any value above 0); the replication session uses 3.
                client
                    .batch_execute("SET extra_float_digits = 3")
                    .await
                    .unwrap();
            }
            for q in value_queries(server) {
                checked += check(&client, &types, &q, &mut failures).await;
            }
            for q in RANDOM {
                checked += check(&client, &types, q, &mut failures).await;
            }
            if server >= 140000 {
                // The least interval has no literal (its hours overflow on input).
                let least = "SELECT v, format('%s', v) FROM (SELECT interval '-2562047788:00:54.775807' - interval '1 microsecond' AS v) s";
                checked += check(&client, &types, least, &mut failures).await;
            }
        }
        println!("PostgreSQL {server}: {checked} values checked");
        assert!(
            failures.is_empty(),
            "PostgreSQL {server}: {} of {checked} values differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(checked > 30_000, "only {checked} values were checked");
    }
}

/// What text cannot say (the module doc's limits), pinned so the doc stays true: the values
/// agree, the bytes may not.
#[tokio::test]
async fn the_documented_limits_are_what_the_server_does() {
    let urls = server_urls();
    if urls.is_empty() {
        println!("skipped: no CUTOVER_TEST_SOURCE_URL (run scripts/services.sh start)");
        return;
    }
    let client = connect(&urls[0]).await;
    client.batch_execute(REPLICATION_SETTINGS).await.unwrap();
    // A NaN with the sign bit set prints as NaN and converts to the positive NaN.
    let row = client
        .query_one(
            "SELECT v, format('%s', v) FROM (SELECT -'NaN'::float8 AS v) s",
            &[],
        )
        .await
        .unwrap();
    let (binary, text): (Raw, String) = (row.get(0), row.get(1));
    let converted = to_binary(701, &text).unwrap();
    assert!(f64::from_be_bytes(binary.0[..].try_into().unwrap()).is_nan());
    assert!(f64::from_be_bytes(converted[..].try_into().unwrap()).is_nan());
    assert_ne!(
        binary.0[..],
        converted[..],
        "the server's NaN has its sign bit set"
    );
    // An array that lost its NULL keeps the server's null bitmap (has-nulls flag 1); its text
    // shows no NULL (flag 0). The elements are the same.
    client
        .batch_execute(
            "CREATE TEMP TABLE lost_null (a int4[]); INSERT INTO lost_null VALUES ('{NULL,2}');
             UPDATE lost_null SET a[1] = 5",
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT a, format('%s', a) FROM lost_null", &[])
        .await
        .unwrap();
    let (binary, text): (Raw, String) = (row.get(0), row.get(1));
    let converted = to_binary(1007, &text).unwrap();
    assert_eq!(text, "{5,2}");
    assert_eq!(binary.0[7], 1, "the server keeps the bitmap");
    assert_eq!(converted[7], 0);
    assert_eq!(binary.0[8..], converted[8..]);
    // aclitem has no binary send function: its text converts to nothing.
    let text: String = client
        .query_one("SELECT 'postgres=r/postgres'::aclitem::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(matches!(
        to_binary(1033, &text),
        Err(TextValueError::Unsupported { .. })
    ));
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A database of its own for a test, on the server `url` names; its URL.
async fn fresh_database(admin: &Client, url: &str, tag: &str) -> (String, String) {
    let name = format!(
        "cutover_text_values_{}_{}_{tag}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    (name.clone(), format!("{base}/{name}{query}"))
}

/// Drops a test's database (`WITH (FORCE)` from 13; before, once its session has closed).
async fn drop_database(admin: &Client, db: &str) {
    if admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .is_err()
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ = admin.batch_execute(&format!("DROP DATABASE {db}")).await;
    }
}

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ish', 'quote"d', 'é');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN email AS text;
CREATE DOMAIN posint_arr AS int4[];
CREATE DOMAIN mood_d AS mood;
CREATE DOMAIN stamp AS timestamptz;
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE t (
    id int PRIMARY KEY,
    b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, n numeric, n2 numeric(12,2),
    m money, tx text, vc varchar(10), bc char(5), nm name, ch "char", by bytea, u uuid, j json,
    jb jsonb, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    ip inet, cd cidr, mac macaddr, mac8 macaddr8, bt bit(4), vb varbit, lsn pg_lsn, pt point,
    bx box, r4 int4range, rts tstzrange, ai int4[], atx text[], a2 int4[], ats timestamptz[],
    abx box[], e mood, ae mood[], dp posint, de email, dpa posint_arr, dm mood_d, adp posint[],
    ads stamp[], fr floatrange, afr floatrange[]
);
CREATE TABLE pairs (id int PRIMARY KEY, p pair);
"#;

const ROWS: &str = r#"
INSERT INTO t VALUES (
    1, true, -2, 42, 9223372036854775807, 4294967295, 0.1, 0.30000000000000004, 12.50, -3.10,
    '-$1,234.56', 'a "quoted" text', 'é', 'ab', 'pg_class', 'x', '\x00ff5c', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"a": [1, 2.50]}', '{"b": 1, "a": null}', '0044-03-15 BC', '24:00:00', '12:00:00+05:30',
    '2024-02-29 12:34:56.789', '2024-05-01 12:00:00+05:30', '1 year 2 mons -3 days +04:05:06.789',
    '::ffff:1.2.3.4', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '1010',
    '10101', '16/B374D848', '(1,2)', '(3,4),(1,2)', '[1,10)',
    '["2000-01-01 00:00:00+00","2000-01-02 12:00:00.5+05:30")', '[0:1]={1,NULL}',
    '{"a b",NULL,"NULL","",x}', '{{1,2},{3,4}}', '{"2000-01-01 00:00:00+00",infinity}',
    '{(3,4),(1,2);(5,6),(1,1)}', 'happy ish', '{sad,"quote\"d",NULL,é}', 7, 'me@example.com',
    '{1,2}', 'ok', '{1,NULL,3}', '{"2024-05-01 12:00:00+02",-infinity}', '[1.5,2.5)',
    '{"[1,2)",empty,NULL}'
), (
    2, false, 32767, -2147483648, -9223372036854775808, 0, 'NaN', '-Infinity', 'NaN', 0,
    '0', '', '', '', '', '', '\x', '00000000-0000-0000-0000-000000000000', '[]', '[]',
    'infinity', '00:00:00', '23:59:59.999999-15:59:59', '-infinity', '0044-03-15 12:00:00+00 BC',
    '-2562047788:00:54.775807', '::/0', '::/0', 'ff:ff:ff:ff:ff:ff', '08:00:2b:01:02:03',
    '0000', '', '0/0', '(-0,NaN)', '(0,0),(0,0)', 'empty', '(,)', '{}', '{}', '{}', '{}', '{}',
    'sad', '{}', 2147483647, '', '{}', 'é', '{}', '{}', 'empty', '{}'
);
INSERT INTO t (id) VALUES (3);
INSERT INTO pairs VALUES (1, '(1,x)');
"#;

/// The rows of `t` in binary, by id.
async fn table_rows(client: &Client) -> Vec<(i32, Vec<Value>)> {
    client
        .query("SELECT * FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let id: i32 = row.get(0);
            let values = (0..row.len())
                .map(|i| match row.get::<_, Option<Raw>>(i) {
                    Some(raw) => Value::Binary(raw.0.into()),
                    None => Value::Null,
                })
                .collect();
            (id, values)
        })
        .collect()
}

/// Takes the changes of `slot` (pgoutput, protocol 1: every value as text) and decodes them.
async fn changes(
    client: &Client,
    slot: &str,
    decoder: &mut Decoder,
) -> Vec<Result<Message, DecodeError>> {
    client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'text_values')",
            &[&slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| decoder.decode(&bytes::Bytes::from(row.get::<_, Vec<u8>>(0))))
        .collect()
}

fn differences(
    table: &str,
    decoded: &[Value],
    expected: &[Value],
    columns: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    if decoded.len() != expected.len() {
        out.push(format!(
            "{table}: {} values, expected {}",
            decoded.len(),
            expected.len()
        ));
        return out;
    }
    for ((d, e), name) in decoded.iter().zip(expected).zip(columns) {
        if d != e {
            let show = |v: &Value| match v {
                Value::Binary(b) => hex(b),
                other => format!("{other:?}"),
            };
            out.push(format!(
                "{table}.{name}: decoded {} expected {}",
                show(d),
                show(e)
            ));
        }
    }
    out
}

#[tokio::test]
async fn pgoutput_text_frames_of_a_real_slot_decode_to_the_tables_binary_values() {
    let urls = server_urls();
    if urls.is_empty() {
        println!("skipped: no CUTOVER_TEST_SOURCE_URL (run scripts/services.sh start)");
        return;
    }
    // The Debian cluster only: on 18 the slot's table decodes differently (to investigate).
    for url in urls {
        let admin = connect(&url).await;
        if version(&admin).await < 110000 {
            // Domains over arrays and arrays of domains came with 11.
            println!("skipped on PostgreSQL 10: the schema uses arrays of domains");
            continue;
        }
        let (db, db_url) = fresh_database(&admin, &url, "pgoutput").await;
        let client = connect(&db_url).await;
        client.batch_execute(SCHEMA).await.unwrap();
        client
            .batch_execute(
                "ALTER TABLE t REPLICA IDENTITY FULL;
                 CREATE PUBLICATION text_values FOR TABLE t, pairs",
            )
            .await
            .unwrap();
        client
            // Slots are the cluster's: named after the test's own database.
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&db],
            )
            .await
            .unwrap();
        // The SQL interface decodes in this session: its settings are the replication
        // session's. It decodes only WAL that is flushed: the test clusters commit without
        // waiting for the flush (synchronous_commit = off), so this session waits.
        client.batch_execute(REPLICATION_SETTINGS).await.unwrap();
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .unwrap();
        let rows = if version(&client).await >= 140000 {
            ROWS.to_string()
        } else {
            // Before 14, hours past 2^31 are refused on input.
            ROWS.replace("'-2562047788:00:54.775807'", "'-2147483647:00:54.775807'")
        };
        client.batch_execute(&rows).await.unwrap();

        let mut decoder = Decoder::new();
        decoder.learn_types(UserTypes::load(&client).await.unwrap());
        let expected = table_rows(&client).await;
        let columns: Vec<String> = client
            .prepare("SELECT * FROM t")
            .await
            .unwrap()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let mut failures = Vec::new();
        let mut inserts = 0;
        let mut refused = None;
        for message in changes(&client, &db, &mut decoder).await {
            match message {
                Ok(Message::Insert { table, row }) if table.name.name == "t" => {
                    let id = inserts;
                    inserts += 1;
                    failures.extend(differences("t", &row.0, &expected[id].1, &columns));
                }
                Ok(_) => {}
                Err(e) => refused = Some(e),
            }
        }
        assert_eq!(inserts, 3, "every insert into t decodes: {refused:?}");
        // The composite column's text has no conversion: a clear error naming it.
        let refused = refused.expect("the insert into pairs is refused");
        let message = refused.to_string();
        assert!(
            matches!(&refused, DecodeError::TextValue { column, source: TextValueError::Unsupported { .. }, .. } if column == "p"),
            "{message}"
        );
        assert!(message.contains("public.pair"), "{message}");

        // An update (old row and new row as text under REPLICA IDENTITY FULL) and a delete.
        client
            .batch_execute(
                "UPDATE t SET i4 = -1, tstz = '1900-01-01 00:00:00+00', ae = '{ok}' WHERE id = 1;
                 DELETE FROM t WHERE id = 2;
                 DELETE FROM pairs",
            )
            .await
            .unwrap();
        let after = table_rows(&client).await;
        let mut updates = 0;
        let mut deletes = 0;
        for message in changes(&client, &db, &mut decoder).await {
            match message {
                Ok(Message::Update {
                    table,
                    old_key,
                    row,
                }) if table.name.name == "t" => {
                    updates += 1;
                    failures.extend(differences("t (new)", &row.0, &after[0].1, &columns));
                    let old = old_key.expect("the old row under REPLICA IDENTITY FULL");
                    failures.extend(differences("t (old)", &old.0, &expected[0].1, &columns));
                }
                Ok(Message::Delete { table, key }) if table.name.name == "t" => {
                    deletes += 1;
                    failures.extend(differences("t (deleted)", &key.0, &expected[1].1, &columns));
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("cannot decode: {e}")),
            }
        }
        client
            .query("SELECT pg_drop_replication_slot($1)", &[&db])
            .await
            .unwrap();
        drop(client);
        drop_database(&admin, &db).await;
        assert_eq!((updates, deletes), (1, 1));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[tokio::test]
async fn user_types_from_the_catalog_convert_like_the_server_sends_them() {
    let urls = server_urls();
    if urls.is_empty() {
        println!("skipped: no CUTOVER_TEST_SOURCE_URL (run scripts/services.sh start)");
        return;
    }
    let admin = connect(&urls[0]).await;
    let (db, db_url) = fresh_database(&admin, &urls[0], "types").await;
    let client = connect(&db_url).await;
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(REPLICATION_SETTINGS).await.unwrap();
    let types = UserTypes::load(&client).await.unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (t, literal) in [
        ("mood", "happy ish"),
        ("mood", "quote\"d"),
        ("mood[]", "{sad,\"quote\\\"d\",NULL,é}"),
        ("mood[]", "[0:0]={ok}"),
        ("posint", "7"),
        ("email", "me@example.com"),
        ("posint_arr", "{1,2,NULL}"),
        ("mood_d", "ok"),
        ("mood_d[]", "{ok,sad}"),
        ("posint[]", "{{1,2},{3,NULL}}"),
        ("stamp", "0044-03-15 12:00:00+00 BC"),
        ("stamp[]", "{infinity,\"2024-05-01 12:00:00+02\"}"),
        ("floatrange", "[1.5,2.5)"),
        ("floatrange", "(,NaN]"),
        ("floatrange[]", "{\"[1,2)\",empty,NULL}"),
    ] {
        checked += check(
            &client,
            &types,
            &format!(
                "SELECT v, format('%s', v) FROM (SELECT {}::{t} AS v) s",
                quote(literal)
            ),
            &mut failures,
        )
        .await;
    }
    // A composite has no conversion, and says which type it is.
    let pair: u32 = client
        .query_one("SELECT 'pair'::regtype::oid", &[])
        .await
        .unwrap()
        .get(0);
    let e = types.to_binary(pair, "(1,x)").unwrap_err();
    assert!(matches!(e, TextValueError::Unsupported { .. }), "{e}");
    drop(client);
    drop_database(&admin, &db).await;
    assert_eq!(checked, 15);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
