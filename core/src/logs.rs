//! `webhook_logs`: ingest inserts, the guarded status transitions the use case makes,
//! and the reads the API shows.
//!
//! Each transition is one UPDATE whose WHERE clause names the states it may start from,
//! so a stale or duplicate job run can never move a finished log backwards.

use std::collections::HashMap;

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

/// What ingest answers for one event of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    /// False when the dedup key was already known (or repeated earlier in the body).
    pub new: bool,
}

fn handling_str(h: Handling) -> &'static str {
    match h {
        Handling::Reply => "reply",
        Handling::Record => "record",
        Handling::DeliveryStatus => "delivery_status",
    }
}

/// Inserts the events in one statement. A known dedup key bumps `duplicate_count` and
/// returns the existing id; keys repeated inside the body count as duplicates of their
/// first occurrence. Results are in input order.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[ParsedEvent],
    correlation_id: Option<&str>,
) -> Result<Vec<Stored>> {
    // First occurrence of each key is sent to the database; later ones map onto it.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let mut unique: Vec<&ParsedEvent> = Vec::with_capacity(events.len());
    let mut slot = Vec::with_capacity(events.len());
    for e in events {
        let idx = *first.entry(e.dedup_key.as_str()).or_insert_with(|| {
            unique.push(e);
            unique.len() - 1
        });
        slot.push(idx);
    }

    let mut cols: Vec<Vec<Option<String>>> =
        (0..12).map(|_| Vec::with_capacity(unique.len())).collect();
    let mut is_own = Vec::with_capacity(unique.len());
    let mut occurred = Vec::with_capacity(unique.len());
    let mut payloads = Vec::with_capacity(unique.len());
    for e in &unique {
        let (account, user) = match &e.account {
            AccountRef::Account { account_id } => (Some(account_id.clone()), None),
            AccountRef::Compact { user_external_id } => (None, Some(user_external_id.clone())),
            AccountRef::None => (None, None),
        };
        let vals = [
            Some(e.dedup_key.clone()),
            Some(e.source.as_str().to_string()),
            Some(e.event_type.clone()),
            Some(handling_str(e.handling).to_string()),
            account,
            user,
            e.persona_external_id.clone(),
            e.post_external_id.clone(),
            e.item_id.clone(),
            e.sender_id.clone(),
            e.sender_name.clone(),
            e.text.clone(),
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
        is_own.push(e.is_own);
        occurred.push(e.occurred_at);
        payloads.push(e.payload.clone());
    }

    // `xmax = 0` is true only for rows this statement inserted (not conflict-updated).
    let rows: Vec<(i64, String, bool)> = sqlx::query_as(
        r#"
        INSERT INTO webhook_logs (dedup_key, source, event_type, handling, account_id,
            user_external_id, persona_external_id, post_external_id, item_id, sender_id,
            sender_name, message_text, is_own, occurred_at, payload, correlation_id)
        SELECT * , $16 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
            $12::text[], $13::bool[], $14::timestamptz[], $15::jsonb[])
        ON CONFLICT (dedup_key) DO UPDATE
            SET duplicate_count = webhook_logs.duplicate_count + 1, updated_at = now()
        RETURNING id, dedup_key, (xmax = 0) AS inserted
        "#,
    )
    .bind(&cols[0])
    .bind(&cols[1])
    .bind(&cols[2])
    .bind(&cols[3])
    .bind(&cols[4])
    .bind(&cols[5])
    .bind(&cols[6])
    .bind(&cols[7])
    .bind(&cols[8])
    .bind(&cols[9])
    .bind(&cols[10])
    .bind(&cols[11])
    .bind(&is_own)
    .bind(&occurred)
    .bind(&payloads)
    .bind(correlation_id)
    .fetch_all(&mut *conn)
    .await?;

    // RETURNING order is not guaranteed: match rows back by key.
    let by_key: HashMap<&str, (i64, bool)> = rows
        .iter()
        .map(|(id, key, inserted)| (key.as_str(), (*id, *inserted)))
        .collect();
    let mut seen = vec![false; unique.len()];
    slot.into_iter()
        .map(|i| {
            let &(id, inserted) = by_key.get(unique[i].dedup_key.as_str()).ok_or_else(|| {
                crate::error::Error::Invalid(format!("no row returned for {}", unique[i].dedup_key))
            })?;
            let new = inserted && !seen[i];
            seen[i] = true;
            Ok(Stored { id, new })
        })
        .collect()
}

/// Records which job processes each new log (same transaction as the insert).
pub async fn set_job_ids(conn: &mut PgConnection, log_ids: &[i64], job_ids: &[i64]) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_logs l SET job_id = t.job FROM unnest($1::bigint[], $2::bigint[]) AS t(id, job)
         WHERE l.id = t.id",
    )
    .bind(log_ids)
    .bind(job_ids)
    .execute(conn)
    .await?;
    Ok(())
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
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<LogRow>>;
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

#[derive(Clone)]
pub struct PgLogStore {
    pub pool: PgPool,
}

#[async_trait::async_trait]
impl LogStore for PgLogStore {
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<LogRow>> {
        Ok(sqlx::query_as(
            "UPDATE webhook_logs SET status = 'processing', attempts = $2, started_at = now(),
                    next_retry_at = NULL, updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'failed', 'processing')
             RETURNING *",
        )
        .bind(id)
        .bind(attempt as i32)
        .fetch_optional(&self.pool)
        .await?)
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

/// Dead-letters the log a job was processing, whatever killed the job (poison payload,
/// panic, lease lost on the last attempt). Found by `job_id`.
pub async fn dead_letter_by_job(pool: &PgPool, job_id: i64, error: &str) -> Result<bool> {
    let r = sqlx::query(dead_letter_sql!("job_id"))
        .bind(job_id)
        .bind(error)
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
