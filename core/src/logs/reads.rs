//! The operator's reads of `webhook_logs`, and its bulk operations on them: filtered
//! lists, counts, processing-time stats, the per-minute throughput series, the live
//! feed's "changed since" poll, operator retry and delete, and retention.
//!
//! Every query here is shaped for an index of `migrations/0001_domain.sql`,
//! `0004_admin.sql` or `0013_operator_search.sql` (the search), so it stays fast at
//! millions of rows: filters are appended only
//! when given (a dynamic statement per combination, so each gets its own plan instead of
//! one generic plan full of `$1 IS NULL OR …`), and aggregates over the whole table read
//! the narrow `(status, event_type, source)` index instead of the heap.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{
    error::{Error, Result},
    intake::Source,
    logs::{LogStatus, Outcome, SkipReason},
};

/// Which logs a list, a count or a bulk retry applies to. Every field is optional;
/// given fields are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only logs in this status.
    pub status: Option<LogStatus>,
    /// Only logs of this event type (exact name, e.g. `comment`).
    pub event_type: Option<String>,
    /// Only logs from this source (`instagram`, `facebook` or `whatsapp`).
    pub source: Option<String>,
    /// Only logs resolved to this integration.
    pub integration_id: Option<Uuid>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
    /// Text the log's message, sender name, item id or dedup key contains, any case
    /// (contract section 13's search).
    pub q: Option<String>,
}

/// `q` as an `ILIKE` pattern matching it anywhere: its `\`, `%` and `_` escaped, so
/// they match themselves.
fn contains_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl LogFilter {
    /// Parses the `status` filter, answering `Invalid` (422) for a value that is not a
    /// status, so a typo never silently matches nothing.
    pub fn parse_status(s: Option<&str>) -> Result<Option<LogStatus>> {
        s.map(|s| {
            LogStatus::parse(s).ok_or_else(|| {
                Error::Invalid(format!(
                    "status must be one of pending, processing, processed, failed, dead_letter (got {s:?})"
                ))
            })
        })
        .transpose()
    }

    /// Appends ` WHERE …` for the given fields (always a `WHERE`, so callers append
    /// ` AND …`).
    pub(crate) fn push_where(&self, q: &mut QueryBuilder<Postgres>) {
        q.push(" WHERE true");
        if let Some(s) = self.status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(e) = &self.event_type {
            q.push(" AND event_type = ").push_bind(e.clone());
        }
        if let Some(s) = &self.source {
            q.push(" AND source = ").push_bind(s.clone());
        }
        if let Some(i) = self.integration_id {
            q.push(" AND integration_id = ").push_bind(i);
        }
        if let Some(t) = self.since {
            q.push(" AND received_at >= ").push_bind(t);
        }
        if let Some(t) = self.until {
            q.push(" AND received_at < ").push_bind(t);
        }
        if let Some(text) = &self.q {
            // The matching ids first (the trigram index of `webhook_log_text`), then
            // those logs by primary key: as a join or `IN`, the planner may walk the
            // newest-first index and test every log against the matches, all of them
            // when fewer than a page match.
            q.push(" AND id = ANY(ARRAY(SELECT log_id FROM webhook_log_text WHERE doc ILIKE ")
                .push_bind(contains_pattern(text))
                .push("))");
        }
    }
}

/// A log as lists show it: everything but the payload (which can be megabytes).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogSummary {
    /// Primary key (`webhook_logs.id`).
    pub id: i64,
    /// Which route and platform family the event came from.
    pub source: Source,
    /// The event's stable name, e.g. `comment` or `message.received`.
    pub event_type: String,
    /// Where the log is in the pipeline.
    pub status: LogStatus,
    /// Runs started of its processing job (see
    /// [`LogRow::attempts`](super::LogRow::attempts)).
    pub attempts: i32,
    /// Once `processed`: `replied`, `skipped` or `recorded`.
    pub outcome: Option<Outcome>,
    /// Why it was `skipped`, if it was.
    pub skip_reason: Option<SkipReason>,
    /// Why the last run failed, or why it was given up.
    pub error_message: Option<String>,
    /// The integration the event resolved to, once a run resolved it.
    pub integration_id: Option<Uuid>,
    /// The sender's display name, when the platform sent one.
    pub sender_name: Option<String>,
    /// The first 200 characters of the event's text.
    pub message_preview: Option<String>,
    /// The generated reply, once there is one.
    pub reply_text: Option<String>,
    /// The queue job that processes it.
    pub job_id: Option<i64>,
    /// How many times the same event arrived again after it was stored.
    pub duplicate_count: i32,
    /// The id of the webhook request that stored it.
    pub correlation_id: Option<String>,
    /// When ingest stored it.
    pub received_at: DateTime<Utc>,
    /// When it reached `processed` or `dead_letter`.
    pub processed_at: Option<DateTime<Utc>>,
    /// While `failed`: when the next run is due.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When the row last changed (the live feed polls on it).
    pub updated_at: DateTime<Utc>,
    /// Its conversation (contract section 10's key), for events that get a reply.
    pub conversation_key: Option<String>,
}

const SUMMARY_COLUMNS: &str =
    "id, source, event_type, status, attempts, outcome, skip_reason, error_message,
    integration_id, sender_name, left(message_text, 200) AS message_preview, reply_text, job_id,
    duplicate_count, correlation_id, received_at, processed_at, next_retry_at, updated_at,
    conversation_key";

/// One page of logs, newest first, and how many logs match the filter in all, both read
/// in one snapshot (a read-only REPEATABLE READ transaction), so `total` describes the
/// same data as the page: a client that pages while `offset < total` sees every log that
/// existed when its first page was read (issue 13.4: a total from a 2 s cache lagged a
/// burst and such a client stopped early). The count is exact, which costs a scan of the
/// matching rows (of the primary key's index when unfiltered): tens of milliseconds per
/// million logs, paid only by the admin list.
pub async fn page(
    pool: &PgPool,
    filter: &LogFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<LogSummary>, i64)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // A search's matches are read once (the trigram scan and its recheck are most of a
    // search's cost) and both statements take them by primary key: measured at a
    // million logs, a name searched this way took 36 ms where the page and the count
    // each scanning the index took 75 ms.
    let (filter, matches) = match &filter.q {
        Some(text) => {
            let ids: Vec<i64> =
                sqlx::query_scalar("SELECT log_id FROM webhook_log_text WHERE doc ILIKE $1")
                    .bind(contains_pattern(text))
                    .fetch_all(&mut *tx)
                    .await?;
            let rest = LogFilter {
                q: None,
                ..filter.clone()
            };
            (std::borrow::Cow::Owned(rest), Some(ids))
        }
        None => (std::borrow::Cow::Borrowed(filter), None),
    };
    let restrict = |q: &mut QueryBuilder<Postgres>| {
        filter.push_where(q);
        if let Some(ids) = &matches {
            q.push(" AND id = ANY(").push_bind(ids.clone()).push(")");
        }
    };
    let mut q = QueryBuilder::new(format!("SELECT {SUMMARY_COLUMNS} FROM webhook_logs"));
    restrict(&mut q);
    q.push(" ORDER BY received_at DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let items = q.build_query_as::<LogSummary>().fetch_all(&mut *tx).await?;
    let total = match &matches {
        // Nothing else filters: the matches are the total.
        Some(ids) if *filter == LogFilter::default() => ids.len() as i64,
        _ => {
            let mut q = QueryBuilder::new("SELECT count(*) FROM webhook_logs");
            restrict(&mut q);
            q.build_query_scalar::<i64>().fetch_one(&mut *tx).await?
        }
    };
    tx.commit().await?;
    Ok((items, total))
}

/// The newest `limit` logs changed after `after`, returned oldest change first: the live
/// feed's poll, on the `updated_at` index. Under a burst bigger than `limit` the oldest
/// changes of the burst are left out — a live view shows what is happening now.
pub async fn changed_since(
    pool: &PgPool,
    after: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<LogSummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM webhook_logs WHERE updated_at > $1 ORDER BY updated_at DESC, id DESC LIMIT $2"
    );
    let mut rows: Vec<LogSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.reverse();
    Ok(rows)
}

/// The database's clock, so pollers never compare the server's time with ours.
pub async fn db_now(pool: &PgPool) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// One `(status, event_type, source)` group and its size.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GroupCount {
    /// The group's status.
    pub status: LogStatus,
    /// The group's event type.
    pub event_type: String,
    /// The group's source.
    pub source: Source,
    /// Logs in the group.
    pub count: i64,
}

/// Every log counted by status, event type and source: one index-only scan of
/// `webhook_logs_status_event_source`. Stats, metrics and the dashboard fold it.
pub async fn group_counts(pool: &PgPool) -> Result<Vec<GroupCount>> {
    Ok(sqlx::query_as(
        "SELECT status, event_type, source, count(*) AS count FROM webhook_logs
         GROUP BY status, event_type, source",
    )
    .fetch_all(pool)
    .await?)
}

/// Processing times of logs processed since `since`.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct Timing {
    /// Logs processed in the window.
    pub processed: i64,
    /// Mean milliseconds from receipt to `processed`.
    pub mean_ms: Option<f64>,
    /// Median milliseconds from receipt to `processed`.
    pub p50_ms: Option<f64>,
    /// 95th percentile milliseconds from receipt to `processed`.
    pub p95_ms: Option<f64>,
    /// 99th percentile milliseconds from receipt to `processed`.
    pub p99_ms: Option<f64>,
    /// Mean attempts per processed log (1.0 when nothing was retried).
    pub mean_attempts: Option<f64>,
}

/// Receipt-to-processed times over the logs processed since `since`, from the covering
/// `webhook_logs_processed_window` index.
pub async fn timing(pool: &PgPool, since: DateTime<Utc>) -> Result<Timing> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS processed,
                avg(ms) AS mean_ms,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99_ms,
                avg(attempts)::float8 AS mean_attempts
         FROM (SELECT extract(epoch FROM processed_at - received_at)::float8 * 1000 AS ms, attempts
               FROM webhook_logs WHERE status = 'processed' AND processed_at >= $1) t",
    )
    .bind(since)
    .fetch_one(pool)
    .await?)
}

/// Cumulative counts of receipt-to-processed times at or under each bound (seconds)
/// for the logs processed since `since`, in `bounds` order: one scan of the window.
pub async fn processing_histogram(
    pool: &PgPool,
    since: DateTime<Utc>,
    bounds: &[f64],
) -> Result<Vec<i64>> {
    let rows: Vec<(f64, i64)> = sqlx::query_as(
        "SELECT b, count(l.secs) FILTER (WHERE l.secs <= b) AS n
         FROM unnest($2::float8[]) AS b
         LEFT JOIN (SELECT extract(epoch FROM processed_at - received_at)::float8 AS secs
                    FROM webhook_logs WHERE status = 'processed' AND processed_at >= $1) l ON true
         GROUP BY b ORDER BY b",
    )
    .bind(since)
    .bind(bounds)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(_, n)| n).collect())
}

/// Counts over a recent window: what the "throughput over the last minute" is made of.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct Recent {
    /// Logs received in the window.
    pub received: i64,
    /// Logs processed in the window.
    pub processed: i64,
    /// Logs now `failed` or `dead_letter` whose last change falls in the window.
    pub failed: i64,
}

/// Counts of logs received, processed and failed since `since`.
pub async fn recent(pool: &PgPool, since: DateTime<Utc>) -> Result<Recent> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_logs WHERE received_at >= $1) AS received,
                (SELECT count(*) FROM webhook_logs WHERE status = 'processed' AND processed_at >= $1) AS processed,
                (SELECT count(*) FROM webhook_logs WHERE updated_at >= $1
                    AND status IN ('failed', 'dead_letter')) AS failed",
    )
    .bind(since)
    .fetch_one(pool)
    .await?)
}

/// One minute of the throughput chart.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MinuteBucket {
    /// The minute's start (UTC, truncated to the minute).
    pub minute: DateTime<Utc>,
    /// Logs received in the minute.
    pub received: i64,
    /// Logs processed in the minute.
    pub processed: i64,
    /// Logs now `failed` or `dead_letter` whose last change falls in the minute.
    pub failed: i64,
}

/// Received / processed / failed per minute over the last `minutes` minutes, every
/// minute present (zeros included), oldest first. Three index range scans.
pub async fn throughput(pool: &PgPool, minutes: i32) -> Result<Vec<MinuteBucket>> {
    // The window start is written out in each branch rather than shared through a CTE:
    // a CTE joined in made the planner run the whole join around it (350 ms at 1M rows
    // instead of 4 ms).
    Ok(sqlx::query_as(
        "WITH r AS (SELECT date_trunc('minute', received_at) AS m, count(*) AS n FROM webhook_logs
               WHERE received_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1) GROUP BY 1),
         p AS (SELECT date_trunc('minute', processed_at) AS m, count(*) AS n FROM webhook_logs
               WHERE status = 'processed'
                 AND processed_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1) GROUP BY 1),
         f AS (SELECT date_trunc('minute', updated_at) AS m, count(*) AS n FROM webhook_logs
               WHERE updated_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
                 AND status IN ('failed', 'dead_letter') GROUP BY 1)
         SELECT g.m AS minute, coalesce(r.n, 0) AS received, coalesce(p.n, 0) AS processed,
                coalesce(f.n, 0) AS failed
         FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1),
                              date_trunc('minute', now()), interval '1 minute') AS g(m)
         LEFT JOIN r ON r.m = g.m LEFT JOIN p ON p.m = g.m LEFT JOIN f ON f.m = g.m
         ORDER BY g.m",
    )
    .bind(minutes)
    .fetch_all(pool)
    .await?)
}

/// A log an operator asked to retry: its id and the job it is attached to now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RetryCandidate {
    /// The log's id.
    pub id: i64,
    /// Its status when locked, checked against the retry's from-states.
    pub status: LogStatus,
    /// The job the log was attached to before the retry (its `job_id`).
    pub old_job_id: Option<i64>,
    /// The fair-share group its new job joins: its account's integration
    /// ([`group_sql`](super::group_sql), as intake computes it), so a retried event is
    /// still paused, rate-limited and shared out with its integration's others.
    pub group_key: String,
    /// Its conversation, the new job's order key.
    pub conversation_key: Option<String>,
}

/// The select a [`RetryCandidate`] is read by.
fn retry_select() -> String {
    format!(
        "SELECT l.id, l.status, l.job_id AS old_job_id, {} AS group_key, l.conversation_key
         FROM webhook_logs l",
        super::group_sql("l")
    )
}

/// Locks one log for an operator retry, whatever its state (the caller checks it against
/// [`RESET_FOR_RETRY`](super::transitions::RESET_FOR_RETRY)); `None` when it does not exist.
pub async fn lock_for_retry(conn: &mut PgConnection, id: i64) -> Result<Option<RetryCandidate>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} WHERE l.id = $1 FOR UPDATE OF l",
        retry_select()
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Locks up to `limit` retryable logs matching `filter` (oldest first), skipping rows
/// another transaction holds: two operators pressing "retry all" never retry a log twice.
pub async fn lock_matching_for_retry(
    conn: &mut PgConnection,
    filter: &LogFilter,
    limit: i64,
) -> Result<Vec<RetryCandidate>> {
    let mut q = QueryBuilder::new(retry_select());
    filter.push_where(&mut q);
    let retryable: Vec<&str> = super::transitions::RESET_FOR_RETRY
        .from
        .iter()
        .map(|s| s.as_str())
        .collect();
    q.push(" AND status = ANY(")
        .push_bind(retryable)
        .push(") ORDER BY received_at, id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED");
    Ok(q.build_query_as::<RetryCandidate>().fetch_all(conn).await?)
}

/// The most events a conversation view lists.
pub const CONVERSATION_LIMIT: i64 = 1_000;

/// The events of conversation `key` (contract section 10's key: a comment thread or a
/// direct conversation), in the order received, at most [`CONVERSATION_LIMIT`]; and
/// whether there were more. The log ids come from `webhook_log_text`'s conversation
/// index (written once at intake; see `migrations/0013_operator_search.sql`).
pub async fn conversation(pool: &PgPool, key: &str) -> Result<(Vec<LogSummary>, bool)> {
    let mut items: Vec<LogSummary> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM webhook_logs
         WHERE id = ANY(ARRAY(SELECT log_id FROM webhook_log_text WHERE conversation_key = $1))
         ORDER BY received_at, id LIMIT $2"
    )))
    .bind(key)
    .bind(CONVERSATION_LIMIT + 1)
    .fetch_all(pool)
    .await?;
    let more = items.len() as i64 > CONVERSATION_LIMIT;
    items.truncate(CONVERSATION_LIMIT as usize);
    Ok((items, more))
}

/// A platform's report on one of our messages, stored as its own log (a WhatsApp Cloud
/// API `statuses[]` item, a Bridge `message.sent` or `message.failed`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryReport {
    /// The report's own log.
    pub log_id: i64,
    /// The provider message id it reports on (the reply's `provider_message_id`).
    pub message_id: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// When the platform says it happened, if it says.
    pub occurred_at: Option<DateTime<Utc>>,
    /// When hookq stored the report.
    pub received_at: DateTime<Utc>,
}

/// The stored reports on the provider messages `message_ids`, oldest first (on
/// `webhook_logs_report_item`).
pub async fn delivery_reports(
    pool: &PgPool,
    message_ids: &[String],
) -> Result<Vec<DeliveryReport>> {
    if message_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT id AS log_id, item_id AS message_id,
            coalesce(payload #>> '{entry,0,changes,0,value,statuses,0,status}',
                     CASE event_type WHEN 'message.sent' THEN 'sent'
                                     WHEN 'message.failed' THEN 'failed'
                                     ELSE event_type END) AS status,
            occurred_at, received_at
         FROM webhook_logs
         WHERE handling = 'delivery_status' AND item_id = ANY($1)
         ORDER BY coalesce(occurred_at, received_at), id",
    )
    .bind(message_ids)
    .fetch_all(pool)
    .await?)
}

/// Where a log's jobs stand in its conversation.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct ConversationPlace {
    /// Its conversation (its jobs' order key); `None` for an event in none.
    pub conversation_key: Option<String>,
    /// The job that processes it: the delivery of its reply takes this job's place.
    pub job_id: Option<i64>,
}

/// The conversation and processing job of log `log_id` (defaults when it is gone).
pub async fn conversation_place(conn: &mut PgConnection, log_id: i64) -> Result<ConversationPlace> {
    Ok(
        sqlx::query_as("SELECT conversation_key, job_id FROM webhook_logs WHERE id = $1")
            .bind(log_id)
            .fetch_optional(conn)
            .await?
            .unwrap_or_default(),
    )
}

/// Delivery attempts started since `since`, by kind and result (the HTTP status code,
/// or the attempt's state when there was no answer: `failed` for a network error or
/// timeout, `unknown` when cut off by a crash, `in_flight`).
pub async fn delivery_results(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT kind, coalesce(status_code::text, state) AS result, count(*)
         FROM delivery_attempts WHERE started_at >= $1
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(since)
    .fetch_all(pool)
    .await?)
}
