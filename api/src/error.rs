//! The one place where failures become HTTP statuses and JSON error bodies.
//!
//! [`ApiError`] is an enum of *meanings*; [`ApiError::status`] is the single match from a
//! meaning to a status, and [`ApiError::body`] the single renderer (it logs every 5xx
//! with its cause chain and never shows the client internal text). The only ways in are
//! the `From` translations below: the domain's [`hookq_core::Error`] (database failures
//! by [`hookq_core::db::classify`]), intake's [`IngestError`], the parsers'
//! [`ParseError`], and the tasks crate's errors. A route's documented answers
//! ([`WebhookError`], `AdminError`) are routed from the variant by an exhaustive match, so
//! a new meaning cannot silently leave as another status.
//!
//! Every 4xx/5xx hookq sends — its own, poem's (404, 405) and poem-openapi's (a bad
//! query parameter) — leaves as `{"error": "...", "detail": "..."}`.

use hookq_core::{
    db::{DbFailure, classify},
    intake::ParseError,
};
use hookq_tasks::{intake::IngestError, queue::QueueError};
use poem::{Response, error::ResponseError, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};

/// The JSON body of every error answer.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct ErrorBody {
    /// A short machine-readable code, e.g. `invalid_signature`.
    pub error: String,
    /// What was wrong, for a person.
    pub detail: String,
}

/// Why a request failed, as the client is told it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A missing or wrong signature or token, or the route's secret is not configured.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The handshake's mode or token is wrong, or it is not configured.
    #[error("{0}")]
    Forbidden(String),
    /// The body could not be read.
    #[error("{0}")]
    BadBody(String),
    /// The body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// The body did not arrive within `HOOKQ_BODY_READ_TIMEOUT`.
    #[error("{0}")]
    BodyTimeout(String),
    /// The body is over `HOOKQ_MAX_BODY_BYTES`.
    #[error("{0}")]
    TooLarge(String),
    /// More events in one body than intake takes.
    #[error("{0}")]
    TooManyEvents(String),
    /// JSON that is no known event shape, or has no event in it.
    #[error("{0}")]
    UnknownShape(String),
    /// A value the request carried can never be accepted (refused by a check or by the
    /// database); retrying the same request cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The request names a row that does not exist.
    #[error("{0}")]
    UnknownReference(String),
    /// No such resource.
    #[error("no such resource")]
    NotFound,
    /// A duplicate unique id, a row still referenced, a state that forbids the action.
    #[error("{0}")]
    Conflict(String),
    /// Over a per-client rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// The database cannot take the request now: retry later. What it says to the client.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A fault of ours. The cause is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What every 503 says.
pub const UNAVAILABLE: &str = "the database is unavailable; retry later";

impl ApiError {
    /// The one match from meaning to status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadBody(_) | ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) | ApiError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownShape(_) | ApiError::Invalid(_) | ApiError::UnknownReference(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body's machine-readable `error`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadBody(_) => "bad_body",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::TooManyEvents(_) => "too_many_events",
            ApiError::UnknownShape(_) => "unknown_event_shape",
            ApiError::Invalid(_) => "invalid",
            ApiError::UnknownReference(_) => "unknown_reference",
            ApiError::NotFound => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The one renderer: the body the client sees. A 5xx is logged here with its cause;
    /// an internal failure's text stays in the log.
    pub fn body(&self) -> ErrorBody {
        let detail = match self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed: internal error");
                "an unexpected error; it has been logged".to_owned()
            }
            ApiError::Unavailable(detail) => (*detail).to_owned(),
            other => other.to_string(),
        };
        ErrorBody {
            error: self.code().into(),
            detail,
        }
    }

    /// The database was unavailable: logged with its cause, answered 503.
    fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable; answering 503");
        ApiError::Unavailable(UNAVAILABLE)
    }

    /// A database failure, by [`classify`].
    fn database(e: &sqlx::Error) -> Self {
        match classify(e) {
            DbFailure::Unavailable | DbFailure::Retry => ApiError::unavailable(e),
            DbFailure::Refused(msg) => {
                ApiError::Invalid(format!("a value was refused by the database: {msg}"))
            }
            DbFailure::Constraint(msg) => ApiError::Invalid(msg),
            DbFailure::Unique(detail) => ApiError::Conflict(detail),
            DbFailure::ForeignKey(detail) => ApiError::UnknownReference(detail),
            DbFailure::Other => ApiError::Internal(format!("database: {e}")),
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }
    fn as_response(&self) -> Response {
        let body = self.body();
        json_error(self.status(), &body.error, &body.detail)
    }
}

/// A response with `status` and the JSON error body `{"error": error, "detail": detail}`.
pub fn json_error(status: StatusCode, error: &str, detail: &str) -> Response {
    let body = serde_json::json!({ "error": error, "detail": detail });
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        let detail = format!("{e}: {}", e.detail());
        match e {
            ParseError::NotJson(_) => ApiError::InvalidJson(detail),
            ParseError::UnknownShape(_) => ApiError::UnknownShape(detail),
            ParseError::TooManyEvents(_) => ApiError::TooManyEvents(detail),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Refused(detail) => ApiError::Invalid(detail),
            IngestError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "webhook not stored; answering 503");
                ApiError::Unavailable("the event could not be stored; retry later")
            }
        }
    }
}

impl From<hookq_core::Error> for ApiError {
    fn from(e: hookq_core::Error) -> Self {
        use hookq_core::Error::*;
        match e {
            NotFound => ApiError::NotFound,
            Conflict(d) => ApiError::Conflict(d),
            UnknownReference(d) | Missing(d) => ApiError::UnknownReference(d),
            Invalid(d) => ApiError::Invalid(d),
            Database(db) => ApiError::database(&db),
            // Another service (or a writer of ours) could not take the work now.
            e @ Upstream { .. } => ApiError::unavailable(&e),
        }
    }
}

impl From<hookq_tasks::Error> for ApiError {
    fn from(e: hookq_tasks::Error) -> Self {
        use hookq_tasks::Error::*;
        match e {
            Core(e) => e.into(),
            Database(db) => ApiError::database(&db),
            Queue(e) => e.into(),
            IngestStopped => ApiError::unavailable(&IngestStopped),
            Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(e) => e.into(),
                Err(shared) => ApiError::unavailable(&shared),
            },
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Db(db) => ApiError::database(&db),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Turns any error poem or poem-openapi raised into the JSON body, keeping its status.
/// An error answer a handler returned as one of its documented responses
/// ([`WebhookError`], `AdminError`) already is that body, and goes out unchanged.
pub async fn render_any(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.as_response();
    }
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNAUTHORIZED => "unauthorized",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    json_error(status, code, &err.to_string())
}

/// Documented error answers of the webhook routes (what the OpenAPI document lists).
#[derive(ApiResponse)]
pub enum WebhookError {
    /// The body is not JSON, or could not be read.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong signature, or the route's secret is not configured.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The body did not arrive within `HOOKQ_BODY_READ_TIMEOUT`.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// Over `HOOKQ_MAX_BODY_BYTES`, or more than 1,000 events in one body.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// JSON that is not a known event shape, has no event in it, or holds a value that
    /// can never be stored (an id over its length bound).
    #[oai(status = 422)]
    UnprocessableEntity(Json<ErrorBody>),
    /// An unexpected failure (logged); nothing was acknowledged, so the sender retries.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database could not take the write: retry later.
    #[oai(status = 503)]
    ServiceUnavailable(Json<ErrorBody>),
}

impl From<ApiError> for WebhookError {
    fn from(e: ApiError) -> Self {
        let body = Json(e.body());
        match e {
            ApiError::BadBody(_) | ApiError::InvalidJson(_) => WebhookError::BadRequest(body),
            ApiError::Unauthorized(_) => WebhookError::Unauthorized(body),
            ApiError::BodyTimeout(_) => WebhookError::RequestTimeout(body),
            ApiError::TooLarge(_) | ApiError::TooManyEvents(_) => {
                WebhookError::PayloadTooLarge(body)
            }
            ApiError::UnknownShape(_) | ApiError::Invalid(_) | ApiError::UnknownReference(_) => {
                WebhookError::UnprocessableEntity(body)
            }
            ApiError::Unavailable(_) => WebhookError::ServiceUnavailable(body),
            // Not answers a webhook route gives; should one arise it is a fault of ours.
            ApiError::Forbidden(_)
            | ApiError::NotFound
            | ApiError::Conflict(_)
            | ApiError::RateLimited(_)
            | ApiError::Internal(_) => WebhookError::Internal(body),
        }
    }
}
