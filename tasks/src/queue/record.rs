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
    /// The claim that failed (1-based).
    pub attempt: i32,
    /// What the handler (or the queue: lease lost, timeout, panic) said.
    pub error: String,
    /// When the failure was recorded (database clock).
    pub at: DateTime<Utc>,
}

/// A job as `GET /api/tasks/{id}` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRecord {
    /// The job's id, kept from `queue_jobs` into the archive.
    pub id: JobId,
    /// The job type's [`Job::NAME`](super::Job::NAME), e.g. `process_webhook`.
    pub task_name: String,
    /// Where the job is now.
    pub status: JobStatus,
    /// Higher runs first among ready jobs.
    pub priority: i16,
    /// Claims so far (the running one included).
    pub attempts: i32,
    /// Claims it gets before it is dead.
    pub max_attempts: i32,
    /// Not claimed before this time; for a scheduled retry, when the retry is due.
    pub run_at: DateTime<Utc>,
    /// The key that dedupes it against other live jobs, if it was enqueued with one.
    pub unique_key: Option<String>,
    /// The latest failure, when there was one.
    pub last_error: Option<String>,
    /// Every failed attempt's error, oldest first.
    #[sqlx(json)]
    pub errors: Vec<AttemptError>,
    /// What the handler returned, once `completed` (`None` when it returned nothing).
    #[sqlx(json(nullable))]
    pub result: Option<serde_json::Value>,
    /// The worker holding it while `running` (its name and a per-run suffix).
    pub locked_by: Option<String>,
    /// While `running`: when the claim lapses unless the worker extends it.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its latest claim began.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached `completed` or `dead`; `None` while live.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The queue at a glance.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueStats {
    /// Pending jobs whose `run_at` has passed: the backlog.
    pub depth: i64,
    /// Jobs claimed by a worker right now.
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
