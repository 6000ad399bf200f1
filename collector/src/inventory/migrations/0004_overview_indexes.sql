-- The web overview's counts read indexes, not the containers table
-- (92 MB for 100,000 containers on PostgreSQL, read three times per
-- overview before this).
-- Running, exited, root and privileged counts, and every namespace's
-- counts: one covering index.
CREATE INDEX containers_counts ON containers
    (namespace, pod_namespace, exited, uid, user_namespace, privileged);
-- An image's container and node counts (it replaces the index on the
-- digest alone).
CREATE INDEX containers_image_node ON containers (image_digest, node);
DROP INDEX containers_image_digest;
-- Exposed listeners: the open wildcard ones, and the listeners of the
-- few host-network containers.
CREATE INDEX listeners_open_wildcard ON listeners (node, container_id)
    WHERE closed IS NULL AND wildcard = 1;
CREATE INDEX containers_host_network ON containers (node, id)
    WHERE host_network = 1;
-- Findings answer latest first, then by their key (node, container,
-- rule, subject): an index in exactly that order (0003's ascending one
-- read backwards gave the ties in the wrong order, so they were sorted).
DROP INDEX findings_latest;
CREATE INDEX findings_latest ON findings (last_seen DESC, node, container_id, rule, subject);
