//! The admin API's errors. Every way an admin request can fail is an [`AdminError`] variant, mapped by an
//! exhaustive `match` to a status and the same OpenAI-shaped body the public API answers with
//! (`{"error":{"message","type","param","code"}}`). [`AdminError::outcome`] is the bounded label of the
//! refusal in `tollgate_admin_requests_total` and in the log line.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, ResponseError};

use crate::error::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("You didn't provide an admin key. Send it in the X-API-KEY header.")]
    MissingKey,
    #[error("Incorrect admin key provided.")]
    InvalidKey,
    /// The judged source address is outside `admin.allow`.
    #[error("The admin API does not accept requests from this address.")]
    AddressNotAllowed,
    /// A trusted proxy sent an `X-Forwarded-For` or `X-Real-IP` that is not a list of addresses.
    #[error("The forwarded client address could not be read.")]
    BadForwardedAddress,
    /// A viewer key asked for a method other than GET or HEAD.
    #[error("This admin key has the viewer role and cannot change the configuration.")]
    ReadOnlyKey,
    #[error("No {kind} is named `{name}`.")]
    NotFound { kind: &'static str, name: String },
    #[error("Invalid URL ({method} {path}).")]
    UnknownUrl { method: String, path: String },
    /// The body is not the JSON object the resource needs.
    #[error("{0}")]
    InvalidBody(String),
    /// The change would leave the configuration invalid; every problem, with its path.
    #[error("The change would leave the configuration invalid: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// Published, but a conflicting change by another replica came first in the config topic.
    #[error("A conflicting change by another replica was applied first: {}", .0.join("; "))]
    Conflict(Vec<String>),
    #[error(
        "Price version `{0}` already exists with other figures; price versions never change once created. Add a new version with a later effective_from."
    )]
    PriceVersionImmutable(String),
    #[error("Price version `{0}` is already in force and may have priced events; it cannot be deleted.")]
    PriceVersionInForce(String),
    #[error(
        "Price version `{0}` would be in force already: effective_from must be in the future, or events already billed would be priced again differently on replay."
    )]
    PriceVersionBackdated(String),
    #[error("{method} is not supported on {path}.")]
    MethodNotAllowed { method: String, path: String },
    /// The config topic did not take the change; nothing changed.
    #[error("The configuration store is unavailable; nothing was changed: {0}")]
    StoreUnavailable(String),
    /// The change was published but had not applied on this replica in time; it applies when it arrives.
    #[error("The change was accepted but has not applied yet; check GET /admin/v1/history.")]
    NotApplied,
    /// A request refused before any admin handler read it (a body over the admin API's limit, a path segment
    /// that is not UTF-8 once decoded, …): the status the HTTP layer chose, in the admin API's shape.
    #[error("The request could not be read: {message}")]
    Unreadable { status: StatusCode, message: String },
}

impl AdminError {
    /// A short, bounded name for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingKey => "missing_admin_key",
            Self::InvalidKey => "invalid_admin_key",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::BadForwardedAddress => "bad_forwarded_address",
            Self::ReadOnlyKey => "read_only_key",
            Self::NotFound { .. } => "not_found",
            Self::UnknownUrl { .. } => "unknown_url",
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidConfig(_) => "invalid_config",
            Self::Conflict(_) => "config_conflict",
            Self::PriceVersionImmutable(_) => "price_version_immutable",
            Self::PriceVersionInForce(_) => "price_version_in_force",
            Self::PriceVersionBackdated(_) => "price_version_backdated",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::StoreUnavailable(_) => "config_store_unavailable",
            Self::NotApplied => "config_not_applied",
            Self::Unreadable { .. } => "unreadable_request",
        }
    }

    /// (status, OpenAI `type`).
    fn parts(&self) -> (StatusCode, &'static str) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::MissingKey | Self::InvalidKey => (StatusCode::UNAUTHORIZED, INVALID),
            Self::AddressNotAllowed | Self::BadForwardedAddress | Self::ReadOnlyKey => {
                (StatusCode::FORBIDDEN, "permission_error")
            }
            Self::NotFound { .. } | Self::UnknownUrl { .. } => (StatusCode::NOT_FOUND, INVALID),
            Self::InvalidBody(_) | Self::InvalidConfig(_) | Self::PriceVersionBackdated(_) => {
                (StatusCode::BAD_REQUEST, INVALID)
            }
            Self::Conflict(_) | Self::PriceVersionImmutable(_) | Self::PriceVersionInForce(_) => {
                (StatusCode::CONFLICT, INVALID)
            }
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, INVALID),
            Self::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            Self::NotApplied => (StatusCode::GATEWAY_TIMEOUT, "server_error"),
            Self::Unreadable { status, .. } if status.is_server_error() => (*status, "server_error"),
            Self::Unreadable { status, .. } => (*status, INVALID),
        }
    }

    /// Every problem behind a validation refusal or conflict, for the body's `errors`.
    fn problems(&self) -> Option<&[String]> {
        match self {
            Self::InvalidConfig(problems) | Self::Conflict(problems) => Some(problems),
            _ => None,
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, error_type) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                error_type,
                param: None,
                code: Some(self.outcome()),
            },
        };
        let mut body = serde_json::to_value(&body).unwrap_or_default();
        if let Some(problems) = self.problems() {
            body["error"]["errors"] = serde_json::json!(problems);
        }
        HttpResponse::build(status)
            .insert_header(ContentType::json())
            .body(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_401_or_403_and_unknown_names_404() {
        let cases = [
            (AdminError::MissingKey, 401),
            (AdminError::InvalidKey, 401),
            (AdminError::AddressNotAllowed, 403),
            (AdminError::BadForwardedAddress, 403),
            (AdminError::ReadOnlyKey, 403),
            (
                AdminError::NotFound {
                    kind: "route",
                    name: "x".into(),
                },
                404,
            ),
            (AdminError::InvalidConfig(vec!["routes/x.targets: …".into()]), 400),
            (AdminError::Conflict(Vec::new()), 409),
            (AdminError::PriceVersionImmutable("m@d".into()), 409),
            (AdminError::PriceVersionBackdated("m@d".into()), 400),
            (AdminError::StoreUnavailable("down".into()), 503),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn a_validation_refusal_lists_every_problem_in_the_body() {
        let error = AdminError::InvalidConfig(vec!["a: one".into(), "b: two".into()]);
        let response = error.error_response();
        let body = actix_web::body::to_bytes(response.into_body());
        let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_config");
        assert_eq!(body["error"]["errors"], serde_json::json!(["a: one", "b: two"]));
    }
}
