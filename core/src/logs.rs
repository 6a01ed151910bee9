//! `webhook_logs`: ingest inserts, the guarded status transitions the use case makes,
//! and the reads the API shows.
//!
//! Each transition is one UPDATE whose WHERE clause names the states it may start from,
//! so a stale or duplicate job run can never move a finished log backwards.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    error::Result,
    events::{AccountRef, Handling, ParsedEvent},
    model::{LogStatus, Outcome, SkipReason},
};

/// pending/processing/failed → dead_letter, selecting the log by `$column = $1`.
macro_rules! dead_letter_sql {
    ($column:literal) => {
        concat!(
            "UPDATE webhook_logs SET status = 'dead_letter', error_message = $2, next_retry_at = NULL,
                processed_at = now(), updated_at = now()
             WHERE ", $column, " = $1 AND status IN ('pending', 'processing', 'failed')"
        )
    };
}

/// One stored event, as the worker and the API see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub id: i64,
    pub dedup_key: String,
    pub source: String,
    pub event_type: String,
    pub handling: String,
    pub account_id: Option<String>,
    pub user_external_id: Option<String>,
    pub persona_external_id: Option<String>,
    pub post_external_id: Option<String>,
    pub item_id: Option<String>,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub message_text: Option<String>,
    pub is_own: bool,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: serde_json::Value,
    pub integration_id: Option<Uuid>,
    pub status: String,
    pub attempts: i32,
    pub error_message: Option<String>,
    pub outcome: Option<String>,
    pub skip_reason: Option<String>,
    pub reply_text: Option<String>,
    pub persona_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub processed_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub job_id: Option<i64>,
    pub duplicate_count: i32,
    pub correlation_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl LogRow {
    pub fn handling(&self) -> Handling {
        match self.handling.as_str() {
            "reply" => Handling::Reply,
            "delivery_status" => Handling::DeliveryStatus,
            _ => Handling::Record,
        }
    }
}

fn handling_str(h: Handling) -> &'static str {
    match h {
        Handling::Reply => "reply",
        Handling::Record => "record",
        Handling::DeliveryStatus => "delivery_status",
    }
}

/// One event flattened into its `webhook_logs` columns. Built by the request that
/// received the event (so the JSON encoding of its payload is spread over the request
/// tasks, not done by whoever writes the batch) and owned, so it can travel to the
/// batching ingest writer in the tasks crate.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLog {
    pub dedup_key: String,
    pub source: &'static str,
    pub event_type: String,
    pub handling: &'static str,
    pub account_id: Option<String>,
    pub user_external_id: Option<String>,
    pub persona_external_id: Option<String>,
    pub post_external_id: Option<String>,
    pub item_id: Option<String>,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub message_text: Option<String>,
    pub is_own: bool,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The event's payload as JSON text (stored as `jsonb`).
    pub payload: String,
}

impl NewLog {
    pub fn from_event(e: &ParsedEvent) -> Self {
        let (account_id, user_external_id) = match &e.account {
            AccountRef::Account { account_id } => (Some(account_id.clone()), None),
            AccountRef::Compact { user_external_id } => (None, Some(user_external_id.clone())),
            AccountRef::None => (None, None),
        };
        NewLog {
            dedup_key: e.dedup_key.clone(),
            source: e.source.as_str(),
            event_type: e.event_type.clone(),
            handling: handling_str(e.handling),
            account_id,
            user_external_id,
            persona_external_id: e.persona_external_id.clone(),
            post_external_id: e.post_external_id.clone(),
            item_id: e.item_id.clone(),
            sender_id: e.sender_id.clone(),
            sender_name: e.sender_name.clone(),
            message_text: e.text.clone(),
            is_own: e.is_own,
            occurred_at: e.occurred_at,
            // A `serde_json::Value` always serialises (its map keys are strings).
            payload: e.payload.to_string(),
        }
    }
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<LogRow>> {
    Ok(sqlx::query_as("SELECT * FROM webhook_logs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// The log store the use case drives. A trait so the use case can be tested and
/// decorated (metrics, caching) without touching it.
#[async_trait::async_trait]
pub trait LogStore: Send + Sync {
    /// pending/failed/processing → processing, counting the run. `None` when the log is
    /// already finished (or gone): the job has nothing left to do.
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<Started>>;
    /// processing → processed.
    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        integration_id: Option<Uuid>,
    ) -> Result<bool>;
    /// processing → failed, with the time of the next run.
    async fn fail(&self, id: i64, error: &str, next_retry_at: DateTime<Utc>) -> Result<bool>;
    /// pending/processing/failed → dead_letter.
    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool>;
}

/// A log a run has just started, and the directory version the starting statement saw.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Started {
    #[sqlx(flatten)]
    pub log: LogRow,
    pub directory_version: i64,
}

#[derive(Clone)]
pub struct PgLogStore {
    pub pool: PgPool,
}

#[async_trait::async_trait]
impl LogStore for PgLogStore {
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<Started>> {
        Ok(start_many(&self.pool, &[id], &[attempt]).await?.pop())
    }

    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        integration_id: Option<Uuid>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE webhook_logs SET status = 'processed', outcome = $2, skip_reason = $3,
                    integration_id = COALESCE($4, integration_id), error_message = NULL,
                    processed_at = now(), updated_at = now()
             WHERE id = $1 AND status = 'processing'",
        )
        .bind(id)
        .bind(outcome.as_str())
        .bind(skip.map(SkipReason::as_str))
        .bind(integration_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn fail(&self, id: i64, error: &str, next_retry_at: DateTime<Utc>) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE webhook_logs SET status = 'failed', error_message = $2, next_retry_at = $3, updated_at = now()
             WHERE id = $1 AND status = 'processing'",
        )
        .bind(id)
        .bind(error)
        .bind(next_retry_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool> {
        let r = sqlx::query(dead_letter_sql!("id"))
            .bind(id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// [`LogStore::start`] for many runs in one statement: the logs that moved to
/// `processing`, in no particular order (ids must be distinct; a log that was not
/// startable is left out).
///
/// Committed asynchronously (`synchronous_commit` is switched off for its own implicit
/// transaction only): the mark is bookkeeping, like the queue's claim of the job that
/// runs it. Should a crash lose it, the claim is lost with it (WAL is replayed in
/// order), the log is `pending` again and its job runs again; everything that must
/// survive (the reply, the outcome, a delivery attempt) is committed synchronously later,
/// which also flushes this mark to disk. It also reads the directory's change counter,
/// so a caching directory is checked at no cost.
pub async fn start_many(
    pool: &PgPool,
    ids: &[i64],
    attempts: &[u32],
) -> std::result::Result<Vec<Started>, sqlx::Error> {
    let attempts: Vec<i32> = attempts
        .iter()
        .map(|a| i32::try_from(*a).unwrap_or(i32::MAX))
        .collect();
    // Planner-proof on purpose. Finding the rows by `id = ANY` (no join) and guarding the
    // status with an expression no index matches leaves the primary key as the only way
    // in: statistics taken while the table had no pending logs (just after a quiet spell)
    // otherwise make "scan every pending log through the status index, per batch" look
    // cheapest, and a backlog turns that quadratic. The btree visits the ids in order,
    // so concurrent batches lock rows in the same order and never deadlock.
    sqlx::query_as(
        "UPDATE webhook_logs l SET status = 'processing', started_at = now(), next_retry_at = NULL,
                updated_at = now(), attempts = ($2::int[])[array_position($1::bigint[], l.id)]
         WHERE l.id = ANY($1::bigint[])
           AND (l.status IN ('pending', 'failed', 'processing')) IS TRUE
           AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
         RETURNING l.*, coalesce((SELECT version FROM directory_version), 0) AS directory_version",
    )
    .bind(ids)
    .bind(&attempts)
    .fetch_all(pool)
    .await
}

/// Keeps the generated reply on a `processing` log (inside the caller's transaction,
/// which also finishes the log or stages its delivery), so a re-run or an operator
/// resend reuses the text instead of generating another. False when the log is no
/// longer `processing`.
pub async fn store_reply(
    conn: &mut PgConnection,
    id: i64,
    reply: &str,
    integration_id: Option<Uuid>,
    persona_id: Option<Uuid>,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET reply_text = $2, integration_id = COALESCE($3, integration_id),
                persona_id = COALESCE($4, persona_id), updated_at = now()
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .bind(reply)
    .bind(integration_id)
    .bind(persona_id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// processing → processed with outcome `replied`, storing the reply in the same
/// statement: a reply with `none` delivery costs one round trip and one (synchronous)
/// commit. False when the log is no longer `processing`.
pub async fn finish_with_reply(
    pool: &PgPool,
    id: i64,
    reply: &str,
    integration_id: Option<Uuid>,
    persona_id: Option<Uuid>,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                reply_text = $2, integration_id = COALESCE($3, integration_id),
                persona_id = COALESCE($4, persona_id), error_message = NULL,
                next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .bind(reply)
    .bind(integration_id)
    .bind(persona_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// processing → processed with outcome `replied` (a reply that needs no delivery, or
/// one already delivered), inside the caller's transaction.
pub async fn finish_replied(conn: &mut PgConnection, id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                error_message = NULL, next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// processing → pending: the reply is stored and its delivery job queued (inside the
/// caller's transaction, which stages both). `processing` means a worker holds the log
/// (contract section 4); until a delivery job claims an attempt for it
/// ([`crate::delivery::store::claim`] moves it back to `processing`) none does, so a
/// worker that stops meanwhile leaves nothing `processing` behind.
pub async fn await_delivery(conn: &mut PgConnection, id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET status = 'pending', updated_at = now()
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// processing → pending for the run of job `job_id` that a stopping worker handed back
/// unfinished (the queue undid its claim, so the run does not count as an attempt, and
/// the log's `attempts` goes back with it). Only while the log still belongs to that job.
pub async fn hand_back(pool: &PgPool, id: i64, job_id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET status = 'pending', attempts = greatest(attempts - 1, 0),
                updated_at = now()
         WHERE id = $1 AND job_id = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Dead-letters the log a job was processing, whatever killed the job (poison payload,
/// panic, lease lost on the last attempt), if the log still belongs to that job (an
/// operator retry attaches it to a new one). `log_id` is the log the job's payload
/// names: found by primary key; `None` (a payload too broken to decode) falls back to a
/// scan by `job_id`, which no index serves: see migration 0009.
pub async fn dead_letter_by_job(
    pool: &PgPool,
    job_id: i64,
    log_id: Option<i64>,
    error: &str,
) -> Result<bool> {
    let r = match log_id {
        Some(log_id) => sqlx::query(concat!(dead_letter_sql!("id"), " AND job_id = $3"))
            .bind(log_id)
            .bind(error)
            .bind(job_id),
        None => sqlx::query(dead_letter_sql!("job_id"))
            .bind(job_id)
            .bind(error),
    }
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// failed/dead_letter → pending, attached to a new job (operator retry). Returns false
/// when the log is in another state (answered 409).
pub async fn reset_for_retry(conn: &mut PgConnection, id: i64, job_id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_logs SET status = 'pending', job_id = $2, error_message = NULL,
                next_retry_at = NULL, attempts = 0, processed_at = NULL, outcome = NULL,
                skip_reason = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('failed', 'dead_letter')",
    )
    .bind(id)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub fn status_of(row: &LogRow) -> Option<LogStatus> {
    LogStatus::parse(&row.status)
}
