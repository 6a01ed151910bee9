//! `webhook_logs`, the pipeline's state machine: the row ([`LogRow`]), what ingest
//! stores ([`NewLog`]), the reads the worker and the API make, the use case's port
//! ([`LogStore`]), and, in [`transitions`], every write that moves a log's status, each
//! named and guarded by its declared from-states (the table of who may move a log from
//! where to where is there, and nowhere else).

pub mod reads;
mod status;
pub mod transitions;

pub use status::{LogStatus, Outcome, SkipReason};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    comment::ports::{LogStore, Started},
    error::Result,
    intake::{AccountRef, Handling, ParsedEvent, Source},
};

/// One stored event, as the worker and the API see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub id: i64,
    pub dedup_key: String,
    pub source: Source,
    pub event_type: String,
    pub handling: Handling,
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
    pub status: LogStatus,
    pub attempts: i32,
    pub error_message: Option<String>,
    pub outcome: Option<Outcome>,
    pub skip_reason: Option<SkipReason>,
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
    /// The conversation it belongs to: its replies are made in the order received.
    pub conversation_key: Option<String>,
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
    /// The conversation it belongs to ([`ParsedEvent::conversation_key`]).
    pub conversation_key: Option<String>,
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
            handling: e.handling.as_str(),
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
            conversation_key: e.conversation_key(),
        }
    }
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<LogRow>> {
    Ok(sqlx::query_as("SELECT * FROM webhook_logs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

#[derive(Clone)]
pub struct PgLogStore {
    pub pool: PgPool,
}

#[async_trait::async_trait]
impl LogStore for PgLogStore {
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<Started>> {
        Ok(transitions::start(&self.pool, &[id], &[attempt])
            .await?
            .pop())
    }

    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        integration_id: Option<Uuid>,
    ) -> Result<bool> {
        let moved = transitions::finish(&self.pool, &[id], outcome, skip, integration_id).await?;
        Ok(!moved.is_empty())
    }

    async fn fail(&self, id: i64, error: &str, next_retry_at: DateTime<Utc>) -> Result<bool> {
        let moved = transitions::schedule_retry(&self.pool, &[id], error, next_retry_at).await?;
        Ok(!moved.is_empty())
    }

    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool> {
        let moved =
            transitions::dead_letter(&self.pool, transitions::Owner::Logs(&[id]), error).await?;
        Ok(!moved.is_empty())
    }
}
