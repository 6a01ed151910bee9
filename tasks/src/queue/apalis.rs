//! The apalis edge: hookq's jobs run as the tasks of an apalis worker, and this file is
//! the only one under `tasks/src` that imports `apalis`, `apalis_core` or `tower`.
//!
//! What apalis does here: it polls [`PgBackend`] for tasks, runs up to `concurrency` of
//! them at once (its concurrency layer), and on shutdown stops polling, waits for the
//! runs in flight and closes the backend. What it does not do: claim, decode, time out,
//! catch panics, retry or acknowledge. Those are the engine's (the producer claims in
//! batches, the executor runs and settles, the completer writes outcomes in batches),
//! so the same job runs the same way under `Workers::run_once`, where no apalis is
//! involved.
//!
//! The backend does no I/O of its own: the producer claims (batched, sized to free
//! slots) and sends [`ClaimedJob`]s over a channel, so `poll_next` is a channel receive
//! and the hot path has no per-job round trip.
//!
//! # Attempts
//!
//! The engine's attempt counter is the one truth: `queue_jobs.attempts`, counted up by
//! the claim statement, carried in [`JobContext::attempt`](super::job::JobContext) and
//! matched by every outcome write. apalis keeps a counter of its own on each `Task` and
//! counts it up as the run starts, so a task is built with the engine's attempt minus
//! one: apalis then reports the same 1-based number (its `Attempt` extractor, its
//! tracing). Nothing reads apalis' counter back; no other file knows it exists.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use apalis::layers::WorkerBuilderExt;
use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    error::{BoxDynError, WorkerError},
    task::{Task, builder::TaskBuilder, task_id::TaskId},
    worker::{builder::WorkerBuilder, context::WorkerContext},
};
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::mpsc;
use tower::layer::util::Identity;

use super::{
    error::QueueError,
    executor::Executor,
    job::ClaimedJob,
    runtime::{Runtime, Settled},
};

/// Runs the claimed jobs arriving on `claimed` as one apalis worker until `stopping`
/// resolves and the runs in flight have ended; claimed jobs never started are handed
/// back.
pub(crate) async fn run(
    rt: Arc<Runtime>,
    executor: Arc<Executor>,
    claimed: mpsc::UnboundedReceiver<ClaimedJob>,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueueError> {
    let backend = PgBackend {
        claimed,
        rt: rt.clone(),
    };
    let worker = WorkerBuilder::new(rt.worker_id.as_str())
        .backend(backend)
        .concurrency(rt.concurrency())
        .build(Runner { rt, executor });
    worker
        .run_until(async move {
            stopping.await;
            Ok::<(), WorkerError>(())
        })
        .await
        .map_err(|e| QueueError::Worker(e.to_string()))
}

/// An engine job as an apalis task (see "Attempts" in the module doc).
fn task(job: ClaimedJob) -> Task<ClaimedJob> {
    let (id, attempt, max_attempts) = (job.ctx.job_id, job.ctx.attempt, job.ctx.max_attempts);
    TaskBuilder::new(job)
        .task_id(TaskId::from_int(id.unsigned_abs()))
        .attempt(attempt.saturating_sub(1).unsigned_abs() as usize)
        .max_attempts(max_attempts.unsigned_abs() as usize)
        .build()
}

/// The `Backend` apalis polls: the producer's channel of claimed jobs.
struct PgBackend {
    claimed: mpsc::UnboundedReceiver<ClaimedJob>,
    rt: Arc<Runtime>,
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
        self.claimed
            .poll_recv(cx)
            .map(|job| job.map(|job| Ok(task(job))))
    }

    /// Called once the worker stopped and its in-flight runs ended: jobs claimed but
    /// never started are handed back.
    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        self.claimed.close();
        while let Ok(job) = self.claimed.try_recv() {
            self.rt.finish(Settled::Released {
                id: job.ctx.job_id,
                attempt: job.ctx.attempt,
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
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

/// The apalis service: hands each task's job to the executor, which settles it and
/// reports the outcome itself, so the service never fails.
#[derive(Clone)]
struct Runner {
    rt: Arc<Runtime>,
    executor: Arc<Executor>,
}

impl tower::Service<Task<ClaimedJob>> for Runner {
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<ClaimedJob>) -> Self::Future {
        let (rt, executor) = (self.rt.clone(), self.executor.clone());
        async move {
            executor.run(&rt, task.args).await;
            Ok(())
        }
        .boxed()
    }
}
