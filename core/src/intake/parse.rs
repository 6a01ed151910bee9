//! Webhook body parsers: pure functions from signature-checked bytes to [`ParsedEvent`]s.
//!
//! Both routes decode JSON (depth-limited by serde_json), recognise an envelope, and turn
//! every item of a batch (each `changes[]`/`messaging[]` item of each entry, each Cloud API
//! message or status) into its own event whose `payload` is the envelope reduced to that
//! one item. Unknown fields or kinds inside a known envelope become `unknown:<name>`
//! events that are only recorded, so Meta never retries them; a body with no known
//! envelope, or with no item at all, is `UnknownShape`; more than
//! [`MAX_EVENTS_PER_BODY`](super::MAX_EVENTS_PER_BODY) items is `TooManyEvents`.
//!
//! # Dedup keys
//!
//! A dedup key names the real-world event, so Meta's re-deliveries (and the same event
//! arriving in another batch) collapse onto one `webhook_logs` row:
//!
//! | event | key |
//! |---|---|
//! | `comment`, `live_comment`, `mention` (in a comment), `feed_comment`, compact | `ig:comment:<comment id>` (`fb:` for `object: page`) |
//! | `mention` in a caption | `ig:mention:<media id>` |
//! | `message`, `message_echo` | `ig:message:<mid>` |
//! | `message_deleted` | `ig:message_deleted:<mid>` |
//! | `message_reaction` | `ig:reaction:<sender>:<mid>:<action>:<reaction>:<timestamp>` |
//! | `messaging_postback` | `ig:postback:<mid>`, else `ig:postback:<sender>:<timestamp>` |
//! | `messaging_referral` | `ig:referral:<sender>:<timestamp>` |
//! | `messaging_seen` | `ig:seen:<sender>:<watermark, else mid>` |
//! | `feed:<item>:<verb>`, `unknown:<name>` | `ig:feed:sha256:…`, `ig:unknown:sha256:…` |
//! | `whatsapp_message` | `wa:message:<id>` |
//! | `whatsapp_status` | `wa:status:<id>:<status>` (one row per status transition) |
//! | Cloud API `unknown:<field>` | `wa:unknown:sha256:…` |
//! | Bridge `message.*` | `bridge:<event_type>:<message_id>` |
//! | Bridge `connection.status` | `bridge:connection.status:<session_id>:<timestamp>:<status>` |
//! | Bridge `unknown:<event_type>` | `bridge:unknown:sha256:…` |
//!
//! All comment kinds share `<tag>:comment:` because one comment can be notified under
//! several fields (a comment that @mentions the account on its own media arrives as both
//! `comments` and `mentions`) and must be answered once. Where a natural id is missing,
//! or the key would exceed 512 bytes, the key is `<prefix>:sha256:<hex>` over the
//! canonical JSON (sorted keys, compact) of the event's payload slice: the same bytes
//! delivered again give the same key.

mod common;
mod meta;
mod whatsapp;

use serde_json::Value;

use super::{ParseError, ParsedEvent};
use common::{decode, shape};

/// `POST /webhooks/instagram`: `object: instagram | page`, Meta's shapes or the compact one.
///
/// # Errors
///
/// [`ParseError::NotJson`] for bytes that are not JSON, [`ParseError::UnknownShape`] for
/// JSON without a known envelope or without any event, [`ParseError::TooManyEvents`] past
/// [`MAX_EVENTS_PER_BODY`](super::MAX_EVENTS_PER_BODY).
pub fn parse_instagram(body: &[u8]) -> Result<Vec<ParsedEvent>, ParseError> {
    meta::parse(&decode(body)?)
}

/// `POST /webhooks/whatsapp`: a Bridge event or a Cloud API `whatsapp_business_account`
/// payload.
///
/// # Errors
///
/// As [`parse_instagram`].
pub fn parse_whatsapp(body: &[u8]) -> Result<Vec<ParsedEvent>, ParseError> {
    let root = decode(body)?;
    if root.contains_key("event_type") {
        whatsapp::bridge(root)
    } else if root.get("object").and_then(Value::as_str) == Some("whatsapp_business_account") {
        whatsapp::cloud(&root)
    } else {
        Err(shape(
            "expected a Bridge event ({\"event_type\", \"timestamp\", \"data\"}) or a Cloud API \
             payload ({\"object\": \"whatsapp_business_account\", \"entry\": [...]})",
        ))
    }
}
