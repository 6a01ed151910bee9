//! Every write that moves `webhook_logs.status`, each named, set-based (a single row is a
//! slice of one), guarded by its from-states, which are declared once as a
//! [`Transition`] const and bound into its statement (`status = ANY(…)`): the table below
//! and the SQL cannot disagree. Each returns the ids it moved, so a stale or duplicate
//! run learns that it changed nothing, and a finished log is never moved backwards.
//!
//! | transition | from | to | who |
//! |---|---|---|---|
//! | [`START`] | pending, failed, processing | processing | a `process_webhook` run begins (processing: a re-run after a lost lease) |
//! | [`FINISH`] | processing | processed | the run recorded or skipped the event |
//! | [`STORE_REPLY`] | processing | processing | the run keeps its generated reply (inside the transaction that finishes or stages it) |
//! | [`FINISH_REPLIED`] | processing | processed | the reply needs no delivery, or was already delivered |
//! | [`AWAIT_DELIVERY`] | processing | pending | the reply is staged and its delivery job queued: no worker holds the log |
//! | [`HAND_BACK`] | processing | pending | a stopping worker handed the run back unfinished |
//! | [`SCHEDULE_RETRY`] | processing | failed | the run failed transiently; `next_retry_at` set |
//! | [`DEAD_LETTER`] | pending, processing, failed | dead_letter | the run failed permanently or on its last attempt, or its job died |
//! | [`DELIVERY_CLAIMED`] | pending, failed | processing | a delivery attempt is committed before its request leaves |
//! | [`DELIVERED`] | pending, processing, failed | processed | the endpoint took the reply |
//! | [`DELIVERY_RETRYING`] | pending, processing, failed | failed | a delivery try failed; another is scheduled |
//! | [`DELIVERY_FAILED`] | pending, processing, failed | dead_letter | delivery ended without delivering (or its outcome is unknown) |
//! | [`RESET_FOR_RETRY`] | failed, dead_letter | pending | an operator retry, with its new job |
//! | [`PURGE`] | processed | (deleted) | retention |
//! | [`DELETE_MATCHING`] | processed, failed, dead_letter | (deleted) | an operator deletes every log matching a filter (logs in flight are left to their runs) |
//!
//! The delivery transitions accept `pending` and `failed` as well as `processing`
//! because the log waits `pending` for its delivery job and `failed` between delivery
//! tries; the use case's own finishing moves require `processing` (its run holds the log).
//! Deleting one log by id (an operator's delete) is the only write not guarded by
//! status. Ingest's insert is the statement that makes a log (`pending`, with its job):
//! `hookq_tasks::intake`'s writer, one statement per batch with the jobs.
//!
//! `tasks/tests/log_transitions.rs` walks every transition from every state.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, QueryBuilder};
use uuid::Uuid;

use super::Started;
use crate::{
    error::Result,
    logs::{LogStatus, Outcome, SkipReason, reads::LogFilter},
};

use LogStatus::{DeadLetter, Failed, Pending, Processed, Processing};

/// A named move of `webhook_logs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The const's name (`START`, `FINISH`, …), as the module's table names it.
    pub name: &'static str,
    /// The states a log may be in for the move to apply; any other leaves it untouched.
    pub from: &'static [LogStatus],
    /// Where it ends; `None` for a delete.
    pub to: Option<LogStatus>,
}

impl Transition {
    /// The from-states as the statements bind them.
    fn bound_from(&self) -> Vec<&'static str> {
        self.from.iter().map(|s| s.as_str()).collect()
    }

    /// Whether a log in `status` may take this move.
    pub fn allows(&self, status: LogStatus) -> bool {
        self.from.contains(&status)
    }
}

macro_rules! transition {
    ($(#[$doc:meta])* $name:ident: [$($from:ident),+] => $to:expr) => {
        $(#[$doc])*
        pub const $name: Transition = Transition {
            name: stringify!($name),
            from: &[$($from),+],
            to: $to,
        };
    };
}

transition!(
    /// A `process_webhook` run begins (from `processing`: a re-run after a lost lease).
    START: [Pending, Failed, Processing] => Some(Processing)
);
transition!(
    /// The run recorded or skipped the event.
    FINISH: [Processing] => Some(Processed)
);
transition!(
    /// The run keeps its generated reply, inside the transaction that finishes or stages
    /// it.
    STORE_REPLY: [Processing] => Some(Processing)
);
transition!(
    /// The reply needs no delivery, or was already delivered.
    FINISH_REPLIED: [Processing] => Some(Processed)
);
transition!(
    /// The reply is staged and its delivery job queued: no worker holds the log.
    AWAIT_DELIVERY: [Processing] => Some(Pending)
);
transition!(
    /// A stopping worker handed the run back unfinished.
    HAND_BACK: [Processing] => Some(Pending)
);
transition!(
    /// The run failed transiently; `next_retry_at` is set.
    SCHEDULE_RETRY: [Processing] => Some(Failed)
);
transition!(
    /// The run failed permanently or on its last attempt, or its job died.
    DEAD_LETTER: [Pending, Processing, Failed] => Some(DeadLetter)
);
transition!(
    /// A delivery attempt is committed before its request leaves.
    DELIVERY_CLAIMED: [Pending, Failed] => Some(Processing)
);
transition!(
    /// The endpoint took the reply.
    DELIVERED: [Pending, Processing, Failed] => Some(Processed)
);
transition!(
    /// A delivery try failed; another is scheduled.
    DELIVERY_RETRYING: [Pending, Processing, Failed] => Some(Failed)
);
transition!(
    /// Delivery ended without delivering (or its outcome is unknown).
    DELIVERY_FAILED: [Pending, Processing, Failed] => Some(DeadLetter)
);
transition!(
    /// An operator retry, with its new job.
    RESET_FOR_RETRY: [Failed, DeadLetter] => Some(Pending)
);
transition!(
    /// Retention deletes the log.
    PURGE: [Processed] => None
);
transition!(
    /// An operator deletes every log matching a filter (contract section 13). A
    /// `pending` or `processing` log is left out: a run holds it or is about to.
    DELETE_MATCHING: [Processed, Failed, DeadLetter] => None
);

/// Every transition, for the doc table's test.
pub const ALL: &[Transition] = &[
    START,
    FINISH,
    STORE_REPLY,
    FINISH_REPLIED,
    AWAIT_DELIVERY,
    HAND_BACK,
    SCHEDULE_RETRY,
    DEAD_LETTER,
    DELIVERY_CLAIMED,
    DELIVERED,
    DELIVERY_RETRYING,
    DELIVERY_FAILED,
    RESET_FOR_RETRY,
    PURGE,
    DELETE_MATCHING,
];

/// [`START`] for many runs in one statement: the logs that moved to `processing`, in no
/// particular order (ids must be distinct; a log that was not startable is left out).
/// `attempts[i]` is the run number of `ids[i]`'s job.
///
/// Committed synchronously, before the run begins: the finishing moves need the log
/// `processing`, so a mark lost while the run goes on would leave the run finishing
/// nothing and its job completing with the log still `pending`, no job left to run it.
/// An asynchronous mark (as until issue 15) could be lost that way: the queue's claim
/// is older in the WAL, so a crash or a failover can keep the claim and drop the mark
/// (`scripts/scale` lost 4 acknowledged events so, in 2 of 20 failovers through
/// PgBouncer, where the claim itself commits synchronously). Measured: under load it
/// costs nothing visible, starts being grouped (one commit per batch): `COST_ONLY=1
/// scripts/bench` ran 4,617–5,064 events/s with it against 4,139–4,152 without,
/// alternating; an idle webhook pays one more WAL flush, p50 4.65–4.72 ms against
/// 3.74–4.15 (`bench webhook-latency`, alternating). Finishing moves that accepted a log
/// whose mark was lost, guarded by the run's attempt number, would let the mark be
/// asynchronous again. The flush also makes the queue's earlier asynchronous claim
/// durable. It also reads the directory's change counter, so a caching directory is
/// checked at no cost.
pub async fn start(
    pool: &PgPool,
    ids: &[i64],
    attempts: &[u32],
) -> std::result::Result<Vec<Started>, sqlx::Error> {
    let attempts: Vec<i32> = attempts
        .iter()
        .map(|a| i32::try_from(*a).unwrap_or(i32::MAX))
        .collect();
    // Planner-proof on purpose. Finding the rows by `id = ANY` (no join) and guarding the
    // status with an expression no index matches leaves the primary key as the only way
    // in: statistics taken while the table had no pending logs (just after a quiet spell)
    // otherwise make "scan every pending log through the status index, per batch" look
    // cheapest, and a backlog turns that quadratic. The btree visits the ids in order,
    // so concurrent batches lock rows in the same order and never deadlock.
    sqlx::query_as(
        "UPDATE webhook_logs l SET status = 'processing', started_at = now(), next_retry_at = NULL,
                updated_at = now(), attempts = ($2::int[])[array_position($1::bigint[], l.id)]
         WHERE l.id = ANY($1::bigint[])
           AND (l.status = ANY($3::text[])) IS TRUE
         RETURNING l.*, coalesce((SELECT version FROM directory_version), 0) AS directory_version",
    )
    .bind(ids)
    .bind(&attempts)
    .bind(START.bound_from())
    .fetch_all(pool)
    .await
}

/// [`FINISH`]: recorded or skipped, with the integration the run resolved.
pub async fn finish(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    outcome: Outcome,
    skip: Option<SkipReason>,
    integration_id: Option<Uuid>,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'processed', outcome = $2, skip_reason = $3,
                integration_id = COALESCE($4, integration_id), error_message = NULL,
                processed_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = ANY($5) RETURNING id",
    )
    .bind(ids)
    .bind(outcome.as_str())
    .bind(skip.map(SkipReason::as_str))
    .bind(integration_id)
    .bind(FINISH.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`STORE_REPLY`]: keeps the generated reply on a `processing` log (inside the caller's
/// transaction, which also finishes the log or stages its delivery), so a re-run or an
/// operator resend reuses the text instead of generating another.
pub async fn store_reply(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    reply: &str,
    integration_id: Option<Uuid>,
    persona_id: Option<Uuid>,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET reply_text = $2, integration_id = COALESCE($3, integration_id),
                persona_id = COALESCE($4, persona_id), updated_at = now()
         WHERE id = ANY($1) AND status = ANY($5) RETURNING id",
    )
    .bind(ids)
    .bind(reply)
    .bind(integration_id)
    .bind(persona_id)
    .bind(STORE_REPLY.bound_from())
    .fetch_all(db)
    .await?)
}

/// One reply to store and finish with ([`finish_with_replies`]).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The log the reply answers.
    pub log_id: i64,
    /// The generated reply text.
    pub text: String,
    /// The integration the run resolved; `None` keeps the log's.
    pub integration_id: Option<Uuid>,
    /// The persona that wrote it; `None` keeps the log's.
    pub persona_id: Option<Uuid>,
}

/// [`FINISH_REPLIED`] with each log's reply stored in the same statement: a reply with
/// `none` delivery costs one row update, and a batch of them one statement and one WAL
/// flush (`hookq_tasks`' reply finisher gathers them). The ids moved; a log listed twice
/// moves once.
pub async fn finish_with_replies(db: impl PgExecutor<'_>, replies: &[Reply]) -> Result<Vec<i64>> {
    let ids: Vec<i64> = replies.iter().map(|r| r.log_id).collect();
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    let integrations: Vec<Option<Uuid>> = replies.iter().map(|r| r.integration_id).collect();
    let personas: Vec<Option<Uuid>> = replies.iter().map(|r| r.persona_id).collect();
    // The primary key is the only way in, whatever the statistics say (see [`start`]),
    // and it visits the ids in order: concurrent batches lock rows in the same order and
    // never deadlock.
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs l SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                reply_text = ($2::text[])[array_position($1::bigint[], l.id)],
                integration_id = COALESCE(($3::uuid[])[array_position($1::bigint[], l.id)], l.integration_id),
                persona_id = COALESCE(($4::uuid[])[array_position($1::bigint[], l.id)], l.persona_id),
                error_message = NULL, next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE l.id = ANY($1::bigint[]) AND (l.status = ANY($5::text[])) IS TRUE
         RETURNING l.id",
    )
    .bind(&ids)
    .bind(&texts)
    .bind(&integrations)
    .bind(&personas)
    .bind(FINISH_REPLIED.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`FINISH_REPLIED`] for logs whose reply is already stored (a reply delivered earlier).
pub async fn finish_replied(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                error_message = NULL, next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = ANY($2) RETURNING id",
    )
    .bind(ids)
    .bind(FINISH_REPLIED.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`AWAIT_DELIVERY`]: the reply is stored and its delivery job queued (inside the
/// caller's transaction, which stages both). `processing` means a worker holds the log
/// (contract section 4); until a delivery job claims an attempt for it
/// ([`DELIVERY_CLAIMED`]) none does, so a worker that stops meanwhile leaves nothing
/// `processing` behind.
pub async fn await_delivery(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'pending', updated_at = now()
         WHERE id = ANY($1) AND status = ANY($2) RETURNING id",
    )
    .bind(ids)
    .bind(AWAIT_DELIVERY.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`HAND_BACK`] for the run of job `job_id` that a stopping worker handed back
/// unfinished (the queue undid its claim, so the run does not count as an attempt, and
/// the log's `attempts` goes back with it). Only while the log still belongs to that job.
pub async fn hand_back(db: impl PgExecutor<'_>, ids: &[i64], job_id: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'pending', attempts = greatest(attempts - 1, 0),
                updated_at = now()
         WHERE id = ANY($1) AND job_id = $2 AND status = ANY($3) RETURNING id",
    )
    .bind(ids)
    .bind(job_id)
    .bind(HAND_BACK.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`SCHEDULE_RETRY`]: the run failed transiently; the next one is due at `next_retry_at`.
pub async fn schedule_retry(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    error: &str,
    next_retry_at: DateTime<Utc>,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'failed', error_message = $2, next_retry_at = $3,
                updated_at = now()
         WHERE id = ANY($1) AND status = ANY($4) RETURNING id",
    )
    .bind(ids)
    .bind(error)
    .bind(next_retry_at)
    .bind(SCHEDULE_RETRY.bound_from())
    .fetch_all(db)
    .await?)
}

/// Which logs a dead letter applies to.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// These logs, whatever job they belong to.
    Logs(&'a [i64]),
    /// These logs, only while they still belong to job `job_id` (an operator retry
    /// attaches a log to a new job, and the old job's death must not touch it).
    LogsOfJob(&'a [i64], i64),
    /// Whatever log belongs to job `job_id` (a payload too broken to name its log): a
    /// scan by `job_id`, which no index serves (see migration 0009), for a rare case.
    Job(i64),
}

/// [`DEAD_LETTER`] with `error` as the log's `error_message`.
pub async fn dead_letter(
    db: impl PgExecutor<'_>,
    owner: Owner<'_>,
    error: &str,
) -> Result<Vec<i64>> {
    let q = match owner {
        Owner::Logs(ids) => sqlx::query_scalar(
            "UPDATE webhook_logs SET status = 'dead_letter', error_message = $2,
                    next_retry_at = NULL, processed_at = now(), updated_at = now()
             WHERE id = ANY($1) AND status = ANY($3) RETURNING id",
        )
        .bind(ids),
        Owner::LogsOfJob(ids, _) => sqlx::query_scalar(
            "UPDATE webhook_logs SET status = 'dead_letter', error_message = $2,
                    next_retry_at = NULL, processed_at = now(), updated_at = now()
             WHERE id = ANY($1) AND status = ANY($3) AND job_id = $4 RETURNING id",
        )
        .bind(ids),
        Owner::Job(job_id) => sqlx::query_scalar(
            "UPDATE webhook_logs SET status = 'dead_letter', error_message = $2,
                    next_retry_at = NULL, processed_at = now(), updated_at = now()
             WHERE job_id = $1 AND status = ANY($3) RETURNING id",
        )
        .bind(job_id),
    };
    let q = q.bind(error).bind(DEAD_LETTER.bound_from());
    let q = match owner {
        Owner::LogsOfJob(_, job_id) => q.bind(job_id),
        _ => q,
    };
    Ok(q.fetch_all(db).await?)
}

/// [`DELIVERY_CLAIMED`]: a worker holds the log again (it waited `pending` for its
/// delivery job, or `failed` for a retry). Inside the claim's transaction.
pub async fn delivery_claimed(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'processing', next_retry_at = NULL, updated_at = now()
         WHERE id = ANY($1) AND status = ANY($2) RETURNING id",
    )
    .bind(ids)
    .bind(DELIVERY_CLAIMED.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`DELIVERED`]: `processed` with outcome `replied`.
pub async fn delivered(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                error_message = NULL, next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = ANY($2) RETURNING id",
    )
    .bind(ids)
    .bind(DELIVERED.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`DELIVERY_RETRYING`]: `failed` until the next try at `next_retry_at`.
pub async fn delivery_retrying(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    error: &str,
    next_retry_at: DateTime<Utc>,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'failed', error_message = $2, next_retry_at = $3,
                updated_at = now()
         WHERE id = ANY($1) AND status = ANY($4) RETURNING id",
    )
    .bind(ids)
    .bind(error)
    .bind(next_retry_at)
    .bind(DELIVERY_RETRYING.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`DELIVERY_FAILED`]: `dead_letter`, `error` saying why.
pub async fn delivery_failed(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    error: &str,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs SET status = 'dead_letter', error_message = $2, next_retry_at = NULL,
                processed_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = ANY($3) RETURNING id",
    )
    .bind(ids)
    .bind(error)
    .bind(DELIVERY_FAILED.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`RESET_FOR_RETRY`]: each log back to `pending`, attached to its new job
/// (`job_ids[i]` for `ids[i]`), its run count and outcome cleared. The ids reset.
pub async fn reset_for_retry(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    job_ids: &[i64],
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_logs l SET status = 'pending', job_id = t.job, error_message = NULL,
                next_retry_at = NULL, attempts = 0, processed_at = NULL, outcome = NULL,
                skip_reason = NULL, updated_at = now()
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, job)
         WHERE l.id = t.id AND l.status = ANY($3) RETURNING l.id",
    )
    .bind(ids)
    .bind(job_ids)
    .bind(RESET_FOR_RETRY.bound_from())
    .fetch_all(db)
    .await?)
}

/// [`PURGE`]: deletes up to `limit` logs of `partition` (one of `webhook_logs`'
/// partitions, [`super::partitions`]) processed before `cutoff` (oldest first) and answers
/// how many went; dead letters and anything in flight are kept until an operator handles
/// them. Retention's row-by-row path, for the default partition and for a month it could
/// not drop whole; the delete goes through the parent table so that its statement
/// trigger removes what belonged to the logs. The one statement whose from-state is
/// spelled in its SQL rather than bound: a literal `status = 'processed'` is what lets the
/// planner use the partial index `webhook_logs_processed_window` (a bound array cannot
/// prove its predicate); the transitions test checks it against [`PURGE`].
pub async fn purge_processed(
    pool: &PgPool,
    partition: &super::partitions::LogPartition,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64> {
    let sql = format!(
        "DELETE FROM webhook_logs WHERE (id, received_at) IN (
            SELECT id, received_at FROM {table} WHERE status = 'processed' AND processed_at < $1
            ORDER BY processed_at LIMIT $2)",
        table = partition.logs_table()
    );
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(cutoff)
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// [`DELETE_MATCHING`]: deletes up to `limit` logs matching `filter` (oldest first) and
/// answers their ids. Rows another transaction holds are skipped, so two operators
/// pressing "delete all" never wait on each other.
pub async fn delete_matching(pool: &PgPool, filter: &LogFilter, limit: i64) -> Result<Vec<i64>> {
    let mut q =
        QueryBuilder::new("DELETE FROM webhook_logs WHERE id IN (SELECT id FROM webhook_logs");
    filter.push_where(&mut q);
    q.push(" AND status = ANY(")
        .push_bind(DELETE_MATCHING.bound_from())
        .push(") ORDER BY received_at, id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED) RETURNING id");
    Ok(q.build_query_scalar().fetch_all(pool).await?)
}

/// Deletes one log, whatever its state (an operator's delete). False when it was gone.
pub async fn delete(pool: &PgPool, id: i64) -> Result<bool> {
    let r = sqlx::query("DELETE FROM webhook_logs WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}
