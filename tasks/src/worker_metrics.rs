//! Worker metrics (contract section 12): what worker processes measure, how each hands
//! its numbers to its supervisor, and the one exposition `hookq worker` serves for all of
//! them on `HOOKQ_WORKER_METRICS_BIND` (the HTTP listener itself is `hookq-api`'s
//! `worker_metrics`: this crate serves no HTTP).
//!
//! **Measured in each worker process**, with the `metrics` facade into the process's own
//! `metrics-exporter-prometheus` recorder: `hookq_jobs_total{task,outcome}` (a counter:
//! `completed`, `retry`, `dead`, `released`), `hookq_job_duration_seconds{task}`,
//! `hookq_llm_request_duration_seconds{outcome}` and
//! `hookq_delivery_request_duration_seconds{target,outcome}` (histograms; `outcome` is the
//! answer's class: `2xx`, `4xx`, `5xx`, or `no_answer`). Labels are static strings, so a
//! record is a hash lookup in the recorder's registry and an atomic add, no allocation.
//!
//! **Handed over** through a Unix socket per slot: the supervisor makes a private
//! directory (mode 0700) and passes each child its socket's path in
//! [`SOCKET_ENV`]; the child answers every connection there with its rendered exposition
//! and closes ([`serve_child`]). Nothing is sent while nobody scrapes.
//!
//! **Served together**: on a scrape, [`Scraper::render`] reads every child (at most a
//! second each, all at once), writes the supervisor's own two families
//! (`hookq_worker_processes`, `hookq_worker_restarts_total`), and [`merge`]s the children:
//! every family once with its `HELP` and `TYPE`, every sample labelled
//! `worker="<slot>"`. A label and not a sum, on purpose: a child that dies restarts with
//! its counters at zero; summed, the total would drop, Prometheus would read the drop as a
//! reset and count the whole new total as increase, so `rate()` would jump each time a
//! worker dies. Per slot only that slot's series resets, which is what `rate()` handles.
//! `sum by (task, outcome) (rate(hookq_jobs_total[5m]))` is the whole worker.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};

use crate::supervisor::SupervisorStats;

/// The variable through which the supervisor tells a child where to serve its numbers.
pub const SOCKET_ENV: &str = "HOOKQ_WORKER_METRICS_SOCKET";

/// How long a scrape waits for one child.
const CHILD_TIMEOUT: Duration = Duration::from_secs(1);

/// Histogram buckets (seconds): jobs take milliseconds, LLM calls seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// This process's recorder, installed on first call (a worker process calls it once at
/// start). `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            keep_up(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// Drains `handle`'s histograms every 5 seconds on a thread of its own, for the life of
/// the process. A recorder built with `build_recorder` keeps every histogram sample
/// until an upkeep folds it in; without one, a process nobody scrapes would grow by
/// 8 bytes per sample for ever (at 30,000 jobs/s, about 2 GiB an hour).
pub fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

/// The `# HELP` of the worker families (also called by a process that installed its own
/// recorder and runs jobs in-process, so its families carry their help too).
pub fn describe() {
    metrics::describe_counter!(
        "hookq_jobs_total",
        "Job runs finished by this worker process, by task and outcome (completed, retry, dead, released)."
    );
    metrics::describe_histogram!(
        "hookq_job_duration_seconds",
        metrics::Unit::Seconds,
        "Time one job run took, by task."
    );
    metrics::describe_histogram!(
        "hookq_llm_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one request to the LLM endpoint, by the answer's class (2xx, 4xx, 5xx, no_answer)."
    );
    metrics::describe_histogram!(
        "hookq_delivery_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one reply delivery request, by target (callback, graph_api) and the answer's class."
    );
}

/// One job run ended with `outcome`.
pub(crate) fn job_ran(task: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("hookq_jobs_total", "task" => task, "outcome" => outcome).increment(1);
    if outcome != "released" {
        metrics::histogram!("hookq_job_duration_seconds", "task" => task)
            .record(took.as_secs_f64());
    }
}

/// One LLM request; `status` is the HTTP status, `None` when no answer came.
pub(crate) fn llm_request(status: Option<u16>, took: Duration) {
    metrics::histogram!("hookq_llm_request_duration_seconds", "outcome" => class(status))
        .record(took.as_secs_f64());
}

/// One delivery request to `target` (`callback` or `graph_api`).
pub(crate) fn delivery_request(target: &'static str, status: Option<u16>, took: Duration) {
    metrics::histogram!(
        "hookq_delivery_request_duration_seconds",
        "target" => target,
        "outcome" => class(status)
    )
    .record(took.as_secs_f64());
}

fn class(status: Option<u16>) -> &'static str {
    match status {
        None => "no_answer",
        Some(200..=299) => "2xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
    }
}

/// A worker process's side: answers every connection on `listener` with `handle`'s
/// exposition, until the listener fails (the process's exit ends it).
pub async fn serve_child(listener: UnixListener, handle: &'static PrometheusHandle) {
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "worker metrics socket failed; metrics no longer served");
                return;
            }
        };
        handle.run_upkeep();
        let text = handle.render();
        tokio::spawn(async move {
            let _ = conn.write_all(text.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Binds a child's socket at `path`, replacing a stale one left by its predecessor.
pub fn bind_child(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// The socket of slot `slot` under the supervisor's directory.
pub fn socket_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("{slot}.sock"))
}

/// The supervisor's side: what a scrape of `HOOKQ_WORKER_METRICS_BIND` answers.
#[derive(Clone, Debug)]
pub struct Scraper {
    /// The directory of the children's sockets.
    pub dir: PathBuf,
    /// Slots (`TASKIQ_WORKERS`).
    pub workers: usize,
    /// The supervisor's own counts.
    pub stats: Arc<SupervisorStats>,
}

impl Scraper {
    /// The supervisor's families, then every child's, merged.
    pub async fn render(&self) -> String {
        let reads = (0..self.workers).map(|slot| {
            let path = socket_path(&self.dir, slot);
            async move { read_child(&path).await.map(|text| (slot, text)) }
        });
        let children: Vec<(usize, String)> = futures::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut out = String::new();
        let alive = self.stats.alive.load(Ordering::Relaxed);
        let restarts = self.stats.restarts.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP hookq_worker_processes Worker processes running now under this supervisor.\n\
             # TYPE hookq_worker_processes gauge\n\
             hookq_worker_processes {alive}\n\
             # HELP hookq_worker_restarts_total Worker processes started again after dying, since the supervisor started.\n\
             # TYPE hookq_worker_restarts_total counter\n\
             hookq_worker_restarts_total {restarts}\n"
        );
        out.push_str(&merge(&children));
        out
    }
}

async fn read_child(path: &Path) -> Option<String> {
    let read = async {
        let mut conn = UnixStream::connect(path).await.ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(CHILD_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Several expositions of the same program as one: each family once (the first `HELP`
/// and `TYPE` seen), in the order first seen, every sample given `worker="<slot>"`.
pub fn merge(children: &[(usize, String)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for (slot, text) in children {
        let mut current: Option<String> = None;
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                if let (Some(k @ ("HELP" | "TYPE")), Some(name)) = (parts.next(), parts.next()) {
                    let f = family(&mut families, &mut order, name);
                    let head = if k == "HELP" {
                        &mut f.help
                    } else {
                        &mut f.kind
                    };
                    head.get_or_insert_with(|| line.to_owned());
                    current = Some(name.to_owned());
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            // A histogram's `_bucket`, `_sum` and `_count` belong to the family above.
            let owner = match current.as_deref() {
                Some(f) if name.starts_with(f) => f,
                _ => name,
            };
            let rest = &line[name_end..];
            let labelled = match rest.strip_prefix('{') {
                Some(inner) if inner.starts_with('}') => {
                    format!("{name}{{worker=\"{slot}\"{inner}")
                }
                Some(inner) => format!("{name}{{worker=\"{slot}\",{inner}"),
                None => format!("{name}{{worker=\"{slot}\"}}{rest}"),
            };
            family(&mut families, &mut order, owner)
                .samples
                .push(labelled);
        }
    }
    let mut out = String::new();
    for name in order {
        let Some(f) = families.remove(&name) else {
            continue;
        };
        if f.samples.is_empty() {
            continue;
        }
        for l in f.help.iter().chain(f.kind.iter()).chain(f.samples.iter()) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// One family while merging.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

fn family<'a>(
    families: &'a mut HashMap<String, Family>,
    order: &mut Vec<String>,
    name: &str,
) -> &'a mut Family {
    if !families.contains_key(name) {
        order.push(name.to_owned());
    }
    families.entry(name.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "# HELP hookq_jobs_total Job runs.\n\
        # TYPE hookq_jobs_total counter\n\
        hookq_jobs_total{task=\"process_webhook\",outcome=\"completed\"} 5\n\
        \n\
        # HELP hookq_job_duration_seconds Time.\n\
        # TYPE hookq_job_duration_seconds histogram\n\
        hookq_job_duration_seconds_bucket{task=\"process_webhook\",le=\"0.1\"} 4\n\
        hookq_job_duration_seconds_bucket{task=\"process_webhook\",le=\"+Inf\"} 5\n\
        hookq_job_duration_seconds_sum{task=\"process_webhook\"} 0.3\n\
        hookq_job_duration_seconds_count{task=\"process_webhook\"} 5\n\
        hookq_plain 1\n";

    #[test]
    fn merge_keeps_each_family_once_and_labels_every_sample_with_its_worker() {
        let merged = merge(&[(0, CHILD.to_owned()), (1, CHILD.replace(" 5\n", " 7\n"))]);
        assert_eq!(merged.matches("# TYPE hookq_jobs_total counter").count(), 1);
        assert_eq!(
            merged.matches("# HELP hookq_job_duration_seconds ").count(),
            1
        );
        assert!(merged.contains(
            "hookq_jobs_total{worker=\"0\",task=\"process_webhook\",outcome=\"completed\"} 5\n"
        ));
        assert!(merged.contains(
            "hookq_jobs_total{worker=\"1\",task=\"process_webhook\",outcome=\"completed\"} 7\n"
        ));
        assert!(merged.contains(
            "hookq_job_duration_seconds_count{worker=\"1\",task=\"process_webhook\"} 7\n"
        ));
        assert!(merged.contains("hookq_plain{worker=\"0\"} 1\n"));
        // A family's lines stay together: the second child's counter sits above the
        // first child's histogram.
        let counter_1 = merged.find("hookq_jobs_total{worker=\"1\"").unwrap();
        let histogram_0 = merged.find("# HELP hookq_job_duration_seconds").unwrap();
        assert!(counter_1 < histogram_0, "{merged}");
    }

    #[test]
    fn a_family_no_child_has_samples_of_is_left_out() {
        let merged = merge(&[(0, "# HELP x_total X.\n# TYPE x_total counter\n".to_owned())]);
        assert_eq!(merged, "");
        assert_eq!(merge(&[]), "");
    }
}
