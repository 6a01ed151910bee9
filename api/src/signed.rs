//! The one extractor that authenticates webhooks: it reads the raw body (capped at
//! `HOOKQ_MAX_BODY_BYTES`) and checks its HMAC signature on exactly those bytes, before
//! anything parses them.

use std::marker::PhantomData;

use bytes::Bytes;
use hookq_core::{config::Config, intake::signature};
use poem::{Request, RequestBody, error::ReadBodyError};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef},
};

use crate::{error::ApiError, state::AppState};

/// `X-Hub-Signature-256`: Meta's signature header, `sha256=<hex>`.
pub const META_HEADER: &str = "x-hub-signature-256";
/// `X-Webhook-Signature`: the WhatsApp Bridge's signature header, bare hex.
pub const BRIDGE_HEADER: &str = "x-webhook-signature";

/// Which signatures a route accepts.
pub trait SignedRoute: Send + Sync + 'static {
    /// The request body's description in the OpenAPI document.
    const DESCRIPTION: &'static str;
    /// Picks the key and the header value to check, before the body is read: a request
    /// that cannot be authenticated is refused without reading it.
    fn credentials<'r>(config: &'r Config, req: &'r Request) -> Result<Credentials<'r>, ApiError>;
}

/// The key and the signature header value a request must match, and the prefix the
/// header's hex follows.
pub struct Credentials<'r> {
    key: &'r str,
    header: &'r str,
    prefix: &'static str,
}

fn header<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/instagram`: Meta's `X-Hub-Signature-256` with `META_APP_SECRET`.
pub struct Meta;

impl SignedRoute for Meta {
    const DESCRIPTION: &'static str = "The webhook body exactly as Meta sent it, signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with META_APP_SECRET>`.";

    fn credentials<'r>(config: &'r Config, req: &'r Request) -> Result<Credentials<'r>, ApiError> {
        let key = config.meta_app_secret.as_ref().ok_or({
            ApiError::Unauthorized("META_APP_SECRET is not configured on this server")
        })?;
        let header = header(req, META_HEADER)
            .ok_or(ApiError::Unauthorized("missing X-Hub-Signature-256 header"))?;
        Ok(Credentials {
            key: key.expose(),
            header,
            prefix: "sha256=",
        })
    }
}

/// `POST /webhooks/whatsapp`: the Bridge's `X-Webhook-Signature` (hex, with
/// `WHATSAPP_WEBHOOK_SECRET`) or the Cloud API's `X-Hub-Signature-256` (with
/// `META_APP_SECRET`).
pub struct Whatsapp;

impl SignedRoute for Whatsapp {
    const DESCRIPTION: &'static str = "A WhatsApp Bridge event signed with `X-Webhook-Signature: <hex HMAC-SHA256 with WHATSAPP_WEBHOOK_SECRET>`, or a Cloud API `whatsapp_business_account` payload signed with `X-Hub-Signature-256: sha256=<hex>` (META_APP_SECRET).";

    fn credentials<'r>(config: &'r Config, req: &'r Request) -> Result<Credentials<'r>, ApiError> {
        if let Some(header) = header(req, BRIDGE_HEADER) {
            let key = config.whatsapp_webhook_secret.as_ref().ok_or({
                ApiError::Unauthorized("WHATSAPP_WEBHOOK_SECRET is not configured on this server")
            })?;
            return Ok(Credentials {
                key: key.expose(),
                header,
                prefix: "",
            });
        }
        if header(req, META_HEADER).is_some() {
            return Meta::credentials(config, req);
        }
        Err(ApiError::Unauthorized(
            "missing X-Webhook-Signature or X-Hub-Signature-256 header",
        ))
    }
}

/// A verified raw body.
pub struct SignedBody<R> {
    /// The body exactly as received, its signature verified.
    pub bytes: Bytes,
    _route: PhantomData<R>,
}

impl<'a, R: SignedRoute> ApiExtractor<'a> for SignedBody<R> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some(R::DESCRIPTION),
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("object"))),
            }],
            required: true,
        })
    }

    async fn from_request(
        req: &'a Request,
        body: &mut RequestBody,
        _: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let state = req.data::<AppState>().ok_or_else(|| {
            ApiError::Internal("the API's state is not installed on this route".into())
        })?;
        let creds = R::credentials(&state.config, req)?;
        let limit = state.config.max_body_bytes;
        let too_large = || {
            ApiError::TooLarge(format!(
                "body over the {limit}-byte limit (HOOKQ_MAX_BODY_BYTES)"
            ))
        };
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large().into());
        }
        // A sender that dribbles its body (slow loris) is cut off at the deadline.
        let read_timeout = state.config.body_read_timeout;
        let bytes = tokio::time::timeout(read_timeout, body.take()?.into_bytes_limit(limit))
            .await
            .map_err(|_| {
                ApiError::BodyTimeout(format!(
                    "the body did not arrive within {} s (HOOKQ_BODY_READ_TIMEOUT)",
                    read_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| match e {
                ReadBodyError::PayloadTooLarge => too_large(),
                other => ApiError::BadBody(other.to_string()),
            })?;
        if !signature::verify_hex(creds.key.as_bytes(), &bytes, creds.header, creds.prefix) {
            return Err(ApiError::Unauthorized("signature does not match the body").into());
        }
        Ok(SignedBody {
            bytes,
            _route: PhantomData,
        })
    }
}

/// Middleware for every other route with a body (the admin API, the dashboard): the body
/// is read up front under the same limit and deadline as a webhook's, so no route reads
/// an unbounded body into memory (poem-openapi's JSON payloads have no limit of their
/// own). The webhook routes read theirs in [`SignedBody`], after the signature header
/// check.
pub async fn limit_body<E: poem::Endpoint>(
    next: E,
    mut req: Request,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    if req.uri().path().starts_with("/webhooks/") {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let Some(config) = req.data::<AppState>().map(|s| s.config.clone()) else {
        return next.call(req).await.map(IntoResponse::into_response);
    };
    let limit = config.max_body_bytes;
    let too_large = || {
        ApiError::TooLarge(format!(
            "body over the {limit}-byte limit (HOOKQ_MAX_BODY_BYTES)"
        ))
    };
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().into());
    }
    let body = req.take_body();
    let bytes = tokio::time::timeout(config.body_read_timeout, body.into_bytes_limit(limit))
        .await
        .map_err(|_| {
            ApiError::BodyTimeout(format!(
                "the body did not arrive within {} s (HOOKQ_BODY_READ_TIMEOUT)",
                config.body_read_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| match e {
            ReadBodyError::PayloadTooLarge => too_large(),
            other => ApiError::BadBody(other.to_string()),
        })?;
    req.set_body(bytes);
    next.call(req).await.map(IntoResponse::into_response)
}
