//! Periodic jobs on cron schedules. Every process runs every schedule; a tick fires
//! once in total because claiming it is a conditional upsert on `queue_periodic`
//! (`last_tick < tick`), committed together with the job it enqueues. Ticks missed
//! while no process ran are skipped, not replayed.

use std::{str::FromStr, sync::Arc};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::queue::{
    client::{EnqueueOptions, enqueue},
    error::QueueError,
    job::{Job, JobId},
    runtime::Runtime,
    sql,
};

type EnqueueFn = Arc<
    dyn for<'c> Fn(&'c mut PgConnection, EnqueueOptions) -> BoxFuture<'c, Result<JobId, QueueError>>
        + Send
        + Sync,
>;

pub(crate) struct Periodic {
    name: String,
    schedule: cron::Schedule,
    enqueue: EnqueueFn,
}

impl Periodic {
    /// `schedule` is a cron expression: five fields (minute first), or six/seven with
    /// seconds (and year) first, or a shorthand such as `@hourly`.
    pub(crate) fn new<J: Job>(
        name: &str,
        schedule: &str,
        make: impl Fn() -> J + Send + Sync + 'static,
    ) -> Result<Self, QueueError> {
        let expr = if schedule.split_whitespace().count() == 5 {
            format!("0 {schedule}")
        } else {
            schedule.to_owned()
        };
        let parsed = cron::Schedule::from_str(&expr).map_err(|e| QueueError::Schedule {
            name: name.to_owned(),
            schedule: schedule.to_owned(),
            reason: e.to_string(),
        })?;
        let make = Arc::new(make);
        let enqueue: EnqueueFn = Arc::new(move |conn, opts| {
            let job = make();
            Box::pin(async move { enqueue(conn, &job, &opts).await })
        });
        Ok(Self {
            name: name.to_owned(),
            schedule: parsed,
            enqueue,
        })
    }
}

/// Fires `periodic` on each of its ticks until `stop`; its jobs get `max_attempts`.
pub(crate) async fn run(
    rt: Arc<Runtime>,
    periodic: Periodic,
    max_attempts: i32,
    stop: CancellationToken,
) {
    let mut last: Option<DateTime<Utc>> = None;
    loop {
        let now = Utc::now();
        let from = last.map_or(now, |last| last.max(now));
        let Some(tick) = periodic.schedule.after(&from).next() else {
            return;
        };
        let wait = (tick - now).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        last = Some(tick);
        // A database outage skips the tick after a few tries rather than firing it late.
        for failures in 1..=5u32 {
            match fire(&rt, &periodic, tick, max_attempts).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(name = %periodic.name, error = %e, "periodic job could not be enqueued");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(failures))) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Claims `tick` and enqueues its job in one transaction; answers whether this process
/// won the tick.
async fn fire(
    rt: &Runtime,
    periodic: &Periodic,
    tick: DateTime<Utc>,
    max_attempts: i32,
) -> Result<bool, QueueError> {
    let mut tx = rt.pool.begin().await?;
    if !sql::claim_tick(&mut tx, &periodic.name, tick).await? {
        return Ok(false);
    }
    let opts = EnqueueOptions {
        unique_key: Some(format!("periodic:{}:{}", periodic.name, tick.to_rfc3339())),
        max_attempts: Some(max_attempts),
        ..EnqueueOptions::default()
    };
    (periodic.enqueue)(&mut tx, opts).await?;
    tx.commit().await?;
    rt.wake.notify_one();
    Ok(true)
}
