//! The commands' wiring: read config, connect, start the library parts, stop on a signal.

use std::{ffi::OsString, time::Duration};

use anyhow::{Context, Result};
use futures::FutureExt;
use hookq_core::config::{Config, LogFormat};
use hookq_tasks::{supervisor, worker_metrics};
use opentelemetry_sdk::trace::SdkTracerProvider;
use sqlx::PgPool;

/// Logs to stderr (text or JSON) and, with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, traces exported over OTLP/HTTP, configured
/// by the standard `OTEL_*` variables alone (sampler `OTEL_TRACES_SAMPLER`, batching
/// `OTEL_BSP_*`, `OTEL_SERVICE_NAME` defaulting to `hookq`). Returns the tracer provider
/// to shut down (flush) at exit.
pub(crate) fn init_tracing(format: LogFormat) -> Option<SdkTracerProvider> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let Some(provider) = otel_provider() else {
        // No traces: one global filter, exactly the subscriber hookq had before traces, so
        // a callsite it disables (the dependencies' debug and trace events on every
        // request) is skipped at the macro. Per-layer filters, needed only when traces
        // are exported, can leave such callsites to be checked on every hit.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        return None;
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    use opentelemetry::trace::TracerProvider as _;
    // Traces do not depend on RUST_LOG (a quiet log must not empty the traces): every
    // span at info and above, and the warnings and errors inside them as span events.
    let traced = tracing_subscriber::filter::filter_fn(|meta| {
        let most = if meta.is_span() {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        };
        *meta.level() <= most
    });
    // Without context activation a span starts when its first child does (or when it
    // closes), not when it is first entered: a worker's run span is entered before it
    // has read its log, and only then learns which trace it belongs to.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("hookq"))
        .with_context_activation(false)
        .with_filter(traced);
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Some(provider)
}

/// The OTLP/HTTP tracer provider, when an endpoint is configured.
fn otel_provider() -> Option<SdkTracerProvider> {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hookq: the OTLP exporter could not be built ({e}); traces are not exported");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("hookq");
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
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
    let database = config.require_database()?;
    let session = |opts| config.wakeup.connect_options(opts);
    if let Some(hosts) = database.hosts()? {
        // Several hosts (or target_session_attrs=read-write): the one that takes writes,
        // followed through failovers.
        return hookq_core::db::connect_primary(hosts.map_options(session), max_connections)
            .await
            .context("cannot connect to the database");
    }
    let opts = session(database.connect_options()?);
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

/// One worker process (what the supervisor runs `TASKIQ_WORKERS` of). It measures its
/// jobs and serves them to its supervisor when given a socket.
pub(crate) async fn worker_process(config: Config) -> Result<()> {
    let pool = connect(&config, worker_pool_size(config.max_async_tasks)).await?;
    let metrics = match &config.worker_metrics_socket {
        Some(path) => {
            let listener = worker_metrics::bind_child(path)
                .with_context(|| format!("cannot serve worker metrics on {}", path.display()))?;
            let handle = worker_metrics::install()
                .context("another metrics recorder is already installed")?;
            Some(tokio::spawn(worker_metrics::serve_child(listener, handle)))
        }
        None => None,
    };
    let run = hookq_tasks::pipeline::run(pool, &config, shutdown_signal()).await;
    if let Some(serving) = metrics {
        serving.abort();
    }
    run?;
    Ok(())
}

/// `hookq worker`: supervises `TASKIQ_WORKERS` children running `hookq worker --single`
/// and serves their metrics on `HOOKQ_WORKER_METRICS_BIND`. `env` is added to the
/// children's environment.
pub(crate) async fn supervise_workers(config: &Config, env: Vec<(String, String)>) -> Result<()> {
    config.require_database()?;
    let opts = supervisor_options(config, env)?;
    let shutdown = shutdown_signal().shared();
    let metrics = serve_worker_metrics(config, &opts, shutdown.clone()).await?;
    let report = supervisor::supervise(opts.clone(), shutdown).await;
    finish_worker_metrics(&opts, metrics).await;
    let report = report?;
    tracing::info!(
        restarts = report.restarts,
        killed = report.killed,
        "workers stopped"
    );
    Ok(())
}

/// The supervisor's options; with worker metrics on, a private directory (mode 0700)
/// for the children's sockets.
pub(crate) fn supervisor_options(
    config: &Config,
    env: Vec<(String, String)>,
) -> Result<supervisor::SupervisorOptions> {
    let metrics_dir = match config.worker_metrics_bind {
        Some(_) => {
            use std::os::unix::fs::DirBuilderExt;
            let dir = std::env::temp_dir().join(format!("hookq-worker-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Some(dir)
        }
        None => None,
    };
    Ok(supervisor::SupervisorOptions {
        program: std::env::current_exe().context("cannot find the hookq executable")?,
        args: vec![OsString::from("worker"), OsString::from("--single")],
        env,
        workers: config.workers,
        grace: Duration::from_secs(25),
        metrics_dir,
        stats: Default::default(),
    })
}

/// Binds `HOOKQ_WORKER_METRICS_BIND` and serves the workers' metrics there until
/// `shutdown`; nothing when it is `off`.
pub(crate) async fn serve_worker_metrics(
    config: &Config,
    opts: &supervisor::SupervisorOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let (Some(addr), Some(dir)) = (config.worker_metrics_bind, opts.metrics_dir.clone()) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} (HOOKQ_WORKER_METRICS_BIND; `off` serves no worker metrics)"
        )
    })?;
    tracing::info!(addr = %listener.local_addr()?, "worker metrics listening");
    let scraper = worker_metrics::Scraper {
        dir,
        workers: opts.workers,
        stats: opts.stats.clone(),
    };
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = hookq_api::worker_metrics::serve(listener, scraper, shutdown).await {
            tracing::error!(error = %e, "worker metrics listener failed");
        }
    })))
}

/// After the supervisor stopped: the metrics listener ends, the sockets' directory goes.
pub(crate) async fn finish_worker_metrics(
    opts: &supervisor::SupervisorOptions,
    serving: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(serving) = serving {
        let _ = serving.await;
    }
    if let Some(dir) = &opts.metrics_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}
