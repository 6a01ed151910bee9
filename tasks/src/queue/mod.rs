//! The queue engine: typed jobs stored in Postgres, run as the tasks of an apalis worker
//! by an engine of our own (River's shape: a client, a producer, an executor, a
//! completer and maintenance services over one driver of SQL).
//!
//! - [`enqueue`] / [`enqueue_many`] insert jobs inside the caller's transaction, and
//!   [`JobsForRows`] inside the caller's own statement; [`Notifier`] wakes workers after
//!   the caller commits.
//! - [`Workers`] is one process's worker runtime: a single producer claims batches sized
//!   to free slots (`FOR UPDATE SKIP LOCKED`) under a lease it keeps extending, the
//!   executor runs the typed handlers (apalis drives them, at the edge), and the
//!   completer writes outcomes back in batches. Retries, dead letters, lease sweeps and
//!   periodic jobs all live in the table, so any process can pick up where a dead one
//!   left off. [`Workers::run_once`] drains the ready jobs on the caller's task (tests).
//! - [`get_job`] / [`queue_stats`] read a job (live or finished) and the queue's shape.
//!
//! The tables are in `migrations/0002_queue.sql`; [`JobStatus`] documents the states.
//!
//! # Layout
//!
//! Read from the floor up; each file imports only files above it in this list.
//!
//! | file | holds |
//! |---|---|
//! | `job.rs` | the one vocabulary: [`Job`], [`JobId`], [`JobContext`], [`JobError`], the claimed job |
//! | `error.rs` | [`QueueError`] |
//! | `backoff.rs` | retry delays (exponential, capped, full jitter) |
//! | `record.rs` | what reads return: [`JobStatus`], [`JobRecord`], [`QueueStats`] |
//! | `sql.rs` | every statement on `queue_jobs`, `queue_jobs_done`, `queue_periodic` and the NOTIFY channel, and the bookkeeping pool |
//! | `runtime.rs` | the shared state of one worker run (`Runtime`: slots, leases, wake-ups, hard stop, row-write lock) and `Outcome` |
//! | `client.rs` | the only producer of job rows ([`enqueue`], [`enqueue_many`], [`JobsForRows`]), [`Notifier`], [`get_job`], [`queue_stats`] |
//! | `producer.rs` | claiming, and the LISTEN connection that wakes it |
//! | `executor.rs` | the handler table; decode, run, time out, catch panics, settle → `Outcome` |
//! | `completer.rs` | batched outcome writes, hand-back hooks |
//! | `maintenance/` | lease extension, expired-lease sweep, archive pruning; `dead_letter.rs` (the hook outbox), `periodic.rs` (cron ticks) |
//! | `apalis.rs` | the apalis edge: backend, service, worker (the only file that imports apalis or tower) |
//! | `worker.rs` | [`Workers`] and [`WorkerOptions`]: wires the rooms, `run` and `run_once` |
//!
//! # Imports
//!
//! Which file imports which (`mod.rs` only declares the files and re-exports; no file
//! imports it). The graph has no cycle: a test (`tests::imports_form_no_cycle`) reads
//! every file's `use super::…`/`crate::queue::…` lines and checks it.
//!
//! ```text
//! IMPORT_GRAPH
//! ```

mod apalis;
mod backoff;
mod client;
mod completer;
mod error;
mod executor;
mod job;
mod maintenance;
mod producer;
mod record;
mod runtime;
mod sql;
mod worker;

pub use client::{
    DEFAULT_MAX_ATTEMPTS, EnqueueOptions, JobsForRows, Notifier, enqueue, enqueue_many, get_job,
    queue_stats,
};
pub use error::QueueError;
pub use job::{Job, JobContext, JobError, JobId};
pub use record::{AttemptError, JobRecord, JobStatus, QueueStats};
pub use sql::NOTIFY_CHANNEL;
pub use worker::{RunReport, WorkerOptions, Workers};
