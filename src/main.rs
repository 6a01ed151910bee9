//! `hookq`: one binary for every role. `main` only parses arguments and wires the
//! library parts together; each long-running part lives in a crate and takes a
//! listener or pool and a shutdown signal.

mod dev;
mod runtime;
mod send;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: profiles of the API under load showed a tenth of
/// its CPU in glibc's allocator (many threads freeing small buffers allocated elsewhere).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start-up. Freed pages go back to the OS within about a
/// second (jemalloc's default keeps them ten), so hostile bodies read up to the 4 MiB limit
/// and refused do not stay resident. Not at once: purging every freed run immediately
/// (`dirty_decay_ms:0`) cost a sixth of ingest throughput in madvise calls and the TLB
/// shootdowns they trigger (13.7–14.0k against 16.3–17.4k acknowledged webhooks/s).
/// SAFETY: the one symbol of this name in the binary (jemalloc reads it; nothing else
/// exports it), a NUL-terminated static string.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "hookq",
    version,
    about = "Durable webhook intake and task queue on Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply every migration in migrations/ (idempotent).
    Migrate,
    /// Serve the HTTP API on HOOKQ_BIND (default 127.0.0.1:8080).
    Api,
    /// Supervise TASKIQ_WORKERS worker processes, restarting any that dies.
    Worker {
        /// Run one worker process in the foreground instead of supervising several.
        #[arg(long)]
        single: bool,
    },
    /// Everything on one machine: a private PostgreSQL (unless one is configured),
    /// migrations, demo data, the API and the workers.
    Dev {
        /// Where the private PostgreSQL keeps its data.
        #[arg(long, default_value = ".hookq")]
        data_dir: PathBuf,
    },
    /// Print the OpenAPI 3 document (the bytes of openapi/openapi.json).
    Openapi,
    /// Send signed webhooks to a running instance and report what it acknowledged.
    Send(send::SendArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // These two never touch a database.
    match cli.command {
        Command::Openapi => {
            println!("{}", hookq_api::openapi_json());
            return Ok(());
        }
        Command::Send(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if let Err(e) = rt.block_on(send::run(args)) {
                eprintln!("hookq send: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        _ => {}
    }
    let config = match hookq_core::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookq: {e}");
            std::process::exit(2);
        }
    };
    let traces = runtime::init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        match cli.command {
            Command::Migrate => runtime::migrate(&config).await,
            Command::Api => runtime::api(config).await,
            Command::Worker { single: true } => runtime::worker_process(config).await,
            Command::Worker { single: false } => {
                runtime::supervise_workers(&config, Vec::new()).await
            }
            Command::Dev { data_dir } => dev::run(config, data_dir).await,
            Command::Openapi | Command::Send(_) => unreachable!(),
        }
    });
    // Export the spans still buffered before the process ends.
    if let Some(traces) = traces
        && let Err(e) = traces.shutdown()
    {
        eprintln!("hookq: traces not all exported at exit: {e}");
    }
    if let Err(e) = result {
        // One clear line, no backtrace: these are operator errors (no database, a port in use).
        eprintln!("hookq: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
