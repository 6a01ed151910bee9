//! The tasks crate's one error type.

use std::sync::Arc;

use crate::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] hookq_core::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// One failure answered to several callers: every request of a failed ingest batch
    /// gets the batch's error.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// The ingest writer task is gone (the runtime is shutting down): nothing was stored.
    #[error("the ingest writer has stopped")]
    IngestStopped,
}

impl Error {
    /// True when the failure is the database's (down, restarting, out of connections):
    /// the HTTP layer answers 503 so the sender retries.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(_) | Error::Queue(_) | Error::IngestStopped => true,
            Error::Core(e) => matches!(e, hookq_core::Error::Database(_)),
            Error::Shared(e) => e.is_unavailable(),
        }
    }
}
