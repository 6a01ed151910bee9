//! `webhook_logs` partitioned by month (contract section 11,
//! `migrations/0017_partitioned_logs.sql`): the migration converts a table with rows in
//! it, dedup keys stay unique across months, and retention drops a month whole but never
//! one holding a log that is not `processed`.

use hookq_core::logs::partitions::{self, LogPartition};
use hookq_tasks::{intake::Ingestor, ops::retention, queue::Notifier};
use hookq_testkit::{comment_event, empty_db, fresh_db};

/// Inserts a log received `months_ago` months ago (as intake and delivery would have: with
/// its search text, dedup key, reply and delivery attempt), `status`, and answers its id.
async fn old_log(pool: &sqlx::PgPool, key: &str, months_ago: i32, status: &str) -> i64 {
    sqlx::query_scalar(
        "WITH l AS (
             INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                 received_at, processed_at)
             VALUES ($1, 'instagram', 'comment', 'reply', '{}', $2,
                 now() - make_interval(months => $3), now() - make_interval(months => $3))
             RETURNING id, received_at),
         t AS (INSERT INTO webhook_log_text (log_id, received_at, doc)
               SELECT id, received_at, $1 FROM l),
         d AS (INSERT INTO webhook_dedup (dedup_key, month, log_id, received_at)
               SELECT $1, date_trunc('month', received_at, 'UTC'), id, received_at FROM l),
         r AS (INSERT INTO outbound_replies (log_id, log_received_at, kind, webhook_id, status)
               SELECT id, received_at, 'callback', 'msg_' || $1, 'delivered' FROM l
               RETURNING id, log_id, log_received_at),
         a AS (INSERT INTO delivery_attempts (reply_id, log_id, log_received_at, attempt, kind,
                   url, limit_key, state)
               SELECT id, log_id, log_received_at, 1, 'callback', 'http://x', 'x', 'succeeded'
               FROM r)
         SELECT id FROM l",
    )
    .bind(key)
    .bind(status)
    .bind(months_ago)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn table_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Migrates a database with logs of two months (their search text, a reply and its
/// attempt for each) through 0017: every row is kept, in its month's partition,
/// with its id; the dedup keys it knew are still refused; new logs get ids after the old
/// ones.
#[tokio::test]
async fn the_partitioning_migration_converts_a_table_with_rows_in_it() {
    let db = empty_db().await;
    let pool = &db.pool;
    hookq_core::db::MIGRATOR.run_to(16, pool).await.unwrap();
    for (key, months_ago) in [("m3-a", 3), ("m3-b", 3), ("now-a", 0)] {
        sqlx::query(
            "WITH l AS (
                 INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload,
                     status, received_at)
                 VALUES ($1, 'instagram', 'comment', 'reply', '{}', 'processed',
                     now() - make_interval(months => $2))
                 RETURNING id),
             t AS (INSERT INTO webhook_log_text (log_id, doc) SELECT id, $1 FROM l),
             r AS (INSERT INTO outbound_replies (log_id, kind, webhook_id, status)
                   SELECT id, 'callback', 'msg_' || $1, 'delivered' FROM l RETURNING id, log_id)
             INSERT INTO delivery_attempts (reply_id, log_id, attempt, kind, url, limit_key)
             SELECT id, log_id, 1, 'callback', 'http://x', 'x' FROM r",
        )
        .bind(key)
        .bind(months_ago)
        .execute(pool)
        .await
        .unwrap();
    }
    let before: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, dedup_key FROM webhook_logs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();

    hookq_core::db::migrate(pool).await.unwrap();

    let after: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, dedup_key, tableoid::regclass::text FROM webhook_logs ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        after.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>(),
        before
    );
    let now = chrono::Utc::now();
    for (_, key, table) in &after {
        let months_ago = if key.starts_with("m3") { 3 } else { 0 };
        let expected = LogPartition::of(now - chrono::Months::new(months_ago)).logs_table();
        assert_eq!(table, &expected, "{key}");
    }
    let texts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_log_text t JOIN webhook_logs l
         ON l.id = t.log_id AND l.received_at = t.received_at",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(texts, 3, "each log's search text, in the same month");
    // Each log's reply and attempt, in the log's month, and its dedup key.
    for (table, join) in [
        (
            "outbound_replies",
            "x.log_id = l.id AND x.log_received_at = l.received_at",
        ),
        (
            "delivery_attempts",
            "x.log_id = l.id AND x.log_received_at = l.received_at",
        ),
        (
            "webhook_dedup",
            "x.log_id = l.id AND x.month = date_trunc('month', l.received_at, 'UTC')",
        ),
    ] {
        let months: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT x.tableoid::regclass::text, l.tableoid::regclass::text
             FROM {table} x JOIN webhook_logs l ON {join} ORDER BY l.id"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(months.len(), 3, "{table}");
        for (companion, log) in months {
            assert_eq!(
                companion.strip_prefix(table),
                log.strip_prefix("webhook_logs"),
                "{table}"
            );
        }
    }

    let ingestor = Ingestor::new(pool.clone(), Notifier::spawn(pool.clone()), 3);
    // A key the old table knew is still refused; the duplicate lands on the old log.
    let dup = ingestor
        .ingest(&[comment_event("m3-a")], None)
        .await
        .unwrap();
    assert_eq!((dup.accepted, dup.ids[0]), (0, before[0].0));
    let old_max = before.iter().map(|r| r.0).max().unwrap();
    let fresh = ingestor
        .ingest(&[comment_event("after-migration")], None)
        .await
        .unwrap();
    assert_eq!(fresh.accepted, 1);
    assert!(fresh.ids[0] > old_max, "ids continue after the old ones");
    // The old keys are the dedup table's.
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT dedup_key FROM webhook_dedup WHERE dedup_key LIKE 'm3-%' OR dedup_key = 'now-a'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(keys, ["m3-a", "m3-b", "now-a"]);
}

/// A webhook repeated months after the first one (its log in another partition) is a
/// duplicate of it, not a new log.
#[tokio::test]
async fn a_dedup_key_stays_unique_across_months() {
    let db = fresh_db().await;
    let pool = &db.pool;
    partitions::ensure_ahead(pool, 0).await.unwrap();
    sqlx::query("SELECT hookq_log_partition_create(now() - interval '2 months')")
        .execute(pool)
        .await
        .unwrap();
    let ingestor = Ingestor::new(pool.clone(), Notifier::spawn(pool.clone()), 3);
    let event = comment_event("across-months");
    // The first time, two months ago: moved there as if it had been received then.
    let first = ingestor
        .ingest(std::slice::from_ref(&event), None)
        .await
        .unwrap();
    assert_eq!(first.accepted, 1);
    let id = first.ids[0];
    let then = chrono::Utc::now() - chrono::Months::new(2);
    for sql in [
        "UPDATE webhook_logs SET received_at = $2 WHERE id = $1",
        "UPDATE webhook_log_text SET received_at = $2 WHERE log_id = $1",
        "UPDATE webhook_dedup SET received_at = $2, month = date_trunc('month', $2, 'UTC')
         WHERE log_id = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .bind(then)
            .execute(pool)
            .await
            .unwrap();
    }
    let table: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM webhook_logs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        table,
        LogPartition::of(chrono::Utc::now() - chrono::Months::new(2)).logs_table()
    );

    let again = ingestor.ingest(&[event], None).await.unwrap();
    assert_eq!((again.accepted, again.duplicates, again.ids[0]), (0, 1, id));
    let (logs, duplicate_count): (i64, i32) =
        sqlx::query_as("SELECT count(*), max(duplicate_count) FROM webhook_logs")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((logs, duplicate_count), (1, 1));
}

/// Retention: a month past the retention period holding only processed logs is dropped
/// whole (with its search text, dedup keys, replies and attempts); a month holding a dead letter is kept,
/// and only its processed logs are deleted, row by row; the months ahead are made.
#[tokio::test]
async fn retention_drops_a_month_whole_and_keeps_a_month_with_a_dead_letter() {
    let db = fresh_db().await;
    let pool = &db.pool;
    for months_ago in [3, 4] {
        sqlx::query("SELECT hookq_log_partition_create(now() - make_interval(months => $1))")
            .bind(months_ago)
            .execute(pool)
            .await
            .unwrap();
    }
    let now = chrono::Utc::now();
    let m4 = LogPartition::of(now - chrono::Months::new(4));
    let m3 = LogPartition::of(now - chrono::Months::new(3));
    for i in 0..3 {
        old_log(pool, &format!("m4-{i}"), 4, "processed").await;
    }
    for i in 0..2 {
        old_log(pool, &format!("m3-{i}"), 3, "processed").await;
    }
    let dead = old_log(pool, "m3-dead", 3, "dead_letter").await;
    let recent = old_log(pool, "recent", 0, "processed").await;

    let purged = retention::purge(pool, 30, 1_000).await.unwrap();
    assert_eq!(
        (purged.deleted, purged.partitions_dropped),
        (5, 1),
        "3 logs with their month, 2 row by row"
    );
    assert!(!table_exists(pool, &m4.logs_table()).await);
    assert!(!table_exists(pool, &m4.text_table()).await);
    assert!(
        table_exists(pool, &m3.logs_table()).await,
        "kept: it holds a dead letter"
    );
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM webhook_logs ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(left, [dead, recent]);
    let keys: Vec<String> = sqlx::query_scalar("SELECT dedup_key FROM webhook_dedup ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["m3-dead", "recent"],
        "the dropped and deleted logs' keys are free"
    );
    let texts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_log_text")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(texts, 2);
    for table in ["outbound_replies", "delivery_attempts"] {
        let of: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT log_id FROM {table} ORDER BY 1"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            of,
            [dead, recent],
            "{table}: the gone logs' rows went with them"
        );
    }
    for (_, table) in m4.companions() {
        assert!(!table_exists(pool, &table).await, "{table}");
    }
    for ahead in 0..=2 {
        let month = LogPartition::of(now + chrono::Months::new(ahead));
        assert!(table_exists(pool, &month.logs_table()).await, "{month:?}");
    }
    // Nothing left to do.
    let again = retention::purge(pool, 30, 1_000).await.unwrap();
    assert_eq!((again.deleted, again.partitions_dropped), (0, 0));
}

/// A drop interrupted after the detach (the process died) is finished by the next run:
/// the detached month is still found, its keys forgotten and its tables dropped.
#[tokio::test]
async fn retention_finishes_a_month_left_detached() {
    let db = fresh_db().await;
    let pool = &db.pool;
    sqlx::query("SELECT hookq_log_partition_create(now() - interval '5 months')")
        .execute(pool)
        .await
        .unwrap();
    let m5 = LogPartition::of(chrono::Utc::now() - chrono::Months::new(5));
    old_log(pool, "m5-0", 5, "processed").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE webhook_logs DETACH PARTITION {}",
        m5.logs_table()
    )))
    .execute(pool)
    .await
    .unwrap();
    let purged = retention::purge(pool, 30, 1_000).await.unwrap();
    assert_eq!((purged.deleted, purged.partitions_dropped), (1, 1));
    assert!(!table_exists(pool, &m5.logs_table()).await);
    assert!(!table_exists(pool, &m5.text_table()).await);
    for table in ["webhook_dedup", "outbound_replies", "delivery_attempts"] {
        let left: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(left, 0, "{table}");
    }
    for (_, table) in m5.companions() {
        assert!(!table_exists(pool, &table).await, "{table}");
    }
}

/// The months intake writes a dedup key into (`hookq_dedup_months`, migration 0017): its
/// statement's own, and the previous one too when the statement began in a month's first
/// hour or ran into the next month, so that two statements writing one key at the same
/// time always meet on one month's unique index.
#[tokio::test]
async fn a_dedup_key_is_written_into_both_months_around_a_month_start() {
    let db = fresh_db().await;
    let months = |began: &'static str, clock: &'static str| {
        let pool = db.pool.clone();
        async move {
            let m: Vec<String> = sqlx::query_scalar(
                "SELECT to_char(m AT TIME ZONE 'UTC', 'YYYY-MM')
                 FROM hookq_dedup_months($1::timestamptz, $2::timestamptz) m ORDER BY m",
            )
            .bind(began)
            .bind(clock)
            .fetch_all(&pool)
            .await
            .unwrap();
            m
        }
    };
    let mid = "2026-12-15 12:00:00+00";
    assert_eq!(months(mid, mid).await, ["2026-12"]);
    let early = "2026-12-01 00:30:00+00";
    assert_eq!(months(early, early).await, ["2026-11", "2026-12"]);
    let after_the_hour = "2026-12-01 01:00:01+00";
    assert_eq!(months(after_the_hour, after_the_hour).await, ["2026-12"]);
    assert_eq!(
        months("2026-11-30 23:59:59+00", "2026-12-01 00:00:01+00").await,
        ["2026-11", "2026-12"],
        "began in one month, writing in the next"
    );
    // Whatever the session's time zone: the months are UTC's.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SET timezone = 'Pacific/Kiritimati'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let m: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT hookq_dedup_months($1::timestamptz, $1::timestamptz)")
            .bind("2026-12-31 20:00:00+00")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        m,
        ["2026-12-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()]
    );
}

/// A dedup key that names no log (left by two writers of one key meeting at a month's
/// first hour, in a month without a partition) is deleted by retention once past the
/// retention period; a key whose log is kept, or that is recent, stays.
#[tokio::test]
async fn retention_deletes_old_dedup_keys_that_name_no_log() {
    let db = fresh_db().await;
    let pool = &db.pool;
    // No partition for six months ago: its log and key land in the default partitions.
    let kept = old_log(pool, "kept-dead-letter", 6, "dead_letter").await;
    for (key, months_ago) in [("ghost-old", 6), ("ghost-recent", 0)] {
        sqlx::query(
            "INSERT INTO webhook_dedup (dedup_key, month, log_id, received_at)
             SELECT $1, date_trunc('month', at, 'UTC') - interval '1 month', nextval('webhook_logs_id_seq'), at
             FROM (SELECT now() - make_interval(months => $2) AS at) t",
        )
        .bind(key)
        .bind(months_ago)
        .execute(pool)
        .await
        .unwrap();
    }
    let in_default = |key: &'static str| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM webhook_dedup_default WHERE dedup_key = $1)",
        )
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert!(in_default("ghost-old").await && in_default("kept-dead-letter").await);

    retention::purge(pool, 30, 1_000).await.unwrap();

    assert!(!in_default("ghost-old").await, "an old key of no log goes");
    assert!(
        in_default("kept-dead-letter").await,
        "a kept log's key stays"
    );
    let recent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_dedup WHERE dedup_key = 'ghost-recent'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(recent, 1, "a key within retention stays");
    let log: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_logs WHERE id = $1")
        .bind(kept)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(log, 1);
}
