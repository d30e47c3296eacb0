-- Generated database and queries for tests/programs.rs (run as
-- `sqlite3 <fresh db file> < sqlite_workload.sql`); output must be identical
-- under glibc and under LD_PRELOAD=librmalloc.so.
-- Data comes from recursive CTEs with integer arithmetic: fully deterministic.
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -32000;  -- 32 MB page cache, allocated through malloc
.headers on
.mode list

CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, score REAL);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers(id),
                    amount INTEGER, note TEXT, payload BLOB);
CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);

BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
INSERT INTO customers
SELECT i, 'customer-' || printf('%06d', (i * 7919) % 100003),
       'city' || (i * 31 % 97), ((i * 2654435761) % 10000) / 100.0
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120000)
INSERT INTO orders
SELECT i, 1 + (i * 48271) % 20000, (i * 16807) % 100000,
       substr('lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod', 1 + i % 40, 1 + i % 30),
       zeroblob(i % 700)
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO docs
SELECT i, json_object('id', i, 'tags', json_array('t' || (i % 13), 't' || (i % 7)),
                      'text', printf('%.*c', 50 + i % 3000, 'x'))
FROM n;
COMMIT;

CREATE INDEX orders_customer ON orders(customer);
CREATE INDEX orders_amount ON orders(amount);
CREATE INDEX customers_city ON customers(city, score);

SELECT count(*) AS customers FROM customers;
SELECT count(*) AS orders, sum(amount) AS total, sum(length(payload)) AS blob_bytes FROM orders;

-- Join + group by + order by.
SELECT c.city, count(*) AS n, sum(o.amount) AS total, round(avg(c.score), 3) AS avg_score
FROM orders o JOIN customers c ON c.id = o.customer
GROUP BY c.city ORDER BY total DESC, c.city LIMIT 10;

-- Window functions over a large sort.
SELECT customer, amount, rnk FROM (
  SELECT customer, amount, rank() OVER (PARTITION BY customer ORDER BY amount DESC, id) AS rnk
  FROM orders)
WHERE rnk <= 2 AND customer % 2500 = 1 ORDER BY customer, rnk;

-- String aggregation and distinct.
SELECT length(group_concat(name, ',')) AS concat_len, count(DISTINCT city) AS cities
FROM (SELECT name, city FROM customers ORDER BY name);

-- JSON.
SELECT json_extract(body, '$.tags[0]') AS tag, count(*) AS n, sum(length(json_extract(body, '$.text'))) AS chars
FROM docs GROUP BY tag ORDER BY tag;

-- Updates, deletes, and a temp table built from a big sort.
BEGIN;
UPDATE orders SET note = upper(note) || '!' WHERE amount % 3 = 0;
DELETE FROM orders WHERE amount % 11 = 0;
UPDATE docs SET body = json_set(body, '$.extra', printf('%.*c', id % 5000, 'y')) WHERE id % 4 = 0;
COMMIT;
CREATE TEMP TABLE top AS SELECT customer, sum(amount) AS s FROM orders GROUP BY customer ORDER BY s DESC;
SELECT count(*) AS top_rows, max(s) AS best, min(s) AS worst FROM top;
SELECT count(*) AS orders_left, sum(amount) AS total, count(*) FILTER (WHERE note LIKE '%!') AS shouted FROM orders;
SELECT sum(length(body)) AS doc_chars FROM docs;

PRAGMA wal_checkpoint(TRUNCATE);
VACUUM;
PRAGMA integrity_check;
SELECT count(*) AS after_vacuum FROM orders;
