-- The measured sqlite3 work: aggregation, joins, sorting, temporary tables and
-- string building over the generated database (read-only on the file: all
-- writes go to in-memory temporary tables).  Large page cache and in-memory
-- temp store make SQLite's own allocations go through malloc.
PRAGMA cache_size = -200000;
PRAGMA temp_store = MEMORY;
SELECT status, count(*), round(sum(amount), 2), max(length(note)) FROM orders GROUP BY status ORDER BY status;
SELECT c.region, count(*), round(avg(o.amount), 4)
  FROM orders o JOIN customers c ON c.id = o.customer GROUP BY c.region ORDER BY c.region;
CREATE TEMP TABLE per_customer AS
  SELECT customer, count(*) AS n, group_concat(note, ',') AS notes, round(sum(amount), 2) AS total
  FROM orders GROUP BY customer;
SELECT count(*), sum(n), sum(length(notes)), round(sum(total), 2) FROM per_customer;
SELECT customer, total FROM per_customer ORDER BY total DESC, customer LIMIT 5;
SELECT note FROM orders ORDER BY note, id LIMIT 3 OFFSET (SELECT count(*) * 3 / 4 FROM orders);
CREATE TEMP TABLE words AS SELECT id, note || '-' || status || '-' || printf('%.2f', amount) AS w FROM orders;
CREATE INDEX temp.words_w ON words(w);
SELECT count(DISTINCT w), min(w), max(w) FROM words;
SELECT count(*) FROM words a JOIN words b ON b.id = a.id + 1 WHERE substr(a.w, 1, 2) = substr(b.w, 1, 2);
DROP TABLE words;
DROP TABLE per_customer;
