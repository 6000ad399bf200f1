-- Vulnerability context (docs/vulnerabilities.md): scanner reports and
-- the image hierarchy.
--
-- Scanner reports. One row per imported
-- report, named by where it came from (its file under --vuln-reports, or
-- the name it was sent under to the API); `sha256` is of its bytes, so
-- an unchanged file is not imported again.
CREATE TABLE vuln_reports (
    name TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    imported BIGINT NOT NULL,
    packages BIGINT NOT NULL,
    vulnerabilities BIGINT NOT NULL
);

-- Reports a newer scan of their image replaced, by name and bytes: the
-- same file is not imported again (at a restart, or by another replica),
-- which would bring back what the newer scan no longer says.
CREATE TABLE vuln_superseded (
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (name, sha256)
);

-- The digests a report names (kind: manifest, index or config): an
-- image joins its reports on any of its own three digests.
CREATE TABLE vuln_report_digests (
    report TEXT NOT NULL,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (report, digest)
);
CREATE INDEX vuln_report_digests_digest ON vuln_report_digests (digest);

-- The layers (rootfs.diff_ids, base first) of every image known: the
-- fleet's (from the agents' container events) and those scanner reports
-- name (a base image registered by its report). Keyed by the config
-- digest, which fixes them. One image descends from another when the
-- other's layers are a prefix of its own.
CREATE TABLE image_layers (
    config_digest TEXT NOT NULL,
    position BIGINT NOT NULL,
    diff_id TEXT NOT NULL,
    PRIMARY KEY (config_digest, position)
);
CREATE INDEX image_layers_diff_id ON image_layers (position, diff_id);

-- The base image the image's annotations name
-- (org.opencontainers.image.base.digest and .name).
ALTER TABLE images ADD COLUMN base_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN base_name TEXT NOT NULL DEFAULT '';
CREATE INDEX images_config_digest ON images (config_digest);
CREATE INDEX images_base_digest ON images (base_digest);

-- One vulnerability of one installed package. severity_rank orders the
-- severities: 0 unknown, 1 negligible, 2 low, 3 medium, 4 high,
-- 5 critical. '' where the report says nothing.
CREATE TABLE vulns (
    report TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    source_package TEXT NOT NULL,
    purl TEXT NOT NULL,
    severity TEXT NOT NULL,
    severity_rank BIGINT NOT NULL,
    fixed_version TEXT NOT NULL,
    title TEXT NOT NULL,
    vex TEXT NOT NULL,
    PRIMARY KEY (report, id, kind, package, version)
);
