//! Read-only lookups the use case needs: users, integrations, personas with their
//! templates, posts. A trait so a per-process cache ([`CachedDirectory`]) can wrap the
//! Postgres one.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

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

/// A cached answer, or the lookup that will give it: concurrent misses of one key wait
/// for the first one's round trip instead of each making their own.
enum Slot<V> {
    Ready(V),
    Loading(Arc<Notify>),
}

/// What [`CachedDirectory`] holds, all filled under one directory version.
#[derive(Default)]
struct Cache {
    /// The highest `directory_version` observed.
    version: i64,
    /// Bumped on every clear: an answer fetched under an older generation may predate
    /// the write that cleared, so it is returned but not kept.
    generation: u64,
    users: HashMap<String, Slot<Option<User>>>,
    by_account: HashMap<(String, String), Slot<Option<Integration>>>,
    of_user: HashMap<(Uuid, String), Slot<Vec<Integration>>>,
    integrations: HashMap<Uuid, Slot<Option<Integration>>>,
    posts: HashMap<(Uuid, String), Slot<Option<Post>>>,
    posts_of_user: HashMap<(Uuid, String, String), Slot<Option<Post>>>,
    personas: HashMap<Uuid, Slot<Option<PersonaPair>>>,
    personas_by_ext: HashMap<String, Slot<Option<PersonaPair>>>,
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
///
/// One round trip per key at a time: concurrent misses of a key wait for the first
/// one's answer. A viral post's burst starts 256 runs per worker process at once on a
/// cold cache (and on every version change), which otherwise made 256 identical
/// lookups of each kind and held the pool while the quiet accounts' runs queued for it:
/// `FAIRNESS_ONLY=1 scripts/bench`, alternating, quiet p99 83–132 ms against 114–155,
/// flood 4,606–5,058 per s against 4,494–4,636.
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
    /// no clear happened meanwhile. One lookup per key at a time: a miss while another
    /// caller is already fetching that key waits for its answer (a viral post's first
    /// burst, 256 runs per process at once on a cold cache, made 256 identical round
    /// trips per lookup kind), and fetches itself only if that one failed, was dropped or
    /// was not kept.
    async fn cached<K, V, F, Fut>(
        &self,
        pick: fn(&mut Cache) -> &mut HashMap<K, Slot<V>>,
        key: K,
        fetch: F,
    ) -> Result<V>
    where
        K: Eq + Hash + Clone,
        V: Clone,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V>>,
    {
        let miss = {
            let mut cache = self.lock();
            let generation = cache.generation;
            let map = pick(&mut cache);
            match map.get(&key) {
                Some(Slot::Ready(v)) => return Ok(v.clone()),
                // Registered before the lock is released, so the loader's
                // `notify_waiters` cannot be missed.
                Some(Slot::Loading(n)) => Err(Arc::clone(n).notified_owned()),
                None => {
                    let loading = Arc::new(Notify::new());
                    keep(map, key.clone(), Slot::Loading(Arc::clone(&loading)));
                    Ok((generation, loading))
                }
            }
        };
        let (generation, loading) = match miss {
            Ok(load) => load,
            Err(waiting) => {
                waiting.await;
                return self.after_wait(pick, key, fetch).await;
            }
        };
        // Whatever happens to this fetch (an error, or this future dropped), the waiters
        // are woken and the slot does not stay `Loading`.
        let mut settle = Settle {
            dir: self,
            pick,
            key: Some(key),
            loading,
            generation,
            value: None,
        };
        let value = fetch().await?;
        settle.value = Some(value.clone());
        Ok(value)
    }

    /// A waiter's answer once the fetch it waited for has ended: that fetch's, else its
    /// own round trip (the other failed or was dropped: waiters then fetch at once, each
    /// for itself, rather than one after another), kept like any other.
    async fn after_wait<K, V, F, Fut>(
        &self,
        pick: fn(&mut Cache) -> &mut HashMap<K, Slot<V>>,
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
            let generation = cache.generation;
            if let Some(Slot::Ready(v)) = pick(&mut cache).get(&key) {
                return Ok(v.clone());
            }
            generation
        };
        let value = fetch().await?;
        let mut cache = self.lock();
        if cache.generation == generation {
            keep(pick(&mut cache), key, Slot::Ready(value.clone()));
        }
        Ok(value)
    }
}

/// Puts `slot` in `map`, first emptying a map that has reached [`MAX_ENTRIES`].
fn keep<K: Eq + Hash, V>(map: &mut HashMap<K, Slot<V>>, key: K, slot: Slot<V>) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, slot);
}

/// Ends one key's fetch (see [`CachedDirectory::cached`]): on drop, its answer replaces
/// the `Loading` slot (when one was fetched and no clear happened meanwhile), else the
/// slot is removed; then everyone waiting on it looks again.
struct Settle<'a, K: Eq + Hash, V> {
    dir: &'a CachedDirectory,
    pick: fn(&mut Cache) -> &mut HashMap<K, Slot<V>>,
    key: Option<K>,
    loading: Arc<Notify>,
    generation: u64,
    value: Option<V>,
}

impl<K: Eq + Hash, V> Drop for Settle<'_, K, V> {
    fn drop(&mut self) {
        let mut cache = self.dir.lock();
        let current = cache.generation == self.generation;
        let map = (self.pick)(&mut cache);
        if let Some(key) = self.key.take() {
            // Only this fetch's own slot: a clear may have emptied the map, and another
            // caller may have started a fetch of the key since.
            let ours =
                matches!(map.get(&key), Some(Slot::Loading(n)) if Arc::ptr_eq(n, &self.loading));
            if ours {
                match self.value.take() {
                    Some(v) if current => {
                        map.insert(key, Slot::Ready(v));
                    }
                    _ => {
                        map.remove(&key);
                    }
                }
            }
        }
        drop(cache);
        self.loading.notify_waiters();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Utc;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::error::Error;

    /// A directory whose user lookups count themselves and wait for a permit; the first
    /// `failing` of them then fail.
    struct Gated {
        calls: AtomicUsize,
        gate: Semaphore,
        failing: usize,
    }

    impl Gated {
        fn new(failing: usize) -> Arc<Self> {
            Arc::new(Gated {
                calls: AtomicUsize::new(0),
                gate: Semaphore::new(0),
                failing,
            })
        }
    }

    #[async_trait]
    impl Directory for Gated {
        async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            if call < self.failing {
                return Err(Error::Missing("lookup failed".into()));
            }
            Ok(Some(User {
                id: Uuid::nil(),
                external_id: external_id.to_owned(),
                name: "Ada".into(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            }))
        }
        async fn integration_by_account(&self, _: &str, _: &str) -> Result<Option<Integration>> {
            Ok(None)
        }
        async fn integrations_of_user(&self, _: Uuid, _: &str) -> Result<Vec<Integration>> {
            Ok(Vec::new())
        }
        async fn integration(&self, _: Uuid) -> Result<Option<Integration>> {
            Ok(None)
        }
        async fn post(&self, _: Uuid, _: &str) -> Result<Option<Post>> {
            Ok(None)
        }
        async fn post_of_user(&self, _: Uuid, _: &str, _: &str) -> Result<Option<Post>> {
            Ok(None)
        }
        async fn persona(&self, _: Uuid) -> Result<Option<PersonaPair>> {
            Ok(None)
        }
        async fn persona_by_external_id(&self, _: &str) -> Result<Option<PersonaPair>> {
            Ok(None)
        }
    }

    /// `n` lookups of user "u" spawned on this (current-thread) runtime, each run up to
    /// its first wait before this returns.
    async fn spawn_lookups(
        dir: &Arc<CachedDirectory>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<Option<User>>>> {
        let lookups = (0..n)
            .map(|_| {
                let dir = Arc::clone(dir);
                tokio::spawn(async move { dir.user_by_external_id("u").await })
            })
            .collect();
        tokio::task::yield_now().await;
        lookups
    }

    /// Every lookup answers the user.
    async fn all_find_the_user(lookups: Vec<tokio::task::JoinHandle<Result<Option<User>>>>) {
        for lookup in lookups {
            let user = lookup.await.unwrap().unwrap().expect("the user");
            assert_eq!(user.name, "Ada");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_misses_of_one_key_make_one_round_trip() {
        let inner = Gated::new(0);
        let dir = Arc::new(CachedDirectory::new(inner.clone()));
        let lookups = spawn_lookups(&dir, 8).await;
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "one fetch, seven waiting"
        );
        inner.gate.add_permits(1);
        all_find_the_user(lookups).await;
        assert!(dir.user_by_external_id("u").await.unwrap().is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "then kept");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_of_a_failed_fetch_each_fetch_at_once() {
        let inner = Gated::new(1);
        let dir = Arc::new(CachedDirectory::new(inner.clone()));
        let mut lookups = spawn_lookups(&dir, 4).await;
        inner.gate.add_permits(1);
        let first = lookups.remove(0).await.unwrap();
        assert!(first.is_err(), "the failed fetch's caller gets its error");
        tokio::task::yield_now().await;
        // Not one after another: the three waiters are all fetching before any answers.
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        inner.gate.add_permits(3);
        all_find_the_user(lookups).await;
        assert!(dir.user_by_external_id("u").await.unwrap().is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4, "an answer is kept");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_fetch_leaves_no_one_waiting() {
        let inner = Gated::new(0);
        let dir = Arc::new(CachedDirectory::new(inner.clone()));
        let mut lookups = spawn_lookups(&dir, 3).await;
        let loader = lookups.remove(0);
        loader.abort();
        assert!(loader.await.unwrap_err().is_cancelled());
        inner.gate.add_permits(2);
        all_find_the_user(lookups).await;
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_fetched_across_a_clear_is_returned_not_kept() {
        let inner = Gated::new(0);
        let dir = Arc::new(CachedDirectory::new(inner.clone()));
        let lookup = spawn_lookups(&dir, 1).await.remove(0);
        dir.observe_version(1);
        inner.gate.add_permits(2);
        assert!(lookup.await.unwrap().unwrap().is_some());
        assert!(dir.user_by_external_id("u").await.unwrap().is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "fetched again");
    }
}
