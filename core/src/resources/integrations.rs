//! `integrations`: an account on a platform that hookq answers for, how its replies are delivered, and the checks on its delivery settings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier, set};
use crate::error::{Error, Result};

/// How an integration's replies leave hookq (`integrations.reply_delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyDelivery {
    /// The reply is only recorded on the log.
    None,
    /// POSTed to the integration's `callback_url`, signed per Standard Webhooks.
    Callback,
    /// POSTed to Meta's Graph API with the integration's access token.
    GraphApi,
}
text_enum!(ReplyDelivery { None => "none", Callback => "callback", GraphApi => "graph_api" });

/// The platforms an integration can be on (`integrations.platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Instagram (Graph webhooks and the compact shape).
    Instagram,
    /// Facebook Pages, Messenger included.
    Facebook,
    /// WhatsApp (Bridge and Cloud API).
    Whatsapp,
}
text_enum!(Platform { Instagram => "instagram", Facebook => "facebook", Whatsapp => "whatsapp" });

/// An account on a platform that hookq answers for. `access_token` and
/// `callback_secret` are write-only: they never leave through the API or a log.
#[derive(Clone, sqlx::FromRow)]
pub struct Integration {
    /// Primary key, the id posts reference and logs record (`integration_id`).
    pub id: Uuid,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// `instagram`, `facebook` or `whatsapp` (see [`Platform`]).
    pub platform: String,
    /// The account's id on the platform, as payloads name it; unique with `platform`.
    pub account_id: String,
    /// Token for `graph_api` delivery; write-only.
    pub access_token: Option<String>,
    /// `none`, `callback` or `graph_api` (see [`ReplyDelivery`]).
    pub reply_delivery: String,
    /// Where `callback` delivery POSTs; an absolute http(s) URL, required for `callback`.
    pub callback_url: Option<String>,
    /// `whsec_` + base64, the key `callback` deliveries are signed with; write-only.
    pub callback_secret: Option<String>,
    /// The persona used when neither the post nor the event names one.
    pub default_persona_id: Option<Uuid>,
    /// Off once an endpoint answered `410 Gone` or failed every attempt for
    /// `HOOKQ_DISABLE_DELIVERY_AFTER` (or an operator switched it off): its deliveries
    /// fail unsent until an operator turns it back on.
    pub delivery_enabled: bool,
    /// Why hookq switched delivery off: `gone` or `failing`; `None` while on or when an
    /// operator switched it off (contract section 12's `integration.delivery_disabled`).
    pub delivery_disabled_reason: Option<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// Its events are stored and answered, but none runs until it is resumed.
    pub paused: bool,
    /// The most replies per rolling window (`N/s`, `N/min`, `N/h`); `None`:
    /// `HOOKQ_REPLY_RATE_LIMIT`.
    pub reply_rate_limit: Option<String>,
    /// The most of its jobs running at once, across every worker; `None`: no cap.
    pub max_concurrent: Option<i32>,
}

impl std::fmt::Debug for Integration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integration")
            .field("id", &self.id)
            .field("platform", &self.platform)
            .field("account_id", &self.account_id)
            .field("reply_delivery", &self.reply_delivery)
            .finish_non_exhaustive()
    }
}

// --------------------------------------------------------------------- integrations

/// What creating an integration takes; checked before it is stored.
pub struct NewIntegration {
    /// An existing user (else `UnknownReference`).
    pub user_id: Uuid,
    /// `instagram`, `facebook` or `whatsapp`.
    pub platform: String,
    /// Not empty, at most [`MAX_ID_BYTES`](crate::intake::storable::MAX_ID_BYTES) bytes;
    /// unique with `platform`.
    pub account_id: String,
    /// Token for `graph_api` delivery.
    pub access_token: Option<String>,
    /// `none` (the default), `callback` or `graph_api`.
    pub reply_delivery: Option<String>,
    /// An absolute http(s) URL; required when `reply_delivery` is `callback`.
    pub callback_url: Option<String>,
    /// `whsec_` followed by base64.
    pub callback_secret: Option<String>,
    /// An existing persona, or `None`.
    pub default_persona_id: Option<Uuid>,
    /// Start paused; `None` is `false`.
    pub paused: Option<bool>,
    /// `N/s`, `N/min` or `N/h`; `None`: `HOOKQ_REPLY_RATE_LIMIT` applies.
    pub reply_rate_limit: Option<String>,
    /// At least 1; `None`: no cap on its running jobs.
    pub max_concurrent: Option<i32>,
}

/// A PATCH of an integration: `None` leaves a field as it is; for the nullable ones
/// `Some(None)` clears it. The result is checked as on create.
#[derive(Default)]
pub struct IntegrationPatch {
    /// Moves it to another existing user.
    pub user_id: Option<Uuid>,
    /// A new platform: `instagram`, `facebook` or `whatsapp`.
    pub platform: Option<String>,
    /// Another account id, checked as on create.
    pub account_id: Option<String>,
    /// Sets or clears the access token.
    pub access_token: Option<Option<String>>,
    /// A new `reply_delivery`: `none`, `callback` or `graph_api`.
    pub reply_delivery: Option<String>,
    /// Sets or clears the callback URL.
    pub callback_url: Option<Option<String>>,
    /// Sets or clears the callback secret.
    pub callback_secret: Option<Option<String>>,
    /// Sets or clears the default persona.
    pub default_persona_id: Option<Option<Uuid>>,
    /// Turns delivery back on (or off) after a `410 Gone`.
    pub delivery_enabled: Option<bool>,
    /// Pauses (`true`) or resumes (`false`) it.
    pub paused: Option<bool>,
    /// Sets or clears (back to `HOOKQ_REPLY_RATE_LIMIT`) its reply rate limit.
    pub reply_rate_limit: Option<Option<String>>,
    /// Sets or clears its cap on running jobs.
    pub max_concurrent: Option<Option<i32>>,
}

table_reads!(
    list_integrations,
    get_integration,
    delete_integration,
    Integration,
    "integrations"
);

fn check_platform(p: &str) -> Result<()> {
    Platform::parse(p).map(|_| ()).ok_or_else(|| {
        Error::Invalid(format!(
            "platform must be one of instagram, facebook, whatsapp (got {p:?})"
        ))
    })
}

fn check_delivery(d: &str) -> Result<()> {
    ReplyDelivery::parse(d).map(|_| ()).ok_or_else(|| {
        Error::Invalid(format!(
            "reply_delivery must be one of none, callback, graph_api (got {d:?})"
        ))
    })
}

fn check_callback_url(u: &str) -> Result<()> {
    match url::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err(Error::Invalid(format!(
            "callback_url must be an absolute http(s) URL (got {u:?})"
        ))),
    }
}

/// Standard Webhooks secrets are `whsec_` + base64; checked here so a typo fails at
/// the admin call, not at the first delivery.
fn check_callback_secret(s: &str) -> Result<()> {
    use base64::Engine;
    let ok = s.strip_prefix("whsec_").is_some_and(|b| {
        !b.is_empty() && base64::engine::general_purpose::STANDARD.decode(b).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "callback_secret must be whsec_ followed by base64".into(),
        ))
    }
}

/// A `reply_rate_limit` as stored: `N/s`, `N/min` or `N/h` (also accepted: `/second`,
/// `/m`, `/minute`, `/hour`).
fn rate_limit(s: &str) -> Result<String> {
    let bad = || {
        Error::Invalid(format!(
            "reply_rate_limit must be like 20/s, 100/min or 1000/h (got {s:?})"
        ))
    };
    let limit = crate::config::parse_rate_limit(s)
        .map_err(|_| bad())?
        .ok_or_else(bad)?;
    if limit.requests > 999_999_999 {
        return Err(bad());
    }
    Ok(limit.to_string())
}

fn max_concurrent(n: i32) -> Result<i32> {
    if n < 1 {
        return Err(Error::Invalid(format!(
            "max_concurrent must be at least 1 (got {n}); leave it unset for no cap"
        )));
    }
    Ok(n)
}

/// What every integration, after a create or an update, must satisfy.
fn check_integration(i: &Integration) -> Result<()> {
    if i.reply_delivery == ReplyDelivery::Callback.as_str() && i.callback_url.is_none() {
        return Err(Error::Invalid(
            "reply_delivery callback needs a callback_url".into(),
        ));
    }
    Ok(())
}

/// Inserts an integration; `Invalid` for a bad field (or `callback` without a URL),
/// `Conflict` when the platform account is taken, `UnknownReference` for an unknown user
/// or persona.
pub async fn create_integration(pool: &PgPool, new: &NewIntegration) -> Result<Integration> {
    check_platform(&new.platform)?;
    identifier("account_id", &new.account_id)?;
    let delivery = new.reply_delivery.as_deref().unwrap_or("none");
    check_delivery(delivery)?;
    if let Some(u) = &new.callback_url {
        check_callback_url(u)?;
    }
    if let Some(s) = &new.callback_secret {
        check_callback_secret(s)?;
    }
    let rate = new
        .reply_rate_limit
        .as_deref()
        .map(rate_limit)
        .transpose()?;
    let cap = new.max_concurrent.map(max_concurrent).transpose()?;
    let mut tx = pool.begin().await?;
    let row: Integration = sqlx::query_as(
        "INSERT INTO integrations (user_id, platform, account_id, access_token, reply_delivery,
             callback_url, callback_secret, default_persona_id, paused, reply_rate_limit,
             max_concurrent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, false), $10, $11) RETURNING *",
    )
    .bind(new.user_id)
    .bind(&new.platform)
    .bind(&new.account_id)
    .bind(&new.access_token)
    .bind(delivery)
    .bind(&new.callback_url)
    .bind(&new.callback_secret)
    .bind(new.default_persona_id)
    .bind(new.paused)
    .bind(rate)
    .bind(cap)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| db_error(e, false))?;
    check_integration(&row)?;
    tx.commit().await?;
    Ok(row)
}

/// Applies `patch` to integration `id`; errors as for create, `NotFound` when there is
/// none.
pub async fn update_integration(
    pool: &PgPool,
    id: Uuid,
    patch: &IntegrationPatch,
) -> Result<Integration> {
    if let Some(p) = &patch.platform {
        check_platform(p)?;
    }
    if let Some(a) = &patch.account_id {
        identifier("account_id", a)?;
    }
    if let Some(d) = &patch.reply_delivery {
        check_delivery(d)?;
    }
    if let Some(Some(u)) = &patch.callback_url {
        check_callback_url(u)?;
    }
    if let Some(Some(s)) = &patch.callback_secret {
        check_callback_secret(s)?;
    }
    let (set_token, token) = set(&patch.access_token);
    let (set_url, url) = set(&patch.callback_url);
    let (set_secret, secret) = set(&patch.callback_secret);
    let (set_persona, persona) = set(&patch.default_persona_id);
    let (set_rate, rate) = set(&patch.reply_rate_limit);
    let rate = rate.as_deref().map(rate_limit).transpose()?;
    let (set_cap, cap) = set(&patch.max_concurrent);
    let cap = cap.map(max_concurrent).transpose()?;
    let mut tx = pool.begin().await?;
    let row: Integration = found(
        sqlx::query_as(
            "UPDATE integrations SET
                user_id = coalesce($2, user_id),
                platform = coalesce($3, platform),
                account_id = coalesce($4, account_id),
                access_token = CASE WHEN $5 THEN $6 ELSE access_token END,
                reply_delivery = coalesce($7, reply_delivery),
                callback_url = CASE WHEN $8 THEN $9 ELSE callback_url END,
                callback_secret = CASE WHEN $10 THEN $11 ELSE callback_secret END,
                default_persona_id = CASE WHEN $12 THEN $13 ELSE default_persona_id END,
                delivery_enabled = coalesce($14, delivery_enabled),
                delivery_disabled_reason = CASE WHEN $14 IS NOT NULL THEN NULL
                                                ELSE delivery_disabled_reason END,
                paused = coalesce($15, paused),
                reply_rate_limit = CASE WHEN $16 THEN $17 ELSE reply_rate_limit END,
                max_concurrent = CASE WHEN $18 THEN $19 ELSE max_concurrent END,
                updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(patch.user_id)
        .bind(&patch.platform)
        .bind(&patch.account_id)
        .bind(set_token)
        .bind(token)
        .bind(&patch.reply_delivery)
        .bind(set_url)
        .bind(url)
        .bind(set_secret)
        .bind(secret)
        .bind(set_persona)
        .bind(persona)
        .bind(patch.delivery_enabled)
        .bind(patch.paused)
        .bind(set_rate)
        .bind(rate)
        .bind(set_cap)
        .bind(cap)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, false))?,
    )?;
    check_integration(&row)?;
    if patch.delivery_enabled == Some(true) {
        // Turned back on: its failing streak starts again from the next failure.
        sqlx::query("DELETE FROM delivery_health WHERE integration_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(row)
}

/// Pauses or resumes an integration (`POST /api/integrations/{id}/pause`, `/resume`).
/// Its queue group follows in the same transaction (a trigger), and resuming wakes the
/// workers: held events then run within the integration's budget.
pub async fn set_paused(pool: &PgPool, id: Uuid, paused: bool) -> Result<Integration> {
    update_integration(
        pool,
        id,
        &IntegrationPatch {
            paused: Some(paused),
            ..IntegrationPatch::default()
        },
    )
    .await
}

/// An integration's queue as `GET /api/integrations/{id}/stats` shows it: its
/// [`IntegrationQueue`] row and its processing times.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationStats {
    /// Its events waiting to run (held by a budget, paused, or simply not reached yet).
    pub pending: i64,
    /// Seconds since the oldest of them was enqueued; `None` when none waits.
    pub oldest_pending_age_secs: Option<f64>,
    /// Whether it is paused.
    pub paused: bool,
    /// Runs counted against the rate limit now: running, plus finished within the window.
    pub rate_used: i64,
    /// The rate limit in force (its own, else `HOOKQ_REPLY_RATE_LIMIT`), as `N/unit`.
    pub rate_limit: Option<String>,
    /// Its jobs running now, across every worker.
    pub running: i64,
    /// Its `max_concurrent`.
    pub max_concurrent: Option<i32>,
    /// Median processing time (log started → processed) over the last hour, in ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile of the same.
    pub p95_ms: Option<f64>,
}

/// The queue of one integration: backlog, budget use and processing times.
/// `default_rate` is `HOOKQ_REPLY_RATE_LIMIT`, which applies when it sets none.
pub async fn integration_stats(
    pool: &PgPool,
    id: Uuid,
    default_rate: Option<crate::config::RateLimit>,
) -> Result<IntegrationStats> {
    let mut conn = pool.acquire().await?;
    let q = queue_rows(&mut conn, Some(id), 1, 0, default_rate)
        .await?
        .pop()
        .ok_or(Error::NotFound)?;
    let (p50_ms, p95_ms): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT extract(epoch FROM processed_at - started_at) * 1000 AS ms
               FROM webhook_logs
               WHERE integration_id = $1 AND status = 'processed'
                 AND processed_at > now() - interval '1 hour'
                 AND started_at IS NOT NULL) t",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(IntegrationStats {
        pending: q.pending,
        oldest_pending_age_secs: q.oldest_pending_age_secs,
        paused: q.paused,
        rate_used: q.rate_used,
        rate_limit: q.rate_limit,
        running: q.running,
        max_concurrent: q.max_concurrent,
        p50_ms,
        p95_ms,
    })
}

/// One integration's queue at a glance, as the dashboard's integrations panel lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IntegrationQueue {
    /// The integration.
    pub id: Uuid,
    /// Its platform.
    pub platform: String,
    /// Its account on the platform.
    pub account_id: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Its events waiting to run.
    pub pending: i64,
    /// Its jobs running now, across every worker.
    pub running: i64,
    /// Seconds since the oldest waiting one was enqueued; `None` when none waits.
    pub oldest_pending_age_secs: Option<f64>,
    /// Its cap on running jobs (`max_concurrent`); `None`: none.
    pub max_concurrent: Option<i32>,
    /// The rate limit in force (its own, else `HOOKQ_REPLY_RATE_LIMIT`), as `N/unit`.
    pub rate_limit: Option<String>,
    /// Runs counted against it now: running, plus finished within the window (0
    /// without a limit).
    pub rate_used: i64,
}

/// Every integration's queue, the largest backlog first (then paused ones, then by
/// platform and account), a page at a time, the page and the total read in one
/// snapshot. `default_rate` is `HOOKQ_REPLY_RATE_LIMIT`.
pub async fn integration_queues(
    pool: &PgPool,
    limit: i64,
    offset: i64,
    default_rate: Option<crate::config::RateLimit>,
) -> Result<Listed<IntegrationQueue>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let items = queue_rows(&mut tx, None, limit, offset, default_rate).await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM integrations")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Listed { items, total })
}

/// The [`IntegrationQueue`] rows of one integration (`only`) or of a page of all, the
/// largest backlog first; one statement, each integration's counts read through the
/// queue's per-group indexes.
async fn queue_rows(
    conn: &mut sqlx::PgConnection,
    only: Option<Uuid>,
    limit: i64,
    offset: i64,
    default_rate: Option<crate::config::RateLimit>,
) -> Result<Vec<IntegrationQueue>> {
    Ok(sqlx::query_as(
        "SELECT i.id, i.platform, i.account_id, i.paused, i.max_concurrent,
                q.pending, q.running, q.oldest_pending_age_secs,
                coalesce(i.reply_rate_limit, $3) AS rate_limit,
                q.running + CASE WHEN coalesce(i.reply_rate_limit, $3) IS NULL THEN 0 ELSE (
                    SELECT count(*) FROM queue_jobs_done d
                    WHERE d.group_key = q.key AND d.group_key <> ''
                      AND d.finished_at > now()
                          - coalesce(g.rate_window_ms, $4) * interval '1 millisecond') END AS rate_used
         FROM integrations i
         CROSS JOIN LATERAL (
             SELECT k.key,
                 (SELECT count(*) FROM queue_jobs WHERE group_key = k.key AND status = 'pending')
                     AS pending,
                 (SELECT count(*) FROM queue_jobs
                  WHERE group_key = k.key AND group_key <> '' AND status = 'running') AS running,
                 (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM queue_jobs
                  WHERE group_key = k.key AND status = 'pending') AS oldest_pending_age_secs
             FROM (SELECT hookq_integration_key(i.platform, i.account_id) AS key) k
         ) q
         LEFT JOIN queue_groups g ON g.key = q.key
         WHERE $5::uuid IS NULL OR i.id = $5
         ORDER BY q.pending DESC, i.paused DESC, i.platform, i.account_id, i.id
         LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .bind(default_rate.map(|r| r.to_string()))
    .bind(default_rate.map(|r| i64::try_from(r.per.as_millis()).unwrap_or(i64::MAX)))
    .bind(only)
    .fetch_all(conn)
    .await?)
}
