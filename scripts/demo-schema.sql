-- The demo's source schema: several tables and many column types.
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email varchar(200), balance numeric(14,2),
    active boolean, created timestamptz, tags text[], profile jsonb, uid uuid, born date,
    ip inet, score float8);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(12,2), note text,
    placed timestamp NOT NULL);
CREATE TABLE order_items (
    order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line));
CREATE TABLE documents (id uuid PRIMARY KEY, title text, body text, attachment bytea);

INSERT INTO customers
SELECT g, 'customer ' || g, 'c' || g || '@example.com', (g % 1000) * 1.25, g % 3 = 0,
       '2024-01-01'::timestamptz + g * interval '1 minute', ARRAY['t' || (g % 7)],
       jsonb_build_object('tier', g % 4, 'since', 2000 + g % 25), md5(g::text)::uuid,
       '1970-01-01'::date + (g % 18000), ('10.1.' || (g % 250) || '.' || (g % 200))::inet, g / 3.0
  FROM generate_series(1, 200000) g;
INSERT INTO orders
SELECT g, 1 + g % 200000, (g % 500) * 0.99, 'order ' || g, '2025-01-01'::timestamp + g * interval '1 s'
  FROM generate_series(1, 300000) g;
INSERT INTO order_items SELECT o, l, 'sku-' || (o % 5000), l FROM generate_series(1, 300000, 3) o, generate_series(1, 3) l;
INSERT INTO documents
SELECT md5('doc' || g)::uuid, 'document ' || g, repeat('lorem ipsum ', 200 + g % 400), decode(md5(g::text), 'hex')
  FROM generate_series(1, 2000) g;
