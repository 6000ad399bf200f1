-- Indexes in the order the API answers (docs/fleet.md): an answer of
-- 1,000 rows out of 100,000 reads them in order and stops, instead of
-- sorting every matching row first (PostgreSQL did; SQLite half did).
-- Listeners and egress are answered in their primary key's order.
CREATE INDEX containers_answer ON containers (node, namespace, name, id);
CREATE INDEX findings_latest ON findings (last_seen, node, rule, subject);
