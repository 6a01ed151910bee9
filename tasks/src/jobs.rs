//! Typed job payloads. They carry ids, not data: the row they point at is the truth.

use serde::{Deserialize, Serialize};

use crate::queue::Job;

/// Run the comment use case for one `webhook_logs` row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessWebhook {
    /// The log to process (`webhook_logs.id`).
    pub log_id: i64,
}

impl Job for ProcessWebhook {
    const NAME: &'static str = "process_webhook";
}

/// Make (at most) one delivery attempt of a log's outbound reply. Enqueued in the
/// transaction that stages the reply, then by each attempt that leaves a retry due; the
/// reply's state row decides what a run may do, so a stale or duplicated job is harmless.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverReply {
    /// The log whose outbound reply to deliver (`webhook_logs.id`, one reply per log).
    pub log_id: i64,
}

impl Job for DeliverReply {
    const NAME: &'static str = "deliver_reply";
}

/// Run the next chunk of a shadow replay (contract section 13; see `crate::replay`).
/// Each run takes the replay's next pending items; a run that leaves some enqueues the
/// next chunk in the transaction that records its results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayChunk {
    /// The replay (`replays.id`).
    pub replay_id: i64,
}

impl Job for ReplayChunk {
    const NAME: &'static str = "replay_chunk";
}
