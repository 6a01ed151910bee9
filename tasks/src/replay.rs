//! Shadow replay (contract section 13): the comment use case run again over stored
//! events with something changed, delivering nothing and writing no log.
//!
//! [`start`] makes the replay (its items fixed from a log filter, `hookq_core::replays`)
//! and enqueues its first [`ReplayChunk`] job in one transaction. A chunk job takes the
//! replay's next [`CHUNK`] pending items, runs [`comment::process_webhook`] (the same code
//! as live traffic) over them, [`CONCURRENCY`] at a time, with these ports:
//!
//! - **logs**: [`RecordingLogs`] hands the use case the stored row as if just started
//!   (`processing`, no reply kept, so one is generated again) and keeps what the run
//!   would have written (outcome, skip, error) in memory. No statement touches
//!   `webhook_logs`.
//! - **outbox**: [`RecordingOutbox`] keeps the reply and answers "finished". It holds no
//!   HTTP client and no pool: nothing can leave through it, whatever the integration's
//!   `reply_delivery` says or whatever crashes.
//! - **reports**: [`NoReports`] applies nothing (a replayed delivery report must not move
//!   an outbound reply's status).
//! - **directory**: the worker's own, through [`Overriding`], which swaps in the replay's
//!   persona, reply template and system prompt.
//! - **generator**: the template renderer, or the LLM (the configured one, or with the
//!   replay's `model`): the only request a replay may make.
//!
//! then records the chunk's results and, while items remain, pauses and enqueues the
//! next chunk. So one chunk job at a time runs per replay (at most one worker slot;
//! its own runs bounded by [`CONCURRENCY`]), its jobs are claimed behind live work
//! ([`REPLAY_PRIORITY`] is below every live job's), and it paces itself
//! ([`PAUSE_PER_WORK`]) so live work keeps most of the cores. A chunk
//! killed mid-way runs again from its lease and redoes only its unrecorded items (a
//! recorded item never changes: `hookq_core::replays::record`).
//!
//! Replays judge a direct message's reply window as open: the question is what the
//! reply would have been, not whether it could still be sent now.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hookq_core::{
    comment::{
        self, Attempt, Deps,
        ports::{
            ConnectionReport, DeliveryReports, Directory, LogStore, Matched, ProviderReport,
            ReplyGenerator, ReplyOutbox, ReplyRecord, ReplyStored, Started,
        },
        reply::TemplateRenderer,
    },
    config::LlmConfig,
    error::Result,
    logs::{Outcome, SkipReason, reads::LogFilter},
    replays::{self, ItemResult, Overrides},
    resources::{Integration, Persona, PersonaTemplate, Post, User},
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::Error,
    jobs::ReplayChunk,
    outbound::llm::LlmGenerator,
    queue::{self, EnqueueOptions, JobContext, JobError, Notifier},
};

/// Items one chunk job runs.
pub const CHUNK: i64 = 100;
/// Use case runs at once within a chunk (they wait mostly on the LLM, when one writes).
pub const CONCURRENCY: usize = 8;
/// Replay jobs' priority: below live jobs (0), so a claim takes live work first.
pub const REPLAY_PRIORITY: i16 = -10;
/// After each chunk, its job waits this many times as long as the chunk ran before it
/// enqueues the next one, so a replay takes at most a tenth of the time of the cores it
/// runs on and live work keeps the rest. Priority alone only orders claims. Measured
/// with `bench replay` (10,000 logs, template replies, 2 cores, one live comment at a
/// time timed until processed): unpaced, the replay took 3.0 s and live comments 8.8 ms
/// (p50) against 6.5 ms idle; paced 3x, 5.3 s and 6.5 against 6.0 ms; paced 9x, 12.2 s
/// and 5.7 / 5.6 ms against 5.6 / 6.4 ms idle (two runs): no difference left.
pub const PAUSE_PER_WORK: u32 = 9;
/// The longest pause between chunks (an LLM replay's chunks run long, on other machines).
pub const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Makes a replay of up to `limit` logs matching `filter` and enqueues its first chunk,
/// in one transaction; answers its id and item count.
pub async fn start(
    pool: &PgPool,
    notifier: &Notifier,
    filter: &LogFilter,
    filter_json: &Value,
    limit: i64,
    overrides: &Overrides,
) -> Result<(i64, i32), Error> {
    let mut tx = pool.begin().await.map_err(hookq_core::Error::from)?;
    let (id, total) = replays::create(&mut tx, filter, filter_json, limit, overrides).await?;
    if total > 0 {
        queue::enqueue(&mut tx, &ReplayChunk { replay_id: id }, &chunk_options()).await?;
    }
    tx.commit().await.map_err(hookq_core::Error::from)?;
    if total > 0 {
        notifier.kick();
    }
    Ok((id, total))
}

/// A chunk job's options: behind live work, and enough runs to outlast a database
/// outage (a chunk fails only when its own reads or writes do).
fn chunk_options() -> EnqueueOptions {
    EnqueueOptions {
        priority: REPLAY_PRIORITY,
        max_attempts: Some(100),
        ..EnqueueOptions::default()
    }
}

/// Runs replay chunks: what a worker process registers for [`ReplayChunk`].
#[derive(Clone)]
pub struct Replayer {
    pool: PgPool,
    notifier: Notifier,
    /// The worker's directory (cached), shared with the live pipeline.
    directory: Arc<dyn Directory>,
    /// The LLM the live pipeline uses, if one is configured.
    llm: Option<LlmConfig>,
}

impl Replayer {
    /// A replayer over the worker's directory and LLM settings.
    pub fn new(
        pool: PgPool,
        notifier: Notifier,
        directory: Arc<dyn Directory>,
        llm: Option<LlmConfig>,
    ) -> Self {
        Replayer {
            pool,
            notifier,
            directory,
            llm,
        }
    }

    /// One chunk of replay `job.replay_id`: see the module doc.
    #[tracing::instrument(name = "replay_chunk", skip_all, fields(replay_id = job.replay_id, job_id = ctx.job_id()))]
    pub async fn run_chunk(&self, job: ReplayChunk, ctx: JobContext) -> Result<(), JobError> {
        self.chunk(job.replay_id)
            .await
            .map_err(|e| JobError::retry(format!("replay chunk failed: {e}")))
    }

    async fn chunk(&self, replay_id: i64) -> Result<(), Error> {
        let started_at = std::time::Instant::now();
        let Some(overrides) = replays::overrides(&self.pool, replay_id).await? else {
            return Ok(()); // deleted meanwhile
        };
        let log_ids = replays::next_pending(&self.pool, replay_id, CHUNK).await?;
        if log_ids.is_empty() {
            return Ok(());
        }
        let started: Vec<Started> = sqlx::query_as(
            "SELECT l.*, coalesce((SELECT version FROM directory_version), 0) AS directory_version
             FROM webhook_logs l WHERE l.id = ANY($1)",
        )
        .bind(&log_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(hookq_core::Error::from)?;
        let results = Arc::new(Results::default());
        let generator: Arc<dyn ReplyGenerator> = match (&self.llm, &overrides.model) {
            (Some(llm), model) => {
                let mut config = llm.clone();
                if let Some(m) = model {
                    config.model = m.clone();
                }
                Arc::new(LlmGenerator::new(&config)?)
            }
            (None, Some(_)) => Arc::new(NoModel),
            (None, None) => Arc::new(TemplateRenderer),
        };
        let deps = Deps {
            directory: Arc::new(Overriding {
                inner: self.directory.clone(),
                overrides: overrides.clone(),
            }),
            logs: Arc::new(RecordingLogs {
                rows: started.into_iter().map(|s| (s.log.id, s)).collect(),
                results: results.clone(),
            }),
            generator,
            outbox: Arc::new(RecordingOutbox {
                results: results.clone(),
            }),
            reports: Arc::new(NoReports),
            message_reply_window: Duration::MAX,
        };
        let runs = futures::stream::iter(log_ids.iter().copied())
            .map(|id| {
                let deps = &deps;
                async move {
                    let attempt = Attempt {
                        number: 1,
                        retry_in: None,
                    };
                    (id, comment::process_webhook(deps, id, attempt).await)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out: Vec<ItemResult> = Vec::with_capacity(runs.len());
        for (id, run) in runs {
            let mut r = results.take(id).unwrap_or(ItemResult {
                log_id: id,
                ..ItemResult::default()
            });
            match run {
                Ok(comment::Done::AlreadyFinished) if r.outcome.is_none() => {
                    r.error
                        .get_or_insert_with(|| "the log no longer exists".into());
                }
                Ok(_) => {}
                Err(e) => {
                    r.error.get_or_insert_with(|| e.to_string());
                }
            }
            out.push(r);
        }
        let mut tx = self.pool.begin().await.map_err(hookq_core::Error::from)?;
        // Committed without waiting for its WAL flush: a crash that loses it leaves the
        // chunk's items pending, never a wrong result (this job's own completion is
        // later in the WAL, so it is lost too and the job runs again).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(hookq_core::Error::from)?;
        let pending = replays::record(&mut tx, replay_id, &out).await?;
        tx.commit().await.map_err(hookq_core::Error::from)?;
        if pending > 0 {
            // The pause, then the next chunk: enqueued only now, so nothing can claim it
            // during the pause. A crash in between leaves no next chunk, but this job,
            // not yet completed, runs again from its lease and carries on.
            tokio::time::sleep((started_at.elapsed() * PAUSE_PER_WORK).min(MAX_PAUSE)).await;
            let mut conn = self.pool.acquire().await.map_err(hookq_core::Error::from)?;
            queue::enqueue(&mut conn, &ReplayChunk { replay_id }, &chunk_options()).await?;
            self.notifier.kick();
        }
        Ok(())
    }
}

/// What the chunk's runs got, by log id.
#[derive(Default)]
struct Results(std::sync::Mutex<HashMap<i64, ItemResult>>);

impl Results {
    fn update(&self, log_id: i64, f: impl FnOnce(&mut ItemResult)) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(log_id).or_insert_with(|| ItemResult {
            log_id,
            ..ItemResult::default()
        }));
    }

    fn take(&self, log_id: i64) -> Option<ItemResult> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&log_id)
    }
}

/// The use case's log store for a replay: reads the chunk's rows (read once, up front),
/// writes nothing.
struct RecordingLogs {
    rows: HashMap<i64, Started>,
    results: Arc<Results>,
}

#[async_trait]
impl LogStore for RecordingLogs {
    async fn start(&self, id: i64, _attempt: u32) -> Result<Option<Started>> {
        Ok(self.rows.get(&id).map(|s| {
            let mut s = s.clone();
            // As a first run sees it: no reply kept from before, so one is generated.
            s.log.status = hookq_core::logs::LogStatus::Processing;
            s.log.reply_text = None;
            s
        }))
    }

    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        _integration_id: Option<Uuid>,
    ) -> Result<bool> {
        self.results.update(id, |r| {
            r.outcome = Some(outcome.as_str().to_owned());
            r.skip_reason = skip.map(|s| s.as_str().to_owned());
        });
        Ok(true)
    }

    async fn fail(&self, id: i64, error: &str, _next_retry_at: DateTime<Utc>) -> Result<bool> {
        self.results
            .update(id, |r| r.error = Some(error.to_owned()));
        Ok(true)
    }

    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool> {
        self.results
            .update(id, |r| r.error = Some(error.to_owned()));
        Ok(true)
    }
}

/// The use case's outbox for a replay: keeps the reply; sends nothing, stores nothing.
struct RecordingOutbox {
    results: Arc<Results>,
}

#[async_trait]
impl ReplyOutbox for RecordingOutbox {
    async fn record_reply(&self, reply: &ReplyRecord<'_>) -> Result<ReplyStored> {
        self.results.update(reply.log_id, |r| {
            r.outcome = Some(Outcome::Replied.as_str().to_owned());
            r.reply = Some(reply.text.to_owned());
        });
        Ok(ReplyStored::Finished)
    }
}

/// Delivery reports and connection statuses, replayed: applied to nothing.
struct NoReports;

#[async_trait]
impl DeliveryReports for NoReports {
    async fn apply_report(&self, _report: &ProviderReport) -> Result<Option<Matched>> {
        Ok(None)
    }

    async fn record_connection(
        &self,
        _log_id: i64,
        _integration_id: Option<Uuid>,
        _report: &ConnectionReport,
    ) -> Result<()> {
        Ok(())
    }
}

/// A replay asked for a model but no LLM is configured (`REPLY_LLM_URL`); the API
/// refuses such a replay, so this only answers one made before the LLM was removed.
struct NoModel;

#[async_trait]
impl ReplyGenerator for NoModel {
    async fn generate(&self, _ctx: &comment::ports::ReplyContext<'_>) -> Result<String> {
        Err(hookq_core::Error::Invalid(
            "the replay names a model but no LLM is configured (REPLY_LLM_URL)".into(),
        ))
    }
}

/// The worker's directory with the replay's persona, reply template and system prompt
/// in place of the ones the event resolves to.
struct Overriding {
    inner: Arc<dyn Directory>,
    overrides: Overrides,
}

impl Overriding {
    fn template(&self, mut found: (Persona, PersonaTemplate)) -> (Persona, PersonaTemplate) {
        if let Some(t) = &self.overrides.reply_template {
            found.1.reply_template = t.clone();
        }
        if let Some(p) = &self.overrides.system_prompt {
            found.1.system_prompt = Some(p.clone());
        }
        found
    }

    async fn persona_or_override(
        &self,
        found: Option<(Persona, PersonaTemplate)>,
    ) -> Result<Option<(Persona, PersonaTemplate)>> {
        let found = match self.overrides.persona_id {
            Some(id) => self.inner.persona(id).await?,
            None => found,
        };
        Ok(found.map(|f| self.template(f)))
    }

    fn integration(&self, mut i: Integration) -> Integration {
        if let Some(id) = self.overrides.persona_id {
            i.default_persona_id = Some(id);
        }
        i
    }
}

#[async_trait]
impl Directory for Overriding {
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>> {
        self.inner.user_by_external_id(external_id).await
    }

    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>> {
        Ok(self
            .inner
            .integration_by_account(platform, account_id)
            .await?
            .map(|i| self.integration(i)))
    }

    async fn integrations_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
    ) -> Result<Vec<Integration>> {
        Ok(self
            .inner
            .integrations_of_user(user_id, platform)
            .await?
            .into_iter()
            .map(|i| self.integration(i))
            .collect())
    }

    async fn integration(&self, id: Uuid) -> Result<Option<Integration>> {
        Ok(self
            .inner
            .integration(id)
            .await?
            .map(|i| self.integration(i)))
    }

    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>> {
        self.inner.post(integration_id, external_id).await
    }

    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>> {
        self.inner
            .post_of_user(user_id, platform, external_id)
            .await
    }

    async fn persona(&self, id: Uuid) -> Result<Option<(Persona, PersonaTemplate)>> {
        let found = self.inner.persona(id).await?;
        self.persona_or_override(found).await
    }

    async fn persona_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<(Persona, PersonaTemplate)>> {
        let found = self.inner.persona_by_external_id(external_id).await?;
        self.persona_or_override(found).await
    }

    fn observe_version(&self, version: i64) {
        self.inner.observe_version(version);
    }
}
