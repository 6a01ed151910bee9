//! The domain's one error type, and the permanent/transient split the queue acts on.

use std::time::Duration;

/// Whether trying again can help. The queue retries `Transient` with backoff and
/// dead-letters `Permanent` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Trying again cannot help: recorded, no retry.
    Permanent,
    /// Trying again later may pass.
    Transient {
        /// How long the other side asked to be left alone (`Retry-After`); `None` leaves
        /// the delay to the caller's backoff.
        retry_after: Option<Duration>,
    },
}

/// Everything the domain can fail with; [`Error::kind`] says whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Data the event needs does not exist (unknown integration, user, persona…).
    /// Permanent until an operator adds it and retries the log.
    #[error("{0}")]
    Missing(String),
    /// The request can never succeed as made (e.g. the LLM endpoint answered 400).
    #[error("{0}")]
    Invalid(String),
    /// An admin write names a row that does not exist (answered 422).
    #[error("{0}")]
    UnknownReference(String),
    /// An admin write collides with a unique external id (answered 409).
    #[error("{0}")]
    Conflict(String),
    /// An admin read or write of an id that does not exist (answered 404).
    #[error("not found")]
    NotFound,
    /// A call to another service failed in a way that may pass (timeout, 5xx, 429).
    #[error("{message}")]
    Upstream {
        /// What failed, for the log's `error_message`.
        message: String,
        /// The service's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The database failed: transient when it was unreachable or lost a race, permanent
    /// when it refused a value ([`crate::db::classify`] decides).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Permanent or transient: the queue retries only the transient.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Upstream { retry_after, .. } => FailureKind::Transient {
                retry_after: *retry_after,
            },
            // What the database refused (a value, a duplicate, a missing row) stays
            // refused; everything else about it may pass (see `db::classify`).
            Error::Database(e) => match crate::db::classify(e) {
                crate::db::DbFailure::Refused(_)
                | crate::db::DbFailure::Constraint(_)
                | crate::db::DbFailure::Unique(_)
                | crate::db::DbFailure::ForeignKey(_) => FailureKind::Permanent,
                _ => FailureKind::Transient { retry_after: None },
            },
            Error::Missing(_)
            | Error::Invalid(_)
            | Error::UnknownReference(_)
            | Error::Conflict(_)
            | Error::NotFound => FailureKind::Permanent,
        }
    }

    /// Shorthand for `kind() == FailureKind::Permanent`.
    pub fn is_permanent(&self) -> bool {
        self.kind() == FailureKind::Permanent
    }
}

/// A result whose error is the domain's [`Error`] unless named.
pub type Result<T, E = Error> = std::result::Result<T, E>;
