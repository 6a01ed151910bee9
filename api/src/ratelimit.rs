//! Per-source rate limiting: a token bucket per client address and route group, so one
//! noisy or hostile sender cannot take the API from everyone else.
//!
//! Groups and their variables (each `N/s`, `N/min` or `N/h`; unset or `off` is no limit,
//! the default): `HOOKQ_RATE_LIMIT_WEBHOOKS` for `/webhooks/*`, `HOOKQ_RATE_LIMIT_API`
//! for `/api/*` and `/dashboard`, `HOOKQ_RATE_LIMIT_OTHER` for the rest. A source may
//! burst up to `N` requests, then gets one more every `period / N`. Over the limit it is
//! answered `429` with `Retry-After` (whole seconds) and the JSON error body.
//!
//! The source is the TCP peer address. Behind a reverse proxy every request comes from
//! the proxy, so limit there instead (or leave these off).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use hookq_core::config::{RateLimit, RateLimits};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use crate::error::ApiError;
use poem::error::ResponseError;

/// Buckets kept at most; past this, full (idle) buckets are dropped, and if that is not
/// enough, all of them (which only ever lets requests through).
const MAX_BUCKETS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Group {
    Webhooks,
    Api,
    Other,
}

fn group(path: &str) -> Group {
    if path.starts_with("/webhooks/") || path == "/webhooks" {
        Group::Webhooks
    } else if path.starts_with("/api/") || path.starts_with("/dashboard") {
        Group::Api
    } else {
        Group::Other
    }
}

fn limit_of(limits: &RateLimits, g: Group) -> Option<RateLimit> {
    match g {
        Group::Webhooks => limits.webhooks,
        Group::Api => limits.api,
        Group::Other => limits.other,
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The middleware: `Route::new()…with(RateLimiter::new(config.rate_limits))`.
#[derive(Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Arc<Mutex<HashMap<(Group, IpAddr), Bucket>>>,
}

impl RateLimiter {
    /// A limiter enforcing `limits`, with no request counted yet.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            buckets: Arc::default(),
        }
    }

    fn limit(&self, g: Group) -> Option<RateLimit> {
        limit_of(&self.limits, g)
    }

    /// Takes a token for `ip` in `g`; `Err(seconds)` to wait when there is none.
    fn take(&self, g: Group, limit: RateLimit, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let cap = f64::from(limit.requests);
        let rate = cap / limit.per.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&(g, ip)) {
            let limits = self.limits;
            buckets.retain(|(g, _), b| {
                let Some(l) = limit_of(&limits, *g) else {
                    return false;
                };
                let r = f64::from(l.requests) / l.per.as_secs_f64();
                b.tokens + now.duration_since(b.at).as_secs_f64() * r < f64::from(l.requests)
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let b = buckets.entry((g, ip)).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

impl<E: Endpoint> Middleware<E> for RateLimiter {
    type Output = RateLimited<E>;
    fn transform(&self, ep: E) -> Self::Output {
        RateLimited {
            inner: ep,
            limiter: self.clone(),
        }
    }
}

/// An endpoint behind the [`RateLimiter`]: over its group's limit a client gets `429`
/// with `Retry-After`.
pub struct RateLimited<E> {
    inner: E,
    limiter: RateLimiter,
}

impl<E: Endpoint> Endpoint for RateLimited<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let g = group(req.uri().path());
        if let (Some(limit), Some(addr)) = (
            self.limiter.limit(g),
            req.remote_addr().as_socket_addr().copied(),
        ) && let Err(wait) = self.limiter.take(g, limit, addr.ip(), Instant::now())
        {
            metrics::counter!("hookq_rate_limited_total").increment(1);
            let mut resp = ApiError::RateLimited(format!(
                "more than {} requests per {} s from {}: retry in {wait} s",
                limit.requests,
                limit.per.as_secs(),
                addr.ip()
            ))
            .as_response();
            resp.headers_mut().insert(
                poem::http::header::RETRY_AFTER,
                poem::http::HeaderValue::from(wait),
            );
            return Ok(resp);
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_per_source() {
        let limit = RateLimit {
            requests: 2,
            per: Duration::from_secs(10),
        };
        let l = RateLimiter::new(RateLimits {
            webhooks: Some(limit),
            ..RateLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.take(Group::Webhooks, limit, a, t0).is_ok());
        assert!(l.take(Group::Webhooks, limit, a, t0).is_ok());
        assert_eq!(l.take(Group::Webhooks, limit, a, t0), Err(5));
        assert!(l.take(Group::Webhooks, limit, b, t0).is_ok(), "per source");
        assert!(
            l.take(Group::Webhooks, limit, a, t0 + Duration::from_secs(5))
                .is_ok()
        );
        assert_eq!(group("/webhooks/instagram"), Group::Webhooks);
        assert_eq!(group("/api/webhook-logs"), Group::Api);
        assert_eq!(group("/health"), Group::Other);
    }
}
