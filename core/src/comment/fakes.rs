//! In-memory fakes of the comment use case's five ports, in one [`FakeWorld`], so
//! [`process_webhook`](super::process_webhook) can be run in microseconds with no
//! database, queue or HTTP: arrange a world, insert a log, run, read what changed.
//!
//! Each fake keeps the rules of the adapter it stands for, because a fake that accepts
//! what the real one refuses proves nothing:
//!
//! - the log store moves a [`LogRow`] only from the from-states declared in
//!   [`transitions`] (it asks the same [`Transition`] consts the SQL binds), and sets the
//!   columns each statement sets (`attempts`, `error_message`, `next_retry_at`,
//!   `outcome`, `skip_reason`, `integration_id` kept when `None` is passed);
//! - the outbox does what `hookq_tasks`' `PgOutbox` does: `none` delivery stores the
//!   reply and finishes the log ([`ReplyStored::Finished`]); `callback`/`graph_api` store
//!   it, stage a [`FakeOutbound`] (or re-arm a `failed`/`unknown` one), record a
//!   delivery job and move the log to `pending` ([`ReplyStored::Delivering`]); a live
//!   delivery answers [`ReplyStored::AlreadyDelivering`] and a delivered one finishes the
//!   log;
//! - delivery reports match the newest outbound reply with their provider message id and
//!   never let a lower-ranked status (`sent` < `delivered` < `read` < `failed`)
//!   overwrite a higher one; a connection keeps its newest status;
//! - the directory answers by the same keys as `PgDirectory` (user external id,
//!   platform + account, the user's integrations in creation order, post by
//!   integration + external id or by user + platform + external id), and records every
//!   version [`Directory::observe_version`] is told;
//! - the generator follows a [`Script`]: the persona template rendered as
//!   [`TemplateRenderer`](super::reply::TemplateRenderer) does (the default), a fixed
//!   text, or an error of either kind, and records every context it is asked with.
//!
//! Everything lives behind one `std::sync::Mutex` ([`FakeWorld::state`]), never held
//! across an `.await`. Built for the use case's own tests and, with the `fakes` feature,
//! for other crates' tests.

// Test doubles: their fields mirror the tables and ports they stand in for, which are
// documented where they are defined.
#![allow(missing_docs)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Deps,
    ports::{
        ConnectionReport, DeliveryReports, Directory, LogStore, Matched, ProviderReport,
        ReplyContext, ReplyGenerator, ReplyOutbox, ReplyRecord, ReplyStored, Started,
    },
    reply,
};
use crate::{
    error::{Error, Result},
    intake::Handling,
    logs::{
        LogRow, LogStatus, Outcome, SkipReason,
        transitions::{self, Transition},
    },
    resources::{Integration, Persona, PersonaTemplate, Post, ReplyDelivery, User},
};

/// What the fake generator answers.
#[derive(Debug, Clone, Default)]
pub enum Script {
    /// The persona's template rendered with the context, as the default generator does.
    #[default]
    Template,
    /// This text, whatever the context.
    Text(String),
    /// [`Error::Upstream`]: transient (a timeout, a 5xx, a 429 with `Retry-After`).
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// [`Error::Invalid`]: permanent (the LLM endpoint refused the request).
    Permanent(String),
}

/// One call of the generator, with the context it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorCall {
    pub sender_name: String,
    pub message: String,
    pub persona_name: String,
    pub post_caption: String,
    pub reply_template: String,
    pub system_prompt: Option<String>,
}

/// A reply the outbox stored on its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    pub log_id: i64,
    pub text: String,
    pub integration_id: Option<Uuid>,
    pub persona_id: Option<Uuid>,
    pub delivery: ReplyDelivery,
}

/// An outbound reply (a row of `outbound_replies`), as far as the use case can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOutbound {
    pub id: i64,
    pub log_id: i64,
    pub integration_id: Option<Uuid>,
    pub kind: ReplyDelivery,
    /// `pending`, `sending`, `retrying`, `delivered`, `failed` or `unknown`.
    pub status: String,
    pub provider_message_id: Option<String>,
    pub provider_status: Option<String>,
    pub provider_error: Option<String>,
    pub provider_status_at: Option<DateTime<Utc>>,
}

/// A connection's latest status (a row of `connection_statuses`).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConnection {
    pub log_id: i64,
    pub integration_id: Option<Uuid>,
    pub report: ConnectionReport,
}

/// Everything the fakes hold. Public so a test can arrange or inspect anything the
/// helpers on [`FakeWorld`] do not cover.
#[derive(Default)]
pub struct State {
    pub users: Vec<User>,
    /// In creation order (the order `integrations_of_user` answers in).
    pub integrations: Vec<Integration>,
    pub personas: Vec<(Persona, PersonaTemplate)>,
    /// In creation order (the first match wins in `post_of_user`).
    pub posts: Vec<Post>,
    pub logs: BTreeMap<i64, LogRow>,
    /// What [`LogStore::start`] reports as the directory version.
    pub directory_version: i64,
    /// Every version the use case passed to [`Directory::observe_version`].
    pub observed_versions: Vec<i64>,
    pub script: Script,
    pub generator_calls: Vec<GeneratorCall>,
    /// Every reply the outbox stored, in order.
    pub replies: Vec<StoredReply>,
    pub outbound: Vec<FakeOutbound>,
    /// The log id of every delivery job the outbox enqueued, in order.
    pub delivery_jobs: Vec<i64>,
    /// Every report the use case applied, matched or not, in order.
    pub reports: Vec<ProviderReport>,
    /// The latest status per connection key.
    pub connections: BTreeMap<String, FakeConnection>,
    next_id: i64,
}

impl State {
    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The world the comment use case runs in, in memory; implements all five ports.
#[derive(Default)]
pub struct FakeWorld {
    state: Mutex<State>,
}

/// A `pending` log with nothing resolved yet: the columns ingest fills are empty, and
/// a test sets what its event carries with struct update syntax.
pub fn log_row(id: i64, source: &str, event_type: &str, handling: Handling) -> LogRow {
    let now = Utc::now();
    LogRow {
        id,
        dedup_key: format!("fake:{source}:{event_type}:{id}"),
        source: crate::intake::Source::parse(source).unwrap_or(crate::intake::Source::Instagram),
        event_type: event_type.into(),
        handling,
        account_id: None,
        user_external_id: None,
        persona_external_id: None,
        post_external_id: None,
        item_id: None,
        sender_id: None,
        sender_name: None,
        message_text: None,
        is_own: false,
        occurred_at: None,
        payload: serde_json::json!({}),
        integration_id: None,
        status: LogStatus::Pending,
        attempts: 0,
        error_message: None,
        outcome: None,
        skip_reason: None,
        reply_text: None,
        persona_id: None,
        received_at: now,
        started_at: None,
        processed_at: None,
        next_retry_at: None,
        job_id: Some(id),
        duplicate_count: 0,
        correlation_id: None,
        updated_at: now,
        conversation_key: None,
    }
}

impl FakeWorld {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeWorld::default())
    }

    /// The use case's dependencies, every port this world.
    pub fn deps(self: &Arc<Self>) -> Deps {
        Deps {
            directory: self.clone(),
            logs: self.clone(),
            generator: self.clone(),
            outbox: self.clone(),
            reports: self.clone(),
            message_reply_window: std::time::Duration::from_secs(24 * 3600),
        }
    }

    /// Everything, locked. Do not hold the guard across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock left whole values behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----------------------------------------------------------------- arranging

    pub fn add_user(&self, external_id: &str) -> User {
        let now = Utc::now();
        let user = User {
            id: Uuid::new_v4(),
            external_id: external_id.into(),
            name: external_id.into(),
            created_at: now,
            updated_at: now,
        };
        self.state().users.push(user.clone());
        user
    }

    /// A persona with its own template; answers the persona's id.
    pub fn add_persona(
        &self,
        user_id: Uuid,
        external_id: &str,
        name: &str,
        reply_template: &str,
        blocklist: &[&str],
    ) -> Uuid {
        let now = Utc::now();
        let template = PersonaTemplate {
            id: Uuid::new_v4(),
            name: format!("{name} template"),
            reply_template: reply_template.into(),
            system_prompt: None,
            created_at: now,
            updated_at: now,
        };
        let persona = Persona {
            id: Uuid::new_v4(),
            external_id: external_id.into(),
            user_id,
            template_id: template.id,
            name: name.into(),
            blocklist: blocklist.iter().map(|w| (*w).to_owned()).collect(),
            created_at: now,
            updated_at: now,
        };
        let id = persona.id;
        self.state().personas.push((persona, template));
        id
    }

    pub fn add_integration(
        &self,
        user_id: Uuid,
        platform: &str,
        account_id: &str,
        delivery: ReplyDelivery,
        default_persona_id: Option<Uuid>,
    ) -> Integration {
        let now = Utc::now();
        let integration = Integration {
            id: Uuid::new_v4(),
            user_id,
            platform: platform.into(),
            account_id: account_id.into(),
            access_token: (delivery == ReplyDelivery::GraphApi).then(|| "token".into()),
            reply_delivery: delivery.as_str().into(),
            callback_url: (delivery == ReplyDelivery::Callback)
                .then(|| "https://receiver.example/hook".into()),
            callback_secret: (delivery == ReplyDelivery::Callback).then(|| "whsec_c2VjcmV0".into()),
            default_persona_id,
            delivery_enabled: true,
            delivery_disabled_reason: None,
            paused: false,
            reply_rate_limit: None,
            max_concurrent: None,
            created_at: now,
            updated_at: now,
        };
        self.state().integrations.push(integration.clone());
        integration
    }

    pub fn add_post(
        &self,
        integration_id: Uuid,
        external_id: &str,
        caption: &str,
        persona_id: Option<Uuid>,
        replies_enabled: bool,
    ) -> Post {
        let now = Utc::now();
        let post = Post {
            id: Uuid::new_v4(),
            external_id: external_id.into(),
            integration_id,
            persona_id,
            caption: caption.into(),
            replies_enabled,
            created_at: now,
            updated_at: now,
        };
        self.state().posts.push(post.clone());
        post
    }

    /// Stores `log` as it is (status included); answers its id.
    pub fn insert_log(&self, log: LogRow) -> i64 {
        let id = log.id;
        self.state().logs.insert(id, log);
        id
    }

    /// Sets what the generator answers from now on.
    pub fn script(&self, script: Script) {
        self.state().script = script;
    }

    /// An outbound reply for `log_id`, as an earlier run's outbox and delivery job left
    /// it; answers its id.
    pub fn add_outbound(
        &self,
        log_id: i64,
        integration_id: Option<Uuid>,
        kind: ReplyDelivery,
        status: &str,
        provider_message_id: Option<&str>,
    ) -> i64 {
        let mut s = self.state();
        let id = s.next_id();
        s.outbound.push(FakeOutbound {
            id,
            log_id,
            integration_id,
            kind,
            status: status.into(),
            provider_message_id: provider_message_id.map(str::to_owned),
            provider_status: None,
            provider_error: None,
            provider_status_at: None,
        });
        id
    }

    // ---------------------------------------------------------------- inspecting

    pub fn log(&self, id: i64) -> Option<LogRow> {
        self.state().logs.get(&id).cloned()
    }

    pub fn integration_of_account(&self, account_id: &str) -> Option<Integration> {
        let s = self.state();
        s.integrations
            .iter()
            .find(|i| i.account_id == account_id)
            .cloned()
    }

    pub fn persona_id(&self, external_id: &str) -> Option<Uuid> {
        let s = self.state();
        s.personas
            .iter()
            .find(|(p, _)| p.external_id == external_id)
            .map(|(p, _)| p.id)
    }

    pub fn replies(&self) -> Vec<StoredReply> {
        self.state().replies.clone()
    }

    pub fn generator_calls(&self) -> Vec<GeneratorCall> {
        self.state().generator_calls.clone()
    }

    pub fn outbound_of(&self, log_id: i64) -> Option<FakeOutbound> {
        let s = self.state();
        s.outbound.iter().find(|o| o.log_id == log_id).cloned()
    }
}

// --------------------------------------------------------------------- directory

#[async_trait]
impl Directory for FakeWorld {
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>> {
        let s = self.state();
        Ok(s.users
            .iter()
            .find(|u| u.external_id == external_id)
            .cloned())
    }

    async fn integration_by_account(
        &self,
        platform: &str,
        account_id: &str,
    ) -> Result<Option<Integration>> {
        let s = self.state();
        Ok(s.integrations
            .iter()
            .find(|i| i.platform == platform && i.account_id == account_id)
            .cloned())
    }

    async fn integrations_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
    ) -> Result<Vec<Integration>> {
        let s = self.state();
        Ok(s.integrations
            .iter()
            .filter(|i| i.user_id == user_id && i.platform == platform)
            .cloned()
            .collect())
    }

    async fn integration(&self, id: Uuid) -> Result<Option<Integration>> {
        let s = self.state();
        Ok(s.integrations.iter().find(|i| i.id == id).cloned())
    }

    async fn post(&self, integration_id: Uuid, external_id: &str) -> Result<Option<Post>> {
        let s = self.state();
        Ok(s.posts
            .iter()
            .find(|p| p.integration_id == integration_id && p.external_id == external_id)
            .cloned())
    }

    async fn post_of_user(
        &self,
        user_id: Uuid,
        platform: &str,
        external_id: &str,
    ) -> Result<Option<Post>> {
        let s = self.state();
        Ok(s.posts
            .iter()
            .find(|p| {
                p.external_id == external_id
                    && s.integrations.iter().any(|i| {
                        i.id == p.integration_id && i.user_id == user_id && i.platform == platform
                    })
            })
            .cloned())
    }

    async fn persona(&self, id: Uuid) -> Result<Option<(Persona, PersonaTemplate)>> {
        let s = self.state();
        Ok(s.personas.iter().find(|(p, _)| p.id == id).cloned())
    }

    async fn persona_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<(Persona, PersonaTemplate)>> {
        let s = self.state();
        Ok(s.personas
            .iter()
            .find(|(p, _)| p.external_id == external_id)
            .cloned())
    }

    fn observe_version(&self, version: i64) {
        self.state().observed_versions.push(version);
    }
}

// -------------------------------------------------------------------------- logs

/// Whether `row` may take `t` (an unknown status takes none).
fn allows(row: &LogRow, t: Transition) -> bool {
    t.allows(row.status)
}

fn set_status(row: &mut LogRow, to: LogStatus) {
    row.status = to;
    row.updated_at = Utc::now();
}

/// [`transitions::FINISH_REPLIED`]'s columns.
fn finish_replied(row: &mut LogRow) {
    set_status(row, LogStatus::Processed);
    row.outcome = Some(Outcome::Replied);
    row.skip_reason = None;
    row.error_message = None;
    row.next_retry_at = None;
    row.processed_at = Some(Utc::now());
}

#[async_trait]
impl LogStore for FakeWorld {
    async fn start(&self, id: i64, attempt: u32) -> Result<Option<Started>> {
        let mut s = self.state();
        let directory_version = s.directory_version;
        let Some(row) = s.logs.get_mut(&id) else {
            return Ok(None);
        };
        if !allows(row, transitions::START) {
            return Ok(None);
        }
        set_status(row, LogStatus::Processing);
        row.started_at = Some(Utc::now());
        row.next_retry_at = None;
        row.attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
        Ok(Some(Started {
            log: row.clone(),
            directory_version,
        }))
    }

    async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        skip: Option<SkipReason>,
        integration_id: Option<Uuid>,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some(row) = s.logs.get_mut(&id) else {
            return Ok(false);
        };
        if !allows(row, transitions::FINISH) {
            return Ok(false);
        }
        set_status(row, LogStatus::Processed);
        row.outcome = Some(outcome);
        row.skip_reason = skip;
        row.integration_id = integration_id.or(row.integration_id);
        row.error_message = None;
        row.processed_at = Some(Utc::now());
        Ok(true)
    }

    async fn fail(&self, id: i64, error: &str, next_retry_at: DateTime<Utc>) -> Result<bool> {
        let mut s = self.state();
        let Some(row) = s.logs.get_mut(&id) else {
            return Ok(false);
        };
        if !allows(row, transitions::SCHEDULE_RETRY) {
            return Ok(false);
        }
        set_status(row, LogStatus::Failed);
        row.error_message = Some(error.into());
        row.next_retry_at = Some(next_retry_at);
        Ok(true)
    }

    async fn dead_letter(&self, id: i64, error: &str) -> Result<bool> {
        let mut s = self.state();
        let Some(row) = s.logs.get_mut(&id) else {
            return Ok(false);
        };
        if !allows(row, transitions::DEAD_LETTER) {
            return Ok(false);
        }
        set_status(row, LogStatus::DeadLetter);
        row.error_message = Some(error.into());
        row.next_retry_at = None;
        row.processed_at = Some(Utc::now());
        Ok(true)
    }
}

// ---------------------------------------------------------------------- replies

#[async_trait]
impl ReplyGenerator for FakeWorld {
    async fn generate(&self, ctx: &ReplyContext<'_>) -> Result<String> {
        let mut s = self.state();
        s.generator_calls.push(GeneratorCall {
            sender_name: ctx.sender_name.into(),
            message: ctx.message.into(),
            persona_name: ctx.persona_name.into(),
            post_caption: ctx.post_caption.into(),
            reply_template: ctx.reply_template.into(),
            system_prompt: ctx.system_prompt.map(str::to_owned),
        });
        match &s.script {
            Script::Template => Ok(reply::render(ctx)),
            Script::Text(text) => Ok(text.clone()),
            Script::Transient {
                message,
                retry_after,
            } => Err(Error::Upstream {
                message: message.clone(),
                retry_after: *retry_after,
            }),
            Script::Permanent(message) => Err(Error::Invalid(message.clone())),
        }
    }
}

#[async_trait]
impl ReplyOutbox for FakeWorld {
    async fn record_reply(&self, r: &ReplyRecord<'_>) -> Result<ReplyStored> {
        let mut guard = self.state();
        let s = &mut *guard;
        let Some(row) = s.logs.get_mut(&r.log_id) else {
            return Ok(ReplyStored::NotProcessing);
        };
        // STORE_REPLY and FINISH_REPLIED start from the same state: `processing`.
        if !allows(row, transitions::STORE_REPLY) {
            return Ok(ReplyStored::NotProcessing);
        }
        row.reply_text = Some(r.text.into());
        row.integration_id = r.integration_id.or(row.integration_id);
        row.persona_id = r.persona_id.or(row.persona_id);
        row.updated_at = Utc::now();
        s.replies.push(StoredReply {
            log_id: r.log_id,
            text: r.text.into(),
            integration_id: r.integration_id,
            persona_id: r.persona_id,
            delivery: r.delivery,
        });
        if r.delivery == ReplyDelivery::None {
            finish_replied(row);
            return Ok(ReplyStored::Finished);
        }
        // `delivery::store::stage`: one outbound reply per log.
        let staged = match s.outbound.iter_mut().find(|o| o.log_id == r.log_id) {
            None => {
                s.next_id += 1;
                s.outbound.push(FakeOutbound {
                    id: s.next_id,
                    log_id: r.log_id,
                    integration_id: r.integration_id,
                    kind: r.delivery,
                    status: "pending".into(),
                    provider_message_id: None,
                    provider_status: None,
                    provider_error: None,
                    provider_status_at: None,
                });
                true
            }
            Some(o) if matches!(o.status.as_str(), "failed" | "unknown") => {
                o.status = "pending".into();
                o.kind = r.delivery;
                o.integration_id = r.integration_id;
                true
            }
            Some(o) if o.status == "delivered" => {
                finish_replied(row);
                return Ok(ReplyStored::Finished);
            }
            Some(_) => false,
        };
        if !staged {
            return Ok(ReplyStored::AlreadyDelivering);
        }
        s.delivery_jobs.push(r.log_id);
        // AWAIT_DELIVERY: no worker holds the log while its delivery job waits.
        set_status(row, LogStatus::Pending);
        Ok(ReplyStored::Delivering)
    }
}

/// The order platforms report in; a report never overwrites a higher-ranked one.
fn rank(status: &str) -> u8 {
    match status {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => 0,
    }
}

#[async_trait]
impl DeliveryReports for FakeWorld {
    async fn apply_report(&self, report: &ProviderReport) -> Result<Option<Matched>> {
        let mut s = self.state();
        s.reports.push(report.clone());
        let Some(o) = s
            .outbound
            .iter_mut()
            .filter(|o| o.provider_message_id.as_deref() == Some(report.message_id.as_str()))
            .max_by_key(|o| o.id)
        else {
            return Ok(None);
        };
        if o.provider_status
            .as_deref()
            .is_none_or(|old| rank(&report.status) >= rank(old))
        {
            o.provider_status = Some(report.status.clone());
            o.provider_error = report.error.clone().or(o.provider_error.take());
            o.provider_status_at = Some(report.at.unwrap_or_else(Utc::now));
        }
        Ok(Some(Matched {
            reply_id: o.id,
            integration_id: o.integration_id,
        }))
    }

    async fn record_connection(
        &self,
        log_id: i64,
        integration_id: Option<Uuid>,
        report: &ConnectionReport,
    ) -> Result<()> {
        let mut s = self.state();
        let newer = match s.connections.get(&report.connection_key) {
            None => true,
            Some(old) => match (old.report.at, report.at) {
                (Some(old_at), Some(at)) => at >= old_at,
                _ => true,
            },
        };
        if newer {
            let kept = s
                .connections
                .get(&report.connection_key)
                .and_then(|c| c.integration_id);
            s.connections.insert(
                report.connection_key.clone(),
                FakeConnection {
                    log_id,
                    integration_id: integration_id.or(kept),
                    report: report.clone(),
                },
            );
        }
        Ok(())
    }
}
