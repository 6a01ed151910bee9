//! Typed job payloads. They carry ids, not data: the row they point at is the truth.

use serde::{Deserialize, Serialize};

use crate::queue::Job;

/// Run the comment use case for one `webhook_logs` row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessWebhook {
    pub log_id: i64,
}

impl Job for ProcessWebhook {
    const NAME: &'static str = "process_webhook";
}
