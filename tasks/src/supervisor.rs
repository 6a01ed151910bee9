//! `hookq worker`: keeps `TASKIQ_WORKERS` worker processes running.
//!
//! Each worker is a child process running the same binary; one that dies (a crash, an
//! OOM kill, a SIGKILL) is restarted with a short backoff, and its claimed jobs come back
//! when their leases expire. On shutdown every child gets SIGTERM and time to drain;
//! those still alive after the grace period get SIGKILL. Children also get SIGKILL from
//! the kernel if the supervisor itself dies, so none are orphaned.

use std::{
    ffi::OsString,
    future::Future,
    io,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{process::Command, task::JoinSet};

/// What [`supervise`] runs and how.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// The program each worker runs (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// The arguments each worker gets (`worker --single` for `hookq worker`).
    pub args: Vec<OsString>,
    /// Extra environment for the children.
    pub env: Vec<(String, String)>,
    /// Worker processes kept running (`TASKIQ_WORKERS`).
    pub workers: usize,
    /// How long children get to drain after SIGTERM.
    pub grace: Duration,
    /// Where each child serves its metrics (`<dir>/<slot>.sock`, see
    /// [`crate::worker_metrics`]); `None`: the children serve none.
    pub metrics_dir: Option<PathBuf>,
    /// Counts the supervisor keeps while it runs, for its metrics.
    pub stats: Arc<SupervisorStats>,
}

/// What the supervisor counts while it runs (read by `hookq_worker_processes` and
/// `hookq_worker_restarts_total`).
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Children running now.
    pub alive: AtomicU64,
    /// Children started again after dying.
    pub restarts: AtomicU64,
}

/// How the supervised run went, for the caller's exit status and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SupervisorReport {
    /// Times a child that exited before shutdown was started again.
    pub restarts: usize,
    /// Children that had to be SIGKILLed at shutdown.
    pub killed: usize,
}

struct Exit {
    slot: usize,
    status: io::Result<std::process::ExitStatus>,
    uptime: Duration,
}

type Pids = Arc<Mutex<Vec<Option<u32>>>>;

/// Runs until `shutdown` resolves, then stops every child.
pub async fn supervise(
    opts: SupervisorOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<SupervisorReport> {
    let mut report = SupervisorReport::default();
    let pids: Pids = Arc::new(Mutex::new(vec![None; opts.workers]));
    let mut backoff = vec![Duration::ZERO; opts.workers];
    let mut running: JoinSet<Exit> = JoinSet::new();
    for slot in 0..opts.workers {
        start(&opts, slot, &pids, &mut running, Duration::ZERO);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = running.join_next() => {
                let Ok(Exit { slot, status, uptime }) = done else { continue };
                let how = match &status {
                    Ok(s) => describe(s),
                    Err(e) => format!("could not start: {e}"),
                };
                // A child that keeps dying at once is restarted ever more slowly.
                backoff[slot] = if uptime > Duration::from_secs(30) {
                    Duration::from_millis(100)
                } else {
                    (backoff[slot] * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
                };
                tracing::warn!(slot, exit = %how, restart_in_ms = backoff[slot].as_millis() as u64, "worker process died; restarting");
                report.restarts += 1;
                opts.stats.restarts.fetch_add(1, Ordering::Relaxed);
                start(&opts, slot, &pids, &mut running, backoff[slot]);
            }
        }
    }

    tracing::info!("stopping worker processes");
    // A slot still waiting out its restart delay is simply dropped.
    let alive = |pids: &Pids| {
        pids.lock()
            .map(|p| p.iter().flatten().copied().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for pid in alive(&pids) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + opts.grace;
    loop {
        if alive(&pids).is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, running.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                for pid in alive(&pids) {
                    if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                        report.killed += 1;
                    }
                }
                break;
            }
        }
    }
    running.shutdown().await;
    Ok(report)
}

/// Starts slot `slot` after `delay`; its exit is reported through `set`.
fn start(
    opts: &SupervisorOptions,
    slot: usize,
    pids: &Pids,
    set: &mut JoinSet<Exit>,
    delay: Duration,
) {
    let mut cmd = Command::new(&opts.program);
    cmd.args(&opts.args)
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .env("HOOKQ_WORKER_SLOT", slot.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = &opts.metrics_dir {
        cmd.env(
            crate::worker_metrics::SOCKET_ENV,
            crate::worker_metrics::socket_path(dir, slot),
        );
    }
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
    let pids = pids.clone();
    let stats = opts.stats.clone();
    set.spawn(async move {
        tokio::time::sleep(delay).await;
        let started = Instant::now();
        let status = match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(slot, pid, "worker process started");
                set_pid(&pids, slot, pid);
                stats.alive.fetch_add(1, Ordering::Relaxed);
                let status = child.wait().await;
                stats.alive.fetch_sub(1, Ordering::Relaxed);
                set_pid(&pids, slot, None);
                status
            }
            Err(e) => Err(e),
        };
        Exit {
            slot,
            status,
            uptime: started.elapsed(),
        }
    });
}

fn set_pid(pids: &Pids, slot: usize, pid: Option<u32>) {
    if let Ok(mut p) = pids.lock() {
        p[slot] = pid;
    }
}

fn describe(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}
