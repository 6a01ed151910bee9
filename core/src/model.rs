//! Domain types shared by the repositories, the use case and the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Implements `as_str`/`parse` for a fieldless enum stored as text in Postgres.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `webhook_logs.status`: the pipeline's state machine. Every transition's SQL names
/// the states it may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Replied,
    Skipped,
    /// Events that never get a reply: reactions, seen, statuses, unknown fields.
    Recorded,
}
text_enum!(Outcome { Replied => "replied", Skipped => "skipped", Recorded => "recorded" });

/// Why a reply-able event got no reply (contract section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The account's own comment, or a message echo: replying would loop.
    OwnMessage,
    Empty,
    /// A persona blocklist word, matched case-insensitively as a whole word.
    Blocklisted,
    /// More than 2 links, or one character repeated 10 times in a row.
    Spam,
    /// The post's `replies_enabled` switch is off.
    RepliesDisabled,
    /// Over 2,200 characters.
    TooLong,
}
text_enum!(SkipReason { OwnMessage => "own_message", Empty => "empty", Blocklisted => "blocklisted", Spam => "spam", RepliesDisabled => "replies_disabled", TooLong => "too_long" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyDelivery {
    /// The reply is only recorded on the log.
    None,
    /// POSTed to the integration's `callback_url`, signed per Standard Webhooks.
    Callback,
    /// POSTed to Meta's Graph API with the integration's access token.
    GraphApi,
}
text_enum!(ReplyDelivery { None => "none", Callback => "callback", GraphApi => "graph_api" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Instagram,
    Facebook,
    Whatsapp,
}
text_enum!(Platform { Instagram => "instagram", Facebook => "facebook", Whatsapp => "whatsapp" });

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub external_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An account on a platform that hookq answers for. `access_token` and
/// `callback_secret` are write-only: they never leave through the API or a log.
#[derive(Clone, sqlx::FromRow)]
pub struct Integration {
    pub id: Uuid,
    pub user_id: Uuid,
    pub platform: String,
    pub account_id: String,
    pub access_token: Option<String>,
    pub reply_delivery: String,
    pub callback_url: Option<String>,
    pub callback_secret: Option<String>,
    pub default_persona_id: Option<Uuid>,
    pub delivery_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Integration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integration")
            .field("id", &self.id)
            .field("platform", &self.platform)
            .field("account_id", &self.account_id)
            .field("reply_delivery", &self.reply_delivery)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct PersonaTemplate {
    pub id: Uuid,
    pub name: String,
    pub reply_template: String,
    pub system_prompt: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Persona {
    pub id: Uuid,
    pub external_id: String,
    pub user_id: Uuid,
    pub template_id: Uuid,
    pub name: String,
    pub blocklist: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Post {
    pub id: Uuid,
    pub external_id: String,
    pub integration_id: Uuid,
    pub persona_id: Option<Uuid>,
    pub caption: String,
    pub replies_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
