//! Dead-letter hooks, run from an outbox: a job that goes dead is archived with
//! `dead_letter_pending` set in the same statement, and this dispatcher calls the hook
//! for its task type and clears the flag. A hook therefore runs at least once per dead
//! job even if the process that killed the job crashes right after (or the hook's
//! process dies while running it); hooks must be idempotent.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;

use super::{JobId, QueueError, worker::Runtime};

/// A type-erased hook: `(job id, payload as stored, last error)`. The payload may not
/// decode (that can be why the job died), so hooks get it as JSON.
pub(crate) type Hook =
    Arc<dyn Fn(JobId, serde_json::Value, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// How often the outbox is checked when nothing went dead here (it picks up hooks a
/// crashed process left behind).
const RETRY_EVERY: Duration = Duration::from_secs(5);
const BATCH: i64 = 100;

pub(crate) async fn run(
    rt: Arc<Runtime>,
    hooks: Arc<HashMap<&'static str, Hook>>,
    stop: CancellationToken,
) {
    if hooks.is_empty() {
        return;
    }
    loop {
        loop {
            match dispatch_once(&rt, &hooks).await {
                // A full batch: there may be more.
                Ok(n) if n == BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatching dead-letter hooks failed; retrying");
                    break;
                }
            }
        }
        tokio::select! {
            () = rt.dead_letters.notified() => {}
            () = tokio::time::sleep(RETRY_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Runs the hooks of up to [`BATCH`] pending dead jobs, holding their rows locked so
/// that two processes never run the same hook at once; answers how many ran.
async fn dispatch_once(
    rt: &Runtime,
    hooks: &HashMap<&'static str, Hook>,
) -> Result<i64, QueueError> {
    let mut tx = rt.pool.begin().await?;
    let rows: Vec<(JobId, String, Json<serde_json::Value>, Option<String>)> = sqlx::query_as(
        "SELECT id, task_name, payload, last_error FROM queue_jobs_done
         WHERE dead_letter_pending AND task_name = ANY($1)
         ORDER BY id LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(&rt.hooked)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut done = Vec::with_capacity(rows.len());
    for (job_id, task_name, payload, error) in rows {
        let Some(hook) = hooks.get(task_name.as_str()) else {
            continue;
        };
        hook(job_id, payload.0, error.unwrap_or_default()).await;
        done.push(job_id);
    }
    sqlx::query("UPDATE queue_jobs_done SET dead_letter_pending = false WHERE id = ANY($1)")
        .bind(&done)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(i64::try_from(done.len()).unwrap_or(BATCH))
}
