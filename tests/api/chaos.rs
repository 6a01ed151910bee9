//! Fault tests (issue 7): real `hookq api` and `hookq worker` processes on loopback,
//! killed, stopped or starved under load; counts compared at the end and printed, so the
//! figures can be quoted. Each is `#[ignore]` (they kill processes or stop the shared
//! PostgreSQL): `scripts/chaos` runs them one at a time.
//!
//! Sizes: `HOOKQ_CHAOS_EVENTS` (default 5,000) webhooks for the worker-kill test.

use std::{
    collections::{HashMap, HashSet},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::*;
use futures::StreamExt;
use hookq_core::delivery::OUTCOME_UNKNOWN;
use hookq_testkit::{poll_for, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;
use sqlx::PgPool;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

// ---- processes ----

/// A real `hookq worker` supervisor with `workers` processes, once they are all up.
async fn start_workers(
    env: &HashMap<String, String>,
    workers: usize,
) -> (tokio::process::Child, u32) {
    let mut env = env.clone();
    env.insert("TASKIQ_WORKERS".into(), workers.to_string());
    env.insert("RUST_LOG".into(), "warn".into());
    let sup = hookq(&env)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sup.id().unwrap();
    wait_for(30, "the worker processes", || async {
        (children(pid).len() == workers).then_some(())
    })
    .await;
    (sup, pid)
}

async fn exits_within(
    child: &mut tokio::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(secs), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {secs} s"))
        .unwrap()
}

// ---- load ----

/// What one request got.
#[derive(Debug, Clone)]
struct Sent {
    comment_id: String,
    status: Option<u16>,
    ids: Vec<i64>,
}

#[derive(Default)]
struct Tally {
    sent: Vec<Sent>,
}

impl Tally {
    fn acked(&self) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.status == Some(200)).collect()
    }
    fn acked_ids(&self) -> Vec<i64> {
        self.acked()
            .iter()
            .flat_map(|s| s.ids.iter().copied())
            .collect()
    }
    fn by_status(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for s in &self.sent {
            let k = s
                .status
                .map_or("connection error".to_string(), |c| c.to_string());
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }
}

async fn send_one(http: &reqwest::Client, base: &str, comment_id: String, body: String) -> Sent {
    let resp = http
        .post(format!("{base}/webhooks/instagram"))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await;
    match resp {
        Err(_) => Sent {
            comment_id,
            status: None,
            ids: vec![],
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            let ids: Vec<i64> = v["ids"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            // A 200 whose body was cut off is no acknowledgement the sender can rely on.
            let status = if status == 200 && ids.is_empty() {
                None
            } else {
                Some(status)
            };
            Sent {
                comment_id,
                status,
                ids,
            }
        }
    }
}

/// A compact comment on `post`.
fn comment_on(post: &str, comment_id: &str) -> String {
    compact(comment_id, "Hello there").replace("\"post_123\"", &format!("\"{post}\""))
}

/// Sends `bodies` with `concurrency` in flight, until done or `stop` is set.
async fn send_all(
    base: &str,
    bodies: impl IntoIterator<Item = (String, String)>,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Tally {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let sent: Vec<Sent> = futures::stream::iter(bodies)
        .map(|(cid, body)| {
            let http = http.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            async move {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                let s = send_one(&http, base, cid, body).await;
                if s.status == Some(200) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Some(s)
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    Tally { sent }
}

// ---- database checks ----

async fn statuses(pool: &PgPool, ids: &[i64]) -> HashMap<i64, (String, Option<String>, i32)> {
    sqlx::query_as::<_, (i64, String, Option<String>, i32)>(
        "SELECT id, status, error_message, attempts FROM webhook_logs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, s, e, a)| (id, (s, e, a)))
    .collect()
}

/// Waits until every log in `ids` is `processed` or `dead_letter`.
async fn wait_all_finished(pool: &PgPool, ids: &[i64], secs: u64) {
    let ids = ids.to_vec();
    wait_for(secs, &format!("{} logs to finish", ids.len()), || {
        let ids = ids.clone();
        async move {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_logs WHERE id = ANY($1) AND status NOT IN ('processed', 'dead_letter')",
            )
            .bind(&ids)
            .fetch_one(pool)
            .await
            .ok()?;
            (open == 0).then_some(())
        }
    })
    .await;
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// No job left in the live queue and no log half-way, within a deadline: a log is
/// finished before its job's completion is written (completions are batched), so the
/// last jobs leave `queue_jobs` a moment after the last log is final. On timeout the
/// jobs still there are printed.
async fn assert_nothing_stuck(pool: &PgPool) {
    let open = || async {
        let logs = count(
            pool,
            "SELECT count(*) FROM webhook_logs WHERE status IN ('pending', 'processing', 'failed')",
        )
        .await;
        let jobs = count(pool, "SELECT count(*) FROM queue_jobs").await;
        (logs, jobs)
    };
    if poll_for(30, || async { (open().await == (0, 0)).then_some(()) })
        .await
        .is_some()
    {
        return;
    }
    let left: Vec<(i64, String, String, i32, String)> = sqlx::query_as(
        "SELECT j.id, j.task_name, j.status::text, j.attempts, coalesce(l.status, '-')
         FROM queue_jobs j LEFT JOIN webhook_logs l ON l.job_id = j.id ORDER BY j.id LIMIT 10",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    println!("jobs left (id, task, status, attempts, log status; first 10): {left:?}");
    let (logs, jobs) = open().await;
    assert_eq!(logs, 0, "logs left pending/processing/failed");
    assert_eq!(jobs, 0, "jobs left in the queue");
}

/// The demo user and persona, and a fresh instagram integration `account` whose post
/// `post` delivers replies by callback to `url`.
async fn callback_post(pool: &PgPool, account: &str, post: &str, url: &str) {
    let integration = add_integration(pool, "instagram", account).await;
    set_delivery(pool, account, "callback", Some(url)).await;
    sqlx::query(
        "INSERT INTO posts (external_id, integration_id, caption) VALUES ($1, $2, 'chaos')",
    )
    .bind(post)
    .bind(integration)
    .execute(pool)
    .await
    .unwrap();
}

/// webhook-id → times seen, over every receiver.
async fn webhook_ids(servers: &[MockServer]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for s in servers {
        for r in s.received_requests().await.unwrap_or_default() {
            let (id, _) = verify_callback(&r);
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

// ---- the faults ----

/// Thousands of signed webhooks sent concurrently to a real API while a worker process
/// is SIGKILLed every ~2 s. A share of them reply by callback (to ten loopback receivers,
/// as the per-endpoint limit is 100 a minute; each receiver's comments are one thread,
/// whose replies must arrive in order), the rest with `none` delivery.
///
/// A killed worker's claimed jobs come back when their 30 s lease expires; to keep the
/// test short, the test expires the leases of exactly the killed process's claims
/// (`locked_by = hookq-worker-<pid>:…`) right after each kill, as an operator or the
/// sweep would after 30 s.
#[tokio::test]
#[ignore = "fault test: kills worker processes"]
async fn worker_processes_killed_every_2s_lose_nothing_and_run_nothing_twice() {
    let total: usize = std::env::var("HOOKQ_CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let receivers = 10;
    let per_receiver = 40;
    let (db, env) = demo_env(&[
        ("HOOKQ_ALLOW_PRIVATE_CALLBACKS", "1"),
        ("HOOKQ_DELIVERY_BACKOFF", "200ms,400ms,800ms"),
        ("TASKIQ_MAX_ASYNC_TASKS", "16"),
    ])
    .await;
    let mut servers = Vec::new();
    for k in 0..receivers {
        let s = answering(ResponseTemplate::new(200)).await;
        callback_post(
            &db.pool,
            &format!("chaos_acct_{k}"),
            &format!("chaos_post_{k}"),
            &format!("{}/hooks", s.uri()),
        )
        .await;
        servers.push(s);
    }
    let (mut api, base) = api_process(&env).await;
    let (mut sup, sup_pid) = start_workers(&env, 2).await;

    // Events are made as they are sent: at least `total`, and more until the killer has
    // struck `KILLS` times, so the kills land under load however fast this machine is.
    const KILLS: usize = 3;
    let killed = Arc::new(Mutex::new(Vec::<u32>::new()));
    let callback_every = (total / (receivers * per_receiver)).max(1);
    let callback_cids = Arc::new(Mutex::new(HashSet::<String>::new()));
    let bodies = {
        let killed = killed.clone();
        let callback_cids = callback_cids.clone();
        (0..total * 20)
            .take_while(move |i| *i < total || killed.lock().unwrap().len() < KILLS)
            .map(move |i| {
                let cid = format!("kill_{i}");
                if i % callback_every == 0 && i < total {
                    // Each receiver's comments are one thread (contract section 10,
                    // order): its replies must arrive in the order the comments were
                    // stored, kills included. A thread's comments are sent far apart
                    // (`callback_every × receivers` events), so each is stored before
                    // the next is sent.
                    callback_cids.lock().unwrap().insert(cid.clone());
                    let k = i % receivers;
                    let mut body: Value =
                        serde_json::from_str(&comment_on(&format!("chaos_post_{k}"), &cid))
                            .unwrap();
                    body["entry"][0]["changes"][0]["value"]["parent_id"] =
                        format!("chaos_thread_{k}").into();
                    (cid, body.to_string())
                } else {
                    let body = comment_on("post_123", &cid);
                    (cid, body)
                }
            })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let load = tokio::spawn({
        let base = base.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        async move { send_all(&base, bodies, 32, stop, acked).await }
    });

    // The killer: one worker every ~2 s while the queue is busy.
    let killing = Arc::new(AtomicBool::new(true));
    let killer = tokio::spawn({
        let killed = killed.clone();
        let killing = killing.clone();
        let pool = db.pool.clone();
        async move {
            let mut n = 0usize;
            while killing.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !killing.load(Ordering::Relaxed) {
                    break;
                }
                // Kill only while both workers are up (the supervisor restarts a worker
                // that keeps dying ever more slowly, up to 5 s).
                let Some(kids) = poll_for(15, || async {
                    let c = children(sup_pid);
                    (c.len() == 2).then_some(c)
                })
                .await
                else {
                    continue;
                };
                let victim = kids[n % 2];
                n += 1;
                signal(victim, Signal::SIGKILL);
                killed.lock().unwrap().push(victim);
                // Wait for the process to be gone, then hand its claims back.
                let _ = wait_for(10, "the killed worker to die", || async {
                    (!children(sup_pid).contains(&victim)).then_some(())
                })
                .await;
                sqlx::query("UPDATE queue_jobs SET lease_expires_at = now() - interval '1 second' WHERE status = 'running' AND locked_by LIKE $1")
                    .bind(format!("hookq-worker-{victim}:%"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
    });

    let tally = load.await.unwrap();
    let send_time = started.elapsed();
    let acked_ids = tally.acked_ids();
    let callback_cids = callback_cids.lock().unwrap().clone();
    // Keep killing until the queue drains, so processing (not only ingest) is hit.
    let pool = db.pool.clone();
    wait_all_finished(&pool, &acked_ids, 240).await;
    killing.store(false, Ordering::Relaxed);
    killer.await.unwrap();
    let total_time = started.elapsed();
    let killed = killed.lock().unwrap().clone();
    let alive_workers = wait_for(
        30,
        "the supervisor to replace the last killed worker",
        || async {
            let c = children(sup_pid);
            (c.len() == 2).then_some(c.len())
        },
    )
    .await;

    // A callback log stays `processing` until its delivery ends, so every receiver
    // request has arrived by now.
    let rows = statuses(&pool, &acked_ids).await;
    let mut processed = 0;
    let mut unknown = 0;
    let mut other = Vec::new();
    let mut reruns = 0;
    for (id, (status, err, attempts)) in &rows {
        if *attempts > 1 {
            reruns += 1;
        }
        match (status.as_str(), err.as_deref()) {
            ("processed", _) => processed += 1,
            ("dead_letter", Some(OUTCOME_UNKNOWN)) => unknown += 1,
            _ => other.push((*id, status.clone(), err.clone())),
        }
    }
    let id_of: HashMap<i64, String> = tally
        .acked()
        .iter()
        .flat_map(|s| s.ids.iter().map(move |id| (*id, s.comment_id.clone())))
        .collect();
    let callback_logs: Vec<i64> = id_of
        .iter()
        .filter(|(_, c)| callback_cids.contains(*c))
        .map(|(i, _)| *i)
        .collect();
    let seen = webhook_ids(&servers).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    // Each thread's replies, in the order its receiver got them: increasing log ids.
    let mut out_of_order = Vec::new();
    for s in &servers {
        let logs: Vec<i64> = s
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| verify_callback(r).1["data"]["log_id"].as_i64().unwrap())
            .collect();
        if logs.windows(2).any(|w| w[0] >= w[1]) {
            out_of_order.push(logs);
        }
    }
    let replies = count(&pool, "SELECT count(*) FROM outbound_replies").await;
    let delivered = count(
        &pool,
        "SELECT count(*) FROM outbound_replies WHERE status = 'delivered'",
    )
    .await;
    let dup_keys = count(
        &pool,
        "SELECT count(*) - count(DISTINCT dedup_key) FROM webhook_logs",
    )
    .await;
    let restarts = killed.len();

    println!(
        "FAULT worker-kill: sent={} acknowledged={} by_status={:?} processed={} dead_letter_outcome_unknown={} other={} \
         reruns_after_kill={} callbacks: logs={} replies_staged={} delivered={} receiver_ids={} receiver_duplicates={} \
         duplicate_rows={} workers_killed={} workers_alive_after={} send_s={:.1} total_s={:.1}",
        tally.sent.len(),
        acked_ids.len(),
        tally.by_status(),
        processed,
        unknown,
        other.len(),
        reruns,
        callback_logs.len(),
        replies,
        delivered,
        seen.len(),
        twice.len(),
        dup_keys,
        restarts,
        alive_workers,
        send_time.as_secs_f64(),
        total_time.as_secs_f64(),
    );
    assert!(tally.sent.len() >= total, "every request was answered");
    assert_eq!(
        tally.acked().len(),
        tally.sent.len(),
        "the API (never killed here) acknowledged everything"
    );
    assert_eq!(
        rows.len(),
        acked_ids.len(),
        "every acknowledged event is stored"
    );
    assert!(
        other.is_empty(),
        "acknowledged events not processed: {:?}",
        &other[..other.len().min(10)]
    );
    assert_eq!(processed + unknown, acked_ids.len());
    assert!(
        twice.is_empty(),
        "webhook-ids the receiver saw twice: {twice:?}"
    );
    assert!(
        out_of_order.is_empty(),
        "a thread's replies arrived out of order: {out_of_order:?}"
    );
    // Outcome-unknown logs are only ever callback logs; each was seen at most once (above),
    // and every delivered reply was seen exactly once.
    let seen_n = seen.len() as i64;
    assert!(
        seen_n >= delivered && seen_n <= delivered + unknown as i64,
        "receiver saw {seen_n} ids for {delivered} delivered and {unknown} outcome-unknown replies"
    );
    assert_eq!(
        delivered as usize + unknown,
        callback_logs.len(),
        "every callback log delivered or outcome-unknown"
    );
    assert_eq!(dup_keys, 0);
    assert!(restarts >= KILLS, "only {restarts} kills");
    assert_eq!(
        alive_workers, 2,
        "the supervisor replaced every killed worker"
    );
    assert_nothing_stuck(&pool).await;

    signal(sup_pid, Signal::SIGTERM);
    assert!(exits_within(&mut sup, 30, "the supervisor").await.success());
    api.kill().await.unwrap();
}

/// PostgreSQL stopped for ~10 s while webhooks arrive and workers run: 503 while it is
/// down (never a 200 for an event that is not stored), then everything resumes by
/// itself; no acknowledged event is lost, no job stuck.
#[tokio::test]
#[ignore = "fault test: stops the shared PostgreSQL"]
async fn postgres_stopped_for_10s_answers_503_and_loses_nothing() {
    let Some(cluster) = hookq_testkit::cluster().await else {
        eprintln!("skipped: HOOKQ_TEST_DATABASE_URL is an external server the test cannot stop");
        return;
    };
    let (db, env) = demo_env(&[]).await;
    let (mut api, base) = api_process(&env).await;
    let (mut sup, sup_pid) = start_workers(&env, 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let bodies: Vec<(String, String)> = (0..200_000)
        .map(|i| {
            let cid = format!("pg_{i}");
            let body = compact(&cid, "Hello");
            (cid, body)
        })
        .collect();
    let load = tokio::spawn({
        let (base, stop, acked) = (base.clone(), stop.clone(), acked.clone());
        async move { send_all(&base, bodies, 16, stop, acked).await }
    });
    // Some traffic first.
    wait_for(30, "200 acknowledgements before the outage", || async {
        (acked.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .expect("stop PostgreSQL");
    let down_at = Instant::now();
    let acked_at_stop = acked.load(Ordering::Relaxed);
    // Once the API knows the database is down, it answers 503 at once (issue 13.6).
    let http = reqwest::Client::new();
    wait_for(10, "readiness to report the database down", || async {
        // An answer slower than this is the slow path, not yet the known-down one.
        let r = http
            .get(format!("{base}/ready"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let noticed_after = down_at.elapsed();
    let mut slowest_503 = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        let s = send_one(
            &http,
            &base,
            format!("outage_{i}"),
            comment_on("post_123", &format!("outage_{i}")),
        )
        .await;
        slowest_503 = slowest_503.max(t.elapsed());
        assert_eq!(s.status, Some(503), "a webhook while the database is down");
    }
    println!(
        "FAULT postgres-stop: noticed_down_after_s={:.2} slowest_503_ms={}",
        noticed_after.as_secs_f64(),
        slowest_503.as_millis()
    );
    assert!(
        slowest_503 < Duration::from_secs(1),
        "503 took {slowest_503:?} while the database was known to be down"
    );
    // The outage itself is the fault being injected: ~10 s, by design.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed())).await;
    let acked_during = acked.load(Ordering::Relaxed) - acked_at_stop;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let down_for = down_at.elapsed();
    let acked_at_start = acked.load(Ordering::Relaxed);
    let resumed = Instant::now();
    wait_for(60, "acknowledgements to resume", || async {
        (acked.load(Ordering::Relaxed) >= acked_at_start + 200).then_some(())
    })
    .await;
    let resume_time = resumed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();

    let pool = PgPool::connect(&db.url).await.unwrap();
    let acked_ids = tally.acked_ids();
    wait_all_finished(&pool, &acked_ids, 120).await;
    let rows = statuses(&pool, &acked_ids).await;
    let processed = rows.values().filter(|(s, _, _)| s == "processed").count();
    let by_status = tally.by_status();
    let unavailable = by_status.get("503").copied().unwrap_or(0);
    let stored_total = count(&pool, "SELECT count(*) FROM webhook_logs").await;
    let stored_unacked = stored_total - acked_ids.len() as i64;
    println!(
        "FAULT postgres-stop: down_s={:.1} sent={} acknowledged={} by_status={:?} acked_while_down={} \
         processed={} lost=0 stored_without_200={} resumed_within_s={:.1}",
        down_for.as_secs_f64(),
        tally.sent.len(),
        acked_ids.len(),
        by_status,
        acked_during,
        processed,
        stored_unacked,
        resume_time.as_secs_f64(),
    );
    assert!(unavailable > 0, "no 503 while PostgreSQL was down");
    assert!(
        by_status
            .keys()
            .all(|k| k == "200" || k == "503" || k == "connection error"),
        "unexpected answers: {by_status:?}"
    );
    assert_eq!(rows.len(), acked_ids.len(), "acknowledged events lost");
    assert_eq!(
        processed,
        acked_ids.len(),
        "acknowledged events not processed"
    );
    assert_nothing_stuck(&pool).await;
    assert_eq!(children(sup_pid).len(), 2);

    signal(sup_pid, Signal::SIGTERM);
    assert!(exits_within(&mut sup, 30, "the supervisor").await.success());
    api.kill().await.unwrap();
}

/// The API process SIGKILLed under load: every 200 it gave is in `webhook_logs`.
#[tokio::test]
#[ignore = "fault test: kills the API process"]
async fn an_api_killed_under_load_stored_every_event_it_acknowledged() {
    let (db, env) = demo_env(&[]).await;
    let (mut api, base) = api_process(&env).await;
    let api_pid = api.id().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let bodies: Vec<(String, String)> = (0..100_000)
        .map(|i| {
            let cid = format!("apikill_{i}");
            let body = compact(&cid, "Hello");
            (cid, body)
        })
        .collect();
    let load = tokio::spawn({
        let (base, stop, acked) = (base.clone(), stop.clone(), acked.clone());
        async move { send_all(&base, bodies, 32, stop, acked).await }
    });
    wait_for(60, "1,000 acknowledgements", || async {
        (acked.load(Ordering::Relaxed) >= 1000).then_some(())
    })
    .await;
    signal(api_pid, Signal::SIGKILL);
    let status = exits_within(&mut api, 10, "the killed API").await;
    assert!(!status.success());
    // With the API gone, every request now fails fast: stop sending.
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    let acked_ids = tally.acked_ids();
    let rows = statuses(&db.pool, &acked_ids).await;
    let stored_total = count(&db.pool, "SELECT count(*) FROM webhook_logs").await;
    let jobs = count(
        &db.pool,
        "SELECT count(*) FROM queue_jobs WHERE task_name = 'process_webhook'",
    )
    .await;
    println!(
        "FAULT api-kill: sent={} acknowledged={} by_status={:?} acked_and_stored={} lost={} \
         stored_total={} stored_without_200={} jobs_enqueued={}",
        tally.sent.len(),
        acked_ids.len(),
        tally.by_status(),
        rows.len(),
        acked_ids.len() - rows.len(),
        stored_total,
        stored_total - acked_ids.len() as i64,
        jobs,
    );
    assert!(
        tally.by_status().contains_key("connection error"),
        "the kill cut requests off"
    );
    assert_eq!(
        rows.len(),
        acked_ids.len(),
        "acknowledged events missing from webhook_logs"
    );
    assert_eq!(jobs, stored_total, "every stored event has its job");
}

/// The callback endpoint down (connection refused) for a while, then back. With a short
/// `HOOKQ_DELIVERY_BACKOFF`, replies whose retries run out while it is down end
/// `dead_letter`; those still within their schedule are delivered when it is back; a
/// bulk retry of the dead letters delivers each once, with the same `webhook-id`.
#[tokio::test]
#[ignore = "fault test: takes a callback endpoint down"]
async fn a_callback_endpoint_down_then_back_resumes_and_bulk_retry_delivers_once() {
    // Reserve a port, and serve on it only while "up".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let backoff = "1s,2s,3s";
    let app = spawn_app(Options {
        env: env_of(&[
            ("HOOKQ_ALLOW_PRIVATE_CALLBACKS", "1"),
            ("HOOKQ_DELIVERY_BACKOFF", backoff),
        ]),
        ..Options::default()
    })
    .await;
    set_delivery(
        app.pool(),
        hookq_testkit::demo::DEMO_IG_ACCOUNT,
        "callback",
        Some(&url),
    )
    .await;

    // Ten replies a wave: the endpoint's limit of 100 attempts a minute must not be what
    // delays them (10 × 4 + 10 × 4 + 10 < 100).
    // First wave: sent while it is down, runs out of attempts.
    let mut first = Vec::new();
    for i in 0..10 {
        first.extend(
            app.ingest(
                "/webhooks/instagram",
                &compact(&format!("down_a{i}"), "Hello"),
            )
            .await,
        );
    }
    for &id in &first {
        let row = app.wait_finished(id).await;
        assert_eq!(row.status.as_str(), "dead_letter", "{row:?}");
    }
    let tries_first: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_attempts WHERE log_id = ANY($1)")
            .bind(&first)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(tries_first, 10 * 4, "one try and three retries each");

    // Second wave: first attempts fail while down; then it comes back within the schedule.
    let mut second = Vec::new();
    for i in 0..10 {
        second.extend(
            app.ingest(
                "/webhooks/instagram",
                &compact(&format!("down_b{i}"), "Hello"),
            )
            .await,
        );
    }
    let pool = app.pool().clone();
    let s2 = second.clone();
    wait_for(20, "a failed first attempt for every second-wave reply", || {
        let (pool, s2) = (pool.clone(), s2.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT log_id) FROM delivery_attempts WHERE log_id = ANY($1) AND state = 'failed'",
            )
            .bind(&s2)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == s2.len() as i64).then_some(())
        }
    })
    .await;
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind the endpoint's port");
    let server = MockServer::builder().listener(listener).start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let back_at = Instant::now();
    for &id in &second {
        let row = app.wait_finished(id).await;
        assert_eq!(row.status.as_str(), "processed", "{row:?}");
    }
    let resumed_in = back_at.elapsed();
    // Resumed per the schedule: no attempt came sooner than its backoff step after the
    // one before (the first retry is due 1 s after the first try).
    let gaps: Vec<f64> = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT EXTRACT(EPOCH FROM started_at - lag(started_at) OVER (PARTITION BY log_id ORDER BY attempt))::float8
         FROM delivery_attempts WHERE log_id = ANY($1) ORDER BY log_id, attempt",
    )
    .bind(&second)
    .fetch_all(app.pool())
    .await
    .unwrap()
    .into_iter()
    .flatten()
    .collect();
    assert!(
        gaps.iter().all(|g| *g >= 0.9),
        "a retry before its backoff: {gaps:?}"
    );

    // Bulk retry of the dead letters.
    let resp = app
        .http
        .post(format!("{}/api/webhook-logs/retry", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "dead_letter"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    for &id in &first {
        let row = app.wait_finished(id).await;
        assert_eq!(row.status.as_str(), "processed", "{row:?}");
    }
    let reqs = server.received_requests().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &reqs {
        *seen.entry(verify_callback(r).0).or_insert(0) += 1;
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT webhook_id FROM outbound_replies WHERE log_id = ANY($1)")
            .bind(first.iter().chain(&second).copied().collect::<Vec<_>>())
            .fetch_all(app.pool())
            .await
            .unwrap();
    println!(
        "FAULT callback-down: first_wave={} dead_letter_then_bulk_retried={} second_wave={} resumed_in_s={:.1} \
         receiver_requests={} distinct_webhook_ids={} duplicates={} retry_answer={body}",
        first.len(),
        first.len(),
        second.len(),
        resumed_in.as_secs_f64(),
        reqs.len(),
        seen.len(),
        seen.values().filter(|n| **n > 1).count(),
    );
    assert_eq!(reqs.len(), 20, "each reply delivered once");
    assert!(seen.values().all(|n| *n == 1));
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        seen.keys().collect::<HashSet<_>>()
    );
    assert_nothing_stuck(app.pool()).await;
    app.stop().await;
}

/// SIGTERM to a real API and a real worker supervisor under load: both exit 0 within
/// 30 s, nothing is left `processing`, every 200 is stored.
#[tokio::test]
#[ignore = "fault test: signals real processes"]
async fn sigterm_under_load_exits_0_within_30s_and_leaves_nothing_processing() {
    let (db, env) = demo_env(&[]).await;
    let (mut api, base) = api_process(&env).await;
    let (mut sup, sup_pid) = start_workers(&env, 2).await;
    let workers = children(sup_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let bodies: Vec<(String, String)> = (0..100_000)
        .map(|i| {
            let cid = format!("term_{i}");
            let body = compact(&cid, "Hello");
            (cid, body)
        })
        .collect();
    let load = tokio::spawn({
        let (base, stop, acked) = (base.clone(), stop.clone(), acked.clone());
        async move { send_all(&base, bodies, 32, stop, acked).await }
    });
    wait_for(60, "1,000 acknowledgements", || async {
        (acked.load(Ordering::Relaxed) >= 1000).then_some(())
    })
    .await;
    let processing_at_term = count(
        &db.pool,
        "SELECT count(*) FROM webhook_logs WHERE status = 'processing'",
    )
    .await;
    let t = Instant::now();
    signal(api.id().unwrap(), Signal::SIGTERM);
    signal(sup_pid, Signal::SIGTERM);
    let api_status = exits_within(&mut api, 30, "the API").await;
    let api_exit = t.elapsed();
    let sup_status = exits_within(&mut sup, 30, "the supervisor").await;
    let sup_exit = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    let acked_ids = tally.acked_ids();
    let rows = statuses(&db.pool, &acked_ids).await;
    let processing = count(
        &db.pool,
        "SELECT count(*) FROM webhook_logs WHERE status = 'processing'",
    )
    .await;
    let running = count(
        &db.pool,
        "SELECT count(*) FROM queue_jobs WHERE status = 'running'",
    )
    .await;
    let processed = rows.values().filter(|(s, _, _)| s == "processed").count();
    let running_detail: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT j.task_name, coalesce(l.status, '-'), j.attempts, j.locked_by FROM queue_jobs j
         LEFT JOIN webhook_logs l ON l.job_id = j.id WHERE j.status = 'running' LIMIT 5",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    println!("running jobs after exit (first 5): {running_detail:?}");
    println!(
        "FAULT sigterm: sent={} acknowledged={} by_status={:?} stored={} processed_before_exit={} \
         processing_at_sigterm={} processing_after={} running_jobs_after={} api_exit={:?} in {:.1}s supervisor_exit={:?} in {:.1}s",
        tally.sent.len(),
        acked_ids.len(),
        tally.by_status(),
        rows.len(),
        processed,
        processing_at_term,
        processing,
        running,
        api_status.code(),
        api_exit.as_secs_f64(),
        sup_status.code(),
        sup_exit.as_secs_f64(),
    );
    assert!(api_status.success(), "API exit {api_status:?}");
    assert!(sup_status.success(), "supervisor exit {sup_status:?}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} still alive");
    }
    assert_eq!(rows.len(), acked_ids.len(), "acknowledged events lost");
    assert_eq!(processing, 0, "logs left processing");
    assert_eq!(running, 0, "jobs left running");

    // What was handed back is finished by the next workers.
    let (mut sup2, sup2_pid) = start_workers(&env, 2).await;
    wait_all_finished(&db.pool, &acked_ids, 120).await;
    assert_nothing_stuck(&db.pool).await;
    signal(sup2_pid, Signal::SIGTERM);
    assert!(
        exits_within(&mut sup2, 30, "the second supervisor")
            .await
            .success()
    );
}

/// Issue 13.2: SIGTERM while replies are being delivered to a slow endpoint (each answer
/// takes 1 s, at most 10 in flight per endpoint, so most deliveries are waiting their
/// turn): the supervisor exits 0 in time and no log is left `processing` (a worker holds
/// a `processing` log, and none does after a graceful stop). After a restart every event
/// gets exactly one reply.
#[tokio::test]
#[ignore = "fault test: stops worker processes"]
async fn sigterm_during_slow_deliveries_leaves_nothing_processing_and_replies_once() {
    let (db, env) = demo_env(&[("HOOKQ_ALLOW_PRIVATE_CALLBACKS", "1")]).await;
    let receiver = answering(ResponseTemplate::new(200).set_delay(Duration::from_secs(1))).await;
    callback_post(
        &db.pool,
        "acct_slow",
        "post_slow",
        &format!("{}/hook", receiver.uri()),
    )
    .await;
    let (mut sup, sup_pid) = start_workers(&env, 2).await;
    let ingestor = hookq_tasks::intake::Ingestor::new(
        db.pool.clone(),
        hookq_tasks::queue::Notifier::spawn(db.pool.clone()),
        3,
    );
    let mut ids = Vec::new();
    for i in 0..60 {
        let body = comment_on("post_slow", &format!("slow_{i}"));
        let events = hookq_core::intake::parse_instagram(body.as_bytes()).unwrap();
        ids.extend(ingestor.ingest(&events, None).await.unwrap().ids);
    }
    wait_requests(&receiver, 1).await;
    let t = Instant::now();
    signal(sup_pid, Signal::SIGTERM);
    let status = exits_within(&mut sup, 30, "the supervisor").await;
    let exit = t.elapsed();
    let processing = count(
        &db.pool,
        "SELECT count(*) FROM webhook_logs WHERE status = 'processing'",
    )
    .await;
    let running = count(
        &db.pool,
        "SELECT count(*) FROM queue_jobs WHERE status = 'running'",
    )
    .await;
    let before_restart = webhook_ids(std::slice::from_ref(&receiver)).await.len();
    println!(
        "FAULT sigterm-slow-delivery: logs={} delivered_before_exit={before_restart} exit={:?} in {:.1}s \
         processing_after={processing} running_jobs_after={running}",
        ids.len(),
        status.code(),
        exit.as_secs_f64()
    );
    assert!(status.success(), "supervisor exit {status:?}");
    assert_eq!(processing, 0, "logs left processing after a graceful stop");
    assert_eq!(running, 0, "jobs left running after a graceful stop");

    let (mut sup2, sup2_pid) = start_workers(&env, 2).await;
    wait_all_finished(&db.pool, &ids, 120).await;
    let rows = statuses(&db.pool, &ids).await;
    let not_processed: Vec<_> = rows.values().filter(|(s, _, _)| s != "processed").collect();
    assert!(not_processed.is_empty(), "{not_processed:?}");
    let seen = webhook_ids(std::slice::from_ref(&receiver)).await;
    assert_eq!(seen.len(), ids.len(), "one reply per event");
    assert!(
        seen.values().all(|&n| n == 1),
        "a reply was delivered twice: {seen:?}"
    );
    assert_nothing_stuck(&db.pool).await;
    signal(sup2_pid, Signal::SIGTERM);
    assert!(
        exits_within(&mut sup2, 30, "the second supervisor")
            .await
            .success()
    );
}
