//! `users`: the people hookq answers for; each owns integrations and personas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier};
use crate::error::{Error, Result};

/// A person hookq answers for (`users`); owns integrations and personas.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// Primary key, the id the admin API answers with and other resources reference.
    pub id: Uuid,
    /// The id payloads name the user by (the compact shape's `user_id`); unique.
    pub external_id: String,
    /// Display name; may be empty.
    pub name: String,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------- users

/// What creating a user takes.
pub struct NewUser {
    /// Unique, not empty, at most [`MAX_ID_BYTES`](crate::intake::storable::MAX_ID_BYTES)
    /// bytes.
    pub external_id: String,
    /// Display name; may be empty.
    pub name: String,
}

/// A PATCH of a user: `None` leaves a field as it is.
#[derive(Default)]
pub struct UserPatch {
    /// New external id, checked as on create.
    pub external_id: Option<String>,
    /// New display name.
    pub name: Option<String>,
}

table_reads!(list_users, get_user, delete_user, User, "users");

/// Inserts a user; `Conflict` when the external id is taken, `Invalid` when it is empty
/// or too long.
pub async fn create_user(pool: &PgPool, new: &NewUser) -> Result<User> {
    identifier("external_id", &new.external_id)?;
    sqlx::query_as("INSERT INTO users (external_id, name) VALUES ($1, $2) RETURNING *")
        .bind(&new.external_id)
        .bind(&new.name)
        .fetch_one(pool)
        .await
        .map_err(|e| db_error(e, false))
}

/// Applies `patch` to user `id`; `NotFound`, `Conflict` or `Invalid` as for create.
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
