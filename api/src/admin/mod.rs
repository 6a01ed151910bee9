//! The admin API under `/api` (contract sections 3 and 7): webhook logs, the five
//! resources, and jobs. Every route takes [`AdminAuth`](crate::auth::AdminAuth).
//!
//! Handlers stay thin: they turn HTTP shapes into calls on `hookq_core::resources`,
//! `hookq_core::logs::reads` and the queue, and errors into statuses through
//! [`crate::error`].
//!
//! Answers have one shape: every field an answer object declares is always present, an
//! unset one as `null`, and such fields are declared `nullable` in the OpenAPI document
//! (issue 13.5: they used to be left out, which a generated client or a dashboard reading
//! `queue.oldest_pending_age_secs` of the stats could not tell from a missing feature). Requests
//! are the same way round: a
//! `PATCH` field that takes `null` to clear it is declared `nullable`.

pub mod audit;
pub mod conversations;
pub mod logs;
pub mod replays;
pub mod resources;
pub mod tasks;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hookq_tasks::queue::Notifier;
use poem_openapi::{
    ApiResponse, Object,
    payload::Json,
    types::{ParseFromJSON, ToJSON},
};
use tokio::sync::Mutex;

use crate::error::{ApiError, ErrorBody};

/// The largest page any list answers.
pub const MAX_LIMIT: u32 = 500;

/// Every list's answer (contract section 9).
#[derive(Debug, Object)]
pub struct Page<T: ParseFromJSON + ToJSON + Send + Sync> {
    /// This page's entries, newest first.
    pub items: Vec<T>,
    /// How many match, across all pages.
    pub total: i64,
    /// The page size used: the `limit` asked for (default 50), bounded to 1–500.
    pub limit: u32,
    /// Entries skipped before this page, as asked (default 0).
    pub offset: u32,
}

/// The answer to a delete.
#[derive(Debug, Clone, Object)]
pub struct Deleted {
    /// Always `true`: the row is gone (a failed delete answers an error instead).
    pub deleted: bool,
}

/// The limit and offset a list was asked for, defaulted and bounded.
pub fn paging(limit: Option<u32>, offset: Option<u32>) -> (u32, u32) {
    (limit.unwrap_or(50).clamp(1, MAX_LIMIT), offset.unwrap_or(0))
}

/// The documented error answers of admin routes. The mapping from failures to statuses
/// lives in [`crate::error`]; this only routes an [`ApiError`] to its documented variant.
#[derive(ApiResponse)]
pub enum AdminError {
    /// Malformed input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong admin token, or `HOOKQ_ADMIN_TOKEN` unset.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The read-only token asked for a change.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// A duplicate unique id, a row still referenced, or a log not in a retryable state.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// A route that takes a JSON body got none, or one without
    /// `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// An unknown reference or an invalid value.
    #[oai(status = 422)]
    UnprocessableEntity(Json<ErrorBody>),
    /// An unexpected failure.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database is unavailable: retry later.
    #[oai(status = 503)]
    ServiceUnavailable(Json<ErrorBody>),
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        let body = Json(e.body());
        match e {
            ApiError::BadBody(_)
            | ApiError::InvalidJson(_)
            | ApiError::BodyTimeout(_)
            | ApiError::TooLarge(_)
            | ApiError::TooManyEvents(_)
            | ApiError::UnknownShape(_) => AdminError::BadRequest(body),
            ApiError::Unauthorized(_) => AdminError::Unauthorized(body),
            ApiError::Forbidden(_) => AdminError::Forbidden(body),
            ApiError::NotFound => AdminError::NotFound(body),
            ApiError::Conflict(_) => AdminError::Conflict(body),
            ApiError::Invalid(_) | ApiError::UnknownReference(_) => {
                AdminError::UnprocessableEntity(body)
            }
            ApiError::Unavailable(_) | ApiError::RateLimited(_) => {
                AdminError::ServiceUnavailable(body)
            }
            ApiError::Internal(_) => AdminError::Internal(body),
        }
    }
}

impl From<hookq_core::Error> for AdminError {
    fn from(e: hookq_core::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<hookq_tasks::Error> for AdminError {
    fn from(e: hookq_tasks::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<hookq_tasks::queue::QueueError> for AdminError {
    fn from(e: hookq_tasks::queue::QueueError) -> Self {
        ApiError::from(e).into()
    }
}

/// An admin route's answer: its JSON body, or a documented error.
pub type AdminResult<T> = Result<Json<T>, AdminError>;

/// What the operator routes share beyond [`AppState`](crate::AppState): a notifier to
/// wake workers after a retry commits, and a short-lived cache of the whole-table
/// aggregates so many dashboards and scrapers cost one scan per interval.
#[derive(Clone)]
pub struct OpsState {
    /// Wakes the workers once an operator retry has committed its new jobs.
    pub notifier: Notifier,
    /// The whole-table log counts, recomputed at most every 2 s.
    pub counts: Arc<Cached<Vec<hookq_core::logs::reads::GroupCount>>>,
}

impl OpsState {
    /// A notifier on `pool` and an empty counts cache.
    pub fn new(pool: &sqlx::PgPool) -> Self {
        OpsState {
            notifier: Notifier::spawn(pool.clone()),
            counts: Arc::new(Cached::new(Duration::from_secs(2))),
        }
    }
}

/// A value recomputed at most once per `ttl`, single-flight: concurrent callers wait
/// for the one computation in progress instead of each running it.
pub struct Cached<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    /// An empty cache whose values live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The cached value while younger than `ttl`, else `compute`'s (an error is returned
    /// and nothing cached).
    pub async fn get<E, F>(&self, compute: F) -> Result<T, E>
    where
        F: AsyncFnOnce() -> Result<T, E>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, v)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = compute().await?;
        *slot = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}
