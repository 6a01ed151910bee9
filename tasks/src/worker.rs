//! One worker process: the queue runtime with the pipeline's job handlers registered.

use std::{future::Future, sync::Arc};

use hookq_core::{
    FailureKind,
    config::Config,
    directory::PgDirectory,
    logs::{self, PgLogStore},
    reply::TemplateRenderer,
    usecase::{self, Attempt, Deps},
};
use sqlx::PgPool;

use crate::{
    error::Error,
    jobs::ProcessWebhook,
    queue::{JobContext, JobError, WorkerOptions, Workers},
};

/// The use case's dependencies, backed by Postgres.
pub fn deps(pool: &PgPool) -> Deps {
    Deps {
        directory: Arc::new(PgDirectory { pool: pool.clone() }),
        logs: Arc::new(PgLogStore { pool: pool.clone() }),
        generator: Arc::new(TemplateRenderer),
    }
}

/// Runs this process's workers until `shutdown` resolves, then drains.
pub async fn run(
    pool: PgPool,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let opts = WorkerOptions {
        concurrency: config.max_async_tasks,
        max_attempts: config.max_attempts,
        worker_name: format!("hookq-worker-{}", std::process::id()),
        ..WorkerOptions::default()
    };
    let mut workers = Workers::new(pool.clone(), opts);
    let deps = deps(&pool);
    workers.register(move |job: ProcessWebhook, ctx: JobContext| {
        let deps = deps.clone();
        async move { process_webhook(&deps, job, ctx).await }
    });
    workers.on_dead_letter::<ProcessWebhook, _, _>(move |job_id, _payload, error| {
        let pool = pool.clone();
        async move {
            if let Err(e) = logs::dead_letter_by_job(&pool, job_id, &error).await {
                tracing::error!(job_id, error = %e, "could not dead-letter the log of a dead job");
            }
        }
    });
    workers.run(shutdown).await?;
    Ok(())
}

/// The job handler: translates between the queue's attempt bookkeeping and the use case.
pub async fn process_webhook(
    deps: &Deps,
    job: ProcessWebhook,
    ctx: JobContext,
) -> Result<(), JobError> {
    let attempt = Attempt {
        number: ctx.attempt(),
        retry_in: ctx.planned_retry_delay(),
    };
    match usecase::process_webhook(deps, job.log_id, attempt).await {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            FailureKind::Permanent => JobError::Permanent(e.to_string()),
            FailureKind::Transient { retry_after } => JobError::Retry {
                error: e.to_string(),
                after: retry_after.or(attempt.retry_in),
            },
        }),
    }
}
