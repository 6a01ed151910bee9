//! One worker process: the queue runtime with the pipeline's job handlers registered
//! (`process_webhook` runs the comment use case, `deliver_reply` delivers its reply,
//! `replay_chunk` runs a shadow replay's next items: `crate::replay`).

pub mod deliver;
pub mod finish;
pub mod starts;

use std::{future::Future, sync::Arc, time::Duration};

use hookq_core::{
    FailureKind,
    comment::{self, Attempt, Deps, ports::ReplyGenerator, reply::TemplateRenderer},
    config::Config,
    delivery::PgDeliveryStore,
    directory::{CachedDirectory, PgDirectory},
    logs::transitions,
};
use sqlx::PgPool;

use self::{
    deliver::{Deliverer, PgOutbox},
    finish::ReplyFinisher,
    starts::GroupedLogStore,
};
use crate::{
    batch::ExpressLane,
    error::Error,
    jobs::{DeliverReply, ProcessWebhook, ReplayChunk},
    outbound::llm::LlmGenerator,
    queue::{GroupRate, JobContext, JobError, Notifier, WorkerOptions, Workers},
};

/// The use case's dependencies, backed by Postgres (directory lookups cached per
/// process). Replies are written by the LLM when
/// `REPLY_LLM_URL` is set, else rendered from the persona template.
pub fn deps(
    pool: &PgPool,
    config: &Config,
    notifier: Notifier,
    express: &ExpressLane,
) -> Result<Deps, Error> {
    let generator: Arc<dyn ReplyGenerator> = match &config.llm {
        Some(llm) => Arc::new(LlmGenerator::new(llm)?),
        None => Arc::new(TemplateRenderer),
    };
    Ok(Deps {
        // Per-process cache, checked against the directory version each run reads as
        // it starts: a comment's lookups cost no round trips once seen.
        directory: Arc::new(CachedDirectory::new(Arc::new(PgDirectory {
            pool: pool.clone(),
        }))),
        // Starts are group-written: every run begins with one.
        logs: Arc::new(GroupedLogStore::spawn(pool.clone(), express)),
        generator,
        outbox: Arc::new(PgOutbox {
            pool: pool.clone(),
            notifier,
            finisher: ReplyFinisher::spawn(pool.clone(), express),
            max_attempts: config.max_attempts,
        }),
        reports: Arc::new(PgDeliveryStore { pool: pool.clone() }),
        message_reply_window: config.message_reply_window,
    })
}

/// How long a stopping worker process lets in-flight runs finish before it hands them
/// back: under the supervisor's grace (25 s) before it SIGKILLs a child.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs this process's workers until `shutdown` resolves, then drains.
pub async fn run(
    pool: PgPool,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // Runs of a group with nothing else running here, and their two writes, go on the
    // express lane's thread and connections (`crate::batch`; contract section 10).
    let express = ExpressLane::start(&pool, 2);
    let opts = WorkerOptions {
        concurrency: config.max_async_tasks,
        max_attempts: config.max_attempts,
        worker_name: format!("hookq-worker-{}", std::process::id()),
        // Within the supervisor's 25 s grace, so runs still going at the deadline are
        // handed back (and their logs with them) before a SIGKILL could cut the process.
        shutdown_timeout: SHUTDOWN_TIMEOUT,
        // HOOKQ_WAKEUP=poll (PgBouncer in transaction mode): no LISTEN connection, and a
        // shorter poll in its place.
        listen: config.wakeup == hookq_core::config::Wakeup::Notify,
        poll_interval: match config.wakeup {
            hookq_core::config::Wakeup::Notify => Duration::from_secs(1),
            hookq_core::config::Wakeup::Poll => Duration::from_millis(100),
        },
        // An integration's own reply_rate_limit is its queue group's budget; this is the
        // budget of every group that sets none.
        default_group_rate: config.reply_rate_limit.map(|r| GroupRate {
            limit: r.requests,
            window: r.per,
        }),
        express: express.thread.clone(),
        ..WorkerOptions::default()
    };
    let notifier = Notifier::spawn(pool.clone());
    let mut workers = Workers::new(pool.clone(), opts);
    // Retention (issue 5): hourly purge of processed logs past HOOKQ_RETENTION_DAYS.
    crate::ops::retention::register(&mut workers, &pool, config.retention_days)?;
    // Alerts (contract section 12): only with HOOKQ_ALERT_URL (the config insists on
    // HOOKQ_ALERT_SECRET with it).
    let alert_sender = match (&config.alert_url, &config.alert_secret) {
        (Some(url), Some(secret)) => Some(crate::outbound::alert::AlertSender::new(
            url.clone(),
            secret.clone(),
        )?),
        _ => None,
    };
    crate::ops::alerts::register(
        &mut workers,
        &pool,
        alert_sender,
        crate::ops::alerts::Thresholds {
            dead_letters: config.alert_dead_letters,
            queue_age: config.alert_queue_age,
        },
        notifier.clone(),
    )?;
    let deps = deps(&pool, config, notifier.clone(), &express)?;
    let replayer = crate::replay::Replayer::new(
        pool.clone(),
        notifier.clone(),
        deps.directory.clone(),
        config.llm.clone(),
    );
    workers.register(move |job: ReplayChunk, ctx: JobContext| {
        let replayer = replayer.clone();
        async move { replayer.run_chunk(job, ctx).await }
    });
    workers.register(move |job: ProcessWebhook, ctx: JobContext| {
        let deps = deps.clone();
        async move { process_webhook(&deps, job, ctx).await }
    });
    let dead_pool = pool.clone();
    workers.on_dead_letter::<ProcessWebhook, _, _>(move |job_id, payload, error| {
        let pool = dead_pool.clone();
        async move {
            // The log the payload names, if it still belongs to this job; a payload too
            // broken to decode falls back to whatever log belongs to the job.
            let log_id = serde_json::from_value::<ProcessWebhook>(payload)
                .ok()
                .map(|job| [job.log_id]);
            let owner = match &log_id {
                Some(ids) => transitions::Owner::LogsOfJob(ids, job_id),
                None => transitions::Owner::Job(job_id),
            };
            let marked = transitions::dead_letter(&pool, owner, &error).await;
            if let Err(e) = marked {
                tracing::error!(job_id, error = %e, "could not dead-letter the log of a dead job");
            }
        }
    });
    // A run handed back unfinished at shutdown leaves its log for the next run: `pending`
    // again, since no worker holds it (contract section 4).
    let release_pool = pool.clone();
    workers.on_release::<ProcessWebhook, _, _>(move |job_id, payload| {
        let pool = release_pool.clone();
        async move {
            let Ok(job) = serde_json::from_value::<ProcessWebhook>(payload) else {
                return;
            };
            if let Err(e) = transitions::hand_back(&pool, &[job.log_id], job_id).await {
                tracing::error!(job_id, log_id = job.log_id, error = %e, "could not hand back the log of a released job");
            }
        }
    });
    let deliverer = Deliverer::new(pool.clone(), config, notifier)?;
    let runner = deliverer.clone();
    workers.register(move |job: DeliverReply, ctx: JobContext| {
        let runner = runner.clone();
        async move { runner.deliver(job, ctx).await }
    });
    let released = deliverer.clone();
    workers.on_release::<DeliverReply, _, _>(move |job_id, payload| {
        let deliverer = released.clone();
        async move { deliverer.on_released(job_id, payload).await }
    });
    workers.on_dead_letter::<DeliverReply, _, _>(move |job_id, payload, error| {
        let deliverer = deliverer.clone();
        async move { deliverer.on_dead(job_id, payload, error).await }
    });
    workers.run(shutdown).await?;
    Ok(())
}

/// The job handler: translates between the queue's attempt bookkeeping and the use case.
///
/// The run is traced in a `process_webhook` span with `log_id`, `job_id` and
/// `correlation_id`: the use case records the last from the row its start transition
/// returns (no extra read), so every line the run writes names the request that stored
/// the event, as the API's "webhook stored" line does.
#[tracing::instrument(
    name = "process_webhook",
    skip_all,
    fields(log_id = job.log_id, job_id = ctx.job_id(), correlation_id = tracing::field::Empty)
)]
pub async fn process_webhook(
    deps: &Deps,
    job: ProcessWebhook,
    ctx: JobContext,
) -> Result<(), JobError> {
    let attempt = Attempt {
        number: ctx.attempt(),
        retry_in: ctx.planned_retry_delay(),
    };
    let e = match comment::process_webhook(deps, job.log_id, attempt).await {
        Ok(done) => {
            tracing::debug!(outcome = done.as_str(), "webhook processed");
            return Ok(());
        }
        Err(e) => e,
    };
    // As the use case decided: a permanent failure, or any failure of the last attempt,
    // dead-letters the log; the queue's own line about the failed job has no log context.
    if e.is_permanent() || attempt.retry_in.is_none() {
        tracing::warn!(error = %e, attempts = attempt.number, "webhook processing failed: dead-lettered");
    } else {
        tracing::info!(error = %e, attempts = attempt.number, "webhook processing failed: will retry");
    }
    Err(match e.kind() {
        FailureKind::Permanent => JobError::Permanent(e.to_string()),
        FailureKind::Transient { retry_after } => JobError::Retry {
            error: e.to_string(),
            after: retry_after.or(attempt.retry_in),
        },
    })
}
