//! TRUNCATE per sink: replicated by default, left out for a sink with `truncate = false`.

use crate::common;

use std::time::{Duration, Instant};

use common::{contents, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_truncate_off_keeps_its_rows_and_goes_on_applying() {
    let env = Env::new("truncate_off").await;
    env.on_source(
        "CREATE TABLE history (id int PRIMARY KEY, v text);
         INSERT INTO history SELECT g, 'old ' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let path = env.pipeline_with("[\"public.history\"]", "", "truncate = false\n");
    let mut run = env.start(&path);
    env.wait_equal(&["history"], Duration::from_secs(60)).await;
    env.on_source("TRUNCATE history; INSERT INTO history VALUES (1, 'new 1'), (11, 'new 11');")
        .await;
    let target = env.target().await;
    let mut expected: Vec<String> = (2..=10).map(|g| format!("({g},\"old {g}\")")).collect();
    expected.push("(1,\"new 1\")".into());
    expected.push("(11,\"new 11\")".into());
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = contents(&target, "history").await;
        if rows == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target holds {rows:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(run.terminate().success(), "{}", run.log_text());
    env.drop_slot().await;
}
