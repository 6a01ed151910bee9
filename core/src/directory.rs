//! Read-only lookups the use case needs: users, integrations, personas with their
//! templates, posts. A trait so a per-process cache can wrap the Postgres one.

use async_trait::async_trait;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::Result,
    model::{Integration, Persona, PersonaTemplate, Post, User},
};

#[async_trait]
pub trait Directory: Send + Sync {
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>>;
    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>>;
    async fn integrations_of_user(&self, user_id: Uuid, platform: &str)
    -> Result<Vec<Integration>>;
    async fn integration(&self, id: Uuid) -> Result<Option<Integration>>;
    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>>;
    /// A post with this external id on any of the user's integrations for `platform`
    /// (the compact shape names the post but not the account).
    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>>;
    async fn persona(&self, id: Uuid) -> Result<Option<(Persona, PersonaTemplate)>>;
    async fn persona_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<(Persona, PersonaTemplate)>>;
}

#[derive(Clone)]
pub struct PgDirectory {
    pub pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct PersonaRow {
    #[sqlx(flatten)]
    persona: Persona,
    t_name: String,
    t_reply_template: String,
    t_system_prompt: Option<String>,
    t_created_at: chrono::DateTime<chrono::Utc>,
    t_updated_at: chrono::DateTime<chrono::Utc>,
}

impl PersonaRow {
    fn split(self) -> (Persona, PersonaTemplate) {
        let t = PersonaTemplate {
            id: self.persona.template_id,
            name: self.t_name,
            reply_template: self.t_reply_template,
            system_prompt: self.t_system_prompt,
            created_at: self.t_created_at,
            updated_at: self.t_updated_at,
        };
        (self.persona, t)
    }
}

/// A persona joined with its template; a macro so each query stays a static string.
macro_rules! persona_select {
    ($where:literal) => {
        concat!("SELECT p.*, t.name AS t_name, t.reply_template AS t_reply_template,
        t.system_prompt AS t_system_prompt, t.created_at AS t_created_at, t.updated_at AS t_updated_at
    FROM personas p JOIN persona_templates t ON t.id = p.template_id ", $where)
    };
}

#[async_trait]
impl Directory for PgDirectory {
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>> {
        Ok(
            sqlx::query_as("SELECT * FROM integrations WHERE platform = $1 AND account_id = $2")
                .bind(platform)
                .bind(account_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn integrations_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
    ) -> Result<Vec<Integration>> {
        Ok(sqlx::query_as(
            "SELECT * FROM integrations WHERE user_id = $1 AND platform = $2 ORDER BY created_at",
        )
        .bind(user_id)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn integration(&self, id: Uuid) -> Result<Option<Integration>> {
        Ok(sqlx::query_as("SELECT * FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>> {
        Ok(
            sqlx::query_as("SELECT * FROM posts WHERE integration_id = $1 AND external_id = $2")
                .bind(integration_id)
                .bind(external_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>> {
        Ok(sqlx::query_as(
            "SELECT p.* FROM posts p JOIN integrations i ON i.id = p.integration_id
             WHERE i.user_id = $1 AND i.platform = $2 AND p.external_id = $3
             ORDER BY p.created_at LIMIT 1",
        )
        .bind(user_id)
        .bind(platform)
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn persona(&self, id: Uuid) -> Result<Option<(Persona, PersonaTemplate)>> {
        let row: Option<PersonaRow> = sqlx::query_as(persona_select!("WHERE p.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PersonaRow::split))
    }

    async fn persona_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<(Persona, PersonaTemplate)>> {
        let row: Option<PersonaRow> = sqlx::query_as(persona_select!("WHERE p.external_id = $1"))
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PersonaRow::split))
    }
}
