//! `hookq dev`: a working instance from a fresh checkout with one command.
//!
//! Without `DATABASE_URL`/`SSQ_DB_*` it runs a private PostgreSQL under `--data-dir`
//! (kept between runs), fills in development secrets that are not set, migrates, loads
//! demo data, serves the API in this process and supervises `TASKIQ_WORKERS` worker
//! processes. It prints the URLs and a signed `curl` that gets a reply recorded.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use futures::FutureExt;
use hookq_core::{
    config::{Config, DatabaseConfig, Secret},
    intake::signature,
};
use hookq_testkit::devdb::{ClusterOptions, LocalCluster};
use sqlx::{Connection, PgConnection};

use crate::runtime;

/// Development values for secrets the operator did not set. Printed, never used when
/// a real value is configured.
const DEV_SECRETS: &[(&str, &str)] = &[
    ("META_APP_SECRET", "dev-meta-app-secret"),
    ("META_VERIFY_TOKEN", "dev-verify-token"),
    ("WHATSAPP_WEBHOOK_SECRET", "dev-whatsapp-secret"),
    ("HOOKQ_ADMIN_TOKEN", "dev-admin-token"),
];

pub(crate) async fn run(mut config: Config, data_dir: PathBuf) -> Result<()> {
    // Children read their configuration from the environment: pass what dev decided.
    let mut child_env: Vec<(String, String)> = Vec::new();

    let mut private = None;
    if config.database.is_none() {
        let dir = data_dir.join("pg");
        println!("starting a private PostgreSQL in {} …", dir.display());
        let cluster = tokio::task::spawn_blocking(move || {
            LocalCluster::ensure(&dir, &ClusterOptions { durable: true })
        })
        .await?
        .context("cannot start the private PostgreSQL")?;
        let mut admin = PgConnection::connect(&cluster.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'hookq')")
                .fetch_one(&mut admin)
                .await?;
        if !exists {
            sqlx::query("CREATE DATABASE hookq")
                .execute(&mut admin)
                .await?;
        }
        let url = cluster.url("hookq");
        child_env.push(("DATABASE_URL".into(), url.clone()));
        config.database = Some(DatabaseConfig::Url(Secret::new(url)));
        private = Some(cluster);
    }

    let mut generated = Vec::new();
    for (var, value) in DEV_SECRETS {
        let slot = match *var {
            "META_APP_SECRET" => &mut config.meta_app_secret,
            "META_VERIFY_TOKEN" => &mut config.meta_verify_token,
            "WHATSAPP_WEBHOOK_SECRET" => &mut config.whatsapp_webhook_secret,
            _ => &mut config.admin_token,
        };
        if slot.is_none() {
            *slot = Some(Secret::new(*value));
            child_env.push((var.to_string(), value.to_string()));
            generated.push(format!("{var}={value}"));
        }
    }

    let pool = runtime::connect(&config, 32).await?;
    hookq_core::db::migrate(&pool)
        .await
        .context("migration failed")?;
    hookq_testkit::demo::load(&pool)
        .await
        .context("loading demo data")?;

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set HOOKQ_BIND to another address)",
                config.bind
            )
        })?;
    let addr = listener.local_addr()?;
    print_banner(&config, addr, &generated);

    let shutdown = runtime::shutdown_signal().shared();
    let sup_opts = runtime::supervisor_options(&config, child_env)?;
    let config = Arc::new(config);
    let metrics = runtime::serve_worker_metrics(&config, &sup_opts, shutdown.clone()).await?;
    let workers = hookq_tasks::supervisor::supervise(sup_opts.clone(), shutdown.clone());
    let api = runtime::serve_api((*config).clone(), pool, listener, shutdown);
    let (w, a) = tokio::join!(workers, api);
    runtime::finish_worker_metrics(&sup_opts, metrics).await;
    // The private cluster is ours to stop; its data stays for the next run.
    if let Some(cluster) = private {
        println!("stopping the private PostgreSQL");
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    w?;
    a?;
    Ok(())
}

fn print_banner(config: &Config, addr: std::net::SocketAddr, generated: &[String]) {
    let base = format!("http://{addr}");
    let body = sample_body();
    let secret = config
        .meta_app_secret
        .as_ref()
        .map(|s| s.expose())
        .unwrap_or("");
    let sig = signature::hmac_hex(secret.as_bytes(), body.as_bytes());
    println!();
    println!("hookq dev is running ({} worker processes)", config.workers);
    println!("  API        {base}");
    println!("  Swagger UI {base}/docs");
    println!("  OpenAPI    {base}/openapi.json");
    println!("  health     {base}/health   ready {base}/ready");
    if !generated.is_empty() {
        println!(
            "  development secrets (not set in the environment): {}",
            generated.join(" ")
        );
    }
    println!();
    println!("Send the sample comment (signed with META_APP_SECRET):");
    println!();
    println!(
        "curl -sS -X POST {base}/webhooks/instagram -H 'Content-Type: application/json' -H 'X-Hub-Signature-256: sha256={sig}' --data-binary '{body}'"
    );
    println!();
}

/// The contract's compact sample with a fresh comment id, so each run's curl is a new
/// event (paste it twice to see a duplicate answered).
pub(crate) fn sample_body() -> String {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({
        "entry": [{"changes": [{"value": {
            "post_id": "post_123", "item": "comment", "comment_id": format!("comment_{now}"),
            "sender_id": "user_456", "sender_name": "Test User",
            "message": "This is a test comment", "created_time": now}}]}],
        "object": "instagram", "user_id": "user_123", "persona_id": "persona_123"
    })
    .to_string()
}
