//! Data fidelity PostgreSQL to PostgreSQL: a column of (almost) every type, edge values and
//! 10 MB values, copied by the snapshot and then streamed, arrive exactly (every row's text form
//! agrees); `cutover verify` agrees, finds drift in user-defined types and repairs it.

use crate::common;

use std::time::Duration;

use common::{contents, cutover, Env};

/// Types that must exist on both sides (cutover does not create user-defined types).
const TYPES: &str = "
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
";

const TABLE: &str = "
CREATE TABLE fid (
    id int PRIMARY KEY,
    e mood, dm positive, cp pair, r4 int4range, r8 int8range, nr numrange, tr tsrange,
    tzr tstzrange, dr daterange, tv tsvector, tq tsquery, b8 bit(8), vb varbit, hs hstore,
    x xml, p point, bx box, m8 macaddr8, lsn pg_lsn, tt text, by bytea, n numeric,
    f8 float8, f4 float4, ia int[], na numeric[], ta text[], ja jsonb[], ca pair[], ea mood[]);
";

fn row(id: i32, big: bool) -> String {
    let text = if big {
        "repeat('x😀', 2621440)"
    } else {
        "'small'"
    };
    let bytes = if big {
        "decode(repeat('00ff', 5242880), 'hex')"
    } else {
        "'\\x00'::bytea"
    };
    format!(
        "({id}, 'happy 😀', {id} + 1, ROW({id}, 'p ' || {id})::pair, '[1,10)', '(,5]', '[1.5,2.25]',
          '[2024-01-01 00:00:00.000001,2024-01-02)', '[2024-01-01 00:00+02,infinity)', '[2024-01-01,2024-02-01)',
          'a fat cat sat on a mat', 'fat & (rat | cat)', B'10101010', B'1011', 'a=>1, b=>NULL',
          '<r a=\"1\">x</r>', '(1.5,-2)', '((0,0),(1,1))', '08:00:2b:01:02:03:04:05', '16/B374D848',
          {text}, {bytes}, 'NaN', '-Infinity', '1.17549435e-38', '{{{{1,NULL}},{{3,4}}}}',
          '{{1.50,NaN,-0.001}}', '{{\"\",NULL,\"😀\"}}', ARRAY['{{\"a\": [1, 2.5]}}'::jsonb, NULL],
          ARRAY[ROW(1, 'x')::pair, NULL], ARRAY['sad', NULL, 'happy 😀']::mood[])"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_arrives_exactly_by_snapshot_and_by_stream() {
    let env = Env::new("fidelity").await;
    env.on_source(TYPES).await;
    env.target().await.batch_execute(TYPES).await.unwrap();
    env.on_source(TABLE).await;
    env.on_source(&format!(
        "INSERT INTO fid VALUES {}, {}; INSERT INTO fid (id) VALUES (3);",
        row(1, false),
        row(2, true)
    ))
    .await;
    let path = env.pipeline("[\"public.fid\"]", "");
    let mut run = env.start(&path);
    run.wait_log("streaming changes", Duration::from_secs(120))
        .await;
    env.on_source(&format!(
        "INSERT INTO fid VALUES {}, {}; INSERT INTO fid (id) VALUES (13);
         UPDATE fid SET e = 'sad', hs = hs || 'c=>3', tv = 'new words', cp = ROW(-1, NULL)::pair WHERE id = 1;
         UPDATE fid SET n = 12.50 WHERE id = 12;",
        row(11, false),
        row(12, true)
    ))
    .await;
    env.wait_equal(&["fid"], Duration::from_secs(120)).await;
    for (label, client) in [
        ("source", env.source().await),
        ("target", env.target().await),
    ] {
        let n: i64 = client
            .query_one("SELECT count(*) FROM fid", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 6, "{label}");
    }
    let digest = "SELECT md5(string_agg(id || ':' || md5(fid::text), ',' ORDER BY id)) FROM fid";
    let a: String = env
        .source()
        .await
        .query_one(digest, &[])
        .await
        .unwrap()
        .get(0);
    let b: String = env
        .target()
        .await
        .query_one(digest, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(a, b);
    assert_eq!(
        contents(&env.source().await, "fid").await.len(),
        contents(&env.target().await, "fid").await.len()
    );
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("source 6 rows, target 6 rows"), "{out}");
    assert!(run.terminate().success(), "{}", run.log_text());

    // Drift in columns of user-defined types is found (compared in their text form) and
    // repaired from the source's binary values.
    env.target()
        .await
        .batch_execute("UPDATE fid SET ea = '{ok}', cp = ROW(9, 'z')::pair WHERE id = 11")
        .await
        .unwrap();
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "different  {\"id\": 11}: cp (source \"(11,\\\"p 11\\\")\", target \"(9,z)\")"
        ),
        "{out}"
    );
    assert!(
        out.contains("ea (source \"{sad,NULL,\\\"happy 😀\\\"}\", target \"{ok}\")"),
        "{out}"
    );
    let (code, out, err) = cutover(&["verify", path.to_str().unwrap(), "--repair"]);
    assert_eq!(code, 0, "{out}{err}");
    env.wait_equal(&["fid"], Duration::from_secs(5)).await;
    env.drop_slot().await;
}
