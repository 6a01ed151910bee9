//! `webhook_logs`, the pipeline's state machine: the row ([`LogRow`]), what ingest
//! stores ([`NewLog`]), the reads the worker and the API make, the use case's port
//! ([`LogStore`]), and, in [`transitions`], every write that moves a log's status, each
//! named and guarded by its declared from-states (the table of who may move a log from
//! where to where is there, and nowhere else).

pub mod partitions;
pub mod reads;
mod status;
pub mod transitions;

pub use status::{LogStatus, Outcome, SkipReason};

/// The SQL expression of a log's fair-share group (its jobs' `group_key`, contract
/// section 10), over the log columns `source`, `account_id`, `user_external_id` and
/// `post_external_id` of the row aliased `row`: the integration its account names (Meta,
/// WhatsApp); else, for the compact shape (which names a user), the integration of the
/// user's post, else the user's only integration on the platform, else the user; `''`
/// for an event that names neither. It mirrors the comment use case's resolution
/// (section 4). Intake and operator retry both use it, so a retried event joins the
/// group its first job had.
///
/// An expression rather than a SQL function on purpose: a SQL function with
/// sub-selects is not inlined, and the server parsed and planned its body once per
/// statement, ~0.75 s of server CPU per 20,000 compact webhooks even when called once
/// per batch (intake then acknowledged 5,700/s against 6,640/s with a constant group);
/// as part of the statement it is planned with it.
pub fn group_sql(row: &str) -> String {
    format!(
        "CASE
            WHEN {row}.account_id IS NOT NULL THEN {row}.source || ':' || {row}.account_id
            WHEN {row}.user_external_id IS NULL THEN ''
            ELSE coalesce(
                (SELECT gi.platform || ':' || gi.account_id
                 FROM users gu
                 JOIN integrations gi ON gi.user_id = gu.id AND gi.platform = {row}.source
                 JOIN posts gp ON gp.integration_id = gi.id AND gp.external_id = {row}.post_external_id
                 WHERE gu.external_id = {row}.user_external_id
                 LIMIT 1),
                (SELECT min(gi.platform || ':' || gi.account_id)
                 FROM users gu
                 JOIN integrations gi ON gi.user_id = gu.id AND gi.platform = {row}.source
                 WHERE gu.external_id = {row}.user_external_id
                 HAVING count(*) = 1),
                'user:' || {row}.user_external_id)
        END"
    )
}

/// The text a log is searched by (contract section 13), over the log columns of the
/// row the statement returns or reads: message text, sender name, item id and dedup
/// key, joined by U+001F so a match never spans two fields. Intake writes it once into
/// `webhook_log_text` (`migrations/0013_operator_search.sql` spells the same expression
/// for the logs stored before it; the reasons for the separate table are there).
pub const SEARCH_DOC: &str = "concat_ws(chr(31), message_text, sender_name, item_id, dedup_key)";

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
    /// Primary key (`webhook_logs.id`), the id the API and the ingest answer show.
    pub id: i64,
    /// Unique per real-world event, stable across re-deliveries (see
    /// [`ParsedEvent::dedup_key`]).
    pub dedup_key: String,
    /// Which route and platform family the event came from.
    pub source: Source,
    /// The event's stable name, e.g. `comment` or `message.received` (see
    /// [`ParsedEvent::event_type`]).
    pub event_type: String,
    /// What the pipeline does with it: reply, record, or apply a delivery report.
    pub handling: Handling,
    /// The platform account the event names (an integration's `account_id`); `None` for
    /// the compact shape or when it names none.
    pub account_id: Option<String>,
    /// The compact shape's `user_id` (a user's `external_id`); `None` for other shapes.
    pub user_external_id: Option<String>,
    /// The compact shape's `persona_id` (a persona's `external_id`), if named.
    pub persona_external_id: Option<String>,
    /// The media or post id the event names (a post's `external_id`), if any.
    pub post_external_id: Option<String>,
    /// The id a reply is addressed to: the comment id, or the message id for messages.
    pub item_id: Option<String>,
    /// For messages, the conversation peer a reply goes to (sender id or phone number).
    pub sender_id: Option<String>,
    /// The sender's display name, when the platform sent one.
    pub sender_name: Option<String>,
    /// The comment's or message's text, as parsed (may be empty: attachments, stickers).
    pub message_text: Option<String>,
    /// The platform marks this as the account's own content (a message echo, its own
    /// comment): skipped as `own_message`.
    pub is_own: bool,
    /// When the platform says the event happened; `None` when it gave no usable time.
    pub occurred_at: Option<DateTime<Utc>>,
    /// The event's own slice of the body, as received.
    pub payload: serde_json::Value,
    /// The integration the event resolved to; set by the run that resolved it (`None`
    /// until then, or when none matched).
    pub integration_id: Option<Uuid>,
    /// Where the log is in the pipeline; moved only by [`transitions`].
    pub status: LogStatus,
    /// Runs started of its processing job, counted against `HOOKQ_MAX_ATTEMPTS` (the
    /// start transition sets it; a run handed back unfinished gives its count back).
    pub attempts: i32,
    /// Why the last run failed (`failed`) or why it was given up (`dead_letter`); cleared
    /// when it finishes.
    pub error_message: Option<String>,
    /// Once `processed`: `replied`, `skipped` or `recorded`.
    pub outcome: Option<Outcome>,
    /// Why it was `skipped`; `None` for every other outcome.
    pub skip_reason: Option<SkipReason>,
    /// The generated reply, kept once generated so a re-run or a resend reuses the same
    /// text.
    pub reply_text: Option<String>,
    /// The persona that wrote the reply, if one was generated.
    pub persona_id: Option<Uuid>,
    /// When ingest stored it.
    pub received_at: DateTime<Utc>,
    /// When its latest run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached `processed` or `dead_letter`.
    pub processed_at: Option<DateTime<Utc>>,
    /// While `failed`: when the next run is due.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The queue job that processes it: the one enqueued with it at ingest, or an
    /// operator retry's new job.
    pub job_id: Option<i64>,
    /// How many times the same event arrived again after it was stored (deduplicated,
    /// nothing new stored).
    pub duplicate_count: i32,
    /// The id of the webhook request that stored it (a UUIDv7, on that request's log
    /// lines and the run's spans); `None` when stored without one.
    pub correlation_id: Option<String>,
    /// When the row last changed.
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
    /// See [`LogRow::dedup_key`].
    pub dedup_key: String,
    /// [`Source::as_str`] of the event's source.
    pub source: &'static str,
    /// See [`LogRow::event_type`].
    pub event_type: String,
    /// [`Handling::as_str`] of the event's handling.
    pub handling: &'static str,
    /// See [`LogRow::account_id`].
    pub account_id: Option<String>,
    /// See [`LogRow::user_external_id`].
    pub user_external_id: Option<String>,
    /// See [`LogRow::persona_external_id`].
    pub persona_external_id: Option<String>,
    /// See [`LogRow::post_external_id`].
    pub post_external_id: Option<String>,
    /// See [`LogRow::item_id`].
    pub item_id: Option<String>,
    /// See [`LogRow::sender_id`].
    pub sender_id: Option<String>,
    /// See [`LogRow::sender_name`].
    pub sender_name: Option<String>,
    /// The event's text ([`ParsedEvent::text`]).
    pub message_text: Option<String>,
    /// See [`LogRow::is_own`].
    pub is_own: bool,
    /// See [`LogRow::occurred_at`].
    pub occurred_at: Option<DateTime<Utc>>,
    /// The event's payload as JSON text (stored as `jsonb`).
    pub payload: String,
    /// The conversation it belongs to ([`ParsedEvent::conversation_key`]).
    pub conversation_key: Option<String>,
}

impl NewLog {
    /// The columns of one parsed event.
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

/// One log by id; `None` when there is none.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<LogRow>> {
    Ok(sqlx::query_as("SELECT * FROM webhook_logs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// The [`LogStore`] over Postgres, each method one named transition.
#[derive(Clone)]
pub struct PgLogStore {
    /// The pool the transitions run on.
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
