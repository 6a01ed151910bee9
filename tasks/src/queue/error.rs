//! [`QueueError`]: everything that can go wrong in the queue module.

/// Everything that can go wrong in the queue module.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot encode a {task} job: {source}")]
    Encode {
        task: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "a {task} payload is not its row id written out; it cannot be built in the row's statement"
    )]
    RowTemplate { task: &'static str },
    #[error("unique_key applies to one job; enqueue_many cannot take it")]
    UniqueKeyInBatch,
    #[error("job with unique key {0:?} was finished while being enqueued again; retry")]
    UniqueKeyRace(String),
    #[error("invalid schedule {schedule:?} for periodic job {name}: {reason}")]
    Schedule {
        name: String,
        schedule: String,
        reason: String,
    },
    #[error("worker runtime failed: {0}")]
    Worker(String),
}
