//! The worker's directory cache: lookups are served from memory until any write to the
//! directory tables moves `directory_version`, and a run that starts after the write
//! sees it.

use std::sync::Arc;

use hookq_core::{
    comment::ports::{Directory, LogStore},
    directory::{CachedDirectory, PgDirectory},
    logs::PgLogStore,
};
use hookq_testkit::fresh_db;
use sqlx::PgPool;

async fn version(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT version FROM directory_version")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn cached_lookups_are_dropped_when_the_directory_version_moves() {
    let db = fresh_db().await;
    hookq_testkit::demo::load(&db.pool).await.unwrap();
    let dir = CachedDirectory::new(Arc::new(PgDirectory {
        pool: db.pool.clone(),
    }));
    dir.observe_version(version(&db.pool).await);
    let user = dir.user_by_external_id("user_123").await.unwrap().unwrap();
    assert_eq!(user.name, "Demo User");
    assert!(dir.user_by_external_id("nobody").await.unwrap().is_none());

    let before = version(&db.pool).await;
    sqlx::query("UPDATE users SET name = 'Renamed' WHERE external_id = 'user_123'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (external_id, name) VALUES ('nobody', 'New')")
        .execute(&db.pool)
        .await
        .unwrap();
    let after = version(&db.pool).await;
    assert!(after > before, "every directory write bumps the version");

    // Until the new version is observed, the cache answers (no round trip)...
    let cached = dir.user_by_external_id("user_123").await.unwrap().unwrap();
    assert_eq!(cached.name, "Demo User");
    assert!(dir.user_by_external_id("nobody").await.unwrap().is_none());
    // ...an older version changes nothing...
    dir.observe_version(before);
    assert!(dir.user_by_external_id("nobody").await.unwrap().is_none());
    // ...and the version a run reads as it starts drops every stale answer.
    dir.observe_version(after);
    let fresh = dir.user_by_external_id("user_123").await.unwrap().unwrap();
    assert_eq!(fresh.name, "Renamed");
    assert_eq!(
        dir.user_by_external_id("nobody")
            .await
            .unwrap()
            .unwrap()
            .name,
        "New"
    );
}

#[tokio::test]
async fn starting_a_log_reads_the_directory_version_and_commits_the_mark() {
    let db = fresh_db().await;
    sqlx::query(
        "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload)
         VALUES ('k', 'instagram', 'comment', 'reply', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM webhook_logs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (external_id) VALUES ('u')")
        .execute(&db.pool)
        .await
        .unwrap();
    // One connection with synchronous commit on (the test cluster's default is off),
    // so the setting seen afterwards is that session's.
    let opts: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.options([("synchronous_commit", "on")]))
        .await
        .unwrap();
    let store = PgLogStore { pool: one.clone() };
    let started = store
        .start(id, 1)
        .await
        .unwrap()
        .expect("pending log starts");
    assert_eq!(started.directory_version, version(&db.pool).await);
    assert_eq!(started.log.status, hookq_core::logs::LogStatus::Processing);
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM webhook_logs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("processing", 1));
    // The session setting was local to the start's own transaction.
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(sync, "on");
}
