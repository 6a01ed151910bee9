//! `persona_templates`: the reply template (and LLM system prompt) a persona speaks with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Listed, db_error, found, non_empty, set};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct PersonaTemplate {
    pub id: Uuid,
    pub name: String,
    pub reply_template: String,
    pub system_prompt: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
