//! The image hierarchy (docs/vulnerabilities.md): which images are built
//! on which. An image's layers (`rootfs.diff_ids`, base first) come from
//! the agents (a container's `created` step) and from scanner reports (a
//! base image registered by its report), keyed by config digest in
//! `image_layers`. An image descends from another when the other's layers
//! are a strict prefix of its own; the base its annotations name
//! (`org.opencontainers.image.base.digest`) counts too, where its layers
//! are not known.
//!
//! [`relate`] is the pure part; [`answer`] reads what it needs: the
//! image's layers and those of the known images sharing its first layer
//! (an index on `(position, diff_id)`), at most [`MAX_CANDIDATES`] of
//! them (more: the answer says it is truncated). A base shared by most
//! of the fleet makes that most of the fleet's images.
use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Any, AnyPool, Row, Transaction};

use super::rows::Rows;

/// Most layers written for one image (Docker refuses over 127; a
/// hostile agent or report cannot grow the table past this per image).
pub const MAX_LAYERS: usize = 256;

/// Most images sharing a first layer read for one answer.
const MAX_CANDIDATES: i64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("no image with digest {0} is known (not in the fleet, and no report names it)")]
    Unknown(String),
    #[error("reading the image hierarchy: {0}")]
    Store(#[from] sqlx::Error),
}

/// Write an image's layers (kept as they are when already known: a
/// config digest fixes its layers).
pub async fn write_layers(
    tx: &mut Transaction<'_, Any>,
    config: &str,
    diff_ids: &[String],
) -> Result<(), sqlx::Error> {
    for (i, diff_id) in diff_ids.iter().take(MAX_LAYERS).enumerate() {
        sqlx::query(
            "INSERT INTO image_layers (config_digest, position, diff_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(config)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .bind(diff_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Write a flush's lineages: each image's base (its `images` row, written
/// before) and layers.
pub async fn write(tx: &mut Transaction<'_, Any>, rows: &Rows) -> Result<(), sqlx::Error> {
    let mut digests: Vec<&String> = rows.lineages.keys().collect();
    digests.sort_unstable();
    for digest in digests {
        let l = &rows.lineages[digest];
        if !(l.base_digest.is_empty() && l.base_name.is_empty()) {
            sqlx::query("UPDATE images SET base_digest = $2, base_name = $3 WHERE digest = $1")
                .bind(digest)
                .bind(&l.base_digest)
                .bind(&l.base_name)
                .execute(&mut **tx)
                .await?;
        }
        write_layers(tx, &l.config_digest, &l.diff_ids).await?;
    }
    Ok(())
}

/// One image in an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Related {
    pub config_digest: String,
    /// Its layer count.
    pub layers: usize,
    /// How it is related: `layers` (a prefix of layers) or `annotation`
    /// (the base its annotations name).
    pub by: &'static str,
}

/// Images below and above one, nearest first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Relation {
    /// Images whose layers are a strict prefix of its own: its bases,
    /// the nearest (most layers) first.
    pub ancestors: Vec<Related>,
    /// Images its layers are a strict prefix of, the nearest first.
    pub descendants: Vec<Related>,
}

/// Relate `image` (its layers) to `known` images (config digest ->
/// layers; the image itself may be among them).
pub fn relate(image: &str, layers: &[String], known: &BTreeMap<String, Vec<String>>) -> Relation {
    let mut r = Relation::default();
    if layers.is_empty() {
        return r;
    }
    for (config, other) in known {
        if config == image || other.is_empty() {
            continue;
        }
        let related = Related {
            config_digest: config.clone(),
            layers: other.len(),
            by: "layers",
        };
        if other.len() < layers.len() && layers.starts_with(other) {
            r.ancestors.push(related);
        } else if other.len() > layers.len() && other.starts_with(layers) {
            r.descendants.push(related);
        }
    }
    r.ancestors.sort_by(|a, b| {
        b.layers
            .cmp(&a.layers)
            .then(a.config_digest.cmp(&b.config_digest))
    });
    r.descendants.sort_by(|a, b| {
        a.layers
            .cmp(&b.layers)
            .then(a.config_digest.cmp(&b.config_digest))
    });
    r
}

/// The config digest `digest` names: an image of the fleet by any of its
/// digests, or the config of a report naming it.
async fn config_of(pool: &AnyPool, digest: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<_, String>(
        "SELECT config_digest FROM images WHERE (digest = $1 OR index_digest = $1 \
            OR config_digest = $1) AND config_digest <> '' \
         UNION SELECT c.digest FROM vuln_report_digests d JOIN vuln_report_digests c \
            ON c.report = d.report AND c.kind = 'config' WHERE d.digest = $1 \
         UNION SELECT config_digest FROM image_layers WHERE config_digest = $1 AND position = 0",
    )
    .bind(digest)
    .fetch_optional(pool)
    .await
}

/// The layers of the known images sharing `config`'s first layer (its
/// own included), at most [`MAX_CANDIDATES`] others (more: the answer
/// says it is truncated).
async fn family(
    pool: &AnyPool,
    config: &str,
) -> Result<BTreeMap<String, Vec<String>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.config_digest, l.position, l.diff_id FROM image_layers l \
         WHERE l.config_digest = $1 OR l.config_digest IN (SELECT o.config_digest \
            FROM image_layers o WHERE o.position = 0 AND o.diff_id = (SELECT f.diff_id \
                FROM image_layers f WHERE f.config_digest = $1 AND f.position = 0) \
            ORDER BY o.config_digest LIMIT $2) \
         ORDER BY l.config_digest, l.position",
    )
    .bind(config)
    .bind(MAX_CANDIDATES)
    .fetch_all(pool)
    .await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let c: String = row.try_get(0)?;
        let d: String = row.try_get(2)?;
        out.entry(c).or_default().push(d);
    }
    Ok(out)
}

/// Images whose annotations name `digests` as their base (config
/// digests), and the base `config`'s own annotations name.
async fn annotated(
    pool: &AnyPool,
    config: &str,
) -> Result<(Vec<String>, Option<(String, String)>), sqlx::Error> {
    let children: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT c.config_digest FROM images c WHERE c.config_digest <> '' AND c.base_digest <> '' \
         AND c.base_digest IN (SELECT i.digest FROM images i WHERE i.config_digest = $1 \
            UNION SELECT i.index_digest FROM images i WHERE i.config_digest = $1 \
            UNION SELECT d.digest FROM vuln_report_digests d JOIN vuln_report_digests c2 \
                ON c2.report = d.report AND c2.kind = 'config' WHERE c2.digest = $1) \
         ORDER BY c.config_digest",
    )
    .bind(config)
    .fetch_all(pool)
    .await?;
    let base = sqlx::query(
        "SELECT base_digest, base_name FROM images WHERE config_digest = $1 \
         AND (base_digest <> '' OR base_name <> '') ORDER BY digest LIMIT 1",
    )
    .bind(config)
    .fetch_optional(pool)
    .await?
    .map(|r| -> Result<(String, String), sqlx::Error> { Ok((r.try_get(0)?, r.try_get(1)?)) })
    .transpose()?;
    Ok((children, base))
}

/// What the API answers of one image: its config digest, layer count,
/// the base its annotations name, and its relatives.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub config_digest: String,
    pub layers: usize,
    pub base_digest: Option<String>,
    pub base_name: Option<String>,
    pub ancestors: Vec<Related>,
    pub descendants: Vec<Related>,
    /// More images share its first layer than one answer reads: some
    /// relatives may be missing.
    pub truncated: bool,
}

/// The hierarchy around the image `digest` names (any of its digests).
pub async fn answer(pool: &AnyPool, digest: &str) -> Result<Answer, LineageError> {
    let config = config_of(pool, digest)
        .await?
        .ok_or_else(|| LineageError::Unknown(digest.chars().take(80).collect()))?;
    let known = family(pool, &config).await?;
    let truncated = known.len() > usize::try_from(MAX_CANDIDATES).unwrap_or(usize::MAX);
    let layers = known.get(&config).cloned().unwrap_or_default();
    let mut rel = relate(&config, &layers, &known);
    let (children, base) = annotated(pool, &config).await?;
    for c in children {
        if c != config && !rel.descendants.iter().any(|d| d.config_digest == c) {
            rel.descendants.push(Related {
                layers: 0,
                config_digest: c,
                by: "annotation",
            });
        }
    }
    let (base_digest, base_name) = base.map_or((None, None), |(d, n)| {
        ((!d.is_empty()).then_some(d), (!n.is_empty()).then_some(n))
    });
    Ok(Answer {
        config_digest: config,
        layers: layers.len(),
        base_digest,
        base_name,
        ancestors: rel.ancestors,
        descendants: rel.descendants,
        truncated,
    })
}

/// Which relatives an answer lists (`relation=` of the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    Ancestors,
    Descendants,
}

impl Which {
    pub fn parse(v: Option<&str>) -> Result<Which, String> {
        match v {
            None => Ok(Which::All),
            Some("ancestors") => Ok(Which::Ancestors),
            Some("descendants") => Ok(Which::Descendants),
            Some(other) => Err(format!(
                "relation={:?}: give ancestors or descendants (or leave it out for both)",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// Where the image `config` runs now and what names it: its lowest
/// reference, running containers and nodes.
async fn whereabouts(pool: &AnyPool, config: &str) -> Result<(String, i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT MIN(r.ref) FROM image_refs r WHERE r.digest IN \
            (SELECT i.digest FROM images i WHERE i.config_digest = $1)), \
         (SELECT COUNT(*) FROM containers c WHERE c.exited IS NULL AND c.image_digest IN \
            (SELECT i.digest FROM images i WHERE i.config_digest = $1)), \
         (SELECT COUNT(DISTINCT c.node) FROM containers c WHERE c.exited IS NULL \
            AND c.image_digest IN (SELECT i.digest FROM images i WHERE i.config_digest = $1))",
    )
    .bind(config)
    .fetch_one(pool)
    .await?;
    Ok((
        row.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
        row.try_get(1)?,
        row.try_get(2)?,
    ))
}

/// The API's rows for the image `digest` names: itself (`relation`
/// `self`), then its ancestors and descendants as `which` asks, each
/// with where it runs now.
pub async fn rows(
    pool: &AnyPool,
    digest: &str,
    which: Which,
) -> Result<(Vec<serde_json::Value>, bool), LineageError> {
    let a = answer(pool, digest).await?;
    let mut out = Vec::new();
    let mut row =
        |relation: &str, r: &Related, (reference, containers, nodes): (String, i64, i64)| {
            out.push(serde_json::json!({
                "relation": relation,
                "config_digest": r.config_digest,
                "layers": r.layers,
                "by": r.by,
                "ref": reference,
                "running": {"containers": containers, "nodes": nodes},
            }));
        };
    let me = Related {
        config_digest: a.config_digest.clone(),
        layers: a.layers,
        by: "",
    };
    row("self", &me, whereabouts(pool, &me.config_digest).await?);
    if which != Which::Descendants {
        for r in &a.ancestors {
            row("ancestor", r, whereabouts(pool, &r.config_digest).await?);
        }
    }
    if which != Which::Ancestors {
        for r in &a.descendants {
            row("descendant", r, whereabouts(pool, &r.config_digest).await?);
        }
    }
    if let Some(first) = out.first_mut() {
        first["base_digest"] = a.base_digest.into();
        first["base_name"] = a.base_name.into();
    }
    Ok((out, a.truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(n: &[u8]) -> Vec<String> {
        n.iter()
            .map(|b| format!("sha256:{}", char::from(b'0' + b).to_string().repeat(64)))
            .collect()
    }

    #[test]
    fn a_strict_prefix_is_an_ancestor_and_a_longer_match_a_descendant() {
        let mut known = BTreeMap::new();
        known.insert("debian".to_owned(), layers(&[1]));
        known.insert("runtime".to_owned(), layers(&[1, 2]));
        known.insert("app".to_owned(), layers(&[1, 2, 3]));
        known.insert("app-v2".to_owned(), layers(&[1, 2, 4]));
        known.insert("other".to_owned(), layers(&[5, 2]));
        known.insert("twin".to_owned(), layers(&[1, 2]));
        let r = relate("runtime", &layers(&[1, 2]), &known);
        let names = |v: &[Related]| {
            v.iter()
                .map(|r| r.config_digest.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&r.ancestors), ["debian"]);
        // the same layers under another config is neither
        assert_eq!(names(&r.descendants), ["app", "app-v2"]);
        let r = relate("app", &layers(&[1, 2, 3]), &known);
        assert_eq!(names(&r.ancestors), ["runtime", "twin", "debian"]);
        assert!(r.descendants.is_empty());
        assert_eq!(relate("x", &[], &known), Relation::default());
    }
}
