//! The executor: runs one claimed job to its [`Settled`]. It looks the handler up by
//! task name, decodes the payload into the typed job, runs the handler under the job
//! timeout with panics caught, and [`settle`]s the result: completed, retry (when
//! attempts are left) or dead. The runtime's hard stop cuts a run off at shutdown, and
//! the job is handed back.
//!
//! Every run goes through [`Executor::run`], whether apalis drives it (the long-running
//! worker, `apalis.rs`) or the caller's own task does (`Workers::run_once`), so both
//! settle a job the same way.

use std::{
    any::Any,
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::batch::{ExpressThread, Lane, in_lane};

use super::{
    job::{ClaimedJob, Job, JobContext, JobError, JobOutput},
    runtime::{Runtime, Settled},
};

type ErasedHandler = Arc<
    dyn Fn(&RawValue, JobContext) -> BoxFuture<'static, Result<JobOutput, JobError>> + Send + Sync,
>;

/// Typed handlers by task name.
#[derive(Clone, Default)]
pub(crate) struct HandlerTable {
    handlers: HashMap<&'static str, ErasedHandler>,
}

impl HandlerTable {
    pub(crate) fn insert<J, F, Fut, R>(&mut self, handler: F)
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
        R: Serialize + Send,
    {
        let erased: ErasedHandler = Arc::new(move |payload: &RawValue, ctx: JobContext| {
            // A payload that does not decode can never succeed: it fails permanently, so
            // it dead-letters alone instead of stalling the worker.
            let job: J = match serde_json::from_str(payload.get()) {
                Ok(job) => job,
                Err(e) => {
                    let error =
                        JobError::Permanent(format!("undecodable {} payload: {e}", J::NAME));
                    return futures::future::ready(Err(error)).boxed();
                }
            };
            let run = handler(job, ctx);
            async move {
                let output = run.await?;
                let value = serde_json::to_string(&output).map_err(|e| {
                    JobError::Permanent(format!("cannot encode the job's result: {e}"))
                })?;
                Ok((value != "null").then_some(value))
            }
            .boxed()
        });
        self.handlers.insert(J::NAME, erased);
    }

    /// The registered task names, as handlers see them.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Decodes and runs `job` with its handler.
    async fn call(&self, job: &ClaimedJob) -> Result<JobOutput, JobError> {
        match self.handlers.get(job.ctx.task_name) {
            Some(handler) => handler(&job.payload, job.ctx).await,
            None => Err(JobError::Permanent(format!(
                "no handler for {}",
                job.ctx.task_name
            ))),
        }
    }
}

/// Runs claimed jobs with the registered handlers.
pub(crate) struct Executor {
    pub(crate) table: HandlerTable,
    /// A run longer than this fails (and is retried).
    pub(crate) job_timeout: Duration,
    /// The express lane's thread, if runs may go there: a run whose group has nothing
    /// else running here, while other groups' runs do (its lane, chosen by the producer
    /// when the claim arrived), runs there and writes in the express lane of the
    /// handlers' group writers ([`crate::batch`]), so one account's flood does not slow
    /// another's lone event.
    pub(crate) express: Option<ExpressThread>,
}

/// Express runs at once, at most: past this, runs of quiet groups write in bulk too.
pub(crate) const EXPRESS_RUNS: usize = 32;

impl Executor {
    /// Runs `job` to its outcome and hands that to the runtime ([`Runtime::finish`]).
    /// Past the runtime's hard stop the run is dropped and the job handed back. A run of
    /// a group with nothing else running here, while others run, takes the express lane:
    /// on the express thread when there is one, its writes in the writers' express
    /// queues.
    pub(crate) async fn run(self: &Arc<Self>, rt: &Arc<Runtime>, job: ClaimedJob) {
        let Some(thread) = self
            .express
            .as_ref()
            .filter(|_| job.ticket.lane() == Lane::Express)
        else {
            return self.run_in(rt, job).await;
        };
        let ctx = job.ctx;
        let (this, on) = (Arc::clone(self), Arc::clone(rt));
        let ran = thread
            .handle()
            .spawn(async move { this.run_in(&on, job).await })
            .await;
        if ran.is_err() {
            // The express thread stopped under the run (only at the process's end): the
            // job goes back, as at any shutdown.
            rt.finish(Settled::Released {
                id: ctx.job_id,
                attempt: ctx.attempt,
            });
        }
    }

    /// The run's lane ticket ends with `execute` (which owns the job), before the
    /// outcome is handed on.
    async fn run_in(&self, rt: &Runtime, job: ClaimedJob) {
        let (ctx, lane) = (job.ctx, job.ticket.lane());
        let outcome = tokio::select! {
            biased;
            outcome = in_lane(lane, self.execute(job)) => outcome,
            () = rt.hard_stop.cancelled() => {
                crate::worker_metrics::job_ran(ctx.task_name, "released", Duration::ZERO);
                Settled::Released { id: ctx.job_id, attempt: ctx.attempt }
            }
        };
        rt.finish(outcome);
    }

    /// Decode, run (timed, panics caught) and settle, inside a `job` span.
    #[tracing::instrument(
        name = "job",
        level = "debug",
        skip_all,
        fields(id = job.ctx.job_id, task = job.ctx.task_name, attempt = job.ctx.attempt)
    )]
    async fn execute(&self, job: ClaimedJob) -> Settled {
        let ctx = job.ctx;
        tracing::debug!("task.start");
        let started = Instant::now();
        // The handler's synchronous part runs inside the first poll, so a panic there
        // is caught too.
        let run = AssertUnwindSafe(async { self.table.call(&job).await }).catch_unwind();
        let result = match tokio::time::timeout(self.job_timeout, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(panicked(panic.as_ref())),
            Err(_elapsed) => Err(JobError::Retry {
                error: "timed out".to_owned(),
                after: None,
            }),
        };
        let took = started.elapsed();
        let ms = took.as_millis();
        match &result {
            Ok(_) => tracing::debug!(done_in = format_args!("{ms}ms"), "task.done"),
            Err(e) => {
                tracing::warn!(done_in = format_args!("{ms}ms"), result = %e, "task.failed")
            }
        }
        let settled = settle(ctx, result);
        let outcome = match &settled {
            Settled::Completed { .. } => "completed",
            Settled::Retry { .. } => "retry",
            Settled::Dead { .. } => "dead",
            Settled::Released { .. } => "released",
        };
        crate::worker_metrics::job_ran(ctx.task_name, outcome, took);
        settled
    }
}

/// What the queue does with a run's result.
fn settle(ctx: JobContext, result: Result<JobOutput, JobError>) -> Settled {
    let (id, attempt) = (ctx.job_id, ctx.attempt);
    let (error, after) = match result {
        Ok(result) => {
            return Settled::Completed {
                id,
                attempt,
                result,
            };
        }
        Err(JobError::Permanent(error)) => return Settled::Dead { id, attempt, error },
        Err(JobError::Retry { error, after }) => (error, after),
    };
    match after.or(ctx.planned_retry_delay) {
        Some(delay) if !ctx.is_last_attempt() => Settled::Retry {
            id,
            attempt,
            error,
            delay,
        },
        _ => Settled::Dead { id, attempt, error },
    }
}

/// A panic is a permanent failure of that job alone.
fn panicked(panic: &(dyn Any + Send)) -> JobError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    JobError::Permanent(format!("handler panicked: {message}"))
}
