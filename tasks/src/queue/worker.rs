//! One process's worker runtime: [`Workers`] registers typed handlers, dead-letter and
//! hand-back hooks and periodic jobs, then wires the engine's rooms together:
//! [`Workers::run`] for a long-running process, [`Workers::run_once`] to drain the
//! ready jobs on the caller's task (tests). This file holds no SQL and no state of its
//! own: it builds the [`Runtime`], starts the producer, the apalis worker (over the
//! executor), the completer and the maintenance services, and stops them in order.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::Serialize;
use sqlx::PgPool;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::batch::{ExpressThread, LaneLoad};

use super::{
    apalis,
    backoff::Backoff,
    completer::{Completer, ReleaseHook},
    error::QueueError,
    executor::{EXPRESS_RUNS, Executor, HandlerTable},
    job::{GroupRate, Job, JobContext, JobError, JobId},
    maintenance::{
        self, dead_letter,
        periodic::{self, Periodic},
    },
    producer::{self, Producer},
    runtime::{Runtime, Settled},
    sql,
};

/// How a process runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once by this process (`TASKIQ_MAX_ASYNC_TASKS`); the producer never
    /// claims more than the free slots.
    pub concurrency: usize,
    /// Attempts for jobs this runtime enqueues itself (periodic jobs); `HOOKQ_MAX_ATTEMPTS`.
    /// Other jobs carry theirs on the row.
    pub max_attempts: u32,
    /// How long a claim is valid without renewal. Renewed every third of it, so a job is
    /// re-run elsewhere this long after its worker died.
    pub lease: Duration,
    /// How long an idle producer waits before looking again without a NOTIFY: the worst
    /// case cost of a lost notification.
    pub poll_interval: Duration,
    /// Keep a LISTEN connection so a NOTIFY wakes the producer at once (`HOOKQ_WAKEUP=notify`,
    /// the default). Off (`poll`): no LISTEN and so no session state at all, for PgBouncer
    /// in transaction mode; the producer then looks every `poll_interval`.
    pub listen: bool,
    /// After shutdown is asked, how long in-flight runs get to finish before they are
    /// cancelled and handed back.
    pub shutdown_timeout: Duration,
    /// A run longer than this fails (and is retried).
    pub job_timeout: Duration,
    /// First retry ceiling; it doubles per attempt up to `backoff_cap` (full jitter).
    pub backoff_base: Duration,
    /// Ceiling of the retry delay, however many attempts came before.
    pub backoff_cap: Duration,
    /// Completed jobs older than this are deleted from the archive (dead ones are kept).
    pub archive_retention: Duration,
    /// Shown in `locked_by` (with a per-run suffix, so a restarted process with the same
    /// name never mistakes its predecessor's claims for its own).
    pub worker_name: String,
    /// The rate limit of every group whose budget names none (`HOOKQ_REPLY_RATE_LIMIT`
    /// for the pipeline); `None`: such groups are not rate limited.
    pub default_group_rate: Option<GroupRate>,
    /// Where runs of a group with nothing else running in this process go while other
    /// groups' runs do ([`crate::batch`]'s express lane); `None` runs every job on the
    /// caller's runtime.
    pub express: Option<ExpressThread>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            max_attempts: 3,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            listen: true,
            shutdown_timeout: Duration::from_secs(30),
            job_timeout: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            archive_retention: Duration::from_secs(7 * 24 * 3600),
            worker_name: "hookq-worker".to_owned(),
            default_group_rate: None,
            express: None,
        }
    }
}

impl WorkerOptions {
    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.backoff_base,
            cap: self.backoff_cap,
        }
    }

    fn max_attempts(&self) -> i32 {
        self.max_attempts.try_into().unwrap_or(i32::MAX)
    }
}

/// What one [`Workers::run_once`] did: runs by how they ended, and dead-letter hooks run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Runs whose handler succeeded (archived as completed).
    pub completed: usize,
    /// Runs that failed with attempts left (pending again, at a later `run_at`).
    pub retried: usize,
    /// Runs that ended their job (archived as dead).
    pub dead: usize,
    /// Dead-letter hooks called.
    pub dead_letter_hooks: usize,
}

/// The worker runtime of one process.
pub struct Workers {
    pool: PgPool,
    opts: WorkerOptions,
    table: HandlerTable,
    hooks: dead_letter::Hooks,
    release_hooks: HashMap<&'static str, ReleaseHook>,
    periodic: Vec<Periodic>,
}

impl Workers {
    /// `pool` must allow a few connections beyond the handlers' own needs: the LISTEN
    /// connection holds one for the whole run, and the producer, the completer and
    /// the maintenance services each use one at a time.
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
        let hook: dead_letter::Hook =
            Arc::new(move |id, payload, error| hook(id, payload, error).boxed());
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

    /// A runtime for one run of these workers over `pool`, and its outcomes' receiver.
    fn runtime(&self, pool: PgPool) -> (Arc<Runtime>, mpsc::UnboundedReceiver<Settled>) {
        let (rt, outcomes) = Runtime::new(
            pool,
            format!(
                "{}:{}",
                self.opts.worker_name,
                uuid::Uuid::new_v4().simple()
            ),
            self.table.names(),
            self.hooks.keys().map(|k| k.to_string()).collect(),
            self.opts.lease,
            self.opts.concurrency,
        );
        (Arc::new(rt), outcomes)
    }

    /// Runs until `shutdown` resolves, then stops claiming, gives in-flight runs
    /// `shutdown_timeout` to finish, hands back the rest (not counted as attempts),
    /// writes the last outcomes and returns. Database errors never end it: every part
    /// retries until the database is back.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), QueueError> {
        let (rt, outcomes) = self.runtime(sql::async_commit_pool(&self.pool, 6));
        let Workers {
            opts,
            table,
            hooks,
            release_hooks,
            periodic,
            ..
        } = self;
        if table.is_empty() {
            tracing::warn!(
                "worker runtime started with no handlers registered: it will run nothing"
            );
        }

        // Maintenance lives until the last outcome is written (leases must be renewed
        // until then).
        let background = CancellationToken::new();
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(maintenance::extend_leases(rt.clone(), background.clone())),
            tokio::spawn(maintenance::sweep_expired(rt.clone(), background.clone())),
            tokio::spawn(dead_letter::run(
                rt.clone(),
                Arc::new(hooks),
                background.clone(),
            )),
            tokio::spawn(maintenance::prune_archive(
                rt.clone(),
                opts.archive_retention,
                background.clone(),
            )),
        ];
        if opts.listen {
            tasks.push(tokio::spawn(producer::listen(
                rt.clone(),
                background.clone(),
            )));
        }
        tasks.extend(periodic.into_iter().map(|p| {
            tokio::spawn(periodic::run(
                rt.clone(),
                p,
                opts.max_attempts(),
                background.clone(),
            ))
        }));
        let completer_done = CancellationToken::new();
        let completer = tokio::spawn(
            Completer {
                rt: rt.clone(),
                release_hooks,
            }
            .run(outcomes, completer_done.clone()),
        );

        let (claimed_tx, claimed_rx) = mpsc::unbounded_channel();
        let stop_claiming = CancellationToken::new();
        let producer = tokio::spawn(
            Producer {
                rt: rt.clone(),
                backoff: opts.backoff(),
                poll_interval: opts.poll_interval,
                default_rate: opts.default_group_rate,
                fair: Default::default(),
                lanes: LaneLoad::new(EXPRESS_RUNS),
            }
            .run(claimed_tx, stop_claiming.clone()),
        );

        let executor = Arc::new(Executor {
            table,
            job_timeout: opts.job_timeout,
            express: opts.express.clone(),
        });
        let stopping = {
            let rt = rt.clone();
            let shutdown_timeout = opts.shutdown_timeout;
            async move {
                shutdown.await;
                tracing::info!("worker shutting down: no new claims, finishing in-flight jobs");
                // The producer ends between claims, so no claimed row is left unseen.
                stop_claiming.cancel();
                if let Err(e) = producer.await {
                    tracing::error!(error = %e, "producer task failed");
                }
                tokio::spawn(async move {
                    tokio::time::sleep(shutdown_timeout).await;
                    rt.hard_stop.cancel();
                });
            }
        };
        let result = apalis::run(rt.clone(), executor, claimed_rx, stopping).await;

        // Every run has ended and its outcome is queued: write them, then stop the rest.
        completer_done.cancel();
        if let Err(e) = completer.await {
            tracing::error!(error = %e, "completer task failed");
        }
        background.cancel();
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "queue maintenance task failed");
            }
        }
        result
    }

    /// Claims and runs the ready jobs on the caller's task until none is ready, writing
    /// each round's outcomes and running the dead-letter hooks of the jobs that died,
    /// then returns what it did: Arrange / enqueue / `run_once` / assert, with no
    /// background worker and no waiting. Jobs run as under [`run`](Self::run) (same
    /// claim, decode, timeout, panic catching, settling and outcome statements), up to
    /// `concurrency` at a time, on the caller's `pool` (no lease renewal: a run longer
    /// than `lease` may be swept by another worker). A retry scheduled meanwhile is
    /// ready when the database's clock passes its `run_at`; see
    /// [`run_once_at`](Self::run_once_at) to run it without waiting.
    pub async fn run_once(&self) -> Result<RunReport, QueueError> {
        self.drain(None).await
    }

    /// [`run_once`](Self::run_once) as if the time were `now` (River's injected
    /// `timeNowFunc`): jobs whose `run_at` is at or before `now` are ready. Only which
    /// jobs are due follows `now`; what the statements write (leases, retry times,
    /// timestamps) still follows the database's clock.
    pub async fn run_once_at(&self, now: DateTime<Utc>) -> Result<RunReport, QueueError> {
        self.drain(Some(now)).await
    }

    async fn drain(&self, due_by: Option<DateTime<Utc>>) -> Result<RunReport, QueueError> {
        let (rt, mut outcomes) = self.runtime(self.pool.clone());
        let producer = Producer {
            rt: rt.clone(),
            backoff: self.opts.backoff(),
            // Unused: nothing waits here.
            poll_interval: self.opts.poll_interval,
            default_rate: self.opts.default_group_rate,
            fair: Default::default(),
            lanes: LaneLoad::new(EXPRESS_RUNS),
        };
        let executor = Arc::new(Executor {
            table: self.table.clone(),
            job_timeout: self.opts.job_timeout,
            express: None,
        });
        let completer = Completer {
            rt: rt.clone(),
            release_hooks: self.release_hooks.clone(),
        };
        let mut report = RunReport::default();
        loop {
            let jobs = producer.claim(rt.concurrency(), due_by).await?;
            if jobs.is_empty() {
                return Ok(report);
            }
            futures::future::join_all(jobs.into_iter().map(|job| executor.run(&rt, job))).await;
            let mut batch = Vec::new();
            while let Ok(outcome) = outcomes.try_recv() {
                match outcome {
                    Settled::Completed { .. } => report.completed += 1,
                    Settled::Retry { .. } => report.retried += 1,
                    Settled::Dead { .. } => report.dead += 1,
                    Settled::Released { .. } => {}
                }
                batch.push(outcome);
            }
            let written = completer.write(&batch).await;
            rt.release_leases(batch.iter().map(Settled::key));
            if written?.dead && !self.hooks.is_empty() {
                report.dead_letter_hooks += dead_letter::dispatch(&rt, &self.hooks).await?;
            }
        }
    }
}
