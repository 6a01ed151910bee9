//! Reply delivery: outbound replies, their attempts, and what platforms report back.
//!
//! A reply that must leave hookq (`reply_delivery` `callback` or `graph_api`) becomes an
//! [`OutboundReply`], staged in the same transaction that stores the reply on its log and
//! enqueues the delivery job (the job itself lives in `hookq-tasks`: this module has no
//! queue types). Delivery is **at most once per log** (contract section 9):
//!
//! 1. [`store::claim`] commits the attempt (`in_flight`) and moves the reply to `sending`
//!    before any byte leaves, under the per-endpoint limits ([`Limits`]).
//! 2. The sender in `hookq-tasks` (`outbound::send::Sender`) makes the one request and
//!    classifies the answer.
//! 3. One transaction records the outcome on the attempt, the reply and the log
//!    ([`store::record_success`], [`store::record_retry`], [`store::record_failure`]).
//!
//! A job that finds its own earlier attempt still `in_flight` knows that run died
//! mid-request: [`store::record_cut_off`] marks it `unknown` and dead-letters the log with
//! [`OUTCOME_UNKNOWN`]; nothing is sent again until an operator retries the log, which
//! stages the same reply again with the same `webhook-id`.
//!
//! Inbound reports about our messages (Bridge `message.sent`/`message.failed`, Cloud API
//! `statuses`) and Bridge `connection.status` events are applied through
//! [`DeliveryReports`](crate::comment::ports::DeliveryReports), so the use case stays a
//! function over traits.

pub mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    comment::ports::{ConnectionReport, ProviderReport},
    logs::LogRow,
    resources::ReplyDelivery,
};

pub use store::{
    PgDeliveryStore, delivery_attempts, delivery_attempts_of, latest_connection_statuses,
    outbound_replies_of, outbound_reply,
};

/// The `error_message` of a log whose delivery attempt was cut off by a crash.
pub const OUTCOME_UNKNOWN: &str = "delivery outcome unknown";

/// `outbound_replies.status` (see `migrations/0003_delivery.sql` for each state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ReplyState {
    /// Staged (or staged again by an operator resend); its delivery job is queued.
    Pending,
    /// An attempt is committed and its request may have left.
    Sending,
    /// The last attempt failed transiently; the next job runs at `next_attempt_at`.
    Retrying,
    /// The endpoint answered 2xx.
    Delivered,
    /// Failed permanently, or out of tries (`last_error` says which).
    Failed,
    /// An attempt was cut off by a crash: the reply may or may not have arrived.
    Unknown,
}

impl ReplyState {
    /// The state as stored in `outbound_replies.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyState::Pending => "pending",
            ReplyState::Sending => "sending",
            ReplyState::Retrying => "retrying",
            ReplyState::Delivered => "delivered",
            ReplyState::Failed => "failed",
            ReplyState::Unknown => "unknown",
        }
    }

    /// The state a stored text names; `None` for any other text.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ReplyState::Pending,
            ReplyState::Sending,
            ReplyState::Retrying,
            ReplyState::Delivered,
            ReplyState::Failed,
            ReplyState::Unknown,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One reply that leaves hookq, as the API and the delivery job see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboundReply {
    /// Primary key (`outbound_replies.id`).
    pub id: i64,
    /// The log this reply answers; one outbound reply per log (unique).
    pub log_id: i64,
    /// The integration it is sent for; `None` once that integration is deleted.
    pub integration_id: Option<Uuid>,
    /// `callback` or `graph_api` (the integration's `reply_delivery` when last staged).
    pub kind: String,
    /// Standard Webhooks `webhook-id` (`msg_…`): fixed at first staging, reused by every
    /// attempt and resend so receivers can dedupe.
    pub webhook_id: String,
    /// Where the reply is in its delivery.
    pub status: ReplyState,
    /// Attempts made over the reply's life (resends continue the count).
    pub attempts: i32,
    /// `attempts` when the current round (first staging or the latest resend) began.
    pub round_base: i32,
    /// When the next try is due, while `retrying`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The latest attempt's error, for the operator.
    pub last_error: Option<String>,
    /// The id the platform gave the message when it took it, for matching its later
    /// status reports.
    pub provider_message_id: Option<String>,
    /// The platform's latest report about the message: `sent`, `delivered`, `read` or
    /// `failed` (as it names them); never moves back to an earlier one.
    pub provider_status: Option<String>,
    /// The error the platform reported with a `failed` status, if any.
    pub provider_error: Option<String>,
    /// When the platform's latest report says it happened (else when it arrived).
    pub provider_status_at: Option<DateTime<Utc>>,
    /// When the reply was first staged.
    pub created_at: DateTime<Utc>,
    /// When any of the above last changed.
    pub updated_at: DateTime<Utc>,
    /// When the endpoint answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl OutboundReply {
    /// Tries made in the current round (first staging, or the latest resend).
    pub fn round_tries(&self) -> u32 {
        (self.attempts - self.round_base).max(0).unsigned_abs()
    }
}

/// One delivery try, kept for the operator (contract section 4: status code, duration,
/// error).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryAttempt {
    /// Primary key (`delivery_attempts.id`).
    pub id: i64,
    /// The [`OutboundReply`] this try was for.
    pub reply_id: i64,
    /// The log the reply answers.
    pub log_id: i64,
    /// 1-based over the reply's life (resends continue the count).
    pub attempt: i32,
    /// `callback` or `graph_api`, as the reply's kind was at this try.
    pub kind: String,
    /// The endpoint without query string or credentials.
    pub url: String,
    /// What the rate limits counted this try under (see [`Endpoint::limit_key`]).
    pub limit_key: String,
    /// The delivery job that made the try; a re-run of that job finding its own try still
    /// `in_flight` knows its previous run died mid-request.
    pub job_id: Option<i64>,
    /// `in_flight`, `succeeded`, `failed` or `unknown` (cut off by a crash).
    pub state: String,
    /// The HTTP status the endpoint answered; `None` when no answer came.
    pub status_code: Option<i32>,
    /// How long the request took, in milliseconds; `None` while in flight or when cut
    /// off.
    pub duration_ms: Option<i32>,
    /// Why the try failed, when it did.
    pub error: Option<String>,
    /// When the try was committed, before its request left.
    pub started_at: DateTime<Utc>,
    /// When its outcome was recorded (or it was found cut off); `None` while `in_flight`.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The latest reported state of one Bridge connection.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ConnectionStatus {
    /// The phone number when the event names one, else the session id.
    pub connection_key: String,
    /// The `data.session_id` the event named, if any.
    pub session_id: Option<String>,
    /// The account's phone number the event named, if any.
    pub phone_number: Option<String>,
    /// The integration the event was routed to, if any.
    pub integration_id: Option<Uuid>,
    /// The connection's state as the Bridge reports it (`data.status` or `data.state`,
    /// e.g. `connected`).
    pub status: String,
    /// When the Bridge says the status changed (the event's own time); an older report
    /// never overwrites a newer one.
    pub reported_at: Option<DateTime<Utc>>,
    /// The `connection.status` log this status came from; `None` once that log is
    /// deleted.
    pub log_id: Option<i64>,
    /// The event's `data` as received.
    pub data: Value,
    /// When this row was last written.
    pub updated_at: DateTime<Utc>,
}

/// Per-endpoint limits (contract section 4: at most 10 in flight and 100 a minute).
/// Counted in the database, so they hold across every worker process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attempts in flight at once per endpoint (`limit_key`); default 10.
    pub max_in_flight: i64,
    /// Attempts started per endpoint within any `window`; default 100.
    pub per_window: i64,
    /// The rolling window `per_window` counts over; default 1 minute.
    pub window: Duration,
    /// An `in_flight` attempt older than this cannot still be running (the request
    /// timeout has passed): a crashed attempt stops counting against `max_in_flight`.
    pub in_flight_horizon: Duration,
}

/// Every attempt's request timeout (contract section 4).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 10,
            per_window: 100,
            window: Duration::from_secs(60),
            in_flight_horizon: REQUEST_TIMEOUT + Duration::from_secs(5),
        }
    }
}

/// Where one delivery request goes, as the delivery tables record it (the request itself,
/// with its body and credentials, is built by the outbound HTTP room in `hookq-tasks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `callback` or `graph_api` (never `none`: such a reply does not leave hookq).
    pub kind: ReplyDelivery,
    /// The URL as stored and shown: no query string, no credentials.
    pub shown_url: String,
    /// What the rate limits count by: `callback:<host:port>`, or
    /// `graph_api:<integration id>` (Meta limits per token, so one busy account must not
    /// slow the others).
    pub limit_key: String,
}

/// The endpoint took the reply.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The HTTP status the endpoint answered (2xx).
    pub status_code: u16,
    /// How long the request took.
    pub duration: Duration,
    /// The id the platform gave the message (Graph `id`, Send API `message_id`, Cloud API
    /// `messages[0].id`, or a callback receiver's `message_id`/`id`), for matching later
    /// status reports.
    pub provider_message_id: Option<String>,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn id_at(v: &Value, ptr: &str) -> Option<String> {
    match v.pointer(ptr)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An error object or string as one line: `title: message (details)` or the string.
fn error_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Object(_) => {
            let parts: Vec<String> = [
                id_at(v, "/code"),
                str_at(v, "/title").map(str::to_owned),
                str_at(v, "/message").map(str::to_owned),
                str_at(v, "/error_data/details").map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            .collect();
            let mut parts = parts;
            parts.dedup();
            (!parts.is_empty()).then(|| parts.join(": "))
        }
        _ => None,
    }
}

/// The delivery report a `DeliveryStatus` log carries: a Bridge `message.sent` /
/// `message.failed` (`data.message_id`, `data.error`) or one Cloud API `statuses[]` item
/// (`id`, `status`, `errors[]`). `None` when the payload names no message.
pub fn provider_report(log: &LogRow) -> Option<ProviderReport> {
    let p = &log.payload;
    if log.event_type.starts_with("message.") {
        let message_id = log
            .item_id
            .clone()
            .or_else(|| id_at(p, "/data/message_id"))?;
        let status = match log.event_type.as_str() {
            "message.failed" => "failed".to_owned(),
            _ => str_at(p, "/data/status").unwrap_or("sent").to_owned(),
        };
        let error = ["/data/error", "/data/reason", "/data/error_message"]
            .iter()
            .find_map(|ptr| p.pointer(ptr).and_then(error_text));
        return Some(ProviderReport {
            message_id,
            status,
            error,
            at: log.occurred_at,
        });
    }
    let item = p.pointer("/entry/0/changes/0/value/statuses/0")?;
    let message_id = log.item_id.clone().or_else(|| id_at(item, "/id"))?;
    let errors: Vec<String> = item
        .get("errors")
        .and_then(Value::as_array)
        .map(|errs| errs.iter().filter_map(error_text).collect())
        .unwrap_or_default();
    Some(ProviderReport {
        message_id,
        status: str_at(item, "/status").unwrap_or("unknown").to_owned(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        at: log.occurred_at,
    })
}

/// The connection report a Bridge `connection.status` log carries. Keyed by the
/// account's phone number when the event names one, else by its session id.
pub fn connection_report(log: &LogRow) -> Option<ConnectionReport> {
    let data = log.payload.get("data")?;
    let status = str_at(data, "/status")
        .or_else(|| str_at(data, "/state"))?
        .to_owned();
    let session_id = id_at(data, "/session_id");
    let phone_number = ["/phone_number", "/phone", "/number", "/account_id"]
        .iter()
        .find_map(|ptr| id_at(data, ptr));
    let connection_key = phone_number
        .clone()
        .or_else(|| session_id.clone())
        .unwrap_or_else(|| "default".to_owned());
    Some(ConnectionReport {
        connection_key,
        session_id,
        phone_number,
        status,
        at: log.occurred_at,
        data: data.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        intake::{Handling, Source},
        logs::LogStatus,
    };

    fn log(event_type: &str, item_id: Option<&str>, payload: Value) -> LogRow {
        let now = Utc::now();
        LogRow {
            id: 1,
            dedup_key: "k".into(),
            source: Source::Whatsapp,
            event_type: event_type.into(),
            handling: Handling::DeliveryStatus,
            account_id: None,
            user_external_id: None,
            persona_external_id: None,
            post_external_id: None,
            item_id: item_id.map(str::to_owned),
            sender_id: None,
            sender_name: None,
            message_text: None,
            is_own: false,
            occurred_at: None,
            payload,
            integration_id: None,
            status: LogStatus::Processing,
            attempts: 1,
            error_message: None,
            outcome: None,
            skip_reason: None,
            reply_text: None,
            persona_id: None,
            received_at: now,
            started_at: None,
            processed_at: None,
            next_retry_at: None,
            job_id: None,
            duplicate_count: 0,
            correlation_id: None,
            updated_at: now,
            conversation_key: None,
        }
    }

    #[test]
    fn bridge_failure_report_keeps_the_error() {
        let l = log(
            "message.failed",
            Some("wamid.1"),
            serde_json::json!({"event_type": "message.failed", "data": {"message_id": "wamid.1", "error": {"code": 470, "message": "window closed"}}}),
        );
        let r = provider_report(&l).unwrap();
        assert_eq!(r.message_id, "wamid.1");
        assert_eq!(r.status, "failed");
        assert_eq!(r.error.as_deref(), Some("470: window closed"));
    }

    #[test]
    fn cloud_status_report_joins_errors() {
        let payload = serde_json::json!({"entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.2", "status": "failed",
            "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
            "error_data": {"details": "24 hours passed"}}]}]}}]}]});
        let r = provider_report(&log("whatsapp_status", Some("wamid.2"), payload)).unwrap();
        assert_eq!(r.status, "failed");
        assert_eq!(
            r.error.as_deref(),
            Some("131047: Re-engagement message: 24 hours passed")
        );
    }

    #[test]
    fn connection_is_keyed_by_phone_then_session() {
        let l = log(
            "connection.status",
            None,
            serde_json::json!({"data": {"status": "connected", "session_id": "s1"}}),
        );
        assert_eq!(connection_report(&l).unwrap().connection_key, "s1");
        let l = log(
            "connection.status",
            None,
            serde_json::json!({"data": {"status": "disconnected", "session_id": "s1", "phone_number": "+351"}}),
        );
        let r = connection_report(&l).unwrap();
        assert_eq!(
            (r.connection_key.as_str(), r.status.as_str()),
            ("+351", "disconnected")
        );
    }
}
