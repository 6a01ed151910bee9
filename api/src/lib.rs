//! hookq's HTTP surface: webhook intake, health, the admin API ([`admin`], behind
//! [`auth`]), the operator dashboard ([`dashboard`]), Prometheus metrics ([`metrics`]),
//! the OpenAPI document and Swagger UI. Errors become statuses in one place ([`error`]).
//! Beside the API, the listener of `hookq worker`'s metrics ([`worker_metrics`]).

pub mod admin;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod metrics;
pub mod ratelimit;
pub mod signed;
pub mod slowloris;
pub mod state;
pub mod webhooks;
pub mod worker_metrics;

use std::{future::Future, time::Duration};

use poem::{Endpoint, EndpointExt, Route, Server, listener::TcpAcceptor};
use poem_openapi::{OpenApiService, Tags};

pub use state::AppState;

/// The groups the OpenAPI document files operations under.
#[derive(Tags)]
pub enum ApiTags {
    /// Signed webhook intake and Meta's handshake.
    Webhooks,
    /// Liveness, readiness and Prometheus metrics.
    Health,
    /// The operator's API: webhook logs, admin resources, jobs. Bearer `HOOKQ_ADMIN_TOKEN`.
    Admin,
}

type Apis = (
    webhooks::WebhooksApi,
    health::HealthApi,
    metrics::MetricsApi,
    admin::logs::LogsApi,
    admin::conversations::ConversationsApi,
    admin::replays::ReplaysApi,
    admin::audit::AuditApi,
    admin::resources::ResourcesApi,
    admin::tasks::TasksApi,
);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            webhooks::WebhooksApi,
            health::HealthApi,
            metrics::MetricsApi,
            admin::logs::LogsApi,
            admin::conversations::ConversationsApi,
            admin::replays::ReplaysApi,
            admin::audit::AuditApi,
            admin::resources::ResourcesApi,
            admin::tasks::TasksApi,
        ),
        "hookq",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Durable webhook intake and task queue: every signed webhook is stored and its job \
             enqueued in one transaction before it is acknowledged.",
    )
}

/// The OpenAPI 3 document, as `hookq openapi` prints it and `openapi/openapi.json` holds.
pub fn openapi_json() -> String {
    service().spec()
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    metrics::handle();
    let ops = admin::OpsState::new(&state.pool);
    let api = service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .nest("/dashboard", dashboard::routes())
        .nest("/", api)
        .around(admin::audit::record_changes)
        .around(state::reads_after_writes)
        .around(metrics::count_webhooks)
        .around(signed::limit_body)
        .with(ratelimit::RateLimiter::new(state.config.rate_limits))
        .data(state)
        .data(ops)
        .catch_all_error(error::render_any)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests (up to 30 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = slowloris::GuardedAcceptor::new(
        TcpAcceptor::from_tokio(listener)?,
        state.config.header_read_timeout,
    );
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(30)))
        .await
}
