//! The queue's guarantees against a real Postgres, one in-process worker runtime (or
//! two) per test: enqueue semantics, completion, scheduling, retries, dead letters,
//! poison isolation, leases between live workers, periodic ticks, wake-ups and
//! graceful shutdown.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use hookq_tasks::queue::{
    self, EnqueueOptions, Job, JobContext, JobError, JobId, JobStatus, Notifier, RunReport,
    WorkerOptions, Workers,
};
use hookq_testkit::{fresh_db, wait_for};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::{sync::oneshot, task::JoinHandle};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo {
    n: u32,
}
impl Job for Echo {
    const NAME: &'static str = "test.echo";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    /// Fails this many times (transiently) before succeeding.
    failures: u32,
    /// Asks for this retry delay, in ms, instead of the queue's backoff.
    after_ms: Option<u64>,
    permanent: bool,
    panic: bool,
}
impl Job for Flaky {
    const NAME: &'static str = "test.flaky";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    millis: u64,
}
impl Job for Slow {
    const NAME: &'static str = "test.slow";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick;
impl Job for Tick {
    const NAME: &'static str = "test.tick";
}

fn fast_opts() -> WorkerOptions {
    WorkerOptions {
        concurrency: 4,
        lease: Duration::from_secs(3),
        poll_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        worker_name: "test".into(),
        ..WorkerOptions::default()
    }
}

/// A running worker runtime and the means to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), queue::QueueError>>,
}

impl Running {
    fn start(workers: Workers) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(workers.run(async move {
            let _ = stopped.await;
        }));
        Self { stop, handle }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("worker shut down in time")
            .expect("worker task")
            .expect("worker run");
    }
}

/// Every run a handler saw: job id → attempts seen.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<JobId, Vec<JobContext>>>>);

impl Runs {
    fn record(&self, ctx: JobContext) {
        self.0
            .lock()
            .unwrap()
            .entry(ctx.job_id())
            .or_default()
            .push(ctx);
    }
    fn of(&self, id: JobId) -> Vec<JobContext> {
        self.0.lock().unwrap().get(&id).cloned().unwrap_or_default()
    }
}

/// Dead-letter hook calls: (job id, payload, error).
#[derive(Clone, Default)]
struct Dead(Arc<Mutex<Vec<(JobId, serde_json::Value, String)>>>);

fn workers_with_handlers(pool: &PgPool, opts: WorkerOptions, runs: &Runs, dead: &Dead) -> Workers {
    let mut workers = Workers::new(pool.clone(), opts);
    let r = runs.clone();
    workers.register(move |job: Echo, ctx: JobContext| {
        let r = r.clone();
        async move {
            r.record(ctx);
            Ok(job.n * 2)
        }
    });
    let r = runs.clone();
    workers.register(move |job: Flaky, ctx: JobContext| {
        let r = r.clone();
        async move {
            r.record(ctx);
            if job.panic {
                panic!("boom");
            }
            if job.permanent {
                return Err(JobError::Permanent("never works".into()));
            }
            if ctx.attempt() <= job.failures {
                return Err(JobError::Retry {
                    error: format!("fail #{}", ctx.attempt()),
                    after: job.after_ms.map(Duration::from_millis),
                });
            }
            Ok(())
        }
    });
    let r = runs.clone();
    workers.register(move |job: Slow, ctx: JobContext| {
        let r = r.clone();
        async move {
            r.record(ctx);
            tokio::time::sleep(Duration::from_millis(job.millis)).await;
            Ok(())
        }
    });
    for name in [Flaky::NAME, Echo::NAME] {
        let d = dead.clone();
        let hook = move |id, payload, error| {
            let d = d.clone();
            async move { d.0.lock().unwrap().push((id, payload, error)) }
        };
        if name == Flaky::NAME {
            workers.on_dead_letter::<Flaky, _, _>(hook);
        } else {
            workers.on_dead_letter::<Echo, _, _>(hook);
        }
    }
    workers
}

async fn enqueue_one<J: Job>(pool: &PgPool, job: &J, opts: &EnqueueOptions) -> JobId {
    let mut tx = pool.begin().await.unwrap();
    let id = queue::enqueue(&mut tx, job, opts).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn wait_status(pool: &PgPool, id: JobId, status: JobStatus, secs: u64) -> queue::JobRecord {
    wait_for(secs, &format!("job {id} to be {status:?}"), || async {
        queue::get_job(pool, id)
            .await
            .unwrap()
            .filter(|j| j.status == status)
    })
    .await
}

#[tokio::test]
async fn enqueue_joins_the_callers_transaction() {
    let db = fresh_db().await;
    // Rolled back: no job.
    let mut tx = db.pool.begin().await.unwrap();
    let id = queue::enqueue(&mut tx, &Echo { n: 1 }, &EnqueueOptions::default())
        .await
        .unwrap();
    let many = queue::enqueue_many(
        &mut tx,
        &[Echo { n: 2 }, Echo { n: 3 }],
        &EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert!(queue::get_job(&db.pool, id).await.unwrap().is_none());
    for id in many {
        assert!(queue::get_job(&db.pool, id).await.unwrap().is_none());
    }
    // Committed: the jobs, with ids in input order and the default max attempts.
    let mut tx = db.pool.begin().await.unwrap();
    let jobs: Vec<Echo> = (0..500).map(|n| Echo { n }).collect();
    let ids = queue::enqueue_many(&mut tx, &jobs, &EnqueueOptions::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 500);
    let payloads: Vec<(JobId, i64)> = sqlx::query_as(
        "SELECT id, (payload->>'n')::bigint FROM queue_jobs WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (i, (id, n)) in payloads.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(*n, i as i64, "ids come back in input order");
    }
    let record = queue::get_job(&db.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Pending);
    assert_eq!(record.max_attempts, queue::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(record.task_name, Echo::NAME);
    // unique_key dedupes against the live job.
    let opts = EnqueueOptions {
        unique_key: Some("k1".into()),
        ..Default::default()
    };
    let a = enqueue_one(&db.pool, &Echo { n: 9 }, &opts).await;
    let b = enqueue_one(&db.pool, &Echo { n: 10 }, &opts).await;
    assert_eq!(a, b);
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(matches!(
        queue::enqueue_many(&mut conn, &[Echo { n: 1 }], &opts).await,
        Err(queue::QueueError::UniqueKeyInBatch)
    ));
}

#[tokio::test]
async fn jobs_complete_leave_the_hot_table_and_keep_their_result() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let mut tx = db.pool.begin().await.unwrap();
    let jobs: Vec<Echo> = (0..200).map(|n| Echo { n }).collect();
    let ids = queue::enqueue_many(&mut tx, &jobs, &EnqueueOptions::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let running = Running::start(workers_with_handlers(&db.pool, fast_opts(), &runs, &dead));
    wait_for(20, "all jobs done", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let job = queue::get_job(&db.pool, ids[7]).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(serde_json::json!(14)));
    assert_eq!(job.attempts, 1);
    assert!(job.finished_at.is_some());
    for id in &ids {
        assert_eq!(runs.of(*id).len(), 1, "job {id} ran exactly once");
    }
    let stats = queue::queue_stats(&db.pool).await.unwrap();
    assert_eq!((stats.depth, stats.running, stats.dead), (0, 0, 0));
    running.shutdown().await;
}

#[tokio::test]
async fn run_at_and_priority_order_the_work() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let later = enqueue_one(
        &db.pool,
        &Echo { n: 1 },
        &EnqueueOptions {
            run_at: Some(Utc::now() + chrono::Duration::milliseconds(1500)),
            ..Default::default()
        },
    )
    .await;
    let low = enqueue_one(&db.pool, &Echo { n: 2 }, &EnqueueOptions::default()).await;
    let high = enqueue_one(
        &db.pool,
        &Echo { n: 3 },
        &EnqueueOptions {
            priority: 10,
            ..Default::default()
        },
    )
    .await;
    let stats = queue::queue_stats(&db.pool).await.unwrap();
    assert_eq!((stats.depth, stats.scheduled), (2, 1));
    let opts = WorkerOptions {
        concurrency: 1,
        ..fast_opts()
    };
    let started = Instant::now();
    let running = Running::start(workers_with_handlers(&db.pool, opts, &runs, &dead));
    let low_done = wait_status(&db.pool, low, JobStatus::Completed, 10).await;
    let high_done = wait_status(&db.pool, high, JobStatus::Completed, 10).await;
    assert!(
        high_done.started_at < low_done.started_at,
        "higher priority ran first"
    );
    assert_eq!(
        queue::get_job(&db.pool, later)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Pending
    );
    let later_done = wait_status(&db.pool, later, JobStatus::Completed, 10).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "run_at was honoured"
    );
    assert!(later_done.started_at.unwrap() >= later_done.run_at);
    running.shutdown().await;
}

#[tokio::test]
async fn transient_failures_retry_with_backoff_then_dead_letter_with_every_error() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let three = EnqueueOptions {
        max_attempts: Some(3),
        ..Default::default()
    };
    let flaky = |failures, after_ms| Flaky {
        failures,
        after_ms,
        permanent: false,
        panic: false,
    };
    let recovers = enqueue_one(&db.pool, &flaky(2, None), &three).await;
    let exhausted = enqueue_one(&db.pool, &flaky(10, None), &three).await;
    let waits = enqueue_one(&db.pool, &flaky(1, Some(800)), &three).await;
    let running = Running::start(workers_with_handlers(&db.pool, fast_opts(), &runs, &dead));

    let ok = wait_status(&db.pool, recovers, JobStatus::Completed, 10).await;
    assert_eq!(ok.attempts, 3);
    assert_eq!(ok.errors.len(), 2);

    let gone = wait_status(&db.pool, exhausted, JobStatus::Dead, 10).await;
    assert_eq!(gone.attempts, 3);
    assert_eq!(gone.last_error.as_deref(), Some("fail #3"));
    let errors: Vec<_> = gone
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(errors, vec![(1, "fail #1"), (2, "fail #2"), (3, "fail #3")]);
    // The handler was told the delay it would get, and None on its last attempt.
    let seen = runs.of(exhausted);
    assert_eq!(seen.len(), 3);
    for ctx in &seen[..2] {
        let planned = ctx.planned_retry_delay().expect("a retry is planned");
        assert!(planned <= Duration::from_millis(100), "capped: {planned:?}");
    }
    assert!(seen[2].planned_retry_delay().is_none());
    assert!(seen[2].is_last_attempt());

    // Retry { after } is honoured: the retry ran no sooner than asked.
    let waited = wait_status(&db.pool, waits, JobStatus::Completed, 10).await;
    let failed_at = waited.errors[0].at;
    let retried_at = waited.started_at.unwrap();
    assert!(
        retried_at - failed_at >= chrono::Duration::milliseconds(790),
        "{failed_at} → {retried_at}"
    );

    let calls = wait_for(10, "dead-letter hook", || async {
        let calls = dead.0.lock().unwrap().clone();
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, exhausted);
    assert_eq!(calls[0].2, "fail #3");
    assert_eq!(calls[0].1["failures"], 10);
    let stats = queue::queue_stats(&db.pool).await.unwrap();
    assert_eq!(stats.dead, 1);
    running.shutdown().await;
}

#[tokio::test]
async fn permanent_errors_skip_retries() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let job = Flaky {
        failures: 0,
        after_ms: None,
        permanent: true,
        panic: false,
    };
    let id = enqueue_one(
        &db.pool,
        &job,
        &EnqueueOptions {
            max_attempts: Some(5),
            ..Default::default()
        },
    )
    .await;
    let running = Running::start(workers_with_handlers(&db.pool, fast_opts(), &runs, &dead));
    let gone = wait_status(&db.pool, id, JobStatus::Dead, 10).await;
    assert_eq!(gone.attempts, 1);
    assert_eq!(gone.last_error.as_deref(), Some("never works"));
    assert_eq!(runs.of(id).len(), 1);
    wait_for(10, "dead-letter hook", || async {
        (!dead.0.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn poison_jobs_dead_letter_alone_and_the_worker_goes_on() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    // A payload that cannot decode into Echo, written as an old deployment might have.
    let undecodable: JobId = sqlx::query_scalar(
        "INSERT INTO queue_jobs (task_name, payload, max_attempts) VALUES ($1, '{\"n\": \"not a number\"}', 3)
         RETURNING id",
    )
    .bind(Echo::NAME)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let panics = enqueue_one(
        &db.pool,
        &Flaky {
            failures: 0,
            after_ms: None,
            permanent: false,
            panic: true,
        },
        &EnqueueOptions::default(),
    )
    .await;
    let mut tx = db.pool.begin().await.unwrap();
    let good = queue::enqueue_many(
        &mut tx,
        &(0..20).map(|n| Echo { n }).collect::<Vec<_>>(),
        &EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let running = Running::start(workers_with_handlers(&db.pool, fast_opts(), &runs, &dead));
    let bad = wait_status(&db.pool, undecodable, JobStatus::Dead, 10).await;
    assert_eq!(
        bad.attempts, 1,
        "no retries for a payload that can never decode"
    );
    assert!(bad.last_error.unwrap().contains("undecodable"));
    let boom = wait_status(&db.pool, panics, JobStatus::Dead, 10).await;
    assert_eq!(boom.attempts, 1);
    assert!(boom.last_error.unwrap().contains("panicked: boom"));
    for id in good {
        wait_status(&db.pool, id, JobStatus::Completed, 10).await;
    }
    // Still alive after the poison: a new job runs.
    let after = enqueue_one(&db.pool, &Echo { n: 5 }, &EnqueueOptions::default()).await;
    wait_status(&db.pool, after, JobStatus::Completed, 10).await;
    wait_for(10, "both hooks", || async {
        let ids: Vec<JobId> = dead.0.lock().unwrap().iter().map(|c| c.0).collect();
        (ids.contains(&undecodable) && ids.contains(&panics)).then_some(())
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_live_workers_job_is_never_taken_by_another() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    // Runs for 3 leases: only renewal keeps it.
    let opts = WorkerOptions {
        lease: Duration::from_millis(900),
        ..fast_opts()
    };
    let a = Running::start(workers_with_handlers(&db.pool, opts.clone(), &runs, &dead));
    let b = Running::start(workers_with_handlers(&db.pool, opts, &runs, &dead));
    let id = enqueue_one(&db.pool, &Slow { millis: 2700 }, &EnqueueOptions::default()).await;
    let done = wait_status(&db.pool, id, JobStatus::Completed, 15).await;
    assert_eq!(done.attempts, 1);
    assert!(done.errors.is_empty());
    assert_eq!(runs.of(id).len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn notify_wakes_idle_workers_and_polling_covers_a_lost_notification() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let notifier = Notifier::spawn(db.pool.clone());
    // Polling alone would take 30 s: a fast pickup proves the NOTIFY path.
    let opts = WorkerOptions {
        poll_interval: Duration::from_secs(30),
        ..fast_opts()
    };
    let running = Running::start(workers_with_handlers(&db.pool, opts, &runs, &dead));
    // Let the listener subscribe and the fetcher go idle.
    let warmup = enqueue_one(&db.pool, &Echo { n: 0 }, &EnqueueOptions::default()).await;
    notifier.kick();
    wait_status(&db.pool, warmup, JobStatus::Completed, 10).await;
    for n in 1..=3 {
        let started = Instant::now();
        let id = enqueue_one(&db.pool, &Echo { n }, &EnqueueOptions::default()).await;
        notifier.kick();
        wait_status(&db.pool, id, JobStatus::Completed, 5).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "woken by NOTIFY, not by polling"
        );
    }
    running.shutdown().await;

    // No NOTIFY at all: the poll interval bounds the delay.
    let opts = WorkerOptions {
        poll_interval: Duration::from_millis(500),
        ..fast_opts()
    };
    let running = Running::start(workers_with_handlers(&db.pool, opts, &runs, &dead));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let id = enqueue_one(&db.pool, &Echo { n: 4 }, &EnqueueOptions::default()).await;
    wait_status(&db.pool, id, JobStatus::Completed, 5).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "found by polling within the interval"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn periodic_jobs_fire_once_per_tick_across_processes() {
    let db = fresh_db().await;
    let fired = Arc::new(Mutex::new(0u32));
    let mut runtimes = Vec::new();
    for _ in 0..2 {
        let mut workers = Workers::new(db.pool.clone(), fast_opts());
        let fired = fired.clone();
        workers.register(move |_: Tick, _ctx: JobContext| {
            let fired = fired.clone();
            async move {
                *fired.lock().unwrap() += 1;
                Ok(())
            }
        });
        workers
            .periodic("every-second", "* * * * * *", || Tick)
            .unwrap();
        runtimes.push(Running::start(workers));
    }
    wait_for(10, "three ticks", || async {
        (*fired.lock().unwrap() >= 3).then_some(())
    })
    .await;
    for running in runtimes {
        running.shutdown().await;
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT unique_key FROM queue_jobs_done WHERE task_name = $1
         UNION ALL SELECT unique_key FROM queue_jobs WHERE task_name = $1",
    )
    .bind(Tick::NAME)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "one job per tick: {keys:?}");
    assert!(keys.len() >= 3);
    assert!(matches!(
        Workers::new(db.pool.clone(), fast_opts()).periodic("bad", "not a cron", || Tick),
        Err(queue::QueueError::Schedule { .. })
    ));
}

#[tokio::test]
async fn shutdown_finishes_short_jobs_and_hands_back_long_ones() {
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let opts = WorkerOptions {
        shutdown_timeout: Duration::from_millis(800),
        ..fast_opts()
    };
    let mut workers = workers_with_handlers(&db.pool, opts, &runs, &dead);
    let released = Dead::default();
    let r = released.clone();
    workers.on_release::<Slow, _, _>(move |id, payload| {
        let r = r.clone();
        async move { r.0.lock().unwrap().push((id, payload, String::new())) }
    });
    let running = Running::start(workers);
    let short = enqueue_one(&db.pool, &Slow { millis: 300 }, &EnqueueOptions::default()).await;
    let long = enqueue_one(
        &db.pool,
        &Slow { millis: 60_000 },
        &EnqueueOptions::default(),
    )
    .await;
    wait_for(10, "both jobs started", || async {
        (!runs.of(short).is_empty() && !runs.of(long).is_empty()).then_some(())
    })
    .await;
    let started = Instant::now();
    running.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown is bounded by the timeout"
    );
    let short = queue::get_job(&db.pool, short).await.unwrap().unwrap();
    assert_eq!(short.status, JobStatus::Completed, "in-flight job finished");
    let long = queue::get_job(&db.pool, long).await.unwrap().unwrap();
    assert_eq!(
        long.status,
        JobStatus::Pending,
        "unfinished job handed back"
    );
    assert_eq!(long.attempts, 0, "a hand-back is not a failed attempt");
    assert!(long.errors.is_empty());
    assert!(long.locked_by.is_none());
    // Its hand-back hook ran once, after the release was written (issue 13.2: the
    // pipeline's hook returns the run's log to `pending`).
    let released = released.0.lock().unwrap().clone();
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(
        (released[0].0, &released[0].1),
        (long.id, &serde_json::json!({"millis": 60_000}))
    );
}

/// `run_once` drives the queue on the test's own task (zero2prod's
/// `dispatch_all_pending_emails`): arrange, enqueue, drain, assert, with no background
/// worker and nothing to wait for. The injected clock (`run_once_at`) runs what is due
/// later without waiting for it.
#[tokio::test]
async fn run_once_drains_the_ready_jobs_and_a_later_clock_runs_what_is_due_later() {
    // Arrange: more ready jobs than slots (4), one that fails once and asks for its retry
    // an hour out, one that fails for good, and one not due for a day.
    let db = fresh_db().await;
    let (runs, dead) = (Runs::default(), Dead::default());
    let workers = workers_with_handlers(&db.pool, fast_opts(), &runs, &dead);
    let mut tx = db.pool.begin().await.unwrap();
    let echoes = queue::enqueue_many(
        &mut tx,
        &(1..=5).map(|n| Echo { n }).collect::<Vec<_>>(),
        &EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let flaky = Flaky {
        failures: 1,
        after_ms: Some(3_600_000),
        permanent: false,
        panic: false,
    };
    let flaky = enqueue_one(&db.pool, &flaky, &EnqueueOptions::default()).await;
    let broken = Flaky {
        failures: 0,
        after_ms: None,
        permanent: true,
        panic: false,
    };
    let broken = enqueue_one(&db.pool, &broken, &EnqueueOptions::default()).await;
    let tomorrow = EnqueueOptions {
        run_at: Some(Utc::now() + chrono::Duration::days(1)),
        ..EnqueueOptions::default()
    };
    let later = enqueue_one(&db.pool, &Echo { n: 9 }, &tomorrow).await;

    // Act
    let report = workers.run_once().await.unwrap();

    // Assert: every ready job ran once and its outcome is written.
    assert_eq!(
        report,
        RunReport {
            completed: 5,
            retried: 1,
            dead: 1,
            dead_letter_hooks: 1,
        }
    );
    for (id, n) in echoes.iter().zip(1..) {
        let done = queue::get_job(&db.pool, *id).await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(done.result, Some(serde_json::json!(n * 2)));
    }
    let retrying = queue::get_job(&db.pool, flaky).await.unwrap().unwrap();
    assert_eq!(
        (retrying.status, retrying.attempts),
        (JobStatus::Pending, 1)
    );
    assert_eq!(retrying.last_error.as_deref(), Some("fail #1"));
    assert!(retrying.run_at > Utc::now() + chrono::Duration::minutes(59));
    let gone = queue::get_job(&db.pool, broken).await.unwrap().unwrap();
    assert_eq!(gone.status, JobStatus::Dead);
    let hooked: Vec<JobId> = dead.0.lock().unwrap().iter().map(|d| d.0).collect();
    assert_eq!(hooked, [broken], "the dead job's hook ran within run_once");
    let waiting = queue::get_job(&db.pool, later).await.unwrap().unwrap();
    assert_eq!((waiting.status, waiting.attempts), (JobStatus::Pending, 0));
    assert!(runs.of(later).is_empty());

    // Nothing is ready now: a second drain does nothing.
    assert_eq!(workers.run_once().await.unwrap(), RunReport::default());

    // Two hours on, the retry is due (and succeeds); the next day, the scheduled job.
    let in_two_hours = Utc::now() + chrono::Duration::hours(2);
    let report = workers.run_once_at(in_two_hours).await.unwrap();
    assert_eq!(
        report,
        RunReport {
            completed: 1,
            ..RunReport::default()
        }
    );
    let retried = queue::get_job(&db.pool, flaky).await.unwrap().unwrap();
    assert_eq!(
        (retried.status, retried.attempts),
        (JobStatus::Completed, 2)
    );
    let in_two_days = Utc::now() + chrono::Duration::days(2);
    let report = workers.run_once_at(in_two_days).await.unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
    let ran: Vec<u32> = runs.of(later).iter().map(JobContext::attempt).collect();
    assert_eq!(ran, [1]);
}
