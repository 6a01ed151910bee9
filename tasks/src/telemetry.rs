//! One trace per event across processes (contract section 12): how a trace's context
//! leaves one process and is continued in another. The exporter itself (OTLP over HTTP,
//! configured only by the standard `OTEL_*` variables) is wired by the binary
//! (`src/runtime.rs`); this room is what the API and the workers call.
//!
//! - **In**: the API's `webhook` span continues an incoming W3C `traceparent`
//!   ([`continue_in`]).
//! - **Across the queue**: with traces on, the log's `correlation_id` *is* the webhook
//!   span's `traceparent` ([`correlation_id`]; a UUIDv7 otherwise), written in the same
//!   transaction as the log and its job, so it travels with the job for free. The worker's
//!   `process_webhook` and `deliver_reply` spans take it as their parent once they read
//!   the log ([`continue_in`]); operators can paste a log's correlation id into their
//!   tracing backend.
//! - **Out**: every callback, Graph API and LLM request carries the `traceparent` of its
//!   own client span ([`traceparent`]).
//!
//! With no exporter installed there is no OpenTelemetry layer: the span has no context,
//! [`traceparent`] is `None` after one failed downcast, nothing is parsed or sent.

use std::collections::HashMap;

use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` of the current span; `None` when traces are not exported.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `correlation_id` of logs stored now: the current span's `traceparent` when traces
/// are exported, else a fresh UUIDv7.
pub fn correlation_id() -> String {
    traceparent().unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Makes the trace context in `traceparent` (and `tracestate`) the parent of `span`.
/// Does nothing when it is absent or not a W3C trace context (a UUID correlation id),
/// when traces are off, or when `span` already started (has children).
pub fn continue_in(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(tp) = traceparent.filter(|t| t.starts_with("00-")) else {
        return;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), tp.to_owned());
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_owned(), ts.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
