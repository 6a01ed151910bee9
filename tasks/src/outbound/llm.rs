//! Replies written by an OpenAI-compatible chat-completions endpoint (`REPLY_LLM_*`).
//!
//! The persona template's `system_prompt` is the system message; the user message gives
//! the post caption, who wrote and what they wrote. One request per generation, with a
//! timeout; the use case stores the text before delivery, so a log is generated once.
//!
//! Failures are transient (the log's job retries with backoff, then dead-letters) unless
//! the endpoint says the request itself is wrong: a 4xx other than 408 and 429 is
//! permanent. There is deliberately no fallback to the template: a reply the operator
//! configured an LLM for is never silently replaced by another text.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tracing::Instrument;

use hookq_core::{
    comment::ports::{ReplyContext, ReplyGenerator},
    config::{LlmConfig, Secret},
    error::{Error, Result},
};

use super::send::retry_after;

/// How long one completion may take.
pub const LLM_TIMEOUT: Duration = Duration::from_secs(30);

/// The system prompt when the persona template has none.
const DEFAULT_SYSTEM_PROMPT: &str = "You answer comments and messages on behalf of a brand. Reply briefly, warmly and helpfully, in the language of the message.";

/// A chat-completions client. Its `Debug` never shows the API key.
pub struct LlmGenerator {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
}

impl std::fmt::Debug for LlmGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmGenerator")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl LlmGenerator {
    /// A client for `config`'s endpoint, each request timing out after [`LLM_TIMEOUT`].
    pub fn new(config: &LlmConfig) -> Result<Self> {
        Self::with_timeout(config, LLM_TIMEOUT)
    }

    /// A client for `config`'s endpoint whose requests time out after `timeout`.
    pub fn with_timeout(config: &LlmConfig, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("hookq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the LLM HTTP client: {e}")))?;
        Ok(LlmGenerator {
            http,
            endpoint: format!("{}/chat/completions", config.url.trim_end_matches('/')),
            model: config.model.clone(),
            api_key: config.api_key.clone(),
        })
    }

    /// The request body for one reply.
    pub fn request(&self, ctx: &ReplyContext<'_>) -> Value {
        let system = ctx
            .system_prompt
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SYSTEM_PROMPT);
        let mut user = String::new();
        if !ctx.persona_name.is_empty() {
            user.push_str(&format!("You are {}.\n", ctx.persona_name));
        }
        if !ctx.post_caption.is_empty() {
            user.push_str(&format!("Post caption: {}\n", ctx.post_caption));
        }
        let who = if ctx.sender_name.is_empty() {
            "someone"
        } else {
            ctx.sender_name
        };
        user.push_str(&format!(
            "Comment from {who}: {}\n\nWrite the reply only.",
            ctx.message
        ));
        json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        })
    }
}

fn transient(message: String, retry_after: Option<Duration>) -> Error {
    Error::Upstream {
        message,
        retry_after,
    }
}

#[async_trait]
impl ReplyGenerator for LlmGenerator {
    async fn generate(&self, ctx: &ReplyContext<'_>) -> Result<String> {
        let mut req = self.http.post(&self.endpoint).json(&self.request(ctx));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose());
        }
        let span = tracing::info_span!(
            "llm.request",
            otel.kind = "client",
            model = %self.model,
            http.response.status_code = tracing::field::Empty,
        );
        if let Some(tp) = span.in_scope(crate::telemetry::traceparent) {
            req = req.header("traceparent", tp);
        }
        let started = std::time::Instant::now();
        let resp = req.send().instrument(span.clone()).await.map_err(|e| {
            crate::worker_metrics::llm_request(None, started.elapsed());
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            transient(format!("LLM request {what}: {e}"), None)
        })?;
        let status = resp.status();
        span.record("http.response.status_code", status.as_u16());
        let wait = retry_after(resp.headers());
        let text = resp.text().await;
        crate::worker_metrics::llm_request(Some(status.as_u16()), started.elapsed());
        let text = text.map_err(|e| transient(format!("LLM answer unreadable: {e}"), None))?;
        let snippet: String = text.trim().chars().take(300).collect();
        if status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS
        {
            return Err(Error::Invalid(format!(
                "LLM endpoint refused the request ({status}): {snippet}"
            )));
        }
        if !status.is_success() {
            return Err(transient(
                format!("LLM endpoint answered {status}: {snippet}"),
                wait,
            ));
        }
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| transient(format!("LLM answer is not JSON: {e}"), None))?;
        let reply = body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("");
        if reply.is_empty() {
            return Err(transient(
                format!("LLM answer has no choices[0].message.content: {snippet}"),
                None,
            ));
        }
        Ok(reply.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_prompt_caption_and_comment() {
        let g = LlmGenerator::new(&LlmConfig {
            url: "http://x/v1/".into(),
            model: "m".into(),
            api_key: Some(Secret::new("sk-secret")),
        })
        .unwrap();
        assert_eq!(g.endpoint, "http://x/v1/chat/completions");
        assert!(!format!("{g:?}").contains("sk-secret"));
        let ctx = ReplyContext {
            sender_name: "Ana",
            message: "Is it waterproof?",
            persona_name: "Ava",
            post_caption: "Spring jacket",
            reply_template: "",
            system_prompt: Some("Be nice."),
        };
        let r = g.request(&ctx);
        assert_eq!(r["model"], "m");
        assert_eq!(r["messages"][0]["content"], "Be nice.");
        let user = r["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("Spring jacket") && user.contains("Ana: Is it waterproof?"));
    }
}
