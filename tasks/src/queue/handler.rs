//! What handlers see and return (`JobContext`, `JobError`), and the type-erased handler
//! table the worker's apalis service dispatches through by task name.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{error::BoxDynError, task::Task};
use futures::{FutureExt, future::BoxFuture};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Job, JobId};

/// A handler's failure. Whether to retry is decided by the variant, never by parsing
/// the message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Transient: run again after `after`, or after the queue's backoff
    /// ([`JobContext::planned_retry_delay`]) when `None`; dead once attempts run out.
    #[error("{error}")]
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Will never succeed: the job goes straight to dead.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A transient error retried on the queue's backoff schedule.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Self::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    pub fn permanent(error: impl std::fmt::Display) -> Self {
        Self::Permanent(error.to_string())
    }
}

/// The claim a handler runs under.
#[derive(Debug, Clone, Copy)]
pub struct JobContext {
    pub(crate) job_id: JobId,
    pub(crate) task_name: &'static str,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) planned_retry_delay: Option<Duration>,
}

impl JobContext {
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    pub fn task_name(&self) -> &'static str {
        self.task_name
    }

    /// 1-based: the number of times this job has been claimed, this run included.
    pub fn attempt(&self) -> u32 {
        self.attempt.unsigned_abs()
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unsigned_abs()
    }

    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The delay the queue will wait before the next attempt if this one fails with
    /// `JobError::Retry { after: None }` (drawn once per claim, so a handler can record
    /// the real `next_retry_at` on its own rows); `None` on the last attempt.
    pub fn planned_retry_delay(&self) -> Option<Duration> {
        self.planned_retry_delay
    }
}

/// A claimed job as it travels through the apalis service stack.
#[derive(Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) ctx: JobContext,
    pub(crate) payload: Box<RawValue>,
}

/// A handler's successful output, serialised for the archive's `result` column (`None`
/// for JSON null, so unit handlers store nothing).
pub(crate) type JobOutput = Option<String>;

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

    /// The registered name equal to `name`, as the `'static` str handlers see.
    pub(crate) fn name(&self, name: &str) -> Option<&'static str> {
        self.handlers.get_key_value(name).map(|(k, _)| *k)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.handlers.keys().map(|k| k.to_string()).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// The innermost apalis service: decodes the payload and runs the typed handler.
#[derive(Clone)]
pub(crate) struct Router {
    pub(crate) table: Arc<HandlerTable>,
}

impl tower::Service<Task<ClaimedJob>> for Router {
    type Response = JobOutput;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<JobOutput, BoxDynError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<ClaimedJob>) -> Self::Future {
        let job = task.args;
        match self.table.handlers.get(job.ctx.task_name) {
            Some(handler) => handler(&job.payload, job.ctx)
                .map(|r| r.map_err(BoxDynError::from))
                .boxed(),
            None => {
                let error = JobError::Permanent(format!("no handler for {}", job.ctx.task_name));
                futures::future::ready(Err(error.into())).boxed()
            }
        }
    }
}
