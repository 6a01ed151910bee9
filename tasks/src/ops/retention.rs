//! Retention: a periodic job that deletes `processed` logs older than
//! `HOOKQ_RETENTION_DAYS`, a bounded batch per statement so it never holds long locks
//! or bloats one transaction. Dead letters, and anything still in flight, are kept
//! until an operator handles them.
//!
//! The schedule runs in every worker process; the queue fires each tick once in total.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::queue::{Job, JobError, QueueError, Workers};

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;

/// Every hour, at minute 17 (off the hour, when other housekeeping tends to run).
pub const SCHEDULE: &str = "17 * * * *";

/// The job: purge logs processed more than `retention_days` ago.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeLogs {
    /// `HOOKQ_RETENTION_DAYS`: logs processed longer ago than this many days are deleted.
    pub retention_days: u32,
}

impl Job for PurgeLogs {
    const NAME: &'static str = "purge_logs";
}

/// What a run did (stored as the job's result).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Purged {
    /// Logs deleted.
    pub deleted: u64,
}

/// Deletes every `processed` log whose `processed_at` is older than `retention_days`,
/// `batch` rows at a time, pausing briefly between batches to leave room for ingest.
pub async fn purge(
    pool: &PgPool,
    retention_days: u32,
    batch: i64,
) -> Result<Purged, hookq_core::Error> {
    let cutoff = Utc::now() - chrono::Duration::days(retention_days.into());
    let mut deleted = 0;
    loop {
        let n = hookq_core::logs::transitions::purge_processed(pool, cutoff, batch).await?;
        deleted += n;
        if n < batch as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            retention_days,
            "retention: old processed logs deleted"
        );
    }
    Ok(Purged { deleted })
}

/// Registers the job's handler and its hourly schedule.
pub fn register(
    workers: &mut Workers,
    pool: &PgPool,
    retention_days: u32,
) -> Result<(), QueueError> {
    let pool = pool.clone();
    workers.register(move |job: PurgeLogs, _ctx| {
        let pool = pool.clone();
        async move {
            purge(&pool, job.retention_days, BATCH)
                .await
                .map_err(JobError::retry)
        }
    });
    workers.periodic(PurgeLogs::NAME, SCHEDULE, move || PurgeLogs {
        retention_days,
    })
}
