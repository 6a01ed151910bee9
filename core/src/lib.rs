//! hookq's domain: what a webhook is, what happens to it, and the tables that remember
//! it. Knows nothing of HTTP (no server, no client) or of the job queue: the rooms are
//! cut by responsibility, and each opens with what lives there and why.
//!
//! | room | holds |
//! |---|---|
//! | [`intake`] | signature checks, the inbound event model and its parsers, storability |
//! | [`logs`] | `webhook_logs`: its row, its status vocabulary, every transition, every read |
//! | [`comment`] | the comment use case, a function over the [`comment::ports`] |
//! | [`delivery`] | the at-most-once reply delivery protocol and its tables |
//! | [`resources`] | the five admin resources: users, integrations, templates, personas, posts |
//! | [`audit`] | the record of every change an operator made through the admin API |
//! | [`alerts`] | the operational conditions reported to `HOOKQ_ALERT_URL`, started and cleared once |
//! | [`replays`] | shadow replays and their items' one state machine (contract section 13) |
//! | [`directory`] | the use case's cached read-only lookups of those resources |
//! | [`config`], [`db`], [`error`] | configuration read once; database failures classified once; the domain's error |

/// Implements `as_str`/`parse`/`Display` for a fieldless enum stored as text in Postgres.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The value as stored.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            /// The value a stored text names; `None` for any other text.
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

pub mod alerts;
pub mod audit;
pub mod comment;
pub mod config;
pub mod db;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod intake;
pub mod logs;
pub mod replays;
pub mod resources;

pub use error::{Error, FailureKind, Result};
