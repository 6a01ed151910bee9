//! Operator retry: puts `failed`/`dead_letter` logs back to `pending`, each with a new
//! `process_webhook` job, in one transaction: the rows are locked, the new jobs enqueued,
//! the old waiting jobs cancelled and the logs moved by
//! [`transitions::reset_for_retry`], so a log is never left without a job nor given two.
//!
//! One function serves both endpoints (`POST /api/webhook-logs/{id}/retry` and the bulk
//! `POST /api/webhook-logs/retry`): a single log is a selection of one. Logs another
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
    queue::{self, EnqueueOptions, Notifier},
};

/// Which logs to retry.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// This log, which must be `failed` or `dead_letter`.
    One(i64),
    /// Up to `limit` retryable logs matching the filter, oldest first.
    Matching {
        /// Which logs (only `failed` and `dead_letter` ones are taken).
        filter: &'a LogFilter,
        /// The most logs one call retries.
        limit: i64,
    },
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// These logs are `pending` again, each with a new job.
    Logs(Vec<i64>),
    /// [`Selection::One`] named no log.
    NotFound,
    /// [`Selection::One`] named a log in another state: nothing was changed.
    NotRetryable {
        /// The log named.
        id: i64,
        /// The state it is in (neither `failed` nor `dead_letter`).
        status: LogStatus,
    },
}

/// Retries the selected logs; their new jobs get `max_attempts` runs.
#[tracing::instrument(skip(pool, notifier))]
pub async fn retry_logs(
    pool: &PgPool,
    notifier: &Notifier,
    selection: Selection<'_>,
    max_attempts: u32,
) -> Result<Retried, Error> {
    let mut tx = pool.begin().await?;
    let found: Vec<RetryCandidate> = match selection {
        Selection::One(id) => match reads::lock_for_retry(&mut tx, id).await? {
            None => return Ok(Retried::NotFound),
            Some(c) if !transitions::RESET_FOR_RETRY.allows(c.status) => {
                return Ok(Retried::NotRetryable {
                    id: c.id,
                    status: c.status,
                });
            }
            Some(c) => vec![c],
        },
        Selection::Matching { filter, limit } => {
            reads::lock_matching_for_retry(&mut tx, filter, limit).await?
        }
    };
    let ids: Vec<i64> = found.iter().map(|c| c.id).collect();
    let jobs: Vec<ProcessWebhook> = ids
        .iter()
        .map(|&log_id| ProcessWebhook { log_id })
        .collect();
    let options = EnqueueOptions {
        max_attempts: Some(i32::try_from(max_attempts).unwrap_or(i32::MAX)),
        ..EnqueueOptions::default()
    };
    let job_ids = queue::enqueue_many(&mut tx, &jobs, &options).await?;
    let old: Vec<i64> = found.iter().filter_map(|c| c.old_job_id).collect();
    queue::cancel_pending(&mut tx, &old).await?;
    let reset = transitions::reset_for_retry(&mut *tx, &ids, &job_ids).await?;
    tx.commit().await?;
    if !reset.is_empty() {
        notifier.kick();
    }
    tracing::info!(count = reset.len(), ids = ?reset, "operator retry");
    Ok(Retried::Logs(reset))
}
