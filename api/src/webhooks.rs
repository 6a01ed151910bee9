//! The webhook routes: Meta's verification handshake and signed event intake.
//!
//! A body reaches these handlers only once [`SignedBody`] has checked its signature on
//! the raw bytes; the parsers then work on the decoded value (and replace any NUL in it
//! with U+FFFD, so such an event is stored rather than refused: see
//! [`storable`](hookq_core::intake::storable)). An event the ingest seam still finds
//! unstorable is that request's own `422`, never a `503` for it or for the requests that
//! shared its batch.

use hookq_core::{
    intake::signature,
    intake::{ParsedEvent, parse_instagram, parse_whatsapp},
};
use hookq_tasks::intake::IngestError;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Query,
    payload::{Json, PlainText},
};

use crate::{
    ApiTags,
    error::{ApiError, ErrorBody, WebhookError},
    signed::{Meta, SignedBody, Whatsapp},
    state::AppState,
};

/// `/webhooks/instagram` and `/webhooks/whatsapp`: Meta's handshake and signed event
/// intake.
pub struct WebhooksApi;

/// The answer to a stored webhook.
#[derive(Debug, Object)]
pub struct IngestAck {
    /// Events stored now, each with a job enqueued.
    pub accepted: u32,
    /// Events already known by their dedup key: nothing new stored or enqueued.
    pub duplicates: u32,
    /// Log ids, new and already known, in payload order.
    pub ids: Vec<i64>,
    /// `stored`, `duplicate` (every event was already known) or `partly_duplicate`.
    pub status: String,
}

/// The answers to Meta's `GET` handshake.
#[derive(ApiResponse)]
pub enum HandshakeResponse {
    /// The token matched: the challenge, echoed byte for byte.
    #[oai(status = 200)]
    Ok(PlainText<String>),
    /// Wrong mode or token, or `META_VERIFY_TOKEN` not configured.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
}

#[OpenApi]
impl WebhooksApi {
    /// Meta's subscription handshake for Instagram/Facebook.
    #[oai(
        path = "/webhooks/instagram",
        method = "get",
        tag = "ApiTags::Webhooks"
    )]
    async fn instagram_handshake(
        &self,
        state: Data<&AppState>,
        #[oai(name = "hub.mode")] mode: Query<Option<String>>,
        #[oai(name = "hub.verify_token")] token: Query<Option<String>>,
        #[oai(name = "hub.challenge")] challenge: Query<Option<String>>,
    ) -> HandshakeResponse {
        handshake(&state, mode.0, token.0, challenge.0)
    }

    /// Instagram and Facebook events: the compact comment shape and Meta's
    /// `entry[].changes[]` / `entry[].messaging[]` shapes, batches included. Answers
    /// `200` only once every event is stored with its job, in one transaction.
    #[oai(
        path = "/webhooks/instagram",
        method = "post",
        tag = "ApiTags::Webhooks"
    )]
    async fn instagram(
        &self,
        state: Data<&AppState>,
        body: SignedBody<Meta>,
    ) -> Result<Json<IngestAck>, WebhookError> {
        let events = parse_instagram(&body.bytes).map_err(ApiError::from)?;
        ingest(&state, &events).await
    }

    /// The same handshake for the WhatsApp route.
    #[oai(path = "/webhooks/whatsapp", method = "get", tag = "ApiTags::Webhooks")]
    async fn whatsapp_handshake(
        &self,
        state: Data<&AppState>,
        #[oai(name = "hub.mode")] mode: Query<Option<String>>,
        #[oai(name = "hub.verify_token")] token: Query<Option<String>>,
        #[oai(name = "hub.challenge")] challenge: Query<Option<String>>,
    ) -> HandshakeResponse {
        handshake(&state, mode.0, token.0, challenge.0)
    }

    /// WhatsApp events: Bridge events (`message.received`, `message.sent`,
    /// `message.failed`, `connection.status`) and Cloud API payloads.
    #[oai(
        path = "/webhooks/whatsapp",
        method = "post",
        tag = "ApiTags::Webhooks"
    )]
    async fn whatsapp(
        &self,
        state: Data<&AppState>,
        body: SignedBody<Whatsapp>,
    ) -> Result<Json<IngestAck>, WebhookError> {
        let events = parse_whatsapp(&body.bytes).map_err(ApiError::from)?;
        ingest(&state, &events).await
    }
}

async fn ingest(state: &AppState, events: &[ParsedEvent]) -> Result<Json<IngestAck>, WebhookError> {
    // Known down: answer now rather than after the pool's acquire timeout.
    if state.db.is_down() {
        return Err(ApiError::Unavailable("the event could not be stored; retry later").into());
    }
    // With traces on, the webhook span's traceparent: the job's run continues the trace.
    let correlation = hookq_tasks::telemetry::correlation_id();
    let done = state
        .ingestor
        .ingest(events, Some(&correlation))
        .await
        .inspect_err(|e| {
            if let IngestError::Refused(detail) = e {
                tracing::warn!(correlation_id = %correlation, %detail, "webhook refused");
            }
        })
        .map_err(ApiError::from)?;
    tracing::info!(
        correlation_id = %correlation,
        accepted = done.accepted,
        duplicates = done.duplicates,
        "webhook stored"
    );
    let status = match (done.accepted, done.duplicates) {
        (_, 0) => "stored",
        (0, _) => "duplicate",
        _ => "partly_duplicate",
    };
    Ok(Json(IngestAck {
        accepted: done.accepted as u32,
        duplicates: done.duplicates as u32,
        ids: done.ids,
        status: status.into(),
    }))
}

fn handshake(
    state: &AppState,
    mode: Option<String>,
    token: Option<String>,
    challenge: Option<String>,
) -> HandshakeResponse {
    let forbidden = |detail: &str| {
        HandshakeResponse::Forbidden(Json(ApiError::Forbidden(detail.into()).body()))
    };
    let Some(expected) = &state.config.meta_verify_token else {
        return forbidden("META_VERIFY_TOKEN is not configured on this server");
    };
    if mode.as_deref() != Some("subscribe") {
        return forbidden("hub.mode must be subscribe");
    }
    if !token.is_some_and(|t| signature::token_eq(expected.expose(), &t)) {
        return forbidden("hub.verify_token does not match");
    }
    HandshakeResponse::Ok(PlainText(challenge.unwrap_or_default()))
}
