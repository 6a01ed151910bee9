//! The queue's client: the only producer of job rows, and the reads callers outside the
//! engine use.
//!
//! - [`enqueue`] / [`enqueue_many`] insert jobs on the caller's connection, so a job
//!   exists exactly when the caller's own writes do (River's `InsertTx`).
//! - [`JobsForRows`] writes one job per row that another insert of the caller's own
//!   statement creates: intake stores a batch of webhook logs and their jobs in ONE
//!   statement (one round trip, one commit; see `tasks/src/intake/writer.rs`), and this
//!   is how it does so without spelling the queue's columns or the job's JSON itself.
//! - [`Notifier`] wakes workers once the caller has committed.
//! - [`get_job`] / [`queue_stats`] read one job (live or finished) and the queue's shape.

use std::{marker::PhantomData, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, postgres::PgArguments, query::QueryAs};
use tokio::sync::Notify;

use super::{
    error::QueueError,
    job::{Job, JobId, JobKeys, RowKeys},
    record::{JobRecord, QueueStats},
    sql,
};

/// Attempts a job gets when its [`EnqueueOptions`]' `max_attempts` is `None`. Callers that
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
    /// Runs the job gets before it is dead; `None` is [`DEFAULT_MAX_ATTEMPTS`] (at least
    /// 1 either way).
    pub max_attempts: Option<i32>,
    /// Dedupes against live (pending or running) jobs: enqueueing a key that is already
    /// queued returns the queued job's id and inserts nothing. Single jobs only.
    pub unique_key: Option<String>,
    /// The job's group and conversation ([`JobKeys`]); for [`enqueue_many`], every job's
    /// unless [`enqueue_many_keyed`] gives each its own.
    pub keys: JobKeys,
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
    let inserted = sql::insert_job(
        conn,
        J::NAME,
        job,
        opts.priority,
        opts.run_at,
        opts.max_attempts(),
        opts.unique_key.as_deref(),
        &opts.keys,
    )
    .await?;
    if let Some(id) = inserted {
        return Ok(id);
    }
    // Only a unique_key conflict inserts nothing: answer with the live job's id.
    let key = opts.unique_key.clone().unwrap_or_default();
    sql::live_job_with_key(conn, &key)
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
    let keys = vec![opts.keys.clone(); jobs.len()];
    enqueue_many_keyed(conn, jobs, &keys, opts).await
}

/// [`enqueue_many`] with each job's own [`JobKeys`] (`keys[i]` for `jobs[i]`;
/// `opts.keys` is not used).
pub async fn enqueue_many_keyed<J: Job>(
    conn: &mut PgConnection,
    jobs: &[J],
    keys: &[JobKeys],
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
    let groups: Vec<String> = keys.iter().map(|k| k.group.clone()).collect();
    let orders: Vec<Option<String>> = keys.iter().map(|k| k.order.clone()).collect();
    let positions: Vec<Option<JobId>> = keys.iter().map(|k| k.position).collect();
    sql::insert_jobs(
        conn,
        J::NAME,
        &payloads,
        opts.priority,
        opts.run_at,
        opts.max_attempts(),
        &groups,
        &orders,
        &positions,
    )
    .await
}

/// Jobs of type `J` for rows that another insert of the caller's own statement creates,
/// written by that same statement: one job per row, whose payload is `make(row id)`.
///
/// The caller's statement is a chain of data-modifying CTEs. Its row insert draws each
/// row's job id with [`JobsForRows::NEXT_JOB_ID`] (stored on the row, so the row names
/// its job), and a later CTE whose body is [`JobsForRows::insert_sql`] inserts the jobs
/// for the rows it selects; [`JobsForRows::bind`] binds that CTE's parameters. Both ids
/// are drawn inside the statement because a data-modifying CTE cannot update rows
/// another one inserted in the same statement.
///
/// The payload is built through serde, not spelled in SQL: [`JobsForRows::new`]
/// serialises `make` of a placeholder id once, and the statement puts each row's id in
/// place of the placeholder's digits. `new` checks that this gives exactly what serde
/// gives for another id, so a job whose payload is not the row id written out (say,
/// `id + 1`) is refused rather than stored wrong.
pub struct JobsForRows<J> {
    template: String,
    job: PhantomData<fn() -> J>,
}

impl<J: Job> JobsForRows<J> {
    /// The SQL expression that draws a new job's id, for the caller's row insert.
    pub const NEXT_JOB_ID: &'static str = sql::NEXT_JOB_ID;

    /// The payload template for `make` (e.g. `|log_id| ProcessWebhook { log_id }`).
    pub fn new(make: impl Fn(i64) -> J) -> Result<Self, QueueError> {
        let encode = |id| {
            serde_json::to_string(&make(id)).map_err(|source| QueueError::Encode {
                task: J::NAME,
                source,
            })
        };
        let template = encode(sql::ROW_ID_PLACEHOLDER)?;
        let jobs = Self {
            template,
            job: PhantomData,
        };
        let probe = 4_611_686_018_427_387_903_i64;
        if jobs.render(probe) != encode(probe)? {
            return Err(QueueError::RowTemplate { task: J::NAME });
        }
        Ok(jobs)
    }

    /// The payload the statement writes for row `id`: what the database computes, done
    /// here for the check in [`new`](Self::new) and for tests.
    pub fn render(&self, id: i64) -> String {
        self.template
            .replace(&sql::ROW_ID_PLACEHOLDER.to_string(), &id.to_string())
    }

    /// The body of the caller's jobs CTE (`jobs AS (<this>)`): one job per row of `rows`
    /// (a `FROM` source with its `WHERE`, e.g. `"logs WHERE inserted"`), with the id the
    /// row drew in column `job_id` and the row's own id in column `row_id`. It takes five
    /// parameters, `$first` to `$first + 4`, which [`bind`](Self::bind) supplies. Each
    /// job's group and conversation are the `keys` expressions over its row. All names
    /// and expressions are SQL text from the caller's code, never input.
    pub fn insert_sql(
        rows: &str,
        job_id: &str,
        row_id: &str,
        first: usize,
        keys: RowKeys<'_>,
    ) -> String {
        sql::insert_jobs_for_rows(rows, job_id, row_id, first, keys)
    }

    /// Binds the parameters of [`insert_sql`](Self::insert_sql), in order, after the
    /// caller's own. `opts.unique_key` is refused: one key cannot dedupe many jobs.
    pub fn bind<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
        opts: &EnqueueOptions,
    ) -> Result<QueryAs<'q, Postgres, O, PgArguments>, QueueError> {
        if opts.unique_key.is_some() {
            return Err(QueueError::UniqueKeyInBatch);
        }
        Ok(query
            .bind(J::NAME)
            .bind(self.template.as_str())
            .bind(opts.priority)
            .bind(opts.run_at)
            .bind(opts.max_attempts()))
    }
}

/// Cancels the jobs among `ids` that have not started, on the caller's connection (an
/// operator retry drops the job a `failed` log still waited on, in the transaction that
/// enqueues its new one, so each log keeps one job). Answers how many were cancelled.
pub async fn cancel_pending(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, QueueError> {
    sql::cancel_pending(conn, ids).await
}

/// Finds a job wherever it is (live, or in the archive once finished); `None` once a
/// completed job was pruned.
pub async fn get_job(pool: &PgPool, id: JobId) -> Result<Option<JobRecord>, QueueError> {
    sql::get_job(pool, id).await
}

/// The queue at a glance.
pub async fn queue_stats(pool: &PgPool) -> Result<QueueStats, QueueError> {
    sql::queue_stats(pool).await
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
        let pool = sql::async_commit_pool(&pool, 1);
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
                if let Err(e) = sql::notify(&pool).await {
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

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ForRow {
        row_id: i64,
        kind: String,
    }
    impl Job for ForRow {
        const NAME: &'static str = "test.for_row";
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct NextRow {
        row_id: i64,
    }
    impl Job for NextRow {
        const NAME: &'static str = "test.next_row";
    }

    #[test]
    fn a_row_jobs_payload_is_what_serde_writes_for_that_row() {
        let jobs = JobsForRows::new(|row_id| ForRow {
            row_id,
            kind: "-1 is not an id".into(),
        })
        .unwrap();
        for id in [0, 1, -1, 42, 9_007_199_254_740_993, i64::MAX] {
            let decoded: ForRow = serde_json::from_str(&jobs.render(id)).unwrap();
            assert_eq!(
                decoded,
                ForRow {
                    row_id: id,
                    kind: "-1 is not an id".into()
                }
            );
        }
    }

    #[test]
    fn a_payload_that_is_not_the_row_id_written_out_is_refused() {
        let refused = JobsForRows::new(|id| NextRow {
            row_id: id.wrapping_add(1),
        });
        assert!(
            matches!(
                refused,
                Err(QueueError::RowTemplate {
                    task: "test.next_row"
                })
            ),
            "{:?}",
            refused.err()
        );
    }
}
