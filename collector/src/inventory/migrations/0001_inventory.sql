-- The fleet inventory (docs/fleet.md). One schema for SQLite and
-- PostgreSQL: times are Unix nanoseconds (BIGINT), flags are 0/1 BIGINTs,
-- the host is the container id ''. Every table has its natural key as
-- primary key, so every write is an idempotent upsert.
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    agent_version TEXT NOT NULL DEFAULT '',
    kernel TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    connected BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE containers (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    runtime TEXT NOT NULL DEFAULT '',
    pod_name TEXT NOT NULL DEFAULT '',
    pod_namespace TEXT NOT NULL DEFAULT '',
    pod_uid TEXT NOT NULL DEFAULT '',
    image_ref TEXT NOT NULL DEFAULT '',
    image_digest TEXT NOT NULL DEFAULT '',
    image_index_digest TEXT NOT NULL DEFAULT '',
    image_config_digest TEXT NOT NULL DEFAULT '',
    attributed BIGINT NOT NULL DEFAULT 0,
    uid BIGINT,
    gid BIGINT,
    user_namespace BIGINT,
    privileged BIGINT,
    capabilities TEXT,
    host_network BIGINT,
    host_pid BIGINT,
    host_ipc BIGINT,
    read_only_rootfs BIGINT,
    no_new_privileges BIGINT,
    seccomp TEXT,
    created BIGINT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    exited BIGINT,
    exit_code BIGINT,
    PRIMARY KEY (node, id)
);
CREATE INDEX containers_image_digest ON containers (image_digest);

CREATE TABLE listeners (
    node TEXT NOT NULL,
    container_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,
    port BIGINT NOT NULL,
    wildcard BIGINT NOT NULL,
    declared BIGINT,
    pid BIGINT,
    exe TEXT NOT NULL DEFAULT '',
    since BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    closed BIGINT,
    PRIMARY KEY (node, container_id, protocol, address, port)
);

CREATE TABLE egress (
    node TEXT NOT NULL,
    container_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,
    port BIGINT NOT NULL,
    internet BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (node, container_id, protocol, address, port)
);

CREATE TABLE images (
    digest TEXT PRIMARY KEY,
    index_digest TEXT NOT NULL DEFAULT '',
    config_digest TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE image_refs (
    digest TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (digest, ref)
);

CREATE TABLE findings (
    node TEXT NOT NULL,
    container_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    open BIGINT NOT NULL,
    PRIMARY KEY (node, container_id, rule, subject)
);
