-- The demo's sample data (about 80k rows: the MongoDB stand-in, SecantusDB, is written in
-- Python and takes about a minute for it).
INSERT INTO customers
SELECT g, 'customer ' || g, 'c' || g || '@example.com', (g % 1000) * 1.25, g % 3 = 0,
       '2024-01-01'::timestamptz + g * interval '1 minute', ARRAY['t' || (g % 7)],
       jsonb_build_object('tier', g % 4, 'since', 2000 + g % 25), md5(g::text)::uuid,
       '1970-01-01'::date + (g % 18000), ('10.1.' || (g % 250) || '.' || (g % 200))::inet, g / 3.0
  FROM generate_series(1, 20000) g;
INSERT INTO orders
SELECT g, 1 + g % 20000, (g % 500) * 0.99, 'order ' || g, '2025-01-01'::timestamp + g * interval '1 s'
  FROM generate_series(1, 30000) g;
INSERT INTO order_items
SELECT o * 10 + l, o, l, 'sku-' || (o % 5000), l FROM generate_series(1, 30000, 3) o, generate_series(1, 3) l;
INSERT INTO documents
SELECT md5('doc' || g)::uuid, 'document ' || g, repeat('lorem ipsum ', 200 + g % 400), decode(md5(g::text), 'hex')
  FROM generate_series(1, 1000) g;
