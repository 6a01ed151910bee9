//! The process's single fetcher and its helpers: claiming batches sized to free slots,
//! the LISTEN task that wakes it, the lease extender and the sweep of expired leases.
//!
//! All of them outlive database outages: each failed round trip is logged and retried
//! after a pause, and none of them ever ends the worker.

use std::{sync::Arc, time::Duration};

use apalis_core::task::{Task, builder::TaskBuilder, task_id::TaskId};
use serde_json::value::RawValue;
use sqlx::{postgres::PgListener, types::Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    JobId, NOTIFY_CHANNEL, QueueError,
    completer::Outcome,
    handler::{ClaimedJob, JobContext},
    worker::Runtime,
};

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: JobId,
    task_name: String,
    payload: Json<Box<RawValue>>,
    attempts: i32,
    max_attempts: i32,
}

/// Pause after the `failures`-th consecutive database error: grows to 5 s, so a
/// restart is noticed within seconds without hammering a server that is coming up.
fn pause_after(failures: u32) -> Duration {
    Duration::from_millis(200 * u64::from(failures.clamp(1, 25)))
}

/// The longest a claim waits for more slots to free up while other jobs run.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// Free slots worth a claim of their own while other jobs still run.
fn claim_threshold(concurrency: usize) -> usize {
    (concurrency / 4).max(1)
}

/// Claims jobs while there are free slots and ready jobs, hands them to the apalis
/// backend through `tx`, and otherwise waits for a NOTIFY, a finished job or the poll
/// interval. Stops between claims (never during one, which could strand claimed rows)
/// once `stop` fires.
pub(crate) async fn run(
    rt: Arc<Runtime>,
    tx: mpsc::UnboundedSender<Task<ClaimedJob>>,
    stop: CancellationToken,
) {
    let names = rt.table.names();
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let free = rt.free_slots();
        if free == 0 {
            tokio::select! {
                () = rt.slot_freed.notified() => {}
                () = stop.cancelled() => return,
            }
            continue;
        }
        // While other jobs run, let a few slots free up before claiming, so a stream of
        // short jobs costs one claim per batch rather than one per job. An idle worker
        // (every slot free) claims at once, and the wait is bounded.
        let threshold = claim_threshold(rt.opts.concurrency);
        if free < threshold {
            let deadline = tokio::time::Instant::now() + BATCH_WAIT;
            while rt.free_slots() < threshold {
                tokio::select! {
                    () = rt.slot_freed.notified() => {}
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => return,
                }
            }
        }
        let free = rt.free_slots();
        match claim(&rt, &names, free).await {
            Ok(jobs) => {
                failures = 0;
                let got = jobs.len();
                for job in jobs {
                    if tx.send(job).is_err() {
                        return;
                    }
                }
                if got == free {
                    // A full batch: more are likely ready, claim again as slots free up.
                    continue;
                }
                tokio::select! {
                    () = rt.wake.notified() => {}
                    () = tokio::time::sleep(rt.opts.poll_interval) => {}
                    () = stop.cancelled() => return,
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "claiming jobs failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause_after(failures)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// One claim round trip: up to `limit` ready jobs, leased to this worker.
async fn claim(
    rt: &Runtime,
    names: &[String],
    limit: usize,
) -> Result<Vec<Task<ClaimedJob>>, QueueError> {
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        // `id = ANY(ARRAY(...))` keeps the update on primary-key lookups: a join against
        // the picked ids lets the planner choose a scan of the whole table.
        "UPDATE queue_jobs j
        SET status = 'running', attempts = j.attempts + 1, locked_by = $3,
            lease_expires_at = now() + $4 * interval '1 millisecond', started_at = now()
        WHERE j.id = ANY(ARRAY(
            SELECT id FROM queue_jobs
            WHERE status = 'pending' AND run_at <= now() AND task_name = ANY($1)
            ORDER BY priority DESC, run_at, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING j.id, j.task_name, j.payload, j.attempts, j.max_attempts",
    )
    .bind(names)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(&rt.worker_id)
    .bind(rt.lease_ms())
    .fetch_all(&rt.pool)
    .await?;
    rt.hold(rows.iter().map(|r| (r.id, r.attempts)));
    let mut tasks = Vec::with_capacity(rows.len());
    for row in rows {
        // The claim filtered on registered names, so the lookup cannot miss; if it
        // did, the job goes back untouched rather than leaking a slot.
        let Some(task_name) = rt.table.name(&row.task_name) else {
            rt.finish(Outcome::Released {
                id: row.id,
                attempt: row.attempts,
            });
            continue;
        };
        let planned_retry_delay =
            (row.attempts < row.max_attempts).then(|| rt.backoff.delay(row.attempts));
        let ctx = JobContext {
            job_id: row.id,
            task_name,
            attempt: row.attempts,
            max_attempts: row.max_attempts,
            planned_retry_delay,
        };
        let job = ClaimedJob {
            ctx,
            payload: row.payload.0,
        };
        tasks.push(
            TaskBuilder::new(job)
                .task_id(TaskId::from_int(row.id.unsigned_abs()))
                // apalis counts the attempt up when the run starts
                .attempt(row.attempts.saturating_sub(1).unsigned_abs() as usize)
                .max_attempts(row.max_attempts.unsigned_abs() as usize)
                .build(),
        );
    }
    Ok(tasks)
}

/// Keeps one LISTEN connection open and turns notifications into fetcher wake-ups. A
/// dropped connection (database restart) is re-established, and the fetcher is woken
/// each time in case a notification was lost meanwhile.
pub(crate) async fn listen(rt: Arc<Runtime>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let mut listener = match connect_listener(&rt).await {
            Ok(listener) => {
                failures = 0;
                listener
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause_after(failures)) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        rt.wake.notify_one();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = stop.cancelled() => return,
            };
            match received {
                Ok(Some(_)) => rt.wake.notify_one(),
                // Connection lost and re-established by sqlx: notifications in between
                // are gone, so look for work now.
                Ok(None) => rt.wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect_listener(rt: &Runtime) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(&rt.pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Extends the lease of every job this process holds (claimed, running or awaiting its
/// outcome write), a third of a lease at a time, in one statement.
pub(crate) async fn extend_leases(rt: Arc<Runtime>, stop: CancellationToken) {
    let every = rt.opts.lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let (ids, attempts) = rt.held();
        if ids.is_empty() {
            continue;
        }
        let _rows = rt.row_writes.lock().await;
        let extended = sqlx::query(
            "UPDATE queue_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM unnest($1::bigint[], $2::int[]) AS h(id, attempt)
             WHERE j.id = ANY($1) AND j.id = h.id AND j.attempts = h.attempt
               AND j.status = 'running' AND j.locked_by = $4",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(rt.lease_ms())
        .bind(&rt.worker_id)
        .execute(&rt.pool)
        .await;
        match extended {
            Ok(done) if done.rows_affected() < ids.len() as u64 => {
                tracing::debug!(
                    lost = ids.len() as u64 - done.rows_affected(),
                    "some leases were already settled or lost"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "extending leases failed; retrying"),
        }
    }
}

/// Sweeps jobs whose lease expired (their worker died or lost the database for longer
/// than a lease): back to pending for another attempt, or dead if that was the last.
/// Runs at start, then every half lease.
pub(crate) async fn sweep_expired(rt: Arc<Runtime>, stop: CancellationToken) {
    let names = rt.table.names();
    let every = (rt.opts.lease / 2).max(Duration::from_millis(200));
    loop {
        match sweep_once(&rt, &names).await {
            Ok((requeued, dead)) => {
                if requeued > 0 {
                    tracing::info!(
                        requeued,
                        "re-queued jobs whose worker stopped renewing its lease"
                    );
                    rt.wake.notify_one();
                }
                if dead > 0 {
                    tracing::warn!(dead, "jobs dead after their last attempt's lease expired");
                    rt.dead_letters.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping expired leases failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn sweep_once(rt: &Runtime, names: &[String]) -> Result<(i64, i64), QueueError> {
    let error =
        "lease expired: the worker running this attempt stopped (crash, kill or lost database)";
    let counts: (i64, i64) = sqlx::query_as(
        "WITH expired AS (
            SELECT id FROM queue_jobs
            WHERE status = 'running' AND lease_expires_at < now() AND task_name = ANY($1)
            FOR UPDATE SKIP LOCKED
        ), requeued AS (
            UPDATE queue_jobs j
            SET status = 'pending', locked_by = NULL, lease_expires_at = NULL, run_at = now(),
                last_error = $2,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempts, 'error', $2::text, 'at', now()))
            FROM expired e
            WHERE j.id = e.id AND j.attempts < j.max_attempts
            RETURNING 1
        ), dead AS (
            DELETE FROM queue_jobs j USING expired e
            WHERE j.id = e.id AND j.attempts >= j.max_attempts
            RETURNING j.*
        ), archived AS (
            INSERT INTO queue_jobs_done (id, task_name, payload, status, priority, run_at, attempts,
                max_attempts, unique_key, last_error, errors, created_at, started_at, dead_letter_pending)
            SELECT id, task_name, payload, 'dead', priority, run_at, attempts, max_attempts, unique_key,
                $2, errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'error', $2::text, 'at', now())),
                created_at, started_at, task_name = ANY($3)
            FROM dead
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM archived)",
    )
    .bind(names)
    .bind(error)
    .bind(&rt.hooked)
    .fetch_one(&rt.pool)
    .await?;
    Ok(counts)
}
