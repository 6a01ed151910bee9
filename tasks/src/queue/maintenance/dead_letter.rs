//! Dead-letter hooks, run from an outbox: a job that goes dead is archived with
//! `dead_letter_pending` set in the same statement, and this dispatcher calls the hook
//! for its task type and clears the flag. A hook therefore runs at least once per dead
//! job even if the process that killed the job crashes right after (or the hook's
//! process dies while running it); hooks must be idempotent.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::queue::{error::QueueError, job::JobId, runtime::Runtime, sql};

/// A type-erased hook: `(job id, payload as stored, last error)`. The payload may not
/// decode (that can be why the job died), so hooks get it as JSON.
pub(crate) type Hook =
    Arc<dyn Fn(JobId, serde_json::Value, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// Hooks by task name.
pub(crate) type Hooks = HashMap<&'static str, Hook>;

/// How often the outbox is checked when nothing went dead here (it picks up hooks a
/// crashed process left behind).
const RETRY_EVERY: Duration = Duration::from_secs(5);
const BATCH: i64 = 100;

pub(crate) async fn run(rt: Arc<Runtime>, hooks: Arc<Hooks>, stop: CancellationToken) {
    if hooks.is_empty() {
        return;
    }
    loop {
        if let Err(e) = dispatch(&rt, &hooks).await {
            tracing::warn!(error = %e, "dispatching dead-letter hooks failed; retrying");
        }
        tokio::select! {
            () = rt.dead_letters.notified() => {}
            () = tokio::time::sleep(RETRY_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Runs the hooks of pending dead jobs until the outbox has none left for us; answers
/// how many ran.
pub(crate) async fn dispatch(rt: &Runtime, hooks: &Hooks) -> Result<usize, QueueError> {
    let mut ran = 0;
    loop {
        let n = dispatch_once(rt, hooks).await?;
        ran += n;
        // A full batch: there may be more.
        if i64::try_from(n).unwrap_or(i64::MAX) < BATCH {
            return Ok(ran);
        }
    }
}

/// Runs the hooks of up to [`BATCH`] pending dead jobs, holding their rows locked so
/// that two processes never run the same hook at once; answers how many ran.
async fn dispatch_once(rt: &Runtime, hooks: &Hooks) -> Result<usize, QueueError> {
    let mut tx = rt.pool.begin().await?;
    let rows = sql::take_dead_letters(&mut tx, &rt.hooked, BATCH).await?;
    let mut done = Vec::with_capacity(rows.len());
    for (job_id, task_name, payload, error) in rows {
        let Some(hook) = hooks.get(task_name.as_str()) else {
            continue;
        };
        hook(job_id, payload.0, error.unwrap_or_default()).await;
        done.push(job_id);
    }
    sql::clear_dead_letters(&mut tx, &done).await?;
    tx.commit().await?;
    Ok(done.len())
}
