//! Reply delivery as its own job, and the outbox that stages it.
//!
//! [`PgOutbox`] is the use case's [`ReplyOutbox`]: it stores a generated reply and, in
//! the same transaction, finishes the log (`none` delivery) or stages the outbound reply
//! and enqueues its [`DeliverReply`] job, so no reply is lost between generation and
//! delivery.
//!
//! [`Deliverer::deliver`] runs one [`DeliverReply`]: at most one attempt per run, each
//! committed before its request leaves (see `hookq_core::delivery`). Retries are new
//! jobs enqueued in the same transaction that records the failed attempt, run at
//! `HOOKQ_DELIVERY_BACKOFF`'s next delay (or later, if `Retry-After` says so). An endpoint
//! at its limit defers the job without using a try.
//!
//! Crash handling (contract section 9): a run that finds its own job's attempt still
//! `in_flight` is the re-run of a worker that died mid-request. It does not send again:
//! the attempt and reply become `unknown` and the log `dead_letter` ("delivery outcome
//! unknown"). A job the queue kills outright reaches [`Deliverer::on_dead`], which does
//! the same, or fails a reply that was never sent.
//!
//! The limits (10 in flight, 100 a minute per endpoint) are counted in the database and
//! checked under an advisory lock, so they hold across every worker process.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use hookq_core::{
    FailureKind,
    comment::ports::{Directory, ReplyOutbox, ReplyRecord, ReplyStored},
    config::Config,
    delivery::{
        Limits, OutboundReply, ReplyState, Sent,
        store::{self, Claim, Claimed, FailedAttempt, Staged},
    },
    directory::PgDirectory,
    error::{Error, Result},
    logs::{self, transitions},
    resources::ReplyDelivery,
};
use sqlx::{PgConnection, PgPool};

use super::finish::ReplyFinisher;
use crate::{
    jobs::DeliverReply,
    outbound::{
        guard,
        send::{NotSent, Sender, Target},
    },
    queue::{self, EnqueueOptions, JobContext, JobError, JobId, JobKeys, Notifier},
};

/// Enqueues a delivery job on the caller's transaction, in the log's conversation at the
/// place of the job that processed it (contract section 10, order): a later event of the
/// conversation is not processed, so not replied to, before this reply is delivered (or
/// given up), retries included. Deliveries belong to no fair-share group: budgets count
/// replies generated, and a reply already generated is not held back.
async fn enqueue_delivery(
    conn: &mut PgConnection,
    log_id: i64,
    run_at: Option<chrono::DateTime<Utc>>,
    max_attempts: u32,
) -> Result<JobId> {
    let place = logs::reads::conversation_place(conn, log_id).await?;
    let opts = EnqueueOptions {
        run_at,
        max_attempts: Some(i32::try_from(max_attempts).unwrap_or(i32::MAX)),
        keys: JobKeys {
            group: String::new(),
            position: place.conversation_key.as_ref().and(place.job_id),
            order: place.conversation_key,
        },
        ..EnqueueOptions::default()
    };
    queue::enqueue(conn, &DeliverReply { log_id }, &opts)
        .await
        .map_err(|e| match e {
            queue::QueueError::Db(db) => Error::Database(db),
            other => Error::Upstream {
                message: format!("cannot enqueue the delivery job: {other}"),
                retry_after: None,
            },
        })
}

/// The use case's outbox over Postgres and the queue.
#[derive(Clone)]
pub struct PgOutbox {
    /// The pool replies are stored and delivery jobs enqueued through.
    pub pool: PgPool,
    /// Wakes the workers once a delivery job is committed.
    pub notifier: Notifier,
    /// Finishes `none`-delivery replies in batches.
    pub finisher: ReplyFinisher,
    /// Queue attempts of each delivery job (`HOOKQ_MAX_ATTEMPTS`): they cover database
    /// trouble around an attempt, never a second send.
    pub max_attempts: u32,
}

#[async_trait]
impl ReplyOutbox for PgOutbox {
    async fn record_reply(&self, r: &ReplyRecord<'_>) -> Result<ReplyStored> {
        if r.delivery == ReplyDelivery::None {
            // Nothing to stage: storing the reply and finishing the log is one guarded
            // row update, group-committed with other runs' (see [`ReplyFinisher`]).
            let finished = self
                .finisher
                .finish(r.log_id, r.text, r.integration_id, r.persona_id)
                .await?;
            return Ok(if finished {
                ReplyStored::Finished
            } else {
                ReplyStored::NotProcessing
            });
        }
        let mut tx = self.pool.begin().await?;
        let stored = transitions::store_reply(
            &mut *tx,
            &[r.log_id],
            r.text,
            r.integration_id,
            r.persona_id,
        )
        .await?;
        if stored.is_empty() {
            return Ok(ReplyStored::NotProcessing);
        }
        let recorded = match r.delivery {
            ReplyDelivery::None => {
                transitions::finish_replied(&mut *tx, &[r.log_id]).await?;
                ReplyStored::Finished
            }
            kind => match store::stage(&mut tx, r.log_id, r.integration_id, kind).await? {
                Staged::New | Staged::Resent => {
                    enqueue_delivery(&mut tx, r.log_id, None, self.max_attempts).await?;
                    // No worker holds the log while its delivery job waits.
                    transitions::await_delivery(&mut *tx, &[r.log_id]).await?;
                    ReplyStored::Delivering
                }
                Staged::Live => ReplyStored::AlreadyDelivering,
                Staged::Delivered => {
                    transitions::finish_replied(&mut *tx, &[r.log_id]).await?;
                    ReplyStored::Finished
                }
            },
        };
        tx.commit().await?;
        if recorded == ReplyStored::Delivering {
            self.notifier.kick();
        }
        Ok(recorded)
    }
}

/// Runs delivery jobs. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    pool: PgPool,
    directory: Arc<dyn Directory>,
    sender: Sender,
    graph_url: String,
    /// Delay before each retry; one try plus one per entry.
    backoff: Vec<Duration>,
    /// `HOOKQ_DISABLE_DELIVERY_AFTER`.
    disable_after: Duration,
    allow_private: bool,
    limits: Limits,
    notifier: Notifier,
    max_attempts: u32,
}

impl Deliverer {
    /// A deliverer configured from `config` (Graph URL, retry schedule, private
    /// callbacks, `HOOKQ_MAX_ATTEMPTS`) with the default per-endpoint [`Limits`].
    pub fn new(pool: PgPool, config: &Config, notifier: Notifier) -> Result<Self> {
        Ok(Deliverer {
            directory: Arc::new(PgDirectory { pool: pool.clone() }),
            pool,
            sender: Sender::new(config.allow_private_callbacks)?,
            graph_url: config.meta_graph_url.clone(),
            backoff: config.delivery_backoff.clone(),
            disable_after: config.disable_delivery_after,
            allow_private: config.allow_private_callbacks,
            limits: Limits::default(),
            notifier,
            max_attempts: config.max_attempts,
        })
    }

    /// The same deliverer with other per-endpoint limits (tests use small ones).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Tries per round: the first plus one per backoff delay.
    fn tries(&self) -> u32 {
        u32::try_from(self.backoff.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The job handler. Errors are the database's (retried by the queue); delivery
    /// failures are recorded on the reply and the log, not returned.
    ///
    /// Traced in a `deliver_reply` span with `log_id`, `job_id` and `correlation_id` (the
    /// id of the request that stored the log, recorded once the log is read), as the
    /// `process_webhook` run that staged the reply is.
    #[tracing::instrument(
        name = "deliver_reply",
        skip_all,
        fields(log_id = job.log_id, job_id = ctx.job_id(), correlation_id = tracing::field::Empty)
    )]
    pub async fn deliver(&self, job: DeliverReply, ctx: JobContext) -> Result<(), JobError> {
        self.run(job.log_id, ctx.job_id())
            .await
            .map_err(|e| match e.kind() {
                FailureKind::Permanent => JobError::Permanent(e.to_string()),
                FailureKind::Transient { retry_after } => JobError::Retry {
                    error: e.to_string(),
                    after: retry_after,
                },
            })
    }

    async fn run(&self, log_id: i64, job_id: JobId) -> Result<()> {
        // Both reads at once: the log (for the target, and the correlation id every line
        // below carries) is needed on the common path anyway.
        let (reply, log) = tokio::try_join!(
            store::outbound_reply(&self.pool, log_id),
            logs::get(&self.pool, log_id)
        )?;
        if let Some(log) = &log {
            let span = tracing::Span::current();
            span.record("correlation_id", log.correlation_id.as_deref());
            crate::telemetry::continue_in(&span, log.correlation_id.as_deref(), None);
        }
        let Some(reply) = reply else {
            return Ok(());
        };
        match reply.status {
            ReplyState::Pending | ReplyState::Retrying => {}
            ReplyState::Sending => return self.sending_found(&reply, job_id).await,
            ReplyState::Delivered | ReplyState::Failed | ReplyState::Unknown => return Ok(()),
        }
        let Some(log) = log else {
            return Ok(());
        };
        let integration = match reply.integration_id {
            Some(id) => self.directory.integration(id).await?,
            None => None,
        };
        let Some(integration) = integration else {
            return self
                .fail_unsent(
                    &reply,
                    "delivery failed: the reply's integration no longer exists",
                )
                .await;
        };
        if !integration.delivery_enabled {
            let why = match integration.delivery_disabled_reason.as_deref() {
                Some("gone") => "an endpoint answered 410 Gone",
                Some("failing") => "every attempt failed for HOOKQ_DISABLE_DELIVERY_AFTER",
                _ => "an operator switched it off",
            };
            let msg = format!(
                "delivery disabled for integration {} ({} {}): {why}; re-enable delivery and retry the log",
                integration.id, integration.platform, integration.account_id
            );
            return self.fail_unsent(&reply, &msg).await;
        }
        let target = match Target::build(&log, &reply, &integration, &self.graph_url) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .fail_unsent(&reply, &format!("delivery failed: {e}"))
                    .await;
            }
        };
        if target.endpoint.kind == ReplyDelivery::Callback
            && let Err(e) = guard::check_url(&target.url, self.allow_private).await
            && e.is_permanent()
        {
            // A failed lookup is not refused here: the attempt's request fails as a
            // network error and is retried on the delivery schedule.
            return self
                .fail_unsent(&reply, &format!("delivery failed: {e}"))
                .await;
        }
        let claimed = match store::claim(
            &self.pool,
            &reply,
            &target.endpoint,
            Some(job_id),
            &self.limits,
        )
        .await?
        {
            Claim::Claimed(c) => c,
            Claim::Deferred(wait) => return self.defer(log_id, wait).await,
            Claim::NotDue => return Ok(()),
        };
        tracing::debug!(log_id, attempt = claimed.attempt, url = %target.endpoint.shown_url, "delivering reply");
        let result = self.sender.send(&target).await;
        self.record(&reply, &claimed, result).await
    }

    /// The reply is `sending`: if the in-flight attempt is this job's, an earlier run of
    /// this job died mid-request and the outcome is unknown; otherwise another job is
    /// sending it and this one has nothing to do.
    async fn sending_found(&self, reply: &OutboundReply, job_id: JobId) -> Result<()> {
        let attempt = store::in_flight_attempt(&self.pool, reply.id).await?;
        if let Some(a) = &attempt
            && a.job_id.is_some()
            && a.job_id != Some(job_id)
        {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let cut = store::record_cut_off(&mut tx, reply, attempt.map(|a| a.id)).await?;
        tx.commit().await?;
        if cut {
            tracing::warn!(
                log_id = reply.log_id,
                "a delivery attempt was cut off mid-request: outcome unknown, not sent again; the log is dead-lettered for an operator to resend"
            );
        }
        Ok(())
    }

    async fn fail_unsent(&self, reply: &OutboundReply, msg: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if store::fail_unsent(&mut tx, reply, msg).await? {
            tracing::warn!(log_id = reply.log_id, error = msg, "reply not delivered");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The endpoint is at its limit: the same delivery runs again later, no try used.
    async fn defer(&self, log_id: i64, wait: Duration) -> Result<()> {
        let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        enqueue_delivery(&mut tx, log_id, Some(at), self.max_attempts).await?;
        tx.commit().await?;
        tracing::debug!(
            log_id,
            wait_ms = wait.as_millis() as u64,
            "delivery deferred: endpoint at its limit"
        );
        Ok(())
    }

    /// Records an attempt's outcome. The request has already left, so a database error
    /// here is retried in-process for a while before giving up (a re-run would have to
    /// call the outcome unknown).
    async fn record(
        &self,
        reply: &OutboundReply,
        claimed: &Claimed,
        result: std::result::Result<Sent, NotSent>,
    ) -> Result<()> {
        let mut pause = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            match self.record_once(reply, claimed, &result).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 && !e.is_permanent() => {
                    tracing::warn!(log_id = reply.log_id, error = %e, "recording a delivery outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn record_once(
        &self,
        reply: &OutboundReply,
        claimed: &Claimed,
        result: &std::result::Result<Sent, NotSent>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut kick = false;
        match result {
            Ok(sent) => {
                store::record_success(&mut tx, reply, claimed, sent).await?;
            }
            Err(failed) => {
                let tries = self.tries();
                let error = failed.error.to_string();
                let next = (claimed.round_try < tries)
                    .then(|| self.backoff.get(claimed.round_try as usize - 1).copied())
                    .flatten();
                match (failed.error.kind(), next) {
                    (FailureKind::Transient { retry_after }, Some(delay)) => {
                        let delay = delay.max(retry_after.unwrap_or_default());
                        let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                        let msg = format!(
                            "delivery attempt {} of {tries} failed: {error}",
                            claimed.round_try
                        );
                        let attempt = FailedAttempt {
                            status_code: failed.status_code,
                            duration: failed.duration,
                            error: &error,
                            log_message: &msg,
                            disable_after: self.disable_after,
                        };
                        if store::record_retry(&mut tx, reply, claimed, &attempt, at).await? {
                            enqueue_delivery(&mut tx, reply.log_id, Some(at), self.max_attempts)
                                .await?;
                            kick = true;
                        }
                    }
                    (kind, _) => {
                        let mut msg = if kind == FailureKind::Permanent {
                            format!("delivery failed: {error}")
                        } else {
                            format!("delivery failed after {tries} attempts: {error}")
                        };
                        if failed.gone {
                            msg.push_str(
                                "; the integration's delivery is disabled until re-enabled",
                            );
                        }
                        let attempt = FailedAttempt {
                            status_code: failed.status_code,
                            duration: failed.duration,
                            error: &error,
                            log_message: &msg,
                            disable_after: self.disable_after,
                        };
                        store::record_failure(&mut tx, reply, claimed, &attempt, failed.gone)
                            .await?;
                    }
                }
            }
        }
        tx.commit().await?;
        if kick {
            self.notifier.kick();
        }
        Ok(())
    }

    /// Hand-back hook of [`DeliverReply`]: a stopping worker cut this job's run off. A
    /// reply it left `sending` was cut off mid-request: its outcome is unknown now, so it
    /// is settled now (as the job's re-run would settle it) rather than leaving the log
    /// `processing` with no worker holding it. A reply never claimed needs nothing.
    pub async fn on_released(&self, job_id: JobId, payload: serde_json::Value) {
        let Some(log_id) = payload.get("log_id").and_then(serde_json::Value::as_i64) else {
            return;
        };
        let settled = async {
            match store::outbound_reply(&self.pool, log_id).await? {
                Some(reply) if reply.status == ReplyState::Sending => {
                    self.sending_found(&reply, job_id).await
                }
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = settled {
            tracing::error!(job_id, log_id, error = %e, "could not settle the reply of a handed-back delivery job");
        }
    }

    /// Dead-letter hook of [`DeliverReply`]: the queue gave up on a delivery job (lease
    /// lost on its last attempt, repeated database errors, a panic). A reply left
    /// `sending` by that job has an unknown outcome; one never sent is failed. Either way
    /// the log is dead-lettered, so nothing waits forever. Idempotent.
    pub async fn on_dead(&self, job_id: JobId, payload: serde_json::Value, error: String) {
        let Some(log_id) = payload.get("log_id").and_then(serde_json::Value::as_i64) else {
            tracing::error!(job_id, "dead delivery job without a log id");
            return;
        };
        let outcome = async {
            let Some(reply) = store::outbound_reply(&self.pool, log_id).await? else {
                return Ok(());
            };
            match reply.status {
                ReplyState::Sending => self.sending_found(&reply, job_id).await,
                ReplyState::Pending | ReplyState::Retrying => {
                    self.fail_unsent(&reply, &format!("delivery job died: {error}"))
                        .await
                }
                ReplyState::Delivered | ReplyState::Failed | ReplyState::Unknown => Ok(()),
            }
        }
        .await;
        if let Err(e) = outcome {
            tracing::error!(job_id, log_id, error = %e, "could not settle the reply of a dead delivery job");
        }
    }
}
