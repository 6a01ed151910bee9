//! Running hookq as a service (contract section 12): `hookq worker`'s metrics over all
//! its processes, and the files of `deploy/` checked against what hookq serves and by
//! the tools that read them (`promtool check rules`, `systemd-analyze verify`).

use std::{collections::HashSet, path::Path, time::Duration};

use crate::common::*;
use crate::metrics::exposition;
use hookq_testkit::{demo::DEMO_IG_ACCOUNT, wait_for};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

/// `hookq worker` serves its processes' numbers on `HOOKQ_WORKER_METRICS_BIND` as one
/// exposition (contract section 12): jobs by task and outcome counted in the two worker
/// processes, each sample labelled with its slot, job, LLM and delivery request
/// histograms, the supervisor's own families; well-formed by the strict check,
/// `prometheus-parse` and promtool. Every metric the Grafana dashboard and the alert
/// rules of `deploy/` name is served by this worker or by a real `hookq api`. A
/// SIGKILLed child's slot comes back and the restart is counted.
#[tokio::test]
async fn worker_metrics_cover_every_worker_process_and_the_deploy_files() {
    let callbacks = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&callbacks)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(chat_completion("Thanks!"))
        .mount(&callbacks)
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let (db, mut env) = demo_env(&[("TASKIQ_WORKERS", "2")]).await;
    env.extend(delivery_env());
    env.insert("HOOKQ_WORKER_METRICS_BIND".into(), bind.clone());
    env.insert("REPLY_LLM_URL".into(), format!("{}/v1", callbacks.uri()));
    set_delivery(
        &db.pool,
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hook", callbacks.uri())),
    )
    .await;
    let mut sup = hookq(&env).args(["worker"]).spawn().unwrap();
    let sup_pid = sup.id().unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{bind}/metrics");
    let scrape = || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    };
    wait_for(
        20,
        "the worker metrics listener and two children",
        || async {
            scrape()
                .await
                .filter(|t| t.contains("hookq_worker_processes 2\n"))
        },
    )
    .await;

    let ingestor = hookq_tasks::intake::Ingestor::new(
        db.pool.clone(),
        hookq_tasks::queue::Notifier::spawn(db.pool.clone()),
        3,
    );
    const N: usize = 20;
    let mut ids = Vec::new();
    for i in 0..N {
        let body = compact(&format!("wm_{i}"), "hello");
        let events = hookq_core::intake::parse_instagram(body.as_bytes()).unwrap();
        ids.extend(ingestor.ingest(&events, None).await.unwrap().ids);
    }
    for id in &ids {
        wait_for(30, "every log processed", || async {
            let row = hookq_core::logs::get(&db.pool, *id).await.unwrap()?;
            (row.status.as_str() == "processed").then_some(())
        })
        .await;
    }
    wait_for(30, "every reply delivered", || async {
        let hooks = callbacks.received_requests().await?;
        let n = hooks.iter().filter(|r| r.url.path() == "/hook").count();
        (n >= N).then_some(())
    })
    .await;
    // Every completed run, whichever process ran it, is on the one exposition.
    let text = wait_for(20, "every run counted", || async {
        let text = scrape().await?;
        let completed: f64 = samples(&text, "hookq_jobs_total")
            .filter(|(labels, _)| {
                labels.contains("task=\"process_webhook\"")
                    && labels.contains("outcome=\"completed\"")
            })
            .map(|(_, v)| v)
            .sum();
        (completed == N as f64).then_some(text)
    })
    .await;
    let families = exposition::check(&text).unwrap_or_else(|problems| {
        panic!(
            "worker metrics are not well-formed:\n  {}\n\n{text}",
            problems.join("\n  ")
        )
    });
    for (family, kind) in [
        ("hookq_jobs_total", "counter"),
        ("hookq_job_duration_seconds", "histogram"),
        ("hookq_delivery_request_duration_seconds", "histogram"),
        ("hookq_worker_processes", "gauge"),
        ("hookq_worker_restarts_total", "counter"),
    ] {
        assert_eq!(
            families.get(family).map(String::as_str),
            Some(kind),
            "{family}\n{text}"
        );
    }
    for (labels, _) in samples(&text, "hookq_jobs_total") {
        assert!(
            labels.contains("worker=\"0\"") || labels.contains("worker=\"1\""),
            "a worker sample without its slot: {labels}"
        );
    }
    let delivered: f64 = samples(&text, "hookq_delivery_request_duration_seconds_count")
        .filter(|(l, _)| l.contains("target=\"callback\"") && l.contains("outcome=\"2xx\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        delivered >= N as f64,
        "{delivered} delivery requests counted\n{text}"
    );
    let llm: f64 = samples(&text, "hookq_llm_request_duration_seconds_count")
        .filter(|(l, _)| l.contains("outcome=\"2xx\""))
        .map(|(_, v)| v)
        .sum();
    assert!(llm >= N as f64, "{llm} LLM requests counted\n{text}");
    exposition::check_with_prometheus_parse(&text);
    exposition::check_with_promtool(&text);

    // The API's exposition, from a real `hookq api` that took a webhook and refused one.
    let (mut api, base) = api_process(&env).await;
    let body = compact("wm_api", "hello");
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let api_text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    api.kill().await.unwrap();
    let served: HashSet<&str> = sample_names(&text).chain(sample_names(&api_text)).collect();
    for (file, names) in deploy_metric_names() {
        assert!(!names.is_empty(), "{file} names no hookq metric");
        for name in names {
            assert!(
                served.contains(name.as_str()),
                "{file} names {name}, which neither exposition serves"
            );
        }
    }

    // A child killed: its slot is started again, and the restart is counted.
    let first = children(sup_pid);
    assert_eq!(first.len(), 2, "{first:?}");
    signal(first[0], nix::sys::signal::Signal::SIGKILL);
    wait_for(20, "the restart counted and two children again", || async {
        scrape().await.filter(|t| {
            t.contains("hookq_worker_restarts_total 1\n")
                && t.contains("hookq_worker_processes 2\n")
        })
    })
    .await;
    signal(sup_pid, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), sup.wait())
        .await
        .expect("exits within 30 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        http.get(&url).send().await.is_err(),
        "the listener is gone with the supervisor"
    );
}

/// `(labels, value)` of every sample named exactly `name`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.find('}')?;
                (&r[..end], r[end + 1..].trim())
            }
            None if rest.starts_with(' ') => ("", rest.trim()),
            None => return None,
        };
        Some((labels, value.parse().ok()?))
    })
}

/// Names of every sample in an exposition.
fn sample_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
}

fn deploy_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

/// The `hookq_*` names in the Grafana dashboard's queries and in the alert rules.
fn deploy_metric_names() -> Vec<(&'static str, Vec<String>)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/hookq.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut dashboard_exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            dashboard_exprs.push_str(target["expr"].as_str().expect("expr"));
            dashboard_exprs.push('\n');
        }
    }
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/hookq-rules.yml")).unwrap();
    let rule_exprs: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        ("deploy/grafana/hookq.json", metric_names(&dashboard_exprs)),
        (
            "deploy/prometheus/hookq-rules.yml",
            metric_names(&rule_exprs),
        ),
    ]
}

fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("hookq_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

/// The Grafana dashboard is a dashboard: JSON with a title, a Prometheus data source
/// variable, and panels whose every query names a `hookq_` metric.
#[test]
fn grafana_dashboard_is_a_dashboard_over_hookq_metrics() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/hookq.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["title"], "hookq");
    assert_eq!(dashboard["templating"]["list"][0]["query"], "prometheus");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(!metric_names(expr).is_empty(), "{}: {expr}", p["title"]);
        }
    }
}

/// The alert rules pass `promtool check rules` (Prometheus's own checker: YAML, PromQL,
/// templates). `scripts/test` installs promtool and sets `HOOKQ_PROMTOOL`; without it
/// the test says it skipped.
#[test]
fn alert_rules_pass_promtool() {
    let promtool = match std::env::var("HOOKQ_PROMTOOL") {
        Ok(p) => p,
        Err(_) if which("promtool") => "promtool".into(),
        Err(_) => {
            eprintln!("promtool not installed (scripts/test installs it): skipped");
            return;
        }
    };
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy_dir().join("prometheus/hookq-rules.yml"))
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
}

/// The systemd units pass `systemd-analyze verify` with no complaint (an unknown key or
/// a bad value is only a warning there, so any output fails the test), with `ExecStart`
/// pointing at this build's binary.
#[test]
fn systemd_units_verify() {
    if !which("systemd-analyze") {
        eprintln!("systemd-analyze not on this machine: skipped");
        return;
    }
    let dir = tempfile_dir();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(deploy_dir().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/hookq "),
            "{}",
            path.display()
        );
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/hookq", env!("CARGO_BIN_EXE_hookq")),
        )
        .unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 3, "api, worker, migrate");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// The Dockerfile builds what the tests build and runs it as a non-root user; compose
/// runs Postgres, the migrations, the API and the workers. (No Docker daemon here: read,
/// not built.)
#[test]
fn dockerfile_and_compose_describe_the_service() {
    let docker = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(docker.contains("cargo build --locked --release --bin hookq"));
    assert_eq!(
        docker.matches("\nFROM ").count() + usize::from(docker.starts_with("FROM ")),
        2,
        "two stages"
    );
    let user = docker
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    let compose = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap();
    for service in ["postgres:", "migrate:", "api:", "worker:"] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose has no {service}"
        );
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hookq-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An app whose alerts go to `receiver`'s `/alerts`, signed with the test secret.
async fn alerting_app(receiver: &MockServer, extra: &[(&str, &str)]) -> TestApp {
    Mock::given(method("POST"))
        .and(path("/alerts"))
        .respond_with(ResponseTemplate::new(204))
        .mount(receiver)
        .await;
    let mut env = delivery_env();
    env.extend(env_of(&[
        ("HOOKQ_ALERT_URL", &format!("{}/alerts", receiver.uri())),
        ("HOOKQ_ALERT_SECRET", CALLBACK_SECRET),
        // The same thresholds as the app's own 15-second evaluation, which runs too.
        ("HOOKQ_ALERT_DEAD_LETTERS", "2"),
        ("HOOKQ_ALERT_QUEUE_AGE", "60s"),
    ]));
    env.extend(env_of(extra));
    spawn_app(Options {
        env,
        ..Options::default()
    })
    .await
}

/// The alerts received so far, each checked against its Standard Webhooks signature:
/// `(webhook-id, body)`.
async fn alerts_received(receiver: &MockServer) -> Vec<(String, Value)> {
    receiver
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/alerts")
        .map(verify_callback)
        .collect()
}

/// Runs the evaluation as the periodic job would, `times` times at once (as many
/// processes would), then waits until no alert job is left to run.
async fn evaluate(app: &TestApp, times: usize) {
    let thresholds = hookq_tasks::ops::alerts::Thresholds {
        dead_letters: app.config.alert_dead_letters,
        queue_age: app.config.alert_queue_age,
    };
    let runs = (0..times).map(|_| hookq_tasks::ops::alerts::evaluate(app.pool(), thresholds, None));
    for made in futures::future::join_all(runs).await {
        made.unwrap();
    }
    wait_for(20, "every alert job run", || async {
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM queue_jobs WHERE task_name = 'send_alert'")
                .fetch_one(app.pool())
                .await
                .unwrap();
        (live == 0).then_some(())
    })
    .await;
}

fn events_of<'a>(got: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    got.iter()
        .map(|(_, body)| body)
        .filter(|b| b["type"] == kind)
        .collect()
}

/// `dead_letters.rising` and `queue.stalled` (contract section 12): each is sent once
/// when its condition starts and once when it clears, signed, however many evaluations
/// run at once or again while nothing changes (no storm).
#[tokio::test]
async fn alerts_start_and_clear_once_each_without_a_storm() {
    let receiver = MockServer::start().await;
    let app = alerting_app(&receiver, &[]).await;
    let pool = app.pool();
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                 processed_at)
             VALUES ($1, 'instagram', 'comment', 'reply', '{}', 'dead_letter', now())",
        )
        .bind(format!("alert_dead_{i}"))
        .execute(pool)
        .await
        .unwrap();
    }
    // A ready job nobody runs, waiting for an hour.
    sqlx::query(
        "INSERT INTO queue_jobs (task_name, payload, run_at, max_attempts)
         VALUES ('nobody_runs_this', '{}', now() - interval '1 hour', 1)",
    )
    .execute(pool)
    .await
    .unwrap();

    evaluate(&app, 4).await;
    evaluate(&app, 2).await;
    let got = alerts_received(&receiver).await;
    let rising = events_of(&got, "dead_letters.rising");
    assert_eq!(rising.len(), 1, "{got:?}");
    assert_eq!(rising[0]["data"]["state"], "started");
    assert_eq!(rising[0]["data"]["dead_letters"], 3);
    let stalled = events_of(&got, "queue.stalled");
    assert_eq!(stalled.len(), 1, "{got:?}");
    assert_eq!(stalled[0]["data"]["state"], "started");
    assert!(stalled[0]["data"]["oldest_ready_age_s"].as_f64().unwrap() >= 3600.0);

    // Both conditions end: each is cleared once.
    sqlx::query("UPDATE webhook_logs SET processed_at = now() - interval '1 hour' WHERE dedup_key LIKE 'alert_dead_%'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM queue_jobs WHERE task_name = 'nobody_runs_this'")
        .execute(pool)
        .await
        .unwrap();
    evaluate(&app, 3).await;
    evaluate(&app, 1).await;
    let got = alerts_received(&receiver).await;
    let states = |kind: &str| -> Vec<String> {
        events_of(&got, kind)
            .iter()
            .map(|b| b["data"]["state"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        states("dead_letters.rising"),
        ["started", "cleared"],
        "{got:?}"
    );
    assert_eq!(states("queue.stalled"), ["started", "cleared"], "{got:?}");
    let ids: HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "every event has its own webhook-id");
    app.stop().await;
}

/// An endpoint that fails every attempt for `HOOKQ_DISABLE_DELIVERY_AFTER` has its
/// integration's delivery switched off (reason `failing`), and
/// `integration.delivery_disabled` is sent; turned back on by an operator, the alert
/// clears. A success in between ends the failing streak.
#[tokio::test]
async fn an_endpoint_failing_for_the_window_is_disabled_and_alerted() {
    let receiver = MockServer::start().await;
    let app = alerting_app(&receiver, &[("HOOKQ_DISABLE_DELIVERY_AFTER", "1h")]).await;
    let pool = app.pool().clone();
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&endpoint)
        .await;
    set_delivery(
        &pool,
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hooks/reply", endpoint.uri())),
    )
    .await;
    let integration: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM integrations WHERE account_id = $1")
            .bind(DEMO_IG_ACCOUNT)
            .fetch_one(&pool)
            .await
            .unwrap();
    let failing_since = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT failing_since FROM delivery_health WHERE integration_id = $1",
        )
        .bind(integration)
        .fetch_optional(&pool)
        .await
        .unwrap()
    };

    // Failing, not yet for the window: still on.
    let first = app
        .ingest("/webhooks/instagram", &compact("dis_1", "hello"))
        .await[0];
    app.wait_status(first, "dead_letter").await;
    assert!(failing_since().await.is_some());
    // A success ends the streak.
    endpoint.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&endpoint)
        .await;
    let ok = app
        .ingest("/webhooks/instagram", &compact("dis_2", "hello"))
        .await[0];
    app.wait_status(ok, "processed").await;
    assert_eq!(failing_since().await, None);

    // Failing again, and (as if) since longer than the window: switched off.
    endpoint.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&endpoint)
        .await;
    let second = app
        .ingest("/webhooks/instagram", &compact("dis_3", "hello"))
        .await[0];
    app.wait_status(second, "dead_letter").await;
    sqlx::query("UPDATE delivery_health SET failing_since = now() - interval '2 hours' WHERE integration_id = $1")
        .bind(integration)
        .execute(&pool)
        .await
        .unwrap();
    let third = app
        .ingest("/webhooks/instagram", &compact("dis_4", "hello"))
        .await[0];
    let row = app.wait_status(third, "dead_letter").await;
    let shown: Value = app
        .http
        .get(format!("{}/api/integrations/{integration}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["delivery_enabled"], false, "{shown}");
    assert_eq!(shown["delivery_disabled_reason"], "failing", "{shown}");
    let attempts_after_disable = endpoint.received_requests().await.unwrap().len();
    assert!(
        row.error_message
            .as_deref()
            .unwrap_or("")
            .contains("delivery"),
        "{:?}",
        row.error_message
    );

    evaluate(&app, 2).await;
    let got = alerts_received(&receiver).await;
    let disabled = events_of(&got, "integration.delivery_disabled");
    assert_eq!(disabled.len(), 1, "{got:?}");
    assert_eq!(disabled[0]["data"]["state"], "started");
    assert_eq!(disabled[0]["data"]["reason"], "failing");
    assert_eq!(
        disabled[0]["data"]["integration_id"],
        integration.to_string()
    );

    // Off means off: a new reply is not attempted.
    let fourth = app
        .ingest("/webhooks/instagram", &compact("dis_5", "hello"))
        .await[0];
    app.wait_status(fourth, "dead_letter").await;
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        attempts_after_disable
    );

    // An operator turns it back on: the alert clears, once.
    let r = app
        .http
        .patch(format!("{}/api/integrations/{integration}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"delivery_enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(failing_since().await, None);
    evaluate(&app, 2).await;
    let got = alerts_received(&receiver).await;
    let states: Vec<&str> = events_of(&got, "integration.delivery_disabled")
        .iter()
        .map(|b| b["data"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["started", "cleared"], "{got:?}");
    app.stop().await;
}

/// One trace per event (contract section 12): a webhook that arrives with a W3C
/// `traceparent`, through a real `hookq api` and a real worker process, exported over
/// OTLP/HTTP to a receiver on loopback that decodes the protobuf. The `webhook` span
/// continues the sender's trace; the job's run (`process_webhook`) and the delivery job
/// (`deliver_reply`) are its children across the queue; the LLM and delivery requests
/// are their children and carry their `traceparent` to the peers; nothing secret is in
/// any exported attribute or event.
#[tokio::test]
async fn one_trace_per_event_across_the_api_and_a_worker_process() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
    };
    use prost::Message as _;

    let peers = MockServer::start().await;
    for (route, response) in [
        ("/hook", ResponseTemplate::new(200)),
        ("/v1/traces", ResponseTemplate::new(200)),
        ("/v1/chat/completions", chat_completion("Thanks!")),
    ] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(response)
            .mount(&peers)
            .await;
    }
    let (db, mut env) = demo_env(&[("TASKIQ_WORKERS", "1")]).await;
    env.extend(delivery_env());
    env.extend(env_of(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &peers.uri()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("REPLY_LLM_URL", &format!("{}/v1", peers.uri())),
        ("REPLY_LLM_API_KEY", "sk-test-llm-key"),
    ]));
    set_delivery(
        &db.pool,
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hook", peers.uri())),
    )
    .await;
    // The worker logs warnings only: traces do not depend on RUST_LOG.
    let mut sup = hookq(&env)
        .args(["worker"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let (mut api, base) = api_process(&env).await;

    let (trace, sender_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let body = compact("otel_1", "Is it waterproof?");
    let r = reqwest::Client::new()
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
        .header("traceparent", format!("00-{trace}-{sender_span}-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    let id = ack["ids"][0].as_i64().unwrap();
    wait_for(30, "the reply delivered", || async {
        let row = hookq_core::logs::get(&db.pool, id).await.unwrap()?;
        let hooks = peers.received_requests().await?;
        (row.status.as_str() == "processed" && hooks.iter().any(|r| r.url.path() == "/hook"))
            .then_some(())
    })
    .await;
    let header_of = |route: &str| {
        let route = route.to_owned();
        let peers = &peers;
        async move {
            let reqs = peers.received_requests().await.unwrap();
            let r = reqs
                .iter()
                .find(|r| r.url.path() == route)
                .expect("a request");
            r.headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        }
    };
    let to_callback = header_of("/hook").await;
    let to_llm = header_of("/v1/chat/completions").await;
    assert!(
        to_callback.starts_with(&format!("00-{trace}-")),
        "{to_callback:?}"
    );
    assert!(to_llm.starts_with(&format!("00-{trace}-")), "{to_llm:?}");

    // Both processes stop, flushing what they buffered.
    for child in [&mut api, &mut sup] {
        signal(child.id().unwrap(), nix::sys::signal::Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut spans = Vec::new();
    let mut services = HashSet::new();
    let mut exported_text = String::new();
    for req in peers.received_requests().await.unwrap() {
        if req.url.path() != "/v1/traces" {
            continue;
        }
        let export = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("OTLP protobuf");
        for rs in export.resource_spans {
            for a in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                if a.key == "service.name"
                    && let Some(any_value::Value::StringValue(s)) =
                        a.value.as_ref().and_then(|v| v.value.clone())
                {
                    services.insert(s);
                }
            }
            for ss in rs.scope_spans {
                for s in ss.spans {
                    exported_text.push_str(&format!("{:?}{:?}\n", s.attributes, s.events));
                    spans.push(s);
                }
            }
        }
    }
    assert_eq!(services, HashSet::from(["hookq".to_owned()]));
    let ours: Vec<_> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let named = |name: &str| {
        ours.iter().find(|s| s.name == name).unwrap_or_else(|| {
            let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
            panic!("no {name} span in the trace: {names:?}")
        })
    };
    let webhook = named("webhook");
    let run = named("process_webhook");
    let llm = named("llm.request");
    let deliver = named("deliver_reply");
    let request = named("delivery.request");
    assert_eq!(
        hex(&webhook.parent_span_id),
        sender_span,
        "continues the sender's trace"
    );
    assert_eq!(
        run.parent_span_id, webhook.span_id,
        "the job's run, across the queue"
    );
    assert_eq!(llm.parent_span_id, run.span_id);
    assert_eq!(
        deliver.parent_span_id, webhook.span_id,
        "the delivery job, across the queue"
    );
    assert_eq!(request.parent_span_id, deliver.span_id);
    assert!(to_llm.contains(&hex(&llm.span_id)), "{to_llm}");
    assert!(
        to_callback.contains(&hex(&request.span_id)),
        "{to_callback}"
    );

    for secret in [
        META_SECRET,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        GRAPH_TOKEN,
        "sk-test-llm-key",
    ] {
        assert!(
            !exported_text.contains(secret),
            "a secret in an exported span: {secret}"
        );
    }
}
