//! `users`: the people hookq answers for; each owns integrations and personas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub external_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
