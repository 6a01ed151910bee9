//! Demo data for `hookq dev`: makes the contract's compact sample, and Meta's comment
//! samples, get a reply. Idempotent: loading twice changes nothing.

use sqlx::PgPool;
use uuid::Uuid;

use hookq_core::error::Result;

/// Meta's sample account id (`entry[].id` in the Instagram fixtures).
pub const DEMO_IG_ACCOUNT: &str = "17841405726653026";

/// The ids of the demo rows [`load`] made or found.
pub struct Demo {
    /// The demo user (`external_id` `user_123`).
    pub user_id: Uuid,
    /// The demo Instagram integration on [`DEMO_IG_ACCOUNT`] (`reply_delivery` `none`).
    pub integration_id: Uuid,
    /// The demo persona (`external_id` `persona_123`), the integration's default.
    pub persona_id: Uuid,
}

/// Loads the demo user, template, persona, integration and post (`post_123`) in one
/// transaction, keeping rows that already exist.
pub async fn load(pool: &PgPool) -> Result<Demo> {
    let mut tx = pool.begin().await?;
    let user_id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (external_id, name) VALUES ('user_123', 'Demo User')
         ON CONFLICT (external_id) DO UPDATE SET name = users.name RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await?;
    let template_id: Uuid = match sqlx::query_scalar("SELECT id FROM persona_templates WHERE name = 'Friendly demo'")
        .fetch_optional(&mut *tx)
        .await?
    {
        Some(id) => id,
        None => {
            sqlx::query_scalar(
                "INSERT INTO persona_templates (name, reply_template, system_prompt)
                 VALUES ('Friendly demo', 'Hi {sender_name}, thanks for your comment! We will get back to you soon. — {persona_name}',
                         'You are a friendly community manager. Answer briefly and warmly.')
                 RETURNING id",
            )
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let persona_id: Uuid = sqlx::query_scalar(
        "INSERT INTO personas (external_id, user_id, template_id, name, blocklist)
         VALUES ('persona_123', $1, $2, 'Ava from Acme', ARRAY['scam', 'idiot'])
         ON CONFLICT (external_id) DO UPDATE SET name = personas.name RETURNING id",
    )
    .bind(user_id)
    .bind(template_id)
    .fetch_one(&mut *tx)
    .await?;
    let integration_id: Uuid = sqlx::query_scalar(
        "INSERT INTO integrations (user_id, platform, account_id, reply_delivery, default_persona_id)
         VALUES ($1, 'instagram', $2, 'none', $3)
         ON CONFLICT (platform, account_id) DO UPDATE SET account_id = integrations.account_id RETURNING id",
    )
    .bind(user_id)
    .bind(DEMO_IG_ACCOUNT)
    .bind(persona_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO posts (external_id, integration_id, persona_id, caption, replies_enabled)
         VALUES ('post_123', $1, $2, 'Our new spring jacket', true)
         ON CONFLICT (integration_id, external_id) DO NOTHING",
    )
    .bind(integration_id)
    .bind(persona_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Demo {
        user_id,
        integration_id,
        persona_id,
    })
}
