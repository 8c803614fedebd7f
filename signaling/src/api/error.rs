//! Every API error becomes a response here, in one shape: a status code and
//! `{"error": "<stable code>", "message": "<for people>"}`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{CsvLineError, StoreError};

/// An API error, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    /// Signed in but not allowed: why.
    Forbidden(&'static str),
    NotFound,
    Conflict(String),
    PayloadTooLarge,
    /// Too many failed sign-ins: the seconds to wait.
    TooManyAttempts(i64),
    /// The server is at its bound of work of this kind (password hashes); retry shortly.
    Busy,
    InvalidCsv(Vec<CsvLineError>),
    /// Details are logged, never sent.
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `too_many_attempts`, `busy`, `invalid_csv` or `internal`.
    pub error: &'static str,
    pub message: String,
    /// Only for `invalid_csv`: every bad line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<CsvLineError>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyAttempts(seconds) => Some(*seconds),
            ApiError::Busy => Some(1),
            _ => None,
        };
        let (status, error, message, errors) = match self {
            ApiError::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, "bad_request", message, None)
            }
            ApiError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message.to_string(),
                None,
            ),
            ApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                message.to_string(),
                None,
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such thing".to_string(),
                None,
            ),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, "conflict", message, None),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large".to_string(),
                None,
            ),
            ApiError::TooManyAttempts(seconds) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!("too many failed sign-ins from here; try again in {seconds} s"),
                None,
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server is busy signing people in; try again in a moment".to_string(),
                None,
            ),
            ApiError::InvalidCsv(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_csv",
                format!("{} bad line(s); nothing was imported", errors.len()),
                Some(errors),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed; the error is logged".to_string(),
                None,
            ),
        };
        let body = ErrorBody {
            error,
            message,
            errors,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Invalid(message) => ApiError::BadRequest(message),
            StoreError::InvalidCsv(errors) => ApiError::InvalidCsv(errors),
            StoreError::Busy => ApiError::Busy,
            other => {
                tracing::error!(err = %other, "storage failed");
                ApiError::Internal
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        // The rejection's text names the field and the problem, never a secret: it quotes
        // the shape, not the values of other fields.
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        // The text names the parameter and the problem (an unknown parameter, a number that
        // is not one).
        ApiError::BadRequest(rejection.body_text())
    }
}
