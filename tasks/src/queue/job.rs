//! The engine's one vocabulary for a job, used by every room of the queue: the [`Job`]
//! trait a payload type implements, its [`JobId`], the [`JobContext`] a handler runs
//! under, the [`JobError`] it fails with, and [`ClaimedJob`], a claimed row on its way
//! from the producer to the executor. Nothing here knows of apalis; its `Task` wraps a
//! [`ClaimedJob`] in `apalis.rs` only.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

/// A job's id: the `queue_jobs` row id, kept when the job moves to the archive.
pub type JobId = i64;

/// Where a job stands among others (contract section 10): its fair-share group and its
/// conversation. Both optional; the defaults (`""`, `None`) put a job in no group and no
/// conversation, as every job was before groups existed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobKeys {
    /// The fair-share group (for hookq's pipeline: the integration's `platform:account`).
    /// Claims take ready work round-robin across groups, and the group's budget
    /// (`queue_groups`: paused, `max_running`, rate limit) holds its jobs back.
    pub group: String,
    /// The conversation: a job runs only when no live job of the same key is left
    /// (pending, running or waiting to retry) at an earlier place.
    pub order: Option<String>,
    /// Its place in the conversation, when not its own id (the order it was enqueued
    /// in): a job carrying on another's work (a reply's delivery and its retries) takes
    /// that job's place, so nothing enqueued after that job overtakes it. Jobs at the
    /// same place do not wait for each other.
    pub position: Option<JobId>,
}

/// A group's rolling rate limit: at most `limit` runs finished in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRate {
    /// Runs per window, at least 1.
    pub limit: u32,
    /// The window's length.
    pub window: Duration,
}

/// SQL expressions over a row that give its job's group and order keys (see
/// [`JobKeys`]); `''` and `NULL` for none.
#[derive(Debug, Clone, Copy)]
pub struct RowKeys<'a> {
    /// The fair-share group.
    pub group: &'a str,
    /// The conversation.
    pub order: &'a str,
}

impl Default for RowKeys<'_> {
    fn default() -> Self {
        Self {
            group: "''",
            order: "NULL",
        }
    }
}

/// A typed job. Payloads carry ids, not data, so a retried job reads current state.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The task name stored with each job; it picks the handler, so it must stay stable
    /// across deployments while jobs of the type may still be queued.
    const NAME: &'static str;
}

/// A handler's failure. Whether to retry is decided by the variant, never by parsing
/// the message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Transient: run again after `after`, or after the queue's backoff
    /// ([`JobContext::planned_retry_delay`]) when `None`; dead once attempts run out.
    #[error("{error}")]
    Retry {
        /// The failure, as the job's `last_error` and in its `errors`.
        error: String,
        /// The delay the handler asks for; `None` uses the queue's backoff.
        after: Option<Duration>,
    },
    /// Will never succeed: the job goes straight to dead.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A transient error retried on the queue's backoff schedule.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Self::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    /// A failure that no retry can mend: the job goes dead at once.
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        Self::Permanent(error.to_string())
    }
}

/// The claim a handler runs under.
///
/// `attempt` is the engine's attempt counter, the one source of truth: the row's
/// `attempts` column, counted up by the claim statement itself (River's
/// `JobGetAvailable`), so it already includes the run it describes.
#[derive(Debug, Clone, Copy)]
pub struct JobContext {
    pub(crate) job_id: JobId,
    pub(crate) task_name: &'static str,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) planned_retry_delay: Option<Duration>,
}

impl JobContext {
    /// The job's id (its `queue_jobs` row).
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The job type's [`Job::NAME`].
    pub fn task_name(&self) -> &'static str {
        self.task_name
    }

    /// 1-based: the number of times this job has been claimed, this run included.
    pub fn attempt(&self) -> u32 {
        self.attempt.unsigned_abs()
    }

    /// Runs the job gets in all before it is dead (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unsigned_abs()
    }

    /// True when a failure of this run makes the job dead instead of retrying it.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The delay the queue will wait before the next attempt if this one fails with
    /// `JobError::Retry { after: None }` (drawn once per claim, so a handler can record
    /// the real `next_retry_at` on its own rows); `None` on the last attempt.
    pub fn planned_retry_delay(&self) -> Option<Duration> {
        self.planned_retry_delay
    }
}

/// A claimed job on its way from the producer to the executor: the claim and the
/// payload as stored (decoded only by the handler table, so an undecodable payload fails
/// its own run and nothing else).
#[derive(Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) ctx: JobContext,
    pub(crate) payload: Box<RawValue>,
    /// The run's lane, keyed by the job's fair-share group and chosen when its claim
    /// arrived ([`crate::batch::LaneLoad`]); held until the run ends (or the job goes
    /// back unrun).
    pub(crate) ticket: crate::batch::LaneTicket,
}

/// A handler's successful output, serialised for the archive's `result` column (`None`
/// for JSON null, so unit handlers store nothing).
pub(crate) type JobOutput = Option<String>;
