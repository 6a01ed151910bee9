//! The five admin resources (contract section 7): users, integrations, persona
//! templates, personas, posts. Create (`POST`, answers 201), list, get, `PATCH` (only
//! the fields sent; `null` clears a nullable field) and delete.
//!
//! Integrations' `access_token` and `callback_secret` are write-only: answers say only
//! whether one is set (`has_access_token`, `has_callback_secret`).

use chrono::{DateTime, Utc};
use hookq_core::resources as model;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::{MaybeUndefined, ParseFromJSON, ToJSON},
};
use uuid::Uuid;

use super::{AdminError, AdminResult, Deleted, Page, paging};
use crate::{ApiTags, auth::AdminAuth, state::AppState};

/// `/api/users`, `/api/integrations`, `/api/persona-templates`, `/api/personas` and
/// `/api/posts`.
pub struct ResourcesApi;

/// A created resource.
#[derive(ApiResponse)]
pub enum Created<T: ToJSON + Send + Sync> {
    /// Created; the body is the stored resource.
    #[oai(status = 201)]
    Created(Json<T>),
}

/// `undefined` → leave alone, `null` → clear, a value → set.
fn patch<T>(v: MaybeUndefined<T>) -> Option<Option<T>> {
    match v {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(v)),
    }
}

fn page<T, U: ParseFromJSON + ToJSON + Send + Sync>(
    listed: model::Listed<T>,
    limit: u32,
    offset: u32,
    f: impl Fn(T) -> U,
) -> Page<U> {
    Page {
        items: listed.items.into_iter().map(f).collect(),
        total: listed.total,
        limit,
        offset,
    }
}

// ---------------------------------------------------------------------------- types

/// A person hookq answers for; owns integrations and personas.
#[derive(Debug, Clone, Object)]
pub struct User {
    /// The user's id, by which other resources reference it.
    pub id: Uuid,
    /// Unique; what payloads name (`user_id` in the compact shape).
    pub external_id: String,
    /// Display name; may be empty.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<model::User> for User {
    fn from(u: model::User) -> Self {
        User {
            id: u.id,
            external_id: u.external_id,
            name: u.name,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A user to create.
#[derive(Debug, Clone, Object)]
pub struct NewUser {
    /// Unique; what payloads name (`user_id` in the compact shape).
    pub external_id: String,
    /// Display name; empty when omitted.
    #[oai(default)]
    pub name: String,
}

/// The user fields to change; omitted fields are left as they are.
#[derive(Debug, Clone, Object)]
pub struct UserPatch {
    /// A new external id; unique.
    pub external_id: Option<String>,
    /// A new display name.
    pub name: Option<String>,
}

/// An account on a platform that hookq answers for, and how its replies are delivered.
#[derive(Debug, Clone, Object)]
pub struct Integration {
    /// The integration's id, by which posts reference it and logs record it.
    pub id: Uuid,
    /// The `id` of the user it belongs to.
    pub user_id: Uuid,
    /// `instagram`, `facebook` or `whatsapp`.
    pub platform: String,
    /// The account payloads name (`entry[].id`, `phone_number_id`, a Bridge number).
    pub account_id: String,
    /// Whether an access token is stored (the token itself is never returned).
    pub has_access_token: bool,
    /// `none`, `callback` or `graph_api`.
    pub reply_delivery: String,
    /// Where `callback` delivery POSTs the reply; an absolute http(s) URL.
    #[oai(nullable)]
    pub callback_url: Option<String>,
    /// Whether a callback signing secret is stored (never returned).
    pub has_callback_secret: bool,
    /// The `id` of the persona that answers when neither the post nor the event names
    /// one.
    #[oai(nullable)]
    pub default_persona_id: Option<Uuid>,
    /// Off after an endpoint answered 410 Gone or failed every attempt for
    /// `HOOKQ_DISABLE_DELIVERY_AFTER` (or when an operator switched it off), until an
    /// operator turns it back on.
    pub delivery_enabled: bool,
    /// Why hookq switched delivery off: `gone` (410) or `failing`; null while on or
    /// when an operator switched it off.
    #[oai(nullable)]
    pub delivery_disabled_reason: Option<String>,
    /// Its events are stored and answered `200`, but stay `pending` and run nothing
    /// until it is resumed.
    pub paused: bool,
    /// The most replies per rolling window, `N/s`, `N/min` or `N/h`, across every
    /// worker; null: `HOOKQ_REPLY_RATE_LIMIT`.
    #[oai(nullable)]
    pub reply_rate_limit: Option<String>,
    /// The most of its jobs running at once, across every worker; null: no cap.
    #[oai(nullable)]
    pub max_concurrent: Option<i32>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<model::Integration> for Integration {
    fn from(i: model::Integration) -> Self {
        Integration {
            id: i.id,
            user_id: i.user_id,
            platform: i.platform,
            account_id: i.account_id,
            has_access_token: i.access_token.is_some(),
            reply_delivery: i.reply_delivery,
            callback_url: i.callback_url,
            has_callback_secret: i.callback_secret.is_some(),
            default_persona_id: i.default_persona_id,
            delivery_enabled: i.delivery_enabled,
            delivery_disabled_reason: i.delivery_disabled_reason,
            paused: i.paused,
            reply_rate_limit: i.reply_rate_limit,
            max_concurrent: i.max_concurrent,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// An integration to create. `platform` and `account_id` are unique together.
#[derive(Debug, Clone, Object)]
pub struct NewIntegration {
    /// The `id` of the user it belongs to.
    pub user_id: Uuid,
    /// `instagram`, `facebook` or `whatsapp`.
    pub platform: String,
    /// The account payloads name (`entry[].id`, `phone_number_id`, a Bridge number); not
    /// empty.
    pub account_id: String,
    /// For `graph_api` delivery. Write-only.
    #[oai(write_only)]
    pub access_token: Option<String>,
    /// `none` (default), `callback` or `graph_api`.
    pub reply_delivery: Option<String>,
    /// Required for `callback` delivery.
    pub callback_url: Option<String>,
    /// `whsec_<base64>`, signs callbacks (Standard Webhooks). Write-only.
    #[oai(write_only)]
    pub callback_secret: Option<String>,
    /// The `id` of the persona that answers when neither the post nor the event names
    /// one.
    pub default_persona_id: Option<Uuid>,
    /// Start paused (default `false`).
    pub paused: Option<bool>,
    /// `N/s`, `N/min` or `N/h`; unset: `HOOKQ_REPLY_RATE_LIMIT`.
    pub reply_rate_limit: Option<String>,
    /// At least 1; unset: no cap.
    pub max_concurrent: Option<i32>,
}

/// The integration fields to change; omitted fields are left as they are, `null` clears a
/// nullable one. The result must still be valid (`callback` delivery needs a
/// `callback_url`).
#[derive(Debug, Clone, Object)]
pub struct IntegrationPatch {
    /// Moves it to another user (an `id`).
    pub user_id: Option<Uuid>,
    /// A new platform: `instagram`, `facebook` or `whatsapp`.
    pub platform: Option<String>,
    /// A new account id.
    pub account_id: Option<String>,
    /// Sets (or with `null` clears) the access token. Write-only.
    #[oai(write_only, nullable)]
    pub access_token: MaybeUndefined<String>,
    /// A new delivery: `none`, `callback` or `graph_api`.
    pub reply_delivery: Option<String>,
    /// Sets (or with `null` clears) the callback URL.
    #[oai(nullable)]
    pub callback_url: MaybeUndefined<String>,
    /// Sets (or with `null` clears) the callback signing secret, `whsec_<base64>`.
    /// Write-only.
    #[oai(write_only, nullable)]
    pub callback_secret: MaybeUndefined<String>,
    /// Sets (or with `null` clears) the default persona (an `id`).
    #[oai(nullable)]
    pub default_persona_id: MaybeUndefined<Uuid>,
    /// `true` turns delivery back on after a `410 Gone` switched it off.
    pub delivery_enabled: Option<bool>,
    /// `true` pauses it, `false` resumes it (as the pause and resume routes do).
    pub paused: Option<bool>,
    /// `N/s`, `N/min` or `N/h`; null: back to `HOOKQ_REPLY_RATE_LIMIT`.
    #[oai(nullable)]
    pub reply_rate_limit: MaybeUndefined<String>,
    /// At least 1; null: no cap.
    #[oai(nullable)]
    pub max_concurrent: MaybeUndefined<i32>,
}

/// One integration's queue (contract section 10).
#[derive(Debug, Clone, Object)]
pub struct IntegrationStats {
    /// Its events waiting to run (held by a budget or pause, or not reached yet).
    pub pending: i64,
    /// Seconds since the oldest of them was stored; null when none waits.
    #[oai(nullable)]
    pub oldest_pending_age_secs: Option<f64>,
    /// Whether it is paused.
    pub paused: bool,
    /// Runs counted in the current rate window (running, plus finished within it).
    pub rate_used: i64,
    /// The limit in force (its own, else `HOOKQ_REPLY_RATE_LIMIT`); null: none.
    #[oai(nullable)]
    pub rate_limit: Option<String>,
    /// Its jobs running now, across every worker.
    pub running: i64,
    /// Its cap on running jobs; null: none.
    #[oai(nullable)]
    pub max_concurrent: Option<i32>,
    /// Median processing time over the last hour (ms); null without data.
    #[oai(nullable)]
    pub p50_ms: Option<f64>,
    /// 95th percentile processing time over the last hour (ms); null without data.
    #[oai(nullable)]
    pub p95_ms: Option<f64>,
}

impl From<model::IntegrationStats> for IntegrationStats {
    fn from(s: model::IntegrationStats) -> Self {
        IntegrationStats {
            pending: s.pending,
            oldest_pending_age_secs: s.oldest_pending_age_secs,
            paused: s.paused,
            rate_used: s.rate_used,
            rate_limit: s.rate_limit,
            running: s.running,
            max_concurrent: s.max_concurrent,
            p50_ms: s.p50_ms,
            p95_ms: s.p95_ms,
        }
    }
}

/// One integration's queue, as the dashboard's integrations panel lists it.
#[derive(Debug, Clone, Object)]
pub struct IntegrationQueue {
    /// The integration's id.
    pub id: Uuid,
    /// Its platform.
    pub platform: String,
    /// Its account on the platform.
    pub account_id: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Its events waiting to run (held by a budget or pause, or not reached yet).
    pub pending: i64,
    /// Its jobs running now, across every worker.
    pub running: i64,
    /// Seconds since the oldest waiting one was stored; null when none waits.
    #[oai(nullable)]
    pub oldest_pending_age_secs: Option<f64>,
    /// Its cap on running jobs (`max_concurrent`); null: none.
    #[oai(nullable)]
    pub max_concurrent: Option<i32>,
    /// The limit in force (its own, else `HOOKQ_REPLY_RATE_LIMIT`); null: none.
    #[oai(nullable)]
    pub rate_limit: Option<String>,
    /// Runs counted in the current rate window (running, plus finished within it; 0
    /// without a limit).
    pub rate_used: i64,
}

impl From<model::IntegrationQueue> for IntegrationQueue {
    fn from(q: model::IntegrationQueue) -> Self {
        IntegrationQueue {
            id: q.id,
            platform: q.platform,
            account_id: q.account_id,
            paused: q.paused,
            pending: q.pending,
            running: q.running,
            oldest_pending_age_secs: q.oldest_pending_age_secs,
            max_concurrent: q.max_concurrent,
            rate_limit: q.rate_limit,
            rate_used: q.rate_used,
        }
    }
}

/// What a persona speaks with: the reply template, and the LLM's system prompt.
#[derive(Debug, Clone, Object)]
pub struct PersonaTemplate {
    /// The template's id, by which personas reference it.
    pub id: Uuid,
    /// The operator's name for it.
    pub name: String,
    /// Placeholders: `{sender_name}`, `{message}`, `{persona_name}`, `{post_caption}`.
    pub reply_template: String,
    /// For an LLM (`REPLY_LLM_URL`).
    #[oai(nullable)]
    pub system_prompt: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<model::PersonaTemplate> for PersonaTemplate {
    fn from(t: model::PersonaTemplate) -> Self {
        PersonaTemplate {
            id: t.id,
            name: t.name,
            reply_template: t.reply_template,
            system_prompt: t.system_prompt,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A persona template to create.
#[derive(Debug, Clone, Object)]
pub struct NewPersonaTemplate {
    /// The operator's name for it; not empty.
    pub name: String,
    /// Not empty; placeholders `{sender_name}`, `{message}`, `{persona_name}`,
    /// `{post_caption}`.
    pub reply_template: String,
    /// The LLM's system prompt, used when `REPLY_LLM_URL` is set.
    pub system_prompt: Option<String>,
}

/// The template fields to change; omitted fields are left as they are.
#[derive(Debug, Clone, Object)]
pub struct PersonaTemplatePatch {
    /// A new name.
    pub name: Option<String>,
    /// A new reply template; not empty.
    pub reply_template: Option<String>,
    /// Sets (or with `null` clears) the LLM's system prompt.
    #[oai(nullable)]
    pub system_prompt: MaybeUndefined<String>,
}

/// Who replies: a name, a template to speak with, words never to answer.
#[derive(Debug, Clone, Object)]
pub struct Persona {
    /// The persona's id, by which posts and integrations reference it.
    pub id: Uuid,
    /// Unique; what payloads name (`persona_id` in the compact shape).
    pub external_id: String,
    /// The `id` of the user it belongs to.
    pub user_id: Uuid,
    /// The `id` of the persona template it speaks with.
    pub template_id: Uuid,
    /// Its name, the template's `{persona_name}`.
    pub name: String,
    /// Words that skip a reply (case-insensitive, whole words).
    pub blocklist: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<model::Persona> for Persona {
    fn from(p: model::Persona) -> Self {
        Persona {
            id: p.id,
            external_id: p.external_id,
            user_id: p.user_id,
            template_id: p.template_id,
            name: p.name,
            blocklist: p.blocklist,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A persona to create.
#[derive(Debug, Clone, Object)]
pub struct NewPersona {
    /// Unique; what payloads name (`persona_id` in the compact shape).
    pub external_id: String,
    /// The `id` of the user it belongs to.
    pub user_id: Uuid,
    /// The `id` of the persona template it speaks with.
    pub template_id: Uuid,
    /// Its name, the template's `{persona_name}`; not empty.
    pub name: String,
    /// Words that skip a reply (case-insensitive, whole words); empty when omitted.
    #[oai(default)]
    pub blocklist: Vec<String>,
}

/// The persona fields to change; omitted fields are left as they are.
#[derive(Debug, Clone, Object)]
pub struct PersonaPatch {
    /// A new external id; unique.
    pub external_id: Option<String>,
    /// Moves it to another user (an `id`).
    pub user_id: Option<Uuid>,
    /// Another persona template (an `id`).
    pub template_id: Option<Uuid>,
    /// A new name.
    pub name: Option<String>,
    /// Replaces the whole blocklist.
    pub blocklist: Option<Vec<String>>,
}

/// A post on an integration's account: who answers its comments, and whether anyone does.
#[derive(Debug, Clone, Object)]
pub struct Post {
    /// The post's id.
    pub id: Uuid,
    /// The media id payloads name; unique per integration.
    pub external_id: String,
    /// The `id` of the integration whose account published it.
    pub integration_id: Uuid,
    /// The `id` of the persona that answers it, ahead of the event's and the
    /// integration's default.
    #[oai(nullable)]
    pub persona_id: Option<Uuid>,
    /// Its caption, the template's `{post_caption}`.
    pub caption: String,
    /// When `false`, its comments are skipped (`replies_disabled`).
    pub replies_enabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<model::Post> for Post {
    fn from(p: model::Post) -> Self {
        Post {
            id: p.id,
            external_id: p.external_id,
            integration_id: p.integration_id,
            persona_id: p.persona_id,
            caption: p.caption,
            replies_enabled: p.replies_enabled,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

fn yes() -> bool {
    true
}

/// A post to create.
#[derive(Debug, Clone, Object)]
pub struct NewPost {
    /// The media id payloads name; unique per integration.
    pub external_id: String,
    /// The `id` of the integration whose account published it.
    pub integration_id: Uuid,
    /// The `id` of the persona that answers it, if not the default one.
    pub persona_id: Option<Uuid>,
    /// Its caption, the template's `{post_caption}`; empty when omitted.
    #[oai(default)]
    pub caption: String,
    /// When `false`, its comments are skipped (`replies_disabled`); `true` when omitted.
    #[oai(default = "yes")]
    pub replies_enabled: bool,
}

/// The post fields to change; omitted fields are left as they are, `null` clears the
/// persona.
#[derive(Debug, Clone, Object)]
pub struct PostPatch {
    /// A new external id; unique per integration.
    pub external_id: Option<String>,
    /// Moves it to another integration (an `id`).
    pub integration_id: Option<Uuid>,
    /// Sets (or with `null` clears) the persona that answers it.
    #[oai(nullable)]
    pub persona_id: MaybeUndefined<Uuid>,
    /// A new caption.
    pub caption: Option<String>,
    /// Turns replies on or off.
    pub replies_enabled: Option<bool>,
}

type CreateResult<T> = Result<Created<T>, AdminError>;

// --------------------------------------------------------------------------- routes

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Admin")]
impl ResourcesApi {
    /// Creates a user; `409` when the external id exists.
    #[oai(path = "/users", method = "post")]
    async fn create_user(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        b: Json<NewUser>,
    ) -> CreateResult<User> {
        let new = model::NewUser {
            external_id: b.0.external_id,
            name: b.0.name,
        };
        Ok(Created::Created(Json(
            model::create_user(&s.pool, &new).await?.into(),
        )))
    }

    /// Users, newest first.
    #[oai(path = "/users", method = "get")]
    async fn list_users(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<User>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::list_users(s.reads(), l.into(), o.into()).await?,
            l,
            o,
            User::from,
        )))
    }

    #[oai(path = "/users/:id", method = "get")]
    async fn get_user(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<User> {
        Ok(Json(model::get_user(s.reads(), id.0).await?.into()))
    }

    #[oai(path = "/users/:id", method = "patch")]
    async fn update_user(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
        b: Json<UserPatch>,
    ) -> AdminResult<User> {
        let p = model::UserPatch {
            external_id: b.0.external_id,
            name: b.0.name,
        };
        Ok(Json(model::update_user(&s.pool, id.0, &p).await?.into()))
    }

    /// Deletes a user with its integrations and personas.
    #[oai(path = "/users/:id", method = "delete")]
    async fn delete_user(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Deleted> {
        model::delete_user(&s.pool, id.0).await?;
        Ok(Json(Deleted { deleted: true }))
    }

    /// Creates an integration; `409` when (`platform`, `account_id`) exists, `422` for
    /// an unknown user or persona or an invalid `platform`/`reply_delivery`.
    #[oai(path = "/integrations", method = "post")]
    async fn create_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        b: Json<NewIntegration>,
    ) -> CreateResult<Integration> {
        let b = b.0;
        let new = model::NewIntegration {
            user_id: b.user_id,
            platform: b.platform,
            account_id: b.account_id,
            access_token: b.access_token,
            reply_delivery: b.reply_delivery,
            callback_url: b.callback_url,
            callback_secret: b.callback_secret,
            default_persona_id: b.default_persona_id,
            paused: b.paused,
            reply_rate_limit: b.reply_rate_limit,
            max_concurrent: b.max_concurrent,
        };
        Ok(Created::Created(Json(
            model::create_integration(&s.pool, &new).await?.into(),
        )))
    }

    #[oai(path = "/integrations", method = "get")]
    async fn list_integrations(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<Integration>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::list_integrations(s.reads(), l.into(), o.into()).await?,
            l,
            o,
            Integration::from,
        )))
    }

    /// Every integration's queue (backlog, running jobs against its cap, oldest waiting,
    /// rate used against its limit, paused), the largest backlog first: the dashboard's
    /// integrations panel, one request for all.
    #[oai(path = "/integrations/queues", method = "get")]
    async fn integration_queues(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<IntegrationQueue>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::integration_queues(s.reads(), l.into(), o.into(), s.config.reply_rate_limit)
                .await?,
            l,
            o,
            IntegrationQueue::from,
        )))
    }

    #[oai(path = "/integrations/:id", method = "get")]
    async fn get_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Integration> {
        Ok(Json(model::get_integration(s.reads(), id.0).await?.into()))
    }

    #[oai(path = "/integrations/:id", method = "patch")]
    async fn update_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
        b: Json<IntegrationPatch>,
    ) -> AdminResult<Integration> {
        let b = b.0;
        let p = model::IntegrationPatch {
            user_id: b.user_id,
            platform: b.platform,
            account_id: b.account_id,
            access_token: patch(b.access_token),
            reply_delivery: b.reply_delivery,
            callback_url: patch(b.callback_url),
            callback_secret: patch(b.callback_secret),
            default_persona_id: patch(b.default_persona_id),
            delivery_enabled: b.delivery_enabled,
            paused: b.paused,
            reply_rate_limit: patch(b.reply_rate_limit),
            max_concurrent: patch(b.max_concurrent),
        };
        Ok(Json(
            model::update_integration(&s.pool, id.0, &p).await?.into(),
        ))
    }

    /// Pauses an integration: its events are still stored and answered `200`, but stay
    /// `pending` and run nothing (spending no attempt) until it is resumed.
    #[oai(path = "/integrations/:id/pause", method = "post")]
    async fn pause_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Integration> {
        Ok(Json(model::set_paused(&s.pool, id.0, true).await?.into()))
    }

    /// Resumes a paused integration: its held events run, within its budget.
    #[oai(path = "/integrations/:id/resume", method = "post")]
    async fn resume_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Integration> {
        Ok(Json(model::set_paused(&s.pool, id.0, false).await?.into()))
    }

    /// Its backlog (`pending`, oldest pending age), whether it is paused, replies in the
    /// current rate window against its limit, jobs running against `max_concurrent`,
    /// and p50/p95 processing time over the last hour.
    #[oai(path = "/integrations/:id/stats", method = "get")]
    async fn integration_stats(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<IntegrationStats> {
        let default = s.config.reply_rate_limit;
        Ok(Json(
            model::integration_stats(s.reads(), id.0, default)
                .await?
                .into(),
        ))
    }

    /// Deletes an integration with its posts.
    #[oai(path = "/integrations/:id", method = "delete")]
    async fn delete_integration(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Deleted> {
        model::delete_integration(&s.pool, id.0).await?;
        Ok(Json(Deleted { deleted: true }))
    }

    #[oai(path = "/persona-templates", method = "post")]
    async fn create_template(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        b: Json<NewPersonaTemplate>,
    ) -> CreateResult<PersonaTemplate> {
        let new = model::NewTemplate {
            name: b.0.name,
            reply_template: b.0.reply_template,
            system_prompt: b.0.system_prompt,
        };
        Ok(Created::Created(Json(
            model::create_template(&s.pool, &new).await?.into(),
        )))
    }

    #[oai(path = "/persona-templates", method = "get")]
    async fn list_templates(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<PersonaTemplate>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::list_templates(s.reads(), l.into(), o.into()).await?,
            l,
            o,
            PersonaTemplate::from,
        )))
    }

    #[oai(path = "/persona-templates/:id", method = "get")]
    async fn get_template(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<PersonaTemplate> {
        Ok(Json(model::get_template(s.reads(), id.0).await?.into()))
    }

    #[oai(path = "/persona-templates/:id", method = "patch")]
    async fn update_template(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
        b: Json<PersonaTemplatePatch>,
    ) -> AdminResult<PersonaTemplate> {
        let p = model::TemplatePatch {
            name: b.0.name,
            reply_template: b.0.reply_template,
            system_prompt: patch(b.0.system_prompt),
        };
        Ok(Json(
            model::update_template(&s.pool, id.0, &p).await?.into(),
        ))
    }

    /// Deletes a template; `409` while a persona uses it.
    #[oai(path = "/persona-templates/:id", method = "delete")]
    async fn delete_template(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Deleted> {
        model::delete_template(&s.pool, id.0).await?;
        Ok(Json(Deleted { deleted: true }))
    }

    /// Creates a persona; `409` when the external id exists, `422` for an unknown
    /// user or template.
    #[oai(path = "/personas", method = "post")]
    async fn create_persona(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        b: Json<NewPersona>,
    ) -> CreateResult<Persona> {
        let b = b.0;
        let new = model::NewPersona {
            external_id: b.external_id,
            user_id: b.user_id,
            template_id: b.template_id,
            name: b.name,
            blocklist: b.blocklist,
        };
        Ok(Created::Created(Json(
            model::create_persona(&s.pool, &new).await?.into(),
        )))
    }

    #[oai(path = "/personas", method = "get")]
    async fn list_personas(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<Persona>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::list_personas(s.reads(), l.into(), o.into()).await?,
            l,
            o,
            Persona::from,
        )))
    }

    #[oai(path = "/personas/:id", method = "get")]
    async fn get_persona(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Persona> {
        Ok(Json(model::get_persona(s.reads(), id.0).await?.into()))
    }

    #[oai(path = "/personas/:id", method = "patch")]
    async fn update_persona(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
        b: Json<PersonaPatch>,
    ) -> AdminResult<Persona> {
        let b = b.0;
        let p = model::PersonaPatch {
            external_id: b.external_id,
            user_id: b.user_id,
            template_id: b.template_id,
            name: b.name,
            blocklist: b.blocklist,
        };
        Ok(Json(model::update_persona(&s.pool, id.0, &p).await?.into()))
    }

    #[oai(path = "/personas/:id", method = "delete")]
    async fn delete_persona(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Deleted> {
        model::delete_persona(&s.pool, id.0).await?;
        Ok(Json(Deleted { deleted: true }))
    }

    /// Creates a post; `409` when the integration already has this external id, `422`
    /// for an unknown integration or persona.
    #[oai(path = "/posts", method = "post")]
    async fn create_post(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        b: Json<NewPost>,
    ) -> CreateResult<Post> {
        let b = b.0;
        let new = model::NewPost {
            external_id: b.external_id,
            integration_id: b.integration_id,
            persona_id: b.persona_id,
            caption: b.caption,
            replies_enabled: b.replies_enabled,
        };
        Ok(Created::Created(Json(
            model::create_post(&s.pool, &new).await?.into(),
        )))
    }

    #[oai(path = "/posts", method = "get")]
    async fn list_posts(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<Post>> {
        let (l, o) = paging(limit.0, offset.0);
        Ok(Json(page(
            model::list_posts(s.reads(), l.into(), o.into()).await?,
            l,
            o,
            Post::from,
        )))
    }

    #[oai(path = "/posts/:id", method = "get")]
    async fn get_post(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Post> {
        Ok(Json(model::get_post(s.reads(), id.0).await?.into()))
    }

    #[oai(path = "/posts/:id", method = "patch")]
    async fn update_post(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
        b: Json<PostPatch>,
    ) -> AdminResult<Post> {
        let b = b.0;
        let p = model::PostPatch {
            external_id: b.external_id,
            integration_id: b.integration_id,
            persona_id: patch(b.persona_id),
            caption: b.caption,
            replies_enabled: b.replies_enabled,
        };
        Ok(Json(model::update_post(&s.pool, id.0, &p).await?.into()))
    }

    #[oai(path = "/posts/:id", method = "delete")]
    async fn delete_post(
        &self,
        _a: AdminAuth,
        s: Data<&AppState>,
        id: Path<Uuid>,
    ) -> AdminResult<Deleted> {
        model::delete_post(&s.pool, id.0).await?;
        Ok(Json(Deleted { deleted: true }))
    }
}
