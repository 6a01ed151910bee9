//! The commands' wiring: read config, connect, start the library parts, stop on a signal.

use std::{ffi::OsString, time::Duration};

use anyhow::{Context, Result};
use hookq_core::config::{Config, LogFormat};
use hookq_tasks::supervisor;
use sqlx::PgPool;

pub(crate) fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

pub(crate) async fn connect(config: &Config, max_connections: u32) -> Result<PgPool> {
    let opts = config.require_database()?.connect_options()?;
    hookq_core::db::connect(opts, max_connections)
        .await
        .context("cannot connect to the database")
}

pub(crate) async fn migrate(config: &Config) -> Result<()> {
    let pool = connect(config, 2).await?;
    hookq_core::db::migrate(&pool)
        .await
        .context("migration failed")?;
    tracing::info!("migrations applied");
    Ok(())
}

pub(crate) async fn api(config: Config) -> Result<()> {
    let pool = connect(&config, 32).await?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} (HOOKQ_BIND)", config.bind))?;
    serve_api(config, pool, listener, shutdown_signal()).await
}

pub(crate) async fn serve_api(
    config: Config,
    pool: PgPool,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if config.admin_token.is_none() {
        tracing::warn!(
            "HOOKQ_ADMIN_TOKEN is not set: /api/* and /dashboard answer 401 to everyone"
        );
    }
    if config.meta_app_secret.is_none() {
        tracing::warn!("META_APP_SECRET is not set: Meta webhook routes answer 401");
    }
    let state = hookq_api::AppState::new(config, pool);
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    hookq_api::serve(listener, state, shutdown).await?;
    Ok(())
}

/// Connections of one worker process. A comment holds a connection only for its two
/// statements (the start, and the reply with its commit), so a quarter of the jobs in
/// flight covers them; more connections only add Postgres backends competing for the
/// same cores and WAL flushes. Plus headroom for the lease, sweep and NOTIFY tasks.
fn worker_pool_size(max_async_tasks: usize) -> u32 {
    u32::try_from((max_async_tasks / 4).clamp(4, 16) + 4).unwrap_or(20)
}

/// One worker process (what the supervisor runs `TASKIQ_WORKERS` of).
pub(crate) async fn worker_process(config: Config) -> Result<()> {
    let pool = connect(&config, worker_pool_size(config.max_async_tasks)).await?;
    hookq_tasks::pipeline::run(pool, &config, shutdown_signal()).await?;
    Ok(())
}

/// `hookq worker`: supervises `TASKIQ_WORKERS` children running `hookq worker --single`.
/// `env` is added to the children's environment (`hookq dev` passes its database).
pub(crate) async fn supervise_workers(config: &Config, env: Vec<(String, String)>) -> Result<()> {
    config.require_database()?;
    let opts = supervisor_options(config, env)?;
    let report = supervisor::supervise(opts, shutdown_signal()).await?;
    tracing::info!(
        restarts = report.restarts,
        killed = report.killed,
        "workers stopped"
    );
    Ok(())
}

pub(crate) fn supervisor_options(
    config: &Config,
    env: Vec<(String, String)>,
) -> Result<supervisor::SupervisorOptions> {
    Ok(supervisor::SupervisorOptions {
        program: std::env::current_exe().context("cannot find the hookq executable")?,
        args: vec![OsString::from("worker"), OsString::from("--single")],
        env,
        workers: config.workers,
        grace: Duration::from_secs(25),
    })
}
