//! The apalis side of the queue: [`PgBackend`], the `Backend` apalis polls for claimed
//! jobs, and [`AckLayer`], its middleware, which turns each run's result into an
//! [`Outcome`] for the batch writer.
//!
//! The backend does no I/O of its own: the fetcher claims (batched, sized to free
//! slots) and sends tasks over a channel, so `poll_next` is a channel receive and the
//! hot path has no per-job round trip.

use std::{
    any::Any,
    sync::Arc,
    task::{Context, Poll},
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    error::BoxDynError,
    task::Task,
    worker::context::WorkerContext,
};
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::mpsc;
use tower::{Layer, Service};

use super::{
    JobError, QueueError,
    completer::Outcome,
    handler::{ClaimedJob, JobContext, JobOutput},
    worker::Runtime,
};

pub(crate) struct PgBackend {
    pub(crate) claimed: mpsc::UnboundedReceiver<Task<ClaimedJob>>,
    pub(crate) rt: Arc<Runtime>,
}

impl Backend for PgBackend {
    type Task = Task<ClaimedJob>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, QueueError>>> {
        self.claimed.poll_recv(cx).map(|task| task.map(Ok))
    }

    /// Called once the worker stopped and its in-flight runs ended: jobs claimed but
    /// never started are handed back.
    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        self.claimed.close();
        while let Ok(task) = self.claimed.try_recv() {
            let ctx = task.args.ctx;
            self.rt.finish(Outcome::Released {
                id: ctx.job_id,
                attempt: ctx.attempt,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for PgBackend {
    type Args = ClaimedJob;
    type Id = i64;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AckLayer;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> AckLayer {
        AckLayer {
            rt: self.rt.clone(),
        }
    }
}

/// Wraps the whole user middleware stack, so it sees the final word on every run
/// (panics and timeouts included) and reports it.
#[derive(Clone)]
pub(crate) struct AckLayer {
    rt: Arc<Runtime>,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> AckService<S> {
        AckService {
            inner,
            rt: self.rt.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AckService<S> {
    inner: S,
    rt: Arc<Runtime>,
}

impl<S> Service<Task<ClaimedJob>> for AckService<S>
where
    S: Service<Task<ClaimedJob>, Response = JobOutput>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<ClaimedJob>) -> Self::Future {
        let ctx = task.args.ctx;
        let run = self.inner.call(task);
        let rt = self.rt.clone();
        async move {
            // Past the shutdown timeout the run is dropped and the job handed back.
            let outcome = tokio::select! {
                biased;
                result = run => settle(ctx, result.map_err(Into::into)),
                () = rt.hard_stop.cancelled() => Outcome::Released { id: ctx.job_id, attempt: ctx.attempt },
            };
            rt.finish(outcome);
            Ok(())
        }
        .boxed()
    }
}

/// What the queue does with a run's result.
fn settle(ctx: JobContext, result: Result<JobOutput, BoxDynError>) -> Outcome {
    let (id, attempt) = (ctx.job_id, ctx.attempt);
    let error = match result {
        Ok(result) => {
            return Outcome::Completed {
                id,
                attempt,
                result,
            };
        }
        Err(e) => e,
    };
    let (error, after) = match error.downcast::<JobError>() {
        Ok(job_error) => match *job_error {
            JobError::Permanent(error) => return Outcome::Dead { id, attempt, error },
            JobError::Retry { error, after } => (error, after),
        },
        Err(other) if other.is::<tower::timeout::error::Elapsed>() => {
            ("timed out".to_owned(), None)
        }
        Err(other) => (other.to_string(), None),
    };
    match after.or(ctx.planned_retry_delay) {
        Some(delay) if !ctx.is_last_attempt() => Outcome::Retry {
            id,
            attempt,
            error,
            delay,
        },
        _ => Outcome::Dead { id, attempt, error },
    }
}

/// The catch-panic layer's handler: a panic is a permanent failure of that job alone.
pub(crate) fn panicked(panic: &Box<dyn Any + Send>) -> JobError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    JobError::Permanent(format!("handler panicked: {message}"))
}
