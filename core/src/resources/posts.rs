//! `posts`: a commented post, its persona and its `replies_enabled` switch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier, set};
use crate::error::{Error, Result};

/// A post on an integration's account (`posts`): which persona answers its comments, and
/// whether any reply is sent.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Post {
    /// Primary key.
    pub id: Uuid,
    /// The media id payloads name it by; unique per integration.
    pub external_id: String,
    /// The integration whose account published it.
    pub integration_id: Uuid,
    /// The persona that answers it, ahead of the event's and the integration's default;
    /// `None` when it has none.
    pub persona_id: Option<Uuid>,
    /// Its caption, the template's `{post_caption}`; may be empty.
    pub caption: String,
    /// Off: its comments are `skipped` as `replies_disabled`.
    pub replies_enabled: bool,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------- posts

/// What creating a post takes.
pub struct NewPost {
    /// Not empty, at most [`MAX_ID_BYTES`](crate::intake::storable::MAX_ID_BYTES) bytes;
    /// unique per integration.
    pub external_id: String,
    /// An existing integration (else `UnknownReference`).
    pub integration_id: Uuid,
    /// An existing persona, or `None`.
    pub persona_id: Option<Uuid>,
    /// May be empty.
    pub caption: String,
    /// See [`Post::replies_enabled`].
    pub replies_enabled: bool,
}

/// A PATCH of a post: `None` leaves a field as it is.
#[derive(Default)]
pub struct PostPatch {
    /// New external id, checked as on create.
    pub external_id: Option<String>,
    /// Moves the post to another existing integration.
    pub integration_id: Option<Uuid>,
    /// `Some(None)` clears the persona, `Some(Some(id))` sets it.
    pub persona_id: Option<Option<Uuid>>,
    /// New caption.
    pub caption: Option<String>,
    /// Turns replies on or off.
    pub replies_enabled: Option<bool>,
}

table_reads!(list_posts, get_post, delete_post, Post, "posts");

/// Inserts a post; `Conflict` when the integration already has this external id,
/// `UnknownReference` for an unknown integration or persona.
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

/// Applies `patch` to post `id`; errors as for create, `NotFound` when there is none.
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
