//! One attempt against one provider instance: build the upstream request (the instance's URL, its model name,
//! its key — never the client's), send it within the attempt's deadline, hand back the response head (whose body
//! the caller reads whole or streams), and classify a failure by where it happened so the caller can decide
//! whether another instance may be tried.
//!
//! Retry-safe failures (nothing reached the client yet): connection errors, timeouts, and the statuses that mean
//! "this instance, not this request" — 429, 500, 502, 503, 504. Others (400, 401, 403, 404, 422, …) are the
//! client's or the configuration's problem and are returned as they are.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use awc::error::{PayloadError, SendRequestError};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tollgate_schemas::usage::AttemptError;

use crate::config::Instance;
use crate::http::inflight::Permit;
use crate::protocol::Provider;

/// HTTP clients for every instance, one set per worker (each with its own connection pool and connect timeout).
/// A client is made on an instance's first request and made again when a live change alters its timeouts;
/// instances that stay keep their pooled connections.
#[derive(Default)]
pub struct Upstreams {
    clients: RefCell<HashMap<String, PooledClient>>,
}

struct PooledClient {
    connect_timeout: Duration,
    timeout: Duration,
    client: awc::Client,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("instances", &self.clients.borrow().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An upstream's response head, its body not read yet: the point up to which a failover is still possible.
pub struct UpstreamHead {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    /// When the response head arrived.
    pub head_at: Instant,
    /// The body, chunk by chunk as the upstream sends it.
    pub body: BodyStream,
    /// When reading the body must have finished.
    deadline: Instant,
}

impl UpstreamHead {
    /// Whether the body is an SSE stream (`text/event-stream`), as a streamed answer must be. An upstream that
    /// answers a stream request without a content type is taken at its word.
    pub fn is_event_stream(&self) -> bool {
        const SSE: &[u8] = b"text/event-stream";
        self.content_type.as_ref().is_none_or(|v| {
            v.as_bytes()
                .get(..SSE.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SSE))
        })
    }
}

/// An upstream body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

impl std::fmt::Debug for UpstreamHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamHead")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// An upstream's complete (non-streamed) answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
    /// When the response head arrived.
    pub head_at: Instant,
}

impl UpstreamHead {
    /// Reads the whole body, up to `limit` bytes, before the attempt's deadline, charging the buffer to the
    /// request's in-flight `permit` as it grows. A body past either bound stops being read: [`AttemptFailure::TooLarge`]
    /// says how much was read, for the request to be billed from it.
    pub async fn read_to_end(
        mut self,
        limit: usize,
        permit: Option<&Permit>,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let status = self.status;
        let read = async {
            let mut body = BytesMut::new();
            let mut charged = 0;
            while let Some(chunk) = self.body.next().await {
                let chunk = chunk.map_err(|e| AttemptFailure::Protocol(e.to_string()))?;
                let read = body.len() + chunk.len();
                // The buffer's capacity is charged before it grows (see `crate::http::inflight`).
                let mut over_budget =
                    || permit.is_some_and(|p| p.grow(&mut body, chunk.len(), &mut charged).is_err());
                if read > limit || over_budget() {
                    return Err(AttemptFailure::TooLarge {
                        status,
                        read,
                        over_budget: read <= limit,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        let body = tokio::time::timeout(remaining, read)
            .await
            .map_err(|_| AttemptFailure::Timeout)??;
        Ok(UpstreamResponse {
            status: self.status,
            content_type: self.content_type,
            retry_after: self.retry_after,
            body,
            head_at: self.head_at,
        })
    }
}

/// Why an attempt produced no usable response.
#[derive(Debug)]
pub enum AttemptFailure {
    Connect(String),
    Timeout,
    Protocol(String),
    /// The answer was larger than `server.max_response_bytes`, or than the in-flight budget had room for
    /// (`over_budget`); `read` bytes of it had arrived. The instance did the work: not retried elsewhere.
    TooLarge {
        status: StatusCode,
        read: usize,
        over_budget: bool,
    },
}

impl AttemptFailure {
    pub fn kind(&self) -> AttemptError {
        match self {
            Self::Connect(_) => AttemptError::Connect,
            Self::Timeout => AttemptError::Timeout,
            Self::Protocol(_) | Self::TooLarge { .. } => AttemptError::Protocol,
        }
    }
}

/// True when an upstream status means another instance may well succeed with the same request: 429, 500, 502,
/// 503, 504, and the route's `extra` statuses.
pub fn status_is_retryable(status: StatusCode, extra: &[u16]) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504) || extra.contains(&status.as_u16())
}

/// The default `anthropic-version` sent to Anthropic instances when the client names none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Adds the instance's credentials as its provider expects them: `Authorization: Bearer` for OpenAI-compatible
/// APIs, `api-key` for Azure OpenAI, `x-goog-api-key` for Gemini, `x-api-key` (and a default
/// `anthropic-version`) for Anthropic. Never the client's key.
pub fn with_auth(mut request: awc::ClientRequest, instance: &Instance) -> awc::ClientRequest {
    match instance.provider {
        Provider::Openai => {
            if let Some(key) = &instance.api_key {
                request = request.insert_header((header::AUTHORIZATION, format!("Bearer {}", key.expose())));
            }
        }
        Provider::AzureOpenai => {
            if let Some(key) = &instance.api_key {
                request = request.insert_header(("api-key", key.expose()));
            }
        }
        Provider::Gemini => {
            if let Some(key) = &instance.api_key {
                request = request.insert_header(("x-goog-api-key", key.expose()));
            }
        }
        Provider::Anthropic => {
            if let Some(key) = &instance.api_key {
                request = request.insert_header(("x-api-key", key.expose()));
            }
            if !request.headers().contains_key("anthropic-version") {
                request = request.insert_header(("anthropic-version", ANTHROPIC_VERSION));
            }
        }
    }
    request
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
        let upstreams = Self::default();
        for instance in instances {
            upstreams.client(instance);
        }
        upstreams
    }

    /// The worker's client for `instance`, made (or made again, when its timeouts changed) on demand.
    fn client(&self, instance: &Instance) -> awc::Client {
        let mut clients = self.clients.borrow_mut();
        if let Some(pooled) = clients.get(&instance.name)
            && pooled.connect_timeout == instance.connect_timeout
            && pooled.timeout == instance.timeout
        {
            return pooled.client.clone();
        }
        let client = awc::Client::builder()
            .connector(awc::Connector::new().timeout(instance.connect_timeout))
            .timeout(instance.timeout)
            .disable_redirects()
            .no_default_headers()
            .finish();
        clients.insert(
            instance.name.clone(),
            PooledClient {
                connect_timeout: instance.connect_timeout,
                timeout: instance.timeout,
                client: client.clone(),
            },
        );
        client
    }

    /// Sends `body` to `instance`'s `path` (see [`url_for`]) and returns the response head; the body is read
    /// (or streamed) by the caller, and must be complete within `timeout` of sending.
    pub async fn open(
        &self,
        instance: &Instance,
        path: &str,
        body: Bytes,
        timeout: Duration,
        passthrough: &[(HeaderName, HeaderValue)],
    ) -> Result<UpstreamHead, AttemptFailure> {
        let client = self.client(instance);
        let mut request = client
            .request(Method::POST, url_for(&instance.endpoint, path))
            .timeout(timeout)
            .insert_header((header::CONTENT_TYPE, "application/json"));
        for (name, value) in passthrough {
            request = request.insert_header((name.clone(), value.clone()));
        }
        request = with_auth(request, instance);
        let started = Instant::now();
        let response = request.send_body(body).await.map_err(|e| match e {
            SendRequestError::Timeout => AttemptFailure::Timeout,
            SendRequestError::Connect(e) => AttemptFailure::Connect(e.to_string()),
            other => AttemptFailure::Protocol(other.to_string()),
        })?;
        let header = |name| response.headers().get(name).cloned();
        Ok(UpstreamHead {
            status: response.status(),
            content_type: header(header::CONTENT_TYPE),
            retry_after: header(header::RETRY_AFTER),
            head_at: Instant::now(),
            deadline: started + timeout,
            body: Box::pin(response),
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
