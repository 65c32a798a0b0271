//! One attempt against one provider instance: build the upstream request (the instance's URL, its model name,
//! its key — never the client's), send it within the instance's deadline, read the response, and classify a
//! failure by where it happened so the caller can decide whether another instance may be tried.
//!
//! Retry-safe failures (nothing reached the client yet): connection errors, timeouts, and the statuses that mean
//! "this instance, not this request" — 429, 500, 502, 503, 504. Others (400, 401, 403, 404, 422, …) are the
//! client's or the configuration's problem and are returned as they are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use awc::error::SendRequestError;
use bytes::Bytes;
use tollgate_schemas::usage::AttemptError;

use crate::config::Instance;

/// HTTP clients for every instance, one set per worker (each with its own connection pool and connect timeout).
#[derive(Default)]
pub struct Upstreams {
    clients: HashMap<String, awc::Client>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("instances", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An upstream's complete (non-streamed) answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
    /// From sending the request to the response head.
    pub ttfb: Duration,
}

/// Why an attempt produced no usable response.
#[derive(Debug)]
pub enum AttemptFailure {
    Connect(String),
    Timeout,
    Protocol(String),
}

impl AttemptFailure {
    pub fn kind(&self) -> AttemptError {
        match self {
            Self::Connect(_) => AttemptError::Connect,
            Self::Timeout => AttemptError::Timeout,
            Self::Protocol(_) => AttemptError::Protocol,
        }
    }
}

/// True when an upstream status means another instance may well succeed with the same request: 429, 500, 502,
/// 503, 504, and the route's `extra` statuses.
pub fn status_is_retryable(status: StatusCode, extra: &[u16]) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504) || extra.contains(&status.as_u16())
}

/// The URL for `path` on an instance: relative paths extend the endpoint (`chat/completions` →
/// `https://host/v1/chat/completions`), absolute ones replace its path (`/v2/chat/completions`).
pub fn url_for(endpoint: &url::Url, path: &str) -> String {
    if path.starts_with('/') {
        format!("{}{path}", endpoint.origin().ascii_serialization())
    } else {
        format!("{}/{path}", endpoint.as_str().trim_end_matches('/'))
    }
}

impl Upstreams {
    pub fn new(instances: &[Instance]) -> Self {
        let clients = instances
            .iter()
            .map(|i| {
                let client = awc::Client::builder()
                    .connector(awc::Connector::new().timeout(i.connect_timeout))
                    .timeout(i.timeout)
                    .disable_redirects()
                    .no_default_headers()
                    .finish();
                (i.name.clone(), client)
            })
            .collect();
        Self { clients }
    }

    /// Sends `body` to `instance`'s `path` (see [`url_for`]) and reads the whole response, up to
    /// `max_response_bytes`, all within `timeout`.
    pub async fn send(
        &self,
        instance: &Instance,
        path: &str,
        body: Bytes,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let client = self
            .clients
            .get(&instance.name)
            .ok_or_else(|| AttemptFailure::Connect(format!("no client for instance {}", instance.name)))?;

        let mut request = client
            .request(Method::POST, url_for(&instance.endpoint, path))
            .timeout(timeout)
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::ACCEPT, "application/json"));
        if let Some(key) = &instance.api_key {
            request = request.insert_header((header::AUTHORIZATION, format!("Bearer {}", key.expose())));
        }
        let started = Instant::now();
        let response = request.send_body(body).await.map_err(|e| match e {
            SendRequestError::Timeout => AttemptFailure::Timeout,
            SendRequestError::Connect(e) => AttemptFailure::Connect(e.to_string()),
            other => AttemptFailure::Protocol(other.to_string()),
        })?;
        let ttfb = started.elapsed();
        let remaining = timeout.saturating_sub(ttfb).max(Duration::from_millis(1));
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = response
            .timeout(remaining)
            .body()
            .limit(max_response_bytes)
            .await
            .map_err(|e| match e {
                awc::error::PayloadError::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    AttemptFailure::Timeout
                }
                other => AttemptFailure::Protocol(other.to_string()),
            })?;
        Ok(UpstreamResponse {
            status,
            content_type,
            retry_after,
            body,
            ttfb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_instance_trouble_is_retried() {
        for code in [429, 500, 502, 503, 504] {
            assert!(
                status_is_retryable(StatusCode::from_u16(code).unwrap(), &[]),
                "{code}"
            );
        }
        for code in [200, 400, 401, 403, 404, 409, 422, 501] {
            assert!(
                !status_is_retryable(StatusCode::from_u16(code).unwrap(), &[]),
                "{code}"
            );
        }
        assert!(
            status_is_retryable(StatusCode::from_u16(409).unwrap(), &[409]),
            "a configured status"
        );
    }

    #[test]
    fn relative_paths_extend_the_endpoint_and_absolute_ones_replace_its_path() {
        let endpoint = url::Url::parse("https://api.example.com/v1/").unwrap();
        assert_eq!(
            url_for(&endpoint, "chat/completions"),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            url_for(&endpoint, "/v2/chat/completions"),
            "https://api.example.com/v2/chat/completions"
        );
        let with_port = url::Url::parse("http://10.0.0.1:8000/v1").unwrap();
        assert_eq!(url_for(&with_port, "/health"), "http://10.0.0.1:8000/health");
    }
}
