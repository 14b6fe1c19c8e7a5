-- The demo's source schema: several tables and many column types. (MongoDB's stand-in here,
-- SecantusDB, finds a document with a composite _id by scanning its collection, so the demo's
-- tables have one-column keys; composite keys are covered by the tests.)
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email varchar(200), balance numeric(14,2),
    active boolean, created timestamptz, tags text[], profile jsonb, uid uuid, born date,
    ip inet, score float8);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(12,2), note text,
    placed timestamp NOT NULL);
CREATE TABLE order_items (
    id bigint PRIMARY KEY, order_id bigint NOT NULL, line int NOT NULL, sku text, qty int,
    UNIQUE (order_id, line));
CREATE TABLE documents (id uuid PRIMARY KEY, title text, body text, attachment bytea);
