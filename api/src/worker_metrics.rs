//! `hookq worker`'s metrics listener (`HOOKQ_WORKER_METRICS_BIND`, contract section 12):
//! `GET /metrics` answers the supervisor's families and every worker process's as one
//! Prometheus exposition, gathered and merged by `hookq_tasks::worker_metrics` (which
//! says how and why per worker slot). It lives here because this crate owns hookq's HTTP;
//! it is not in the OpenAPI document, being another process's port than the API's.

use std::{future::Future, time::Duration};

use hookq_tasks::worker_metrics::Scraper;
use poem::{EndpointExt, Response, Route, Server, get, handler, listener::TcpAcceptor, web::Data};

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scraper: Scraper,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = Route::new().at("/metrics", get(metrics)).data(scraper);
    Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
        .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(5)))
        .await
}

#[handler]
async fn metrics(scraper: Data<&Scraper>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(scraper.render().await)
}
