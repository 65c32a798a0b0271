//! Everything that can go wrong with a request, and how each failure looks on the wire.
//!
//! [`MeterError`] is the one error type of the HTTP boundary. Its `ResponseError` implementation maps each
//! variant, in one exhaustive `match`, to a status and an OpenAI-shaped body
//! `{"error":{"message","type","param","code"}}`; [`MeterError::kind`] is the short, bounded label used in
//! metrics and logs (the message never becomes a label).
//!
//! A batch answers 200 even when some of its items fail: each failed item's result carries
//! [`MeterError::to_openai`], the same `{"error":{...}}` object a single count would have answered with.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::encoding::UnknownEncoding;

/// A request the sidecar could not serve.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The body is empty.
    #[error("the request body is empty; expected a JSON object")]
    EmptyBody,
    /// The body is not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The body is valid JSON but not an object.
    #[error("expected a JSON object, not {found}")]
    NotAnObject {
        /// The JSON type that was sent instead (`an array`, `a string`, …).
        found: &'static str,
    },
    /// A required field is absent or `null`.
    #[error("missing required field `{param}`")]
    MissingField {
        /// Path of the field, e.g. `model`.
        param: String,
    },
    /// A field has the wrong JSON type.
    #[error("`{param}` must be {expected}")]
    InvalidField {
        /// Path of the field, e.g. `messages[2].content`.
        param: String,
        /// What was expected, as a phrase: `a string`, `an array of messages`, …
        expected: &'static str,
    },
    /// Both `text` and `messages` were sent.
    #[error("send either `text` or `messages`, not both")]
    TextAndMessages,
    /// Neither `text` nor `messages` was sent.
    #[error("one of `text` or `messages` is required")]
    NoInput,
    /// A batch has more items than the configured limit.
    #[error("`items` has {count} entries; at most {max} are accepted in one batch")]
    TooManyItems {
        /// Items sent.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The `encoding` field names an encoding the sidecar does not have.
    #[error(transparent)]
    UnknownEncoding(#[from] UnknownEncoding),
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body could not be read (the client went away, a broken chunked encoding, …).
    #[error("the request body could not be read: {0}")]
    Payload(String),
    /// No endpoint at this path.
    #[error(
        "no endpoint at this path; the sidecar serves POST /v1/tokens/count, POST /v1/tokens/count/batch, \
         GET /healthz and GET /metrics"
    )]
    NotFound,
    /// The endpoint exists but not for this method.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed {
        /// The method the endpoint accepts.
        allow: &'static str,
    },
    /// Counting failed inside the tokenizer, or its worker thread was lost.
    #[error("token counting failed inside the tokenizer")]
    Counting,
}

/// The `type` of an OpenAI error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request (or batch item) is at fault.
    InvalidRequestError,
    /// The sidecar is at fault.
    ServerError,
}

/// The OpenAI error envelope: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAiError {
    /// The error object.
    pub error: ErrorObject,
}

/// An OpenAI error object: `{"message","type","param","code"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorObject {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// The field at fault, if one is (for a batch item, relative to the item: `model`, `messages[1]`).
    pub param: Option<String>,
    /// [`MeterError::kind`].
    pub code: &'static str,
}

impl MeterError {
    /// Short, bounded name of this kind of error, for metric labels, logs and the body's `code`.
    pub fn kind(&self) -> &'static str {
        match self {
            MeterError::EmptyBody => "empty_body",
            MeterError::InvalidJson(_) => "invalid_json",
            MeterError::NotAnObject { .. } => "not_an_object",
            MeterError::MissingField { .. } => "missing_field",
            MeterError::InvalidField { .. } => "invalid_field",
            MeterError::TextAndMessages => "text_and_messages",
            MeterError::NoInput => "no_input",
            MeterError::TooManyItems { .. } => "too_many_items",
            MeterError::UnknownEncoding(_) => "unknown_encoding",
            MeterError::PayloadTooLarge { .. } => "payload_too_large",
            MeterError::Payload(_) => "payload",
            MeterError::NotFound => "not_found",
            MeterError::MethodNotAllowed { .. } => "method_not_allowed",
            MeterError::Counting => "counting",
        }
    }

    /// The OpenAI-shaped body this error renders as.
    pub fn to_openai(&self) -> OpenAiError {
        let (_, kind, param) = self.parts();
        OpenAiError {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param: param.map(str::to_owned),
                code: self.kind(),
            },
        }
    }

    /// Status, error type and the request field at fault (`param`), all decided here and only here.
    fn parts(&self) -> (StatusCode, ErrorType, Option<&str>) {
        use ErrorType::{InvalidRequestError as Invalid, ServerError};
        match self {
            MeterError::EmptyBody | MeterError::InvalidJson(_) | MeterError::NotAnObject { .. } => {
                (StatusCode::BAD_REQUEST, Invalid, None)
            }
            MeterError::MissingField { param } | MeterError::InvalidField { param, .. } => {
                (StatusCode::BAD_REQUEST, Invalid, Some(param))
            }
            MeterError::TextAndMessages => (StatusCode::BAD_REQUEST, Invalid, Some("messages")),
            MeterError::NoInput => (StatusCode::BAD_REQUEST, Invalid, Some("text")),
            MeterError::TooManyItems { .. } => (StatusCode::BAD_REQUEST, Invalid, Some("items")),
            MeterError::UnknownEncoding(_) => (StatusCode::BAD_REQUEST, Invalid, Some("encoding")),
            MeterError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Invalid, None),
            MeterError::Payload(_) => (StatusCode::BAD_REQUEST, Invalid, None),
            MeterError::NotFound => (StatusCode::NOT_FOUND, Invalid, None),
            MeterError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, Invalid, None),
            MeterError::Counting => (StatusCode::INTERNAL_SERVER_ERROR, ServerError, None),
        }
    }
}

impl ResponseError for MeterError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let MeterError::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        response.json(self.to_openai())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;
    use serde_json::{Value, json};

    use super::*;

    async fn body_of(err: MeterError) -> (StatusCode, Value) {
        let response = err.error_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn a_missing_field_names_it_in_param() {
        let (status, body) = body_of(MeterError::MissingField {
            param: "model".into(),
        })
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({"error": {
                "message": "missing required field `model`",
                "type": "invalid_request_error",
                "param": "model",
                "code": "missing_field",
            }})
        );
    }

    #[actix_web::test]
    async fn an_oversized_body_is_413_in_the_same_shape() {
        let (status, body) = body_of(MeterError::PayloadTooLarge { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "payload_too_large");
        assert_eq!(body["error"]["param"], Value::Null);
    }

    #[actix_web::test]
    async fn a_counting_failure_is_a_server_error() {
        let (status, body) = body_of(MeterError::Counting).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[test]
    fn method_not_allowed_says_which_method_to_use() {
        let response = MeterError::MethodNotAllowed { allow: "POST" }.error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "POST");
    }
}
