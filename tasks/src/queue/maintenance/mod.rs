//! Maintenance: the background services that keep the tables right while workers run
//! (River's maintenance services), each a loop that outlives database outages (a failed
//! round trip is logged and tried again later; none ever ends the worker):
//!
//! - [`extend_leases`]: renews the lease of every job this process holds, a third of a
//!   lease at a time, so a live worker's job is never taken by another;
//! - [`sweep_expired`]: puts jobs whose lease expired (their worker died or lost the
//!   database for longer than a lease) back to pending, or dead on their last attempt;
//! - [`prune_archive`]: deletes completed jobs past the retention period;
//! - [`dead_letter`]: runs dead-letter hooks from the archive's outbox;
//! - [`periodic`]: enqueues periodic jobs, once per cron tick across all processes.

pub(crate) mod dead_letter;
pub(crate) mod periodic;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::queue::{runtime::Runtime, sql};

/// Extends the lease of every job this process holds (claimed, running or awaiting its
/// outcome write), a third of a lease at a time, in one statement.
pub(crate) async fn extend_leases(rt: Arc<Runtime>, stop: CancellationToken) {
    let every = rt.lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let (ids, attempts) = rt.held();
        if ids.is_empty() {
            continue;
        }
        let extended = rt
            .write_held(sql::extend_leases(
                &rt.pool,
                &ids,
                &attempts,
                rt.lease,
                &rt.worker_id,
            ))
            .await;
        match extended {
            Ok(extended) if extended < ids.len() as u64 => {
                tracing::debug!(
                    lost = ids.len() as u64 - extended,
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
    const ERROR: &str =
        "lease expired: the worker running this attempt stopped (crash, kill or lost database)";
    let every = (rt.lease / 2).max(Duration::from_millis(200));
    loop {
        match sql::sweep_expired(&rt.pool, &rt.task_names, &rt.hooked, ERROR).await {
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

/// The most completed jobs one pruning statement deletes: bounded, so the archive's
/// retention never runs one long delete.
const PRUNE_BATCH: i64 = 10_000;

/// Deletes completed jobs past `retention`, a bounded batch at a time, hourly (at once
/// again while batches come back full). Dead jobs are kept.
pub(crate) async fn prune_archive(rt: Arc<Runtime>, retention: Duration, stop: CancellationToken) {
    loop {
        let pause = match sql::prune_archive(&rt.pool, retention, PRUNE_BATCH).await {
            Ok(pruned) if pruned == PRUNE_BATCH.unsigned_abs() => Duration::from_secs(1),
            Ok(_) => Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "pruning the job archive failed");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
    }
}
