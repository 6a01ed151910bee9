//! Benchmark driver for `scripts/bench` (contract section 8).
//!
//! `bench queue` measures the queue alone against `DATABASE_URL`: no-op jobs enqueued in
//! batches of 1,000 (`enqueue_batch_per_s`), that pre-filled queue drained by one worker
//! process (`process_per_s`), and idle enqueue → completion committed latency
//! (`p50_ms`, `p99_ms`). `bench webhook-latency URL` posts one signed compact comment at
//! a time to a running API with idle workers and times it from the request until its log
//! is `processed` (`webhook_p50_ms`, `webhook_p99_ms`). `bench cluster-start DIR` / `cluster-stop DIR` run a throwaway
//! durable PostgreSQL; `bench reset` empties the tables and loads the demo data.
//! `bench search` (contract section 13) fills `webhook_logs` with `SEARCH_LOGS`
//! (1,000,000) logs of generated comments and times the admin list's search (`q`) through
//! the API's own read (`hookq_core::logs::reads::page`): `hookq_search logs=N queries=N
//! p50_ms= p95_ms= max_ms=` over names, ids and phrases, plus the time of the commonest
//! word (`common_matches`, `common_ms`), and `EXPLAIN (ANALYZE, BUFFERS)` of one search
//! on stderr (`SEARCH_REUSE=1` keeps logs a previous run filled). `bench retention`
//! (contract section 11) fills one past month partition with `RETENTION_LOGS`
//! (1,000,000) processed logs (search text, dedup keys, a delivered reply and its attempt
//! with each, as intake and delivery write them) twice, and times removing them row by row (the `PURGE` statement in batches of
//! 5,000, what retention did before partitions, pauses left out) and as retention does
//! now (detach, forget, drop): `hookq_retention logs=N delete_s= drop_s= locked_ms=
//! forget_s=` (`locked_ms`: how long `webhook_logs` was locked; `forget_s`: clearing
//! connection statuses' links into the month and counting its logs). `bench replay URL` starts a template shadow replay of the newest
//! `REPLAY_N` (10,000) logs through the admin API of a running hookq and, until it is
//! done, sends one live comment at a time, timing each until processed (and 50 before
//! it starts, for the idle path): `hookq_replay logs=N replay_s= idle_p50_ms=
//! live_samples=N live_p50_ms= live_p99_ms=`.

// Example code is not a public API: the workspace's `missing_docs` lint does not apply.
#![allow(missing_docs)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hookq_tasks::queue::{
    self, EnqueueOptions, Job, JobContext, JobError, Notifier, WorkerOptions, Workers,
};
use hookq_testkit::devdb::{ClusterOptions, LocalCluster};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
    /// ~300 bytes of payload, like the peer harnesses.
    pad: String,
}

impl Job for Noop {
    const NAME: &'static str = "bench_noop";
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cluster-start") => {
            let c = LocalCluster::ensure(args[1].as_ref(), &ClusterOptions { durable: true })?;
            println!("{}", c.url("postgres"));
        }
        Some("cluster-stop") => {
            let c = LocalCluster::ensure(args[1].as_ref(), &ClusterOptions { durable: true })?;
            c.stop()?;
        }
        Some("reset") => {
            let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
            hookq_core::db::migrate(&pool).await?;
            sqlx::query(
                "TRUNCATE webhook_logs, webhook_log_text, webhook_dedup, outbound_replies,
                 delivery_attempts, queue_jobs, queue_jobs_done CASCADE",
            )
            .execute(&pool)
            .await?;
            hookq_testkit::demo::load(&pool).await?;
            sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
        }
        Some("queue") => queue_bench().await?,
        Some("search") => search_bench().await?,
        Some("retention") => retention_bench().await?,
        Some("replay") => {
            replay_bench(
                args.get(1)
                    .map(String::as_str)
                    .unwrap_or("http://127.0.0.1:8080"),
            )
            .await?
        }
        Some("webhook-latency") => {
            webhook_latency(
                args.get(1)
                    .map(String::as_str)
                    .unwrap_or("http://127.0.0.1:8080"),
            )
            .await?
        }
        _ => anyhow::bail!(
            "usage: bench queue | search | retention | replay URL | webhook-latency URL | reset | cluster-start DIR | cluster-stop DIR"
        ),
    }
    Ok(())
}

/// The most frequent words of the generated comments (a shop's), first in the
/// vocabulary; [`vocabulary`] adds pseudo-words after them.
const WORDS: [&str; 48] = [
    "love",
    "this",
    "jacket",
    "shirt",
    "blue",
    "red",
    "green",
    "size",
    "price",
    "ship",
    "canada",
    "brazil",
    "portugal",
    "when",
    "back",
    "stock",
    "available",
    "amazing",
    "color",
    "colour",
    "please",
    "reply",
    "order",
    "delivery",
    "return",
    "refund",
    "cotton",
    "wool",
    "small",
    "medium",
    "large",
    "xl",
    "discount",
    "code",
    "sale",
    "today",
    "tomorrow",
    "week",
    "gift",
    "friend",
    "sister",
    "mother",
    "wow",
    "nice",
    "great",
    "cute",
    "want",
    "need",
];
const FIRST: [&str; 20] = [
    "Maya", "Leo", "Ines", "Noah", "Zoe", "Ava", "Liam", "Sofia", "Tiago", "Emma", "Lucas", "Ana",
    "Mateo", "Julia", "Omar", "Yara", "Hugo", "Clara", "Ravi", "Lena",
];
const LAST: [&str; 25] = [
    "Costa",
    "Silva",
    "Santos",
    "Ferreira",
    "Pereira",
    "Oliveira",
    "Rodrigues",
    "Martins",
    "Jesus",
    "Sousa",
    "Fernandes",
    "Goncalves",
    "Gomes",
    "Lopes",
    "Marques",
    "Alves",
    "Almeida",
    "Ribeiro",
    "Pinto",
    "Carvalho",
    "Teixeira",
    "Moreira",
    "Correia",
    "Mendes",
    "Nunes",
];

/// 5,000 words: [`WORDS`], then pseudo-words of two or three syllables.
fn vocabulary() -> Vec<String> {
    const SYL: [&str; 20] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "go", "ri", "za", "mu", "be",
        "fo", "ni", "sa", "te", "ho",
    ];
    let mut v: Vec<String> = WORDS.iter().map(|w| w.to_string()).collect();
    let mut i = 0usize;
    while v.len() < 5_000 {
        let (a, b, c) = (i % 20, (i / 20) % 20, (i / 400) % 20);
        v.push(if i < 400 {
            format!("{}{}", SYL[a], SYL[b])
        } else {
            format!("{}{}{}", SYL[a], SYL[b], SYL[c])
        });
        i += 1;
    }
    v
}

/// `bench retention`: see the module doc.
async fn retention_bench() -> anyhow::Result<()> {
    use hookq_core::logs::partitions::{self, Dropped, LogPartition};
    let n: i64 = std::env::var("RETENTION_LOGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    hookq_core::db::migrate(&pool).await?;
    sqlx::query(
        "TRUNCATE webhook_logs, webhook_log_text, webhook_dedup, outbound_replies, delivery_attempts",
    )
        .execute(&pool)
        .await?;
    let month = chrono::Utc::now() - chrono::Months::new(3);
    let partition = LogPartition::of(month);
    let fill = || async {
        sqlx::query("SELECT hookq_log_partition_create($1)")
            .bind(month)
            .execute(&pool)
            .await?;
        let t = Instant::now();
        let chunk = 100_000i64;
        let mut from = 0;
        while from < n {
            let to = (from + chunk).min(n);
            // A month of comments as intake and delivery store them: the log (a real
            // payload's size), its search text, its dedup key, its reply and the one
            // attempt that delivered it; every one processed.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH l AS (
                     INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload,
                         status, item_id, sender_id, sender_name, message_text, received_at,
                         processed_at, outcome, reply_text, conversation_key, attempts)
                     SELECT 'ig:comment:' || g, 'instagram', 'comment', 'reply',
                         jsonb_build_object('object', 'instagram', 'entry', jsonb_build_array(
                             jsonb_build_object('id', '17841400000000000', 'time', 1700000000,
                                 'changes', jsonb_build_array(jsonb_build_object(
                                     'field', 'comments', 'value', jsonb_build_object(
                                         'id', g::text, 'text', 'love this jacket ' || g,
                                         'from', jsonb_build_object('id', 'u' || (g % 2000),
                                             'username', 'user' || (g % 2000)),
                                         'media', jsonb_build_object('id', 'm' || (g % 50)))))))),
                         'processed', g::text, 'u' || (g % 2000), 'user' || (g % 2000),
                         'love this jacket ' || g,
                         date_trunc('month', $3::timestamptz, 'UTC') + (g % 2419200) * interval '1 second',
                         date_trunc('month', $3::timestamptz, 'UTC') + (g % 2419200) * interval '1 second'
                             + interval '2 seconds',
                         'replied', 'Thanks!', 'instagram:acct:thread:' || g, 1
                     FROM generate_series($1::int8, $2::int8 - 1) g
                     RETURNING id, received_at, dedup_key, {doc} AS doc, conversation_key),
                 t AS (INSERT INTO webhook_log_text (log_id, received_at, doc, conversation_key)
                       SELECT id, received_at, doc, conversation_key FROM l),
                 r AS (INSERT INTO outbound_replies (log_id, log_received_at, kind, webhook_id,
                           status, attempts, provider_message_id, created_at, delivered_at)
                       SELECT id, received_at, 'graph_api', 'msg_' || md5(id::text), 'delivered', 1,
                           'ig_' || id, received_at + interval '1 second',
                           received_at + interval '2 seconds'
                       FROM l
                       RETURNING id, log_id, log_received_at, created_at),
                 a AS (INSERT INTO delivery_attempts (reply_id, log_id, log_received_at, attempt,
                           kind, url, limit_key, state, status_code, duration_ms, started_at,
                           finished_at)
                       SELECT id, log_id, log_received_at, 1, 'graph_api',
                           'https://graph.facebook.com/v21.0/' || log_id || '/replies',
                           'integration:00000000-0000-0000-0000-000000000001', 'succeeded', 200,
                           180, created_at, created_at + interval '180 milliseconds'
                       FROM r)
                 INSERT INTO webhook_dedup (dedup_key, month, log_id, received_at)
                 SELECT dedup_key, date_trunc('month', received_at, 'UTC'), id, received_at
                 FROM l",
                doc = hookq_core::logs::SEARCH_DOC
            )))
            .bind(from)
            .bind(to)
            .bind(month)
            .execute(&pool)
            .await?;
            from = to;
        }
        sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
        eprintln!("filled {n} logs in {:.1}s", t.elapsed().as_secs_f64());
        anyhow::Ok(())
    };

    fill().await?;
    let t = Instant::now();
    let mut deleted = 0;
    loop {
        let d = hookq_core::logs::transitions::purge_processed(
            &pool,
            &partition,
            chrono::Utc::now(),
            5_000,
        )
        .await?;
        deleted += d;
        if d < 5_000 {
            break;
        }
    }
    let delete_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(deleted == n as u64, "deleted {deleted} of {n}");
    for (_, table) in partition.companions() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(&pool)
            .await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE {}",
        partition.logs_table()
    )))
    .execute(&pool)
    .await?;

    fill().await?;
    let t = Instant::now();
    let dropped = partitions::drop_month(&pool, &partition, 2_000).await?;
    let drop_s = t.elapsed().as_secs_f64();
    let Dropped::Dropped {
        logs,
        locked,
        forget,
    } = dropped
    else {
        anyhow::bail!("the month was kept");
    };
    anyhow::ensure!(logs == n as u64, "dropped {logs} of {n}");
    println!(
        "hookq_retention logs={n} delete_s={delete_s:.2} drop_s={drop_s:.3} locked_ms={:.1} forget_s={:.3}",
        locked.as_secs_f64() * 1e3,
        forget.as_secs_f64()
    );
    Ok(())
}

async fn search_bench() -> anyhow::Result<()> {
    use hookq_core::logs::reads::{self, LogFilter};
    let n = env_u64("SEARCH_LOGS", 1_000_000) as i64;
    let rounds = env_u64("SEARCH_ROUNDS", 20) as usize;
    let pool = hookq_core::db::connect(std::env::var("DATABASE_URL")?.parse()?, 4).await?;
    hookq_core::db::migrate(&pool).await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_log_text")
        .fetch_one(&pool)
        .await?;
    let reuse = std::env::var("SEARCH_REUSE").is_ok_and(|v| v == "1") && have == n;
    if !reuse {
        sqlx::query("TRUNCATE webhook_logs, queue_jobs, queue_jobs_done CASCADE")
            .execute(&pool)
            .await?;
    }
    let t = Instant::now();
    // Comments over 30 days, ids like Instagram's (17 digits, the leading ones shared),
    // from 2,000 people (500 logs each: 20 first names x 25 last names x 4), eight
    // words each drawn from a 5,000-word vocabulary with a long tail (word rank r with
    // probability ~ 1/r: the shop's words are the commonest, "canada" in ~9 % of
    // comments). Written in chunks so one transaction never holds them all.
    let words = vocabulary();
    let chunk = 100_000i64;
    let mut from = if reuse { n } else { 0 };
    while from < n {
        let to = (from + chunk).min(n);
        sqlx::query(
            "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                 item_id, sender_id, sender_name, message_text, received_at, processed_at,
                 outcome, reply_text, conversation_key)
             SELECT 'ig:comment:' || (17912000000000000 + g * 7919), 'instagram', 'comment',
                 'reply', '{}'::jsonb, 'processed', (17912000000000000 + g * 7919)::text,
                 'u' || (g % 2000),
                 ($4::text[])[1 + g % 20] || ' ' || ($5::text[])[1 + (g / 20) % 25]
                     || CASE WHEN g % 2000 >= 500 THEN ' ' || (g % 2000) / 500 ELSE '' END,
                 (SELECT string_agg(($3::text[])[least(5000, floor(exp(ln(5000.0)
                      * ((abs(hashint8(g * 8 + k)) % 1000000) / 1000000.0)))::int)], ' ')
                  FROM generate_series(1, 8) k),
                 now() - (g % 2592000) * interval '1 second',
                 now() - (g % 2592000) * interval '1 second' + interval '2 seconds',
                 'replied', 'Thanks!', 'instagram:acct:thread:' || (17900000000000 + g)
             FROM generate_series($1::int8, $2::int8 - 1) g",
        )
        .bind(from)
        .bind(to)
        .bind(&words)
        .bind(&FIRST[..])
        .bind(&LAST[..])
        .execute(&pool)
        .await?;
        from = to;
    }
    if !reuse {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO webhook_log_text (log_id, received_at, doc)
             SELECT id, received_at, {} FROM webhook_logs",
            hookq_core::logs::SEARCH_DOC
        )))
        .execute(&pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE webhook_logs")
        .execute(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE webhook_log_text")
        .execute(&pool)
        .await?;
    eprintln!("filled {n} logs in {:.1}s", t.elapsed().as_secs_f64());

    // What an operator types: a customer's name (~500 logs), a comment id, a dedup key,
    // phrases, part of an id, a pseudo-word of the long tail, and a name under a status
    // filter. The ids exist: log g has item id 17912000000000000 + 7919 g.
    let queries: Vec<(&str, LogFilter)> = vec![
        ("name", q("maya costa")),
        ("name_upper", q("LENA NUNES 3")),
        ("item_id", q("17912000977655983")),
        ("dedup_key", q("ig:comment:17912007918992081")),
        ("phrase", q("ship canada")),
        ("phrase2", q("wool sale")),
        ("partial_id", q("3959507919")),
        ("rare_word", q("kalomi")),
        (
            "name_processed",
            LogFilter {
                status: Some(hookq_core::logs::LogStatus::Processed),
                ..q("yara pinto")
            },
        ),
    ];
    let mut times = Vec::new();
    let mut by_kind: Vec<(&str, Vec<f64>, i64)> =
        queries.iter().map(|(k, _)| (*k, Vec::new(), 0)).collect();
    for _ in 0..rounds {
        for (i, (_, f)) in queries.iter().enumerate() {
            let t = Instant::now();
            let (items, total) = reads::page(&pool, f, 50, 0).await?;
            std::hint::black_box(items);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            times.push(ms);
            by_kind[i].1.push(ms);
            by_kind[i].2 = total;
        }
    }
    for (kind, mut t, total) in by_kind {
        t.sort_by(|a, b| a.total_cmp(b));
        eprintln!(
            "search {kind}: matches={total} p50_ms={:.1} max_ms={:.1}",
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    let t = Instant::now();
    let (_, common_total) = reads::page(&pool, &q("love"), 50, 0).await?;
    let common_ms = t.elapsed().as_secs_f64() * 1000.0;
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS) SELECT id FROM webhook_logs
         WHERE id = ANY(ARRAY(SELECT log_id FROM webhook_log_text WHERE doc ILIKE '%maya costa%'))
         ORDER BY received_at DESC, id DESC LIMIT 50",
    )
    .fetch_all(&pool)
    .await?;
    eprintln!("{}", plan.join("\n"));
    println!(
        "hookq_search logs={n} queries={} p50_ms={:.2} p95_ms={:.2} max_ms={:.2} common_matches={common_total} common_ms={common_ms:.1}",
        times.len(),
        p(0.5),
        p(0.95),
        p(1.0)
    );
    Ok(())
}

fn q(text: &str) -> hookq_core::logs::reads::LogFilter {
    hookq_core::logs::reads::LogFilter {
        q: Some(text.to_owned()),
        ..Default::default()
    }
}

async fn queue_bench() -> anyhow::Result<()> {
    let n = env_u64("N", 20_000);
    // 512 jobs in flight: what Graphile's harness holds (32 running + a local queue of 500).
    let concurrency = env_u64("C", 512) as usize;
    let samples = env_u64("LAT_SAMPLES", 300);
    let pool = hookq_core::db::connect(std::env::var("DATABASE_URL")?.parse()?, 16).await?;
    hookq_core::db::migrate(&pool).await?;
    sqlx::query("TRUNCATE queue_jobs, queue_jobs_done")
        .execute(&pool)
        .await?;
    let pad = "x".repeat(280);

    // (a) batch enqueue: one transaction per 1,000 jobs.
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let jobs: Vec<Noop> = (0..k)
            .map(|i| Noop {
                n: i,
                pad: pad.clone(),
            })
            .collect();
        let mut tx = pool.begin().await?;
        queue::enqueue_many(&mut tx, &jobs, &EnqueueOptions::default()).await?;
        tx.commit().await?;
        left -= k;
    }
    let enqueue_batch_per_s = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!("enqueued {n} in {:.2}s", t0.elapsed().as_secs_f64());
    sqlx::query("VACUUM ANALYZE queue_jobs")
        .execute(&pool)
        .await?;

    // (b) drain the pre-filled queue.
    let done = Arc::new(AtomicU64::new(0));
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Workers::new(
        pool.clone(),
        WorkerOptions {
            concurrency,
            worker_name: "bench".into(),
            ..WorkerOptions::default()
        },
    );
    {
        let done = done.clone();
        workers.register(move |_job: Noop, ctx: JobContext| {
            let done = done.clone();
            let lat_tx = lat_tx.clone();
            async move {
                done.fetch_add(1, Ordering::Relaxed);
                let _ = lat_tx.send((ctx.job_id(), Instant::now()));
                Ok::<(), JobError>(())
            }
        });
    }
    let mut rx = stop_rx.clone();
    let runner = tokio::spawn(workers.run(async move {
        let _ = rx.wait_for(|v| *v).await;
    }));
    let t1 = Instant::now();
    // Wait on the in-process counter first (polling the table would load the server
    // being measured), then for the last outcomes to be written.
    while done.load(Ordering::Relaxed) < n && t1.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_jobs")
            .fetch_one(&pool)
            .await?;
        if left == 0 {
            break;
        }
        if t1.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("drain did not finish: {left} left");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let process_per_s = n as f64 / t1.elapsed().as_secs_f64();
    eprintln!("drained {n} in {:.2}s", t1.elapsed().as_secs_f64());
    while lat_rx.try_recv().is_ok() {}

    // (c) idle latency: one job at a time into the idle worker, until its completion
    // is committed (visible in the archive).
    let notifier = Notifier::spawn(pool.clone());
    let mut lat = Vec::with_capacity(samples as usize);
    // Where the time goes, per sample: the enqueue's durable commit, then the handler's
    // start (NOTIFY → claim), then the completion's commit.
    let (mut commit_ms, mut start_ms) = (Vec::new(), Vec::new());
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Enqueued as its own statement (autocommit), like Graphile's `addJob()` and
        // apalis' `push`: one round trip and one durable commit. (Inside a caller's
        // transaction, its BEGIN and COMMIT add their round trips.)
        let mut conn = pool.acquire().await?;
        let t = Instant::now();
        let id = queue::enqueue(
            &mut conn,
            &Noop {
                n: i,
                pad: pad.clone(),
            },
            &EnqueueOptions::default(),
        )
        .await?;
        drop(conn);
        commit_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        notifier.kick();
        loop {
            let finished: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_jobs_done WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&pool)
                    .await?;
            if finished {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("latency sample {i} did not finish");
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        while let Ok((job, started)) = lat_rx.try_recv() {
            if job == id {
                start_ms.push(started.duration_since(t).as_secs_f64() * 1000.0);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "queue_latency_breakdown enqueue_commit_p50_ms={:.2} handler_start_p50_ms={:.2}",
        median(&mut commit_ms),
        median(&mut start_ms)
    );
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    let _ = stop_tx.send(true);
    let _ = runner.await;
    println!(
        "queue enqueue_batch_per_s={:.0} process_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        enqueue_batch_per_s,
        process_per_s,
        p(0.5),
        p(0.99)
    );
    Ok(())
}

/// Idle webhook → `processed`: one signed compact comment at a time (the next one only
/// after a pause once the last is done), timed from sending the request until the log's
/// status reads `processed` in the database.
/// One signed compact comment to a running API, timed until its 200 and until its log
/// is `processed`: (ack ms, processed ms).
async fn latency_sample(
    http: &reqwest::Client,
    pool: &PgPool,
    url: &str,
    secret: &str,
    tag: &str,
) -> anyhow::Result<(f64, f64)> {
    let body = serde_json::json!({
        "entry": [{"changes": [{"value": {
            "post_id": "post_123", "item": "comment", "comment_id": tag,
            "sender_id": "user_456", "sender_name": "Latency", "message": "How fast is this?",
            "created_time": 1625097600}}]}],
        "object": "instagram", "user_id": "user_123", "persona_id": "persona_123"})
    .to_string();
    let sig = format!(
        "sha256={}",
        hookq_core::intake::signature::hmac_hex(secret.as_bytes(), body.as_bytes())
    );
    let t = Instant::now();
    let ack: serde_json::Value = http
        .post(format!("{url}/webhooks/instagram"))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let acked = t.elapsed().as_secs_f64() * 1000.0;
    let id = ack["ids"][0]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no log id in {ack}"))?;
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM webhook_logs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
        if status == "processed" {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("webhook latency sample {tag} is still {status} after 30 s");
        }
    }
    Ok((acked, t.elapsed().as_secs_f64() * 1000.0))
}

async fn webhook_latency(url: &str) -> anyhow::Result<()> {
    let samples = env_u64("LAT_SAMPLES", 300).min(200);
    let secret = std::env::var("META_APP_SECRET")?;
    let pool = hookq_core::db::connect(std::env::var("DATABASE_URL")?.parse()?, 2).await?;
    let http = reqwest::Client::new();
    let run = std::process::id();
    let mut lat = Vec::with_capacity(samples as usize);
    // Until the 200 (the durable commit of the log and its job), per sample.
    let mut acked = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (a, l) = latency_sample(&http, &pool, url, &secret, &format!("lat_{run}_{i}")).await?;
        acked.push(a);
        lat.push(l);
    }
    acked.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "webhook_latency_breakdown ack_p50_ms={:.2}",
        acked[acked.len() / 2]
    );
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "webhook webhook_p50_ms={:.2} webhook_p99_ms={:.2}",
        p(0.5),
        p(0.99)
    );
    Ok(())
}

async fn replay_bench(url: &str) -> anyhow::Result<()> {
    let n = env_u64("REPLAY_N", 10_000);
    let secret = std::env::var("META_APP_SECRET")?;
    let token = std::env::var("HOOKQ_ADMIN_TOKEN")?;
    let pool = hookq_core::db::connect(std::env::var("DATABASE_URL")?.parse()?, 2).await?;
    let http = reqwest::Client::new();
    let run = std::process::id();
    // The idle path first, for comparison.
    let mut idle = Vec::new();
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tag = format!("ilat_{run}_{i}");
        idle.push(latency_sample(&http, &pool, url, &secret, &tag).await?.1);
    }
    idle.sort_by(|a, b| a.total_cmp(b));
    let idle_p50 = idle[idle.len() / 2];
    let t = Instant::now();
    let made: serde_json::Value = http
        .post(format!("{url}/api/replays"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"limit": n, "reply_template": "Shadow: {message}"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = made["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("{made}"))?;
    let total = made["total"].as_i64().unwrap_or(0);
    let mut lat = Vec::new();
    // Progress is read every 250 ms, not per sample: the read counts the replay's items,
    // and reading it between every two samples loaded the server being measured.
    let mut looked = Instant::now() - Duration::from_secs(1);
    let replay_s = loop {
        if looked.elapsed() < Duration::from_millis(250) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let tag = format!("rlat_{run}_{}", lat.len());
            lat.push(latency_sample(&http, &pool, url, &secret, &tag).await?.1);
            continue;
        }
        looked = Instant::now();
        let v: serde_json::Value = http
            .get(format!("{url}/api/replays/{id}?limit=1"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if v["replay"]["done"].as_bool() == Some(true) {
            break t.elapsed().as_secs_f64();
        }
        if t.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("replay {id} not done after 300 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tag = format!("rlat_{run}_{}", lat.len());
        lat.push(latency_sample(&http, &pool, url, &secret, &tag).await?.1);
    };
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "hookq_replay logs={total} replay_s={replay_s:.2} idle_p50_ms={idle_p50:.2} live_samples={} live_p50_ms={:.2} live_p99_ms={:.2}",
        lat.len(),
        p(0.5),
        p(0.99)
    );
    Ok(())
}
