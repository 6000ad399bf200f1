-- Node health and pod labels (docs/fleet.md): the events a node's agent
-- reported lost since it started (its latest loss totals), the lag of its
-- latest batch (received minus its newest event's time), and each pod
-- container's pod labels as a JSON object.
ALTER TABLE nodes ADD COLUMN lost BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN lag_ms BIGINT;
ALTER TABLE containers ADD COLUMN pod_labels TEXT NOT NULL DEFAULT '';
