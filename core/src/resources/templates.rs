//! `persona_templates`: the reply template (and LLM system prompt) a persona speaks with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, non_empty, set};
use crate::error::{Error, Result};

/// What a persona speaks with (`persona_templates`): the template rendered into a reply,
/// and the LLM's instructions.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct PersonaTemplate {
    /// Primary key, the id personas reference (`template_id`).
    pub id: Uuid,
    /// The operator's name for it.
    pub name: String,
    /// The reply, with placeholders `{sender_name}`, `{message}`, `{persona_name}` and
    /// `{post_caption}`; rendered when no LLM is configured.
    pub reply_template: String,
    /// The LLM system message when `REPLY_LLM_URL` is set; `None` (or blank) uses a
    /// built-in default.
    pub system_prompt: Option<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------- persona templates

/// What creating a template takes.
pub struct NewTemplate {
    /// Not empty.
    pub name: String,
    /// Not empty (see [`PersonaTemplate::reply_template`]).
    pub reply_template: String,
    /// See [`PersonaTemplate::system_prompt`].
    pub system_prompt: Option<String>,
}

/// A PATCH of a template: `None` leaves a field as it is.
#[derive(Default)]
pub struct TemplatePatch {
    /// New name.
    pub name: Option<String>,
    /// New reply template; not empty.
    pub reply_template: Option<String>,
    /// `Some(None)` clears the system prompt, `Some(Some(p))` sets it.
    pub system_prompt: Option<Option<String>>,
}

table_reads!(
    list_templates,
    get_template,
    delete_template,
    PersonaTemplate,
    "persona_templates"
);

/// Inserts a template; `Invalid` when the name or the reply template is empty.
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

/// Applies `patch` to template `id`; `NotFound` when there is none.
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
