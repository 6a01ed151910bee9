//! `GET /metrics`: Prometheus text.
//!
//! Two kinds of series, because workers run in other processes than the API:
//!
//! - **Measured here** (counters and histograms of the `metrics` crate, rendered by
//!   `metrics-exporter-prometheus`): webhook requests by source and result, signature
//!   failures, webhook request latency. Per API process; Prometheus sums instances.
//! - **Read from the database at scrape time** (gauges, written below by hand so a
//!   label set that disappears disappears from the output too): logs by source, event
//!   type and status (dead letters included), jobs by state, queue depth and oldest
//!   pending age, and processing time and attempts of the logs processed in the last
//!   five minutes. These are the same whichever process is scraped, and cover every
//!   worker process without each needing an HTTP listener. The whole-table counts
//!   come from one index-only scan, cached for two seconds.
//!
//! Every family has one name, one `# HELP`, one `# TYPE`, and only the samples its type
//! allows (a test reads the whole exposition with a strict check, the `prometheus-parse`
//! crate and, when installed, `promtool check metrics`). The processing-time window is
//! two families: `hookq_processing_recent_seconds`, a histogram (`_bucket{le}`, `_sum`,
//! `_count`), and `hookq_processing_recent_quantile_seconds`, a summary of the
//! database's percentiles (`{quantile}`, `_sum`, `_count`). They were once one family
//! declared `gauge` with all of those samples, which Prometheus's parser split into five
//! untyped families.
//!
//! DB pool use is this process's pool.

use std::{fmt::Write, sync::OnceLock, time::Instant};

use tracing::Instrument;

use hookq_core::logs::{LogStatus, reads as stats};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::{Endpoint, IntoResponse, Request, Response, http::StatusCode, web::Data};
use poem_openapi::{ApiResponse, OpenApi, payload::PlainText};

use crate::{ApiTags, admin::OpsState, error::ErrorBody, state::AppState};

/// The window of the processing-time series.
const WINDOW_MINUTES: i64 = 5;

/// Histogram buckets (seconds) of request latency and processing time.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide recorder, installed on first use. If something else installed a
/// global recorder first, our series still render (empty) rather than failing.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Histograms keep raw samples until an upkeep: without one, an API nobody
        // scrapes would grow by every webhook's latency sample.
        hookq_tasks::worker_metrics::keep_up(handle.clone());
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows database gauges only"
            );
        } else {
            describe();
        }
        handle
    })
}

/// The `# HELP` lines of the series measured here.
fn describe() {
    // Jobs run in this process too when a test runs the pipeline beside the API.
    hookq_tasks::worker_metrics::describe();
    metrics::describe_counter!(
        "hookq_webhooks_received_total",
        "Webhook requests received by this process, by source and the answer given (result)."
    );
    metrics::describe_counter!(
        "hookq_webhook_signature_failures_total",
        "Webhook requests refused for a missing or wrong signature, by source."
    );
    metrics::describe_histogram!(
        "hookq_webhook_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a webhook request, by source."
    );
    metrics::describe_counter!(
        "hookq_rate_limited_total",
        "Requests refused by the per-client rate limit."
    );
}

/// Counts one webhook request and its latency. `result` is what the sender was told.
pub fn record_webhook(source: &'static str, status: StatusCode, started: Instant) {
    let result = match status.as_u16() {
        200 => "accepted",
        400 => "invalid_json",
        401 => "invalid_signature",
        403 => "forbidden",
        413 => "too_large",
        422 => "unknown_shape",
        503 => "unavailable",
        _ if status.is_server_error() => "error",
        _ => "rejected",
    };
    metrics::counter!("hookq_webhooks_received_total", "source" => source, "result" => result)
        .increment(1);
    if status == StatusCode::UNAUTHORIZED {
        metrics::counter!("hookq_webhook_signature_failures_total", "source" => source)
            .increment(1);
    }
    metrics::histogram!("hookq_webhook_request_duration_seconds", "source" => source)
        .record(started.elapsed().as_secs_f64());
}

/// Middleware for the webhook routes: counts every POST by source and answer, each in a
/// `webhook` span.
pub async fn count_webhooks<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let source: Option<&'static str> = match (req.method().as_str(), req.uri().path()) {
        ("POST", "/webhooks/instagram") => Some("instagram"),
        ("POST", "/webhooks/whatsapp") => Some("whatsapp"),
        _ => None,
    };
    let Some(source) = source else {
        return next.call(req).await.map(IntoResponse::into_response);
    };
    // The request's span: it continues the sender's W3C trace context, if any, and is
    // the parent of everything the event causes (see hookq_tasks::telemetry).
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        source,
        http.response.status_code = tracing::field::Empty,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    hookq_tasks::telemetry::continue_in(&span, header("traceparent"), header("tracestate"));
    let started = Instant::now();
    let out = next
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let status = match &out {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    span.record("http.response.status_code", status.as_u16());
    record_webhook(source, status, started);
    out
}

/// `GET /metrics`: Prometheus text, read from the database and the API's own counters.
pub struct MetricsApi;

/// `GET /metrics`' answers.
#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text exposition format 0.0.4.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4")]
    Ok(PlainText<String>),
    /// The database could not be read.
    #[oai(status = 503)]
    Unavailable(poem_openapi::payload::Json<ErrorBody>),
}

#[OpenApi]
impl MetricsApi {
    /// Prometheus metrics: webhooks received by source and result, signature failures,
    /// logs by source/event type/status, jobs by state, queue depth and oldest pending
    /// age, processing time and attempts, DB pool use.
    #[oai(path = "/metrics", method = "get", tag = "ApiTags::Health")]
    async fn metrics(&self, state: Data<&AppState>, ops: Data<&OpsState>) -> MetricsResponse {
        match render(&state, &ops).await {
            Ok(text) => MetricsResponse::Ok(PlainText(text)),
            Err(e) => MetricsResponse::Unavailable(poem_openapi::payload::Json(ErrorBody {
                error: "unavailable".into(),
                detail: format!("metrics could not be read from the database: {e}"),
            })),
        }
    }
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn render(
    state: &AppState,
    ops: &OpsState,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    // The gauges read the replica when there is one; the pool figures are this process's
    // own (primary) pool.
    let pool = state.reads();
    let h = handle();
    h.run_upkeep();
    let mut out = h.render();

    let groups = ops
        .counts
        .get(async || stats::group_counts(pool).await)
        .await?;
    let queue = hookq_tasks::queue::queue_stats(pool).await?;
    let since = stats::db_now(pool).await? - chrono::Duration::minutes(WINDOW_MINUTES);
    let timing = stats::timing(pool, since).await?;
    let buckets = processing_buckets(pool, since).await?;
    let deliveries = stats::delivery_results(pool, since).await?;

    let w = &mut out;
    writeln!(
        w,
        "# HELP hookq_webhook_logs Stored webhook logs by source, event type and status (database, at scrape time)."
    )?;
    writeln!(w, "# TYPE hookq_webhook_logs gauge")?;
    for g in &groups {
        writeln!(
            w,
            "hookq_webhook_logs{{source=\"{}\",event_type=\"{}\",status=\"{}\"}} {}",
            label(g.source.as_str()),
            label(&g.event_type),
            label(g.status.as_str()),
            g.count
        )?;
    }
    let dead: i64 = groups
        .iter()
        .filter(|g| g.status == LogStatus::DeadLetter)
        .map(|g| g.count)
        .sum();
    writeln!(
        w,
        "# HELP hookq_dead_letters Logs in dead_letter, waiting for an operator."
    )?;
    writeln!(w, "# TYPE hookq_dead_letters gauge")?;
    writeln!(w, "hookq_dead_letters {dead}")?;

    writeln!(
        w,
        "# HELP hookq_jobs Queue jobs by state (database, at scrape time; completed jobs are archived and not counted)."
    )?;
    writeln!(w, "# TYPE hookq_jobs gauge")?;
    for (state_name, n) in [
        ("ready", queue.depth),
        ("running", queue.running),
        ("retry_scheduled", queue.scheduled_retries),
        ("scheduled", queue.scheduled),
        ("dead", queue.dead),
    ] {
        writeln!(w, "hookq_jobs{{state=\"{state_name}\"}} {n}")?;
    }
    writeln!(
        w,
        "# HELP hookq_queue_depth Jobs ready to run and not yet claimed."
    )?;
    writeln!(w, "# TYPE hookq_queue_depth gauge")?;
    writeln!(w, "hookq_queue_depth {}", queue.depth)?;
    writeln!(
        w,
        "# HELP hookq_queue_oldest_pending_age_seconds How long the oldest ready job has waited."
    )?;
    writeln!(w, "# TYPE hookq_queue_oldest_pending_age_seconds gauge")?;
    writeln!(
        w,
        "hookq_queue_oldest_pending_age_seconds {}",
        queue.oldest_pending_age_secs.unwrap_or(0.0)
    )?;

    // One family per type: the bucketed window is a histogram, its percentiles (computed
    // by the database) a summary of their own name. `_count` and the `+Inf` bucket come
    // from the buckets' own scan, so they agree within a scrape.
    writeln!(
        w,
        "# HELP hookq_processing_recent_seconds Receipt-to-processed time of logs processed in the last {WINDOW_MINUTES} minutes (database; a sliding window, so buckets can go down: read them directly, not with rate())."
    )?;
    writeln!(w, "# TYPE hookq_processing_recent_seconds histogram")?;
    let mut in_window = 0;
    for (le, n) in &buckets {
        let le = if le.is_infinite() {
            "+Inf".to_string()
        } else {
            le.to_string()
        };
        writeln!(
            w,
            "hookq_processing_recent_seconds_bucket{{le=\"{le}\"}} {n}"
        )?;
        in_window = *n;
    }
    let sum_secs = timing.mean_ms.unwrap_or(0.0) * timing.processed as f64 / 1000.0;
    writeln!(w, "hookq_processing_recent_seconds_sum {sum_secs}")?;
    writeln!(w, "hookq_processing_recent_seconds_count {in_window}")?;
    writeln!(
        w,
        "# HELP hookq_processing_recent_quantile_seconds Percentiles of the receipt-to-processed time of logs processed in the last {WINDOW_MINUTES} minutes (database, a sliding window; 0 when none)."
    )?;
    writeln!(w, "# TYPE hookq_processing_recent_quantile_seconds summary")?;
    for (q, v) in [
        ("0.5", timing.p50_ms),
        ("0.95", timing.p95_ms),
        ("0.99", timing.p99_ms),
    ] {
        writeln!(
            w,
            "hookq_processing_recent_quantile_seconds{{quantile=\"{q}\"}} {}",
            v.unwrap_or(0.0) / 1000.0
        )?;
    }
    writeln!(w, "hookq_processing_recent_quantile_seconds_sum {sum_secs}")?;
    writeln!(
        w,
        "hookq_processing_recent_quantile_seconds_count {}",
        timing.processed
    )?;
    writeln!(
        w,
        "# HELP hookq_attempts_recent Mean job runs per log processed in the last {WINDOW_MINUTES} minutes (1 = no retries)."
    )?;
    writeln!(w, "# TYPE hookq_attempts_recent gauge")?;
    writeln!(
        w,
        "hookq_attempts_recent {}",
        timing.mean_attempts.unwrap_or(0.0)
    )?;

    writeln!(
        w,
        "# HELP hookq_delivery_attempts_recent Reply delivery attempts started in the last {WINDOW_MINUTES} minutes, by kind and result (HTTP status code, or failed/unknown/in_flight without one)."
    )?;
    writeln!(w, "# TYPE hookq_delivery_attempts_recent gauge")?;
    for (kind, result, n) in &deliveries {
        writeln!(
            w,
            "hookq_delivery_attempts_recent{{kind=\"{}\",result=\"{}\"}} {n}",
            label(kind),
            label(result)
        )?;
    }

    writeln!(
        w,
        "# HELP hookq_db_pool_connections This process's database connections by state."
    )?;
    writeln!(w, "# TYPE hookq_db_pool_connections gauge")?;
    let primary = &state.pool;
    let (size, idle) = (primary.size(), primary.num_idle() as u32);
    writeln!(
        w,
        "hookq_db_pool_connections{{state=\"in_use\"}} {}",
        size.saturating_sub(idle)
    )?;
    writeln!(w, "hookq_db_pool_connections{{state=\"idle\"}} {idle}")?;
    writeln!(
        w,
        "# HELP hookq_db_pool_max_connections This process's pool size limit."
    )?;
    writeln!(w, "# TYPE hookq_db_pool_max_connections gauge")?;
    writeln!(
        w,
        "hookq_db_pool_max_connections {}",
        primary.options().get_max_connections()
    )?;
    Ok(out)
}

/// Cumulative counts per bucket of the processing times in the window, ending with the
/// `+Inf` bucket (every log in the window), all from one scan.
async fn processing_buckets(
    pool: &sqlx::PgPool,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(f64, i64)>, hookq_core::Error> {
    let bounds: Vec<f64> = BUCKETS.iter().copied().chain([f64::INFINITY]).collect();
    let counts = stats::processing_histogram(pool, since, &bounds).await?;
    Ok(bounds.into_iter().zip(counts).collect())
}
