//! `/api/webhook-logs`: list, stats, throughput, the live feed (SSE), one log, retry
//! (one or every match of a filter) and delete.
//!
//! The live feed's document describes ONE event ([`LiveEvents`]): an object whose `data`
//! is a [`LiveUpdate`] as JSON, the model of OpenAPI 3.2's `itemSchema` for
//! `text/event-stream`, which schemathesis 4 applies to the `schema` of earlier versions
//! and checks every event against. poem-openapi's `EventStream` declares the stream as an
//! array of updates, which no event is (schemathesis 4: "ST108 SSE event violates
//! schema").

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use hookq_core::logs::{
    LogRow, LogStatus,
    reads::{self as stats, GroupCount, LogFilter, LogSummary},
};
use hookq_tasks::{ops::retry, queue};
use poem::{IntoResponse, Response, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::{EventStream, Json, Payload},
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::Type,
};
use uuid::Uuid;

use super::{AdminError, AdminResult, Deleted, OpsState, Page, paging, tasks::Job};
use crate::{ApiTags, auth::AdminAuth, error::ApiError, state::AppState};

/// `/api/webhook-logs`: list, stats, throughput, live feed, one log, retry, delete.
pub struct LogsApi;

/// A log in a list: everything but the payload.
#[derive(Debug, Clone, Object)]
pub struct LogItem {
    /// The log's id, as the ingest answer's `ids` name it.
    pub id: i64,
    /// `instagram`, `facebook` or `whatsapp`: the route and platform family it came from.
    pub source: String,
    /// The event's stable name, e.g. `comment`, `message` or `message.received`.
    pub event_type: String,
    /// `pending`, `processing`, `processed`, `failed` or `dead_letter`.
    pub status: String,
    /// Runs of its processing job so far, counted against `HOOKQ_MAX_ATTEMPTS`.
    pub attempts: i32,
    /// Once `processed`: `replied`, `skipped` or `recorded`.
    #[oai(nullable)]
    pub outcome: Option<String>,
    /// Why a `skipped` log got no reply: `own_message`, `empty`, `blocklisted`, `spam`,
    /// `replies_disabled` or `too_long`.
    #[oai(nullable)]
    pub skip_reason: Option<String>,
    /// Why the last run failed (`failed`), or why the log was given up (`dead_letter`).
    #[oai(nullable)]
    pub error_message: Option<String>,
    /// The integration the event resolved to, once a run has resolved it.
    #[oai(nullable)]
    pub integration_id: Option<Uuid>,
    /// The sender's display name, when the platform sent one.
    #[oai(nullable)]
    pub sender_name: Option<String>,
    /// The first 200 characters of the event's text.
    #[oai(nullable)]
    pub message_preview: Option<String>,
    /// The generated reply, once there is one.
    #[oai(nullable)]
    pub reply_text: Option<String>,
    /// Its processing job (see `GET /api/tasks/{id}`); an operator retry gives it a new
    /// one.
    #[oai(nullable)]
    pub job_id: Option<i64>,
    /// How many times the same event (same dedup key) arrived again after it was stored.
    pub duplicate_count: i32,
    /// The id of the webhook request that stored it, as the API's log lines name it.
    #[oai(nullable)]
    pub correlation_id: Option<String>,
    /// When it was stored.
    pub received_at: DateTime<Utc>,
    /// When it became `processed` or `dead_letter`.
    #[oai(nullable)]
    pub processed_at: Option<DateTime<Utc>>,
    /// While `failed`: when the next run is due.
    #[oai(nullable)]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When the log last changed.
    pub updated_at: DateTime<Utc>,
    /// The conversation it belongs to (a comment thread or a direct conversation;
    /// `GET /api/conversations/{key}`); `null` for an event that gets no reply.
    #[oai(nullable)]
    pub conversation_key: Option<String>,
}

impl From<LogSummary> for LogItem {
    fn from(l: LogSummary) -> Self {
        LogItem {
            id: l.id,
            source: l.source.as_str().into(),
            event_type: l.event_type,
            status: l.status.as_str().into(),
            attempts: l.attempts,
            outcome: l.outcome.map(|o| o.as_str().into()),
            skip_reason: l.skip_reason.map(|s| s.as_str().into()),
            error_message: l.error_message,
            integration_id: l.integration_id,
            sender_name: l.sender_name,
            message_preview: l.message_preview,
            reply_text: l.reply_text,
            job_id: l.job_id,
            duplicate_count: l.duplicate_count,
            correlation_id: l.correlation_id,
            received_at: l.received_at,
            processed_at: l.processed_at,
            next_retry_at: l.next_retry_at,
            updated_at: l.updated_at,
            conversation_key: l.conversation_key,
        }
    }
}

/// One log, whole: the payload as received, what the pipeline made of it, and its job
/// with every failed attempt.
#[derive(Debug, Clone, Object)]
pub struct LogDetail {
    /// The log's id.
    pub id: i64,
    /// Unique per real-world event and stable across re-deliveries, e.g.
    /// `ig:comment:17912345678901234`.
    pub dedup_key: String,
    /// `instagram`, `facebook` or `whatsapp`.
    pub source: String,
    /// The event's stable name, e.g. `comment`, `message` or `message.received`.
    pub event_type: String,
    /// `reply`, `record` or `delivery_status`.
    pub handling: String,
    /// `pending`, `processing`, `processed`, `failed` or `dead_letter`.
    pub status: String,
    /// Runs of its processing job so far, counted against `HOOKQ_MAX_ATTEMPTS`.
    pub attempts: i32,
    /// Why the last run failed (`failed`), or why the log was given up (`dead_letter`).
    #[oai(nullable)]
    pub error_message: Option<String>,
    /// Once `processed`: `replied`, `skipped` or `recorded`.
    #[oai(nullable)]
    pub outcome: Option<String>,
    /// Why a `skipped` log got no reply: `own_message`, `empty`, `blocklisted`, `spam`,
    /// `replies_disabled` or `too_long`.
    #[oai(nullable)]
    pub skip_reason: Option<String>,
    /// The generated reply, once there is one.
    #[oai(nullable)]
    pub reply_text: Option<String>,
    /// The platform account the event names (an integration's `account_id`).
    #[oai(nullable)]
    pub account_id: Option<String>,
    /// The compact shape's `user_id` (a user's `external_id`).
    #[oai(nullable)]
    pub user_external_id: Option<String>,
    /// The compact shape's `persona_id` (a persona's `external_id`).
    #[oai(nullable)]
    pub persona_external_id: Option<String>,
    /// The media or post id the event names (a post's `external_id`).
    #[oai(nullable)]
    pub post_external_id: Option<String>,
    /// What a reply answers: the comment id, or the message id for messages.
    #[oai(nullable)]
    pub item_id: Option<String>,
    /// For messages: the conversation peer a reply goes to (sender id or phone number).
    #[oai(nullable)]
    pub sender_id: Option<String>,
    /// The sender's display name, when the platform sent one.
    #[oai(nullable)]
    pub sender_name: Option<String>,
    /// The comment's or message's text.
    #[oai(nullable)]
    pub message_text: Option<String>,
    /// The integration the event resolved to, once a run has resolved it.
    #[oai(nullable)]
    pub integration_id: Option<Uuid>,
    /// The persona that wrote the reply.
    #[oai(nullable)]
    pub persona_id: Option<Uuid>,
    /// The event exactly as received (one event of a batch).
    pub payload: serde_json::Value,
    /// When the platform says the event happened.
    #[oai(nullable)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// When it was stored.
    pub received_at: DateTime<Utc>,
    /// When its latest run started.
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it became `processed` or `dead_letter`.
    #[oai(nullable)]
    pub processed_at: Option<DateTime<Utc>>,
    /// While `failed`: when the next run is due.
    #[oai(nullable)]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Its processing job; an operator retry gives it a new one.
    #[oai(nullable)]
    pub job_id: Option<i64>,
    /// How many times the same event (same dedup key) arrived again after it was stored.
    pub duplicate_count: i32,
    /// The id of the webhook request that stored it, as the API's log lines name it.
    #[oai(nullable)]
    pub correlation_id: Option<String>,
    /// When the log last changed.
    pub updated_at: DateTime<Utc>,
    /// The conversation it belongs to (`GET /api/conversations/{key}`); `null` for an
    /// event that gets no reply.
    #[oai(nullable)]
    pub conversation_key: Option<String>,
    /// The processing job, with each failed run's error (null once the archive has
    /// pruned it).
    #[oai(nullable)]
    pub job: Option<Job>,
    /// The reply's delivery (`callback` / `graph_api` integrations), with every attempt.
    #[oai(nullable)]
    pub delivery: Option<Delivery>,
}

/// Where a reply is on its way out.
#[derive(Debug, Clone, Object)]
pub struct Delivery {
    /// `callback` or `graph_api`.
    pub kind: String,
    /// Stable for the log: receivers dedupe on it, resends reuse it.
    pub webhook_id: String,
    /// `pending`, `sending`, `retrying`, `delivered`, `failed` or `unknown`.
    pub status: String,
    /// The latest attempt's error.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// While `retrying`: when the next attempt is due.
    #[oai(nullable)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the endpoint took the reply.
    #[oai(nullable)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The platform's id for the sent message, and what it later reported about it.
    #[oai(nullable)]
    pub provider_message_id: Option<String>,
    /// The platform's latest report about the message: `sent`, `delivered`, `read` or
    /// `failed`.
    #[oai(nullable)]
    pub provider_status: Option<String>,
    /// The error the platform reported with a `failed` status.
    #[oai(nullable)]
    pub provider_error: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttemptView>,
}

/// One request hookq made to deliver a reply.
#[derive(Debug, Clone, Object)]
pub struct DeliveryAttemptView {
    /// 1-based over the reply's life.
    pub attempt: i32,
    /// `in_flight`, `succeeded`, `failed` or `unknown` (cut off by a crash).
    pub state: String,
    /// The endpoint, without query string or credentials.
    pub url: String,
    /// The HTTP status the endpoint answered; null when no answer came.
    #[oai(nullable)]
    pub status_code: Option<i32>,
    /// How long the request took, in milliseconds; null while in flight or when cut off.
    #[oai(nullable)]
    pub duration_ms: Option<i32>,
    /// Why the attempt failed, when it did.
    #[oai(nullable)]
    pub error: Option<String>,
    /// When the attempt was committed, before its request left.
    pub started_at: DateTime<Utc>,
    /// When its outcome was recorded; null while `in_flight`.
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Delivery {
    pub(super) fn new(
        r: hookq_core::delivery::OutboundReply,
        attempts: Vec<hookq_core::delivery::DeliveryAttempt>,
    ) -> Self {
        Delivery {
            kind: r.kind,
            webhook_id: r.webhook_id,
            status: r.status.as_str().into(),
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            delivered_at: r.delivered_at,
            provider_message_id: r.provider_message_id,
            provider_status: r.provider_status,
            provider_error: r.provider_error,
            attempts: attempts
                .into_iter()
                .map(|a| DeliveryAttemptView {
                    attempt: a.attempt,
                    state: a.state,
                    url: a.url,
                    status_code: a.status_code,
                    duration_ms: a.duration_ms,
                    error: a.error,
                    started_at: a.started_at,
                    finished_at: a.finished_at,
                })
                .collect(),
        }
    }
}

impl LogDetail {
    fn new(l: LogRow, job: Option<Job>, delivery: Option<Delivery>) -> Self {
        LogDetail {
            id: l.id,
            dedup_key: l.dedup_key,
            source: l.source.as_str().into(),
            event_type: l.event_type,
            handling: l.handling.as_str().into(),
            status: l.status.as_str().into(),
            attempts: l.attempts,
            error_message: l.error_message,
            outcome: l.outcome.map(|o| o.as_str().into()),
            skip_reason: l.skip_reason.map(|s| s.as_str().into()),
            reply_text: l.reply_text,
            account_id: l.account_id,
            user_external_id: l.user_external_id,
            persona_external_id: l.persona_external_id,
            post_external_id: l.post_external_id,
            item_id: l.item_id,
            sender_id: l.sender_id,
            sender_name: l.sender_name,
            message_text: l.message_text,
            integration_id: l.integration_id,
            persona_id: l.persona_id,
            payload: l.payload,
            occurred_at: l.occurred_at,
            received_at: l.received_at,
            started_at: l.started_at,
            processed_at: l.processed_at,
            next_retry_at: l.next_retry_at,
            job_id: l.job_id,
            duplicate_count: l.duplicate_count,
            correlation_id: l.correlation_id,
            updated_at: l.updated_at,
            conversation_key: l.conversation_key,
            job,
            delivery,
        }
    }
}

/// Logs per status (every status present, zero or not).
#[derive(Debug, Clone, Default, Object)]
pub struct StatusCounts {
    /// Stored, job enqueued, not yet picked up.
    pub pending: i64,
    /// A worker holds it.
    pub processing: i64,
    /// Done: replied, skipped or recorded.
    pub processed: i64,
    /// The last attempt failed; another is scheduled.
    pub failed: i64,
    /// Out of attempts or failed permanently.
    pub dead_letter: i64,
}

impl StatusCounts {
    fn add(&mut self, status: &str, n: i64) {
        match LogStatus::parse(status) {
            Some(LogStatus::Pending) => self.pending += n,
            Some(LogStatus::Processing) => self.processing += n,
            Some(LogStatus::Processed) => self.processed += n,
            Some(LogStatus::Failed) => self.failed += n,
            Some(LogStatus::DeadLetter) => self.dead_letter += n,
            None => {}
        }
    }

    /// Folds per-group counts into per-status counts.
    pub fn from_groups(groups: &[GroupCount]) -> Self {
        let mut c = StatusCounts::default();
        for g in groups {
            c.add(g.status.as_str(), g.count);
        }
        c
    }
}

/// A name and how many logs have it.
#[derive(Debug, Clone, Object)]
pub struct NamedCount {
    /// The event type or source.
    pub name: String,
    /// Logs with it.
    pub count: i64,
}

fn fold_by(groups: &[GroupCount], key: impl Fn(&GroupCount) -> &str) -> Vec<NamedCount> {
    let mut m: HashMap<&str, i64> = HashMap::new();
    for g in groups {
        *m.entry(key(g)).or_default() += g.count;
    }
    let mut v: Vec<NamedCount> = m
        .into_iter()
        .map(|(name, count)| NamedCount {
            name: name.to_owned(),
            count,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    v
}

/// Receipt-to-processed time of the logs processed in the window.
#[derive(Debug, Clone, Object)]
pub struct ProcessingTime {
    /// The window, in minutes: `window_minutes` as asked (default 60, 1 to 10,080).
    pub window_minutes: u32,
    /// Logs processed in the window.
    pub processed: i64,
    /// Mean milliseconds from receipt to `processed`; null when none was processed.
    #[oai(nullable)]
    pub mean_ms: Option<f64>,
    /// Median milliseconds from receipt to `processed`; null when none was processed.
    #[oai(nullable)]
    pub p50_ms: Option<f64>,
    /// 95th percentile milliseconds from receipt to `processed`; null when none was
    /// processed.
    #[oai(nullable)]
    pub p95_ms: Option<f64>,
    /// 99th percentile milliseconds from receipt to `processed`; null when none was
    /// processed.
    #[oai(nullable)]
    pub p99_ms: Option<f64>,
    /// Mean runs per processed log (above 1 when retries happened).
    #[oai(nullable)]
    pub mean_attempts: Option<f64>,
}

/// The queue's backlog.
#[derive(Debug, Clone, Object)]
pub struct QueueState {
    /// Jobs ready to run and not yet claimed.
    pub depth: i64,
    /// Jobs a worker is running now.
    pub running: i64,
    /// Jobs waiting for a scheduled retry.
    pub scheduled_retries: i64,
    /// Jobs enqueued to run later, never run yet.
    pub scheduled: i64,
    /// Jobs that will not run again (kept in the archive).
    pub dead: i64,
    /// Seconds the oldest ready job has waited.
    #[oai(nullable)]
    pub oldest_pending_age_secs: Option<f64>,
}

/// The last 60 seconds.
#[derive(Debug, Clone, Object)]
pub struct Throughput {
    /// Logs received in the last 60 seconds.
    pub received: i64,
    /// Logs processed in the last 60 seconds.
    pub processed: i64,
    /// Logs now `failed` or `dead_letter` whose last change fell in the last 60 seconds.
    pub failed: i64,
    /// `received` per second.
    pub received_per_sec: f64,
    /// `processed` per second.
    pub processed_per_sec: f64,
}

/// `GET /api/webhook-logs/stats`: the logs and the queue at a glance.
#[derive(Debug, Clone, Object)]
pub struct LogStats {
    /// Every log kept.
    pub total: i64,
    /// Logs per status.
    pub by_status: StatusCounts,
    /// Largest first.
    pub by_event_type: Vec<NamedCount>,
    /// Logs per source, largest first.
    pub by_source: Vec<NamedCount>,
    /// processed / (processed + dead_letter); null before anything finished.
    #[oai(nullable)]
    pub success_rate: Option<f64>,
    /// Receipt-to-processed time over the window.
    pub processing_time: ProcessingTime,
    /// The job queue, every job type included.
    pub queue: QueueState,
    /// Counts over the last 60 seconds.
    pub last_minute: Throughput,
}

/// One minute of the throughput chart.
#[derive(Debug, Clone, Object)]
pub struct Minute {
    /// The minute's start (UTC).
    pub minute: DateTime<Utc>,
    /// Logs received in the minute.
    pub received: i64,
    /// Logs processed in the minute.
    pub processed: i64,
    /// Logs now failed or dead-lettered whose last change fell in this minute.
    pub failed: i64,
}

/// The filters a bulk action selects logs by: the list's (`q` too), except `status`,
/// which each action narrows to the statuses it may act on. Every field optional;
/// flattened into each action's body ([`RetryFilter`], [`DeleteFilter`],
/// [`super::replays::ReplayFilter`]), so the JSON is the same flat object it always was.
#[derive(Debug, Clone, Default, Object)]
pub struct LogSelection {
    /// Only logs of this event type.
    pub event_type: Option<String>,
    /// Only logs from this source: `instagram`, `facebook` or `whatsapp`.
    pub source: Option<String>,
    /// Only logs resolved to this integration.
    pub integration_id: Option<Uuid>,
    /// Only logs received at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only logs received before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only logs whose message text, sender name, item id or dedup key contains this
    /// (any case), as the list's `q`.
    pub q: Option<String>,
}

impl LogSelection {
    /// The list's filter for these fields and `status` (checked as the list checks them).
    pub(crate) fn filter(self, status: Option<String>) -> Result<LogFilter, AdminError> {
        filter_from(
            status,
            self.event_type,
            self.source,
            self.integration_id,
            self.since,
            self.until,
            self.q,
        )
    }
}

/// Which logs to retry; every field optional. `status` may only be `failed` or
/// `dead_letter` (both when absent).
#[derive(Debug, Clone, Default, Object)]
pub struct RetryFilter {
    /// `failed` or `dead_letter`; both when absent.
    pub status: Option<String>,
    /// The list's other filters.
    #[oai(flatten)]
    pub selection: LogSelection,
    /// At most this many logs (oldest first) per call; default 1,000, at most 10,000.
    pub limit: Option<u32>,
}

/// Which logs to delete; every field optional, as the list's filters. Logs still in
/// flight (`pending`, `processing`) are never deleted by a filter: their runs hold them.
#[derive(Debug, Clone, Default, Object)]
pub struct DeleteFilter {
    /// `processed`, `failed` or `dead_letter`; all three when absent.
    pub status: Option<String>,
    /// The list's other filters.
    #[oai(flatten)]
    pub selection: LogSelection,
    /// At most this many logs (oldest first) per call; default 1,000, at most 10,000.
    pub limit: Option<u32>,
}

/// What a delete by filter did.
#[derive(Debug, Clone, Object)]
pub struct DeletedMany {
    /// Logs deleted.
    pub deleted: u32,
    /// Their ids.
    pub ids: Vec<i64>,
}

/// What a retry did.
#[derive(Debug, Clone, Object)]
pub struct Retried {
    /// Logs put back to `pending`, each with a new job.
    pub retried: u32,
    /// The ids of the logs retried.
    pub ids: Vec<i64>,
}

/// One push of the live feed: logs created or changed since the last push, oldest
/// change first, and (every two seconds) the counts by status.
#[derive(Debug, Clone, Object)]
pub struct LiveUpdate {
    /// Logs created or changed since the previous event, oldest change first.
    pub logs: Vec<LogItem>,
    /// Logs per status, every two seconds; null in the events between.
    #[oai(nullable)]
    pub counts: Option<StatusCounts>,
}

/// The live feed's answer: `text/event-stream`, one [`LiveUpdate`] per event, as JSON in
/// its `data` line, and keep-alive comments between events. Sent as poem-openapi's
/// `EventStream` sends it; documented as one event (see the module documentation).
pub struct LiveEvents(EventStream<futures::stream::BoxStream<'static, LiveUpdate>>);

fn inline(schema: MetaSchema) -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(schema))
}

impl Payload for LiveEvents {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        inline(MetaSchema {
            title: Some("LiveUpdate event".into()),
            description: Some(
                "One server-sent event of the live feed (each event is described, not the \
                 endless stream). Comment lines between events keep the connection alive.",
            ),
            required: vec!["data"],
            properties: vec![
                (
                    "data",
                    inline(MetaSchema {
                        description: Some(
                            "A `LiveUpdate` as JSON: `{\"logs\": [LogItem, …], \"counts\": StatusCounts}`, \
                             the logs created or changed since the previous event (oldest change \
                             first) and, every two seconds, `counts` (logs per status).",
                        ),
                        ..MetaSchema::new("string")
                    }),
                ),
                (
                    "event",
                    inline(MetaSchema {
                        description: Some("Always `message`: the feed names no event type."),
                        enum_items: vec![serde_json::json!("message")],
                        ..MetaSchema::new("string")
                    }),
                ),
            ],
            ..MetaSchema::new("object")
        })
    }

    fn register(registry: &mut Registry) {
        LiveUpdate::register(registry);
    }
}

impl IntoResponse for LiveEvents {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl ApiResponse for LiveEvents {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The live feed, until the client goes away.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }
}

/// The longest search text `q` taken (characters): longer is answered 422.
const MAX_QUERY_CHARS: usize = 200;

#[allow(clippy::too_many_arguments)]
fn filter_from(
    status: Option<String>,
    event_type: Option<String>,
    source: Option<String>,
    integration_id: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    q: Option<String>,
) -> Result<LogFilter, AdminError> {
    let q = q.filter(|q| !q.trim().is_empty());
    if q.as_ref()
        .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ApiError::from(hookq_core::Error::Invalid(format!(
            "q must be at most {MAX_QUERY_CHARS} characters"
        )))
        .into());
    }
    if q.as_ref().is_some_and(|q| q.contains('\0')) {
        return Err(ApiError::from(hookq_core::Error::Invalid(
            "q must not contain NUL characters".into(),
        ))
        .into());
    }
    Ok(LogFilter {
        status: LogFilter::parse_status(status.as_deref())?,
        event_type: event_type.filter(|s| !s.is_empty()),
        source: source.filter(|s| !s.is_empty()),
        integration_id,
        since,
        until,
        q,
    })
}

fn conflict(detail: String) -> AdminError {
    ApiError::from(hookq_core::Error::Conflict(detail)).into()
}

#[OpenApi(prefix_path = "/api/webhook-logs", tag = "ApiTags::Admin")]
impl LogsApi {
    /// Logs, newest first, filtered by any of `status`, `event_type`, `source`,
    /// `integration_id`, a receipt window (`since` inclusive, `until` exclusive,
    /// RFC 3339) and `q`, text that the message, the sender's name, the item id or the
    /// dedup key contains (any case; at most 200 characters; a trigram index answers
    /// it). `total` counts every log the filter matches, read in the same snapshot as
    /// the page.
    #[oai(path = "/", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        status: Query<Option<String>>,
        event_type: Query<Option<String>>,
        source: Query<Option<String>>,
        integration_id: Query<Option<Uuid>>,
        since: Query<Option<DateTime<Utc>>>,
        until: Query<Option<DateTime<Utc>>>,
        q: Query<Option<String>>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<LogItem>> {
        let filter = filter_from(
            status.0,
            event_type.0,
            source.0,
            integration_id.0,
            since.0,
            until.0,
            q.0,
        )?;
        let (limit, offset) = paging(limit.0, offset.0);
        let pool = state.reads();
        let (items, total) = stats::page(pool, &filter, limit.into(), offset.into()).await?;
        Ok(Json(Page {
            items: items.into_iter().map(LogItem::from).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// Counts by status, event type and source, success rate, processing time (mean,
    /// p50/p95/p99 over `window_minutes`, default 60), queue depth and oldest pending
    /// age, and throughput over the last minute.
    #[oai(path = "/stats", method = "get")]
    async fn stats(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        ops: Data<&OpsState>,
        window_minutes: Query<Option<u32>>,
    ) -> AdminResult<LogStats> {
        let pool = state.reads();
        let window = window_minutes.0.unwrap_or(60).clamp(1, 7 * 24 * 60);
        let groups = ops
            .counts
            .get(async || stats::group_counts(pool).await)
            .await?;
        let now = stats::db_now(pool).await?;
        let (timing, recent, queue) = tokio::try_join!(
            async {
                stats::timing(pool, now - chrono::Duration::minutes(window.into()))
                    .await
                    .map_err(AdminError::from)
            },
            async {
                stats::recent(pool, now - chrono::Duration::seconds(60))
                    .await
                    .map_err(AdminError::from)
            },
            async { queue::queue_stats(pool).await.map_err(AdminError::from) },
        )?;
        let by_status = StatusCounts::from_groups(&groups);
        let finished = by_status.processed + by_status.dead_letter;
        Ok(Json(LogStats {
            total: groups.iter().map(|g| g.count).sum(),
            by_event_type: fold_by(&groups, |g| &g.event_type),
            by_source: fold_by(&groups, |g| g.source.as_str()),
            success_rate: (finished > 0).then(|| by_status.processed as f64 / finished as f64),
            by_status,
            processing_time: ProcessingTime {
                window_minutes: window,
                processed: timing.processed,
                mean_ms: timing.mean_ms,
                p50_ms: timing.p50_ms,
                p95_ms: timing.p95_ms,
                p99_ms: timing.p99_ms,
                mean_attempts: timing.mean_attempts,
            },
            queue: QueueState {
                depth: queue.depth,
                running: queue.running,
                scheduled_retries: queue.scheduled_retries,
                scheduled: queue.scheduled,
                dead: queue.dead,
                oldest_pending_age_secs: queue.oldest_pending_age_secs,
            },
            last_minute: Throughput {
                received: recent.received,
                processed: recent.processed,
                failed: recent.failed,
                received_per_sec: recent.received as f64 / 60.0,
                processed_per_sec: recent.processed as f64 / 60.0,
            },
        }))
    }

    /// Received, processed and failed per minute over the last `minutes` (default 60,
    /// at most 1,440), oldest first, every minute present.
    #[oai(path = "/throughput", method = "get")]
    async fn throughput(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        minutes: Query<Option<u32>>,
    ) -> AdminResult<Vec<Minute>> {
        let minutes = minutes.0.unwrap_or(60).clamp(1, 1440) as i32;
        let rows = stats::throughput(state.reads(), minutes).await?;
        Ok(Json(
            rows.into_iter()
                .map(|m| Minute {
                    minute: m.minute,
                    received: m.received,
                    processed: m.processed,
                    failed: m.failed,
                })
                .collect(),
        ))
    }

    /// Server-sent events: every log created or changed from now on (polled every
    /// 500 ms), and the counts by status every 2 s. What the dashboard's live list
    /// reads; a client dedupes by `(id, updated_at)`.
    #[oai(path = "/events", method = "get")]
    async fn events(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        ops: Data<&OpsState>,
    ) -> Result<LiveEvents, AdminError> {
        let start = stats::db_now(state.reads()).await?;
        let stream = live_feed(state.reads().clone(), ops.clone(), start);
        Ok(LiveEvents(
            EventStream::new(stream.boxed()).keep_alive(Duration::from_secs(15)),
        ))
    }

    /// One log with its payload, attempts, error and reply, and its job's failed runs.
    #[oai(path = "/:id", method = "get")]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        id: Path<i64>,
    ) -> AdminResult<LogDetail> {
        let log = hookq_core::logs::get(state.reads(), id.0)
            .await?
            .ok_or(hookq_core::Error::NotFound)?;
        let job = match log.job_id {
            Some(job_id) => queue::get_job(state.reads(), job_id).await?.map(Job::from),
            None => None,
        };
        let delivery = match hookq_core::delivery::outbound_reply(state.reads(), log.id).await? {
            Some(reply) => {
                let attempts =
                    hookq_core::delivery::delivery_attempts(state.reads(), log.id).await?;
                Some(Delivery::new(reply, attempts))
            }
            None => None,
        };
        Ok(Json(LogDetail::new(log, job, delivery)))
    }

    /// Puts a `failed` or `dead_letter` log back to `pending` with a new job, in one
    /// transaction; `409` for a log in any other state.
    #[oai(path = "/:id/retry", method = "post")]
    async fn retry_one(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        ops: Data<&OpsState>,
        id: Path<i64>,
    ) -> AdminResult<Retried> {
        match retry::retry_log(&state.pool, &ops.notifier, id.0, state.config.max_attempts).await? {
            retry::RetriedOne::Retried(id) => Ok(Json(Retried {
                retried: 1,
                ids: vec![id],
            })),
            retry::RetriedOne::NotFound => Err(ApiError::NotFound.into()),
            retry::RetriedOne::NotRetryable { id, status } => Err(conflict(format!(
                "log {id} is {status}: only failed or dead_letter logs can be retried"
            ))),
        }
    }

    /// The same for every `failed`/`dead_letter` log matching the filter body (oldest
    /// first, up to `limit`). Logs another retry holds are skipped, never retried twice.
    #[oai(path = "/retry", method = "post")]
    async fn retry_many(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        ops: Data<&OpsState>,
        body: Json<RetryFilter>,
    ) -> AdminResult<Retried> {
        let f = body.0;
        let filter = f.selection.filter(f.status)?;
        if filter
            .status
            .is_some_and(|s| !matches!(s, LogStatus::Failed | LogStatus::DeadLetter))
        {
            return Err(ApiError::from(hookq_core::Error::Invalid(
                "status must be failed or dead_letter: only those can be retried".into(),
            ))
            .into());
        }
        let limit = f.limit.unwrap_or(1000).clamp(1, 10_000);
        let ids = retry::retry_matching(
            &state.pool,
            &ops.notifier,
            &filter,
            limit.into(),
            state.config.max_attempts,
        )
        .await?;
        Ok(Json(Retried {
            retried: ids.len() as u32,
            ids,
        }))
    }

    /// Deletes every log matching the filter body (as the list's filters, `q` too),
    /// oldest first, up to `limit` (default 1,000, at most 10,000) per call. Only
    /// finished or waiting-to-retry logs (`processed`, `failed`, `dead_letter`) are
    /// deleted; a log still in flight is left to its run. The dashboard shows the
    /// list's `total` for the same filters before it calls this.
    #[oai(path = "/delete", method = "post")]
    async fn delete_many(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        body: Json<DeleteFilter>,
    ) -> AdminResult<DeletedMany> {
        let f = body.0;
        let filter = f.selection.filter(f.status)?;
        if filter
            .status
            .is_some_and(|s| !hookq_core::logs::transitions::DELETE_MATCHING.allows(s))
        {
            return Err(ApiError::from(hookq_core::Error::Invalid(
                "status must be processed, failed or dead_letter: logs in flight are not deleted by a filter".into(),
            ))
            .into());
        }
        let limit = f.limit.unwrap_or(1000).clamp(1, 10_000);
        let ids =
            hookq_core::logs::transitions::delete_matching(&state.pool, &filter, limit.into())
                .await?;
        Ok(Json(DeletedMany {
            deleted: ids.len() as u32,
            ids,
        }))
    }

    /// Deletes one log.
    #[oai(path = "/:id", method = "delete")]
    async fn delete(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        id: Path<i64>,
    ) -> AdminResult<Deleted> {
        if !hookq_core::logs::transitions::delete(&state.pool, id.0).await? {
            return Err(hookq_core::Error::NotFound.into());
        }
        Ok(Json(Deleted { deleted: true }))
    }
}

/// How far back each poll looks past the newest change it has seen: a transaction that
/// stamped `updated_at` before committing becomes visible late, and this overlap still
/// catches it. Rows already sent are skipped by `(id, updated_at)`.
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

struct Feed {
    pool: sqlx::PgPool,
    ops: OpsState,
    /// Newest `updated_at` seen.
    newest: DateTime<Utc>,
    /// What was sent within the overlap window.
    sent: HashMap<i64, DateTime<Utc>>,
    tick: u64,
}

/// The live feed: a cheap indexed poll of `updated_at` every 500 ms per connected
/// dashboard. Errors (a database blip) skip a tick; the stream ends when the client
/// goes away.
fn live_feed(
    pool: sqlx::PgPool,
    ops: OpsState,
    start: DateTime<Utc>,
) -> impl Stream<Item = LiveUpdate> + Send {
    let feed = Feed {
        pool,
        ops,
        newest: start,
        sent: HashMap::new(),
        tick: 0,
    };
    futures::stream::unfold(feed, |mut feed| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            feed.tick += 1;
            let changed = stats::changed_since(&feed.pool, feed.newest - OVERLAP, 500)
                .await
                .unwrap_or_default();
            let mut logs = Vec::new();
            for l in changed {
                if feed.sent.get(&l.id) == Some(&l.updated_at) {
                    continue;
                }
                feed.newest = feed.newest.max(l.updated_at);
                feed.sent.insert(l.id, l.updated_at);
                logs.push(LogItem::from(l));
            }
            let horizon = feed.newest - OVERLAP;
            feed.sent.retain(|_, at| *at >= horizon);
            let counts = if feed.tick % 4 == 1 {
                let pool = feed.pool.clone();
                feed.ops
                    .counts
                    .get(async || stats::group_counts(&pool).await)
                    .await
                    .ok()
                    .map(|g| StatusCounts::from_groups(&g))
            } else {
                None
            };
            if !logs.is_empty() || counts.is_some() {
                return Some((LiveUpdate { logs, counts }, feed));
            }
        }
    })
}
