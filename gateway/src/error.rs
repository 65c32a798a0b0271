//! The gateway's one error type. Every way a request can fail is a [`GatewayError`] variant, mapped — by an
//! exhaustive `match` — to an HTTP status and a body in the client's protocol ([`GatewayError::response_in`]):
//! OpenAI's `{"error":{"message","type","param","code"}}` (also [`ResponseError`]'s default), or on Anthropic's
//! Messages API `{"type":"error","error":{"type","message"}}` with Anthropic's type names
//! (`invalid_request_error`, `authentication_error`, `not_found_error`, `request_too_large`, `rate_limit_error`,
//! `api_error`, `overloaded_error`, `timeout_error`). Clients written against either provider's SDKs parse the
//! gateway's errors as they parse the provider's own, and raise the same exception classes.
//!
//! [`GatewayError::kind`] is a short, bounded name for metric labels and log fields; messages never become labels.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::protocol::Provider;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("You didn't provide an API key. Send it in the Authorization header as `Bearer YOUR_KEY`.")]
    MissingApiKey,
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    #[error("This API key has expired.")]
    ExpiredApiKey,
    #[error("The request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("Missing required parameter: '{0}'.")]
    MissingParameter(&'static str),
    #[error("Invalid value for '{param}': {message}")]
    InvalidParameter { param: &'static str, message: String },
    #[error("{message}")]
    RateLimited {
        status: u16,
        message: String,
        retry_after: std::time::Duration,
    },
    /// A token quota of the consumer or of the model is used up for the current window.
    #[error("{message}")]
    QuotaExceeded {
        status: u16,
        message: String,
        /// `rate_limit_exceeded` or `insufficient_quota`, as configured.
        error_type: &'static str,
        retry_after: std::time::Duration,
    },
    /// Every instance that could serve the request has used its own token quota for the current window.
    #[error("Every instance serving this model has used its token quota for the current window.")]
    InstanceQuotaExhausted { retry_after: std::time::Duration },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// The request was routed to an instance of the other protocol, and cannot be carried across (`n` > 1, a
    /// malformed tool call, …).
    #[error("Invalid value for '{param}': {message}")]
    Untranslatable { param: String, message: String },
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error("Could not read the request body: {0}")]
    RequestBody(String),
    /// The body did not arrive whole within `server.body_read_timeout`.
    #[error("The request body did not arrive within {seconds} seconds.")]
    RequestTimeout { seconds: u64 },
    /// The body nests deeper than `server.max_json_depth` or holds more than `server.max_json_values` values.
    #[error("The request body is too complex: {0}")]
    JsonTooComplex(String),
    /// The replica's in-flight budget (`server.max_inflight_requests`, `server.max_inflight_bytes`) is used up.
    #[error("The gateway is handling as much as it can right now ({reason} in flight). Try again shortly.")]
    Overloaded { reason: &'static str },
    /// The upstream's whole answer was larger than `server.max_response_bytes`; it was billed from what was read.
    #[error("The upstream's answer was larger than the gateway's limit of {limit} bytes.")]
    UpstreamAnswerTooLarge { limit: usize },
    #[error("Invalid URL ({method} {path}).")]
    UnknownUrl { method: String, path: String },
    #[error("The upstream for this model could not be reached.")]
    UpstreamUnreachable,
    #[error("The upstream for this model did not answer in time.")]
    UpstreamTimeout,
    #[error("The upstream for this model sent a response that could not be read.")]
    UpstreamBadResponse,
    /// The usage spool is full (`spool.on_full = "reject"`): the gateway could not record what the request
    /// consumes, so it does not serve it.
    #[error(
        "The gateway cannot record usage right now, so it is not serving metered requests. Try again later."
    )]
    UsageSpoolFull,
    #[error("The gateway failed to process the request.")]
    Internal,
}

/// The OpenAI error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

/// Anthropic's error body.
#[derive(Debug, Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct AnthropicErrorDetail<'a> {
    #[serde(rename = "type")]
    error_type: &'static str,
    message: &'a str,
}

impl GatewayError {
    /// A short, bounded name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ExpiredApiKey => "expired_api_key",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingParameter(_) => "missing_parameter",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::InstanceQuotaExhausted { .. } => "instance_quota_exhausted",
            Self::ModelNotFound(_) => "model_not_found",
            Self::Untranslatable { .. } => "untranslatable",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RequestBody(_) => "request_body",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::JsonTooComplex(_) => "json_too_complex",
            Self::Overloaded { .. } => "overloaded",
            Self::UpstreamAnswerTooLarge { .. } => "upstream_answer_too_large",
            Self::UnknownUrl { .. } => "unknown_url",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBadResponse => "upstream_bad_response",
            Self::UsageSpoolFull => "usage_spool_full",
            Self::Internal => "internal",
        }
    }

    /// (status, OpenAI `type`, `param`, `code`).
    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::MissingApiKey => (StatusCode::UNAUTHORIZED, INVALID, None, Some("missing_api_key")),
            Self::InvalidApiKey => (StatusCode::UNAUTHORIZED, INVALID, None, Some("invalid_api_key")),
            Self::ExpiredApiKey => (StatusCode::UNAUTHORIZED, INVALID, None, Some("expired_api_key")),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, None, Some("invalid_json")),
            Self::MissingParameter(param) => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some(param),
                Some("missing_required_parameter"),
            ),
            Self::InvalidParameter { param, .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some(param),
                Some("invalid_value"),
            ),
            Self::RateLimited { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::QuotaExceeded {
                status, error_type, ..
            } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                error_type,
                None,
                Some(error_type),
            ),
            Self::InstanceQuotaExhausted { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                None,
                Some("instance_quota_exhausted"),
            ),
            Self::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID,
                Some("model"),
                Some("model_not_found"),
            ),
            Self::Untranslatable { .. } => (StatusCode::BAD_REQUEST, INVALID, None, Some("invalid_value")),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                Some("payload_too_large"),
            ),
            Self::RequestBody(_) => (StatusCode::BAD_REQUEST, INVALID, None, Some("request_body")),
            Self::RequestTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                None,
                Some("request_timeout"),
            ),
            Self::JsonTooComplex(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                Some("json_too_complex"),
            ),
            Self::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("gateway_overloaded"),
            ),
            Self::UpstreamAnswerTooLarge { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                None,
                Some("upstream_answer_too_large"),
            ),
            Self::UnknownUrl { .. } => (StatusCode::NOT_FOUND, INVALID, None, Some("unknown_url")),
            Self::UpstreamUnreachable => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                None,
                Some("upstream_unreachable"),
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                None,
                Some("upstream_timeout"),
            ),
            Self::UpstreamBadResponse => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                None,
                Some("upstream_bad_response"),
            ),
            Self::UsageSpoolFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("usage_spool_full"),
            ),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, None),
        }
    }
}

impl GatewayError {
    /// Anthropic's error type for this error: the names Anthropic's API answers with, so that its SDKs raise
    /// the matching exception (`AuthenticationError`, `NotFoundError`, `RateLimitError`, …).
    fn anthropic_type(&self) -> &'static str {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey | Self::ExpiredApiKey => "authentication_error",
            Self::InvalidJson(_)
            | Self::MissingParameter(_)
            | Self::InvalidParameter { .. }
            | Self::RequestBody(_)
            | Self::Untranslatable { .. }
            | Self::RequestTimeout { .. } => "invalid_request_error",
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } | Self::InstanceQuotaExhausted { .. } => {
                "rate_limit_error"
            }
            Self::ModelNotFound(_) | Self::UnknownUrl { .. } => "not_found_error",
            Self::PayloadTooLarge { .. } | Self::JsonTooComplex(_) => "request_too_large",
            Self::Overloaded { .. } => "overloaded_error",
            Self::UpstreamTimeout => "timeout_error",
            Self::UpstreamAnswerTooLarge { .. }
            | Self::UpstreamUnreachable
            | Self::UpstreamBadResponse
            | Self::UsageSpoolFull
            | Self::Internal => "api_error",
        }
    }

    /// The message in `protocol`'s words: Anthropic's clients send their key in `x-api-key`.
    fn message_in(&self, protocol: Provider) -> String {
        match (self, protocol) {
            (Self::MissingApiKey, Provider::Anthropic) => {
                "x-api-key header is required (or Authorization: Bearer YOUR_KEY).".to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// The response for a client of `protocol`: status, body in that protocol's error shape, and the
    /// `Retry-After` header where the error has one.
    pub fn response_in(&self, protocol: Provider) -> HttpResponse {
        let (status, error_type, param, code) = self.parts();
        let message = self.message_in(protocol);
        let body = match protocol.protocol() {
            // No client speaks Gemini's protocol (it is only ever reached translated): OpenAI's shape.
            Provider::Openai | Provider::AzureOpenai | Provider::Gemini => {
                serde_json::to_string(&ErrorBody {
                    error: ErrorDetail {
                        message,
                        error_type,
                        param,
                        code,
                    },
                })
            }
            Provider::Anthropic => serde_json::to_string(&AnthropicErrorBody {
                kind: "error",
                error: AnthropicErrorDetail {
                    error_type: self.anthropic_type(),
                    message: &message,
                },
            }),
        };
        let mut response = HttpResponse::build(status);
        if let Self::RateLimited { retry_after, .. }
        | Self::QuotaExceeded { retry_after, .. }
        | Self::InstanceQuotaExhausted { retry_after } = self
        {
            // Whole seconds, rounded up, as the header requires.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        if let Self::Overloaded { .. } = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        response
            .insert_header(ContentType::json())
            .body(body.unwrap_or_default())
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    /// The OpenAI-shaped response; [`GatewayError::response_in`] answers in the client's protocol.
    fn error_response(&self) -> HttpResponse {
        self.response_in(Provider::Openai)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(err: &GatewayError) -> serde_json::Value {
        let (status, error_type, param, code) = err.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                message: err.to_string(),
                error_type,
                param,
                code,
            },
        };
        assert_eq!(err.status_code(), status);
        serde_json::to_value(body).unwrap()
    }

    fn every_error() -> Vec<GatewayError> {
        vec![
            GatewayError::MissingApiKey,
            GatewayError::InvalidApiKey,
            GatewayError::ExpiredApiKey,
            GatewayError::InvalidJson("expected value at line 1 column 1".into()),
            GatewayError::MissingParameter("model"),
            GatewayError::InvalidParameter {
                param: "messages",
                message: "must be an array".into(),
            },
            GatewayError::RateLimited {
                status: 429,
                message: "slow down".into(),
                retry_after: std::time::Duration::from_millis(1500),
            },
            GatewayError::QuotaExceeded {
                status: 429,
                message: "over quota".into(),
                error_type: "insufficient_quota",
                retry_after: std::time::Duration::from_secs(60),
            },
            GatewayError::InstanceQuotaExhausted {
                retry_after: std::time::Duration::from_secs(1),
            },
            GatewayError::ModelNotFound("gpt-9".into()),
            GatewayError::Untranslatable {
                param: "n".into(),
                message: "`n` cannot be honoured by this model's provider".into(),
            },
            GatewayError::PayloadTooLarge { limit: 10 },
            GatewayError::RequestBody("reset".into()),
            GatewayError::RequestTimeout { seconds: 30 },
            GatewayError::JsonTooComplex("nested deeper than 64".into()),
            GatewayError::Overloaded { reason: "bytes" },
            GatewayError::UpstreamAnswerTooLarge { limit: 16 },
            GatewayError::UnknownUrl {
                method: "GET".into(),
                path: "/v2/x".into(),
            },
            GatewayError::UpstreamUnreachable,
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamBadResponse,
            GatewayError::UsageSpoolFull,
            GatewayError::Internal,
        ]
    }

    #[test]
    fn every_error_has_the_openai_shape() {
        for err in &every_error() {
            let body = body_of(err);
            let detail = body["error"].as_object().unwrap();
            let mut keys: Vec<_> = detail.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "message", "param", "type"], "{err:?}");
            assert!(!detail["message"].as_str().unwrap().is_empty());
            assert!(!err.kind().is_empty());
        }
    }

    fn anthropic_body(err: &GatewayError) -> (u16, serde_json::Value) {
        use actix_web::body::MessageBody as _;
        let response = err.response_in(Provider::Anthropic);
        let status = response.status().as_u16();
        let bytes = match response.into_body().try_into_bytes() {
            Ok(bytes) => bytes,
            Err(_) => panic!("a whole body"),
        };
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// On the Messages API every error has Anthropic's shape and one of Anthropic's type names, with the same
    /// status as on OpenAI's endpoints: the Anthropic SDKs raise their own exception classes from it.
    #[test]
    fn every_error_has_the_anthropic_shape_on_the_messages_api() {
        const TYPES: [&str; 8] = [
            "invalid_request_error",
            "authentication_error",
            "not_found_error",
            "request_too_large",
            "rate_limit_error",
            "api_error",
            "overloaded_error",
            "timeout_error",
        ];
        for err in &every_error() {
            let (status, body) = anthropic_body(err);
            assert_eq!(status, err.status_code().as_u16(), "{err:?}");
            assert_eq!(body["type"], "error", "{err:?}");
            let mut keys: Vec<_> = body["error"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(keys, ["message", "type"], "{err:?}");
            assert!(
                TYPES.contains(&body["error"]["type"].as_str().unwrap()),
                "{err:?}"
            );
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
        let (status, body) = anthropic_body(&GatewayError::InvalidApiKey);
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (401, Some("authentication_error"))
        );
        let (_, body) = anthropic_body(&GatewayError::MissingApiKey);
        assert!(body["error"]["message"].as_str().unwrap().contains("x-api-key"));
        let (status, body) = anthropic_body(&GatewayError::ModelNotFound("claude-9".into()));
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (404, Some("not_found_error"))
        );
        let quota = GatewayError::QuotaExceeded {
            status: 429,
            message: "over".into(),
            error_type: "insufficient_quota",
            retry_after: std::time::Duration::from_secs(2),
        };
        let response = quota.response_in(Provider::Anthropic);
        assert_eq!(response.headers().get("retry-after").unwrap(), "2");
        let (status, body) = anthropic_body(&quota);
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (429, Some("rate_limit_error"))
        );
    }

    #[test]
    fn statuses_follow_openai() {
        assert_eq!(GatewayError::MissingApiKey.status_code(), 401);
        assert_eq!(GatewayError::InvalidApiKey.status_code(), 401);
        assert_eq!(GatewayError::InvalidJson(String::new()).status_code(), 400);
        assert_eq!(GatewayError::MissingParameter("model").status_code(), 400);
        assert_eq!(GatewayError::ModelNotFound("x".into()).status_code(), 404);
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.status_code(), 413);
        assert_eq!(GatewayError::UpstreamUnreachable.status_code(), 502);
        assert_eq!(GatewayError::UpstreamTimeout.status_code(), 504);
        assert_eq!(GatewayError::UsageSpoolFull.status_code(), 503);
        assert_eq!(GatewayError::RequestTimeout { seconds: 1 }.status_code(), 408);
        assert_eq!(GatewayError::JsonTooComplex(String::new()).status_code(), 413);
        let overloaded = GatewayError::Overloaded { reason: "requests" }.error_response();
        assert_eq!(overloaded.status(), 503);
        assert_eq!(overloaded.headers().get("retry-after").unwrap(), "1");
    }

    #[test]
    fn quota_rejections_carry_the_configured_type_and_retry_after() {
        let err = GatewayError::QuotaExceeded {
            status: 429,
            message: "Team A is over its hourly tokens.".into(),
            error_type: "insufficient_quota",
            retry_after: std::time::Duration::from_millis(2_100),
        };
        let body = body_of(&err);
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert_eq!(body["error"]["code"], "insufficient_quota");
        assert_eq!(body["error"]["message"], "Team A is over its hourly tokens.");
        let response = err.error_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers().get("retry-after").unwrap(), "3");
    }

    #[test]
    fn missing_parameter_names_the_parameter() {
        let body = body_of(&GatewayError::MissingParameter("model"));
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "missing_required_parameter");
    }
}
