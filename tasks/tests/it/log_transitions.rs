//! The log state machine (`hookq_core::logs::transitions`) walked against real
//! PostgreSQL: every named transition is applied to a log in every status, and it must
//! move exactly the logs its declared from-states allow, to its declared to-state, and
//! leave every other log as it was. A literal copy of the module doc's table pins the
//! declarations, so a change to the machine is a change to this test too.

use chrono::{Duration, Utc};
use hookq_core::{
    logs::transitions::{self as t, Owner, Reply, Transition},
    logs::{LogStatus, Outcome, reads::LogFilter},
};
use hookq_testkit::fresh_db;
use sqlx::PgPool;

const JOB: i64 = 4242;

/// The doc table of `core/src/logs/transitions.rs`, row by row.
const TABLE: &[(&str, &[&str], Option<&str>)] = &[
    (
        "START",
        &["pending", "failed", "processing"],
        Some("processing"),
    ),
    ("FINISH", &["processing"], Some("processed")),
    ("STORE_REPLY", &["processing"], Some("processing")),
    ("FINISH_REPLIED", &["processing"], Some("processed")),
    ("AWAIT_DELIVERY", &["processing"], Some("pending")),
    ("HAND_BACK", &["processing"], Some("pending")),
    ("SCHEDULE_RETRY", &["processing"], Some("failed")),
    (
        "DEAD_LETTER",
        &["pending", "processing", "failed"],
        Some("dead_letter"),
    ),
    (
        "DELIVERY_CLAIMED",
        &["pending", "failed"],
        Some("processing"),
    ),
    (
        "DELIVERED",
        &["pending", "processing", "failed"],
        Some("processed"),
    ),
    (
        "DELIVERY_RETRYING",
        &["pending", "processing", "failed"],
        Some("failed"),
    ),
    (
        "DELIVERY_FAILED",
        &["pending", "processing", "failed"],
        Some("dead_letter"),
    ),
    (
        "RESET_FOR_RETRY",
        &["failed", "dead_letter"],
        Some("pending"),
    ),
    ("PURGE", &["processed"], None),
    (
        "DELETE_MATCHING",
        &["processed", "failed", "dead_letter"],
        None,
    ),
];

#[test]
fn the_declared_transitions_are_the_documented_table() {
    let declared: Vec<(&str, Vec<&str>, Option<&str>)> = t::ALL
        .iter()
        .map(|tr| {
            (
                tr.name,
                tr.from.iter().map(|s| s.as_str()).collect(),
                tr.to.map(LogStatus::as_str),
            )
        })
        .collect();
    let documented: Vec<(&str, Vec<&str>, Option<&str>)> = TABLE
        .iter()
        .map(|(n, from, to)| (*n, from.to_vec(), *to))
        .collect();
    assert_eq!(declared, documented);
    // The module doc shows the same rows.
    let doc = include_str!("../../../core/src/logs/transitions.rs");
    for (name, from, to) in TABLE {
        let row = format!(
            "//! | [`{name}`] | {} | {} |",
            from.join(", "),
            to.unwrap_or("(deleted)")
        );
        assert!(doc.contains(&row), "doc table lacks {row}");
    }
}

/// One log in `status`, belonging to job [`JOB`], processed long ago.
async fn log_in(pool: &PgPool, status: LogStatus) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                                   job_id, attempts, processed_at)
         VALUES (gen_random_uuid()::text, 'instagram', 'comments', 'reply', '{}', $1, $2, 1,
                 now() - interval '400 days')
         RETURNING id",
    )
    .bind(status.as_str())
    .bind(JOB)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Applies `tr` to log `id` through its function; answers the ids it reports moved.
async fn apply(pool: &PgPool, tr: Transition, id: i64) -> Vec<i64> {
    let ids = [id];
    let later = Utc::now() + Duration::minutes(5);
    match tr.name {
        "START" => t::start(pool, &ids, &[2])
            .await
            .unwrap()
            .iter()
            .map(|s| s.log.id)
            .collect(),
        "FINISH" => t::finish(pool, &ids, Outcome::Recorded, None, None)
            .await
            .unwrap(),
        "STORE_REPLY" => t::store_reply(pool, &ids, "hi", None, None).await.unwrap(),
        "FINISH_REPLIED" => {
            let moved = t::finish_replied(pool, &ids).await.unwrap();
            // The batched form moves the same states.
            let reply = Reply {
                log_id: id,
                text: "hi".into(),
                integration_id: None,
                persona_id: None,
            };
            let batched = t::finish_with_replies(pool, &[reply]).await.unwrap();
            assert!(batched.is_empty(), "the first form already moved it");
            moved
        }
        "AWAIT_DELIVERY" => t::await_delivery(pool, &ids).await.unwrap(),
        "HAND_BACK" => {
            assert!(
                t::hand_back(pool, &ids, JOB + 1).await.unwrap().is_empty(),
                "another job's hand-back leaves the log alone"
            );
            t::hand_back(pool, &ids, JOB).await.unwrap()
        }
        "SCHEDULE_RETRY" => t::schedule_retry(pool, &ids, "e", later).await.unwrap(),
        "DEAD_LETTER" => {
            assert!(
                t::dead_letter(pool, Owner::LogsOfJob(&ids, JOB + 1), "e")
                    .await
                    .unwrap()
                    .is_empty(),
                "another job's death leaves the log alone"
            );
            t::dead_letter(pool, Owner::Logs(&ids), "e").await.unwrap()
        }
        "DELIVERY_CLAIMED" => t::delivery_claimed(pool, &ids).await.unwrap(),
        "DELIVERED" => t::delivered(pool, &ids).await.unwrap(),
        "DELIVERY_RETRYING" => t::delivery_retrying(pool, &ids, "e", later).await.unwrap(),
        "DELIVERY_FAILED" => t::delivery_failed(pool, &ids, "e").await.unwrap(),
        "RESET_FOR_RETRY" => t::reset_for_retry(pool, &ids, &[JOB + 7]).await.unwrap(),
        "PURGE" => {
            // The partition the row is in (the current month's, or the default one
            // in a test database made before this month's partition was).
            let table: String = sqlx::query_scalar(
                "SELECT tableoid::regclass::text FROM webhook_logs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
            let month =
                hookq_core::logs::partitions::LogPartition::from_table(&table, true).unwrap();
            let n = t::purge_processed(pool, &month, Utc::now(), 1_000)
                .await
                .unwrap();
            let gone: bool =
                sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM webhook_logs WHERE id = $1)")
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            assert_eq!(n == 1, gone);
            if gone { vec![id] } else { vec![] }
        }
        "DELETE_MATCHING" => {
            let filter = LogFilter {
                source: Some("instagram".into()),
                ..LogFilter::default()
            };
            t::delete_matching(pool, &filter, 1_000).await.unwrap()
        }
        other => panic!("no case for transition {other}: add one"),
    }
}

#[tokio::test]
async fn every_transition_from_every_state_moves_only_what_it_declares() {
    let db = fresh_db().await;
    let mut seen = Vec::new();
    for tr in t::ALL {
        for &from in LogStatus::ALL {
            let id = log_in(&db.pool, from).await;
            let moved = apply(&db.pool, *tr, id).await;
            let now: Option<String> =
                sqlx::query_scalar("SELECT status FROM webhook_logs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap();
            if tr.allows(from) {
                assert_eq!(moved, vec![id], "{} from {from} reports the move", tr.name);
                assert_eq!(
                    now.as_deref(),
                    tr.to.map(LogStatus::as_str),
                    "{} from {from}",
                    tr.name
                );
            } else {
                assert!(moved.is_empty(), "{} must not move a {from} log", tr.name);
                assert_eq!(
                    now.as_deref(),
                    Some(from.as_str()),
                    "{} left a {from} log as it was",
                    tr.name
                );
            }
            // Clean up so PURGE only ever sees the log of its own case.
            sqlx::query("DELETE FROM webhook_logs")
                .execute(&db.pool)
                .await
                .unwrap();
            seen.push((tr.name, from));
        }
    }
    assert_eq!(seen.len(), t::ALL.len() * LogStatus::ALL.len());
}

#[tokio::test]
async fn a_retry_reset_attaches_the_new_job_and_clears_the_run() {
    let db = fresh_db().await;
    let id = log_in(&db.pool, LogStatus::DeadLetter).await;
    assert_eq!(
        t::reset_for_retry(&db.pool, &[id], &[JOB + 7])
            .await
            .unwrap(),
        vec![id]
    );
    let row: (String, Option<i64>, i32, bool) = sqlx::query_as(
        "SELECT status, job_id, attempts, processed_at IS NULL FROM webhook_logs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, ("pending".into(), Some(JOB + 7), 0, true));
}
