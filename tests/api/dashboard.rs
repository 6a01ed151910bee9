//! The dashboard (issue 5): the embedded page, the live feed over SSE, and the whole
//! flow in a real headless Chromium (`tests/browser/dashboard.mjs`).

use std::time::Duration;

use crate::common::*;

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

/// Every event of the live feed matches what the served OpenAPI document declares for
/// `text/event-stream`, read as schemathesis 4 reads it (OpenAPI 3.2's model: the media
/// type's schema describes one event, `{"data": …, "event": "message"}`), and its `data`
/// is the JSON the schema's description promises: `logs` of `LogItem`s and, at times,
/// `counts` (`StatusCounts`).
#[tokio::test]
async fn live_feed_events_match_the_documented_event_schema() {
    let app = spawn_app(Options::default()).await;
    let doc: serde_json::Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media = &doc["paths"]["/api/webhook-logs/events"]["get"]["responses"]["200"]["content"]["text/event-stream"];
    let schema = &media["schema"];
    assert!(schema.is_object(), "no event schema: {media}");

    let mut resp = app
        .http
        .get(format!("{}/api/webhook-logs/events", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, ack) = json(app.post_instagram(&compact("sse_schema", "hi")).await).await;
    assert!(ack["ids"][0].is_i64(), "{ack}");

    let (mut with_logs, mut with_counts) = (0, 0);
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while with_logs == 0 || with_counts == 0 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event with logs and one with counts within 20 s");
        buf.push_str(&String::from_utf8_lossy(
            &chunk.unwrap().expect("stream ended"),
        ));
        while let Some(cut) = buf.find("\n\n") {
            let frame: String = buf.drain(..cut + 2).collect();
            let Some(event) = sse_event(&frame) else {
                continue; // a keep-alive comment
            };
            let mut problems = Vec::new();
            schema::check(&doc, schema, &event, "event", &mut problems);
            let data: serde_json::Value = serde_json::from_str(event["data"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("data is not JSON ({e}): {event}"));
            let keys: Vec<&String> = data
                .as_object()
                .expect("data is an object")
                .keys()
                .collect();
            assert!(
                keys.iter().all(|k| *k == "logs" || *k == "counts"),
                "{data}"
            );
            let item = serde_json::json!({"$ref": "#/components/schemas/LogItem"});
            let logs = serde_json::json!({"type": "array", "items": item});
            schema::check(&doc, &logs, &data["logs"], "data.logs", &mut problems);
            if !data["counts"].is_null() {
                let counts = serde_json::json!({"$ref": "#/components/schemas/StatusCounts"});
                schema::check(&doc, &counts, &data["counts"], "data.counts", &mut problems);
                with_counts += 1;
            }
            if data["logs"].as_array().is_some_and(|l| !l.is_empty()) {
                with_logs += 1;
            }
            assert!(
                problems.is_empty(),
                "event does not match the document: {problems:?}\n{event}\nschema: {schema}"
            );
        }
    }
    drop(resp); // the server's graceful stop waits for open streams
    app.stop().await;
}

/// One SSE frame as schemathesis 4 reads it: `data` lines joined, `event` defaulting to
/// `message`; `None` for a frame without data (a comment).
fn sse_event(frame: &str) -> Option<serde_json::Value> {
    let mut data = Vec::new();
    let mut event = serde_json::Map::new();
    for line in frame.lines().filter(|l| !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => data.push(value),
            "event" | "id" => {
                event.insert(field.into(), value.into());
            }
            "retry" => {
                event.insert(field.into(), value.parse::<u64>().ok()?.into());
            }
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    event.insert("data".into(), data.join("\n").into());
    event.entry("event").or_insert("message".into());
    Some(event.into())
}

/// The part of OpenAPI 3.0 schemas the document uses: `$ref`, `type`, `nullable`,
/// `enum`, `required`, `properties`, `items`.
mod schema {
    use serde_json::Value;

    pub(super) fn check(
        doc: &Value,
        schema: &Value,
        v: &Value,
        at: &str,
        problems: &mut Vec<String>,
    ) {
        if let Some(r) = schema["$ref"].as_str() {
            let target = doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or(&Value::Null);
            assert!(target.is_object(), "unresolved {r}");
            return check(doc, target, v, at, problems);
        }
        if v.is_null() && schema["nullable"] == true {
            return;
        }
        let fits = match schema["type"].as_str() {
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            _ => true,
        };
        if !fits {
            problems.push(format!("{at}: {v} is not of type {}", schema["type"]));
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            problems.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
        for name in schema["required"].as_array().into_iter().flatten() {
            if v.get(name.as_str().unwrap()).is_none() {
                problems.push(format!("{at}: {name} is required"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                if let Some(value) = v.get(name) {
                    check(doc, s, value, &format!("{at}.{name}"), problems);
                }
            }
        }
        if let (Some(items), Some(values)) = (schema.get("items"), v.as_array()) {
            for (i, value) in values.iter().enumerate() {
                check(doc, items, value, &format!("{at}[{i}]"), problems);
            }
        }
    }
}

/// Sign in, see a log arrive live, open it, retry a dead letter, retry all dead letters,
/// filter, search, act on a filter, open a conversation, replay, and look again with the
/// read-only token — in Debian's Chromium, headless. `scripts/install-deps` installs chromium
/// and the script's one npm package; set HOOKQ_SKIP_BROWSER=1 to skip on a machine
/// without them.
/// The read-only token the browser flow signs in with last.
const READONLY_TOKEN: &str = "test-readonly-token";

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
    let app = spawn_app(Options {
        env: env_of(&[("HOOKQ_READONLY_TOKEN", READONLY_TOKEN)]),
        ..Options::default()
    })
    .await;
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
            .env("HOOKQ_READONLY", READONLY_TOKEN)
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
