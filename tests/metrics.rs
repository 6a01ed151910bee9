//! `/metrics`, retention, and what real `hookq api` and `hookq worker` processes write
//! to their logs (issue 5).

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use hookq_core::demo::DEMO_IG_ACCOUNT;
use hookq_testkit::wait_for;
use serde_json::json;
use tokio::io::AsyncReadExt;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

#[tokio::test]
async fn metrics_expose_webhooks_jobs_queue_and_pool() {
    let app = spawn_app(Options::default()).await;
    let (_, ack) = json(app.post_instagram(&compact("m_1", "hello")).await).await;
    app.wait_status(ack["ids"][0].as_i64().unwrap(), "processed")
        .await;
    let r = app
        .http
        .post(format!("{}/webhooks/instagram", app.base))
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    // The recorder is process-wide (tests share it), so check presence, not exact counts.
    for needle in [
        "hookq_webhooks_received_total{source=\"instagram\",result=\"accepted\"}",
        "hookq_webhooks_received_total{source=\"instagram\",result=\"invalid_signature\"}",
        "hookq_webhook_signature_failures_total{source=\"instagram\"}",
        "hookq_webhook_request_duration_seconds_bucket{source=\"instagram\",le=\"0.005\"}",
        "hookq_webhook_logs{source=\"instagram\",event_type=\"comment\",status=\"processed\"} 1",
        "hookq_dead_letters 0",
        "hookq_jobs{state=\"ready\"} 0",
        "hookq_jobs{state=\"dead\"} 0",
        "hookq_queue_depth 0",
        "hookq_queue_oldest_pending_age_seconds 0",
        "hookq_processing_recent_seconds_count 1",
        "hookq_processing_recent_seconds_bucket{le=\"+Inf\"} 1",
        "hookq_attempts_recent 1",
        "hookq_db_pool_connections{state=\"in_use\"}",
        "hookq_db_pool_max_connections",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_processed_logs_in_batches_and_keeps_dead_letters() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let pool = app.pool();
    // 5 old processed, 1 old dead letter, 1 old failed, 2 fresh processed.
    let rows = [
        ("processed", 40, 5),
        ("dead_letter", 40, 1),
        ("failed", 40, 1),
        ("processed", 1, 2),
    ];
    let mut n = 0;
    for (status, age_days, count) in rows {
        for _ in 0..count {
            n += 1;
            sqlx::query(
                "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                     received_at, processed_at)
                 VALUES ($1, 'instagram', 'comment', 'reply', '{}', $2,
                     now() - make_interval(days => $3), now() - make_interval(days => $3))",
            )
            .bind(format!("ret_{n}"))
            .bind(status)
            .bind(age_days)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let purged = hookq_tasks::retention::purge(pool, 30, 2).await.unwrap();
    assert_eq!(purged.deleted, 5, "three batches of at most 2");
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM webhook_logs GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![
            ("dead_letter".into(), 1),
            ("failed".into(), 1),
            ("processed".into(), 2)
        ]
    );
    assert_eq!(
        hookq_tasks::retention::purge(pool, 30, 2)
            .await
            .unwrap()
            .deleted,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn retention_job_runs_from_the_queue() {
    let app = spawn_app(Options::default()).await;
    let pool = app.pool().clone();
    sqlx::query(
        "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status, processed_at)
         VALUES ('old', 'instagram', 'comment', 'reply', '{}', 'processed', now() - interval '3 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let job = hookq_tasks::queue::enqueue(
        &mut tx,
        &hookq_tasks::retention::PurgeLogs { retention_days: 2 },
        &Default::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let done = wait_for(20, "the purge job to complete", || {
        let pool = pool.clone();
        async move {
            let j = hookq_tasks::queue::get_job(&pool, job).await.unwrap()?;
            (j.status == hookq_tasks::queue::JobStatus::Completed).then_some(j)
        }
    })
    .await;
    assert_eq!(done.result, Some(json!({"deleted": 1})));
    app.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `hookq api` with JSON logs at debug level: after signed webhooks (good and
/// bad), admin calls (right and wrong token) and an integration created with secrets,
/// no line holds a secret, a token or a signature, and the request's correlation id is
/// logged.
#[tokio::test]
async fn api_process_logs_are_json_and_never_hold_secrets() {
    let (_db, mut env) = demo_env(&[]).await;
    let port = free_port();
    env.insert("HOOKQ_BIND".into(), format!("127.0.0.1:{port}"));
    env.insert("HOOKQ_LOG_FORMAT".into(), "json".into());
    let mut cmd = hookq(&env);
    cmd.env("RUST_LOG", "debug,sqlx=debug,hyper=info,h2=info")
        .arg("api")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for(30, "hookq api to answer /health", || {
        let http = http.clone();
        let url = format!("{base}/health");
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        }
    })
    .await;

    let body = compact("log_1", "hello there");
    let sig = meta_signature(body.as_bytes());
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad_sig = "sha256=deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", bad_sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let bridge = fixture("bridge_message_received.json");
    let bridge_sig = hookq_core::signature::hmac_hex(BRIDGE_SECRET.as_bytes(), bridge.as_bytes());
    let r = http
        .post(format!("{base}/webhooks/whatsapp"))
        .header("X-Webhook-Signature", &bridge_sig)
        .body(bridge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/webhook-logs"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/webhook-logs"))
        .bearer_auth("not-the-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let users: serde_json::Value = http
        .get(format!("{base}/api/users"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access_token = "EAAG-access-token-never-logged";
    let callback_secret = "whsec_bmV2ZXItbG9nLXRoaXMtc2VjcmV0";
    let r = http
        .post(format!("{base}/api/integrations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &json!({"user_id": users["items"][0]["id"], "platform": "whatsapp", "account_id": "555",
                      "access_token": access_token, "callback_secret": callback_secret}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(format!("{base}/api/webhook-logs/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut out = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();

    assert!(out.lines().count() > 3, "expected log lines, got:\n{out}");
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let forbidden: HashMap<&str, &str> = HashMap::from([
        ("admin token", ADMIN_TOKEN),
        ("wrong admin token", "not-the-token-xyz"),
        ("Meta app secret", META_SECRET),
        ("Bridge secret", BRIDGE_SECRET),
        ("verify token", VERIFY_TOKEN),
        ("Meta signature", sig.trim_start_matches("sha256=")),
        ("bad signature", "deadbeefdeadbeef"),
        ("Bridge signature", bridge_sig.as_str()),
        ("access token", access_token),
        ("callback secret", callback_secret),
        ("database password", "postgres://"),
    ]);
    for (what, secret) in forbidden {
        assert!(
            !out.contains(secret),
            "the {what} appears in the log:\n{out}"
        );
    }
    assert!(
        out.contains("\"correlation_id\""),
        "the request's correlation id is logged:\n{out}"
    );
}

/// A real `hookq worker --single` with JSON logs (issue 5): the lines it writes while
/// processing a webhook's job and delivering its reply are in `process_webhook` and
/// `deliver_reply` spans that carry the log id, the job id and the correlation id the
/// API stored with the log, so a request can be followed from intake to delivery.
#[tokio::test]
async fn worker_logs_carry_the_requests_correlation_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/reply"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let app = spawn_app(Options {
        worker: false,
        env: delivery_env(),
        ..Options::default()
    })
    .await;
    set_delivery(
        app.pool(),
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hooks/reply", server.uri())),
    )
    .await;
    let id = app
        .ingest("/webhooks/instagram", &fixture("compact_comment.json"))
        .await[0];
    let stored = hookq_core::logs::get(app.pool(), id)
        .await
        .unwrap()
        .unwrap();
    let correlation = stored
        .correlation_id
        .expect("the API stores the request's correlation id");
    let job_id = stored.job_id.expect("the log's job");

    let mut env = base_env(&app.db.url);
    env.extend(delivery_env());
    env.insert("HOOKQ_LOG_FORMAT".into(), "json".into());
    let mut child = hookq(&env)
        .env("RUST_LOG", "info,hookq_tasks=debug,hookq_core=debug")
        .args(["worker", "--single"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read while the worker writes, so a full pipe can never stall it.
    let mut stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        stderr.read_to_string(&mut out).await.unwrap();
        out
    });
    // Processed is set by the delivery job once the callback answered.
    let row = app.wait_status(id, "processed").await;
    assert_eq!(row.outcome.as_deref(), Some("replied"));
    assert_eq!(wait_requests(&server, 1).await.len(), 1);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();

    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The line's span of that name, when it was written inside one for this log.
    let span_of = |line: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name && s["log_id"] == id)
            .cloned()
    };
    for (name, message) in [
        ("process_webhook", "webhook processed"),
        ("deliver_reply", "delivering reply"),
    ] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message && span_of(l, name).is_some())
            .unwrap_or_else(|| panic!("no {message:?} line in a {name} span for log {id}:\n{out}"));
        let span = span_of(line, name).unwrap();
        assert_eq!(
            span["correlation_id"], correlation,
            "the {name} span carries the request's correlation id: {line}"
        );
        if name == "process_webhook" {
            assert_eq!(span["job_id"], job_id, "{line}");
        }
    }
    app.stop().await;
}
