//! What every handler can reach.

use std::sync::Arc;

use hookq_core::config::Config;
use hookq_tasks::ingest::Ingestor;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub ingestor: Ingestor,
}
