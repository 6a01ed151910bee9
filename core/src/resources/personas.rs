//! `personas`: who replies (template, blocklist), owned by a user.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier, non_empty};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Persona {
    pub id: Uuid,
    pub external_id: String,
    pub user_id: Uuid,
    pub template_id: Uuid,
    pub name: String,
    pub blocklist: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
