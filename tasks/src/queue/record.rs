//! What reading the queue returns: a job's states ([`JobStatus`]), one job as stored,
//! live or archived ([`JobRecord`], for `GET /api/tasks/{id}`), and the queue's shape
//! ([`QueueStats`], for stats and dashboards). The reads themselves are `client.rs`'s
//! `get_job` and `queue_stats`, over statements in `sql.rs`.

use super::job::JobId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
