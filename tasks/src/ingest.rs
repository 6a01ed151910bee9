//! The enqueue seam: parsed events become `webhook_logs` rows and their jobs in ONE
//! transaction, so an acknowledged event always has a job and a rolled-back one has
//! neither.

use hookq_core::{events::ParsedEvent, logs};
use sqlx::PgPool;

use crate::{
    error::Error,
    jobs::ProcessWebhook,
    queue::{self, EnqueueOptions, Notifier},
};

/// What the webhook sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub accepted: usize,
    pub duplicates: usize,
    /// Log ids, new and already known, in payload order.
    pub ids: Vec<i64>,
}

#[derive(Clone)]
pub struct Ingestor {
    pool: PgPool,
    notifier: Notifier,
}

impl Ingestor {
    pub fn new(pool: PgPool, notifier: Notifier) -> Self {
        Ingestor { pool, notifier }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores the events and enqueues a job per new one; returns after the commit.
    pub async fn ingest(
        &self,
        events: &[ParsedEvent],
        correlation_id: Option<&str>,
    ) -> Result<Ingested, Error> {
        let mut tx = self.pool.begin().await?;
        let stored = logs::insert_events(&mut tx, events, correlation_id).await?;
        let new_ids: Vec<i64> = stored.iter().filter(|s| s.new).map(|s| s.id).collect();
        if !new_ids.is_empty() {
            let jobs: Vec<ProcessWebhook> = new_ids
                .iter()
                .map(|&log_id| ProcessWebhook { log_id })
                .collect();
            let job_ids = queue::enqueue_many(&mut tx, &jobs, &EnqueueOptions::default()).await?;
            logs::set_job_ids(&mut tx, &new_ids, &job_ids).await?;
        }
        tx.commit().await?;
        if !new_ids.is_empty() {
            self.notifier.kick();
        }
        Ok(Ingested {
            accepted: new_ids.len(),
            duplicates: stored.len() - new_ids.len(),
            ids: stored.iter().map(|s| s.id).collect(),
        })
    }
}
