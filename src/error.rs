//! One error type for the crate, rendered in one place: RFC 9457 problem
//! details for the REST API. OAuth endpoints render their own RFC 6749 bodies
//! (see `oauth::OAuthError`).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem with one field of a request body.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer-like path of the field (`fields.name`, `valid_until`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (syntax): 400.
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but its content is invalid: 422.
    #[error("{detail}")]
    Invalid {
        /// Summary.
        detail: String,
        /// Per-field problems.
        errors: Vec<FieldError>,
    },
    /// No credential, or a credential that is not valid: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credential without the right: 403.
    #[error("{0}")]
    Forbidden(String),
    /// RFC 6750 §3.1: the access token cannot be used (401 `invalid_token`)
    /// or does not cover this call (403 `insufficient_scope`); the challenge
    /// names the DPoP scheme for sender-constrained tokens.
    #[error("{detail}")]
    TokenRefused {
        /// 403 `insufficient_scope` rather than 401 `invalid_token`.
        insufficient: bool,
        /// What is wrong.
        detail: String,
        /// Challenge with `DPoP` rather than `Bearer`.
        dpop: bool,
    },
    /// The thing asked for does not exist (or is not visible to the caller): 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state: 409.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body has a media type we do not accept: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency (the database) is unavailable: 503.
    #[error("{0}")]
    Unavailable(String),
    /// A database error; details are logged, never returned.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else that is our fault; details are logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An `Invalid` error with a single field problem.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let e = FieldError::new(field, message);
        Error::Invalid {
            detail: format!("{}: {}", e.field, e.message),
            errors: vec![e],
        }
    }

    /// An internal error from anything displayable (crypto, serialization).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::TokenRefused {
                insufficient: true, ..
            } => StatusCode::FORBIDDEN,
            Error::TokenRefused { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(e) if is_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// True when a unique constraint was violated (e.g. a duplicate identifier).
    /// A PostgreSQL deadlock victim (40P01) or serialization failure (40001):
    /// the transaction was rolled back and may simply run again.
    pub fn is_retryable_conflict(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

/// True for database failures that say "not now" rather than "this request is wrong":
/// no connection, a connection lost, a server shutting down or starting, a full
/// disk, an I/O error. They answer 503 so that clients and load balancers retry.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| unavailable_code(&c)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes 08 (connection exception), 53 (insufficient
/// resources: disk full, out of memory, too many connections) and 57P
/// (operator intervention: shutdown, crash, cannot connect now), 55P03 (a lock
/// not granted within `lock_timeout`) and 57014 (a statement cancelled);
/// SQLite's primary result codes SQLITE_IOERR (10), SQLITE_FULL (13) and
/// SQLITE_CANTOPEN (14).
fn unavailable_code(code: &str) -> bool {
    if code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "55P03"
        || code == "57014"
    {
        return true;
    }
    // SQLSTATEs always have five characters; SQLite's (extended) codes fewer.
    code.len() < 5
        && code
            .parse::<i32>()
            .is_ok_and(|n| matches!(n & 0xff, 10 | 13 | 14))
}

/// What a refusal said, kept on the response for its audit record.
#[derive(Debug, Clone)]
pub struct RefusalNote(pub String);

/// RFC 9457 problem details body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference identifying the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human-readable summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Per-field problems, when the request body was invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "the database is unavailable; retry later".to_owned()
                } else {
                    "an internal error occurred".to_owned()
                }
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "an internal error occurred".to_owned()
            }
            other => other.to_string(),
        };
        let challenge = match &self {
            Error::TokenRefused {
                insufficient,
                detail,
                dpop,
            } => {
                // RFC 6750 §3: error_description is limited to printable ASCII without quotes.
                let described: String = detail
                    .chars()
                    .map(|c| {
                        if c.is_ascii_graphic() && c != '"' && c != '\\' {
                            c
                        } else {
                            ' '
                        }
                    })
                    .collect();
                Some(format!(
                    "{} realm=\"licensegate\", error=\"{}\", error_description=\"{}\"{}",
                    if *dpop { "DPoP" } else { "Bearer" },
                    if *insufficient {
                        "insufficient_scope"
                    } else {
                        "invalid_token"
                    },
                    described,
                    if *dpop {
                        ", algs=\"ES256 PS256 EdDSA\""
                    } else {
                        ""
                    }
                ))
            }
            _ => None,
        };
        let errors = match self {
            Error::Invalid { errors, .. } => errors,
            _ => Vec::new(),
        };
        let slug = match status.as_u16() {
            400 => "bad-request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not-found",
            409 => "conflict",
            413 => "payload-too-large",
            415 => "unsupported-media-type",
            422 => "invalid-request-content",
            503 => "unavailable",
            _ => "internal",
        };
        let problem = Problem {
            kind: format!("https://licensegate.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let note = RefusalNote(
            std::iter::once(problem.detail.clone())
                .chain(
                    problem
                        .errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message)),
                )
                .collect::<Vec<_>>()
                .join("; "),
        );
        let mut response = (status, axum::Json(problem)).into_response();
        response.extensions_mut().insert(note);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        } else if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        } else if status == StatusCode::FORBIDDEN {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(r.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType(
                "expected a request body with Content-Type: application/json".to_owned(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY => Error::Invalid {
                detail: r.body_text(),
                errors: Vec::new(),
            },
            _ => Error::BadRequest(r.body_text()),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::unavailable_code;

    #[test]
    fn unavailable_database_codes() {
        for c in [
            "08006", "08001", "53100", "53300", "57P01", "57P03", "55P03", "57014", "13", "10",
            "778", "14",
        ] {
            assert!(unavailable_code(c), "{c}");
        }
        for c in [
            "23505", "40001", "42P01", "55000", "22010", "19", "2067", "5", "1",
        ] {
            assert!(!unavailable_code(c), "{c}");
        }
    }
}
