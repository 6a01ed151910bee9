//! [`QueueError`]: everything that can go wrong in the queue module.

/// Everything that can go wrong in the queue module.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A queue statement failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A job's payload did not serialise to JSON.
    #[error("cannot encode a {task} job: {source}")]
    Encode {
        /// The job type's [`Job::NAME`](super::Job::NAME).
        task: &'static str,
        /// serde's error.
        source: serde_json::Error,
    },
    /// A [`JobsForRows`](super::JobsForRows) payload is not the row id written out, so it
    /// cannot be built inside the row's statement.
    #[error(
        "a {task} payload is not its row id written out; it cannot be built in the row's statement"
    )]
    RowTemplate {
        /// The job type's [`Job::NAME`](super::Job::NAME).
        task: &'static str,
    },
    /// `unique_key` was set on a batch enqueue, which does not support it.
    #[error("unique_key applies to one job; enqueue_many cannot take it")]
    UniqueKeyInBatch,
    /// The live job holding this unique key finished between the insert that found it and
    /// the read of its id; enqueueing again succeeds.
    #[error("job with unique key {0:?} was finished while being enqueued again; retry")]
    UniqueKeyRace(String),
    /// A periodic job's cron schedule does not parse.
    #[error("invalid schedule {schedule:?} for periodic job {name}: {reason}")]
    Schedule {
        /// The periodic job's name.
        name: String,
        /// The schedule as given.
        schedule: String,
        /// Why it was refused.
        reason: String,
    },
    /// The worker runtime (apalis) stopped with an error.
    #[error("worker runtime failed: {0}")]
    Worker(String),
}
