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
//! # Many accounts (contract section 10)
//!
//! A job may name a fair-share group and a conversation ([`JobKeys`]; hookq's pipeline
//! uses the integration and the comment thread or direct conversation). A claim
//! (`sql.rs`, `PICK` then `TAKE`):
//! - walks the groups that have pending jobs (a loose index scan of `queue_jobs_ready`,
//!   one index probe per group), and gives each a room: 0 when paused (`queue_groups`),
//!   else the batch, less what its `max_running` and rolling rate limit leave;
//! - takes up to that many of each group's ready jobs, skipping a job whose conversation
//!   has a live job at an earlier place (one probe of `queue_jobs_order` per candidate;
//!   a job's place is its id, or the place it took over: a reply's delivery and its
//!   retries take the place of the job that generated the reply);
//! - deals them out round-robin (every group's first job, then every group's second;
//!   the groups after the producer's last one first), then locks and claims the chosen
//!   ids with `FOR UPDATE SKIP LOCKED`.
//!
//! Cost per claim: the two statements, one probe per group with pending work, one per
//! candidate job, and for a group with a budget two counts (its running jobs, its runs
//! finished within the window). Measured with 20,000 pending in one group under the pool's
//! settings: 0.95 ms per 256-job claim. While any group has a budget (or a default rate
//! applies) claims serialise on an advisory lock, so budgets hold across processes and
//! hosts; a held job is simply not claimed (no attempt spent, no claim/release loop), and
//! the producer looks again when the first rate-limited group gets room back.
//!
//! When one group alone has pending work and nothing limits it (one account, or the
//! queue used without groups) there is nothing to share out: the claim is then one
//! statement (`CLAIM_ONE_GROUP`: two probes that no other group is pending, then the
//! pre-section-10 claim with the conversation check), and the fair choice is made only
//! when those probes find another group. Measured with `bench queue` on one durable
//! cluster, alternating with the queue before section 10: the two statements drained
//! 28–30k jobs/s against its 34–38k; one statement 29–35k (−9 % on four rounds each).
//!
//! A run whose group has nothing else running in the process, while other groups' runs
//! do, takes the express lane (`producer.rs` picks each job's lane as its claim
//! arrives, the claim's jobs counted together, so a quiet group's job is express also
//! when it comes first in a claim with a flood's; `executor.rs`, [`crate::batch`]): it
//! runs on the process's express thread and its group writes (the log's start and
//! finish) go in small batches on connections of their own, so a quiet account's event
//! does not queue behind a flood's 256-row statements or its hundreds of tasks. Cost:
//! one counter update per claimed job, one thread and two connections per worker
//! process.
//!
//! # Layout
//!
//! Floor first: each file imports only files of a lower level (see "Imports").
//!
//! | level | file | holds |
//! |---|---|---|
//! | 0 | `job.rs` | the one vocabulary: [`Job`], [`JobId`], [`JobContext`], [`JobError`], the claimed job |
//! | 0 | `error.rs` | [`QueueError`] |
//! | 0 | `backoff.rs` | retry delays (exponential, capped, full jitter) |
//! | 1 | `record.rs` | what reads return: [`JobStatus`], [`JobRecord`], [`QueueStats`] |
//! | 1 | `runtime.rs` | the shared state of one worker run (`Runtime`: slots, leases, wake-ups, hard stop, row-write lock, with their invariants) and `Settled` |
//! | 2 | `sql.rs` | every statement on `queue_jobs`, `queue_jobs_done`, `queue_periodic` and the NOTIFY channel, and the bookkeeping pool |
//! | 2 | `executor.rs` | the handler table; decode, run, time out, catch panics, settle → `Settled` |
//! | 3 | `client.rs` | the only producer of job rows ([`enqueue`], [`enqueue_many`], [`JobsForRows`]), [`Notifier`], [`get_job`], [`queue_stats`] |
//! | 3 | `producer.rs` | claiming, and the LISTEN connection that wakes it |
//! | 3 | `completer.rs` | batched outcome writes, hand-back hooks |
//! | 3–4 | `maintenance/` | lease extension, expired-lease sweep, archive pruning (`mod.rs`); the dead-letter hook outbox (`dead_letter.rs`); cron ticks (`periodic.rs`, which enqueues through the client) |
//! | 3 | `apalis.rs` | the apalis edge: backend, service, worker; the only file under `tasks/src` that imports apalis, apalis_core or tower |
//! | 5 | `worker.rs` | [`Workers`] and [`WorkerOptions`]: wires the rooms; `run`, and `run_once` for tests |
//!
//! # Imports
//!
//! Which file imports which. `mod.rs` only declares the files and re-exports; no file
//! imports it. `tasks/tests/queue_layout.rs` derives this graph from every `super::…` and
//! `crate::queue::…` path in the files, checks that it has no cycle (it places each file
//! above everything it imports, which a cycle makes impossible) and that it is the one
//! drawn here; it also checks that `apalis.rs` alone imports apalis or tower.
//!
//! ```text
//! 0  backoff                   imports (nothing)
//! 0  error                     imports (nothing)
//! 0  job                       imports (nothing)
//! 1  record                    imports job
//! 1  runtime                   imports job
//! 2  executor                  imports job, runtime
//! 2  sql                       imports error, job, record
//! 3  apalis                    imports error, executor, job, runtime
//! 3  client                    imports error, job, record, sql
//! 3  completer                 imports error, job, runtime, sql
//! 3  maintenance               imports runtime, sql
//! 3  maintenance::dead_letter  imports error, job, runtime, sql
//! 3  producer                  imports backoff, error, job, runtime, sql
//! 4  maintenance::periodic     imports client, error, job, runtime, sql
//! 5  worker                    imports apalis, backoff, completer, error, executor, job, maintenance, maintenance::dead_letter, maintenance::periodic, producer, runtime, sql
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
    DEFAULT_MAX_ATTEMPTS, EnqueueOptions, JobsForRows, Notifier, cancel_pending, enqueue,
    enqueue_many, enqueue_many_keyed, get_job, queue_stats,
};
pub use error::QueueError;
pub use job::{GroupRate, Job, JobContext, JobError, JobId, JobKeys, RowKeys};
pub use record::{AttemptError, JobRecord, JobStatus, QueueStats};
pub use sql::NOTIFY_CHANNEL;
pub use worker::{RunReport, WorkerOptions, Workers};
