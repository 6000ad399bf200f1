//! The fleet web page, served by the collector on the read API's listener
//! (`--api-listen`): a fleet overview at `/` and drill-down pages per
//! node, namespace, image and container, server-rendered HTML with no
//! script and no external resource (docs/fleet.md, "The web page").
//!
//! - [`html`]: escaping and links, safe by construction;
//! - [`pages`]: the pages, rendered from the read API's rows (pure).
//!
//! Auth: the API's token, sent by the browser as the password of HTTP
//! basic auth (any user name), so a browser prompts for it and it never
//! appears in a URL or a log; a `Bearer` header works as for the API.
//! Without a token (loopback only) the page is open, like the API.
pub mod html;
pub mod pages;

use std::sync::{atomic::Ordering, Arc};

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::Value;
use sqlx::AnyPool;
use tracing::warn;

use super::{
    query::{self, Endpoint, QueryError},
    Health,
};
use pages::Listed;

/// Rows a table of the page shows at most (the CLI and API list all).
const PAGE_ROWS: usize = 200;
/// Containers on a node's, a namespace's or an image's page.
const CONTAINER_ROWS: usize = 1000;

#[derive(Clone)]
struct Web {
    pool: AnyPool,
    token: Option<Arc<str>>,
    health: Arc<Health>,
}

/// The page's routes, to merge into the API's router.
pub fn router(pool: AnyPool, token: Option<String>, health: Arc<Health>) -> Router {
    let web = Web {
        pool,
        token: token.map(Arc::from),
        health,
    };
    Router::new()
        .route("/", get(overview))
        .route("/nodes/{node}", get(node))
        .route("/nodes/{node}/containers/{id}", get(container))
        .route("/namespaces/{ns}", get(namespace))
        .route("/images/{digest}", get(image))
        .route("/style.css", get(style))
        .layer(middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// Headers every answer of the page carries: no script, nothing from
/// elsewhere, not framed, no referrer leaving the page, not cached.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

/// Auth, then the security headers on whatever is answered.
async fn guard(State(web): State<Web>, req: Request, next: Next) -> Response {
    let down = web
        .health
        .reach
        .down()
        .filter(|_| req.uri().path() != "/style.css");
    let mut resp = if !authorized(req.headers(), web.token.as_deref()) {
        unauthorized()
    } else if let Some(why) = down {
        unavailable(&why)
    } else {
        next.run(req).await
    };
    for (name, value) in SECURITY_HEADERS {
        resp.headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    resp
}

/// 503 while the store does not answer (as the API).
fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(pages::message(
            "The inventory's store is unreachable",
            &format!("store unreachable: {why}"),
        )),
    )
        .into_response()
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Html(pages::message(
            "Token needed",
            "Give the collector's API token (--api-token-file) as the password; \
                 any user name.",
        )),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Spyglass fleet\", charset=\"UTF-8\""),
    );
    r
}

/// Basic auth with the token as password (any user), or a bearer token.
fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(want) = token else {
        return super::api::loopback_host(headers);
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(got) = value.strip_prefix("Bearer ") {
        return super::api::same(got.as_bytes(), want.as_bytes());
    }
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Some(decoded) = base64_decode(encoded.trim()) else {
        return false;
    };
    match decoded.iter().position(|b| *b == b':') {
        Some(colon) => super::api::same(&decoded[colon + 1..], want.as_bytes()),
        None => false,
    }
}

/// Standard base64 with padding (RFC 4648), as browsers send basic auth;
/// `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &chunk[..4 - pad] {
            n = n << 6 | value(*c)?;
        }
        n <<= 6 * pad;
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad]);
    }
    Some(out)
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLE,
    )
}

/// One query's rows for the page.
async fn rows(
    pool: &AnyPool,
    ep: &Endpoint,
    pairs: &[(&str, &str)],
    limit: usize,
) -> Result<Listed, QueryError> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    query::run_limit(pool, ep, &pairs, limit)
        .await
        .map(Listed::from)
}

/// A page, or the page saying why not.
fn answer(web: &Web, page: Result<Option<String>, QueryError>, what: &str) -> Response {
    match page {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Html(pages::message(
                "Not found",
                &format!("The inventory has no {what}."),
            )),
        )
            .into_response(),
        // the database is away (PostgreSQL restarting): like the API
        Err(QueryError::Store { source, .. }) if super::store::unreachable(&source) => {
            let why = source.to_string();
            web.health.reach.set_down(why.clone());
            unavailable(&why)
        }
        Err(e) => {
            warn!(error = %e, page = what, "web page query failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(pages::message(
                    "The inventory did not answer",
                    &e.to_string(),
                )),
            )
                .into_response()
        }
    }
}

async fn overview(State(web): State<Web>) -> Response {
    answer(&web, overview_page(&web).await.map(Some), "overview")
}

async fn overview_page(web: &Web) -> Result<String, QueryError> {
    let p = &web.pool;
    let running = ("exited", "false");
    let (root_q, privileged_q) = (
        [("root", "true"), running],
        [("privileged", "true"), running],
    );
    // independent reads, run at once on the pool's connections
    let (summary, nodes, exposed, root, privileged) = tokio::try_join!(
        query::summary(p),
        rows(p, &query::NODES, &[], CONTAINER_ROWS),
        rows(p, &query::PORTS, &[("exposed", "true")], PAGE_ROWS),
        rows(p, &query::CONTAINERS, &root_q, PAGE_ROWS),
        rows(p, &query::CONTAINERS, &privileged_q, PAGE_ROWS),
    )?;
    let (internet, runaway, findings, namespaces, images) = tokio::try_join!(
        rows(p, &query::EGRESS, &[("internet", "true")], PAGE_ROWS),
        rows(p, &query::RUNAWAY, &[], PAGE_ROWS),
        rows(p, &query::FINDINGS, &[("open", "true")], PAGE_ROWS),
        query::namespaces(p, PAGE_ROWS),
        rows(p, &query::IMAGES, &[], PAGE_ROWS),
    )?;
    let o = pages::Overview {
        summary,
        stale: web.health.stale.load(Ordering::Relaxed),
        nodes,
        exposed,
        root,
        privileged,
        internet,
        runaway,
        findings,
        namespaces,
        images,
    };
    Ok(pages::overview(&o))
}

/// The one row a key names, if any.
fn first(l: Listed) -> Option<Value> {
    l.rows.into_iter().next()
}

async fn node(State(web): State<Web>, Path(name): Path<String>) -> Response {
    let page = async {
        let p = &web.pool;
        let n = [("node", name.as_str())];
        let Some(node) = first(rows(p, &query::NODES, &n, 1).await?) else {
            return Ok(None);
        };
        let open = [("node", name.as_str()), ("open", "true")];
        Ok(Some(pages::node(&pages::NodeView {
            node,
            containers: rows(p, &query::CONTAINERS, &n, CONTAINER_ROWS).await?,
            ports: rows(p, &query::PORTS, &n, PAGE_ROWS).await?,
            egress: rows(p, &query::EGRESS, &n, PAGE_ROWS).await?,
            findings: rows(p, &query::FINDINGS, &open, PAGE_ROWS).await?,
        })))
    };
    answer(&web, page.await, &format!("node {name:?}"))
}

async fn container(State(web): State<Web>, Path((node, id)): Path<(String, String)>) -> Response {
    let page = async {
        let p = &web.pool;
        let key = [("node", node.as_str()), ("id", id.as_str())];
        let Some(container) = first(rows(p, &query::CONTAINERS, &key, 1).await?) else {
            return Ok(None);
        };
        let of = [("node", node.as_str()), ("container", id.as_str())];
        Ok(Some(pages::container(&pages::ContainerView {
            container,
            ports: rows(p, &query::PORTS, &of, PAGE_ROWS).await?,
            egress: rows(p, &query::EGRESS, &of, PAGE_ROWS).await?,
            findings: rows(p, &query::FINDINGS, &of, PAGE_ROWS).await?,
        })))
    };
    answer(
        &web,
        page.await,
        &format!("container {id:?} on node {node:?}"),
    )
}

async fn namespace(State(web): State<Web>, Path(ns): Path<String>) -> Response {
    let page = async {
        let p = &web.pool;
        let of = [("namespace", ns.as_str())];
        let containers = rows(p, &query::CONTAINERS, &of, CONTAINER_ROWS).await?;
        if containers.rows.is_empty() {
            return Ok(None);
        }
        let open = [("namespace", ns.as_str()), ("open", "true")];
        Ok(Some(pages::namespace(&pages::NamespaceView {
            name: ns.clone(),
            containers,
            ports: rows(p, &query::PORTS, &of, PAGE_ROWS).await?,
            egress: rows(p, &query::EGRESS, &of, PAGE_ROWS).await?,
            findings: rows(p, &query::FINDINGS, &open, PAGE_ROWS).await?,
        })))
    };
    answer(&web, page.await, &format!("namespace {ns:?}"))
}

async fn image(State(web): State<Web>, Path(digest): Path<String>) -> Response {
    let page = async {
        let p = &web.pool;
        let d = [("digest", digest.as_str())];
        let Some(image) = first(rows(p, &query::IMAGES, &d, 1).await?) else {
            return Ok(None);
        };
        let of = [("image", digest.as_str())];
        Ok(Some(pages::image(&pages::ImageView {
            image,
            containers: rows(p, &query::CONTAINERS, &of, CONTAINER_ROWS).await?,
        })))
    };
    answer(&web, page.await, &format!("image {digest:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, s.parse().unwrap());
        h
    }

    #[test]
    fn base64_as_browsers_send_it() {
        assert_eq!(base64_decode("OnNlY3JldA==").unwrap(), b":secret");
        assert_eq!(base64_decode("dTpzZWNyZXQ=").unwrap(), b"u:secret");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("YWJ").is_none());
        assert!(base64_decode("Y=Jj").is_none());
        assert!(base64_decode("YW==YWJj").is_none());
        assert!(base64_decode("YW*j").is_none());
    }

    #[test]
    fn the_token_is_the_basic_auth_password() {
        assert!(authorized(&HeaderMap::new(), None));
        assert!(!authorized(&HeaderMap::new(), Some("secret")));
        // ":secret" and "anyone:secret"
        assert!(authorized(&basic("Basic OnNlY3JldA=="), Some("secret")));
        assert!(authorized(
            &basic("Basic YW55b25lOnNlY3JldA=="),
            Some("secret")
        ));
        // "secret:" (the token as user name) and ":secre"
        assert!(!authorized(&basic("Basic c2VjcmV0Og=="), Some("secret")));
        assert!(!authorized(&basic("Basic OnNlY3Jl"), Some("secret")));
        assert!(!authorized(&basic("Basic !!!!"), Some("secret")));
        assert!(authorized(&basic("Bearer secret"), Some("secret")));
        assert!(!authorized(&basic("Bearer secre"), Some("secret")));
    }
}
