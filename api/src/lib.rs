//! hookq's HTTP surface: webhook intake, health, the OpenAPI document and Swagger UI.
//! Errors become statuses in one place ([`error`]).

pub mod error;
pub mod health;
pub mod signed;
pub mod state;
pub mod webhooks;

use std::{future::Future, time::Duration};

use poem::{Endpoint, EndpointExt, Route, Server, listener::TcpAcceptor};
use poem_openapi::{OpenApiService, Tags};

pub use state::AppState;

#[derive(Tags)]
pub enum ApiTags {
    /// Signed webhook intake and Meta's handshake.
    Webhooks,
    /// Liveness and readiness.
    Health,
}

type Apis = (webhooks::WebhooksApi, health::HealthApi);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (webhooks::WebhooksApi, health::HealthApi),
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
    let api = service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .nest("/", api)
        .data(state)
        .catch_all_error(error::render_any)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests (up to 30 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
        .run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(30)))
        .await
}
