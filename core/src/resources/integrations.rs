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
    /// Off once an endpoint answered `410 Gone`: its deliveries fail unsent until an
    /// operator turns it back on.
    pub delivery_enabled: bool,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
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
    let mut tx = pool.begin().await?;
    let row: Integration = sqlx::query_as(
        "INSERT INTO integrations (user_id, platform, account_id, access_token, reply_delivery,
             callback_url, callback_secret, default_persona_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
    )
    .bind(new.user_id)
    .bind(&new.platform)
    .bind(&new.account_id)
    .bind(&new.access_token)
    .bind(delivery)
    .bind(&new.callback_url)
    .bind(&new.callback_secret)
    .bind(new.default_persona_id)
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
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, false))?,
    )?;
    check_integration(&row)?;
    tx.commit().await?;
    Ok(row)
}
