//! One process's worker runtime: [`Workers`] registers typed handlers, dead-letter
//! hooks and periodic jobs, then [`Workers::run`] starts the fetcher, the apalis worker
//! (over [`PgBackend`] with catch-panic, timeout, tracing and concurrency layers), the
//! outcome writer and the housekeeping tasks, and shuts them down in order.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use apalis::layers::{WorkerBuilderExt, catch_panic::CatchPanicLayer, tracing::DefaultOnFailure};
use apalis_core::{task::Task, worker::builder::WorkerBuilder};
use futures::FutureExt;
use serde::Serialize;
use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Level;

use super::{
    Job, JobContext, JobError, JobId, QueueError,
    backend::{PgBackend, panicked},
    backoff::Backoff,
    completer::{self, Outcome},
    dead_letter::{self, Hook},
    fetcher,
    handler::{ClaimedJob, HandlerTable, Router},
    periodic::{self, Periodic},
};

/// How a process runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once by this process (`TASKIQ_MAX_ASYNC_TASKS`); the fetcher never
    /// claims more than the free slots.
    pub concurrency: usize,
    /// Attempts for jobs this runtime enqueues itself (periodic jobs); `HOOKQ_MAX_ATTEMPTS`.
    /// Other jobs carry theirs on the row.
    pub max_attempts: u32,
    /// How long a claim is valid without renewal. Renewed every third of it, so a job is
    /// re-run elsewhere this long after its worker died.
    pub lease: Duration,
    /// How long an idle fetcher waits before looking again without a NOTIFY: the worst
    /// case cost of a lost notification.
    pub poll_interval: Duration,
    /// After shutdown is asked, how long in-flight runs get to finish before they are
    /// cancelled and handed back.
    pub shutdown_timeout: Duration,
    /// A run longer than this fails (and is retried).
    pub job_timeout: Duration,
    /// First retry ceiling; it doubles per attempt up to `backoff_cap` (full jitter).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Completed jobs older than this are deleted from the archive (dead ones are kept).
    pub archive_retention: Duration,
    /// Shown in `locked_by` (with a per-run suffix, so a restarted process with the same
    /// name never mistakes its predecessor's claims for its own).
    pub worker_name: String,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            max_attempts: 3,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            job_timeout: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            archive_retention: Duration::from_secs(7 * 24 * 3600),
            worker_name: "hookq-worker".to_owned(),
        }
    }
}

/// State shared by the fetcher, the backend, the ack middleware and the writer.
pub(crate) struct Runtime {
    pub(crate) pool: PgPool,
    pub(crate) opts: WorkerOptions,
    /// `locked_by` of this run's claims.
    pub(crate) worker_id: String,
    pub(crate) table: Arc<HandlerTable>,
    /// Task names with a dead-letter hook (their dead jobs enter the hook outbox).
    pub(crate) hooked: Vec<String>,
    /// Hooks called once a stopping worker has handed a run of their task back.
    pub(crate) release_hooks: HashMap<&'static str, ReleaseHook>,
    pub(crate) backoff: Backoff,
    /// Jobs leased by this process (claimed, running, or outcome not yet written):
    /// id → attempt. The lease extender renews exactly these.
    held: Mutex<HashMap<JobId, i32>>,
    /// Claimed jobs whose run has not ended: the slots in use.
    busy: AtomicUsize,
    /// A slot or a lease was freed: the fetcher may claim again.
    pub(crate) slot_freed: Notify,
    /// Jobs may be ready (NOTIFY, reconnect, a sweep, a periodic tick).
    pub(crate) wake: Notify,
    /// Jobs went dead: their hooks may have work.
    pub(crate) dead_letters: Notify,
    /// Fires `shutdown_timeout` after shutdown began: in-flight runs are cut off.
    pub(crate) hard_stop: CancellationToken,
    /// Held while renewing leases or writing outcomes: both update the same held rows,
    /// and two statements locking them in different (hash-join) orders deadlock, which
    /// costs a second of `deadlock_timeout` and a retry.
    pub(crate) row_writes: tokio::sync::Mutex<()>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
}

impl Runtime {
    pub(crate) fn lease_ms(&self) -> i64 {
        i64::try_from(self.opts.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Slots the fetcher may claim for. Also bounded by outcomes not yet written, so a
    /// slow database slows claiming instead of piling up unacknowledged runs.
    pub(crate) fn free_slots(&self) -> usize {
        let concurrency = self.opts.concurrency;
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let backlog_room = (concurrency * 8).saturating_sub(held);
        concurrency
            .saturating_sub(self.busy.load(Ordering::Acquire))
            .min(backlog_room)
    }

    pub(crate) fn hold(&self, claims: impl Iterator<Item = (JobId, i32)>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, attempt) in claims {
            held.insert(id, attempt);
            self.busy.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn held(&self) -> (Vec<JobId>, Vec<i32>) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, attempt)| (*id, *attempt))
            .unzip()
    }

    /// A run ended (or was never started): queue its outcome and free its slot.
    pub(crate) fn finish(&self, outcome: Outcome) {
        // The writer outlives every run; if it is gone the process is exiting and
        // the lease sweep will recover the job.
        let _ = self.outcomes.send(outcome);
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.slot_freed.notify_one();
    }

    /// Outcomes written: stop renewing those leases.
    pub(crate) fn release_leases(&self, settled: impl Iterator<Item = (JobId, i32)>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, attempt) in settled {
            if held.get(&id) == Some(&attempt) {
                held.remove(&id);
            }
        }
        drop(held);
        self.slot_freed.notify_one();
    }
}

/// The worker runtime of one process.
pub struct Workers {
    pool: PgPool,
    opts: WorkerOptions,
    table: HandlerTable,
    hooks: HashMap<&'static str, Hook>,
    release_hooks: HashMap<&'static str, ReleaseHook>,
    periodic: Vec<Periodic>,
}

/// A type-erased hand-back hook: `(job id, payload as stored)`.
pub(crate) type ReleaseHook =
    Arc<dyn Fn(JobId, serde_json::Value) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

impl Workers {
    /// `pool` must allow a few connections beyond the handlers' own needs: the LISTEN
    /// connection holds one for the whole run, and the fetcher, the outcome writer and
    /// the housekeeping tasks each use one at a time.
    pub fn new(pool: PgPool, opts: WorkerOptions) -> Self {
        Self {
            pool,
            opts,
            table: HandlerTable::default(),
            hooks: HashMap::new(),
            release_hooks: HashMap::new(),
            periodic: Vec::new(),
        }
    }

    /// Runs jobs of type `J` with `handler`. Its `Ok` value is stored as the job's result;
    /// `JobError` decides between retry and dead; a panic is a permanent failure.
    pub fn register<J, F, Fut, R>(&mut self, handler: F)
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
        R: Serialize + Send,
    {
        self.table.insert::<J, F, Fut, R>(handler);
    }

    /// Called (at least once, so make it idempotent) after any job of type `J` goes dead:
    /// permanent error, attempts exhausted, undecodable payload, panic, or lease expired
    /// on the last attempt. Gets the job id, the payload as stored (it may not decode)
    /// and the last error. Runs from an outbox, so a crash between the job's death and
    /// the hook only delays the hook.
    pub fn on_dead_letter<J, F, Fut>(&mut self, hook: F)
    where
        J: Job,
        F: Fn(JobId, serde_json::Value, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: Hook = Arc::new(move |id, payload, error| hook(id, payload, error).boxed());
        self.hooks.insert(J::NAME, hook);
    }

    /// Called after a stopping worker handed a run of a `J` job back unfinished (its
    /// claim undone: the job is `pending` again and the run is not counted), so the
    /// handler's own rows can say the same: whatever the run had marked as held by a
    /// worker is no longer held. Best effort, once, in the stopping process: should it
    /// die first, the job still runs again and its handler must cope, as after a crash.
    /// Gets the job id and the payload as stored.
    pub fn on_release<J, F, Fut>(&mut self, hook: F)
    where
        J: Job,
        F: Fn(JobId, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: ReleaseHook = Arc::new(move |id, payload| hook(id, payload).boxed());
        self.release_hooks.insert(J::NAME, hook);
    }

    /// Enqueues `make()` on every tick of the cron `schedule` (five fields, or six with
    /// seconds first), exactly once per tick across all processes. `name` identifies
    /// the schedule in `queue_periodic`. `J` must also be registered to run.
    pub fn periodic<J: Job>(
        &mut self,
        name: &str,
        schedule: &str,
        make: impl Fn() -> J + Send + Sync + 'static,
    ) -> Result<(), QueueError> {
        self.periodic.push(Periodic::new(name, schedule, make)?);
        Ok(())
    }

    /// Runs until `shutdown` resolves, then stops claiming, gives in-flight runs
    /// `shutdown_timeout` to finish, hands back the rest (not counted as attempts),
    /// writes the last outcomes and returns. Database errors never end it: every part
    /// retries until the database is back.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), QueueError> {
        let Workers {
            pool,
            opts,
            table,
            hooks,
            release_hooks,
            periodic,
        } = self;
        let concurrency = opts.concurrency.max(1);
        let (outcomes, outcome_rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = Arc::new(Runtime {
            pool: super::async_commit_pool(&pool, 6),
            worker_id: format!("{}:{}", opts.worker_name, uuid::Uuid::new_v4().simple()),
            table: Arc::new(table),
            hooked: hooks.keys().map(|k| k.to_string()).collect(),
            release_hooks,
            backoff: Backoff {
                base: opts.backoff_base,
                cap: opts.backoff_cap,
            },
            opts: WorkerOptions {
                concurrency,
                ..opts
            },
            held: Mutex::default(),
            busy: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            wake: Notify::new(),
            dead_letters: Notify::new(),
            hard_stop: CancellationToken::new(),
            row_writes: tokio::sync::Mutex::new(()),
            outcomes,
        });
        if rt.table.is_empty() {
            tracing::warn!(
                "worker runtime started with no handlers registered: it will run nothing"
            );
        }

        // Housekeeping lives until the last outcome is written (leases must be renewed
        // until then).
        let background = CancellationToken::new();
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(fetcher::listen(rt.clone(), background.clone())),
            tokio::spawn(fetcher::extend_leases(rt.clone(), background.clone())),
            tokio::spawn(fetcher::sweep_expired(rt.clone(), background.clone())),
            tokio::spawn(dead_letter::run(
                rt.clone(),
                Arc::new(hooks),
                background.clone(),
            )),
            tokio::spawn(prune_archive(rt.clone(), background.clone())),
        ];
        tasks.extend(
            periodic
                .into_iter()
                .map(|p| tokio::spawn(periodic::run(rt.clone(), p, background.clone()))),
        );
        let writer_done = CancellationToken::new();
        let writer = tokio::spawn(completer::run(rt.clone(), outcome_rx, writer_done.clone()));

        let (claimed_tx, claimed_rx) = tokio::sync::mpsc::unbounded_channel();
        let stop_fetching = CancellationToken::new();
        let fetcher = tokio::spawn(fetcher::run(rt.clone(), claimed_tx, stop_fetching.clone()));

        let backend = PgBackend {
            claimed: claimed_rx,
            rt: rt.clone(),
        };
        let tracing_layer = apalis::layers::tracing::TraceLayer::new()
            .make_span_with(|task: &Task<ClaimedJob>| {
                let ctx = task.args.ctx;
                tracing::debug_span!(
                    "job",
                    id = ctx.job_id,
                    task = ctx.task_name,
                    attempt = ctx.attempt
                )
            })
            .on_failure(DefaultOnFailure::new().level(Level::WARN));
        let worker = WorkerBuilder::new(rt.worker_id.as_str())
            .backend(backend)
            .concurrency(concurrency)
            .layer(CatchPanicLayer::with_panic_handler(panicked))
            .timeout(rt.opts.job_timeout)
            .layer(tracing_layer)
            .build(Router {
                table: rt.table.clone(),
            });

        let stopping = {
            let rt = rt.clone();
            async move {
                shutdown.await;
                tracing::info!("worker shutting down: no new claims, finishing in-flight jobs");
                // The fetcher ends between claims, so no claimed row is left unseen.
                stop_fetching.cancel();
                if let Err(e) = fetcher.await {
                    tracing::error!(error = %e, "fetcher task failed");
                }
                let rt = rt.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(rt.opts.shutdown_timeout).await;
                    rt.hard_stop.cancel();
                });
                Ok::<(), apalis_core::error::WorkerError>(())
            }
        };
        let result = worker
            .run_until(stopping)
            .await
            .map_err(|e| QueueError::Worker(e.to_string()));

        // Every run has ended and its outcome is queued: write them, then stop the rest.
        writer_done.cancel();
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "outcome writer task failed");
        }
        background.cancel();
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "queue housekeeping task failed");
            }
        }
        result
    }
}

/// Deletes completed jobs past the retention period, a bounded batch at a time, hourly.
async fn prune_archive(rt: Arc<Runtime>, stop: CancellationToken) {
    let retention_ms = i64::try_from(rt.opts.archive_retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let pruned = sqlx::query(
            "DELETE FROM queue_jobs_done WHERE id IN (
                SELECT id FROM queue_jobs_done
                WHERE status = 'completed' AND finished_at < now() - $1 * interval '1 millisecond'
                LIMIT 10000)",
        )
        .bind(retention_ms)
        .execute(&rt.pool)
        .await;
        let pause = match pruned {
            Ok(done) if done.rows_affected() == 10000 => Duration::from_secs(1),
            Ok(_) => Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "pruning the job archive failed");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
    }
}
