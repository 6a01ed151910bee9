//! Operator retry: puts `failed`/`dead_letter` logs back to `pending`, each with a new
//! `process_webhook` job, in one transaction: the rows are locked, the new jobs enqueued,
//! the old waiting jobs cancelled and the logs moved by
//! [`transitions::reset_for_retry`], so a log is never left without a job nor given two.
//!
//! One reset serves both endpoints (`POST /api/webhook-logs/{id}/retry` and the bulk
//! `POST /api/webhook-logs/retry`): [`retry_log`] locks the one log named,
//! [`retry_matching`] a filter's. Logs another
//! transaction holds are skipped by the bulk form (`SKIP LOCKED`), so two operators
//! pressing "retry all" at once never retry a log twice; the single form waits for the
//! lock, then sees the state the other left.

use hookq_core::logs::{
    LogStatus,
    reads::{self, LogFilter, RetryCandidate},
    transitions,
};
use sqlx::PgPool;

use crate::{
    error::Error,
    jobs::ProcessWebhook,
    queue::{self, EnqueueOptions, JobKeys, Notifier},
};

/// What retrying one log did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetriedOne {
    /// It is `pending` again, with a new job.
    Retried(i64),
    /// No log has that id.
    NotFound,
    /// It is in another state: nothing was changed.
    NotRetryable {
        /// The log named.
        id: i64,
        /// The state it is in (neither `failed` nor `dead_letter`).
        status: LogStatus,
    },
}

/// Retries one log, which must be `failed` or `dead_letter`; its new job gets
/// `max_attempts` runs. Waits for a lock another retry holds, then sees what it left.
#[tracing::instrument(skip(pool, notifier))]
pub async fn retry_log(
    pool: &PgPool,
    notifier: &Notifier,
    id: i64,
    max_attempts: u32,
) -> Result<RetriedOne, Error> {
    let mut tx = pool.begin().await?;
    let found = match reads::lock_for_retry(&mut tx, id).await? {
        None => return Ok(RetriedOne::NotFound),
        Some(c) if !transitions::RESET_FOR_RETRY.allows(c.status) => {
            return Ok(RetriedOne::NotRetryable {
                id: c.id,
                status: c.status,
            });
        }
        Some(c) => vec![c],
    };
    let reset = reset(tx, notifier, &found, max_attempts).await?;
    Ok(match reset.first() {
        Some(&id) => RetriedOne::Retried(id),
        // Locked as retryable, so the reset moved it; answered as found in another state
        // rather than claimed done, should that ever not hold.
        None => RetriedOne::NotRetryable {
            id,
            status: found[0].status,
        },
    })
}

/// Retries up to `limit` `failed`/`dead_letter` logs matching `filter`, oldest first,
/// skipping logs another retry holds; answers the ids now `pending` again.
#[tracing::instrument(skip(pool, notifier))]
pub async fn retry_matching(
    pool: &PgPool,
    notifier: &Notifier,
    filter: &LogFilter,
    limit: i64,
    max_attempts: u32,
) -> Result<Vec<i64>, Error> {
    let mut tx = pool.begin().await?;
    let found = reads::lock_matching_for_retry(&mut tx, filter, limit).await?;
    reset(tx, notifier, &found, max_attempts).await
}

/// The shared part: a new job per locked log (in its account's group and its
/// conversation, as intake enqueued the first), the old waiting jobs cancelled, the logs
/// moved, one commit.
async fn reset(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    notifier: &Notifier,
    found: &[RetryCandidate],
    max_attempts: u32,
) -> Result<Vec<i64>, Error> {
    let ids: Vec<i64> = found.iter().map(|c| c.id).collect();
    let jobs: Vec<ProcessWebhook> = ids
        .iter()
        .map(|&log_id| ProcessWebhook { log_id })
        .collect();
    let keys: Vec<JobKeys> = found
        .iter()
        .map(|c| JobKeys {
            group: c.group_key.clone(),
            order: c.conversation_key.clone(),
            // A new place at the end: later events of the conversation were answered
            // while the log waited for an operator.
            position: None,
        })
        .collect();
    let options = EnqueueOptions {
        max_attempts: Some(i32::try_from(max_attempts).unwrap_or(i32::MAX)),
        ..EnqueueOptions::default()
    };
    let job_ids = queue::enqueue_many_keyed(&mut tx, &jobs, &keys, &options).await?;
    let old: Vec<i64> = found.iter().filter_map(|c| c.old_job_id).collect();
    queue::cancel_pending(&mut tx, &old).await?;
    let reset = transitions::reset_for_retry(&mut *tx, &ids, &job_ids).await?;
    tx.commit().await?;
    if !reset.is_empty() {
        notifier.kick();
    }
    tracing::info!(count = reset.len(), ids = ?reset, "operator retry");
    Ok(reset)
}
