//! Many accounts on one queue (contract section 10), at the queue's own level: fair
//! claiming across groups, a paused group held without spending attempts, a
//! conversation run in order under retries and with jobs placed at another's place, and `max_running` and rate budgets held
//! across two worker runtimes sharing the database.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use hookq_tasks::queue::{
    self, EnqueueOptions, Job, JobContext, JobError, JobId, JobKeys, WorkerOptions, Workers,
};
use hookq_testkit::{fresh_db, wait_for};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    /// Fail (transiently) on the first run.
    fail_first: bool,
    /// How long a run takes.
    ms: u64,
}

impl Job for Step {
    const NAME: &'static str = "test.step";
}

/// Every run start, in order, and how many ran at once at most.
#[derive(Clone, Default)]
struct Log {
    starts: Arc<Mutex<Vec<(JobId, u32)>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Log {
    fn order(&self) -> Vec<JobId> {
        self.starts.lock().unwrap().iter().map(|s| s.0).collect()
    }
}

fn workers(pool: &PgPool, log: &Log, concurrency: usize) -> Workers {
    let mut w = Workers::new(
        pool.clone(),
        WorkerOptions {
            concurrency,
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_secs(600),
            backoff_cap: Duration::from_secs(600),
            worker_name: "groups".into(),
            ..WorkerOptions::default()
        },
    );
    let log = log.clone();
    w.register(move |job: Step, ctx: JobContext| {
        let log = log.clone();
        async move {
            log.starts
                .lock()
                .unwrap()
                .push((ctx.job_id(), ctx.attempt()));
            let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
            log.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            log.running.fetch_sub(1, Ordering::SeqCst);
            if job.fail_first && ctx.attempt() == 1 {
                return Err(JobError::Retry {
                    error: "first run fails".into(),
                    after: Some(Duration::from_secs(600)),
                });
            }
            Ok(())
        }
    });
    w
}

async fn enqueue(
    pool: &PgPool,
    n: usize,
    group: &str,
    order: Option<&str>,
    step: Step,
) -> Vec<JobId> {
    let mut tx = pool.begin().await.unwrap();
    let jobs = vec![step; n];
    let ids = queue::enqueue_many(
        &mut tx,
        &jobs,
        &EnqueueOptions {
            keys: JobKeys {
                group: group.into(),
                order: order.map(str::to_owned),
                position: None,
            },
            ..EnqueueOptions::default()
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    ids
}

fn quick() -> Step {
    Step {
        fail_first: false,
        ms: 0,
    }
}

async fn set_budget(
    pool: &PgPool,
    key: &str,
    paused: bool,
    max_running: Option<i32>,
    rate: Option<(i32, i64)>,
) {
    sqlx::query(
        "INSERT INTO queue_groups (key, paused, max_running, rate_limit, rate_window_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET paused = $2, max_running = $3, rate_limit = $4,
             rate_window_ms = $5",
    )
    .bind(key)
    .bind(paused)
    .bind(max_running)
    .bind(rate.map(|r| r.0))
    .bind(rate.map(|r| r.1))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_flood_in_one_group_does_not_hold_back_another_groups_first_job() {
    let db = fresh_db().await;
    let flood = enqueue(&db.pool, 200, "ig:flood", None, quick()).await;
    let quiet = enqueue(&db.pool, 1, "ig:quiet", None, quick()).await;
    let log = Log::default();
    let report = workers(&db.pool, &log, 4).run_once().await.unwrap();
    assert_eq!(report.completed, 201);
    let order = log.order();
    let at = order.iter().position(|id| *id == quiet[0]).unwrap();
    // Round-robin: the quiet group's job is in the first batch (of 4), not after 200.
    assert!(at < 4, "the quiet job ran {at}th of {}", order.len());
    // Within the flood, FIFO still holds.
    let flood_order: Vec<JobId> = order.into_iter().filter(|id| flood.contains(id)).collect();
    assert_eq!(flood_order, flood);
}

#[tokio::test]
async fn a_paused_group_is_held_without_spending_attempts_and_resumes() {
    let db = fresh_db().await;
    set_budget(&db.pool, "ig:paused", true, None, None).await;
    let held = enqueue(&db.pool, 3, "ig:paused", None, quick()).await;
    let other = enqueue(&db.pool, 2, "ig:other", None, quick()).await;
    let log = Log::default();
    let w = workers(&db.pool, &log, 4);
    let report = w.run_once().await.unwrap();
    assert_eq!(report.completed, 2, "only the other group ran");
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT status::text, attempts FROM queue_jobs WHERE id = ANY($1)")
            .bind(&held)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|(s, a)| s == "pending" && *a == 0),
        "{rows:?}"
    );
    assert!(log.order().iter().all(|id| other.contains(id)));

    set_budget(&db.pool, "ig:paused", false, None, None).await;
    let report = w.run_once().await.unwrap();
    assert_eq!(report.completed, 3);
    for id in held {
        let job = queue::get_job(&db.pool, id).await.unwrap().unwrap();
        assert_eq!(job.attempts, 1, "a held job spent no attempt while paused");
    }
}

#[tokio::test]
async fn a_conversation_waits_for_its_earlier_job_through_a_retry() {
    let db = fresh_db().await;
    let first = enqueue(
        &db.pool,
        1,
        "ig:a",
        Some("thread-1"),
        Step {
            fail_first: true,
            ms: 0,
        },
    )
    .await[0];
    let later = enqueue(&db.pool, 2, "ig:a", Some("thread-1"), quick()).await;
    let elsewhere = enqueue(&db.pool, 1, "ig:a", Some("thread-2"), quick()).await[0];
    let log = Log::default();
    let w = workers(&db.pool, &log, 8);
    // The first fails and is scheduled 10 minutes out; its conversation waits for it,
    // another conversation does not.
    let report = w.run_once().await.unwrap();
    assert_eq!((report.retried, report.completed), (1, 1));
    assert_eq!(log.order(), vec![first, elsewhere]);
    // Ten minutes later: the retry, then the rest of the thread, in order.
    let report = w
        .run_once_at(Utc::now() + chrono::Duration::minutes(11))
        .await
        .unwrap();
    assert_eq!(report.completed, 3);
    assert_eq!(
        log.order(),
        vec![first, elsewhere, first, later[0], later[1]]
    );
}

/// A job enqueued at an earlier job's place (as a reply's delivery is, and its retries,
/// after later events of the conversation arrived) runs before those later jobs: beside
/// the job whose place it took, not after everything enqueued meanwhile.
#[tokio::test]
async fn a_job_at_an_earlier_place_runs_before_later_jobs_of_its_conversation() {
    let db = fresh_db().await;
    let first = enqueue(&db.pool, 1, "ig:a", Some("dm-1"), quick()).await[0];
    let later = enqueue(&db.pool, 1, "ig:a", Some("dm-1"), quick()).await[0];
    let mut tx = db.pool.begin().await.unwrap();
    let carried_on = queue::enqueue(
        &mut tx,
        &quick(),
        &EnqueueOptions {
            keys: JobKeys {
                group: String::new(),
                order: Some("dm-1".into()),
                position: Some(first),
            },
            ..EnqueueOptions::default()
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(carried_on > later, "enqueued last");
    let log = Log::default();
    let w = workers(&db.pool, &log, 8);
    let report = w.run_once().await.unwrap();
    assert_eq!(report.completed, 3);
    // By id it would have run after `later`; at `first`'s place it runs before it.
    let order = log.order();
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(order[2], later, "{order:?}");
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), queue::QueueError>>,
}

fn start(w: Workers) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(w.run(async move {
        let _ = stopped.await;
    }));
    Running { stop, handle }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_across_two_worker_runtimes() {
    let db = fresh_db().await;
    // At most 2 running at once, and at most 4 finished in any 1 s window.
    set_budget(&db.pool, "ig:capped", false, Some(2), Some((4, 1000))).await;
    let ids = enqueue(
        &db.pool,
        12,
        "ig:capped",
        None,
        Step {
            fail_first: false,
            ms: 50,
        },
    )
    .await;
    let log = Log::default();
    let a = start(workers(&db.pool, &log, 8));
    let b = start(workers(&db.pool, &log, 8));
    queue::Notifier::spawn(db.pool.clone()).kick();
    wait_for(30, "every capped job done", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert_eq!(log.order().len(), ids.len(), "each ran once");
    assert!(
        log.most.load(Ordering::SeqCst) <= 2,
        "max_running 2 across both runtimes, saw {}",
        log.most.load(Ordering::SeqCst)
    );
    // No 1 s window holds more than 4 finishes (checked on every window that starts
    // at a finish).
    let finished: Vec<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT finished_at FROM queue_jobs_done ORDER BY finished_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(finished.len(), 12);
    for (i, start) in finished.iter().enumerate() {
        let within = finished[i..]
            .iter()
            .take_while(|f| **f - *start < chrono::Duration::seconds(1))
            .count();
        assert!(within <= 4, "{within} finishes within 1 s from {start}");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Laned {
    group: String,
}

impl Job for Laned {
    const NAME: &'static str = "test.laned";
}

async fn enqueue_laned(pool: &PgPool, groups: &[&str]) {
    let mut tx = pool.begin().await.unwrap();
    for group in groups {
        queue::enqueue_many(
            &mut tx,
            &[Laned {
                group: (*group).into(),
            }],
            &EnqueueOptions {
                keys: JobKeys {
                    group: (*group).into(),
                    order: None,
                    position: None,
                },
                ..EnqueueOptions::default()
            },
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// A run whose group has nothing else running in the process, while another group's
/// runs do, takes the express lane, on the express thread; a flooded group's runs
/// (the first of which found nothing to overtake) run in bulk on the worker's own
/// runtime. Three flooded runs are held at a barrier while the quiet job arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_groups_run_takes_the_express_thread() {
    use hookq_tasks::batch::{ExpressThread, Lane, current_lane};
    let db = fresh_db().await;
    enqueue_laned(&db.pool, &["ig:flood", "ig:flood", "ig:flood"]).await;

    // Each run's group, lane and thread name.
    type Seen = Vec<(String, Lane, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut w = Workers::new(
        db.pool.clone(),
        WorkerOptions {
            concurrency: 4,
            poll_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(2),
            worker_name: "lanes".into(),
            express: Some(ExpressThread::start("hookq-express").unwrap()),
            ..WorkerOptions::default()
        },
    );
    let (record, wait) = (seen.clone(), barrier.clone());
    w.register(move |job: Laned, _ctx: JobContext| {
        let (record, wait) = (record.clone(), wait.clone());
        async move {
            let thread = std::thread::current().name().map(str::to_owned);
            record
                .lock()
                .unwrap()
                .push((job.group, current_lane(), thread));
            wait.wait().await;
            Ok::<_, JobError>(())
        }
    });
    let running = start(w);
    let count = |n: usize| {
        let seen = seen.clone();
        move || {
            let got = seen.lock().unwrap().len();
            async move { (got == n).then_some(()) }
        }
    };
    wait_for(10, "the flooded group's three runs", count(3)).await;
    enqueue_laned(&db.pool, &["ig:quiet"]).await;
    wait_for(10, "the quiet group's run", count(4)).await;
    running.stop().await;

    let seen = seen.lock().unwrap().clone();
    let flood: Vec<_> = seen.iter().filter(|s| s.0 == "ig:flood").collect();
    assert_eq!(flood.len(), 3, "{seen:?}");
    for (_, lane, thread) in &flood {
        assert_eq!(*lane, Lane::Bulk, "{seen:?}");
        assert_ne!(thread.as_deref(), Some("hookq-express"), "{seen:?}");
    }
    let quiet = seen.iter().find(|s| s.0 == "ig:quiet").expect("quiet run");
    assert_eq!(quiet.1, Lane::Express, "{seen:?}");
    assert_eq!(quiet.2.as_deref(), Some("hookq-express"), "{seen:?}");
}
