//! `posts`: a commented post, its persona and its `replies_enabled` switch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier, set};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Post {
    pub id: Uuid,
    pub external_id: String,
    pub integration_id: Uuid,
    pub persona_id: Option<Uuid>,
    pub caption: String,
    pub replies_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
