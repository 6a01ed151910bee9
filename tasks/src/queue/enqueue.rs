//! Putting jobs in the queue: `enqueue`/`enqueue_many` inside the caller's transaction,
//! and the debounced `Notifier` that wakes workers once the caller has committed.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, types::Json};
use tokio::sync::Notify;

use super::{Job, JobId, NOTIFY_CHANNEL, QueueError};

/// Attempts a job gets when [`EnqueueOptions::max_attempts`] is `None`. Callers that
/// follow `HOOKQ_MAX_ATTEMPTS` pass it explicitly; the value is stored on the row, so
/// every worker honours what the job was enqueued with.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// How a job is scheduled. The default runs it now, at priority 0, with
/// [`DEFAULT_MAX_ATTEMPTS`].
#[derive(Debug, Default, Clone)]
pub struct EnqueueOptions {
    /// Not before this time (database clock compares it); `None` is now.
    pub run_at: Option<DateTime<Utc>>,
    /// Higher runs first among ready jobs.
    pub priority: i16,
    pub max_attempts: Option<i32>,
    /// Dedupes against live (pending or running) jobs: enqueueing a key that is already
    /// queued returns the queued job's id and inserts nothing. Single jobs only.
    pub unique_key: Option<String>,
}

impl EnqueueOptions {
    fn max_attempts(&self) -> i32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
    }
}

/// Inserts one job on the caller's connection (typically `&mut *tx`), so the job exists
/// exactly when the caller's own writes do. Sends no NOTIFY: a NOTIFY inside the
/// transaction would serialise every commit on the notification queue lock; call
/// [`Notifier::kick`] after committing instead.
pub async fn enqueue<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    opts: &EnqueueOptions,
) -> Result<JobId, QueueError> {
    let inserted: Option<JobId> = sqlx::query_scalar(
        "INSERT INTO queue_jobs (task_name, payload, priority, run_at, max_attempts, unique_key)
         VALUES ($1, $2, $3, coalesce($4, now()), $5, $6)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(J::NAME)
    .bind(Json(job))
    .bind(opts.priority)
    .bind(opts.run_at)
    .bind(opts.max_attempts())
    .bind(opts.unique_key.as_deref())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = inserted {
        return Ok(id);
    }
    // Only a unique_key conflict inserts nothing: answer with the live job's id.
    let key = opts.unique_key.clone().unwrap_or_default();
    sqlx::query_scalar("SELECT id FROM queue_jobs WHERE unique_key = $1")
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(QueueError::UniqueKeyRace(key))
}

/// Inserts many jobs of one type in a single statement, on the caller's connection;
/// returns their ids in input order. `opts` applies to every job (`unique_key` is
/// refused: one key cannot dedupe many jobs).
pub async fn enqueue_many<J: Job>(
    conn: &mut PgConnection,
    jobs: &[J],
    opts: &EnqueueOptions,
) -> Result<Vec<JobId>, QueueError> {
    if opts.unique_key.is_some() {
        return Err(QueueError::UniqueKeyInBatch);
    }
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let payloads = jobs
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| QueueError::Encode {
            task: J::NAME,
            source,
        })?;
    // Identity values are drawn as the sorted rows are inserted, so ascending ids are
    // input order whatever order RETURNING reports them in.
    let mut ids: Vec<JobId> = sqlx::query_scalar(
        "INSERT INTO queue_jobs (task_name, payload, priority, run_at, max_attempts)
         SELECT $1, p.payload::jsonb, $3, coalesce($4, now()), $5
         FROM unnest($2::text[]) WITH ORDINALITY AS p(payload, ord)
         ORDER BY p.ord
         RETURNING id",
    )
    .bind(J::NAME)
    .bind(&payloads)
    .bind(opts.priority)
    .bind(opts.run_at)
    .bind(opts.max_attempts())
    .fetch_all(&mut *conn)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Debounced wake-up for workers. Cheap to clone; [`kick`](Self::kick) never blocks
/// and never touches the database itself: a background task sends at most one NOTIFY
/// per [`Notifier::WINDOW`] on its own pooled connection, however many commits kicked
/// it. A lost NOTIFY costs at most a worker's poll interval.
#[derive(Clone)]
pub struct Notifier {
    wanted: Arc<Notify>,
}

impl Notifier {
    /// The shortest gap between two NOTIFYs.
    pub const WINDOW: Duration = Duration::from_millis(1);

    /// Starts the sending task on the current Tokio runtime; it ends when every clone
    /// of the notifier is dropped.
    pub fn spawn(pool: PgPool) -> Self {
        // A NOTIFY-only transaction still gets an XID and, with synchronous commit, waits
        // for a WAL flush: a hint need not.
        let pool = super::async_commit_pool(&pool, 1);
        let wanted = Arc::new(Notify::new());
        let own = Arc::clone(&wanted);
        tokio::spawn(async move {
            loop {
                // Leading edge: the first kick is sent at once (idle latency); kicks that
                // arrive while sending or during the window coalesce into one more send.
                tokio::select! {
                    () = own.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if Arc::strong_count(&own) == 1 {
                            return;
                        }
                        continue;
                    }
                }
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "queue NOTIFY failed; workers will poll");
                }
                tokio::time::sleep(Self::WINDOW).await;
            }
        });
        Self { wanted }
    }

    /// Asks for a NOTIFY soon. Call it after the transaction that enqueued commits.
    pub fn kick(&self) {
        self.wanted.notify_one();
    }
}
