-- pgbench script: the live application writing while cutover copies and streams.
\set id random(1, 20000)
\set oid random(400000, 900000000)
\set item :oid * 10 + 1
BEGIN;
UPDATE customers SET balance = balance + 1, active = NOT active WHERE id = :id;
INSERT INTO orders VALUES (:oid, :id, 19.99, 'live order', now()) ON CONFLICT DO NOTHING;
INSERT INTO order_items VALUES (:item, :oid, 1, 'sku-live', 1) ON CONFLICT DO NOTHING;
END;
DELETE FROM order_items WHERE order_id = :id * 3 + 1 AND line = 3;
UPDATE orders SET id = :oid + 1 WHERE id = :id + 30000 - 20000;
