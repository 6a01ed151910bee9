//! The comment use case's ports: every trait through which [`process_webhook`](super::process_webhook)
//! reaches the outside world, with the values that cross them. The Postgres adapters live
//! beside their tables ([`PgDirectory`](crate::directory::PgDirectory),
//! [`PgLogStore`](crate::logs::PgLogStore), [`PgDeliveryStore`](crate::delivery::PgDeliveryStore));
//! the reply outbox and the LLM generator in `hookq-tasks`, next to the queue and the
//! outbound HTTP client; in-memory fakes of all five in `comment::fakes` (built for the
//! crate's tests, and for other crates' with the `fakes` feature).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    error::Result,
    logs::{LogRow, Outcome, SkipReason},
    resources::{Integration, Persona, PersonaTemplate, Post, ReplyDelivery, User},
};

// ------------------------------------------------------------------------- directory

/// Read-only lookups of the admin resources an event needs.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user with this `external_id`, the compact shape's `user_id`.
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>>;
    /// The integration for this platform account (`platform`, `account_id` are unique
    /// together).
    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>>;
    /// The user's integrations on `platform`, oldest first (the compact shape's
    /// integration when there is exactly one).
    async fn integrations_of_user(&self, user_id: Uuid, platform: &str)
    -> Result<Vec<Integration>>;
    /// The integration with this id.
    async fn integration(&self, id: Uuid) -> Result<Option<Integration>>;
    /// The post with this `external_id` on this integration (unique together).
    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>>;
    /// A post with this external id on any of the user's integrations for `platform`
    /// (the compact shape names the post but not the account).
    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>>;
    /// The persona with this id, with its template.
    async fn persona(&self, id: Uuid) -> Result<Option<(Persona, PersonaTemplate)>>;
    /// The persona with this `external_id` (the compact shape's `persona_id`), with its
    /// template.
    async fn persona_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<(Persona, PersonaTemplate)>>;
    /// The directory's change counter as a statement that started a log read it
    /// (`directory_version`, bumped by triggers on every write to the tables above). A
    /// caching directory drops what it holds when the counter moves past what it was
    /// filled under; an uncached one has nothing to do.
    fn observe_version(&self, _version: i64) {}
}

// ---------------------------------------------------------------------------- logs

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
    /// The log as the start transition left it (`processing`, `attempts` counted).
    #[sqlx(flatten)]
    pub log: LogRow,
    /// The `directory_version` counter as the starting statement read it (see
    /// [`Directory::observe_version`]).
    pub directory_version: i64,
}

// ------------------------------------------------------------------------ replies

/// Everything a generator may use; built by the use case from the log and its data.
#[derive(Debug, Clone)]
pub struct ReplyContext<'a> {
    /// The sender's display name, else their id (`{sender_name}`); empty when neither is
    /// known.
    pub sender_name: &'a str,
    /// The event's message text (`{message}`); empty when it has none.
    pub message: &'a str,
    /// The persona's name (`{persona_name}`).
    pub persona_name: &'a str,
    /// The post's caption (`{post_caption}`); empty when the post is unknown.
    pub post_caption: &'a str,
    /// The persona template's `reply_template`, rendered when no LLM is configured.
    pub reply_template: &'a str,
    /// The persona template's `system_prompt`, the LLM's instructions when one is
    /// configured.
    pub system_prompt: Option<&'a str>,
}

/// Writes the reply text for one event.
#[async_trait]
pub trait ReplyGenerator: Send + Sync {
    /// The reply for `ctx`; an error is transient or permanent as for any other step.
    async fn generate(&self, ctx: &ReplyContext<'_>) -> Result<String>;
}

// ----------------------------------------------------------------------- delivery

/// What the use case hands the outbox once a reply exists.
#[derive(Debug, Clone)]
pub struct ReplyRecord<'a> {
    /// The log the reply answers.
    pub log_id: i64,
    /// The reply text.
    pub text: &'a str,
    /// The integration the reply is for; `None` when the event resolved to none.
    pub integration_id: Option<Uuid>,
    /// The persona that wrote it, if any.
    pub persona_id: Option<Uuid>,
    /// How the reply leaves: the integration's `reply_delivery` (`none` without an
    /// integration).
    pub delivery: ReplyDelivery,
}

/// What recording a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStored {
    /// `none` delivery (or already delivered): the log is `processed`, outcome `replied`.
    Finished,
    /// Staged with its delivery job; the log waits `pending` for it (no worker holds it)
    /// until delivery ends.
    Delivering,
    /// A delivery of this reply is already under way (a stale re-run of the log's job).
    AlreadyDelivering,
    /// The log was no longer `processing`: another run finished it; nothing written.
    NotProcessing,
}

/// Stores a generated reply and, in the same transaction, either finishes the log or
/// stages its delivery with the job that will deliver it. Implemented next to the queue
/// (`hookq-tasks`), so the use case never sees queue types.
#[async_trait]
pub trait ReplyOutbox: Send + Sync {
    /// Stores `reply` and finishes or stages its log (see [`ReplyStored`]).
    async fn record_reply(&self, reply: &ReplyRecord<'_>) -> Result<ReplyStored>;
}

/// A platform's report about one of our outbound messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    /// The id the platform gave the message when we sent it.
    pub message_id: String,
    /// `sent`, `delivered`, `read` or `failed` (as the platform names it).
    pub status: String,
    /// The error the platform gave with a `failed` status, as one line.
    pub error: Option<String>,
    /// When the platform says it happened (the event's own time), if it said.
    pub at: Option<DateTime<Utc>>,
}

/// The outbound reply a report matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The matched `outbound_replies.id`.
    pub reply_id: i64,
    /// The integration that reply was sent for, if it still exists.
    pub integration_id: Option<Uuid>,
}

/// A Bridge `connection.status` event.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionReport {
    /// What the status is kept under: the phone number when the event names one, else the
    /// session id (else `default`).
    pub connection_key: String,
    /// The Bridge's `data.session_id`, if any.
    pub session_id: Option<String>,
    /// The account's phone number (`data.phone_number` or a like field), if any.
    pub phone_number: Option<String>,
    /// The connection's state as reported (`data.status` or `data.state`, e.g.
    /// `connected`).
    pub status: String,
    /// When the Bridge says the status changed (the event's own time), if it said.
    pub at: Option<DateTime<Utc>>,
    /// The event's `data` as received.
    pub data: Value,
}

/// Where the use case sends delivery reports and connection statuses.
#[async_trait]
pub trait DeliveryReports: Send + Sync {
    /// Applies the report to the outbound reply whose provider message id it names;
    /// `None` when no reply matches.
    async fn apply_report(&self, report: &ProviderReport) -> Result<Option<Matched>>;
    /// Keeps the report as its connection's latest status (unless a newer one is known).
    async fn record_connection(
        &self,
        log_id: i64,
        integration_id: Option<Uuid>,
        report: &ConnectionReport,
    ) -> Result<()>;
}
