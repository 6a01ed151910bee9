//! Building and making one delivery request, and classifying its answer.
//!
//! - `callback`: POST of the contract's `comment.reply` JSON to the integration's
//!   `callback_url`, signed per Standard Webhooks with its `whsec_` secret. The body is
//!   the same bytes on every attempt (its `timestamp` is when the reply was staged) and
//!   `webhook-id` is the reply's, so receivers can dedupe; `webhook-timestamp` and the
//!   signature are fresh per attempt.
//! - `graph_api`: comments are answered with `POST {META_GRAPH_URL}/{comment_id}/replies`;
//!   direct messages with the Send API, `POST {META_GRAPH_URL}/{account_id}/messages`
//!   (Messenger/Instagram shape, or WhatsApp Cloud API shape for WhatsApp). The access
//!   token travels in the `Authorization` header, never in the URL.
//!
//! Answers: 2xx delivered; network errors, timeouts, 408, 429 and 5xx are transient
//! (`Retry-After` kept); 410 is permanent and disables the integration's delivery; any
//! other answer (other 4xx, a redirect, which is never followed) is permanent.

use std::{
    error::Error as StdError,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tracing::Instrument;
use url::Url;

use hookq_core::{
    config::Secret,
    delivery::{Endpoint, OutboundReply, REQUEST_TIMEOUT, Sent},
    error::{Error, Result},
    intake::{Source, is_message, signature, storable},
    logs::LogRow,
    resources::{Integration, ReplyDelivery},
};

use super::guard;

enum Auth {
    /// Standard Webhooks signing with the integration's `whsec_` secret.
    Signed {
        secret: Secret,
        webhook_id: String,
    },
    Bearer(Secret),
}

/// One ready-to-send request. Holds secrets, so its `Debug` shows only where it goes.
pub struct Target {
    /// Where it goes, as the delivery tables record it.
    pub endpoint: Endpoint,
    /// The full URL the request is sent to (the endpoint's `shown_url` is what operators
    /// see).
    pub url: Url,
    body: Vec<u8>,
    auth: Auth,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.endpoint.kind)
            .field("url", &self.endpoint.shown_url)
            .field("limit_key", &self.endpoint.limit_key)
            .finish_non_exhaustive()
    }
}

fn shown(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The contract's callback body. `persona_id` and `integration_id` are the ids the admin
/// API returns.
pub fn callback_body(log: &LogRow, reply: &OutboundReply, integration: &Integration) -> Value {
    json!({
        "type": "comment.reply",
        "timestamp": reply.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": {
            "log_id": log.id,
            "source": log.source,
            "event_type": log.event_type,
            "comment_id": log.item_id,
            "post_id": log.post_external_id,
            "sender_id": log.sender_id,
            "reply_text": log.reply_text,
            "persona_id": log.persona_id,
            "integration_id": integration.id,
        }
    })
}

fn permanent(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

impl Target {
    /// The request delivering `log`'s reply through `integration` as it is configured
    /// now. Errors are permanent: the integration lacks what this kind needs.
    pub fn build(
        log: &LogRow,
        reply: &OutboundReply,
        integration: &Integration,
        graph_url: &str,
    ) -> Result<Target> {
        let text = log
            .reply_text
            .as_deref()
            .ok_or_else(|| permanent("the log has no reply text to deliver"))?;
        let who = format!(
            "integration {} ({} {})",
            integration.id, integration.platform, integration.account_id
        );
        match ReplyDelivery::parse(&reply.kind) {
            Some(ReplyDelivery::Callback) => {
                let raw = integration
                    .callback_url
                    .as_deref()
                    .ok_or_else(|| permanent(format!("{who} has no callback_url")))?;
                let url = Url::parse(raw)
                    .map_err(|e| permanent(format!("{who}: callback_url is not a URL: {e}")))?;
                let secret = integration
                    .callback_secret
                    .clone()
                    .ok_or_else(|| permanent(format!("{who} has no callback_secret")))?;
                // Refuse a secret that cannot sign before anything is committed.
                signature::standard_sign(&secret, "check", 0, b"").map_err(|_| {
                    permanent(format!(
                        "{who}: callback_secret is not a whsec_<base64> secret"
                    ))
                })?;
                let body = serde_json::to_vec(&callback_body(log, reply, integration))
                    .map_err(|e| permanent(format!("cannot encode the callback: {e}")))?;
                let host = url.host_str().unwrap_or("").to_owned();
                let port = url.port_or_known_default().unwrap_or(0);
                Ok(Target {
                    endpoint: Endpoint {
                        kind: ReplyDelivery::Callback,
                        shown_url: shown(&url),
                        limit_key: format!("callback:{host}:{port}"),
                    },
                    url,
                    body,
                    auth: Auth::Signed {
                        secret: Secret::new(secret),
                        webhook_id: reply.webhook_id.clone(),
                    },
                })
            }
            Some(ReplyDelivery::GraphApi) => {
                let token = integration
                    .access_token
                    .clone()
                    .ok_or_else(|| permanent(format!("{who} has no access_token")))?;
                let base = graph_url.trim_end_matches('/');
                let (path, body) = if is_message(&log.event_type) {
                    let to = log
                        .sender_id
                        .as_deref()
                        .ok_or_else(|| permanent("the message names no sender to answer"))?;
                    let body = if log.source == Source::Whatsapp {
                        let mut b = json!({
                            "messaging_product": "whatsapp",
                            "recipient_type": "individual",
                            "to": to,
                            "type": "text",
                            "text": {"body": text},
                        });
                        if let Some(mid) = &log.item_id {
                            b["context"] = json!({"message_id": mid});
                        }
                        b
                    } else {
                        json!({
                            "recipient": {"id": to},
                            "messaging_type": "RESPONSE",
                            "message": {"text": text},
                        })
                    };
                    (
                        format!("{}/messages", segment(&integration.account_id)),
                        body,
                    )
                } else {
                    let comment = log
                        .item_id
                        .as_deref()
                        .ok_or_else(|| permanent("the event names no comment to answer"))?;
                    (
                        format!("{}/replies", segment(comment)),
                        json!({"message": text}),
                    )
                };
                let url = Url::parse(&format!("{base}/{path}"))
                    .map_err(|e| permanent(format!("META_GRAPH_URL gives no valid URL: {e}")))?;
                Ok(Target {
                    endpoint: Endpoint {
                        kind: ReplyDelivery::GraphApi,
                        shown_url: shown(&url),
                        limit_key: format!("graph_api:{}", integration.id),
                    },
                    url,
                    body: serde_json::to_vec(&body)
                        .map_err(|e| permanent(format!("cannot encode the reply: {e}")))?,
                    auth: Auth::Bearer(Secret::new(token)),
                })
            }
            _ => Err(permanent(format!(
                "reply kind `{}` is not delivered",
                reply.kind
            ))),
        }
    }

    /// The request body (tests and operators compare it with what receivers got).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// One path segment: ids are opaque, so anything outside the unreserved set is escaped.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The attempt did not deliver. `error.kind()` says whether to retry.
#[derive(Debug)]
pub struct NotSent {
    /// The HTTP status the endpoint answered; `None` when no answer came (network error,
    /// timeout, refused address).
    pub status_code: Option<u16>,
    /// How long the attempt took.
    pub duration: Duration,
    /// Why it failed, transient or permanent.
    pub error: Error,
    /// 410 Gone: the integration's delivery is switched off until re-enabled.
    pub gone: bool,
}

/// The two HTTP clients delivery uses; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    /// For callbacks: private addresses refused at connect time (unless allowed), no
    /// redirects.
    callback: reqwest::Client,
    /// For the Graph API (an operator-configured URL).
    graph: reqwest::Client,
}

impl Sender {
    /// Both clients, each request timing out after [`REQUEST_TIMEOUT`];
    /// `allow_private_callbacks` is `HOOKQ_ALLOW_PRIVATE_CALLBACKS`.
    pub fn new(allow_private_callbacks: bool) -> Result<Self> {
        Self::with_timeout(allow_private_callbacks, REQUEST_TIMEOUT)
    }

    /// Both clients, each request timing out after `timeout`.
    pub fn with_timeout(allow_private_callbacks: bool, timeout: Duration) -> Result<Self> {
        let build = |b: reqwest::ClientBuilder| {
            b.timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("hookq/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {e}")))
        };
        let mut callback = reqwest::Client::builder();
        if !allow_private_callbacks {
            callback = callback.dns_resolver(guard::PublicResolver::shared());
        }
        Ok(Sender {
            callback: build(callback)?,
            graph: build(reqwest::Client::builder())?,
        })
    }

    /// Makes the one request of an attempt. Never retries by itself.
    pub async fn send(&self, target: &Target) -> std::result::Result<Sent, NotSent> {
        let started = Instant::now();
        let kind = match &target.auth {
            Auth::Signed { .. } => "callback",
            Auth::Bearer(_) => "graph_api",
        };
        let span = tracing::info_span!(
            "delivery.request",
            otel.kind = "client",
            target = kind,
            url = %target.endpoint.shown_url,
            http.response.status_code = tracing::field::Empty,
        );
        let out = self.request(target, started).instrument(span.clone()).await;
        let status = match &out {
            Ok(sent) => Some(sent.status_code),
            Err(not_sent) => not_sent.status_code,
        };
        if let Some(code) = status {
            span.record("http.response.status_code", code);
        }
        crate::worker_metrics::delivery_request(kind, status, started.elapsed());
        out
    }

    async fn request(
        &self,
        target: &Target,
        started: Instant,
    ) -> std::result::Result<Sent, NotSent> {
        let req = match &target.auth {
            Auth::Signed { secret, webhook_id } => {
                let ts = Utc::now().timestamp();
                let sig = signature::standard_sign(secret.expose(), webhook_id, ts, &target.body)
                    .map_err(|_| NotSent {
                    status_code: None,
                    duration: started.elapsed(),
                    error: permanent("callback_secret is not a whsec_<base64> secret"),
                    gone: false,
                })?;
                self.callback
                    .post(target.url.clone())
                    .header("webhook-id", webhook_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
            }
            Auth::Bearer(token) => self
                .graph
                .post(target.url.clone())
                .bearer_auth(token.expose()),
        };
        let mut req = req.header("content-type", "application/json");
        if let Some(tp) = crate::telemetry::traceparent() {
            req = req.header("traceparent", tp);
        }
        let resp = req.body(target.body.clone()).send().await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Err(NotSent {
                    status_code: None,
                    duration: started.elapsed(),
                    error: transport_error(&e),
                    gone: false,
                });
            }
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        // A bounded read: only the first bytes matter (an id, or an error to show).
        let body = read_prefix(resp, 16 * 1024).await;
        let duration = started.elapsed();
        if status.is_success() {
            return Ok(Sent {
                status_code: status.as_u16(),
                duration,
                provider_message_id: message_id(&body),
            });
        }
        Err(NotSent {
            status_code: Some(status.as_u16()),
            duration,
            gone: status == StatusCode::GONE,
            error: status_error(status, retry_after, &body),
        })
    }
}

fn transport_error(e: &reqwest::Error) -> Error {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<guard::PrivateAddress>() {
            return Error::Invalid(p.0.clone());
        }
        source = s.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's Display names the URL; ours never carry secrets (tokens go in headers).
    Error::Upstream {
        message: format!("{what}: {}", chain(e)),
        retry_after: None,
    }
}

fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Transient for 408, 429 and 5xx; permanent otherwise (410 included: the caller also
/// disables delivery).
pub fn status_error(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Error {
    let snippet: String = body.trim().chars().take(300).collect();
    let message = if snippet.is_empty() {
        format!("endpoint answered {status}")
    } else {
        format!("endpoint answered {status}: {snippet}")
    };
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Error::Upstream {
            message,
            retry_after,
        }
    } else if status.is_redirection() {
        Error::Invalid(format!("{message} (redirects are not followed)"))
    } else {
        Error::Invalid(message)
    }
}

/// `Retry-After` as seconds or an HTTP date; capped at an hour so one header cannot
/// park a reply for days.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let d = if let Ok(secs) = v.parse::<f64>() {
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))?
    } else {
        let at: DateTime<Utc> = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (at - Utc::now()).to_std().unwrap_or_default()
    };
    Some(d.min(Duration::from_secs(3600)))
}

async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(limit);
    // What is kept of it (an error snippet, an id) goes to `text` columns: no NULs.
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    storable::replace_nul_in(&mut text);
    text
}

fn message_id(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    ["/message_id", "/messages/0/id", "/id", "/data/message_id"]
        .iter()
        .find_map(|p| match v.pointer(p)? {
            Value::String(s) if !s.is_empty() => {
                // A JSON `\u0000` decodes to a NUL.
                let mut id = s.clone();
                storable::replace_nul_in(&mut id);
                Some(id)
            }
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn classification() {
        for (code, transient) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (404, false),
            (410, false),
            (301, false),
        ] {
            let e = status_error(StatusCode::from_u16(code).unwrap(), None, "");
            assert_eq!(!e.is_permanent(), transient, "{code}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn provider_ids() {
        assert_eq!(message_id(r#"{"id":"17890"}"#).as_deref(), Some("17890"));
        assert_eq!(
            message_id(r#"{"recipient_id":"1","message_id":"m_1"}"#).as_deref(),
            Some("m_1")
        );
        assert_eq!(
            message_id(r#"{"messages":[{"id":"wamid.X"}]}"#).as_deref(),
            Some("wamid.X")
        );
        assert_eq!(message_id("ok"), None);
    }
}
