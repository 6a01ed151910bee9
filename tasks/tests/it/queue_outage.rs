//! A Postgres restart under a running worker: it must not exit, and must resume by
//! itself, its LISTEN connection included.
//!
//! Stopping the cluster breaks every other test using it, so this is `#[ignore]`d and
//! `scripts/test` runs it with the other fault tests, one at a time, after the rest. It
//! needs the test kit to own the cluster (`HOOKQ_TEST_DATABASE_URL` unset).

use std::time::{Duration, Instant};

use hookq_tasks::queue::{
    self, EnqueueOptions, Job, JobContext, JobStatus, Notifier, WorkerOptions, Workers,
};
use hookq_testkit::{cluster, fresh_db, wait_for};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Debug, Serialize, Deserialize)]
struct Ping;
impl Job for Ping {
    const NAME: &'static str = "test.ping";
}

async fn enqueue_and_wait(pool: &PgPool, notifier: &Notifier, within: Duration) -> bool {
    let Ok(mut tx) = pool.begin().await else {
        return false;
    };
    let Ok(id) = queue::enqueue(&mut tx, &Ping, &EnqueueOptions::default()).await else {
        return false;
    };
    if tx.commit().await.is_err() {
        return false;
    }
    notifier.kick();
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(Some(job)) = queue::get_job(pool, id).await
            && job.status == JobStatus::Completed
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
#[ignore = "fault test: restarts PostgreSQL; run by scripts/test after the rest"]
async fn worker_survives_a_postgres_restart_and_resumes_by_itself() {
    let cluster = cluster()
        .await
        .expect("needs the test kit's own cluster: unset HOOKQ_TEST_DATABASE_URL");
    let db = fresh_db().await;
    let notifier = Notifier::spawn(db.pool.clone());
    // Only NOTIFY can make pickup fast: polling alone takes 30 s.
    let mut workers = Workers::new(
        db.pool.clone(),
        WorkerOptions {
            poll_interval: Duration::from_secs(30),
            lease: Duration::from_secs(3),
            ..WorkerOptions::default()
        },
    );
    workers.register(|_: Ping, _ctx: JobContext| async { Ok(()) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(workers.run(async move {
        let _ = stopped.await;
    }));
    wait_for(10, "a job before the outage", || async {
        enqueue_and_wait(&db.pool, &notifier, Duration::from_secs(1))
            .await
            .then_some(())
    })
    .await;

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .expect("stop postgres");
    // The outage itself: long enough for every part of the worker to hit errors.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !handle.is_finished(),
        "the worker must not exit during an outage"
    );
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .expect("start postgres");

    // Two quick pickups in a row: the second can only come from a re-established LISTEN.
    wait_for(30, "fast pickups after the restart", || async {
        (enqueue_and_wait(&db.pool, &notifier, Duration::from_secs(2)).await
            && enqueue_and_wait(&db.pool, &notifier, Duration::from_secs(2)).await)
            .then_some(())
    })
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("shutdown in time")
        .unwrap()
        .unwrap();
}
