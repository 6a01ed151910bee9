//! The one place where failures become HTTP statuses and JSON error bodies.
//!
//! Every 4xx/5xx hookq sends — its own, poem's (404, 405) and poem-openapi's (a bad
//! query parameter) — leaves as `{"error": "...", "detail": "..."}`.

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

#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.error.into(),
            detail: self.detail.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn as_response(&self) -> Response {
        json_error(self.status, self.error, &self.detail)
    }
}

pub fn json_error(status: StatusCode, error: &str, detail: &str) -> Response {
    let body = serde_json::json!({ "error": error, "detail": detail });
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

impl From<hookq_core::events::ParseError> for ApiError {
    fn from(e: hookq_core::events::ParseError) -> Self {
        use hookq_core::events::ParseError::*;
        let (status, code) = match &e {
            NotJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            UnknownShape(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_shape"),
            TooManyEvents(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
        };
        ApiError::new(status, code, format!("{e}: {}", e.detail()))
    }
}

impl From<hookq_tasks::Error> for ApiError {
    fn from(e: hookq_tasks::Error) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable; answering 503");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored; retry later",
            )
        } else {
            tracing::error!(error = %e, "unexpected failure");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

impl From<hookq_core::Error> for ApiError {
    fn from(e: hookq_core::Error) -> Self {
        use hookq_core::Error::*;
        match e {
            NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource"),
            Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            UnknownReference(d) | Missing(d) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_reference", d)
            }
            Invalid(d) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", d),
            Database(db) if is_data_exception(&db) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!(
                    "a value was refused by the database: {}",
                    db.as_database_error()
                        .map_or_else(String::new, |d| d.message().to_owned())
                ),
            ),
            e @ (Database(_) | Upstream { .. }) => hookq_tasks::Error::Core(e).into(),
        }
    }
}

/// SQLSTATE class 22, "data exception": the database refused a value the request carried
/// (a NUL character in a string, a number out of range). Retrying cannot help, so the
/// admin routes answer 422, not 503.
fn is_data_exception(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code.starts_with("22"))
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
    /// The body is not JSON.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong signature, or the route's secret is not configured.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Over `HOOKQ_MAX_BODY_BYTES`, or more than 1,000 events in one body.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// JSON that is not a known event shape, or has no event in it.
    #[oai(status = 422)]
    UnprocessableEntity(Json<ErrorBody>),
    /// The database could not take the write: retry later.
    #[oai(status = 503)]
    ServiceUnavailable(Json<ErrorBody>),
}

impl From<ApiError> for WebhookError {
    fn from(e: ApiError) -> Self {
        let body = Json(e.body());
        match e.status.as_u16() {
            400 => WebhookError::BadRequest(body),
            401 => WebhookError::Unauthorized(body),
            413 => WebhookError::PayloadTooLarge(body),
            422 => WebhookError::UnprocessableEntity(body),
            _ => WebhookError::ServiceUnavailable(body),
        }
    }
}
