//! The completer: writes outcomes back in batches. Every finished run becomes an
//! [`Settled`] on the runtime's channel, and one task turns whatever has accumulated
//! into at most three statements (archive, retry, hand back; see `sql.rs`), each built
//! on `unnest` arrays and matched on the run's claim, so a stale run never touches a job
//! claimed again since.
//!
//! A failed write is retried (with backoff) until it succeeds or the process stops:
//! until then the jobs stay leased by us, and the lease extender keeps them so. Writes
//! go through [`Runtime::write_held`], never beside a lease renewal.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    error::QueueError,
    job::JobId,
    runtime::{Runtime, Settled},
    sql::{self, Finished, Retried},
};

/// A type-erased hand-back hook: `(job id, payload as stored)`.
pub(crate) type ReleaseHook =
    Arc<dyn Fn(JobId, serde_json::Value) -> BoxFuture<'static, ()> + Send + Sync>;

/// The most outcomes written by one round of statements.
const MAX_BATCH: usize = 4096;

/// Writes one runtime's outcomes.
pub(crate) struct Completer {
    pub(crate) rt: Arc<Runtime>,
    /// Called once a stopping worker has handed a run of their task back.
    pub(crate) release_hooks: HashMap<&'static str, ReleaseHook>,
}

/// What a written batch means for the rest of the runtime.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Some job went dead: its hook has work.
    pub(crate) dead: bool,
    /// The soonest retry scheduled.
    pub(crate) next_retry: Option<Duration>,
}

impl Completer {
    /// Drains `rx` until `done` fires and the channel is empty.
    pub(crate) async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Settled>,
        done: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(64);
        loop {
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    received = rx.recv() => match received {
                        Some(outcome) => batch.push(outcome),
                        None => return,
                    },
                    () = done.cancelled() => {
                        while let Ok(outcome) = rx.try_recv() {
                            batch.push(outcome);
                        }
                        if batch.is_empty() {
                            return;
                        }
                    }
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(outcome) => batch.push(outcome),
                    Err(_) => break,
                }
            }
            let mut failures = 0u32;
            loop {
                match self.write(&batch).await {
                    Ok(written) => {
                        if let Some(delay) = written.next_retry {
                            // Look for the retry when it is due rather than at the next poll.
                            let rt = self.rt.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                rt.wake.notify_one();
                            });
                        }
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, outcomes = batch.len(), "writing job outcomes failed; retrying");
                        let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            // At shutdown give up after a few tries: leases expire and the
                            // sweep recovers the jobs.
                            () = done.cancelled(), if failures >= 3 => {
                                tracing::warn!(outcomes = batch.len(), "dropping unwritten outcomes at shutdown; leases will expire");
                                break;
                            }
                        }
                    }
                }
            }
            self.rt.release_leases(batch.drain(..).map(|o| o.key()));
        }
    }

    /// Writes `batch` once (under the runtime's row-write lock), then wakes the
    /// dead-letter dispatcher if a job went dead and runs the hand-back hooks of the
    /// jobs handed back. The leases stay held: the caller releases them.
    pub(crate) async fn write(&self, batch: &[Settled]) -> Result<Written, QueueError> {
        let rt = &self.rt;
        let (written, released) = rt.write_held(write(rt, batch)).await?;
        if written.dead {
            rt.dead_letters.notify_one();
        }
        // After the batch is written, so a hook never sees its job still leased.
        for (id, task, payload) in released {
            if let Some(hook) = self.release_hooks.get(task.as_str()) {
                hook(id, payload).await;
            }
        }
        Ok(written)
    }
}

async fn write(
    rt: &Runtime,
    batch: &[Settled],
) -> Result<(Written, Vec<(JobId, String, serde_json::Value)>), QueueError> {
    let mut finished = Finished::default();
    let mut retried = Retried::default();
    let mut release: (Vec<JobId>, Vec<i32>) = (Vec::new(), Vec::new());
    for outcome in batch {
        match outcome {
            Settled::Completed {
                id,
                attempt,
                result,
            } => finished.push(*id, *attempt, None, result.clone()),
            Settled::Dead { id, attempt, error } => {
                finished.push(*id, *attempt, Some(error.clone()), None)
            }
            Settled::Retry {
                id,
                attempt,
                error,
                delay,
            } => {
                retried.ids.push(*id);
                retried.attempts.push(*attempt);
                retried.errors.push(error.clone());
                retried
                    .delay_ms
                    .push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            }
            Settled::Released { id, attempt } => {
                release.0.push(*id);
                release.1.push(*attempt);
            }
        }
    }
    let mut written = Written::default();
    let mut released = Vec::new();
    if !finished.ids.is_empty() {
        let dead = finished.errors.iter().any(Option::is_some);
        let moved = sql::archive(&rt.pool, &finished, &rt.worker_id, &rt.hooked).await?;
        note_stale("finished", finished.ids.len(), moved);
        written.dead = dead && moved > 0;
    }
    if !retried.ids.is_empty() {
        let updated = sql::retry(&rt.pool, &retried, &rt.worker_id).await?;
        note_stale(
            "retried",
            retried.ids.len(),
            updated.try_into().unwrap_or(i64::MAX),
        );
        written.next_retry = retried
            .delay_ms
            .iter()
            .min()
            .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    }
    if !release.0.is_empty() {
        released = sql::release(&rt.pool, &release.0, &release.1, &rt.worker_id).await?;
        note_stale(
            "handed back",
            release.0.len(),
            released.len().try_into().unwrap_or(i64::MAX),
        );
    }
    Ok((written, released))
}

/// Outcomes that matched no row belong to runs whose lease was lost (another claim
/// now owns the job): worth a warning, never an error.
fn note_stale(what: &str, sent: usize, applied: i64) {
    let sent = i64::try_from(sent).unwrap_or(i64::MAX);
    if applied < sent {
        tracing::warn!(
            stale = sent - applied,
            "{what} jobs no longer leased by this worker; outcome dropped"
        );
    }
}
