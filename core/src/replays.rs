//! `replays` and `replay_items` (contract section 13's shadow replay): what a replay is,
//! how it is made, and the one state machine of its items.
//!
//! A replay fixes its items when it is made: up to `limit` logs matching a filter, newest
//! first, each with a snapshot of what the log had (status, outcome, skip reason, reply).
//! Its jobs (in `hookq-tasks`) then re-run the comment use case over the items with the
//! replay's overrides, delivering nothing and writing no log, and record here what they
//! got. An item moves once:
//!
//! | transition | from | to | who |
//! |---|---|---|---|
//! | [`record`] | pending | done, failed | a replay job, for the items of its chunk |
//!
//! A stale or duplicated job re-recording an item changes nothing (`status = 'pending'`
//! is in the statement), so an item's result is the first run's. Progress is worked out
//! on read (`done / total`), so nothing but the items' own rows is written per item.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{error::Result, logs::reads::LogFilter};

/// What a replay tries instead of what the logs were processed with; every field
/// optional (none: the same use case again, e.g. after a code change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Overrides {
    /// Answer as this persona (its template too, unless overridden below).
    pub persona_id: Option<Uuid>,
    /// Render this instead of the persona template's `reply_template`.
    pub reply_template: Option<String>,
    /// Give the LLM this instead of the template's `system_prompt`.
    pub system_prompt: Option<String>,
    /// Ask this LLM model (needs `REPLY_LLM_URL`): the reply is then written by the LLM.
    pub model: Option<String>,
}

/// A replay with its progress.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Replay {
    /// Primary key.
    pub id: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The log filter it was made with, as given.
    pub filter: Value,
    /// What it tries instead.
    #[sqlx(flatten)]
    pub overrides: Overrides,
    /// Items (logs) it covers.
    pub total: i32,
    /// Items finished (`done` or `failed`).
    pub finished: i64,
    /// Items whose run failed.
    pub failed: i64,
    /// Items whose new reply or skip differs from the old one.
    pub changed: i64,
    /// When its last item finished, once all have.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One log of a replay: what it had, what the replay got.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReplayItem {
    /// The log (`webhook_logs.id`).
    pub log_id: i64,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// The log's status when the replay was made.
    pub old_status: String,
    /// Its outcome then.
    pub old_outcome: Option<String>,
    /// Its skip reason then.
    pub old_skip_reason: Option<String>,
    /// Its reply then.
    pub old_reply: Option<String>,
    /// The replay's outcome: `replied`, `skipped` or `recorded`.
    pub new_outcome: Option<String>,
    /// The replay's skip reason.
    pub new_skip_reason: Option<String>,
    /// The replay's reply.
    pub new_reply: Option<String>,
    /// Why the replay's run failed.
    pub error: Option<String>,
    /// The event's text (first 200 characters), to read the two replies against.
    pub message_preview: Option<String>,
    /// When the replay's run finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a replay run got for one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemResult {
    /// The item's log.
    pub log_id: i64,
    /// `replied`, `skipped` or `recorded`; `None` with an error.
    pub outcome: Option<String>,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// The reply it generated.
    pub reply: Option<String>,
    /// Why the run failed (the item is then `failed`).
    pub error: Option<String>,
}

/// Makes a replay of up to `limit` logs matching `filter` (newest first), on the caller's
/// transaction (which also enqueues its first job); answers its id and item count.
pub async fn create(
    conn: &mut PgConnection,
    filter: &LogFilter,
    filter_json: &Value,
    limit: i64,
    overrides: &Overrides,
) -> Result<(i64, i32)> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO replays (filter, persona_id, reply_template, system_prompt, model, total)
         VALUES ($1, $2, $3, $4, $5, 0) RETURNING id",
    )
    .bind(filter_json)
    .bind(overrides.persona_id)
    .bind(&overrides.reply_template)
    .bind(&overrides.system_prompt)
    .bind(&overrides.model)
    .fetch_one(&mut *conn)
    .await?;
    let mut q = QueryBuilder::new(
        "INSERT INTO replay_items (replay_id, log_id, old_status, old_outcome, old_skip_reason,
                                   old_reply)
         SELECT ",
    );
    q.push_bind(id)
        .push(", id, status, outcome, skip_reason, reply_text FROM (SELECT * FROM webhook_logs");
    filter.push_where(&mut q);
    q.push(" ORDER BY received_at DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(") l");
    let total = q.build().execute(&mut *conn).await?.rows_affected();
    let total = i32::try_from(total).unwrap_or(i32::MAX);
    sqlx::query("UPDATE replays SET total = $2 WHERE id = $1")
        .bind(id)
        .bind(total)
        .execute(&mut *conn)
        .await?;
    Ok((id, total))
}

/// A replay's overrides; `None` when it is gone.
pub async fn overrides(pool: &PgPool, id: i64) -> Result<Option<Overrides>> {
    Ok(sqlx::query_as(
        "SELECT persona_id, reply_template, system_prompt, model FROM replays WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The next `n` pending items of replay `id` (their log ids, ascending).
pub async fn next_pending(pool: &PgPool, id: i64, n: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT log_id FROM replay_items WHERE replay_id = $1 AND status = 'pending'
         ORDER BY log_id LIMIT $2",
    )
    .bind(id)
    .bind(n)
    .fetch_all(pool)
    .await?)
}

/// [`record`]s `results` of replay `id` (pending → done, or failed with an error) on the
/// caller's transaction; answers how many of its items are still pending.
pub async fn record(conn: &mut PgConnection, id: i64, results: &[ItemResult]) -> Result<i64> {
    let col = |f: fn(&ItemResult) -> Option<&String>| -> Vec<Option<String>> {
        results.iter().map(|r| f(r).cloned()).collect()
    };
    let ids: Vec<i64> = results.iter().map(|r| r.log_id).collect();
    sqlx::query(
        "UPDATE replay_items i
         SET status = CASE WHEN r.error IS NULL THEN 'done' ELSE 'failed' END,
             new_outcome = r.outcome, new_skip_reason = r.skip_reason, new_reply = r.reply,
             error = r.error, finished_at = now()
         FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])
             AS r(log_id, outcome, skip_reason, reply, error)
         WHERE i.replay_id = $1 AND i.log_id = r.log_id AND i.status = 'pending'",
    )
    .bind(id)
    .bind(&ids)
    .bind(col(|r| r.outcome.as_ref()))
    .bind(col(|r| r.skip_reason.as_ref()))
    .bind(col(|r| r.reply.as_ref()))
    .bind(col(|r| r.error.as_ref()))
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM replay_items WHERE replay_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?)
}

/// The columns of a [`Replay`] read with its progress.
const REPLAY_SELECT: &str = "
    SELECT r.id, r.created_at, r.filter, r.persona_id, r.reply_template, r.system_prompt,
        r.model, r.total, p.finished, p.failed, p.changed,
        CASE WHEN p.finished = r.total THEN p.last END AS finished_at
    FROM replays r
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE i.status <> 'pending') AS finished,
            count(*) FILTER (WHERE i.status = 'failed') AS failed,
            count(*) FILTER (WHERE i.status = 'done' AND (i.new_outcome, i.new_skip_reason, i.new_reply)
                IS DISTINCT FROM (i.old_outcome, i.old_skip_reason, i.old_reply)) AS changed,
            max(i.finished_at) AS last
        FROM replay_items i WHERE i.replay_id = r.id
    ) p";

/// One replay with its progress; `None` when there is none with that id.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Replay>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REPLAY_SELECT} WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Replays, newest first, and how many there are.
pub async fn list(pool: &PgPool, limit: i64, offset: i64) -> Result<(Vec<Replay>, i64)> {
    let items = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REPLAY_SELECT} ORDER BY r.id DESC LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM replays")
        .fetch_one(pool)
        .await?;
    Ok((items, total))
}

/// A page of replay `id`'s items (newest log first), with the event's text, and how many
/// it has.
pub async fn items(
    pool: &PgPool,
    id: i64,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ReplayItem>, i64)> {
    let items = sqlx::query_as(
        "SELECT i.log_id, i.status, i.old_status, i.old_outcome, i.old_skip_reason, i.old_reply,
            i.new_outcome, i.new_skip_reason, i.new_reply, i.error,
            left(l.message_text, 200) AS message_preview, i.finished_at
         FROM replay_items i LEFT JOIN webhook_logs l ON l.id = i.log_id
         WHERE i.replay_id = $1
         ORDER BY i.log_id DESC LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM replay_items WHERE replay_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok((items, total))
}
