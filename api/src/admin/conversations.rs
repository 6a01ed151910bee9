//! `/api/conversations/{key}` (contract section 13): one conversation end to end. A
//! conversation is section 10's key (`<source>:<account>:thread:<comment>` for a comment
//! thread, `<source>:<account>:dm:<sender>` for a direct conversation), the same key that
//! orders its jobs; each log carries it from intake (`webhook_logs.conversation_key`).
//!
//! The answer lists the conversation's events in the order received, each with its
//! reply's delivery (the outbound reply and every attempt) and the platform's own reports
//! on that reply (WhatsApp `statuses[]`, Bridge `message.sent`/`message.failed`), which
//! arrive as logs of their own and are tied back by the provider message id the send
//! answered with. Four indexed reads, whatever the conversation's length (up to
//! [`reads::CONVERSATION_LIMIT`] events).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hookq_core::{delivery, logs::reads};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};

use super::{
    AdminResult,
    logs::{Delivery, LogItem},
};
use crate::{ApiTags, auth::AdminAuth, error::ApiError, state::AppState};

/// `/api/conversations`: one conversation's events, replies, deliveries and reports.
pub struct ConversationsApi;

/// A platform's report on a reply hookq sent (stored as its own log).
#[derive(Debug, Clone, Object)]
pub struct ReplyReport {
    /// The report's own log (`GET /api/webhook-logs/{id}`).
    pub log_id: i64,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// When the platform says it happened, if it says.
    #[oai(nullable)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// When hookq stored the report.
    pub received_at: DateTime<Utc>,
}

/// One event of a conversation, with what hookq did about it.
#[derive(Debug, Clone, Object)]
pub struct ConversationEvent {
    /// The event's log, as lists show it (`reply_text` is the reply generated for it).
    pub log: LogItem,
    /// The reply's delivery, when it left hookq (`reply_delivery` callback or Graph API).
    #[oai(nullable)]
    pub delivery: Option<Delivery>,
    /// The platform's reports on that reply, oldest first.
    pub reports: Vec<ReplyReport>,
}

/// A conversation end to end.
#[derive(Debug, Clone, Object)]
pub struct Conversation {
    /// The conversation's key.
    pub key: String,
    /// Its events in the order received (at most 1,000: the first ones).
    pub events: Vec<ConversationEvent>,
    /// True when the conversation has more events than were listed.
    pub truncated: bool,
}

#[OpenApi(prefix_path = "/api/conversations", tag = "ApiTags::Admin")]
impl ConversationsApi {
    /// Every event of one conversation (a comment thread or a direct conversation, as
    /// its logs' keys name it), in the order received, each with its reply, the reply's
    /// delivery attempts and the platform's delivery reports on it. `404` when no log
    /// has the key.
    #[oai(path = "/:key", method = "get")]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        key: Path<String>,
    ) -> AdminResult<Conversation> {
        let pool = state.reads();
        let (logs, truncated) = reads::conversation(pool, &key.0).await?;
        if logs.is_empty() {
            return Err(ApiError::NotFound.into());
        }
        let ids: Vec<i64> = logs.iter().map(|l| l.id).collect();
        let (replies, attempts) = tokio::try_join!(
            delivery::outbound_replies_of(pool, &ids),
            delivery::delivery_attempts_of(pool, &ids),
        )?;
        let message_ids: Vec<String> = replies
            .iter()
            .filter_map(|r| r.provider_message_id.clone())
            .collect();
        let reports = reads::delivery_reports(pool, &message_ids).await?;

        let mut attempts_of: HashMap<i64, Vec<delivery::DeliveryAttempt>> = HashMap::new();
        for a in attempts {
            attempts_of.entry(a.log_id).or_default().push(a);
        }
        let mut reports_of: HashMap<String, Vec<ReplyReport>> = HashMap::new();
        for r in reports {
            reports_of
                .entry(r.message_id)
                .or_default()
                .push(ReplyReport {
                    log_id: r.log_id,
                    status: r.status,
                    occurred_at: r.occurred_at,
                    received_at: r.received_at,
                });
        }
        let mut reply_of: HashMap<i64, delivery::OutboundReply> =
            replies.into_iter().map(|r| (r.log_id, r)).collect();
        let events = logs
            .into_iter()
            .map(|log| {
                let reply = reply_of.remove(&log.id);
                let reports = reply
                    .as_ref()
                    .and_then(|r| r.provider_message_id.as_ref())
                    .and_then(|m| reports_of.get(m).cloned())
                    .unwrap_or_default();
                let delivery = reply
                    .map(|r| Delivery::new(r, attempts_of.remove(&log.id).unwrap_or_default()));
                ConversationEvent {
                    log: LogItem::from(log),
                    delivery,
                    reports,
                }
            })
            .collect();
        Ok(Json(Conversation {
            key: key.0,
            events,
            truncated,
        }))
    }
}
