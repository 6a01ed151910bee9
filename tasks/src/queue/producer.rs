//! The producer: the process's single claimer. It claims batches of ready jobs sized to
//! the free slots (`FOR UPDATE SKIP LOCKED`, the attempt counted in the same
//! statement), turns each row into a [`ClaimedJob`] and hands it to the executor's
//! queue; and [`listen`] keeps the LISTEN connection whose notifications wake it.
//!
//! Both outlive database outages: each failed round trip is logged and retried after a
//! pause, and neither ever ends the worker.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::LaneLoad;

use super::{
    backoff::Backoff,
    error::QueueError,
    job::{ClaimedJob, GroupRate, JobContext},
    runtime::{Runtime, Settled},
    sql,
};

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

/// How often a producer looks again whether any group has a budget that needs strict
/// (serialised) claims: a budget set by an operator binds within this long.
const BUDGET_CHECK: Duration = Duration::from_secs(1);

/// Claims ready jobs for one runtime.
pub(crate) struct Producer {
    pub(crate) rt: Arc<Runtime>,
    /// Draws each claim's planned retry delay.
    pub(crate) backoff: Backoff,
    /// How long an idle producer waits before looking again without a NOTIFY.
    pub(crate) poll_interval: Duration,
    /// The rate limit of a group with none of its own.
    pub(crate) default_rate: Option<GroupRate>,
    /// Round-robin position and budget check, kept between claims.
    pub(crate) fair: Mutex<FairState>,
    /// Runs in progress per fair-share group: each claim's jobs enter together and get
    /// their lanes here (a run whose group has nothing else running in the process,
    /// while other groups' runs do, is express: `executor.rs`).
    pub(crate) lanes: LaneLoad,
}

/// A producer's memory of the round-robin across groups.
#[derive(Debug, Default)]
pub(crate) struct FairState {
    /// The last group served: the next claim starts after it.
    cursor: String,
    /// Whether claims must be strict, and when that was last looked up.
    strict: Option<(bool, Instant)>,
    /// From the last claim: how soon a group held by its rate limit gets room again.
    rate_wake: Option<Duration>,
}

impl Producer {
    /// Claims jobs while there are free slots and ready jobs, hands them to the executor
    /// through `tx`, and otherwise waits for a NOTIFY, a finished job or the poll
    /// interval. Stops between claims (never during one, which could strand claimed rows)
    /// once `stop` fires.
    pub(crate) async fn run(self, tx: mpsc::UnboundedSender<ClaimedJob>, stop: CancellationToken) {
        let rt = &self.rt;
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
            // While other jobs run, let a few slots free up before claiming, so a stream
            // of short jobs costs one claim per batch rather than one per job. An idle
            // worker (every slot free) claims at once, and the wait is bounded.
            let threshold = claim_threshold(rt.concurrency());
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
            match self.claim(free, None).await {
                Ok(jobs) => {
                    failures = 0;
                    let got = jobs.len();
                    for job in jobs {
                        if tx.send(job).is_err() {
                            return;
                        }
                    }
                    if got == free {
                        // A full batch: more are likely ready, claim again as slots free.
                        continue;
                    }
                    // A group held by its rate limit gets room at a known moment: look
                    // again then (plus a millisecond, so the run has left the window)
                    // rather than at the next poll.
                    let rate_wake = self.fair.lock().expect("fair state").rate_wake;
                    let wait = rate_wake
                        .map(|w| (w + Duration::from_millis(1)).min(self.poll_interval))
                        .unwrap_or(self.poll_interval);
                    tokio::select! {
                        () = rt.wake.notified() => {}
                        () = tokio::time::sleep(wait) => {}
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

    /// One claim round trip: up to `limit` jobs due by `due_by` (the database's `now()`
    /// when `None`), leased to this worker and held in the runtime.
    pub(crate) async fn claim(
        &self,
        limit: usize,
        due_by: Option<DateTime<Utc>>,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let rt = &self.rt;
        let strict = self.strict().await?;
        let cursor = self.fair.lock().expect("fair state").cursor.clone();
        let sql::Claim { rows, rate_wake } = sql::claim(
            &rt.pool,
            &rt.task_names,
            limit,
            &rt.worker_id,
            rt.lease,
            due_by,
            sql::Fairness {
                cursor: &cursor,
                default_rate: self.default_rate,
                strict,
            },
        )
        .await?;
        {
            let mut fair = self.fair.lock().expect("fair state");
            if let Some(next) = next_cursor(&cursor, rows.iter().map(|r| r.group_key.as_str())) {
                fair.cursor = next;
            }
            fair.rate_wake = rate_wake;
        }
        rt.hold(rows.iter().map(|r| (r.id, r.attempts)));
        let tickets = self
            .lanes
            .enter_all(rows.iter().map(|r| Some(r.group_key.as_str())));
        let mut jobs = Vec::with_capacity(rows.len());
        for (row, ticket) in rows.into_iter().zip(tickets) {
            // The claim filtered on registered names, so the lookup cannot miss; if it
            // did, the job goes back untouched rather than leaking a slot.
            let Some(task_name) = rt.task_name(&row.task_name) else {
                rt.finish(Settled::Released {
                    id: row.id,
                    attempt: row.attempts,
                });
                continue;
            };
            let planned_retry_delay =
                (row.attempts < row.max_attempts).then(|| self.backoff.delay(row.attempts));
            jobs.push(ClaimedJob {
                ctx: JobContext {
                    job_id: row.id,
                    task_name,
                    attempt: row.attempts,
                    max_attempts: row.max_attempts,
                    planned_retry_delay,
                },
                payload: row.payload.0,
                ticket,
            });
        }
        Ok(jobs)
    }

    /// Whether claims must be serialised: a default rate limit applies to every group,
    /// else only while some group has `max_running` or a rate limit (looked up at most
    /// every [`BUDGET_CHECK`]).
    async fn strict(&self) -> Result<bool, QueueError> {
        if self.default_rate.is_some() {
            return Ok(true);
        }
        let known = self.fair.lock().expect("fair state").strict;
        if let Some((strict, at)) = known
            && at.elapsed() < BUDGET_CHECK
        {
            return Ok(strict);
        }
        let strict = sql::budgets_exist(&self.rt.pool).await?;
        self.fair.lock().expect("fair state").strict = Some((strict, Instant::now()));
        Ok(strict)
    }
}

/// Where the round-robin goes on after a claim that served `served`: the first group
/// past `cursor` that got nothing is served first next time, so the cursor moves to the
/// last group served in rotation order (the largest past the cursor, else, having
/// wrapped around, the largest of all). `None` when nothing was served.
fn next_cursor<'a>(cursor: &str, served: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut past: Option<&str> = None;
    let mut wrapped: Option<&str> = None;
    for g in served {
        let slot = if g > cursor { &mut past } else { &mut wrapped };
        if slot.is_none_or(|s| g > s) {
            *slot = Some(g);
        }
    }
    wrapped.or(past).map(str::to_owned)
}

/// Keeps one LISTEN connection open and turns notifications into producer wake-ups. A
/// dropped connection (database restart) is re-established, and the producer is woken
/// each time in case a notification was lost meanwhile.
pub(crate) async fn listen(rt: Arc<Runtime>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let mut listener = match sql::listen(&rt.pool).await {
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
