//! Retention: a periodic job that removes `processed` logs older than
//! `HOOKQ_RETENTION_DAYS` by dropping whole month partitions of `webhook_logs`
//! (contract section 11, [`hookq_core::logs::partitions`]), and makes the partitions of
//! the months ahead. Row by row, a bounded batch per statement, only where a month
//! cannot go whole. Dead letters, and anything still in flight, are kept until an
//! operator handles them.
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
    /// Logs deleted, whole months and row by row.
    pub deleted: u64,
    /// Month partitions dropped.
    #[serde(default)]
    pub partitions_dropped: u64,
}

/// Partitions are made this many months ahead of the current one.
pub const MONTHS_AHEAD: i32 = 2;

/// How long dropping a month waits for the tables' locks before giving up until the
/// next run (running statements hold them for milliseconds; a long one, such as an
/// operator's export, is not worth queueing intake behind).
pub const LOCK_TIMEOUT_MS: u32 = 2_000;

/// One retention run (contract section 11): makes the coming months' partitions; drops
/// every month partition whose month ended more than `retention_days` ago and holds only
/// `processed` logs (a catalog change, whatever the month's size); and deletes row by
/// row, `batch` rows per statement with a pause between, the `processed` logs older than
/// that in the default partition and in the months kept for holding something else
/// (dead letters, logs in flight: kept until an operator handles them), then the default
/// partition's dedup keys older than that which name no log
/// ([`forget_orphan_keys`](hookq_core::logs::partitions::forget_orphan_keys)). A log thus
/// lives from `retention_days` to `retention_days` plus a month.
pub async fn purge(
    pool: &PgPool,
    retention_days: u32,
    batch: i64,
) -> Result<Purged, hookq_core::Error> {
    use hookq_core::logs::partitions::{self, Dropped, LogPartition};
    partitions::ensure_ahead(pool, MONTHS_AHEAD).await?;
    let cutoff = Utc::now() - chrono::Duration::days(retention_days.into());
    let mut purged = Purged {
        deleted: 0,
        partitions_dropped: 0,
    };
    let mut row_by_row = vec![LogPartition::DEFAULT];
    for month in partitions::expired(pool, cutoff).await? {
        match partitions::drop_month(pool, &month, LOCK_TIMEOUT_MS).await? {
            Dropped::Dropped {
                logs,
                locked,
                forget,
            } => {
                tracing::info!(
                    partition = %month.logs_table(),
                    logs,
                    locked_ms = locked.as_millis() as u64,
                    forget_ms = forget.as_millis() as u64,
                    "retention: month partition dropped"
                );
                purged.deleted += logs;
                purged.partitions_dropped += 1;
            }
            Dropped::Kept => row_by_row.push(month),
        }
    }
    for partition in &row_by_row {
        loop {
            let n = hookq_core::logs::transitions::purge_processed(pool, partition, cutoff, batch)
                .await?;
            purged.deleted += n;
            if n < batch as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    loop {
        let n = partitions::forget_orphan_keys(pool, cutoff, batch).await?;
        if n > 0 {
            tracing::info!(keys = n, "retention: dedup keys of no log deleted");
        }
        if n < batch as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if purged.deleted > 0 {
        tracing::info!(
            deleted = purged.deleted,
            partitions_dropped = purged.partitions_dropped,
            retention_days,
            "retention: old processed logs deleted"
        );
    }
    Ok(purged)
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
