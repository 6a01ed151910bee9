//! The enqueue seam: parsed events become `webhook_logs` rows and their jobs in ONE
//! transaction, so an acknowledged event always has a job and a rolled-back one has
//! neither.
//!
//! Requests do not write themselves: they hand their events to a batching writer
//! ([`writer`]) that commits the logs and jobs of many concurrent requests in one
//! statement (group commit). A commit with `synchronous_commit = on` costs a WAL flush
//! whatever its size, so sharing it is what lets intake scale past one fsync per
//! request; each request is still answered only after the commit that holds its events.

mod writer;

use std::time::Duration;

use hookq_core::{events::ParsedEvent, logs::NewLog};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::{error::Error, queue::Notifier};

/// What the webhook sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub accepted: usize,
    pub duplicates: usize,
    /// Log ids, new and already known, in payload order.
    pub ids: Vec<i64>,
}

/// How the batching writer groups requests.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// A batch is flushed once it holds this many events (a single request larger than
    /// this is flushed alone).
    pub max_batch_events: usize,
    /// While another batch is being committed, a new one waits up to this long for more
    /// requests before it is flushed. An idle writer flushes at once, so a lone request
    /// never waits for company.
    pub linger: Duration,
    /// Batches committed concurrently (each on its own connection), so that one batch
    /// fills while another waits for its WAL flush.
    pub max_in_flight: usize,
    /// Requests waiting for the writer before callers are held back.
    pub queue_capacity: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_batch_events: 512,
            linger: Duration::from_millis(1),
            max_in_flight: 2,
            queue_capacity: 8192,
        }
    }
}

/// Cheap to clone: every clone feeds the same writer, which stops once the last clone
/// is dropped.
#[derive(Clone)]
pub struct Ingestor {
    pool: PgPool,
    requests: mpsc::Sender<writer::Request>,
}

impl Ingestor {
    /// Starts the batching writer on the current Tokio runtime with default options.
    pub fn new(pool: PgPool, notifier: Notifier) -> Self {
        Self::with_options(pool, notifier, IngestOptions::default())
    }

    pub fn with_options(pool: PgPool, notifier: Notifier, opts: IngestOptions) -> Self {
        let (requests, rx) = mpsc::channel(opts.queue_capacity.max(1));
        tokio::spawn(writer::run(rx, pool.clone(), notifier, opts));
        Ingestor { pool, requests }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores the events and enqueues a job per new one; returns after the commit.
    ///
    /// Semantics are those of one transaction per call, whatever batch the call shares:
    /// a dedup key already stored, repeated earlier in `events`, or stored by a call
    /// ahead of this one in the same batch is a duplicate (its existing id is answered,
    /// nothing is enqueued). A failed batch fails every call in it, and nothing of it is
    /// stored.
    pub async fn ingest(
        &self,
        events: &[ParsedEvent],
        correlation_id: Option<&str>,
    ) -> Result<Ingested, Error> {
        if events.is_empty() {
            return Ok(Ingested {
                accepted: 0,
                duplicates: 0,
                ids: Vec::new(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let request = writer::Request {
            logs: events.iter().map(NewLog::from_event).collect(),
            correlation_id: correlation_id.map(str::to_owned),
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::IngestStopped)?;
        // A dropped reply means the writer died mid-batch: the batch's fate is unknown
        // to us, so the sender is told to retry (a retry of a stored event is a duplicate).
        answer.await.map_err(|_| Error::IngestStopped)?
    }
}
