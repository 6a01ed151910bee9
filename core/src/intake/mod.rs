//! Inbound event model: what one signed webhook body turns into.
//!
//! A webhook body (raw bytes, already signature-checked) is parsed into a list of
//! [`ParsedEvent`]s, one per comment/message/status in the batch. Each carries the
//! external ids the use case needs to find its data, a dedup key that makes the whole
//! pipeline idempotent, and its own slice of the payload (stored as `webhook_logs.payload`).
//!
//! Parsing never touches the database or HTTP: it is a pure function over bytes, so the
//! controller, the fuzz targets and the load generator share it.
//!
//! Every event it returns is storable as is: a NUL (`\u0000`) anywhere in the body becomes
//! U+FFFD, and a timestamp PostgreSQL cannot hold becomes none ([`storable`]).

mod parse;
pub mod signature;
pub mod storable;

pub use parse::{parse_instagram, parse_whatsapp};

use serde::{Deserialize, Serialize};

/// Which route and platform family an event came from (`webhook_logs.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Source {
    /// Instagram Graph webhooks and the compact comment shape (`object: instagram`).
    Instagram,
    /// Facebook Page webhooks (`object: page`), including Messenger.
    Facebook,
    /// WhatsApp: Bridge events and Cloud API `whatsapp_business_account` payloads.
    Whatsapp,
}

impl Handling {
    /// The value as stored in `webhook_logs.handling`.
    pub fn as_str(self) -> &'static str {
        match self {
            Handling::Reply => "reply",
            Handling::Record => "record",
            Handling::DeliveryStatus => "delivery_status",
        }
    }
}

impl Source {
    /// The value as stored in `webhook_logs.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Instagram => "instagram",
            Source::Facebook => "facebook",
            Source::Whatsapp => "whatsapp",
        }
    }

    /// The source a stored text names; `None` for any other text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instagram" => Some(Source::Instagram),
            "facebook" => Some(Source::Facebook),
            "whatsapp" => Some(Source::Whatsapp),
            _ => None,
        }
    }
}

/// What the pipeline does with an event once its data is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Handling {
    /// A comment, mention or inbound message: content rules, then a reply.
    Reply,
    /// Stored for the record only (reactions, seen, postbacks, referrals, statuses,
    /// connection status, unknown fields): outcome `recorded`, never a reply.
    Record,
    /// A delivery report for one of our own outbound replies (Bridge `message.sent` /
    /// `message.failed`, Cloud API `statuses`): recorded, and the matching outbound
    /// reply's delivery state is updated.
    DeliveryStatus,
}

/// How the integration is found for this event (contract section 4 and 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum AccountRef {
    /// Meta shapes: `entry[].id`; WhatsApp Cloud: `metadata.phone_number_id`;
    /// Bridge: `data.to_number` (`data.from_number` for `message.sent`).
    Account {
        /// An integration's `account_id` on the event's platform.
        account_id: String,
    },
    /// The compact shape: the post's integration, else the user's only integration
    /// for this platform (`object`).
    Compact {
        /// The payload's `user_id`: a user's `external_id`.
        user_external_id: String,
    },
    /// No integration needed (`connection.status`, or an event that carries no account).
    None,
}

/// One event out of a webhook body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedEvent {
    /// Unique per real-world event, stable across Meta's re-deliveries. Prefixed by
    /// source and kind, e.g. `ig:comment:17912345678901234`.
    pub dedup_key: String,
    /// Which route and platform family the event came from (`webhook_logs.source`).
    pub source: Source,
    /// Platform for integration lookup: `instagram`, `facebook` or `whatsapp`.
    pub platform: Source,
    /// Stable, documented name, e.g. `comment`, `live_comment`, `mention`, `message`,
    /// `message_echo`, `message_reaction`, `messaging_postback`, `messaging_referral`,
    /// `messaging_seen`, `feed_comment`, `whatsapp_message`, `whatsapp_status`,
    /// `message.received`, `message.sent`, `message.failed`, `connection.status`; also
    /// `message_deleted` (an unsent DM) and `feed:<item>:<verb>` (Page feed changes other
    /// than a new comment), both recorded only. An unknown field `foo` becomes `unknown:foo`.
    pub event_type: String,
    /// What the pipeline does with it: reply, record, or apply a delivery report.
    pub handling: Handling,
    /// How its integration is found.
    pub account: AccountRef,
    /// The compact shape's `persona_id` (an external id).
    pub persona_external_id: Option<String>,
    /// Media/post id (`value.media.id`, `value.post_id`), a post's `external_id`.
    pub post_external_id: Option<String>,
    /// The id a reply is addressed to: comment id, or the message id for messages.
    pub item_id: Option<String>,
    /// For messages: the conversation peer to send a reply to (sender id / phone).
    pub sender_id: Option<String>,
    /// The sender's display name, when the platform sends one.
    pub sender_name: Option<String>,
    /// Text of the comment or message (may be empty: attachments, stickers).
    pub text: Option<String>,
    /// True when the platform marks this as our own account's content (message echo,
    /// a comment whose `from.id` is the account itself): replying would loop.
    pub is_own: bool,
    /// When the platform says it happened (seconds or milliseconds normalised).
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    /// This event's own slice of the body, in the shape it arrived in (for a batch:
    /// the envelope with only this entry and change/messaging item).
    pub payload: serde_json::Value,
}

/// Event types answered as direct messages (a conversation with the sender), rather
/// than as comment replies.
pub fn is_message(event_type: &str) -> bool {
    matches!(
        event_type,
        "message" | "whatsapp_message" | "message.received"
    )
}

impl ParsedEvent {
    /// The conversation this event belongs to, for events that get a reply (contract
    /// section 10): a direct message's is its account and sender
    /// (`<source>:<account>:dm:<sender>`); a comment's is its thread, the top-level
    /// comment it answers or itself (`<source>:<account>:thread:<comment>`; Meta names
    /// the parent in `value.parent_id`, which for a Page feed's top-level comment is
    /// the post itself). Events that are only recorded have none.
    pub fn conversation_key(&self) -> Option<String> {
        if self.handling != Handling::Reply {
            return None;
        }
        let account = match &self.account {
            AccountRef::Account { account_id } => account_id.as_str(),
            AccountRef::Compact { user_external_id } => user_external_id.as_str(),
            AccountRef::None => "",
        };
        let source = self.source.as_str();
        if is_message(&self.event_type) {
            let sender = self.sender_id.as_deref()?;
            return Some(format!("{source}:{account}:dm:{sender}"));
        }
        let item = self.item_id.as_deref()?;
        let parent = [
            "/entry/0/changes/0/value/parent_id",
            "/entry/0/changes/0/value/parent_comment_id",
        ]
        .iter()
        .find_map(|p| self.payload.pointer(p).and_then(serde_json::Value::as_str))
        .filter(|p| !p.is_empty() && Some(*p) != self.post_external_id.as_deref());
        Some(format!(
            "{source}:{account}:thread:{}",
            parent.unwrap_or(item)
        ))
    }
}

/// Why a body could not be turned into events (answered 400 or 422).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Not JSON at all (400).
    #[error("body is not valid JSON")]
    NotJson(String),
    /// JSON, but no envelope this route knows, or an envelope with no event in it (422).
    #[error("not a known event shape")]
    UnknownShape(String),
    /// More events in one body than [`MAX_EVENTS_PER_BODY`] (413).
    #[error("too many events in one body")]
    TooManyEvents(String),
}

/// Meta batches up to 1,000 items per POST; more than this is refused whole so one
/// request cannot create unbounded work.
pub const MAX_EVENTS_PER_BODY: usize = 1000;

impl ParseError {
    /// What exactly was wrong (the parser's words), which the error body's `detail`
    /// quotes.
    pub fn detail(&self) -> &str {
        match self {
            ParseError::NotJson(d) | ParseError::UnknownShape(d) | ParseError::TooManyEvents(d) => {
                d
            }
        }
    }
}
