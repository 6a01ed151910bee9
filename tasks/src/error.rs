//! The tasks crate's one error type.

use crate::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] hookq_core::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// True when the failure is the database's (down, restarting, out of connections):
    /// the HTTP layer answers 503 so the sender retries.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(_) | Error::Queue(_) => true,
            Error::Core(e) => matches!(e, hookq_core::Error::Database(_)),
        }
    }
}
