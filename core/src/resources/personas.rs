//! `personas`: who replies (template, blocklist), owned by a user.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, identifier, non_empty};
use crate::error::{Error, Result};

/// Who replies (`personas`): a name, a template to speak with, words never to answer.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Persona {
    /// Primary key, the id posts and integrations reference.
    pub id: Uuid,
    /// The id payloads name the persona by (the compact shape's `persona_id`); unique.
    pub external_id: String,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// The [`PersonaTemplate`](super::PersonaTemplate) it speaks with (a template in use
    /// cannot be deleted).
    pub template_id: Uuid,
    /// Its name, the template's `{persona_name}`.
    pub name: String,
    /// Words (or phrases) whose presence skips the event as `blocklisted`, matched
    /// case-insensitively as whole words.
    pub blocklist: Vec<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

// ------------------------------------------------------------------------- personas

/// What creating a persona takes.
pub struct NewPersona {
    /// Unique, not empty, at most [`MAX_ID_BYTES`](crate::intake::storable::MAX_ID_BYTES)
    /// bytes.
    pub external_id: String,
    /// An existing user (else `UnknownReference`).
    pub user_id: Uuid,
    /// An existing template (else `UnknownReference`).
    pub template_id: Uuid,
    /// Not empty.
    pub name: String,
    /// See [`Persona::blocklist`]; may be empty.
    pub blocklist: Vec<String>,
}

/// A PATCH of a persona: `None` leaves a field as it is.
#[derive(Default)]
pub struct PersonaPatch {
    /// New external id, checked as on create.
    pub external_id: Option<String>,
    /// Moves the persona to another existing user.
    pub user_id: Option<Uuid>,
    /// Another existing template.
    pub template_id: Option<Uuid>,
    /// New name.
    pub name: Option<String>,
    /// Replaces the whole blocklist.
    pub blocklist: Option<Vec<String>>,
}

table_reads!(
    list_personas,
    get_persona,
    delete_persona,
    Persona,
    "personas"
);

/// Inserts a persona; `Conflict` when the external id is taken, `UnknownReference` for an
/// unknown user or template, `Invalid` for an empty name or a bad external id.
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

/// Applies `patch` to persona `id`; errors as for create, `NotFound` when there is none.
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
