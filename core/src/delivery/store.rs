//! The delivery tables: staging a reply, claiming an attempt under the per-endpoint
//! limits, recording outcomes, and the reads the API shows.
//!
//! Every transition is one guarded UPDATE naming the states it may start from, on the
//! reply and its attempt here, and on the log through `logs::transitions` (the log's
//! delivery moves are declared there with the rest of its state machine), so a stale or
//! duplicated job can never move anything backwards. Functions taking `&mut PgConnection` are meant to run inside the
//! caller's transaction (the tasks crate adds the next job's enqueue to the same one).
//!
//! Both tables are partitioned by their log's month (`log_received_at`, migration 0017,
//! so that retention drops them with the logs): a reply's insert reads it from its log,
//! an attempt's from its reply, in the same statement.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    ConnectionStatus, DeliveryAttempt, Endpoint, Limits, OUTCOME_UNKNOWN, OutboundReply, Sent,
};
use crate::{
    comment::ports::{ConnectionReport, DeliveryReports, Matched, ProviderReport},
    error::Result,
    logs::transitions,
    resources::ReplyDelivery,
};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// The outbound reply of a log, if it has one.
pub async fn outbound_reply(pool: &PgPool, log_id: i64) -> Result<Option<OutboundReply>> {
    Ok(
        sqlx::query_as("SELECT * FROM outbound_replies WHERE log_id = $1")
            .bind(log_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Every delivery attempt of a log, oldest first (for the log's detail view).
pub async fn delivery_attempts(pool: &PgPool, log_id: i64) -> Result<Vec<DeliveryAttempt>> {
    Ok(
        sqlx::query_as("SELECT * FROM delivery_attempts WHERE log_id = $1 ORDER BY attempt, id")
            .bind(log_id)
            .fetch_all(pool)
            .await?,
    )
}

/// The outbound replies of the logs `log_ids` (at most one each), for a conversation.
pub async fn outbound_replies_of(pool: &PgPool, log_ids: &[i64]) -> Result<Vec<OutboundReply>> {
    Ok(
        sqlx::query_as("SELECT * FROM outbound_replies WHERE log_id = ANY($1)")
            .bind(log_ids)
            .fetch_all(pool)
            .await?,
    )
}

/// Every delivery attempt of the logs `log_ids`, oldest first within each log.
pub async fn delivery_attempts_of(pool: &PgPool, log_ids: &[i64]) -> Result<Vec<DeliveryAttempt>> {
    Ok(sqlx::query_as(
        "SELECT * FROM delivery_attempts WHERE log_id = ANY($1) ORDER BY log_id, attempt, id",
    )
    .bind(log_ids)
    .fetch_all(pool)
    .await?)
}

/// The latest status of every Bridge connection, most recently changed first.
pub async fn latest_connection_statuses(pool: &PgPool) -> Result<Vec<ConnectionStatus>> {
    Ok(
        sqlx::query_as(
            "SELECT * FROM connection_statuses ORDER BY updated_at DESC, connection_key",
        )
        .fetch_all(pool)
        .await?,
    )
}

/// What staging a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// First staging: the caller must enqueue the delivery job in the same transaction.
    New,
    /// A `failed`/`unknown` reply staged again (operator resend, same `webhook-id`): the
    /// caller must enqueue the delivery job in the same transaction.
    Resent,
    /// A delivery is under way; its job carries on. Nothing to enqueue.
    Live,
    /// Already delivered.
    Delivered,
}

/// Creates the log's outbound reply, or re-arms a finished-without-delivery one for a
/// new round of tries (same `webhook-id`, the integration's current delivery kind).
pub async fn stage(
    conn: &mut PgConnection,
    log_id: i64,
    integration_id: Option<Uuid>,
    kind: ReplyDelivery,
) -> Result<Staged> {
    let webhook_id = format!("msg_{}", Uuid::new_v4().simple());
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO outbound_replies (log_id, log_received_at, integration_id, kind, webhook_id)
         SELECT $1, l.received_at, $2, $3, $4 FROM webhook_logs l WHERE l.id = $1
         ON CONFLICT (log_id, log_received_at) DO NOTHING
         RETURNING id",
    )
    .bind(log_id)
    .bind(integration_id)
    .bind(kind.as_str())
    .bind(&webhook_id)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Staged::New);
    }
    let resent = sqlx::query(
        "UPDATE outbound_replies SET status = 'pending', round_base = attempts, kind = $3,
                integration_id = $2, next_attempt_at = NULL, last_error = NULL, updated_at = now()
         WHERE log_id = $1 AND status IN ('failed', 'unknown')",
    )
    .bind(log_id)
    .bind(integration_id)
    .bind(kind.as_str())
    .execute(&mut *conn)
    .await?;
    if resent.rows_affected() == 1 {
        return Ok(Staged::Resent);
    }
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM outbound_replies WHERE log_id = $1")
            .bind(log_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match status.as_deref() {
        Some("delivered") => Staged::Delivered,
        _ => Staged::Live,
    })
}

/// The attempt a claim committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The `delivery_attempts` row committed `in_flight`.
    pub attempt_id: i64,
    /// 1-based over the reply's life.
    pub attempt: i32,
    /// 1-based within the current round: the retry schedule's position.
    pub round_try: u32,
}

/// What [`claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The attempt is committed `in_flight`: send now.
    Claimed(Claimed),
    /// The endpoint is at its limit: try again after this long (no attempt used).
    Deferred(Duration),
    /// The reply is not (or not yet) due: another job has it, or its next try is later.
    NotDue,
}

/// Commits an `in_flight` attempt and moves the reply `pending`/`retrying` → `sending`,
/// if the endpoint has room under `limits`. The limit check and the claim share one
/// transaction holding an advisory lock on the endpoint, so concurrent workers in any
/// process never overshoot.
pub async fn claim(
    pool: &PgPool,
    reply: &OutboundReply,
    target: &Endpoint,
    job_id: Option<i64>,
    limits: &Limits,
) -> Result<Claim> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7274))")
        .bind(format!("hookq.delivery:{}", target.limit_key))
        .execute(&mut *tx)
        .await?;
    let (in_flight, recent, wait_ms): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'in_flight'
                                 AND started_at > now() - $2 * interval '1 millisecond'),
                count(*) FILTER (WHERE started_at > now() - $3 * interval '1 millisecond'),
                (EXTRACT(EPOCH FROM
                    min(started_at) FILTER (WHERE started_at > now() - $3 * interval '1 millisecond')
                    + $3 * interval '1 millisecond' - now()) * 1000)::bigint
         FROM delivery_attempts
         WHERE limit_key = $1 AND started_at > now() - greatest($2, $3) * interval '1 millisecond'",
    )
    .bind(&target.limit_key)
    .bind(ms(limits.in_flight_horizon))
    .bind(ms(limits.window))
    .fetch_one(&mut *tx)
    .await?;
    let jitter = Duration::from_millis(rand::rng().random_range(0..250));
    if recent >= limits.per_window {
        let wait = Duration::from_millis(wait_ms.unwrap_or(0).max(0).unsigned_abs());
        return Ok(Claim::Deferred(wait + jitter));
    }
    if in_flight >= limits.max_in_flight {
        return Ok(Claim::Deferred(Duration::from_millis(250) + jitter));
    }
    let claimed: Option<(i32, i32)> = sqlx::query_as(
        "UPDATE outbound_replies SET status = 'sending', attempts = attempts + 1,
                next_attempt_at = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('pending', 'retrying')
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         RETURNING attempts, round_base",
    )
    .bind(reply.id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempt, round_base)) = claimed else {
        return Ok(Claim::NotDue);
    };
    let attempt_id: i64 = sqlx::query_scalar(
        "INSERT INTO delivery_attempts (reply_id, log_id, log_received_at, attempt, kind, url,
             limit_key, job_id)
         SELECT $1, $2, r.log_received_at, $3, $4, $5, $6, $7 FROM outbound_replies r
         WHERE r.id = $1
         RETURNING id",
    )
    .bind(reply.id)
    .bind(reply.log_id)
    .bind(attempt)
    .bind(target.kind.as_str())
    .bind(&target.shown_url)
    .bind(&target.limit_key)
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    // A worker holds the log again: it was `pending` while its delivery job waited, or
    // `failed` while a retry waited.
    transitions::delivery_claimed(&mut *tx, &[reply.log_id]).await?;
    tx.commit().await?;
    Ok(Claim::Claimed(Claimed {
        attempt_id,
        attempt,
        round_try: (attempt - round_base).max(1).unsigned_abs(),
    }))
}

/// The reply's attempt still marked `in_flight`, if any.
pub async fn in_flight_attempt(pool: &PgPool, reply_id: i64) -> Result<Option<DeliveryAttempt>> {
    Ok(sqlx::query_as(
        "SELECT * FROM delivery_attempts WHERE reply_id = $1 AND state = 'in_flight'
         ORDER BY attempt DESC LIMIT 1",
    )
    .bind(reply_id)
    .fetch_optional(pool)
    .await?)
}

async fn close_attempt(
    conn: &mut PgConnection,
    attempt_id: i64,
    state: &str,
    status_code: Option<u16>,
    duration: Option<Duration>,
    error: Option<&str>,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE delivery_attempts SET state = $2, status_code = $3, duration_ms = $4, error = $5,
                finished_at = now()
         WHERE id = $1 AND state = 'in_flight'",
    )
    .bind(attempt_id)
    .bind(state)
    .bind(status_code.map(i32::from))
    .bind(duration.map(ms_i32))
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The endpoint took the reply: attempt `succeeded`, reply `sending` → `delivered`, log
/// → `processed`/`replied`. False when the attempt was no longer in flight (nothing
/// written).
pub async fn record_success(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    claimed: &Claimed,
    sent: &Sent,
) -> Result<bool> {
    if !close_attempt(
        conn,
        claimed.attempt_id,
        "succeeded",
        Some(sent.status_code),
        Some(sent.duration),
        None,
    )
    .await?
    {
        return Ok(false);
    }
    // The endpoint works: its integration is no longer failing (delivery_health, in the
    // same statement: no extra round trip on the path every reply takes).
    sqlx::query(
        "WITH r AS (
             UPDATE outbound_replies SET status = 'delivered', delivered_at = now(), last_error = NULL,
                    provider_message_id = COALESCE($2, provider_message_id), updated_at = now()
             WHERE id = $1 AND status = 'sending'
             RETURNING integration_id)
         DELETE FROM delivery_health d USING r WHERE d.integration_id = r.integration_id",
    )
    .bind(reply.id)
    .bind(&sent.provider_message_id)
    .execute(&mut *conn)
    .await?;
    transitions::delivered(&mut *conn, &[reply.log_id]).await?;
    Ok(true)
}

/// How a failed attempt went, and what its log should say.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    /// The HTTP status the endpoint answered; `None` when no answer came (network error,
    /// timeout).
    pub status_code: Option<u16>,
    /// How long the request took.
    pub duration: Duration,
    /// The attempt's own error (kept on the attempt and the reply).
    pub error: &'a str,
    /// The log's `error_message`.
    pub log_message: &'a str,
    /// `HOOKQ_DISABLE_DELIVERY_AFTER`: an integration whose endpoint has failed every
    /// attempt for this long has its delivery switched off (reason `failing`).
    pub disable_after: Duration,
}

/// Closes the claimed attempt as `failed` and moves the reply `sending` → `retrying`
/// (until `next_at`) or, without a next try, → `failed`. False when the attempt was no
/// longer open (another run closed it).
async fn fail_attempt(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    claimed: &Claimed,
    failed: &FailedAttempt<'_>,
    next_at: Option<DateTime<Utc>>,
) -> Result<bool> {
    if !close_attempt(
        conn,
        claimed.attempt_id,
        "failed",
        failed.status_code,
        Some(failed.duration),
        Some(failed.error),
    )
    .await?
    {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE outbound_replies SET status = $4, next_attempt_at = $2, last_error = $3,
                updated_at = now()
         WHERE id = $1 AND status = 'sending'",
    )
    .bind(reply.id)
    .bind(next_at)
    .bind(failed.error)
    .bind(if next_at.is_some() {
        "retrying"
    } else {
        "failed"
    })
    .execute(&mut *conn)
    .await?;
    if let Some(integration) = reply.integration_id {
        note_failing(conn, integration, failed.disable_after).await?;
    }
    Ok(true)
}

/// A failed attempt of `integration`'s endpoint: it is failing since its first failure
/// after its last success; failing for `disable_after`, its delivery is switched off
/// (`cleared -> disabled`, reason `failing`) until an operator turns it back on.
async fn note_failing(
    conn: &mut PgConnection,
    integration: uuid::Uuid,
    disable_after: Duration,
) -> Result<()> {
    let too_long: Option<bool> = sqlx::query_scalar(
        "WITH h AS (
             INSERT INTO delivery_health AS d (integration_id)
             SELECT id FROM integrations WHERE id = $1
             ON CONFLICT (integration_id) DO UPDATE SET failing_since = d.failing_since
             RETURNING failing_since)
         SELECT failing_since <= now() - make_interval(secs => $2) FROM h",
    )
    .bind(integration)
    .bind(disable_after.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    if too_long == Some(true) {
        let switched = sqlx::query(
            "UPDATE integrations SET delivery_enabled = false, delivery_disabled_reason = 'failing',
                    updated_at = now()
             WHERE id = $1 AND delivery_enabled",
        )
        .bind(integration)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if switched > 0 {
            tracing::warn!(%integration, after_s = disable_after.as_secs(), "every delivery attempt failed for HOOKQ_DISABLE_DELIVERY_AFTER: delivery disabled");
        }
    }
    Ok(())
}

/// A transient failure with tries left: attempt `failed`, reply `sending` → `retrying`
/// until `next_at`, log → `failed` with `next_retry_at`. The caller enqueues the next
/// job (run at `next_at`) in the same transaction.
pub async fn record_retry(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    claimed: &Claimed,
    failed: &FailedAttempt<'_>,
    next_at: DateTime<Utc>,
) -> Result<bool> {
    if !fail_attempt(conn, reply, claimed, failed, Some(next_at)).await? {
        return Ok(false);
    }
    transitions::delivery_retrying(&mut *conn, &[reply.log_id], failed.log_message, next_at)
        .await?;
    Ok(true)
}

/// A permanent failure, or the last try failed: attempt `failed`, reply `sending` →
/// `failed`, log → `dead_letter` with `log_message`. With `disable` (410 Gone) the
/// integration's delivery is switched off until an operator re-enables it.
pub async fn record_failure(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    claimed: &Claimed,
    failed: &FailedAttempt<'_>,
    disable: bool,
) -> Result<bool> {
    if !fail_attempt(conn, reply, claimed, failed, None).await? {
        return Ok(false);
    }
    if disable && let Some(integration) = reply.integration_id {
        sqlx::query(
            "UPDATE integrations SET delivery_enabled = false, delivery_disabled_reason = 'gone',
                    updated_at = now()
             WHERE id = $1 AND delivery_enabled",
        )
        .bind(integration)
        .execute(&mut *conn)
        .await?;
    }
    transitions::delivery_failed(&mut *conn, &[reply.log_id], failed.log_message).await?;
    Ok(true)
}

/// Nothing was sent and nothing will be (delivery disabled, integration misconfigured,
/// URL refused, job dead before its claim): reply `pending`/`retrying` → `failed`, log →
/// `dead_letter`.
pub async fn fail_unsent(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    error: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE outbound_replies SET status = 'failed', next_attempt_at = NULL, last_error = $2,
                updated_at = now()
         WHERE id = $1 AND status IN ('pending', 'retrying')",
    )
    .bind(reply.id)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    transitions::delivery_failed(&mut *conn, &[reply.log_id], error).await?;
    Ok(true)
}

/// An attempt was cut off mid-request (its worker died): it may or may not have
/// arrived. Attempt → `unknown`, reply `sending` → `unknown`, log → `dead_letter`
/// ([`OUTCOME_UNKNOWN`]). Never sent again by itself: an operator resend reuses the same
/// `webhook-id`.
pub async fn record_cut_off(
    conn: &mut PgConnection,
    reply: &OutboundReply,
    attempt_id: Option<i64>,
) -> Result<bool> {
    if let Some(id) = attempt_id {
        close_attempt(
            conn,
            id,
            "unknown",
            None,
            None,
            Some("cut off: the worker stopped before the answer was recorded"),
        )
        .await?;
    }
    let r = sqlx::query(
        "UPDATE outbound_replies SET status = 'unknown', last_error = $2, updated_at = now()
         WHERE id = $1 AND status = 'sending'",
    )
    .bind(reply.id)
    .bind(OUTCOME_UNKNOWN)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    transitions::delivery_failed(&mut *conn, &[reply.log_id], OUTCOME_UNKNOWN).await?;
    Ok(true)
}

/// Platforms report `sent` → `delivered` → `read`, or `failed`; reports can arrive out of
/// order, so a lower-ranked one never overwrites a higher one.
macro_rules! rank {
    ($e:literal) => {
        concat!(
            "(CASE ", $e, " WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'failed' THEN 4 ELSE 0 END)"
        )
    };
}

/// [`DeliveryReports`] over Postgres.
#[derive(Clone)]
pub struct PgDeliveryStore {
    /// The pool the reports are applied through.
    pub pool: PgPool,
}

#[async_trait]
impl DeliveryReports for PgDeliveryStore {
    async fn apply_report(&self, report: &ProviderReport) -> Result<Option<Matched>> {
        let found: Option<(i64, Option<Uuid>)> = sqlx::query_as(
            "SELECT id, integration_id FROM outbound_replies WHERE provider_message_id = $1
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&report.message_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, integration_id)) = found else {
            return Ok(None);
        };
        sqlx::query(concat!(
            "UPDATE outbound_replies SET provider_status = $2,
                    provider_error = COALESCE($3, provider_error),
                    provider_status_at = COALESCE($4, now()), updated_at = now()
             WHERE id = $1 AND (provider_status IS NULL OR ",
            rank!("$2"),
            " >= ",
            rank!("provider_status"),
            ")"
        ))
        .bind(id)
        .bind(&report.status)
        .bind(&report.error)
        .bind(report.at)
        .execute(&self.pool)
        .await?;
        Ok(Some(Matched {
            reply_id: id,
            integration_id,
        }))
    }

    async fn record_connection(
        &self,
        log_id: i64,
        integration_id: Option<Uuid>,
        report: &ConnectionReport,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO connection_statuses (connection_key, session_id, phone_number,
                    integration_id, status, reported_at, log_id, data, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
             ON CONFLICT (connection_key) DO UPDATE SET
                session_id = EXCLUDED.session_id, phone_number = EXCLUDED.phone_number,
                integration_id = COALESCE(EXCLUDED.integration_id, connection_statuses.integration_id),
                status = EXCLUDED.status, reported_at = EXCLUDED.reported_at,
                log_id = EXCLUDED.log_id, data = EXCLUDED.data, updated_at = now()
             WHERE connection_statuses.reported_at IS NULL OR EXCLUDED.reported_at IS NULL
                OR EXCLUDED.reported_at >= connection_statuses.reported_at",
        )
        .bind(&report.connection_key)
        .bind(&report.session_id)
        .bind(&report.phone_number)
        .bind(integration_id)
        .bind(&report.status)
        .bind(report.at)
        .bind(log_id)
        .bind(&report.data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
