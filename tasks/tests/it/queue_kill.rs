//! A worker process killed with SIGKILL: its claimed jobs stay `running` until their
//! lease expires, then another worker runs them again. The worker that dies is this
//! test binary re-executed as a child (see `child_worker`).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use hookq_tasks::queue::{
    self, EnqueueOptions, Job, JobContext, JobStatus, WorkerOptions, Workers,
};
use hookq_testkit::{fresh_db, wait_for};
use nix::{sys::signal, unistd::Pid};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Debug, Serialize, Deserialize)]
struct Hang {
    n: u32,
}
impl Job for Hang {
    const NAME: &'static str = "test.hang";
}

/// Set (to the test database's URL) only in the child process.
const CHILD_DB: &str = "HOOKQ_QUEUE_TEST_CHILD_DB";

fn opts() -> WorkerOptions {
    WorkerOptions {
        concurrency: 4,
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(200),
        worker_name: "kill-test".into(),
        ..WorkerOptions::default()
    }
}

/// The child's worker: records that each job started, then hangs in it until killed.
#[tokio::test]
#[ignore = "entry point of the child process that a_killed_workers_jobs_run_again_after_lease_expiry spawns"]
async fn child_worker() {
    let Ok(url) = std::env::var(CHILD_DB) else {
        return;
    };
    let pool = PgPool::connect(&url).await.expect("child connects");
    let mut workers = Workers::new(pool.clone(), opts());
    workers.register(move |_: Hang, ctx: JobContext| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO child_started (job_id) VALUES ($1)")
                .bind(ctx.job_id())
                .execute(&pool)
                .await
                .expect("record start");
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    workers
        .run(std::future::pending())
        .await
        .expect("child worker runs");
}

#[tokio::test]
async fn a_killed_workers_jobs_run_again_after_lease_expiry() {
    let db = fresh_db().await;
    sqlx::query("CREATE TABLE child_started (job_id bigint NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let ids = queue::enqueue_many(
        &mut tx,
        &[Hang { n: 1 }, Hang { n: 2 }, Hang { n: 3 }],
        &EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "queue_kill::child_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &db.url)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the child worker");
    let started = wait_for(30, "the child to start all jobs", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM child_started")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(started, 3);
    // The child holds them: while it lives its leases are renewed.
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM queue_jobs WHERE status = 'running' AND lease_expires_at > now()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leased, 3);

    signal::kill(
        Pid::from_raw(child.id().try_into().unwrap()),
        signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();

    let mut workers = Workers::new(db.pool.clone(), opts());
    workers.register(|job: Hang, _ctx: JobContext| async move { Ok(job.n) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(workers.run(async move {
        let _ = stopped.await;
    }));
    for id in ids {
        let done = wait_for(15, "the job to run again", || async {
            queue::get_job(&db.pool, id)
                .await
                .unwrap()
                .filter(|j| j.status == JobStatus::Completed)
        })
        .await;
        assert_eq!(done.attempts, 2, "the killed run counts as an attempt");
        assert!(
            done.errors[0].error.contains("lease expired"),
            "{:?}",
            done.errors
        );
    }
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}
