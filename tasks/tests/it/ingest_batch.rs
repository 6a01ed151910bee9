//! Group-commit ingest under real concurrency: many callers of one [`Ingestor`] share
//! commits, and every acknowledged event is a stored row with its job.

use std::{collections::HashMap, sync::Arc};

use hookq_tasks::{intake::Ingestor, queue::Notifier};
use hookq_testkit::{comment_event, fresh_db};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_callers_are_all_stored_with_their_jobs_in_shared_commits() {
    const CALLERS: usize = 300;
    let db = fresh_db().await;
    let ingestor = Ingestor::new(db.pool.clone(), Notifier::spawn(db.pool.clone()), 3);
    let start = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let ingestor = ingestor.clone();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            // Every caller has its own event, and one of ten keys shared with others.
            let events = vec![
                comment_event(&format!("own-{i}")),
                comment_event(&format!("shared-{}", i % 10)),
            ];
            start.wait().await;
            let corr = format!("caller-{i}");
            ingestor.ingest(&events, Some(&corr)).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().expect("every caller is acknowledged"));
    }

    // Each shared key was accepted by exactly one caller; all its callers got one id.
    let mut shared_ids: HashMap<usize, Vec<i64>> = HashMap::new();
    let mut shared_accepts = 0;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.ids.len(), 2);
        assert_eq!(a.accepted + a.duplicates, 2);
        shared_ids.entry(i % 10).or_default().push(a.ids[1]);
        shared_accepts += a.accepted - 1;
    }
    assert_eq!(
        shared_accepts, 10,
        "each shared key is new for exactly one caller"
    );
    for ids in shared_ids.values() {
        assert!(ids.iter().all(|&id| id == ids[0]));
    }

    // Every acknowledged id is a row with its own job, pointing back at it.
    let all: Vec<i64> = answers.iter().flat_map(|a| a.ids.iter().copied()).collect();
    let (rows, with_job, jobs, commits): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE EXISTS (SELECT 1 FROM queue_jobs j
                    WHERE j.id = l.job_id AND (j.payload->>'log_id')::bigint = l.id)),
                (SELECT count(*) FROM queue_jobs),
                count(DISTINCT l.xmin::text)
         FROM webhook_logs l WHERE l.id = ANY($1)",
    )
    .bind(&all)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let expected = (CALLERS + 10) as i64;
    assert_eq!((rows, with_job, jobs), (expected, expected, expected));
    // Callers shared transactions (the row's xmin is the inserting transaction).
    assert!(
        commits < CALLERS as i64,
        "{commits} commits for {CALLERS} callers: no batching"
    );
    // Duplicates were counted as separate deliveries would have been.
    let dups: i64 = sqlx::query_scalar("SELECT sum(duplicate_count) FROM webhook_logs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dups, (CALLERS - 10) as i64);
}

/// Copies of one webhook reaching several API hosts at once (each its own [`Ingestor`],
/// so their statements run side by side): the dedup table, partitioned by month
/// (migration 0017), still lets exactly one copy in, every copy gets that log's id, and
/// the others are counted as duplicates on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_through_several_hosts_at_once_store_one_log_per_key() {
    const HOSTS: usize = 4;
    const KEYS: usize = 40;
    let db = fresh_db().await;
    let start = Arc::new(Barrier::new(HOSTS * KEYS));
    let mut tasks = Vec::new();
    for _ in 0..HOSTS {
        let ingestor = Ingestor::new(db.pool.clone(), Notifier::spawn(db.pool.clone()), 3);
        for k in 0..KEYS {
            let ingestor = ingestor.clone();
            let start = Arc::clone(&start);
            tasks.push(tokio::spawn(async move {
                let event = comment_event(&format!("copy-{k}"));
                start.wait().await;
                (k, ingestor.ingest(&[event], None).await)
            }));
        }
    }
    let mut by_key: HashMap<usize, Vec<(i64, usize)>> = HashMap::new();
    for t in tasks {
        let (k, answer) = t.await.unwrap();
        let a = answer.expect("every copy is acknowledged");
        by_key.entry(k).or_default().push((a.ids[0], a.accepted));
    }
    for (k, copies) in &by_key {
        assert_eq!(copies.len(), HOSTS);
        assert_eq!(
            copies.iter().map(|c| c.1).sum::<usize>(),
            1,
            "key {k}: exactly one copy is new"
        );
        assert!(
            copies.iter().all(|c| c.0 == copies[0].0),
            "key {k}: every copy names the one log"
        );
    }
    let (logs, dups, keys): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(duplicate_count), (SELECT count(DISTINCT dedup_key) FROM webhook_dedup)
         FROM webhook_logs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (logs, dups, keys),
        (KEYS as i64, (KEYS * (HOSTS - 1)) as i64, KEYS as i64)
    );
}
