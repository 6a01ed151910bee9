//! The comment use case: from a stored log to a recorded outcome.
//!
//! Resolve the user, integration, persona (with template) and post; apply the content
//! rules; generate the reply; hand it to the [`ReplyOutbox`], which stores it and, in the
//! same transaction, either finishes the log (`none` delivery) or stages its delivery
//! job. Events that are only recorded never fail for want of an integration; delivery
//! reports update the outbound reply they name, and connection statuses are kept per
//! connection. A plain async function over traits: no HTTP, no queue types. The caller
//! (a job handler) passes the attempt number and the delay the queue will use if this
//! run fails, and gets back the error so the queue can retry or dead-letter.
//!
//! `fakes` holds an in-memory world implementing every port (compiled for tests, or
//! with the `fakes` feature); `tests` runs the contract's cases over it as a table.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use uuid::Uuid;

#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod ports;
pub mod reply;
pub mod rules;
#[cfg(test)]
mod tests;

use crate::{
    comment::{
        ports::{
            DeliveryReports, Directory, LogStore, ReplyContext, ReplyGenerator, ReplyOutbox,
            ReplyRecord, ReplyStored,
        },
        rules::RuleInput,
    },
    delivery,
    error::{Error, FailureKind, Result},
    intake::{self, Handling, storable},
    logs::{LogRow, Outcome, SkipReason},
    resources::{Integration, Persona, PersonaTemplate, Post, ReplyDelivery, User},
};

/// What the use case needs from the outside world.
#[derive(Clone)]
pub struct Deps {
    /// Looks up users, integrations, personas (with templates) and posts.
    pub directory: Arc<dyn Directory>,
    /// Starts and finishes the log row (through `logs::transitions`).
    pub logs: Arc<dyn LogStore>,
    /// Writes the reply: the LLM when configured, else the persona template.
    pub generator: Arc<dyn ReplyGenerator>,
    /// Stores a reply and stages its delivery atomically (implemented by the tasks crate).
    pub outbox: Arc<dyn ReplyOutbox>,
    /// Applies delivery reports and connection statuses.
    pub reports: Arc<dyn DeliveryReports>,
    /// A direct message older than this is not answered (`window_closed`).
    pub message_reply_window: Duration,
}

/// The run this is, as the queue counts it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// 1-based count of runs of this log's job.
    pub number: u32,
    /// The delay before the next run should this one fail transiently; `None` when
    /// this is the last attempt.
    pub retry_in: Option<Duration>,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Replied and finished (`none` delivery, or already delivered).
    Replied {
        /// The reply text, as recorded in `reply_text`.
        reply: String,
    },
    /// The reply is stored and its delivery job staged; the delivery job finishes the log.
    Delivering {
        /// The reply text, as stored in `outbound_replies`.
        reply: String,
    },
    /// Processed without a reply, for this reason (`outcome = skipped`).
    Skipped(SkipReason),
    /// An event that never gets a reply, stored as `outcome = recorded`.
    Recorded,
    /// The log was already finished (a duplicate or late run): nothing done.
    AlreadyFinished,
}

impl Done {
    /// A short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Done::Replied { .. } => "replied",
            Done::Delivering { .. } => "delivering",
            Done::Skipped(_) => "skipped",
            Done::Recorded => "recorded",
            Done::AlreadyFinished => "already_finished",
        }
    }
}

/// The data an event resolved to.
struct Resolved {
    integration: Option<Integration>,
    post: Option<Post>,
    persona: Option<(Persona, PersonaTemplate)>,
}

/// Processes one log. On failure the log is already marked `failed` (with
/// `next_retry_at`) or `dead_letter`, and the error is returned for the queue.
///
/// Records the log's `correlation_id` (the id of the request that stored it) on the
/// caller's current span once the start transition has returned the row; a span
/// declaring that field (the worker's `process_webhook`) carries it on every line below.
pub async fn process_webhook(deps: &Deps, log_id: i64, attempt: Attempt) -> Result<Done> {
    let Some(started) = deps.logs.start(log_id, attempt.number).await? else {
        return Ok(Done::AlreadyFinished);
    };
    tracing::Span::current().record("correlation_id", started.log.correlation_id.as_deref());
    // Before any lookup: a cached directory drops what an admin write made stale.
    deps.directory.observe_version(started.directory_version);
    let log = started.log;
    match run(deps, &log).await {
        Ok(done) => Ok(done),
        Err(err) => {
            record_failure(deps, log_id, &err, attempt).await?;
            Err(err)
        }
    }
}

async fn record_failure(deps: &Deps, log_id: i64, err: &Error, attempt: Attempt) -> Result<()> {
    // Messages may quote a provider's or generator's text, NULs included.
    let mut msg = err.to_string();
    storable::replace_nul_in(&mut msg);
    match (err.kind(), attempt.retry_in) {
        (FailureKind::Transient { retry_after }, Some(planned)) => {
            let delay = retry_after.unwrap_or(planned);
            let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            deps.logs.fail(log_id, &msg, at).await?;
        }
        (FailureKind::Transient { .. }, None) => {
            deps.logs
                .dead_letter(
                    log_id,
                    &format!("{msg} (after {} attempts)", attempt.number),
                )
                .await?;
        }
        (FailureKind::Permanent, _) => {
            deps.logs.dead_letter(log_id, &msg).await?;
        }
    }
    Ok(())
}

async fn run(deps: &Deps, log: &LogRow) -> Result<Done> {
    match log.handling {
        Handling::Record => record(deps, log).await,
        Handling::DeliveryStatus => delivery_status(deps, log).await,
        Handling::Reply => reply(deps, log).await,
    }
}

/// The integration an event's account names, if any. Recording never fails for want of
/// one: it is attached when known.
async fn integration_of_account(
    deps: &Deps,
    log: &LogRow,
    account: Option<&str>,
) -> Result<Option<Uuid>> {
    Ok(match account {
        Some(acc) => deps
            .directory
            .integration_by_account(log.source.as_str(), acc)
            .await?
            .map(|i| i.id),
        None => None,
    })
}

async fn record(deps: &Deps, log: &LogRow) -> Result<Done> {
    let mut integration_id = integration_of_account(deps, log, log.account_id.as_deref()).await?;
    if log.event_type == "connection.status"
        && let Some(report) = delivery::connection_report(log)
    {
        if integration_id.is_none() {
            integration_id =
                integration_of_account(deps, log, report.phone_number.as_deref()).await?;
        }
        deps.reports
            .record_connection(log.id, integration_id, &report)
            .await?;
    }
    deps.logs
        .finish(log.id, Outcome::Recorded, None, integration_id)
        .await?;
    Ok(Done::Recorded)
}

/// Contract section 9: a report is routed by the outbound reply whose provider message
/// id it names, else by its account.
async fn delivery_status(deps: &Deps, log: &LogRow) -> Result<Done> {
    let matched = match delivery::provider_report(log) {
        Some(report) => deps.reports.apply_report(&report).await?,
        None => None,
    };
    let integration_id = match matched.and_then(|m| m.integration_id) {
        Some(id) => Some(id),
        None => integration_of_account(deps, log, log.account_id.as_deref()).await?,
    };
    deps.logs
        .finish(log.id, Outcome::Recorded, None, integration_id)
        .await?;
    Ok(Done::Recorded)
}

async fn reply(deps: &Deps, log: &LogRow) -> Result<Done> {
    let r = resolve(deps, log).await?;
    let integration_id = r.integration.as_ref().map(|i| i.id);
    let (persona, template) = r
        .persona
        .as_ref()
        .ok_or_else(|| Error::Missing(missing_persona(log, &r)))?;

    let own = log.is_own
        || matches!((&log.sender_id, r.integration.as_ref()), (Some(s), Some(i)) if *s == i.account_id);
    let skip = rules::check(&RuleInput {
        text: rule_text(log),
        is_own: own,
        replies_enabled: r.post.as_ref().is_none_or(|p| p.replies_enabled),
        blocklist: &persona.blocklist,
    });
    let skip = skip.or_else(|| window_closed(log, deps.message_reply_window));
    if let Some(reason) = skip {
        deps.logs
            .finish(log.id, Outcome::Skipped, Some(reason), integration_id)
            .await?;
        return Ok(Done::Skipped(reason));
    }

    // A reply stored by an earlier run is reused, so a reply is generated once per log
    // whatever crashes (and an operator resend delivers the very same text).
    let mut reply = match &log.reply_text {
        Some(text) => text.clone(),
        None => {
            deps.generator
                .generate(&ReplyContext {
                    sender_name: log
                        .sender_name
                        .as_deref()
                        .or(log.sender_id.as_deref())
                        .unwrap_or(""),
                    message: log.message_text.as_deref().unwrap_or(""),
                    persona_name: &persona.name,
                    post_caption: r.post.as_ref().map(|p| p.caption.as_str()).unwrap_or(""),
                    reply_template: &template.reply_template,
                    system_prompt: template.system_prompt.as_deref(),
                })
                .await?
        }
    };
    // A generator's text may hold NULs, which no `text` column stores.
    storable::replace_nul_in(&mut reply);
    let delivery = r
        .integration
        .as_ref()
        .and_then(|i| ReplyDelivery::parse(&i.reply_delivery))
        .unwrap_or(ReplyDelivery::None);
    let recorded = deps
        .outbox
        .record_reply(&ReplyRecord {
            log_id: log.id,
            text: &reply,
            integration_id,
            persona_id: Some(persona.id),
            delivery,
        })
        .await?;
    Ok(match recorded {
        ReplyStored::Finished => Done::Replied { reply },
        ReplyStored::Delivering | ReplyStored::AlreadyDelivering => Done::Delivering { reply },
        ReplyStored::NotProcessing => Done::AlreadyFinished,
    })
}

/// `window_closed` for a direct message whose own timestamp is older than `window` now
/// (contract section 10). A message without a timestamp is answered.
fn window_closed(log: &LogRow, window: Duration) -> Option<SkipReason> {
    let at = log.occurred_at?;
    let age = (Utc::now() - at).to_std().unwrap_or_default();
    (intake::is_message(&log.event_type) && age > window).then_some(SkipReason::WindowClosed)
}

/// Marks content the platform sent without text, for the rules.
const NO_TEXT_CONTENT: &str = "[content without text]";

/// The text the content rules judge. A mention notification carries only ids (its text
/// has to be fetched from the Graph API), and an attachment, sticker or location has
/// content but no text: neither is `empty`, so they get a neutral marker instead.
fn rule_text(log: &LogRow) -> Option<&str> {
    if log
        .message_text
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty())
    {
        return log.message_text.as_deref();
    }
    let p = &log.payload;
    let attachment = [
        "/entry/0/messaging/0/message/attachments",
        "/entry/0/changes/0/value/message/attachments",
        "/data/media",
        "/data/attachments",
    ]
    .iter()
    .any(|ptr| p.pointer(ptr).is_some_and(|v| !v.is_null()))
        || p.pointer("/entry/0/changes/0/value/messages/0/type")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| t != "text" && t != "unsupported");
    if log.event_type == "mention" || attachment {
        Some(NO_TEXT_CONTENT)
    } else {
        log.message_text.as_deref()
    }
}

fn missing_persona(log: &LogRow, r: &Resolved) -> String {
    match (&log.persona_external_id, &r.integration) {
        (Some(ext), _) => format!("persona '{ext}' not found"),
        (None, Some(i)) => format!(
            "no persona: the post has none and integration {} ({} {}) has no default persona",
            i.id, i.platform, i.account_id
        ),
        (None, None) => "no persona for this event".into(),
    }
}

/// Contract section 4: the account names the integration (or, for the compact shape,
/// the user does); the persona is the post's, else the one named, else the
/// integration's default. An unknown post is not an error.
async fn resolve(deps: &Deps, log: &LogRow) -> Result<Resolved> {
    let dir = &deps.directory;
    let platform = log.source.as_str();
    let (integration, post) = match (&log.account_id, &log.user_external_id) {
        (Some(account), _) => {
            let integration = dir
                .integration_by_account(platform, account)
                .await?
                .ok_or_else(|| {
                    Error::Missing(format!(
                        "integration for {platform} account '{account}' not found"
                    ))
                })?;
            let post = match &log.post_external_id {
                Some(p) => dir.post(integration.id, p).await?,
                None => None,
            };
            (integration, post)
        }
        (None, Some(user_ext)) => {
            let user: User = dir
                .user_by_external_id(user_ext)
                .await?
                .ok_or_else(|| Error::Missing(format!("user '{user_ext}' not found")))?;
            let post = match &log.post_external_id {
                Some(p) => dir.post_of_user(user.id, platform, p).await?,
                None => None,
            };
            let integration = match &post {
                Some(p) => dir.integration(p.integration_id).await?,
                None => None,
            };
            let integration = match integration {
                Some(i) => i,
                None => {
                    let mut all = dir.integrations_of_user(user.id, platform).await?;
                    match all.len() {
                        1 => all.remove(0),
                        0 => {
                            return Err(Error::Missing(format!(
                                "integration not found: user '{user_ext}' has no {platform} integration"
                            )));
                        }
                        n => {
                            return Err(Error::Missing(format!(
                                "integration ambiguous: user '{user_ext}' has {n} {platform} integrations and the post is unknown"
                            )));
                        }
                    }
                }
            };
            (integration, post)
        }
        (None, None) => return Err(Error::Missing("event names no account or user".into())),
    };

    let persona_id: Option<Uuid> = post.as_ref().and_then(|p| p.persona_id);
    let persona = match (persona_id, &log.persona_external_id) {
        (Some(id), _) => dir.persona(id).await?,
        (None, Some(ext)) => Some(
            dir.persona_by_external_id(ext)
                .await?
                .ok_or_else(|| Error::Missing(format!("persona '{ext}' not found")))?,
        ),
        (None, None) => match integration.default_persona_id {
            Some(id) => dir.persona(id).await?,
            None => None,
        },
    };
    Ok(Resolved {
        integration: Some(integration),
        post,
        persona,
    })
}
