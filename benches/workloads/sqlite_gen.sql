-- Generate the benchmark database (run once, under glibc, by the runner).
-- {ORDERS} and {CUSTOMERS} are substituted by the runner (fewer rows in quick mode).
-- Rows are pseudo-random but fixed: every value derives from the row number.
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, region INTEGER, joined INTEGER);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, amount REAL, status TEXT, note TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {CUSTOMERS})
INSERT INTO customers
SELECT i, 'customer-' || printf('%06d', (i * 7919) % 1000003), i % 37, 1600000000 + (i * 104729) % 90000000 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ORDERS})
INSERT INTO orders
SELECT i, 1 + (i * 2654435761) % {CUSTOMERS}, ((i * 48271) % 100000) / 100.0,
       CASE i % 5 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' WHEN 3 THEN 'done' ELSE 'returned' END,
       substr(printf('%016x%016x%016x%016x%016x%016x', i * 2654435761, i * 40503, i * 977, i * 31337, i * 7, i), 1, 10 + i % 86)
FROM n;
CREATE INDEX orders_customer ON orders(customer);
