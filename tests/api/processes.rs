//! Real processes: `hookq worker` supervising worker processes, and `hookq dev`
//! bringing up a working instance whose printed curl gets a reply recorded.

use std::{collections::HashMap, time::Duration};

use crate::common::*;
use hookq_testkit::{fresh_db, wait_for};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn supervisor_restarts_a_killed_worker_and_drains_on_sigterm() {
    let (db, env) = demo_env(&[("TASKIQ_WORKERS", "2")]).await;
    let mut sup = hookq(&env).args(["worker"]).spawn().unwrap();
    let sup_pid = sup.id().unwrap();

    let first = wait_for(20, "two worker processes", || async {
        let c = children(sup_pid);
        (c.len() == 2).then_some(c)
    })
    .await;
    signal(first[0], Signal::SIGKILL);
    let replaced = wait_for(20, "the killed worker to be replaced", || async {
        let c = children(sup_pid);
        (c.len() == 2 && !c.contains(&first[0])).then_some(c)
    })
    .await;
    assert!(
        replaced.contains(&first[1]),
        "the other worker kept running"
    );

    // The restarted set still processes work: ingest through the real transaction.
    let ingestor = hookq_tasks::intake::Ingestor::new(
        db.pool.clone(),
        hookq_tasks::queue::Notifier::spawn(db.pool.clone()),
        3,
    );
    let events =
        hookq_core::intake::parse_instagram(compact("proc_1", "hello").as_bytes()).unwrap();
    let id = ingestor.ingest(&events, None).await.unwrap().ids[0];
    wait_for(
        20,
        "the log to be processed by a worker process",
        || async {
            let row = hookq_core::logs::get(&db.pool, id).await.unwrap()?;
            (row.status.as_str() == "processed").then_some(())
        },
    )
    .await;

    signal(sup_pid, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), sup.wait())
        .await
        .expect("exits within 30 s")
        .unwrap();
    assert!(status.success(), "supervisor exit: {status:?}");
    for pid in replaced {
        assert!(!alive(pid), "worker {pid} still alive");
    }
    let processing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_logs WHERE status = 'processing'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(processing, 0);
}

/// Reads `hookq dev`'s stdout until the printed curl, and returns (url, signature, body).
async fn read_banner(stdout: tokio::process::ChildStdout) -> (String, String, String) {
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("curl ") {
                return line;
            }
        }
        panic!("hookq dev exited without printing a curl");
    })
    .await
    .expect("banner within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let sig = line
        .split("X-Hub-Signature-256: ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let body = line
        .split("--data-binary '")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    (url, sig, body)
}

/// Runs `hookq dev ARGS`, sends its printed curl, and waits for the reply on `db_url`
/// (or on the private cluster under `data_dir`), then stops it with SIGTERM.
async fn dev_round_trip(
    env: &HashMap<String, String>,
    args: &[&str],
    db_url: Option<&str>,
    data_dir: Option<&std::path::Path>,
) {
    let mut child = hookq(env)
        .arg("dev")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (url, sig, body) = read_banner(child.stdout.take().unwrap()).await;
    let resp = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, ack) = json(resp).await;
    assert_eq!(status, 200, "{ack}");
    let id = ack["ids"][0].as_i64().unwrap();
    let db_url = match (db_url, data_dir) {
        (Some(u), _) => u.to_string(),
        (None, Some(dir)) => {
            let port = std::fs::read_to_string(dir.join("pg/port")).unwrap();
            format!("postgres://postgres@127.0.0.1:{}/hookq", port.trim())
        }
        (None, None) => unreachable!(),
    };
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let row = wait_for(30, "the curl's comment to be replied", || async {
        let row = hookq_core::logs::get(&pool, id).await.unwrap()?;
        (row.status.as_str() == "processed").then_some(row)
    })
    .await;
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));
    assert!(row.reply_text.is_some());
    pool.close().await;
    signal(child.id().unwrap(), Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("dev exits")
        .unwrap();
    assert!(status.success(), "hookq dev exit: {status:?}");
}

#[tokio::test]
async fn dev_with_a_configured_database_prints_a_curl_that_gets_a_reply() {
    let db = fresh_db().await;
    let mut env = HashMap::new();
    env.insert("DATABASE_URL".to_string(), db.url.clone());
    env.insert("HOOKQ_BIND".to_string(), "127.0.0.1:0".to_string());
    env.insert("TASKIQ_WORKERS".to_string(), "1".to_string());
    dev_round_trip(&env, &[], Some(&db.url), None).await;
}

/// The README's run path: no database configured, so `hookq dev` runs its own.
#[tokio::test]
#[ignore = "starts a second PostgreSQL cluster: run by scripts/test"]
async fn dev_without_a_database_runs_its_own_postgres() {
    let dir = std::env::temp_dir().join(format!("hookq-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut env = HashMap::new();
    env.insert("HOOKQ_BIND".to_string(), "127.0.0.1:0".to_string());
    env.insert("TASKIQ_WORKERS".to_string(), "1".to_string());
    let data_dir = dir.display().to_string();
    dev_round_trip(&env, &["--data-dir", &data_dir], None, Some(&dir)).await;
    assert!(
        !dir.join("pg/data/postmaster.pid").exists(),
        "the private PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops the cluster and removes its folder when the test ends, passed or not.
struct ClusterFolder {
    root: std::path::PathBuf,
    cluster: Option<hookq_testkit::devdb::LocalCluster>,
}

impl Drop for ClusterFolder {
    fn drop(&mut self) {
        if let Some(c) = &self.cluster {
            let _ = c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A checkout in a deep folder: `hookq dev`'s private cluster starts from a folder whose
/// path is longer than a Unix socket path may be (107 bytes), takes a connection over
/// loopback, and stops (also when its configuration, written by an older hookq, names
/// that folder as its socket directory). A start that fails says why in PostgreSQL's words: with its port
/// taken, the error quotes the server's log.
#[tokio::test]
#[ignore = "starts a second PostgreSQL cluster: run by scripts/test"]
async fn dev_cluster_starts_from_a_deep_folder_and_says_why_when_it_cannot() {
    use hookq_testkit::devdb::{ClusterOptions, LocalCluster};
    use sqlx::Connection;

    let root = std::env::temp_dir().join(format!("hookq-deep-{}", std::process::id()));
    let mut guard = ClusterFolder {
        root: root.clone(),
        cluster: None,
    };
    let _ = std::fs::remove_dir_all(&root);
    let mut dir = root.clone();
    while dir.as_os_str().len() < 110 {
        dir = dir.join("a-checkout-kept-in-a-deep-folder");
    }
    let dir = dir.join(".hookq").join("pg");
    assert!(dir.join(".s.PGSQL.65535").as_os_str().len() > 107);
    let start = |dir: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            LocalCluster::ensure(&dir, &ClusterOptions { durable: false })
        })
    };

    let cluster = start(dir.clone())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the private PostgreSQL starts from a deep folder: {e}"));
    guard.cluster = Some(cluster.clone());
    let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .expect("a connection over loopback");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    let stop = |c: LocalCluster| tokio::task::spawn_blocking(move || c.stop());
    stop(cluster.clone()).await.unwrap().expect("stops");
    assert!(!cluster.is_running());
    assert!(!cluster.data_dir().join("postmaster.pid").exists());

    // A cluster initialised by an older hookq names its folder as the socket directory in
    // its configuration: it starts all the same.
    let conf = cluster.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("unix_socket_directories = '{}'\n", dir.display()));
    std::fs::write(&conf, text).unwrap();
    let again = start(dir.clone())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("an older cluster starts from a deep folder: {e}"));
    assert!(again.is_running());
    stop(again).await.unwrap().expect("stops");

    // Its port taken by someone else, it cannot start, and the error says why.
    let taken = std::net::TcpListener::bind(("127.0.0.1", cluster.port)).unwrap();
    let msg = start(dir.clone())
        .await
        .unwrap()
        .expect_err("the port is taken")
        .to_string();
    assert!(
        msg.contains("could not bind IPv4 address") && msg.contains("Address already in use"),
        "the error says why: {msg}"
    );
    drop(taken);
    assert!(!cluster.is_running());

    drop(guard);
    assert!(!root.exists(), "the folder is removed");
}

/// `hookq send` (the load generator) against a running instance: every body signed so
/// the server acknowledges it, duplicates counted as the server reports them, and
/// `--wait-processed` waits until every accepted event is finished.
#[tokio::test]
async fn send_delivers_signed_webhooks_and_waits_until_they_are_processed() {
    let app = spawn_app(Options::default()).await;
    let out = hookq(&base_env(&app.db.url))
        .args([
            "send",
            "--url",
            &app.base,
            "--count",
            "80",
            "--concurrency",
            "8",
            "--duplicate-ratio",
            "0.25",
            "--sample",
            "mixed",
            "--wait-processed",
            "--wait-timeout",
            "60",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
    };
    assert_eq!(field("acked"), 80, "{line}");
    assert_eq!(field("errors"), 0, "{line}");
    let (accepted, duplicates) = (field("accepted"), field("duplicates"));
    assert_eq!(accepted + duplicates, 80, "{line}");
    assert!(
        duplicates > 0,
        "a quarter of the bodies repeat an earlier one: {line}"
    );
    assert_eq!(
        field("processed") + field("dead_letter"),
        accepted,
        "{line}"
    );
    let (logs, repeats): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(duplicate_count), 0) FROM webhook_logs")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((logs as u64, repeats as u64), (accepted, duplicates));
    app.stop().await;
}

/// `hookq send --quiet-account` (contract section 10's benchmark, rerunnable against any
/// instance): it creates the quiet account's integration through the admin API, sends
/// the flood to the demo account and the quiet stream beside it, waits for both, reads
/// their logs back and prints the `hookq_fairness` line just before its summary. The
/// figures themselves are timings, not asserted here.
#[tokio::test]
async fn send_with_a_quiet_account_creates_its_integration_and_prints_the_fairness_line() {
    let app = spawn_app(Options::default()).await;
    let quiet_account = "17841400000000002";
    let out = hookq(&base_env(&app.db.url))
        .args([
            "send",
            "--url",
            &app.base,
            "--count",
            "300",
            "--concurrency",
            "8",
            "--sample",
            "comment",
            "--quiet-account",
            quiet_account,
            "--quiet-interval-ms",
            "20",
            "--create-quiet-integration",
            "--wait-timeout",
            "60",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 2, "{stdout}");
    let (fair, summary) = (lines[lines.len() - 2], lines[lines.len() - 1]);
    assert!(summary.starts_with("send sent=300 acked=300 "), "{stdout}");
    let keys: Vec<&str> = fair
        .split_whitespace()
        .map(|kv| kv.split('=').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "hookq_fairness",
            "flood",
            "flood_per_s",
            "quiet_p50_ms",
            "quiet_p99_ms",
            "quiet_max_ms"
        ],
        "{stdout}"
    );
    assert!(fair.contains(" flood=300 "), "{stdout}");

    // The quiet integration, made like the demo one, took the quiet stream's events.
    let demo: (uuid::Uuid, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT user_id, default_persona_id FROM integrations WHERE account_id = $1",
    )
    .bind(hookq_testkit::demo::DEMO_IG_ACCOUNT)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let (quiet_id, user, persona, delivery): (uuid::Uuid, uuid::Uuid, Option<uuid::Uuid>, String) =
        sqlx::query_as(
            "SELECT id, user_id, default_persona_id, reply_delivery FROM integrations
             WHERE platform = 'instagram' AND account_id = $1",
        )
        .bind(quiet_account)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!((user, persona, delivery.as_str()), (demo.0, demo.1, "none"));
    let (quiet_logs, unfinished): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE integration_id = $1 AND status = 'processed'),
                count(*) FILTER (WHERE status IN ('pending', 'processing', 'failed'))
         FROM webhook_logs",
    )
    .bind(quiet_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(quiet_logs > 0, "{stdout}");
    assert_eq!(unfinished, 0, "send waits for both streams: {stdout}");
    app.stop().await;
}

/// `HOOKQ_WAKEUP=poll` (contract section 11, for PgBouncer in transaction mode): the
/// worker processes hold no LISTEN connection (no session state), and still pick up and
/// process new events by polling; with the default (`notify`) a LISTEN connection exists.
#[tokio::test]
async fn wakeup_poll_keeps_no_listen_connection_and_still_processes() {
    async fn listeners(db: &hookq_testkit::TestDb) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    }
    for (wakeup, listening) in [("notify", true), ("poll", false)] {
        let (db, env) = demo_env(&[("TASKIQ_WORKERS", "1"), ("HOOKQ_WAKEUP", wakeup)]).await;
        let mut sup = hookq(&env).args(["worker"]).spawn().unwrap();
        let ingestor = hookq_tasks::intake::Ingestor::new(
            db.pool.clone(),
            hookq_tasks::queue::Notifier::spawn(db.pool.clone()),
            3,
        );
        let body = compact(&format!("wake_{wakeup}"), "hello");
        let events = hookq_core::intake::parse_instagram(body.as_bytes()).unwrap();
        let id = ingestor.ingest(&events, None).await.unwrap().ids[0];
        wait_for(20, "the log processed", || async {
            let row = hookq_core::logs::get(&db.pool, id).await.unwrap()?;
            (row.status.as_str() == "processed").then_some(())
        })
        .await;
        if listening {
            wait_for(20, "the LISTEN connection", || async {
                (listeners(&db).await > 0).then_some(())
            })
            .await;
        } else {
            assert_eq!(listeners(&db).await, 0, "HOOKQ_WAKEUP=poll must not LISTEN");
        }
        signal(sup.id().unwrap(), Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(30), sup.wait())
            .await
            .expect("exits within 30 s")
            .unwrap();
        assert!(status.success(), "{wakeup}: {status:?}");
    }
}

/// Several hosts in `DATABASE_URL` with `target_session_attrs=read-write` (contract
/// section 11), against a real primary and its streaming hot standby (`pg_basebackup
/// -R`; read-only, so libpq's check passes it over). `hookq api` writes to the primary;
/// when the primary stops and the standby is promoted, it finds the new primary by
/// itself, answering only `200` or `503` meanwhile, within 15 s, and the worker process
/// finishes every event there.
#[tokio::test]
async fn the_api_follows_the_primary_across_a_failover() {
    use hookq_testkit::devdb::{ClusterOptions, LocalCluster};
    let root =
        std::env::temp_dir().join(format!("hookq-failover-{}", uuid::Uuid::new_v4().simple()));
    let a = tokio::task::spawn_blocking({
        let root = root.clone();
        move || LocalCluster::ensure(&root.join("a"), &ClusterOptions { durable: false }).unwrap()
    })
    .await
    .unwrap();
    let admin = sqlx::PgPool::connect(&a.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE hookq")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = sqlx::PgPool::connect(&a.url("hookq")).await.unwrap();
    hookq_core::db::migrate(&pool).await.unwrap();
    hookq_testkit::demo::load(&pool).await.unwrap();
    pool.close().await;
    let b = tokio::task::spawn_blocking({
        let (a, root) = (a.clone(), root.clone());
        move || LocalCluster::standby_of(&a, &root.join("b")).unwrap()
    })
    .await
    .unwrap();
    let count_on = |c: &LocalCluster, sql: &'static str| {
        let url = c.url("hookq");
        async move {
            let pool = sqlx::PgPool::connect(&url).await.ok()?;
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.ok()?;
            pool.close().await;
            Some(n)
        }
    };
    const LOGS: &str = "SELECT count(*) FROM webhook_logs";
    const FINISHED: &str =
        "SELECT count(*) FROM webhook_logs WHERE status IN ('processed', 'dead_letter')";

    let (_db, mut env) = demo_env(&[]).await;
    env.insert(
        "DATABASE_URL".into(),
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/hookq?target_session_attrs=read-write",
            b.port, a.port
        ),
    );
    let (mut api, base) = api_process(&env).await;
    let mut worker = hookq(&env)
        .args(["worker"])
        .env("TASKIQ_WORKERS", "1")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let post = |n: usize| {
        let body = compact(&format!("failover_{n}"), "hello");
        http.post(format!("{base}/webhooks/instagram"))
            .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
            .body(body)
            .send()
    };
    // The standby is listed first: the API still writes to the primary.
    assert_eq!(post(0).await.unwrap().status(), 200);
    assert_eq!(count_on(&a, LOGS).await, Some(1));

    // Failover: the primary stops (a fast shutdown sends the standby all its WAL first),
    // the standby is promoted.
    tokio::task::spawn_blocking({
        let (a, b) = (a.clone(), b.clone());
        move || {
            a.stop().unwrap();
            b.promote().unwrap();
        }
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut n = 1;
    loop {
        let status = post(n).await.unwrap().status().as_u16();
        n += 1;
        assert!(
            status == 200 || status == 503,
            "answered {status} during the failover"
        );
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no primary found within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover_s = started.elapsed().as_secs_f64();
    eprintln!("failover_s={failover_s:.2}");
    assert_eq!(
        count_on(&b, LOGS).await,
        Some(2),
        "the event before the failover replicated, the one after written to the new primary"
    );
    // The worker process followed too: it finishes both events on the new primary (the
    // first may have been in flight when its primary stopped).
    wait_for(
        30,
        "the worker to finish both events on the new primary",
        || {
            let b = b.clone();
            async move { (count_on(&b, FINISHED).await == Some(2)).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        count_on(
            &b,
            "SELECT count(*) FROM webhook_logs WHERE status = 'processed'"
        )
        .await,
        Some(2),
        "primary and standby hold the same rows: nothing dead-lettered"
    );

    api.kill().await.unwrap();
    worker.kill().await.unwrap();
    tokio::task::spawn_blocking(move || {
        b.stop().unwrap();
        std::fs::remove_dir_all(&root).ok();
    })
    .await
    .unwrap();
}
