//! The worker's log store: run starts are group-written (see [`crate::batch`]); the
//! rarer transitions (fail, dead letter, non-reply finishes) are [`PgLogStore`]'s own
//! one-row statements.
//!
//! Every job's run begins with a start, so under load dozens of them are in flight at
//! once; measured on the benchmark's two cores, one-row starts spent most of their time
//! waiting for buffer locks on the table's newest pages and index leaves, and made up
//! two thirds of Postgres' time end to end.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use hookq_core::{
    comment::ports::{LogStore, Started},
    error::Result,
    logs::{self, Outcome, PgLogStore, SkipReason},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::batch::{ExpressLane, GroupWriter};

/// Rows per statement at most.
const MAX_BATCH: usize = 256;
/// Rows per statement at most in the express lane (runs whose group has nothing else
/// running here: [`crate::batch`]'s lanes).
const EXPRESS_BATCH: usize = 32;
/// Statements at once: one fills while another runs.
const IN_FLIGHT: usize = 2;

/// The worker's [`LogStore`]: starts group-written, up to 256 per statement; every other
/// transition one row at a time through [`PgLogStore`].
pub struct GroupedLogStore {
    inner: PgLogStore,
    starts: GroupWriter<(i64, u32), Option<Started>>,
}

impl GroupedLogStore {
    /// Starts the start writer on the current Tokio runtime; its express lane writes
    /// through `express`.
    pub fn spawn(pool: PgPool, express: &ExpressLane) -> Self {
        let inner = PgLogStore { pool: pool.clone() };
        let starts = express.writer(
            pool,
            MAX_BATCH,
            IN_FLIGHT,
            EXPRESS_BATCH,
            |pool, batch| async move { start_batch(&pool, batch).await },
        );
        GroupedLogStore { inner, starts }
    }
}

/// One statement per round of distinct logs: two runs of one log in a batch (a re-run
/// racing a late one) start one after the other, as they would alone.
async fn start_batch(
    pool: &PgPool,
    batch: Vec<(i64, u32)>,
) -> std::result::Result<Vec<Option<Started>>, sqlx::Error> {
    let mut answers: Vec<Option<Started>> = vec![None; batch.len()];
    let mut left: Vec<usize> = (0..batch.len()).collect();
    while !left.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) =
            left.into_iter().partition(|&i| seen.insert(batch[i].0));
        let ids: Vec<i64> = round.iter().map(|&i| batch[i].0).collect();
        let attempts: Vec<u32> = round.iter().map(|&i| batch[i].1).collect();
        let mut started: HashMap<i64, Started> = logs::transitions::start(pool, &ids, &attempts)
            .await?
            .into_iter()
            .map(|s| (s.log.id, s))
            .collect();
        for &i in &round {
            answers[i] = started.remove(&batch[i].0);
        }
        left = later;
    }
    Ok(answers)
}

#[async_trait::async_trait]
impl LogStore for GroupedLogStore {
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<Started>> {
        let started = self.starts.write((id, attempt)).await?;
        // The run's span (the caller's) joins the trace of the request that stored the
        // log, before the run makes any child span.
        if let Some(s) = &started {
            crate::telemetry::continue_in(
                &tracing::Span::current(),
                s.log.correlation_id.as_deref(),
                None,
            );
        }
        Ok(started)
    }

    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        integration_id: Option<Uuid>,
    ) -> Result<bool> {
        self.inner.finish(id, outcome, skip, integration_id).await
    }

    async fn fail(&self, id: i64, error: &str, next_retry_at: DateTime<Utc>) -> Result<bool> {
        self.inner.fail(id, error, next_retry_at).await
    }

    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool> {
        self.inner.dead_letter(id, error).await
    }
}
