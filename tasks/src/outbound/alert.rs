//! Operational events to `HOOKQ_ALERT_URL` (contract section 12), signed per Standard
//! Webhooks with `HOOKQ_ALERT_SECRET` like reply callbacks. The URL is the operator's
//! own, so it is not passed through the SSRF guard that tenants' callback URLs are.

use std::time::Duration;

use chrono::Utc;
use hookq_core::{config::Secret, error::Error, intake::signature};

use super::send::{retry_after, status_error};

/// Posts alert events; cheap to clone.
#[derive(Clone)]
pub struct AlertSender {
    http: reqwest::Client,
    url: String,
    secret: Secret,
}

impl AlertSender {
    /// A sender to `url`, signing with `secret` (a `whsec_` secret), each request timing
    /// out after 10 s.
    pub fn new(url: String, secret: Secret) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(AlertSender { http, url, secret })
    }

    /// One signed POST of `body` with `webhook-id: id`. Transient errors (no answer, 408,
    /// 429, 5xx) are retried by the job that calls this.
    pub async fn send(&self, id: &str, body: &[u8]) -> Result<(), Error> {
        let ts = Utc::now().timestamp();
        let sig = signature::standard_sign(self.secret.expose(), id, ts, body)
            .map_err(|_| Error::Invalid("HOOKQ_ALERT_SECRET is not a whsec_ secret".into()))?;
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Error::Upstream {
                message: format!("alert not delivered: {e}"),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        Err(status_error(status, wait, &text))
    }
}
