//! The queue engine: typed jobs stored in Postgres, run by apalis workers over our own
//! backend.
//!
//! - [`enqueue`] / [`enqueue_many`] insert jobs inside the caller's transaction;
//!   [`Notifier`] wakes workers after the caller commits.
//! - [`Workers`] is one process's worker runtime: a single fetcher claims batches sized
//!   to free slots (`FOR UPDATE SKIP LOCKED`) under a lease it keeps extending, apalis
//!   runs the typed handlers through tower layers, and outcomes are written back in
//!   batches. Retries, dead letters, lease sweeps and periodic jobs all live in the
//!   table, so any process can pick up where a dead one left off.
//! - [`get_job`] / [`queue_stats`] read a job (live or finished) and the queue's shape.
//!
//! The tables are in `migrations/0002_queue.sql`; [`JobStatus`] documents the states.

mod backend;
mod backoff;
mod completer;
mod dead_letter;
mod enqueue;
mod fetcher;
mod handler;
mod periodic;
mod record;
mod worker;

use serde::{Serialize, de::DeserializeOwned};

pub use enqueue::{DEFAULT_MAX_ATTEMPTS, EnqueueOptions, Notifier, enqueue, enqueue_many};
pub use handler::{JobContext, JobError};
pub use record::{AttemptError, JobRecord, JobStatus, QueueStats, get_job, queue_stats};
pub use worker::{WorkerOptions, Workers};

/// A pool over the same database whose sessions commit with `synchronous_commit = off`,
/// for the queue's own bookkeeping: claims, lease renewals, sweeps, outcome writes and
/// NOTIFYs. Losing the last few milliseconds of those in a server crash only means a
/// job runs again once its lease expires (at-least-once execution allows it) or a
/// worker waits for its next poll; it saves a WAL flush on every claim, outcome batch
/// and wake-up. Enqueues and the handlers' own writes (the caller's pool) stay fully
/// synchronous.
///
/// These sessions also run with `enable_nestloop = off`. Every bookkeeping statement
/// matches a batch of ids (an `unnest` of arrays) against `queue_jobs`, where the
/// statistics say almost nothing is `running` (rows churn far faster than ANALYZE): the
/// planner then loops over the rows found by the lease index and rescans the whole
/// array for each, which is quadratic in the batch (2,691 completions took 1.8 s in the
/// benchmark, 2.5 ms as a hash join). None of these statements wants a nested loop.
///
/// And with `plan_cache_mode = force_generic_plan`: the same few statements run on every
/// connection, and PostgreSQL otherwise plans each one afresh for its first five runs
/// per connection (and on, where a custom plan looks cheaper); that planning measured
/// 0.26 ms per claim and 0.48 ms per outcome batch on the idle path.
pub(crate) fn async_commit_pool(pool: &sqlx::PgPool, max_connections: u32) -> sqlx::PgPool {
    let opts = (*pool.connect_options()).clone().options([
        ("synchronous_commit", "off"),
        ("enable_nestloop", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(std::time::Duration::from_secs(5))
        // No ping before each checkout (a round trip on every claim, outcome batch and
        // NOTIFY): a connection that died while idle (database restart) fails its one
        // statement, is closed when released (sqlx pings on release), and every caller
        // of this pool retries after a pause.
        .test_before_acquire(false)
        .connect_lazy_with(opts)
}

/// A job's id: the `queue_jobs` row id, kept when the job moves to the archive.
pub type JobId = i64;

/// The Postgres channel workers LISTEN on for "new jobs" wake-ups.
pub const NOTIFY_CHANNEL: &str = "hookq_queue";

/// A typed job. Payloads carry ids, not data, so a retried job reads current state.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The task name stored with each job; it picks the handler, so it must stay stable
    /// across deployments while jobs of the type may still be queued.
    const NAME: &'static str;
}

/// Everything that can go wrong in the queue module.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot encode a {task} job: {source}")]
    Encode {
        task: &'static str,
        source: serde_json::Error,
    },
    #[error("unique_key applies to one job; enqueue_many cannot take it")]
    UniqueKeyInBatch,
    #[error("job with unique key {0:?} was finished while being enqueued again; retry")]
    UniqueKeyRace(String),
    #[error("invalid schedule {schedule:?} for periodic job {name}: {reason}")]
    Schedule {
        name: String,
        schedule: String,
        reason: String,
    },
    #[error("worker runtime failed: {0}")]
    Worker(String),
}
