//! Repositories for the five admin resources (contract section 7): users,
//! integrations, persona templates, personas and posts — create, list, get, update,
//! delete.
//!
//! The database enforces what it can (unique external ids, references, enum CHECKs) and
//! [`db_error`] turns its refusals into the domain's errors, so a race between two
//! admins can never slip past a check done in Rust first: duplicates are `Conflict`
//! (409), missing references `UnknownReference` (422), bad values `Invalid` (422).
//! Updates are PATCHes: `None` leaves a field alone; for nullable fields
//! `Some(None)` clears it.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db::{self, DbFailure},
    error::{Error, Result},
    events::storable::MAX_ID_BYTES,
    model::{Integration, Persona, PersonaTemplate, Platform, Post, ReplyDelivery, User},
};

/// A page of any resource.
#[derive(Debug, Clone, Serialize)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// Translates a refused write into the domain's error, by [`db::classify`]: duplicates are
/// `Conflict` (409), missing references `UnknownReference` (422), refused values
/// `Invalid` (422). `deleting` turns a foreign-key violation into `Conflict` (the row is
/// still referenced) instead of an unknown reference.
fn db_error(e: sqlx::Error, deleting: bool) -> Error {
    match db::classify(&e) {
        DbFailure::Unique(detail) => Error::Conflict(detail),
        DbFailure::ForeignKey(detail) if deleting => {
            Error::Conflict(format!("still in use: {detail}"))
        }
        DbFailure::ForeignKey(detail) => Error::UnknownReference(detail),
        DbFailure::Constraint(msg) => Error::Invalid(msg),
        DbFailure::Refused(msg) => {
            Error::Invalid(format!("a value was refused by the database: {msg}"))
        }
        _ => Error::Database(e),
    }
}

/// `found` or `NotFound`.
fn found<T>(row: Option<T>) -> Result<T> {
    row.ok_or(Error::NotFound)
}

/// List, get and delete are the same for every table; a macro keeps each statement a
/// static string.
macro_rules! table_reads {
    ($list:ident, $get:ident, $delete:ident, $ty:ty, $table:literal) => {
        /// One page and the table's row count, read in one snapshot so the total
        /// describes the same rows as the page.
        pub async fn $list(pool: &PgPool, limit: i64, offset: i64) -> Result<Listed<$ty>> {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let items = sqlx::query_as(concat!(
                "SELECT * FROM ",
                $table,
                " ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?;
            let total = sqlx::query_scalar(concat!("SELECT count(*) FROM ", $table))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Listed { items, total })
        }

        pub async fn $get(pool: &PgPool, id: Uuid) -> Result<$ty> {
            found(
                sqlx::query_as(concat!("SELECT * FROM ", $table, " WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?,
            )
        }

        pub async fn $delete(pool: &PgPool, id: Uuid) -> Result<()> {
            let r = sqlx::query(concat!("DELETE FROM ", $table, " WHERE id = $1"))
                .bind(id)
                .execute(pool)
                .await
                .map_err(|e| db_error(e, true))?;
            if r.rows_affected() == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        }
    };
}

fn non_empty(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    Ok(())
}

/// An external id (user, persona, post, an integration's account): not empty, and at
/// most [`MAX_ID_BYTES`] bytes, as the ids inside webhook payloads are (they are matched
/// against each other, and unique indexes cannot hold a value over 2,704 bytes).
fn identifier(field: &str, v: &str) -> Result<()> {
    non_empty(field, v)?;
    if v.len() > MAX_ID_BYTES {
        return Err(Error::Invalid(format!(
            "{field} is {} bytes long: at most {MAX_ID_BYTES} are allowed",
            v.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------- users

pub struct NewUser {
    pub external_id: String,
    pub name: String,
}

#[derive(Default)]
pub struct UserPatch {
    pub external_id: Option<String>,
    pub name: Option<String>,
}

table_reads!(list_users, get_user, delete_user, User, "users");

pub async fn create_user(pool: &PgPool, new: &NewUser) -> Result<User> {
    identifier("external_id", &new.external_id)?;
    sqlx::query_as("INSERT INTO users (external_id, name) VALUES ($1, $2) RETURNING *")
        .bind(&new.external_id)
        .bind(&new.name)
        .fetch_one(pool)
        .await
        .map_err(|e| db_error(e, false))
}

pub async fn update_user(pool: &PgPool, id: Uuid, patch: &UserPatch) -> Result<User> {
    if let Some(e) = &patch.external_id {
        identifier("external_id", e)?;
    }
    found(
        sqlx::query_as(
            "UPDATE users SET external_id = coalesce($2, external_id), name = coalesce($3, name),
                    updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(&patch.external_id)
        .bind(&patch.name)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error(e, false))?,
    )
}

// --------------------------------------------------------------------- integrations

pub struct NewIntegration {
    pub user_id: Uuid,
    pub platform: String,
    pub account_id: String,
    pub access_token: Option<String>,
    pub reply_delivery: Option<String>,
    pub callback_url: Option<String>,
    pub callback_secret: Option<String>,
    pub default_persona_id: Option<Uuid>,
}

#[derive(Default)]
pub struct IntegrationPatch {
    pub user_id: Option<Uuid>,
    pub platform: Option<String>,
    pub account_id: Option<String>,
    pub access_token: Option<Option<String>>,
    pub reply_delivery: Option<String>,
    pub callback_url: Option<Option<String>>,
    pub callback_secret: Option<Option<String>>,
    pub default_persona_id: Option<Option<Uuid>>,
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

/// `Some(v)` → (true, v): "set this nullable column to v (maybe NULL)".
fn set<T: Clone>(v: &Option<Option<T>>) -> (bool, Option<T>) {
    match v {
        Some(inner) => (true, inner.clone()),
        None => (false, None),
    }
}

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

// ---------------------------------------------------------------- persona templates

pub struct NewTemplate {
    pub name: String,
    pub reply_template: String,
    pub system_prompt: Option<String>,
}

#[derive(Default)]
pub struct TemplatePatch {
    pub name: Option<String>,
    pub reply_template: Option<String>,
    pub system_prompt: Option<Option<String>>,
}

table_reads!(
    list_templates,
    get_template,
    delete_template,
    PersonaTemplate,
    "persona_templates"
);

pub async fn create_template(pool: &PgPool, new: &NewTemplate) -> Result<PersonaTemplate> {
    non_empty("name", &new.name)?;
    non_empty("reply_template", &new.reply_template)?;
    sqlx::query_as(
        "INSERT INTO persona_templates (name, reply_template, system_prompt) VALUES ($1, $2, $3) RETURNING *",
    )
    .bind(&new.name)
    .bind(&new.reply_template)
    .bind(&new.system_prompt)
    .fetch_one(pool)
    .await
    .map_err(|e| db_error(e, false))
}

pub async fn update_template(
    pool: &PgPool,
    id: Uuid,
    patch: &TemplatePatch,
) -> Result<PersonaTemplate> {
    if let Some(t) = &patch.reply_template {
        non_empty("reply_template", t)?;
    }
    let (set_prompt, prompt) = set(&patch.system_prompt);
    found(
        sqlx::query_as(
            "UPDATE persona_templates SET name = coalesce($2, name),
                reply_template = coalesce($3, reply_template),
                system_prompt = CASE WHEN $4 THEN $5 ELSE system_prompt END, updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.reply_template)
        .bind(set_prompt)
        .bind(prompt)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error(e, false))?,
    )
}

// ------------------------------------------------------------------------- personas

pub struct NewPersona {
    pub external_id: String,
    pub user_id: Uuid,
    pub template_id: Uuid,
    pub name: String,
    pub blocklist: Vec<String>,
}

#[derive(Default)]
pub struct PersonaPatch {
    pub external_id: Option<String>,
    pub user_id: Option<Uuid>,
    pub template_id: Option<Uuid>,
    pub name: Option<String>,
    pub blocklist: Option<Vec<String>>,
}

table_reads!(
    list_personas,
    get_persona,
    delete_persona,
    Persona,
    "personas"
);

pub async fn create_persona(pool: &PgPool, new: &NewPersona) -> Result<Persona> {
    identifier("external_id", &new.external_id)?;
    non_empty("name", &new.name)?;
    sqlx::query_as(
        "INSERT INTO personas (external_id, user_id, template_id, name, blocklist)
         VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(&new.external_id)
    .bind(new.user_id)
    .bind(new.template_id)
    .bind(&new.name)
    .bind(&new.blocklist)
    .fetch_one(pool)
    .await
    .map_err(|e| db_error(e, false))
}

pub async fn update_persona(pool: &PgPool, id: Uuid, patch: &PersonaPatch) -> Result<Persona> {
    if let Some(e) = &patch.external_id {
        identifier("external_id", e)?;
    }
    found(
        sqlx::query_as(
            "UPDATE personas SET external_id = coalesce($2, external_id), user_id = coalesce($3, user_id),
                template_id = coalesce($4, template_id), name = coalesce($5, name),
                blocklist = coalesce($6, blocklist), updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(&patch.external_id)
        .bind(patch.user_id)
        .bind(patch.template_id)
        .bind(&patch.name)
        .bind(&patch.blocklist)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error(e, false))?,
    )
}

// ---------------------------------------------------------------------------- posts

pub struct NewPost {
    pub external_id: String,
    pub integration_id: Uuid,
    pub persona_id: Option<Uuid>,
    pub caption: String,
    pub replies_enabled: bool,
}

#[derive(Default)]
pub struct PostPatch {
    pub external_id: Option<String>,
    pub integration_id: Option<Uuid>,
    pub persona_id: Option<Option<Uuid>>,
    pub caption: Option<String>,
    pub replies_enabled: Option<bool>,
}

table_reads!(list_posts, get_post, delete_post, Post, "posts");

pub async fn create_post(pool: &PgPool, new: &NewPost) -> Result<Post> {
    identifier("external_id", &new.external_id)?;
    sqlx::query_as(
        "INSERT INTO posts (external_id, integration_id, persona_id, caption, replies_enabled)
         VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(&new.external_id)
    .bind(new.integration_id)
    .bind(new.persona_id)
    .bind(&new.caption)
    .bind(new.replies_enabled)
    .fetch_one(pool)
    .await
    .map_err(|e| db_error(e, false))
}

pub async fn update_post(pool: &PgPool, id: Uuid, patch: &PostPatch) -> Result<Post> {
    if let Some(e) = &patch.external_id {
        identifier("external_id", e)?;
    }
    let (set_persona, persona) = set(&patch.persona_id);
    found(
        sqlx::query_as(
            "UPDATE posts SET external_id = coalesce($2, external_id),
                integration_id = coalesce($3, integration_id),
                persona_id = CASE WHEN $4 THEN $5 ELSE persona_id END,
                caption = coalesce($6, caption), replies_enabled = coalesce($7, replies_enabled),
                updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(&patch.external_id)
        .bind(patch.integration_id)
        .bind(set_persona)
        .bind(persona)
        .bind(&patch.caption)
        .bind(patch.replies_enabled)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error(e, false))?,
    )
}
