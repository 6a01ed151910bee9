//! `/api/replays` (contract section 13): shadow replays. A replay re-runs the comment use
//! case over stored events with a persona, reply template, system prompt or LLM model
//! changed, delivers nothing and changes no log (`hookq_tasks::replay` says how that is
//! made impossible rather than avoided); these routes make one and show it, each log's
//! old reply or skip next to the new one.

use chrono::{DateTime, Utc};
use hookq_core::replays::{self, Overrides, Replay, ReplayItem};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::ToJSON,
};
use serde_json::Value;
use uuid::Uuid;

use super::{AdminError, AdminResult, OpsState, Page, paging};
use crate::{ApiTags, auth::AdminAuth, error::ApiError, state::AppState};

/// `/api/replays`: make a shadow replay, list them, show one.
pub struct ReplaysApi;

/// Which logs a replay covers: the list's filters (every field optional).
#[derive(Debug, Clone, Default, Object)]
pub struct ReplayFilter {
    /// Only logs in this status.
    pub status: Option<String>,
    /// The list's other filters.
    #[oai(flatten)]
    pub selection: super::logs::LogSelection,
}

/// A replay to make.
#[derive(Debug, Clone, Default, Object)]
pub struct NewReplay {
    /// Which logs (the newest `limit` of those matching).
    pub filter: Option<ReplayFilter>,
    /// At most this many logs, newest first; default 100, at most 10,000.
    pub limit: Option<u32>,
    /// Answer as this persona (and its template, unless `reply_template` or
    /// `system_prompt` is given too).
    pub persona_id: Option<Uuid>,
    /// Render this template instead (`{sender_name}`, `{message}`, `{persona_name}`,
    /// `{post_caption}`); used when no LLM writes the reply.
    #[oai(validator(min_length = 1, max_length = 10000))]
    pub reply_template: Option<String>,
    /// Give the LLM these instructions instead.
    #[oai(validator(min_length = 1, max_length = 20000))]
    pub system_prompt: Option<String>,
    /// Ask this LLM model instead (`REPLY_LLM_URL` must be set).
    #[oai(validator(min_length = 1, max_length = 200))]
    pub model: Option<String>,
}

/// A replay and its progress.
#[derive(Debug, Clone, Object)]
pub struct ReplayView {
    /// Its id (`GET /api/replays/{id}`).
    pub id: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The filter it was made with, as given.
    pub filter: Value,
    /// The persona it answers as, if changed.
    #[oai(nullable)]
    pub persona_id: Option<Uuid>,
    /// The reply template it renders, if changed.
    #[oai(nullable)]
    pub reply_template: Option<String>,
    /// The system prompt it gives the LLM, if changed.
    #[oai(nullable)]
    pub system_prompt: Option<String>,
    /// The LLM model it asks, if changed.
    #[oai(nullable)]
    pub model: Option<String>,
    /// Logs it covers.
    pub total: i32,
    /// Logs replayed so far (`done` or `failed`).
    pub finished: i64,
    /// Logs whose replay failed (the error is on the item).
    pub failed: i64,
    /// Replayed logs whose new reply or skip differs from the old one.
    pub changed: i64,
    /// True once every log is replayed.
    pub done: bool,
    /// When the last log was replayed, once all are.
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Replay> for ReplayView {
    fn from(r: Replay) -> Self {
        ReplayView {
            id: r.id,
            created_at: r.created_at,
            filter: r.filter,
            persona_id: r.overrides.persona_id,
            reply_template: r.overrides.reply_template,
            system_prompt: r.overrides.system_prompt,
            model: r.overrides.model,
            total: r.total,
            finished: r.finished,
            failed: r.failed,
            changed: r.changed,
            done: r.finished >= i64::from(r.total),
            finished_at: r.finished_at,
        }
    }
}

/// One log of a replay: what it had, what the replay got.
#[derive(Debug, Clone, Object)]
pub struct ReplayItemView {
    /// The log (`GET /api/webhook-logs/{id}`).
    pub log_id: i64,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// The event's text (first 200 characters); `null` if the log was deleted since.
    #[oai(nullable)]
    pub message_preview: Option<String>,
    /// The log's status when the replay was made.
    pub old_status: String,
    /// Its outcome then: `replied`, `skipped` or `recorded`.
    #[oai(nullable)]
    pub old_outcome: Option<String>,
    /// Its skip reason then.
    #[oai(nullable)]
    pub old_skip_reason: Option<String>,
    /// Its reply then.
    #[oai(nullable)]
    pub old_reply: Option<String>,
    /// The replay's outcome.
    #[oai(nullable)]
    pub new_outcome: Option<String>,
    /// The replay's skip reason.
    #[oai(nullable)]
    pub new_skip_reason: Option<String>,
    /// The replay's reply.
    #[oai(nullable)]
    pub new_reply: Option<String>,
    /// Why the replay's run failed.
    #[oai(nullable)]
    pub error: Option<String>,
    /// When the replay's run finished.
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<ReplayItem> for ReplayItemView {
    fn from(i: ReplayItem) -> Self {
        ReplayItemView {
            log_id: i.log_id,
            status: i.status,
            message_preview: i.message_preview,
            old_status: i.old_status,
            old_outcome: i.old_outcome,
            old_skip_reason: i.old_skip_reason,
            old_reply: i.old_reply,
            new_outcome: i.new_outcome,
            new_skip_reason: i.new_skip_reason,
            new_reply: i.new_reply,
            error: i.error,
            finished_at: i.finished_at,
        }
    }
}

/// A replay with a page of its items (newest log first).
#[derive(Debug, Object)]
pub struct ReplayDetail {
    /// The replay and its progress.
    pub replay: ReplayView,
    /// Its items, old next to new.
    pub items: Page<ReplayItemView>,
}

/// `201` with the replay made.
#[derive(ApiResponse)]
pub enum ReplayCreated {
    /// Made; its chunks are queued behind live work.
    #[oai(status = 201)]
    Created(Json<ReplayView>),
}

fn invalid(detail: impl Into<String>) -> AdminError {
    ApiError::from(hookq_core::Error::Invalid(detail.into())).into()
}

#[OpenApi(prefix_path = "/api/replays", tag = "ApiTags::Admin")]
impl ReplaysApi {
    /// Makes a shadow replay of the newest `limit` logs matching `filter`, trying the
    /// given persona, reply template, system prompt or model instead. It runs as queue
    /// jobs behind live work, delivers nothing and changes no log; `GET
    /// /api/replays/{id}` shows its progress and each log's old and new result.
    #[oai(path = "/", method = "post")]
    async fn create(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        ops: Data<&OpsState>,
        body: Json<NewReplay>,
    ) -> Result<ReplayCreated, AdminError> {
        let b = body.0;
        let f = b.filter.unwrap_or_default();
        let filter_json = f.to_json().unwrap_or(Value::Null);
        let filter = f.selection.filter(f.status)?;
        if b.model.is_some() && state.config.llm.is_none() {
            return Err(invalid(
                "model needs an LLM: REPLY_LLM_URL is not set on this hookq",
            ));
        }
        if let Some(id) = b.persona_id {
            match hookq_core::resources::get_persona(&state.pool, id).await {
                Ok(_) => {}
                Err(hookq_core::Error::NotFound) => {
                    return Err(ApiError::from(hookq_core::Error::UnknownReference(format!(
                        "persona {id} does not exist"
                    )))
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let overrides = Overrides {
            persona_id: b.persona_id,
            reply_template: b.reply_template,
            system_prompt: b.system_prompt,
            model: b.model,
        };
        let limit = i64::from(b.limit.unwrap_or(100).clamp(1, 10_000));
        let (id, _) = hookq_tasks::replay::start(
            &state.pool,
            &ops.notifier,
            &filter,
            &filter_json,
            limit,
            &overrides,
        )
        .await?;
        let made = replays::get(&state.pool, id)
            .await?
            .ok_or(hookq_core::Error::NotFound)?;
        Ok(ReplayCreated::Created(Json(made.into())))
    }

    /// Replays, newest first, with their progress.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<ReplayView>> {
        let (limit, offset) = paging(limit.0, offset.0);
        let (items, total) = replays::list(state.reads(), limit.into(), offset.into()).await?;
        Ok(Json(Page {
            items: items.into_iter().map(ReplayView::from).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// One replay: its progress and a page of its logs (newest first), each with the
    /// log's old status, outcome, skip reason and reply next to the replay's.
    #[oai(path = "/:id", method = "get")]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        id: Path<i64>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<ReplayDetail> {
        let replay = replays::get(state.reads(), id.0)
            .await?
            .ok_or(hookq_core::Error::NotFound)?;
        let (limit, offset) = paging(limit.0, offset.0);
        let (items, total) =
            replays::items(state.reads(), id.0, limit.into(), offset.into()).await?;
        Ok(Json(ReplayDetail {
            replay: replay.into(),
            items: Page {
                items: items.into_iter().map(ReplayItemView::from).collect(),
                total,
                limit,
                offset,
            },
        }))
    }
}
