//! Grouped run starts against real Postgres (the grouping itself is unit-tested in
//! `hookq_tasks::batch`): under concurrency each caller gets its own log back, a log that is not startable answers `None`, and two
//! starts of one log (a re-run racing a late run) both start, one after the other.

use std::sync::Arc;

use hookq_core::{comment::ports::LogStore, intake::ParsedEvent};
use hookq_tasks::{intake::Ingestor, pipeline::starts::GroupedLogStore, queue::Notifier};
use hookq_testkit::{comment_event, fresh_db};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_each_get_their_own_log() {
    const LOGS: usize = 200;
    let db = fresh_db().await;
    let ingestor = Ingestor::new(db.pool.clone(), Notifier::spawn(db.pool.clone()), 3);
    let events: Vec<ParsedEvent> = (0..LOGS)
        .map(|i| comment_event(&format!("start-{i}")))
        .collect();
    let ids = ingestor.ingest(&events, None).await.unwrap().ids;
    // One log is already finished: its start must answer None.
    let finished = ids[LOGS - 1];
    sqlx::query("UPDATE webhook_logs SET status = 'processed' WHERE id = $1")
        .bind(finished)
        .execute(&db.pool)
        .await
        .unwrap();

    let store = Arc::new(GroupedLogStore::spawn(
        db.pool.clone(),
        &hookq_tasks::batch::ExpressLane::inline(&db.pool),
    ));
    // Every log once, the first ten twice more: 220 callers at once.
    let calls: Vec<(i64, u32)> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, (i % 3) as u32 + 1))
        .chain(ids[..10].iter().map(|&id| (id, 7)))
        .collect();
    let gate = Arc::new(Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .iter()
        .map(|&(id, attempt)| {
            let (store, gate) = (Arc::clone(&store), Arc::clone(&gate));
            tokio::spawn(async move {
                gate.wait().await;
                store.start(id, attempt).await
            })
        })
        .collect();
    for ((id, attempt), task) in calls.iter().zip(tasks) {
        let started = task.await.unwrap().expect("no database error");
        if *id == finished {
            assert!(started.is_none(), "a processed log is not started again");
            continue;
        }
        let started = started.unwrap_or_else(|| panic!("log {id} not started"));
        assert_eq!(started.log.id, *id, "each caller gets its own log");
        assert_eq!(started.log.status.as_str(), "processing");
        assert!(
            started.log.attempts == *attempt as i32 || started.log.attempts == 7,
            "attempts is this start's or the later one's: {}",
            started.log.attempts
        );
    }
    let processing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_logs WHERE status = 'processing'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(processing, LOGS as i64 - 1);
}
