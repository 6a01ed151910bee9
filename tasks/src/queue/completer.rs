//! Writing outcomes back in batches: every finished run becomes an [`Outcome`] on a
//! channel, and one task turns whatever has accumulated into at most four statements
//! (archive, retry, hand back) built on `unnest` arrays.
//!
//! Each statement also filters `j.id = ANY($1)` so the planner looks rows up by primary
//! key instead of joining the arrays against a scan of the table.
//!
//! Every statement matches on `(id, attempts, status = 'running', locked_by = us)`: a job
//! whose lease expired and was claimed again (elsewhere, or here as a newer attempt) is
//! never touched by the stale run's outcome.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{JobId, QueueError, worker::Runtime};

/// How one run of a job ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Handler succeeded: archive as completed.
    Completed {
        id: JobId,
        attempt: i32,
        result: Option<String>,
    },
    /// Transient failure with attempts left: back to pending at now + delay.
    Retry {
        id: JobId,
        attempt: i32,
        error: String,
        delay: Duration,
    },
    /// Permanent failure, last attempt, undecodable or panicked: archive as dead.
    Dead {
        id: JobId,
        attempt: i32,
        error: String,
    },
    /// Not run to the end because this worker is stopping: back to pending, the claim
    /// undone (not a failed attempt).
    Released { id: JobId, attempt: i32 },
}

impl Outcome {
    fn key(&self) -> (JobId, i32) {
        match *self {
            Outcome::Completed { id, attempt, .. }
            | Outcome::Retry { id, attempt, .. }
            | Outcome::Dead { id, attempt, .. }
            | Outcome::Released { id, attempt } => (id, attempt),
        }
    }
}

/// The most outcomes written by one round of statements.
const MAX_BATCH: usize = 4096;

/// Drains `rx` until `done` fires and the channel is empty. A failed write is retried
/// (with backoff) until it succeeds or the process stops: until then the jobs stay
/// leased by us, and the lease extender keeps them so.
pub(crate) async fn run(
    rt: Arc<Runtime>,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
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
            let written = {
                let _rows = rt.row_writes.lock().await;
                write(&rt.pool, &rt.worker_id, &rt.hooked, &batch).await
            };
            match written {
                Ok(written) => {
                    if written.dead {
                        rt.dead_letters.notify_one();
                    }
                    run_release_hooks(&rt, written.released).await;
                    if let Some(delay) = written.next_retry {
                        // Look for the retry when it is due rather than at the next poll.
                        let rt = rt.clone();
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
        rt.release_leases(batch.drain(..).map(|o| o.key()));
    }
}

/// What a written batch means for the rest of the runtime.
struct Written {
    /// Some job went dead: its hook has work.
    dead: bool,
    /// The soonest retry scheduled.
    next_retry: Option<Duration>,
    /// Jobs handed back (id, task, payload), for their hooks.
    released: Vec<(JobId, String, serde_json::Value)>,
}

async fn write(
    pool: &PgPool,
    worker_id: &str,
    hooked: &[String],
    batch: &[Outcome],
) -> Result<Written, QueueError> {
    let mut archive = Archive::default();
    let mut retry = Retry::default();
    let mut release = (Vec::new(), Vec::new());
    for outcome in batch {
        match outcome {
            Outcome::Completed {
                id,
                attempt,
                result,
            } => archive.push(*id, *attempt, None, result.clone()),
            Outcome::Dead { id, attempt, error } => {
                archive.push(*id, *attempt, Some(error.clone()), None)
            }
            Outcome::Retry {
                id,
                attempt,
                error,
                delay,
            } => {
                retry.ids.push(*id);
                retry.attempts.push(*attempt);
                retry.errors.push(error.clone());
                retry
                    .delay_ms
                    .push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            }
            Outcome::Released { id, attempt } => {
                release.0.push(*id);
                release.1.push(*attempt);
            }
        }
    }
    let mut written = Written {
        dead: false,
        next_retry: None,
        released: Vec::new(),
    };
    if !archive.ids.is_empty() {
        let dead = archive.errors.iter().any(Option::is_some);
        let moved: i64 = sqlx::query_scalar(
            "WITH done AS (
                DELETE FROM queue_jobs j
                USING unnest($1::bigint[], $2::int[], $3::text[], $4::text[]) AS d(id, attempt, error, result)
                WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $5
                RETURNING j.*, d.error AS new_error, d.result AS new_result
            ), archived AS (
                INSERT INTO queue_jobs_done (id, task_name, payload, status, priority, run_at, attempts,
                    max_attempts, unique_key, last_error, errors, result, created_at, started_at,
                    dead_letter_pending)
                SELECT id, task_name,
                    CASE WHEN new_error IS NULL THEN NULL ELSE payload END,
                    CASE WHEN new_error IS NULL THEN 'completed' ELSE 'dead' END::queue_job_status,
                    priority, run_at, attempts, max_attempts, unique_key,
                    coalesce(new_error, last_error),
                    CASE WHEN new_error IS NULL THEN errors
                         ELSE errors || jsonb_build_array(jsonb_build_object(
                             'attempt', attempts, 'error', new_error, 'at', now()))
                    END,
                    new_result::jsonb, created_at, started_at,
                    new_error IS NOT NULL AND task_name = ANY($6)
                FROM done
                RETURNING 1
            )
            SELECT count(*) FROM archived",
        )
        .bind(&archive.ids)
        .bind(&archive.attempts)
        .bind(&archive.errors)
        .bind(&archive.results)
        .bind(worker_id)
        .bind(hooked)
        .fetch_one(pool)
        .await?;
        note_stale("finished", archive.ids.len(), moved);
        written.dead = dead && moved > 0;
    }
    if !retry.ids.is_empty() {
        let updated = sqlx::query(
            "UPDATE queue_jobs j
             SET status = 'pending', locked_by = NULL, lease_expires_at = NULL,
                 run_at = now() + d.delay_ms * interval '1 millisecond',
                 last_error = d.error,
                 errors = j.errors || jsonb_build_array(jsonb_build_object(
                     'attempt', j.attempts, 'error', d.error, 'at', now()))
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[]) AS d(id, attempt, error, delay_ms)
             WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $5",
        )
        .bind(&retry.ids)
        .bind(&retry.attempts)
        .bind(&retry.errors)
        .bind(&retry.delay_ms)
        .bind(worker_id)
        .execute(pool)
        .await?
        .rows_affected();
        note_stale(
            "retried",
            retry.ids.len(),
            updated.try_into().unwrap_or(i64::MAX),
        );
        written.next_retry = retry
            .delay_ms
            .iter()
            .min()
            .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    }
    if !release.0.is_empty() {
        let released: Vec<(JobId, String, serde_json::Value)> = sqlx::query_as(
            "UPDATE queue_jobs j
             SET status = 'pending', locked_by = NULL, lease_expires_at = NULL, attempts = j.attempts - 1
             FROM unnest($1::bigint[], $2::int[]) AS d(id, attempt)
             WHERE j.id = ANY($1) AND j.id = d.id AND j.attempts = d.attempt AND j.status = 'running' AND j.locked_by = $3
             RETURNING j.id, j.task_name, j.payload",
        )
        .bind(&release.0)
        .bind(&release.1)
        .bind(worker_id)
        .fetch_all(pool)
        .await?;
        note_stale(
            "handed back",
            release.0.len(),
            released.len().try_into().unwrap_or(i64::MAX),
        );
        written.released = released;
    }
    Ok(written)
}

/// Runs the hand-back hook of each job a batch handed back (after the batch is written,
/// so a hook never sees its job still leased).
async fn run_release_hooks(rt: &Runtime, released: Vec<(JobId, String, serde_json::Value)>) {
    for (id, task, payload) in released {
        if let Some(hook) = rt.release_hooks.get(task.as_str()) {
            hook(id, payload).await;
        }
    }
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

#[derive(Default)]
struct Archive {
    ids: Vec<JobId>,
    attempts: Vec<i32>,
    errors: Vec<Option<String>>,
    results: Vec<Option<String>>,
}

impl Archive {
    fn push(&mut self, id: JobId, attempt: i32, error: Option<String>, result: Option<String>) {
        self.ids.push(id);
        self.attempts.push(attempt);
        self.errors.push(error);
        self.results.push(result);
    }
}

#[derive(Default)]
struct Retry {
    ids: Vec<JobId>,
    attempts: Vec<i32>,
    errors: Vec<String>,
    delay_ms: Vec<i64>,
}
