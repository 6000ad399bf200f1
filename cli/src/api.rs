//! The collector's read API (`/api/v1/...`): one GET per command.
use std::{path::PathBuf, time::Duration};

use serde_json::Value;

/// What went wrong asking the collector.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read the API token file {path}: {source}; give the file the collector's --api-token-file reads, or leave --token-file out for a collector without one")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("collector URL {url:?}: {why}; give its API address, for example http://127.0.0.1:7072 (the collector's --api-listen)")]
    Url { url: String, why: &'static str },
    #[error("cannot reach the collector's API at {url}: {source}; is the collector running with --api-listen on that address?")]
    Unreachable {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("the collector refused the token ({url}: 401 {message}); give the token of its --api-token-file with --token-file")]
    Unauthorized { url: String, message: String },
    #[error("the collector answered {url} with {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the answer from {url} is not the API's JSON: {why}")]
    Answer { url: String, why: String },
    #[error("reading the event stream from {url}: {source}; the collector stopped or the connection broke (no line for 60 s: the collector sends a keepalive every 15 s)")]
    Stream { url: String, source: std::io::Error },
    #[error("the collector ended the event stream ({url}); it stopped or restarted: follow again")]
    Ended { url: String },
}

/// A collector's API, and the token to show it.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// One answer: the rows, and what the collector says of them.
#[derive(Debug)]
pub struct Answer {
    pub rows: Vec<Value>,
    /// More rows matched than one answer holds.
    pub truncated: bool,
    /// The inventory fell behind ingest (updates were dropped).
    pub stale: bool,
}

impl Client {
    pub fn new(url: &str, token_file: Option<&PathBuf>) -> Result<Client, ApiError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::Url {
                url: url.to_owned(),
                why: "it must start with http:// or https://",
            });
        }
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ApiError::Token {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            // 4xx and 5xx carry the API's own message: read them
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client { base, token, agent })
    }

    /// `GET /api/v1/events?follow=1&...`: the live stream's lines (JSON,
    /// or empty for a keepalive), read as they come. No overall timeout;
    /// a read waits at most 60 s (the collector sends a keepalive every
    /// 15 s).
    pub fn follow(
        &self,
        filters: &[(&str, String)],
    ) -> Result<(String, impl std::io::BufRead), ApiError> {
        let url = format!("{}/api/v1/events", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(&url).query("follow", "1");
        for (k, v) in filters {
            req = req.query(*k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| ApiError::Unreachable {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status != 200 {
            let text = body
                .with_config()
                .limit(1024 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let v = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(refused(&url, status, &v, &text));
        }
        Ok((url, std::io::BufReader::new(body.into_reader())))
    }

    /// GET `/api/v1/{endpoint}` with `filters` (bound by the collector,
    /// never spliced: values go as they are, percent-encoded here).
    pub fn get(&self, endpoint: &str, filters: &[(&str, String)]) -> Result<Answer, ApiError> {
        let url = format!("{}/api/v1/{endpoint}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in filters {
            req = req.query(*k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| ApiError::Unreachable {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(512 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| ApiError::Answer {
                url: url.clone(),
                why: e.to_string(),
            })?;
        parse(&url, endpoint, status, &text)
    }
}

/// The API's error answer (`{"error": ...}`) as the error.
fn refused(url: &str, status: u16, v: &Value, text: &str) -> ApiError {
    let message = v["error"].as_str().unwrap_or(text).to_owned();
    if status == 401 {
        ApiError::Unauthorized {
            url: url.to_owned(),
            message,
        }
    } else {
        ApiError::Status {
            url: url.to_owned(),
            status,
            message,
        }
    }
}

/// The rows of an answer, or the API's error as the message.
pub fn parse(url: &str, endpoint: &str, status: u16, text: &str) -> Result<Answer, ApiError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ApiError::Answer {
        url: url.to_owned(),
        why: format!("{e} (status {status})"),
    })?;
    if status != 200 {
        return Err(refused(url, status, &v, text));
    }
    let Some(rows) = v[endpoint].as_array() else {
        return Err(ApiError::Answer {
            url: url.to_owned(),
            why: format!("no `{endpoint}` array"),
        });
    };
    Ok(Answer {
        rows: rows.clone(),
        truncated: v["truncated"].as_bool().unwrap_or(false),
        stale: v["stale"].as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_flags_of_an_answer() {
        let a = parse(
            "u",
            "ports",
            200,
            r#"{"ports":[{"port":1},{"port":2}],"truncated":true,"stale":false}"#,
        )
        .unwrap();
        assert_eq!(a.rows.len(), 2);
        assert!(a.truncated && !a.stale);
    }

    #[test]
    fn the_api_s_error_is_the_message() {
        let e = parse("u", "ports", 400, r#"{"error":"unknown filter \"x\""}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the collector answered u with 400: unknown filter \"x\""
        );
        let e = parse("u", "ports", 401, r#"{"error":"bad token"}"#).unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized { .. }), "{e}");
        let e = parse("u", "ports", 200, r#"{"nodes":[]}"#).unwrap_err();
        assert!(e.to_string().contains("no `ports` array"), "{e}");
        let e = parse("u", "ports", 502, "<html>bad gateway</html>").unwrap_err();
        assert!(e.to_string().contains("not the API's JSON"), "{e}");
    }

    #[test]
    fn a_url_without_a_scheme_is_refused_saying_what_to_give() {
        let e = Client::new("127.0.0.1:7072", None).err().unwrap();
        assert!(e.to_string().contains("http://127.0.0.1:7072"), "{e}");
    }
}
