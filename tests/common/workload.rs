//! A mixed OLTP write workload on a small shop schema: inserts, updates (including primary-key
//! changes and NULLs), deletes, multi-table transactions, across many column types.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

pub const TABLES: &[&str] = &["customers", "orders", "items"];

pub const SCHEMA: &str = "
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email varchar(200), balance numeric(14,2),
    active boolean, created timestamptz, tags text[], profile jsonb, photo bytea, uid uuid,
    born date, ip inet, dur interval, score float8, small int2, at time, grid int[]);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint, amount numeric(12,2), note text, placed timestamp);
CREATE TABLE items (
    order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line));
";

/// Inserts `customers` rows (and an order with two items for every tenth) in one statement each.
pub async fn prefill(client: &Client, customers: i64) {
    client
        .batch_execute(&format!(
            "INSERT INTO customers
             SELECT g, 'customer ' || g, 'c' || g || '@example.com', (g % 1000) * 1.25, g % 2 = 0,
                    '2024-01-01'::timestamptz + g * interval '1 minute', ARRAY['a' || g, NULL, 'b'],
                    jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'x', null)),
                    decode(md5(g::text), 'hex'), md5(g::text)::uuid, '1990-01-01'::date + (g % 5000),
                    ('10.0.' || (g % 250) || '.1')::inet, g * interval '1 second', g / 7.0, (g % 30000)::int2,
                    '12:34:56.789'::time, ARRAY[[g, 1], [2, NULL]]
               FROM generate_series(1, {customers}) g;
             INSERT INTO orders SELECT g, g, g * 2.5, 'first order', '2024-02-01'::timestamp + g * interval '1 s'
               FROM generate_series(1, {customers}, 10) g;
             INSERT INTO items SELECT o, l, 'sku-' || o || '-' || l, l FROM generate_series(1, {customers}, 10) o, generate_series(1, 2) l;"
        ))
        .await
        .unwrap();
}

/// Runs random transactions until `stop` is set. Returns the number committed.
pub async fn run(client: Client, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>, seed: u64) {
    run_paced(
        client,
        stop,
        committed,
        seed,
        std::time::Duration::ZERO,
        u64::MAX,
    )
    .await
}

/// Like [`run`], pausing `pause` after each transaction and stopping by itself once `limit`
/// transactions were attempted.
pub async fn run_paced(
    client: Client,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    seed: u64,
    pause: std::time::Duration,
    limit: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_id: i64 = 10_000_000 + (seed as i64 % 1000) * 1_000_000;
    let mut attempted = 0;
    while !stop.load(Ordering::Relaxed) && attempted < limit {
        attempted += 1;
        let id: i64 = rng.gen_range(1..2000);
        let sql = match rng.gen_range(0..8) {
            0 => {
                next_id += 1;
                format!(
                    "INSERT INTO customers (id, name, email, balance, tags, profile, score)
                     VALUES ({next_id}, 'new {next_id}', NULL, {}.5, ARRAY['n'], '{{\"new\": true}}', 'NaN')",
                    rng.gen_range(0..1000)
                )
            }
            1 => format!(
                "UPDATE customers SET balance = balance + 1, active = NOT coalesce(active, false), email = NULL WHERE id = {id}"
            ),
            2 => format!("DELETE FROM customers WHERE id = {id}"),
            3 => {
                next_id += 1;
                format!(
                    "BEGIN; INSERT INTO orders VALUES ({next_id}, {id}, 9.99, 'multi-table', now());
                     INSERT INTO items VALUES ({next_id}, 1, 'x', 1), ({next_id}, 2, 'y', 2);
                     UPDATE customers SET balance = balance - 9.99 WHERE id = {id}; COMMIT;"
                )
            }
            4 => format!("UPDATE items SET line = line + 100 WHERE order_id = (SELECT max(order_id) FROM items WHERE order_id % 7 = {})", id % 7),
            5 => format!("DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE id > {})", id * 3),
            6 => {
                next_id += 1;
                let new = next_id;
                format!("UPDATE customers SET id = {new} WHERE id = (SELECT min(id) FROM customers WHERE id >= {id} AND id < 10000000)")
            }
            _ => format!(
                "UPDATE orders SET amount = amount * 2, note = repeat('n', {}) WHERE customer_id = {id}",
                rng.gen_range(0..300)
            ),
        };
        if client.batch_execute(&sql).await.is_ok() {
            committed.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    pub committed: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Workload {
    pub fn start(client: Client, seed: u64) -> Workload {
        Self::start_paced(client, seed, std::time::Duration::ZERO)
    }

    /// A workload that pauses `pause` after each transaction (for slow targets).
    pub fn start_paced(client: Client, seed: u64, pause: std::time::Duration) -> Workload {
        Self::spawn(client, seed, pause, u64::MAX)
    }

    /// A workload of exactly `transactions` attempts, so a slow target gets the same amount
    /// of work on a fast machine as on a slow one; [`Workload::stop`] waits for all of them.
    pub fn start_counted(client: Client, seed: u64, transactions: u64) -> Workload {
        Self::spawn(client, seed, std::time::Duration::ZERO, transactions)
    }

    fn spawn(client: Client, seed: u64, pause: std::time::Duration, limit: u64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(run_paced(
            client,
            stop.clone(),
            committed.clone(),
            seed,
            pause,
            limit,
        ));
        Workload {
            stop,
            committed,
            handle,
        }
    }

    /// Waits for a counted workload to finish all its transactions.
    pub async fn finish(self) -> u64 {
        self.handle.await.unwrap();
        self.committed.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap();
        self.committed.load(Ordering::Relaxed)
    }
}
