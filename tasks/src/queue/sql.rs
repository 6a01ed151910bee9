//! Every statement on the queue's tables (`queue_jobs`, `queue_jobs_done`,
//! `queue_periodic`) and its NOTIFY channel, as functions over a pool or the caller's
//! connection and plain arguments. No other file of the queue holds SQL: the rooms
//! decide *when* a statement runs, this file *what* it says.
//!
//! The states and columns are documented in `migrations/0002_queue.sql` and on
//! [`JobStatus`](super::record::JobStatus). Three rules hold for every statement here:
//!
//! - Every timestamp comes from the database clock (`now()`), so workers on hosts with
//!   skewed clocks agree on leases and schedules. The one exception is a caller-supplied
//!   `due_by` for [`claim`], which only `Workers::run_once_at` (tests) passes.
//! - A statement over a batch of ids also filters `j.id = ANY($1)`, so the planner looks
//!   rows up by primary key instead of joining the arrays against a scan of the table.
//! - A statement that settles a run (lease extension, archive, retry, hand back) matches
//!   on `(id, attempts, status = 'running', locked_by = us)`: a job whose lease expired
//!   and was claimed again (elsewhere, or here as a newer attempt) is never touched by
//!   the stale run's outcome.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::{PgConnection, PgPool, postgres::PgListener, types::Json};

use super::{
    error::QueueError,
    job::{GroupRate, JobId, JobKeys, RowKeys},
    record::{JobRecord, QueueStats},
};

/// The Postgres channel workers LISTEN on for "new jobs" wake-ups.
pub const NOTIFY_CHANNEL: &str = "hookq_queue";

/// A pool over the same database whose sessions commit with `synchronous_commit = off`,
/// for the queue's own bookkeeping: claims, lease renewals, sweeps, outcome writes and
/// NOTIFYs. Losing the last few milliseconds of those in a server crash only means a
/// job runs again once its lease expires (at-least-once execution allows it) or a
/// worker waits for its next poll; it saves a WAL flush on every claim, outcome batch
/// and wake-up. Enqueues and the handlers' own writes (the caller's pool) stay fully
/// synchronous.
///
/// These sessions also run with `enable_nestloop = off`. Every bookkeeping statement
/// matches a batch of ids (an `unnest` of arrays) against `queue_jobs`, where the
/// statistics say almost nothing is `running` (rows churn far faster than ANALYZE): the
/// planner then loops over the rows found by the lease index and rescans the whole
/// array for each, which is quadratic in the batch (2,691 completions took 1.8 s in the
/// benchmark, 2.5 ms as a hash join). None of these statements wants a nested loop.
///
/// And with `plan_cache_mode = force_generic_plan`: the same few statements run on every
/// connection, and PostgreSQL otherwise plans each one afresh for its first five runs
/// per connection (and on, where a custom plan looks cheaper); that planning measured
/// 0.26 ms per claim and 0.48 ms per outcome batch on the idle path.
///
/// And with `jit = off`: the nested-loop penalty above inflates the estimated cost of
/// the fair claim (whose per-group lateral scans must loop) past `jit_above_cost`, and
/// compiling it took 1.3 s per claim for a statement that runs in 1.2 ms.
///
/// And with `enable_seqscan = off`, for the same stale statistics: a burst into a queue
/// that was empty when last analyzed is, to the planner, still an empty table, and the
/// generic claim plan made then scanned `queue_jobs` sequentially, with the
/// conversation check (`NOT EXISTS` an earlier job of the same order key) a second
/// sequential scan per row. That is quadratic in the backlog: with 18,601 pending jobs
/// one claim took 95 s (auto_explain, `hookq send --count 20000 --wait-processed`);
/// by the indexes it walks at most a batch of each group. Every bookkeeping statement
/// has an index to use; one that had none would still scan.
pub(crate) fn async_commit_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let derived = async_commit_pool_on(pool, max_connections);
    // After a failover moves the main pool (several hosts in DATABASE_URL), this one
    // follows it.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(hookq_core::db::follow_pool(
            derived.clone(),
            pool.clone(),
            async_commit_options,
        ));
    }
    derived
}

/// The bookkeeping settings over `opts` (see [`async_commit_pool`]).
///
/// Through a pooler in transaction mode ([`hookq_core::db::is_session_free`]) no session
/// setting can be made (PgBouncer refuses the startup `options`): the bookkeeping then
/// commits synchronously and each statement is planned with its own values, which the
/// planner settings below exist to steer only for cached generic plans.
fn async_commit_options(
    opts: sqlx::postgres::PgConnectOptions,
) -> sqlx::postgres::PgConnectOptions {
    if hookq_core::db::is_session_free(&opts) {
        return opts;
    }
    opts.options([
        ("synchronous_commit", "off"),
        ("enable_nestloop", "off"),
        ("enable_seqscan", "off"),
        ("plan_cache_mode", "force_generic_plan"),
        ("jit", "off"),
    ])
}

fn async_commit_pool_on(pool: &PgPool, max_connections: u32) -> PgPool {
    let opts = async_commit_options((*pool.connect_options()).clone());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before each checkout (a round trip on every claim, outcome batch and
        // NOTIFY): a connection that died while idle (database restart) fails its one
        // statement, is closed when released (sqlx pings on release), and every caller
        // of this pool retries after a pause.
        .test_before_acquire(false)
        .connect_lazy_with(opts)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------
// Producing job rows (the client's statements).

/// Inserts one job; `None` when a live job already holds `unique_key`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_job(
    conn: &mut PgConnection,
    task_name: &str,
    payload: &(impl serde::Serialize + Sync),
    priority: i16,
    run_at: Option<DateTime<Utc>>,
    max_attempts: i32,
    unique_key: Option<&str>,
    keys: &JobKeys,
) -> Result<Option<JobId>, QueueError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO queue_jobs (task_name, payload, priority, run_at, max_attempts, unique_key,
                                 group_key, order_key, order_pos)
         VALUES ($1, $2, $3, coalesce($4, now()), $5, $6, $7, $8, $9)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(task_name)
    .bind(Json(payload))
    .bind(priority)
    .bind(run_at)
    .bind(max_attempts)
    .bind(unique_key)
    .bind(&keys.group)
    .bind(&keys.order)
    .bind(keys.position)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The live job holding `unique_key`, if any.
pub(crate) async fn live_job_with_key(
    conn: &mut PgConnection,
    unique_key: &str,
) -> Result<Option<JobId>, QueueError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM queue_jobs WHERE unique_key = $1")
            .bind(unique_key)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Inserts one job per payload (already encoded) in one statement, job `i` with
/// `groups[i]`, `orders[i]` and `positions[i]` (all empty: no group, no order key, its
/// own place); returns their ids in input order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_jobs(
    conn: &mut PgConnection,
    task_name: &str,
    payloads: &[String],
    priority: i16,
    run_at: Option<DateTime<Utc>>,
    max_attempts: i32,
    groups: &[String],
    orders: &[Option<String>],
    positions: &[Option<JobId>],
) -> Result<Vec<JobId>, QueueError> {
    // Identity values are drawn as the sorted rows are inserted, so ascending ids are
    // input order whatever order RETURNING reports them in.
    if groups.iter().all(String::is_empty)
        && orders.iter().all(Option::is_none)
        && positions.iter().all(Option::is_none)
    {
        // No job has a key: the statement without the keys' join (`bench queue`'s
        // batch enqueue, 1,000 jobs per statement: 53–59k/s with the join, ~63k/s
        // without, same cluster).
        let mut ids: Vec<JobId> = sqlx::query_scalar(
            "INSERT INTO queue_jobs (task_name, payload, priority, run_at, max_attempts)
             SELECT $1, p.payload::jsonb, $3, coalesce($4, now()), $5
             FROM unnest($2::text[]) WITH ORDINALITY AS p(payload, ord)
             ORDER BY p.ord
             RETURNING id",
        )
        .bind(task_name)
        .bind(payloads)
        .bind(priority)
        .bind(run_at)
        .bind(max_attempts)
        .fetch_all(&mut *conn)
        .await?;
        ids.sort_unstable();
        return Ok(ids);
    }
    let mut ids: Vec<JobId> = sqlx::query_scalar(
        "INSERT INTO queue_jobs (task_name, payload, priority, run_at, max_attempts, group_key,
                                 order_key, order_pos)
         SELECT $1, p.payload::jsonb, $3, coalesce($4, now()), $5, coalesce(k.grp, ''), k.ord_key,
                k.pos
         FROM unnest($2::text[]) WITH ORDINALITY AS p(payload, ord)
         LEFT JOIN unnest($6::text[], $7::text[], $8::int8[]) WITH ORDINALITY AS k(grp, ord_key, pos, ord)
             ON k.ord = p.ord
         ORDER BY p.ord
         RETURNING id",
    )
    .bind(task_name)
    .bind(payloads)
    .bind(priority)
    .bind(run_at)
    .bind(max_attempts)
    .bind(groups)
    .bind(orders)
    .bind(positions)
    .fetch_all(&mut *conn)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// The SQL expression that draws a new job's id from the queue's identity sequence, for
/// a caller's own insert that must name its job before the job row exists (a
/// data-modifying CTE cannot update rows another one inserted in the same statement).
pub(crate) const NEXT_JOB_ID: &str =
    "nextval((SELECT pg_get_serial_sequence('queue_jobs', 'id'))::regclass)";

/// The placeholder a row-job payload template carries where the row's id goes. It is
/// `i64::MIN`, which no serialised id of a real row can be.
pub(crate) const ROW_ID_PLACEHOLDER: i64 = i64::MIN;

/// The body of a data-modifying CTE that inserts one job per row of `rows` (a `FROM`
/// source, with its `WHERE` if any), with id `job_id` (drawn with [`NEXT_JOB_ID`]), the
/// payload template with `row_id` in place of [`ROW_ID_PLACEHOLDER`], and the group and
/// order keys the SQL expressions `keys` compute from the row. It takes five parameters
/// from `$first`: task name, payload template, priority, run_at (null: now) and max
/// attempts. `rows`, `job_id`, `row_id` and `keys` are SQL text from the caller's own
/// code, never input.
pub(crate) fn insert_jobs_for_rows(
    rows: &str,
    job_id: &str,
    row_id: &str,
    first: usize,
    keys: RowKeys<'_>,
) -> String {
    let [task, template, priority, run_at, max_attempts] =
        [first, first + 1, first + 2, first + 3, first + 4];
    let RowKeys { group, order } = keys;
    format!(
        "INSERT INTO queue_jobs (id, task_name, payload, priority, run_at, max_attempts,
                                 group_key, order_key)
        OVERRIDING SYSTEM VALUE
    SELECT {job_id}, ${task},
        replace(${template}, '{ROW_ID_PLACEHOLDER}', ({row_id})::text)::jsonb,
        ${priority}, coalesce(${run_at}, now()), ${max_attempts},
        coalesce({group}, ''), {order}
    FROM {rows}
    ORDER BY {row_id}"
    )
}

/// Deletes the jobs among `ids` that still wait (`pending`); answers how many went.
/// A running or finished job is left alone.
pub(crate) async fn cancel_pending(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<u64, QueueError> {
    Ok(
        sqlx::query("DELETE FROM queue_jobs WHERE id = ANY($1) AND status = 'pending'")
            .bind(ids)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// `SELECT pg_notify(NOTIFY_CHANNEL, '')`: wakes every LISTENing worker.
pub(crate) async fn notify(pool: &PgPool) -> Result<(), QueueError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading jobs.

/// Finds a job wherever it is; one statement (one snapshot), so a job moving to the
/// archive meanwhile is seen exactly once.
pub(crate) async fn get_job(pool: &PgPool, id: JobId) -> Result<Option<JobRecord>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT id, task_name, status, priority, attempts, max_attempts, run_at, unique_key,
                last_error, errors, NULL::jsonb AS result, locked_by, lease_expires_at,
                created_at, started_at, NULL::timestamptz AS finished_at
         FROM queue_jobs WHERE id = $1
         UNION ALL
         SELECT id, task_name, status, priority, attempts, max_attempts, run_at, unique_key,
                last_error, errors, result, NULL, NULL, created_at, started_at, finished_at
         FROM queue_jobs_done WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The queue's shape: backlog, running, scheduled, dead.
pub(crate) async fn queue_stats(pool: &PgPool) -> Result<QueueStats, QueueError> {
    Ok(sqlx::query_as(
        "SELECT
            count(*) FILTER (WHERE status = 'pending' AND run_at <= now()) AS depth,
            count(*) FILTER (WHERE status = 'running') AS running,
            count(*) FILTER (WHERE status = 'pending' AND run_at > now() AND attempts > 0) AS scheduled_retries,
            count(*) FILTER (WHERE status = 'pending' AND run_at > now() AND attempts = 0) AS scheduled,
            (SELECT count(*) FROM queue_jobs_done WHERE status = 'dead') AS dead,
            extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending' AND run_at <= now()))::float8
                AS oldest_pending_age_secs
         FROM queue_jobs",
    )
    .fetch_one(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------
// Claiming and leases (the producer's and maintenance's statements).

/// A row as the claim returns it.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    pub(crate) id: JobId,
    pub(crate) task_name: String,
    pub(crate) payload: Json<Box<RawValue>>,
    /// The row's attempt counter, already counting this claim.
    pub(crate) attempts: i32,
    pub(crate) max_attempts: i32,
    /// Its fair-share group (`''`: none).
    pub(crate) group_key: String,
}

/// How a claim shares out work across groups (see the queue's module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fairness<'a> {
    /// The group this producer served last: the round-robin starts after it.
    pub(crate) cursor: &'a str,
    /// The rate limit of a group whose budget names none (`''` is never limited).
    pub(crate) default_rate: Option<GroupRate>,
    /// Serialise the claim with every other strict claim (a transaction-scoped advisory
    /// lock taken before the claim's snapshot), so `max_running` and rate limits hold
    /// across processes. Needed only while some group has such a budget.
    pub(crate) strict: bool,
}

/// The advisory lock strict claims serialise on.
const CLAIM_LOCK: i64 = 7_274_001;

/// The claim's choice (River's `JobGetAvailable`, made fair; [`TAKE`] then claims what
/// it chose): walks the groups with pending jobs
/// (a loose index scan of `queue_jobs_ready`), works out each group's room (0 when
/// paused; else the least of the batch, `max_running` minus its running jobs, and its
/// rate limit minus its running jobs and its runs finished within the window), takes up
/// to that many of each group's ready jobs whose conversation has no live job at an
/// earlier place (`order_pos`, else the id),
/// ranks them round-robin (every group's first job, then every group's second...;
/// groups after the cursor first) and answers the first `$2`. It locks nothing: a
/// row lock taken inside this many-CTE statement, when a concurrent completer or claim
/// touched the table, stalled it for seconds under test, so the lock is taken by the
/// plain [`TAKE`] on the chosen ids.
///
/// Besides the ids, one row without an id may say in how many milliseconds the first
/// group held by its rate limit gets room again (its oldest run in the window leaves
/// it), so the producer looks again then rather than at its next poll: without it a
/// 500/s limit drained at 280/s, each window's burst followed by up to a second's poll.
///
/// A claim that is not strict (see [`Fairness::strict`]) gives a budgeted group no room:
/// a budget set a moment ago, before the producer's next look (at most
/// `BUDGET_CHECK` later), delays that group's jobs until its claims are strict, rather
/// than letting two unserialised claims both spend the same room.
///
/// A group without `max_running` or a rate limit gets the whole batch as its room
/// without counting its running jobs (that count, ~460 index entries behind a 20,000
/// backlog, was most of a claim's cost on the one-account path).
///
/// Written so that stale statistics (see [`async_commit_pool`]) leave one plan: the
/// partial indexes' predicates (`group_key <> ''`) are spelled out so they apply, and the
/// conversation check compares places (`coalesce(order_pos, id) + 0`), which no index serves, so it is always the
/// `queue_jobs_order` probe of one conversation's few live jobs: planned as a bitmap
/// scan of the primary key (`id < j.id`, 5,008 rows per probe), it made a 51-job claim
/// take 129 ms behind a 20,000-job backlog.
const PICK: &str = "
WITH RECURSIVE groups(key) AS (
    (SELECT group_key FROM queue_jobs WHERE status = 'pending' ORDER BY group_key LIMIT 1)
    UNION ALL
    SELECT (SELECT q.group_key FROM queue_jobs q
            WHERE q.status = 'pending' AND q.group_key > g.key
            ORDER BY q.group_key LIMIT 1)
    FROM groups g WHERE g.key IS NOT NULL
), budget AS MATERIALIZED (
    SELECT g.key, g.key <= $4 AS wrapped,
        CASE
            WHEN g.key = '' THEN $2
            WHEN coalesce(b.paused, false) THEN 0
            WHEN b.max_running IS NULL AND coalesce(b.rate_limit, $5) IS NULL THEN $2
            WHEN NOT $7 THEN 0
            ELSE (SELECT least($2,
                coalesce(b.max_running - r.running, $2),
                CASE WHEN coalesce(b.rate_limit, $5) IS NULL THEN $2
                     ELSE coalesce(b.rate_limit, $5) - r.running - (
                         SELECT count(*) FROM queue_jobs_done d
                         WHERE d.group_key = g.key AND d.group_key <> '' AND d.finished_at > now()
                             - coalesce(b.rate_window_ms, $6) * interval '1 millisecond')
                END)
                FROM (SELECT count(*) AS running FROM queue_jobs q
                      WHERE q.group_key = g.key AND q.group_key <> '' AND q.status = 'running') r)
        END AS room,
        coalesce(b.paused, false) AS paused,
        coalesce(b.rate_limit, $5) AS rate_limit,
        coalesce(b.rate_window_ms, $6) AS window_ms
    FROM groups g
    LEFT JOIN queue_groups b ON b.key = g.key
    WHERE g.key IS NOT NULL
), picked AS (
    SELECT p.id, p.priority, p.run_at, bu.key, bu.wrapped
    FROM budget bu
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM queue_jobs j
        WHERE j.status = 'pending' AND j.group_key = bu.key
            AND j.run_at <= coalesce($3, now()) AND j.task_name = ANY($1)
            AND (j.order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM queue_jobs e WHERE e.order_key = j.order_key
                    AND coalesce(e.order_pos, e.id) + 0 < coalesce(j.order_pos, j.id)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT greatest(bu.room, 0)
    ) p
    WHERE bu.room > 0
), ranked AS (
    SELECT id, priority, wrapped, key,
        row_number() OVER (PARTITION BY key ORDER BY priority DESC, run_at, id) AS turn
    FROM picked
), wake AS (
    SELECT min(w.at) AS at
    FROM budget bu
    CROSS JOIN LATERAL (
        SELECT d.finished_at + bu.window_ms * interval '1 millisecond' AS at
        FROM queue_jobs_done d
        WHERE d.group_key = bu.key AND d.group_key <> ''
            AND d.finished_at > now() - bu.window_ms * interval '1 millisecond'
        ORDER BY d.finished_at LIMIT 1
    ) w
    WHERE bu.room <= 0 AND NOT bu.paused AND bu.rate_limit IS NOT NULL
)
(SELECT id, NULL::float8 AS wake_in_ms FROM ranked ORDER BY priority DESC, turn, wrapped, key LIMIT $2)
UNION ALL
SELECT NULL, greatest(extract(epoch FROM at - now()) * 1000, 0)::float8 FROM wake WHERE at IS NOT NULL";

/// Takes the jobs [`PICK`] chose, if still pending (another process may have claimed
/// one meanwhile: it is skipped, never claimed twice), and counts the attempt.
const TAKE: &str = "
UPDATE queue_jobs j
SET status = 'running', attempts = j.attempts + 1, locked_by = $2,
    lease_expires_at = now() + $3 * interval '1 millisecond', started_at = now()
WHERE j.id = ANY(ARRAY(
    SELECT id FROM queue_jobs WHERE id = ANY($1) AND status = 'pending'
    FOR UPDATE SKIP LOCKED
))
RETURNING j.id, j.task_name, j.payload, j.attempts, j.max_attempts, j.group_key";

/// The claim when one group alone has pending work and nothing limits it (no pause, no
/// `max_running`, no rate limit of its own or by default): the single-account path, and
/// the queue used without groups. Round-robin has nothing to share out there, so the
/// choice and the take are one statement (the queue's claim before section 10, plus the
/// conversation check) instead of [`PICK`] then [`TAKE`]: measured with `bench queue`
/// on one cluster, the two statements drained 28–30k jobs/s where one drained 36–37k.
///
/// The group tried is the one the producer served last (its round-robin cursor): no
/// pending job of a group before it or after it in `queue_jobs_ready` (two probes that
/// stop at the first entry of another group, never walking the served group's own
/// claimed entries, which the claim's scan already walks once) means it alone has work,
/// in the statement's own snapshot. When that is not so, nothing is claimed and one row
/// without an id tells the caller to make the fair choice, which moves the cursor.
/// Parameters: $1 task names, $2 limit, $3 due by, $4 the default rate limit, $5 worker
/// id, $6 lease (ms), $7 the group tried.
const CLAIM_ONE_GROUP: &str = "
WITH one AS MATERIALIZED (
    SELECT $7::text AS key
    WHERE NOT EXISTS (SELECT 1 FROM queue_jobs WHERE status = 'pending' AND group_key < $7)
        AND NOT EXISTS (SELECT 1 FROM queue_jobs WHERE status = 'pending' AND group_key > $7)
        AND ($7 = '' OR $4::int8 IS NULL)
        AND NOT EXISTS (SELECT 1 FROM queue_groups b WHERE b.key = $7
                        AND (b.paused OR b.max_running IS NOT NULL OR b.rate_limit IS NOT NULL))
), took AS (
    UPDATE queue_jobs j
    SET status = 'running', attempts = j.attempts + 1, locked_by = $5,
        lease_expires_at = now() + $6 * interval '1 millisecond', started_at = now()
    WHERE j.id = ANY(ARRAY(
        SELECT q.id FROM queue_jobs q
        WHERE q.status = 'pending' AND q.group_key = (SELECT key FROM one)
            AND q.run_at <= coalesce($3, now()) AND q.task_name = ANY($1)
            AND (q.order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM queue_jobs e WHERE e.order_key = q.order_key
                    AND coalesce(e.order_pos, e.id) + 0 < coalesce(q.order_pos, q.id)))
        ORDER BY q.priority DESC, q.run_at, q.id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.id, j.task_name, j.payload, j.attempts, j.max_attempts, j.group_key
)
SELECT id, task_name, payload, attempts, max_attempts, group_key FROM took
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM one)";

/// What a claim took, and when a group held by its rate limit gets room again.
pub(crate) struct Claim {
    /// The claimed rows.
    pub(crate) rows: Vec<ClaimedRow>,
    /// How long until the first group with pending work that its rate limit held gets
    /// room again; `None` when none was held by a rate limit.
    pub(crate) rate_wake: Option<Duration>,
}

/// Claims up to `limit` ready jobs of the `task_names` for `worker_id`, leased for
/// `lease`, shared out across groups by [`PICK`] and taken by [`TAKE`]. "Ready" is `run_at` at or before
/// `due_by`, or before the database's `now()` when `due_by` is `None` (every
/// long-running worker).
pub(crate) async fn claim(
    pool: &PgPool,
    task_names: &[&str],
    limit: usize,
    worker_id: &str,
    lease: Duration,
    due_by: Option<DateTime<Utc>>,
    fair: Fairness<'_>,
) -> Result<Claim, QueueError> {
    // A strict claim serialises on the advisory lock, taken before the choice's snapshot
    // and held to the commit; the others pick and take on one connection, autocommit.
    if !fair.strict {
        let mut conn = pool.acquire().await?;
        if let Some(rows) =
            claim_one_group(&mut conn, task_names, limit, worker_id, lease, due_by, fair).await?
        {
            return Ok(Claim {
                rows,
                rate_wake: None,
            });
        }
        return pick_and_take(&mut conn, task_names, limit, worker_id, lease, due_by, fair).await;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLAIM_LOCK)
        .execute(&mut *tx)
        .await?;
    let claim = pick_and_take(&mut tx, task_names, limit, worker_id, lease, due_by, fair).await?;
    tx.commit().await?;
    Ok(claim)
}

/// [`CLAIM_ONE_GROUP`] for the cursor's group: the claimed rows, or `None` when another
/// group has pending work (or this one is limited) and the fair choice must be made.
async fn claim_one_group(
    db: &mut PgConnection,
    task_names: &[&str],
    limit: usize,
    worker_id: &str,
    lease: Duration,
    due_by: Option<DateTime<Utc>>,
    fair: Fairness<'_>,
) -> Result<Option<Vec<ClaimedRow>>, QueueError> {
    let rows: Vec<Option<ClaimedRow>> = sqlx::query_as::<_, OneGroupRow>(CLAIM_ONE_GROUP)
        .bind(task_names)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(due_by)
        .bind(fair.default_rate.map(|r| i64::from(r.limit)))
        .bind(worker_id)
        .bind(millis(lease))
        .bind(fair.cursor)
        .fetch_all(&mut *db)
        .await?
        .into_iter()
        .map(OneGroupRow::into_claimed)
        .collect();
    if rows.iter().any(Option::is_none) {
        return Ok(None);
    }
    Ok(Some(rows.into_iter().flatten().collect()))
}

/// A row of [`CLAIM_ONE_GROUP`]: a claimed job, or (all null) "make the fair choice".
#[derive(sqlx::FromRow)]
struct OneGroupRow {
    id: Option<JobId>,
    task_name: Option<String>,
    payload: Option<Json<Box<RawValue>>>,
    attempts: Option<i32>,
    max_attempts: Option<i32>,
    group_key: Option<String>,
}

impl OneGroupRow {
    fn into_claimed(self) -> Option<ClaimedRow> {
        Some(ClaimedRow {
            id: self.id?,
            task_name: self.task_name?,
            payload: self.payload?,
            attempts: self.attempts?,
            max_attempts: self.max_attempts?,
            group_key: self.group_key?,
        })
    }
}

/// [`PICK`] then [`TAKE`] on one connection (the caller's transaction when strict).
async fn pick_and_take(
    db: &mut PgConnection,
    task_names: &[&str],
    limit: usize,
    worker_id: &str,
    lease: Duration,
    due_by: Option<DateTime<Utc>>,
    fair: Fairness<'_>,
) -> Result<Claim, QueueError> {
    let picked: Vec<(Option<JobId>, Option<f64>)> = sqlx::query_as(PICK)
        .bind(task_names)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(due_by)
        .bind(fair.cursor)
        .bind(fair.default_rate.map(|r| i64::from(r.limit)))
        .bind(fair.default_rate.map(|r| millis(r.window)))
        .bind(fair.strict)
        .fetch_all(&mut *db)
        .await?;
    let mut ids = Vec::with_capacity(picked.len());
    let mut rate_wake = None;
    for (id, wake_ms) in picked {
        match (id, wake_ms) {
            (Some(id), _) => ids.push(id),
            (None, Some(ms)) => rate_wake = Some(Duration::from_secs_f64(ms.max(0.0) / 1e3)),
            (None, None) => {}
        }
    }
    let rows = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(TAKE)
            .bind(ids)
            .bind(worker_id)
            .bind(millis(lease))
            .fetch_all(&mut *db)
            .await?
    };
    Ok(Claim { rows, rate_wake })
}

/// Whether any group has a budget that only strict claims keep (`max_running` or a
/// rate limit).
pub(crate) async fn budgets_exist(pool: &PgPool) -> Result<bool, QueueError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM queue_groups
                        WHERE max_running IS NOT NULL OR rate_limit IS NOT NULL)",
    )
    .fetch_one(pool)
    .await?)
}

/// A LISTEN connection on [`NOTIFY_CHANNEL`].
pub(crate) async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Extends the lease of the held `(ids, attempts)` by `lease` from now, in one
/// statement; answers how many were still leased by `worker_id`.
pub(crate) async fn extend_leases(
    pool: &PgPool,
    ids: &[JobId],
    attempts: &[i32],
    lease: Duration,
    worker_id: &str,
) -> Result<u64, QueueError> {
    Ok(sqlx::query(
        "UPDATE queue_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
         FROM unnest($1::bigint[], $2::int[]) AS h(id, attempt)
         WHERE j.id = ANY($1) AND j.id = h.id AND j.attempts = h.attempt
           AND j.status = 'running' AND j.locked_by = $4",
    )
    .bind(ids)
    .bind(attempts)
    .bind(millis(lease))
    .bind(worker_id)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Sweeps jobs of `task_names` whose lease expired: back to pending with `error`
/// recorded, or archived dead (entering the dead-letter outbox when their task is
/// `hooked`) if that was their last attempt. Answers (requeued, dead).
pub(crate) async fn sweep_expired(
    pool: &PgPool,
    task_names: &[&str],
    hooked: &[String],
    error: &str,
) -> Result<(i64, i64), QueueError> {
    Ok(sqlx::query_as(
        "WITH expired AS (
            SELECT id FROM queue_jobs
            WHERE status = 'running' AND lease_expires_at < now() AND task_name = ANY($1)
            FOR UPDATE SKIP LOCKED
        ), requeued AS (
            UPDATE queue_jobs j
            SET status = 'pending', locked_by = NULL, lease_expires_at = NULL, run_at = now(),
                last_error = $2,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempts, 'error', $2::text, 'at', now()))
            FROM expired e
            WHERE j.id = e.id AND j.attempts < j.max_attempts
            RETURNING 1
        ), dead AS (
            DELETE FROM queue_jobs j USING expired e
            WHERE j.id = e.id AND j.attempts >= j.max_attempts
            RETURNING j.*
        ), archived AS (
            INSERT INTO queue_jobs_done (id, task_name, payload, status, priority, run_at, attempts,
                max_attempts, unique_key, last_error, errors, created_at, started_at, dead_letter_pending,
                group_key)
            SELECT id, task_name, payload, 'dead', priority, run_at, attempts, max_attempts, unique_key,
                $2, errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'error', $2::text, 'at', now())),
                created_at, started_at, task_name = ANY($3), group_key
            FROM dead
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM archived)",
    )
    .bind(task_names)
    .bind(error)
    .bind(hooked)
    .fetch_one(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------
// Settling runs (the completer's statements).

/// Runs that leave the live table: completed (`error` null, `result` kept) or dead
/// (`error` set, the payload kept for the dead-letter hook). Column-wise, one entry per
/// run.
#[derive(Default)]
pub(crate) struct Finished {
    pub(crate) ids: Vec<JobId>,
    pub(crate) attempts: Vec<i32>,
    pub(crate) errors: Vec<Option<String>>,
    pub(crate) results: Vec<Option<String>>,
}

impl Finished {
    pub(crate) fn push(
        &mut self,
        id: JobId,
        attempt: i32,
        error: Option<String>,
        result: Option<String>,
    ) {
        self.ids.push(id);
        self.attempts.push(attempt);
        self.errors.push(error);
        self.results.push(result);
    }
}

/// Runs that failed transiently with attempts left: pending again after `delay_ms`.
#[derive(Default)]
pub(crate) struct Retried {
    pub(crate) ids: Vec<JobId>,
    pub(crate) attempts: Vec<i32>,
    pub(crate) errors: Vec<String>,
    pub(crate) delay_ms: Vec<i64>,
}

/// Moves the `finished` runs into the archive in one statement (a dead one enters the
/// dead-letter outbox when its task is `hooked`); answers how many moved.
pub(crate) async fn archive(
    pool: &PgPool,
    finished: &Finished,
    worker_id: &str,
    hooked: &[String],
) -> Result<i64, QueueError> {
    Ok(sqlx::query_scalar(
        "WITH done AS (
            DELETE FROM queue_jobs j
            USING unnest($1::bigint[], $2::int[], $3::text[], $4::text[]) AS d(id, attempt, error, result)
            WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $5
            RETURNING j.*, d.error AS new_error, d.result AS new_result
        ), archived AS (
            INSERT INTO queue_jobs_done (id, task_name, payload, status, priority, run_at, attempts,
                max_attempts, unique_key, last_error, errors, result, created_at, started_at,
                dead_letter_pending, group_key)
            SELECT id, task_name,
                CASE WHEN new_error IS NULL THEN NULL ELSE payload END,
                CASE WHEN new_error IS NULL THEN 'completed' ELSE 'dead' END::queue_job_status,
                priority, run_at, attempts, max_attempts, unique_key,
                coalesce(new_error, last_error),
                CASE WHEN new_error IS NULL THEN errors
                     ELSE errors || jsonb_build_array(jsonb_build_object(
                         'attempt', attempts, 'error', new_error, 'at', now()))
                END,
                new_result::jsonb, created_at, started_at,
                new_error IS NOT NULL AND task_name = ANY($6), group_key
            FROM done
            RETURNING 1
        )
        SELECT count(*) FROM archived",
    )
    .bind(&finished.ids)
    .bind(&finished.attempts)
    .bind(&finished.errors)
    .bind(&finished.results)
    .bind(worker_id)
    .bind(hooked)
    .fetch_one(pool)
    .await?)
}

/// Puts the `retried` runs back to pending, each at now + its delay, with its error
/// recorded; answers how many were still ours.
pub(crate) async fn retry(
    pool: &PgPool,
    retried: &Retried,
    worker_id: &str,
) -> Result<u64, QueueError> {
    Ok(sqlx::query(
        "UPDATE queue_jobs j
         SET status = 'pending', locked_by = NULL, lease_expires_at = NULL,
             run_at = now() + d.delay_ms * interval '1 millisecond',
             last_error = d.error,
             errors = j.errors || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempts, 'error', d.error, 'at', now()))
         FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[]) AS d(id, attempt, error, delay_ms)
         WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $5",
    )
    .bind(&retried.ids)
    .bind(&retried.attempts)
    .bind(&retried.errors)
    .bind(&retried.delay_ms)
    .bind(worker_id)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Hands the runs `(ids, attempts)` back: pending again with their claim undone (not a
/// failed attempt). Answers (id, task name, payload) of each handed back.
pub(crate) async fn release(
    pool: &PgPool,
    ids: &[JobId],
    attempts: &[i32],
    worker_id: &str,
) -> Result<Vec<(JobId, String, serde_json::Value)>, QueueError> {
    Ok(sqlx::query_as(
        "UPDATE queue_jobs j
         SET status = 'pending', locked_by = NULL, lease_expires_at = NULL, attempts = j.attempts - 1
         FROM unnest($1::bigint[], $2::int[]) AS d(id, attempt)
         WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $3
         RETURNING j.id, j.task_name, j.payload",
    )
    .bind(ids)
    .bind(attempts)
    .bind(worker_id)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------
// Maintenance: the archive, the dead-letter outbox, periodic ticks.

/// Deletes up to `limit` completed jobs finished more than `retention` ago; answers how
/// many.
pub(crate) async fn prune_archive(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<u64, QueueError> {
    Ok(sqlx::query(
        "DELETE FROM queue_jobs_done WHERE id IN (
            SELECT id FROM queue_jobs_done
            WHERE status = 'completed' AND finished_at < now() - $1 * interval '1 millisecond'
            LIMIT $2)",
    )
    .bind(millis(retention))
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// A dead job whose hook has not run: (id, task name, payload as stored, last error).
pub(crate) type DeadLetter = (JobId, String, Json<serde_json::Value>, Option<String>);

/// Up to `limit` dead jobs of the `hooked` tasks whose hook has not run, locked on the
/// caller's transaction (`SKIP LOCKED`: two processes never take the same one).
pub(crate) async fn take_dead_letters(
    conn: &mut PgConnection,
    hooked: &[String],
    limit: i64,
) -> Result<Vec<DeadLetter>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT id, task_name, payload, last_error FROM queue_jobs_done
         WHERE dead_letter_pending AND task_name = ANY($1)
         ORDER BY id LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(hooked)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Takes the dead jobs `ids` out of the dead-letter outbox (their hooks ran).
pub(crate) async fn clear_dead_letters(
    conn: &mut PgConnection,
    ids: &[JobId],
) -> Result<(), QueueError> {
    sqlx::query("UPDATE queue_jobs_done SET dead_letter_pending = false WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Claims the periodic schedule `name`'s `tick` on the caller's transaction: a
/// conditional upsert (`last_tick < tick`), so one process in total wins each tick.
pub(crate) async fn claim_tick(
    conn: &mut PgConnection,
    name: &str,
    tick: DateTime<Utc>,
) -> Result<bool, QueueError> {
    let won: Option<String> = sqlx::query_scalar(
        "INSERT INTO queue_periodic (name, last_tick) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET last_tick = EXCLUDED.last_tick
         WHERE queue_periodic.last_tick < EXCLUDED.last_tick
         RETURNING name",
    )
    .bind(name)
    .bind(tick)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(won.is_some())
}

#[cfg(test)]
mod tests {
    use hookq_testkit::fresh_db;

    use super::*;

    /// The task name the probe jobs are stored under (enqueued here with the file's own
    /// insert, so the test imports nothing above this file).
    const PROBE: &str = "test.probe";

    async fn claim_ids(pool: &PgPool, strict: bool) -> Vec<(JobId, String)> {
        let fair = Fairness {
            cursor: "",
            default_rate: None,
            strict,
        };
        let rows = claim(
            pool,
            &[PROBE],
            10,
            "test-worker",
            Duration::from_secs(30),
            None,
            fair,
        )
        .await
        .unwrap();
        rows.rows.into_iter().map(|r| (r.id, r.group_key)).collect()
    }

    /// The one-statement claim serves the cursor's group only while no other group has
    /// pending work: with a second group waiting it defers to the fair choice (one job
    /// of each), and alone it takes the group's jobs in one statement.
    #[tokio::test]
    async fn the_one_group_claim_defers_to_the_fair_choice_when_another_group_waits() {
        let db = fresh_db().await;
        let mut conn = db.pool.acquire().await.unwrap();
        let groups: Vec<String> = ["ig:a", "ig:a", "ig:a", "ig:b"].map(String::from).into();
        insert_jobs(
            &mut conn,
            PROBE,
            &vec!["null".to_owned(); 4],
            0,
            None,
            3,
            &groups,
            &[None, None, None, None],
            &[None, None, None, None],
        )
        .await
        .unwrap();
        let fair = Fairness {
            cursor: "ig:a",
            default_rate: None,
            strict: false,
        };
        let lease = Duration::from_secs(30);
        let one = claim_one_group(&mut conn, &[PROBE], 2, "w", lease, None, fair)
            .await
            .unwrap();
        assert!(one.is_none(), "ig:b waits too: the fair choice decides");
        let fair_rows = claim(&db.pool, &[PROBE], 2, "w", lease, None, fair)
            .await
            .unwrap()
            .rows;
        let mut served: Vec<&str> = fair_rows.iter().map(|r| r.group_key.as_str()).collect();
        served.sort_unstable();
        assert_eq!(served, ["ig:a", "ig:b"]);
        // Only ig:a is left: one statement takes its two remaining jobs.
        let alone = claim_one_group(&mut conn, &[PROBE], 5, "w", lease, None, fair)
            .await
            .unwrap()
            .expect("ig:a alone has pending work");
        assert_eq!(
            alone
                .iter()
                .map(|r| r.group_key.as_str())
                .collect::<Vec<_>>(),
            ["ig:a", "ig:a"]
        );
    }

    /// A budget set just now, before the producer looked again whether claims must be
    /// strict: the claim that is not strict leaves the budgeted group alone, so two such
    /// claims can never both spend its room; a strict claim takes its jobs.
    #[tokio::test]
    async fn a_claim_that_is_not_strict_gives_a_budgeted_group_no_room() {
        let db = fresh_db().await;
        let mut conn = db.pool.acquire().await.unwrap();
        insert_jobs(
            &mut conn,
            PROBE,
            &["null".into(), "null".into(), "null".into()],
            0,
            None,
            3,
            &["ig:capped".into(), "ig:capped".into(), "ig:free".into()],
            &[None, None, None],
            &[None, None, None],
        )
        .await
        .unwrap();
        drop(conn);
        sqlx::query("INSERT INTO queue_groups (key, max_running) VALUES ('ig:capped', 5)")
            .execute(&db.pool)
            .await
            .unwrap();

        let loose = claim_ids(&db.pool, false).await;
        assert_eq!(
            loose.iter().map(|(_, g)| g.as_str()).collect::<Vec<_>>(),
            ["ig:free"]
        );
        let strict = claim_ids(&db.pool, true).await;
        assert_eq!(
            strict.iter().map(|(_, g)| g.as_str()).collect::<Vec<_>>(),
            ["ig:capped", "ig:capped"]
        );
    }
}
