//! The log's vocabulary: its status (the state machine [`transitions`](super::transitions)
//! moves), the outcome a finished log records, and why a reply-able event got no reply.
//! Stored as text; each enum decodes from its column and refuses any other text.

use serde::{Deserialize, Serialize};

/// `webhook_logs.status`: the pipeline's state machine. Every transition's SQL names
/// the states it may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum LogStatus {
    /// Stored and its job enqueued, in the same transaction; no worker has it yet.
    Pending,
    /// A worker's job run holds it (`attempts` counts these runs).
    Processing,
    /// Finished: `outcome` says `replied`, `skipped` (with `skip_reason`) or `recorded`.
    Processed,
    /// The last run failed transiently; another is scheduled at `next_retry_at`.
    Failed,
    /// Out of attempts, or failed permanently; `error_message` says why. Kept until an
    /// operator retries or deletes it.
    DeadLetter,
}
text_enum!(LogStatus { Pending => "pending", Processing => "processing", Processed => "processed", Failed => "failed", DeadLetter => "dead_letter" });

/// What a `processed` log's run did (`webhook_logs.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Outcome {
    /// A reply was generated and, where the integration delivers, delivered.
    Replied,
    /// A reply-able event that got no reply; `skip_reason` says why.
    Skipped,
    /// Events that never get a reply: reactions, seen, statuses, unknown fields.
    Recorded,
}
text_enum!(Outcome { Replied => "replied", Skipped => "skipped", Recorded => "recorded" });

/// Why a reply-able event got no reply (contract section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum SkipReason {
    /// The account's own comment, or a message echo: replying would loop.
    OwnMessage,
    /// No text to reply to (blank, or none at all).
    Empty,
    /// A persona blocklist word, matched case-insensitively as a whole word.
    Blocklisted,
    /// More than 2 links, or one character repeated 10 times in a row.
    Spam,
    /// The post's `replies_enabled` switch is off.
    RepliesDisabled,
    /// Over 2,200 characters.
    TooLong,
    /// A direct message older than `HOOKQ_MESSAGE_REPLY_WINDOW` when its reply would be
    /// generated: the platform refuses replies outside its messaging window.
    WindowClosed,
}
text_enum!(SkipReason { OwnMessage => "own_message", Empty => "empty", Blocklisted => "blocklisted", Spam => "spam", RepliesDisabled => "replies_disabled", TooLong => "too_long", WindowClosed => "window_closed" });
