//! Delivering one alert: its JSON body POSTed to the webhook URL (HTTP/1.1 over TCP, or TLS through OpenSSL for
//! `https://`), signed, and retried.
//!
//! **Signature.** Each attempt carries
//!
//! - `x-tollgate-alert-id: <id>` — the [`super::alert_id`], the same on every attempt and after a restart;
//! - `x-tollgate-timestamp: <unix seconds>` — when this attempt was signed;
//! - `x-tollgate-signature: sha256=<hex>` — HMAC-SHA256, keyed with the secret, over
//!   `<timestamp>.<body bytes>` (the decimal timestamp, a full stop, then the exact body).
//!
//! A receiver recomputes the HMAC over the timestamp header, `.` and the raw body, compares in constant time,
//! and refuses a timestamp more than a few minutes from its clock: a captured request cannot be replayed later,
//! since changing the timestamp breaks the signature. The body is the same bytes on every attempt; only the
//! timestamp and signature change.
//!
//! **Retries.** 2xx is delivered. 4xx other than 429 is rejected: the receiver refuses this alert, and sending it
//! again would be refused again. A network error, a timeout, a 5xx or a 429 is retried after
//! [`RetryPolicy::backoff`] (exponential, capped, with jitter), at most [`RetryPolicy::max_attempts`] attempts in
//! all; then the alert is given up.

use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslConnector, SslMethod};
use sha2::{Digest, Sha256};

use super::Alert;
use super::settings::{AlertSettings, RetryPolicy, Secret};
use crate::error::BillingError;

/// The header naming the alert.
pub const ALERT_ID_HEADER: &str = "x-tollgate-alert-id";
/// The header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-tollgate-timestamp";
/// The header with the signature, `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

const SHA256_BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; SHA256_BLOCK];
    if key.len() > SHA256_BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `x-tollgate-signature` value of `body` signed at `timestamp` (Unix seconds): `sha256=<hex>` of the HMAC over
/// `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let stamp = timestamp.to_string();
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret, &[stamp.as_bytes(), b".", body]))
    )
}

/// How one alert's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered { status: u16 },
    /// A 4xx other than 429: not sent again.
    Rejected { status: u16 },
    /// Every attempt failed (network, timeout, 5xx, 429); the last error.
    GaveUp { last_error: String },
}

/// One attempt's result.
#[derive(Debug)]
enum Attempt {
    Status(u16),
    Failed(String),
}

/// The webhook client.
pub struct Webhook {
    url: url::Url,
    secret: Secret,
    retry: RetryPolicy,
    tls: Option<SslConnector>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.url.host_str())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client for `settings`' URL (with the system's CA certificates for `https://`).
    pub fn new(settings: &AlertSettings) -> Result<Self, BillingError> {
        let tls = if settings.url.scheme() == "https" {
            let connector = SslConnector::builder(SslMethod::tls_client())
                .map(|b| b.build())
                .map_err(|e| BillingError::Config {
                    setting: "alert-webhook-url",
                    reason: format!("cannot set up TLS: {e}"),
                })?;
            Some(connector)
        } else {
            None
        };
        Ok(Self {
            url: settings.url.clone(),
            secret: settings.secret.clone(),
            retry: settings.retry,
            tls,
        })
    }

    /// Delivers `alert`, retrying as [`RetryPolicy`] says; the outcome and the attempts made.
    pub async fn deliver(&self, alert: &Alert) -> (Outcome, u32) {
        let body = match serde_json::to_vec(alert) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                return (
                    Outcome::GaveUp {
                        last_error: error.to_string(),
                    },
                    0,
                );
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result =
                tokio::time::timeout(self.retry.attempt_timeout, self.attempt(&alert.id, body.clone()))
                    .await
                    .unwrap_or_else(|_| Attempt::Failed("timed out".to_owned()));
            let error = match result {
                Attempt::Status(status) if (200..300).contains(&status) => {
                    return (Outcome::Delivered { status }, attempt);
                }
                Attempt::Status(status) if (400..500).contains(&status) && status != 429 => {
                    return (Outcome::Rejected { status }, attempt);
                }
                Attempt::Status(status) => format!("http {status}"),
                Attempt::Failed(error) => error,
            };
            if attempt >= self.retry.max_attempts {
                return (Outcome::GaveUp { last_error: error }, attempt);
            }
            let wait = self.retry.backoff(attempt, jitter());
            tracing::warn!(id = %alert.id, attempt, %error, retry_in_ms = wait.as_millis() as u64, "Delivering an alert failed; retrying.");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, id: &str, body: Bytes) -> Attempt {
        match self.post(id, body).await {
            Ok(status) => Attempt::Status(status),
            Err(error) => Attempt::Failed(error),
        }
    }

    /// One POST on a connection of its own (alerts are rare; nothing is pooled).
    async fn post(&self, id: &str, body: Bytes) -> Result<u16, String> {
        let host = self.url.host_str().ok_or("no host")?.to_owned();
        let port = self.url.port_or_known_default().ok_or("no port")?;
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let timestamp = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let mut path = self.url.path().to_owned();
        if let Some(query) = self.url.query() {
            path = format!("{path}?{query}");
        }
        let authority = match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let request = Request::post(path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(
                USER_AGENT,
                concat!("tollgate-billing-consumer/", env!("CARGO_PKG_VERSION")),
            )
            .header(ALERT_ID_HEADER, id)
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature(&self.secret.0, timestamp, &body))
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let mut request = request;
        if let Some(auth) = basic_auth(&self.url) {
            request.headers_mut().insert(hyper::header::AUTHORIZATION, auth);
        }
        match &self.tls {
            None => send(TokioIo::new(tcp), request).await,
            Some(connector) => {
                let ssl = connector
                    .configure()
                    .and_then(|c| c.into_ssl(host.trim_matches(['[', ']'])))
                    .map_err(|e| format!("tls: {e}"))?;
                let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| format!("tls: {e}"))?;
                Pin::new(&mut stream)
                    .connect()
                    .await
                    .map_err(|e| format!("tls handshake: {e}"))?;
                send(TokioIo::new(stream), request).await
            }
        }
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        // Read (and drop) the answer, so the receiver is not cut off mid-write.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}

/// `Authorization: Basic …` from credentials in the URL, if any.
fn basic_auth(url: &url::Url) -> Option<HeaderValue> {
    if url.username().is_empty() {
        return None;
    }
    let user = percent_decode(url.username());
    let password = url.password().map(percent_decode).unwrap_or_default();
    let encoded = base64_encode(format!("{user}:{password}").as_bytes());
    HeaderValue::from_str(&format!("Basic {encoded}")).ok()
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_encode(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A number in `[0, 1)` that differs between calls (for backoff jitter; not for anything secret).
fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test vectors 1, 2, 6 (a key longer than the block) and 7.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."]
            )),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        );
    }

    #[test]
    fn the_signature_covers_the_timestamp_and_the_exact_body() {
        let secret = b"0123456789abcdef";
        let body = br#"{"id":"x"}"#;
        let signed = signature(secret, 1_795_168_800, body);
        assert!(signed.starts_with("sha256="));
        assert_eq!(signed.len(), "sha256=".len() + 64);
        assert_eq!(
            signed,
            format!(
                "sha256={}",
                hex::encode(hmac_sha256(secret, &[b"1795168800.{\"id\":\"x\"}"]))
            )
        );
        assert_ne!(
            signed,
            signature(secret, 1_795_168_801, body),
            "another time, another signature"
        );
        assert_ne!(signed, signature(secret, 1_795_168_800, br#"{"id":"y"}"#));
        assert_ne!(signed, signature(b"another secret!!", 1_795_168_800, body));
    }

    #[test]
    fn jitter_is_in_range_and_basic_auth_encodes() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
        assert_eq!(
            base64_encode(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64_encode(b"ab"), "YWI=");
        let url = url::Url::parse("https://us%40er:p%3Ass@hooks.example/x").unwrap();
        assert_eq!(
            basic_auth(&url).unwrap().to_str().unwrap(),
            format!("Basic {}", base64_encode(b"us@er:p:ss"))
        );
        assert!(basic_auth(&url::Url::parse("https://hooks.example/x").unwrap()).is_none());
    }
}
