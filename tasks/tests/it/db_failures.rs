//! `hookq_core::db::classify` against real PostgreSQL answers: each SQLSTATE family a
//! repository or the intake can meet becomes the meaning the HTTP layer and the queue act
//! on (see the table in `core/src/db.rs`).

use std::time::Duration;

use hookq_core::db::{DbFailure, classify};
use hookq_testkit::fresh_db;

fn kind(f: &DbFailure) -> &'static str {
    match f {
        DbFailure::Unavailable => "unavailable",
        DbFailure::Retry => "retry",
        DbFailure::Refused(_) => "refused",
        DbFailure::Constraint(_) => "constraint",
        DbFailure::Unique(_) => "unique",
        DbFailure::ForeignKey(_) => "foreign_key",
        DbFailure::Other => "other",
    }
}

#[tokio::test]
async fn every_failure_family_is_classified() {
    let db = fresh_db().await;
    sqlx::raw_sql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent,
                             n int NOT NULL CHECK (n > 0), label text);
         CREATE INDEX child_label ON child (label);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1, 1, 'a');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let unindexable: String = (0..320)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "duplicate key",
            "INSERT INTO child VALUES (1, 1, 1, 'b')".into(),
            "unique",
        ),
        (
            "missing parent",
            "INSERT INTO child VALUES (2, 9, 1, 'b')".into(),
            "foreign_key",
        ),
        (
            "check",
            "INSERT INTO child VALUES (3, 1, 0, 'b')".into(),
            "constraint",
        ),
        (
            "not null",
            "INSERT INTO child VALUES (4, 1, NULL, 'b')".into(),
            "constraint",
        ),
        ("bad cast", "SELECT 'x'::int".into(), "refused"),
        ("division by zero", "SELECT 1 / 0".into(), "refused"),
        (
            "NUL in text",
            "SELECT E'a\\\\u0000b'::jsonb".into(),
            "refused",
        ),
        (
            "index row too big",
            format!("INSERT INTO child VALUES (5, 1, 1, '{unindexable}')"),
            "refused",
        ),
        ("syntax error", "SELEKT 1".into(), "other"),
        (
            "admin shutdown",
            "SELECT pg_terminate_backend(pg_backend_pid())".into(),
            "unavailable",
        ),
    ];
    for (what, sql, want) in cases {
        let e = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect_err(what);
        assert_eq!(kind(&classify(&e)), want, "{what}: {e}");
    }

    // Nothing listening: the pool times out, which is the database being unavailable.
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let e = sqlx::query("SELECT 1").execute(&dead).await.unwrap_err();
    assert_eq!(kind(&classify(&e)), "unavailable", "{e}");
}
