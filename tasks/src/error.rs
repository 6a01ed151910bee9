//! The tasks crate's one error type.

use std::sync::Arc;

use crate::queue::QueueError;

/// Everything the worker side (ingest, pipeline, operator tools) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain's error (a use case step, a repository).
    #[error(transparent)]
    Core(#[from] hookq_core::Error),
    /// The job queue failed (enqueue, claim, complete).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A statement of this crate's own failed.
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
