//! `GET /api/tasks/{id}`: one job of the queue, live or archived.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Path};

use super::{AdminError, AdminResult};
use crate::{ApiTags, auth::AdminAuth, error::ApiError, state::AppState};

/// `GET /api/tasks/{id}`.
pub struct TasksApi;

/// One failed run of a job.
#[derive(Debug, Clone, Object)]
pub struct JobAttempt {
    /// The run that failed (1-based).
    pub attempt: i32,
    /// What it failed with.
    pub error: String,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
}

/// A job as the queue holds it.
#[derive(Debug, Clone, Object)]
pub struct Job {
    /// The job's id (a log's `job_id`).
    pub id: i64,
    /// The job type: `process_webhook`, `deliver_reply` or `purge_logs`.
    pub task_name: String,
    /// `pending`, `running`, `completed` or `dead`.
    pub status: String,
    /// Runs so far, the current one included.
    pub attempts: i32,
    /// Runs it gets before it is dead.
    pub max_attempts: i32,
    /// Not run before this time; for a scheduled retry, when the retry is due.
    pub run_at: DateTime<Utc>,
    /// The latest failure, if any.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Every failed run's error, oldest first.
    pub errors: Vec<JobAttempt>,
    /// What the handler returned (completed jobs).
    #[oai(nullable)]
    pub result: Option<serde_json::Value>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its latest run started.
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it became `completed` or `dead`; null while live.
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<hookq_tasks::queue::JobRecord> for Job {
    fn from(j: hookq_tasks::queue::JobRecord) -> Self {
        let status = serde_json::to_value(j.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Job {
            id: j.id,
            task_name: j.task_name,
            status,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            last_error: j.last_error,
            errors: j
                .errors
                .into_iter()
                .map(|e| JobAttempt {
                    attempt: e.attempt,
                    error: e.error,
                    at: e.at,
                })
                .collect(),
            result: j.result,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Admin")]
impl TasksApi {
    /// One job: task name, status, attempts, run at, last error, result.
    #[oai(path = "/tasks/:id", method = "get")]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        id: Path<i64>,
    ) -> AdminResult<Job> {
        let job = hookq_tasks::queue::get_job(state.reads(), id.0)
            .await?
            .ok_or_else(|| AdminError::from(ApiError::from(hookq_core::Error::NotFound)))?;
        Ok(poem_openapi::payload::Json(job.into()))
    }
}
