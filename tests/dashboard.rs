//! The dashboard (issue 5): the embedded page, the live feed over SSE, and the whole
//! flow in a real headless Chromium (`tests/browser/dashboard.mjs`).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn dashboard_page_is_embedded_with_a_strict_csp() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let r = app
        .http
        .get(format!("{}/dashboard", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"login-form\"") && html.contains("/dashboard/app.js"));
    for (path, ty) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
    }
    let (s, v) = json(
        app.http
            .get(format!("{}/dashboard/nope", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert!(v["error"].is_string());
    app.stop().await;
}

/// The live feed pushes a new log, then its status change, without the client asking.
#[tokio::test]
async fn live_feed_pushes_new_logs_and_status_changes() {
    let app = spawn_app(Options::default()).await;
    let r = app
        .http
        .get(format!("{}/api/webhook-logs/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let mut resp = app
        .http
        .get(format!("{}/api/webhook-logs/events", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (_, ack) = json(app.post_instagram(&compact("sse_1", "hi")).await).await;
    let id = ack["ids"][0].as_i64().unwrap();
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(&"processed".to_string()) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("no processed update within 20 s");
        buf.push_str(&String::from_utf8_lossy(
            &chunk.unwrap().expect("stream ended"),
        ));
        while let Some(cut) = buf.find("\n\n") {
            let frame: String = buf.drain(..cut + 2).collect();
            for data in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                for log in v["logs"].as_array().unwrap() {
                    if log["id"].as_i64() == Some(id) {
                        seen.push(log["status"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("processed"),
        "{seen:?}"
    );
    app.stop().await;
}

/// Sign in, see a log arrive live, open it, retry a dead letter, retry all dead letters,
/// filter — in Debian's Chromium, headless. `scripts/install-deps` installs chromium
/// and the script's one npm package; set HOOKQ_SKIP_BROWSER=1 to skip on a machine
/// without them.
#[tokio::test]
async fn dashboard_flow_in_headless_chromium() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script_dir = format!("{root}/tests/browser");
    let ready = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new(&format!("{script_dir}/node_modules/playwright-core")).exists();
    if !ready {
        if std::env::var("HOOKQ_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("skipping the browser test (HOOKQ_SKIP_BROWSER=1)");
            return;
        }
        panic!(
            "chromium or tests/browser/node_modules missing: run scripts/install-deps (or set HOOKQ_SKIP_BROWSER=1)"
        );
    }
    let app = spawn_app(Options::default()).await;
    let shots = format!("{root}/target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = format!("{shots}/dashboard.png");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(format!("{script_dir}/dashboard.mjs"))
            .current_dir(&script_dir)
            .env("HOOKQ_BASE", &app.base)
            .env("HOOKQ_TOKEN", ADMIN_TOKEN)
            .env("META_SECRET", META_SECRET)
            .env("SCREENSHOT", &shot)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script took over 120 s")
    .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser flow failed:\n{log}");
    assert!(std::path::Path::new(&shot).exists());
    app.stop().await;
}
