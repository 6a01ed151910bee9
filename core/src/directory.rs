//! Read-only lookups the use case needs: users, integrations, personas with their
//! templates, posts. A trait so a per-process cache ([`CachedDirectory`]) can wrap the
//! Postgres one.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    comment::ports::Directory,
    error::Result,
    resources::{Integration, Persona, PersonaTemplate, Post, User},
};

/// The [`Directory`] over Postgres: one query per lookup, no caching.
#[derive(Clone)]
pub struct PgDirectory {
    /// The pool the lookups read from.
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

/// Entries per lookup kind before that kind's entries are dropped (and refilled from
/// the database): bounds a worker's memory whatever the number of posts.
const MAX_ENTRIES: usize = 4096;

type PersonaPair = (Persona, PersonaTemplate);

/// What [`CachedDirectory`] holds, all filled under one directory version.
#[derive(Default)]
struct Cache {
    /// The highest `directory_version` observed.
    version: i64,
    /// Bumped on every clear: an answer fetched under an older generation may predate
    /// the write that cleared, so it is returned but not kept.
    generation: u64,
    users: HashMap<String, Option<User>>,
    by_account: HashMap<(String, String), Option<Integration>>,
    of_user: HashMap<(Uuid, String), Vec<Integration>>,
    integrations: HashMap<Uuid, Option<Integration>>,
    posts: HashMap<(Uuid, String), Option<Post>>,
    posts_of_user: HashMap<(Uuid, String, String), Option<Post>>,
    personas: HashMap<Uuid, Option<PersonaPair>>,
    personas_by_ext: HashMap<String, Option<PersonaPair>>,
}

impl Cache {
    fn clear(&mut self) {
        *self = Cache {
            version: self.version,
            generation: self.generation + 1,
            ..Cache::default()
        };
    }
}

/// A per-process cache over another [`Directory`], so a comment costs no lookup
/// round trips once its user, integration, persona and post have been seen.
///
/// Never stale past a write: every lookup result is kept under the directory version
/// the process last observed, and [`Directory::observe_version`] (called with the
/// version read by the statement that started the log) drops everything once the
/// version moves on. Misses, negative answers included, are cached too: an operator
/// who adds the missing row bumps the version.
pub struct CachedDirectory {
    inner: Arc<dyn Directory>,
    cache: Mutex<Cache>,
}

impl CachedDirectory {
    /// Wraps `inner` with an empty cache.
    pub fn new(inner: Arc<dyn Directory>) -> Self {
        CachedDirectory {
            inner,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave a map half-written in a way that
        // matters (entries are whole values): keep serving.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `key` in the map `pick` selects, else `fetch`'s, kept when
    /// no clear happened meanwhile.
    async fn cached<K, V, F, Fut>(
        &self,
        pick: fn(&mut Cache) -> &mut HashMap<K, V>,
        key: K,
        fetch: F,
    ) -> Result<V>
    where
        K: Eq + Hash,
        V: Clone,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V>>,
    {
        let generation = {
            let mut cache = self.lock();
            if let Some(v) = pick(&mut cache).get(&key) {
                return Ok(v.clone());
            }
            cache.generation
        };
        let value = fetch().await?;
        let mut cache = self.lock();
        if cache.generation == generation {
            let map = pick(&mut cache);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, value.clone());
        }
        Ok(value)
    }
}

#[async_trait]
impl Directory for CachedDirectory {
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>> {
        self.cached(
            |c| &mut c.users,
            external_id.to_owned(),
            || self.inner.user_by_external_id(external_id),
        )
        .await
    }

    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>> {
        let key = (platform.to_owned(), account_id.to_owned());
        self.cached(
            |c| &mut c.by_account,
            key,
            || self.inner.integration_by_account(platform, account_id),
        )
        .await
    }

    async fn integrations_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
    ) -> Result<Vec<Integration>> {
        self.cached(
            |c| &mut c.of_user,
            (user_id, platform.to_owned()),
            || self.inner.integrations_of_user(user_id, platform),
        )
        .await
    }

    async fn integration(&self, id: Uuid) -> Result<Option<Integration>> {
        self.cached(|c| &mut c.integrations, id, || self.inner.integration(id))
            .await
    }

    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>> {
        let key = (integration_id, external_id.to_owned());
        self.cached(
            |c| &mut c.posts,
            key,
            || self.inner.post(integration_id, external_id),
        )
        .await
    }

    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>> {
        let key = (user_id, platform.to_owned(), external_id.to_owned());
        self.cached(
            |c| &mut c.posts_of_user,
            key,
            || self.inner.post_of_user(user_id, platform, external_id),
        )
        .await
    }

    async fn persona(&self, id: Uuid) -> Result<Option<PersonaPair>> {
        self.cached(|c| &mut c.personas, id, || self.inner.persona(id))
            .await
    }

    async fn persona_by_external_id(&self, external_id: &str) -> Result<Option<PersonaPair>> {
        self.cached(
            |c| &mut c.personas_by_ext,
            external_id.to_owned(),
            || self.inner.persona_by_external_id(external_id),
        )
        .await
    }

    fn observe_version(&self, version: i64) {
        let mut cache = self.lock();
        // Versions only grow; a smaller one comes from a run that started before a
        // newer one was already observed, and the cache is at least that fresh.
        if version > cache.version {
            cache.clear();
            cache.version = version;
        }
        self.inner.observe_version(version);
    }
}
