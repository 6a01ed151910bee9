//! What every handler can reach, and which pool a read goes to.
//!
//! With `DATABASE_READ_URL` (contract section 11) the API's reads — admin lists and
//! single rows, stats, the dashboard's data, the `/metrics` gauges — go to that replica
//! through [`AppState::reads`]; writes, the webhook intake and the queue stay on
//! `DATABASE_URL`. A read just after an operator's own write goes to the primary, so an
//! operator never misses what they just did behind the replica's lag: for
//! [`READ_YOUR_WRITES`] after any change made through this process, and, across API
//! hosts, while the `hookq_wrote` cookie that every change answers with is fresh
//! (`reads_after_writes` in `lib.rs` decides per request).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use hookq_core::{config::Config, db::Availability};
use hookq_tasks::{intake::Ingestor, queue::Notifier};
use sqlx::PgPool;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configuration, read once at start-up.
    pub config: Arc<Config>,
    /// The database pool every route writes through (the primary).
    pub pool: PgPool,
    /// The pool reads may use: `DATABASE_READ_URL`'s, else the same as `pool`.
    pub read_pool: PgPool,
    /// When this process last made an operator's change (ms since the epoch).
    last_write_ms: Arc<AtomicI64>,
    /// Stores webhook events and enqueues their jobs, batching concurrent requests.
    pub ingestor: Ingestor,
    /// Whether the database is known to be down: routes that need it answer `503` at
    /// once while it is (see [`Availability`]).
    pub db: Arc<Availability>,
}

impl AppState {
    /// The API's state over `pool`, everything derived from `config` in one place (the
    /// ingest's jobs get `HOOKQ_MAX_ATTEMPTS` runs, as every other job does).
    pub fn new(config: Config, pool: PgPool) -> Self {
        let notifier = Notifier::spawn(pool.clone());
        let read_pool = match config.database_read.as_ref().map(|d| d.connect_options()) {
            Some(Ok(opts)) => hookq_core::db::connect_lazy(
                config.wakeup.connect_options(opts),
                pool.options().get_max_connections(),
            ),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "DATABASE_READ_URL unusable: reading from DATABASE_URL");
                pool.clone()
            }
            None => pool.clone(),
        };
        AppState {
            db: Availability::watch(&pool),
            ingestor: Ingestor::new(pool.clone(), notifier, config.max_attempts),
            config: Arc::new(config),
            pool,
            read_pool,
            last_write_ms: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// The pool for a read: the replica, unless this request must see the primary
    /// (a change of its own was made a moment ago).
    pub fn reads(&self) -> &PgPool {
        let own_write = READ_PRIMARY.try_with(|p| *p).unwrap_or(false);
        if own_write || self.wrote_within(READ_YOUR_WRITES) {
            &self.pool
        } else {
            &self.read_pool
        }
    }

    /// Notes that an operator's change was made through this process now.
    pub fn note_write(&self) {
        self.last_write_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn wrote_within(&self, window: Duration) -> bool {
        let last = self.last_write_ms.load(Ordering::Relaxed);
        last != i64::MIN && now_ms() - last < window.as_millis() as i64
    }
}

/// How long after an operator's change their reads go to the primary.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Set for a request that carries a fresh `hookq_wrote` cookie.
    pub static READ_PRIMARY: bool;
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The cookie that marks a client's own recent change.
const WROTE_COOKIE: &str = "hookq_wrote";

/// Middleware: a request carrying a fresh [`WROTE_COOKIE`] reads from the primary; a
/// change under `/api/` that succeeded notes the write in this process and answers with
/// the cookie (good for [`READ_YOUR_WRITES`], on whichever API host the next request
/// lands).
pub async fn reads_after_writes<E: poem::Endpoint>(
    next: E,
    req: poem::Request,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    // Only the operator's routes read through `reads()`: webhooks pass untouched.
    let path = req.uri().path();
    if !(path.starts_with("/api/") || path.starts_with("/dashboard") || path == "/metrics") {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let fresh = req
        .headers()
        .get_all(poem::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == WROTE_COOKIE)
        .filter_map(|(_, v)| v.parse::<i64>().ok())
        .any(|at| (0..READ_YOUR_WRITES.as_millis() as i64).contains(&(now_ms() - at)));
    let changing = req.uri().path().starts_with("/api/") && !crate::auth::reads_only(req.method());
    let state = changing.then(|| req.data::<AppState>().cloned()).flatten();
    let mut out = READ_PRIMARY
        .scope(fresh, next.call(req))
        .await
        .map(IntoResponse::into_response);
    if let (Some(state), Ok(resp)) = (state, &mut out)
        && resp.status().is_success()
    {
        state.note_write();
        let cookie = format!(
            "{WROTE_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
            now_ms(),
            READ_YOUR_WRITES.as_secs()
        );
        if let Ok(v) = poem::http::HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(poem::http::header::SET_COOKIE, v);
        }
    }
    out
}
