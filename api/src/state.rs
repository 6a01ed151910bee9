//! What every handler can reach.

use std::sync::Arc;

use hookq_core::{config::Config, db::Availability};
use hookq_tasks::{intake::Ingestor, queue::Notifier};
use sqlx::PgPool;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configuration, read once at start-up.
    pub config: Arc<Config>,
    /// The database pool every route reads and writes through.
    pub pool: PgPool,
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
        AppState {
            db: Availability::watch(&pool),
            ingestor: Ingestor::new(pool.clone(), notifier, config.max_attempts),
            config: Arc::new(config),
            pool,
        }
    }
}
