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
        HttpResponse::build(status)
            .insert_header(ContentType::json())
            .body(serde_json::to_string(&body).unwrap_or_default())
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
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }
}
