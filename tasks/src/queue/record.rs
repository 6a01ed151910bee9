//! Reading the queue: one job (live or archived) for `GET /api/tasks/{id}`, and the
//! queue's shape for stats and dashboards.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{JobId, QueueError};

/// Every state a job can be in. `pending` and `running` live in `queue_jobs`;
/// `completed` and `dead` in the archive `queue_jobs_done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "queue_job_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for `run_at`: never run, or a retry scheduled after a failed attempt
    /// (then `attempts > 0` and `last_error` is set). Claimable once `run_at` passes.
    Pending,
    /// Claimed by one worker, whose lease (`lease_expires_at`) it keeps extending. If
    /// the lease runs out the job goes back to `pending` (or `dead` on its last attempt).
    Running,
    /// The handler succeeded; `result` holds what it returned.
    Completed,
    /// Will not run again: permanent error, attempts exhausted, undecodable payload,
    /// panic, or lease lost on the last attempt. `last_error` says why and `errors`
    /// lists every attempt's error.
    Dead,
}

/// One failed attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: i32,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// A job as `GET /api/tasks/{id}` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub task_name: String,
    pub status: JobStatus,
    pub priority: i16,
    /// Claims so far (the running one included).
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub last_error: Option<String>,
    #[sqlx(json)]
    pub errors: Vec<AttemptError>,
    #[sqlx(json(nullable))]
    pub result: Option<serde_json::Value>,
    pub locked_by: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Finds a job wherever it is; one statement (one snapshot), so a job moving to the
/// archive meanwhile is seen exactly once.
pub async fn get_job(pool: &PgPool, id: JobId) -> Result<Option<JobRecord>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT id, task_name, status, priority, attempts, max_attempts, run_at, unique_key,
                last_error, errors, NULL::jsonb AS result, locked_by, lease_expires_at,
                created_at, started_at, NULL::timestamptz AS finished_at
         FROM queue_jobs WHERE id = $1
         UNION ALL
         SELECT id, task_name, status, priority, attempts, max_attempts, run_at, unique_key,
                last_error, errors, result, NULL, NULL, created_at, started_at, finished_at
         FROM queue_jobs_done WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The queue at a glance.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueStats {
    /// Pending jobs whose `run_at` has passed: the backlog.
    pub depth: i64,
    pub running: i64,
    /// Pending jobs waiting for a retry's `run_at`.
    pub scheduled_retries: i64,
    /// Pending jobs enqueued for a later `run_at` (never run yet).
    pub scheduled: i64,
    /// Dead jobs kept in the archive.
    pub dead: i64,
    /// Seconds the oldest ready job has been waiting past its `run_at`.
    pub oldest_pending_age_secs: Option<f64>,
}

pub async fn queue_stats(pool: &PgPool) -> Result<QueueStats, QueueError> {
    Ok(sqlx::query_as(
        "SELECT
            count(*) FILTER (WHERE status = 'pending' AND run_at <= now()) AS depth,
            count(*) FILTER (WHERE status = 'running') AS running,
            count(*) FILTER (WHERE status = 'pending' AND run_at > now() AND attempts > 0) AS scheduled_retries,
            count(*) FILTER (WHERE status = 'pending' AND run_at > now() AND attempts = 0) AS scheduled,
            (SELECT count(*) FROM queue_jobs_done WHERE status = 'dead') AS dead,
            extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending' AND run_at <= now()))::float8
                AS oldest_pending_age_secs
         FROM queue_jobs",
    )
    .fetch_one(pool)
    .await?)
}
