//! Hostile input against a real server on loopback: every answer is a clear 4xx with the
//! JSON error body (or a dropped connection), never a 5xx, never a crash, and memory stays
//! bounded. Also: slow-loris clients are cut off, per-source rate limits answer 429 with
//! `Retry-After`, and callbacks to loopback are refused unless allowed. A NUL (`\u0000`)
//! in a signed body is stored as U+FFFD and processed, and a value the database still
//! refuses fails only its own request (422), never the others of its ingest batch.

use std::time::{Duration, Instant};

use crate::common::*;
use hookq_testkit::demo::DEMO_IG_ACCOUNT;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Asserts a 4xx with `{"error", "detail"}`; returns (status, body).
async fn assert_clear_4xx(resp: reqwest::Response, what: &str) -> (u16, Value) {
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (status, body) = json(resp).await;
    assert!(
        (400..500).contains(&status),
        "{what}: expected a 4xx, got {status} {body}"
    );
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct}"
    );
    assert!(
        body["error"].is_string() && body["detail"].is_string(),
        "{what}: error body {body}"
    );
    (status, body)
}

async fn assert_alive(app: &TestApp) {
    let resp = app
        .http
        .get(format!("{}/health", app.base))
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(resp.status().as_u16(), 200);
}

fn nested(depth: usize) -> String {
    format!(
        "{{\"object\":\"instagram\",\"entry\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_4xx() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let ig = "/webhooks/instagram";

    // Deep nesting, signed: serde_json's recursion limit, not a stack overflow.
    for depth in [200, 100_000] {
        let (status, body) =
            assert_clear_4xx(app.post_signed(ig, &nested(depth)).await, "deep nesting").await;
        assert_eq!(status, 400, "{body}");
    }
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    assert_clear_4xx(app.post_signed(ig, &deep_obj).await, "deep objects").await;
    // The same on the admin API's JSON bodies.
    let resp = app
        .http
        .post(format!("{}/api/users", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(format!("{{\"external_id\":{}", nested(100_000)))
        .send()
        .await
        .unwrap();
    assert_clear_4xx(resp, "deep nesting on the admin API").await;

    // Invalid UTF-8 (inside a string and as raw bytes), signed.
    for bytes in [
        b"{\"object\":\"instagram\",\"entry\":[{\"id\":\"\xff\xfe\"}]}".to_vec(),
        vec![0xc3, 0x28, 0xa0, 0xa1],
    ] {
        let resp = app
            .http
            .post(format!("{}{ig}", app.base))
            .header("X-Hub-Signature-256", meta_signature(&bytes))
            .body(bytes)
            .send()
            .await
            .unwrap();
        let (status, _) = assert_clear_4xx(resp, "invalid UTF-8").await;
        assert_eq!(status, 400);
    }

    // NaN, Infinity, trailing garbage, empty body, a JSON scalar, a lone surrogate.
    for body in [
        r#"{"object":"instagram","entry":[{"id":NaN}]}"#,
        r#"{"object":"instagram","entry":[{"time":Infinity}]}"#,
        r#"{"object":"instagram","entry":[]} trailing"#,
        "",
        "42",
        r#"{"object":"instagram","entry":[{"id":"\ud800"}]}"#,
        r#"{"object":"instagram","entry":[{"id":1e999999}]}"#,
    ] {
        assert_clear_4xx(app.post_signed(ig, body).await, body).await;
    }

    // Duplicate keys: one of the values wins; either way the answer is not a 5xx, and a
    // stored event's payload is valid JSON.
    let dup = compact("dup_keys", "hi").replacen(
        "\"object\":\"instagram\"",
        "\"object\":\"page\",\"object\":\"instagram\"",
        1,
    );
    let (status, body) = json(app.post_signed(ig, &dup).await).await;
    assert!(
        status == 200 || (400..500).contains(&status),
        "duplicate keys: {status} {body}"
    );

    // 10,000 batched entries: over the per-body event budget (1,000) → 413.
    let entries: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"id": DEMO_IG_ACCOUNT, "time": 1, "changes": [{"field": "comments", "value": {
                "id": format!("c{i}"), "text": "hi", "from": {"id": "u", "username": "u"},
                "media": {"id": "m"}}}]})
        })
        .collect();
    let big = json!({"object": "instagram", "entry": entries}).to_string();
    assert!(big.len() < 4 << 20);
    let (status, body) = assert_clear_4xx(app.post_signed(ig, &big).await, "10k entries").await;
    assert_eq!(status, 413, "{body}");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_logs WHERE dedup_key LIKE 'ig:comment:c%'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0, "nothing of a refused batch is stored");

    // The same hostile bodies without a valid signature: 401, nothing parsed.
    for body in [nested(100_000), "{\"x\":NaN}".to_string()] {
        let resp = app
            .http
            .post(format!("{}{ig}", app.base))
            .header("X-Hub-Signature-256", "sha256=00")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, _) = assert_clear_4xx(resp, "unsigned").await;
        assert_eq!(status, 401);
    }
    // An absurd signature header and an absurd query string.
    let resp = app
        .http
        .post(format!("{}{ig}", app.base))
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", "ab".repeat(8000)),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_clear_4xx(resp, "long signature").await;
    let resp = app
        .http
        .get(format!(
            "{}/api/webhook-logs?limit=-1&offset=99999999999999999999&since=yesterday",
            app.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_clear_4xx(resp, "bad query").await;
    let resp = app
        .http
        .get(format!("{}/api/webhook-logs/{}", app.base, "9".repeat(40)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_clear_4xx(resp, "id overflow").await;
    assert_alive(&app).await;
    app.stop().await;
}

/// A real `hookq api` on a fresh database with demo data: (process, base URL, database).
async fn real_api(
    extra: &[(&str, &str)],
) -> (tokio::process::Child, String, hookq_testkit::TestDb) {
    let (db, env) = demo_env(extra).await;
    let (child, base) = api_process(&env).await;
    (child, base, db)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 100 MB streamed without Content-Length (chunked), to the signed route and to the
/// admin API: cut at the limit (413 or a dropped connection), memory bounded.
#[tokio::test]
async fn a_100_mb_chunked_body_is_cut_at_the_limit_with_bounded_memory() {
    let (mut child, base, _db) = real_api(&[]).await;
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let before = rss_kib(pid);
    let chunk = vec![b' '; 1 << 20];
    let stream = |n: usize| {
        let chunk = chunk.clone();
        reqwest::Body::wrap_stream(futures::stream::iter(
            (0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        ))
    };
    let mut peak = before;
    for (path, auth) in [
        ("/webhooks/instagram", false),
        ("/webhooks/whatsapp", false),
        ("/api/users", true),
        ("/api/webhook-logs/retry", true),
        ("/api/users", false),
    ] {
        let mut req = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("X-Hub-Signature-256", meta_signature(b"whatever"))
            .timeout(Duration::from_secs(60))
            .body(stream(100));
        if auth {
            req = req.bearer_auth(ADMIN_TOKEN);
        }
        let started = Instant::now();
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                assert!(
                    (400..500).contains(&status),
                    "{path}: 100 MB answered {status} {text}"
                );
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
                assert!(v["error"].is_string(), "{path}: {v}");
                println!(
                    "{path}: 100 MB chunked → {status} in {:?}",
                    started.elapsed()
                );
            }
            Err(e) => println!(
                "{path}: 100 MB chunked → connection dropped ({e}) in {:?}",
                started.elapsed()
            ),
        }
        peak = peak.max(rss_kib(pid));
    }
    println!("hookq api RSS: {before} KiB before, {peak} KiB peak");
    assert!(
        peak < before + 64 * 1024,
        "memory grew by {} KiB for 100 MB bodies",
        peak - before
    );
    let resp = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the API is still running"
    );
    child.kill().await.unwrap();
}

/// Reads until the server closes the connection (or `secs` pass); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, secs: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_loris_clients_are_cut_off() {
    let app = spawn_app(Options {
        worker: false,
        env: env_of(&[
            ("HOOKQ_HEADER_READ_TIMEOUT", "1s"),
            ("HOOKQ_BODY_READ_TIMEOUT", "1s"),
        ]),
        ..Options::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();

    // 1. Connects and sends nothing.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, 10).await.is_some(),
        "a silent connection is closed"
    );
    println!("silent connection closed after {:?}", started.elapsed());

    // 2. Dribbles header bytes, one every 100 ms, for ever.
    let started = Instant::now();
    let mut dribbler = TcpStream::connect(&addr).await.unwrap();
    dribbler
        .write_all(b"POST /webhooks/instagram HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = async {
        loop {
            if dribbler.write_all(b"X").await.is_err() {
                return;
            }
            let mut b = [0u8; 1024];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), dribbler.read(&mut b)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the header dribbler is cut off");
    println!("header dribbler cut off after {:?}", started.elapsed());

    // 3. Complete headers, then a body dribbled one byte at a time: 408.
    let started = Instant::now();
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(
            format!(
                "POST /webhooks/instagram HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 X-Hub-Signature-256: {}\r\nContent-Length: 100000\r\n\r\n{{",
                meta_signature(b"{}")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = async {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let _ = slow_body.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(100), slow_body.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => return out,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&b[..n]);
                    if String::from_utf8_lossy(&out).contains("body_timeout") {
                        return out;
                    }
                }
                Err(_) => {}
            }
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the body dribbler is cut off");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "slow body answered: {text}"
    );
    println!(
        "body dribbler cut off after {:?} ({})",
        started.elapsed(),
        text.lines().next().unwrap_or("dropped")
    );

    // A normal client on a keep-alive connection is unaffected by the timeouts, even
    // idle for longer than them between requests.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let resp = http
            .post(format!("{}/webhooks/instagram", app.base))
            .header(
                "X-Hub-Signature-256",
                meta_signature(compact("loris_ok", "hi").as_bytes()),
            )
            .body(compact("loris_ok", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_alive(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_noisy_source_is_rate_limited_with_retry_after() {
    let app = spawn_app(Options {
        worker: false,
        env: env_of(&[("HOOKQ_RATE_LIMIT_WEBHOOKS", "3/min")]),
        ..Options::default()
    })
    .await;
    for i in 0..3 {
        let resp = app.post_instagram(&compact(&format!("rl_{i}"), "hi")).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    let resp = app.post_instagram(&compact("rl_3", "hi")).await;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_logs WHERE dedup_key = 'ig:comment:rl_3'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(stored, 0, "a limited request is not stored");
    // Other route groups have their own (here: no) limit.
    assert_alive(&app).await;
    let resp = app
        .http
        .get(format!("{}/api/webhook-logs", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    app.stop().await;
}

/// Set through the admin API: a loopback callback URL is refused at delivery time (the
/// log dead-letters naming the variable) and nothing reaches the receiver.
#[tokio::test]
async fn callbacks_to_loopback_set_through_the_api_are_refused() {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let app = spawn_app(Options::default()).await;
    let (_, list) = json(
        app.http
            .get(format!("{}/api/integrations?limit=100", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let integration = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["account_id"] == DEMO_IG_ACCOUNT)
        .expect("the demo integration")["id"]
        .as_str()
        .unwrap()
        .to_string();
    for url in [
        format!("{}/hooks", server.uri()),
        format!("http://localhost:{}/hooks", server.address().port()),
    ] {
        let resp = app
            .http
            .patch(format!("{}/api/integrations/{integration}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"reply_delivery": "callback", "callback_url": url, "callback_secret": CALLBACK_SECRET}))
            .send()
            .await
            .unwrap();
        let (status, body) = json(resp).await;
        if status != 200 {
            // Refused up front is fine too, as long as it is a clear 4xx.
            assert!((400..500).contains(&status), "{body}");
            continue;
        }
        let id = app
            .ingest(
                "/webhooks/instagram",
                &compact(&format!("ssrf_{}", url.len()), "hello"),
            )
            .await[0];
        let row = app.wait_finished(id).await;
        assert_eq!(row.status.as_str(), "dead_letter", "{url}");
        let msg = row.error_message.unwrap_or_default();
        assert!(
            msg.contains("private or loopback") && msg.contains("HOOKQ_ALLOW_PRIVATE_CALLBACKS"),
            "{msg}"
        );
    }
    assert!(
        server.received_requests().await.unwrap().is_empty(),
        "nothing reached the loopback receiver"
    );
    app.stop().await;
}

// ---- NUL characters (`\u0000`) and values the database refuses ----
//
// PostgreSQL's `text` and `jsonb` refuse NUL, and ingest writes many concurrent requests
// in one statement: before the fix, one signed body with a NUL was answered 503, and so
// was every request that shared its batch.

const REPLACEMENT: &str = "\u{FFFD}";

/// Makes every ingest statement hold its transaction `secs` longer, so requests sent
/// meanwhile queue behind it and are written together as one batch.
async fn slow_ingest(pool: &sqlx::PgPool, secs: f64) {
    sqlx::query("CREATE TABLE slow_ingest AS SELECT $1::float8 AS secs")
        .bind(secs)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE FUNCTION slow_ingest() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep((SELECT secs FROM slow_ingest)); RETURN NULL; END $$",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER slow_ingest AFTER INSERT ON webhook_logs
         FOR EACH STATEMENT EXECUTE FUNCTION slow_ingest()",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Posts `bodies` so that they share one ingest batch: two opener requests take the
/// writer's two commit slots (held open by [`slow_ingest`]), and the burst, sent while
/// they commit, gathers behind them. Returns each body's (status, answer).
async fn post_as_one_batch(app: &TestApp, tag: &str, bodies: &[String]) -> Vec<(u16, Value)> {
    let opener = |i: u64| async move {
        tokio::time::sleep(Duration::from_millis(50 * i)).await;
        let (status, body) = json(
            app.post_instagram(&compact(&format!("{tag}_opener_{i}"), "hi"))
                .await,
        )
        .await;
        assert_eq!(status, 200, "opener {i}: {body}");
    };
    let burst = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        futures::future::join_all(
            bodies
                .iter()
                .map(|b| async move { json(app.post_instagram(b).await).await }),
        )
        .await
    };
    let ((), (), answers) = tokio::join!(opener(0), opener(1), burst);
    answers
}

#[tokio::test]
async fn a_nul_in_a_signed_payload_is_stored_as_the_replacement_character_and_processed() {
    let app = spawn_app(Options::default()).await;
    // serde_json writes each '\0' as the escape `\u0000`; "literal" holds the six
    // characters `\u0000` (written `\\u0000` in JSON), which are not a NUL and stay as is.
    let body = serde_json::json!({
        "entry": [{"changes": [{"value": {
            "post_id": "post_123", "item": "comment", "comment_id": "nul\0comment",
            "sender_id": "user_456", "sender_name": "Ana\0Silva",
            "message": "Great post\0 love it", "created_time": 1625097600,
            "note\0key": "kept", "literal": "\\u0000"}}]}],
        "object": "instagram", "user_id": "user_123", "persona_id": "persona_123"
    })
    .to_string();
    assert!(body.contains(r#"Great post\u0000 love it"#), "{body}");
    assert!(body.contains(r#""literal":"\\u0000""#), "{body}");

    let (status, ack) = json(app.post_instagram(&body).await).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 1, "{ack}");
    let id = ack["ids"][0].as_i64().unwrap();
    let row = app.wait_finished(id).await;
    assert_eq!(row.status.as_str(), "processed", "{:?}", row.error_message);
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));
    assert!(row.reply_text.as_deref().is_some_and(|r| !r.is_empty()));

    // Every parsed text field and the stored payload carry U+FFFD where the NUL was.
    let r = REPLACEMENT;
    assert_eq!(row.dedup_key, format!("ig:comment:nul{r}comment"));
    assert_eq!(
        row.message_text.as_deref(),
        Some(format!("Great post{r} love it").as_str())
    );
    let (item, sender_name, payload): (String, String, Value) =
        sqlx::query_as("SELECT item_id, sender_name, payload FROM webhook_logs WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(item, format!("nul{r}comment"));
    assert_eq!(sender_name, format!("Ana{r}Silva"));
    let value = &payload["entry"][0]["changes"][0]["value"];
    assert_eq!(value["message"], format!("Great post{r} love it"));
    assert_eq!(value[format!("note{r}key").as_str()], "kept");
    assert_eq!(
        value["literal"], "\\u0000",
        "an escaped backslash is not a NUL"
    );

    // The same bytes again are a duplicate of the stored event.
    let (status, ack) = json(app.post_instagram(&body).await).await;
    assert_eq!((status, ack["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(ack["ids"][0], id);
    app.stop().await;
}

/// NUL payloads (and timestamps before 4714 BC, which `timestamptz` refuses as well) sent
/// together with ordinary ones: every request is stored and answered 200.
#[tokio::test]
async fn a_nul_payload_does_not_poison_the_requests_that_share_its_batch() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    slow_ingest(app.pool(), 0.3).await;
    let bodies: Vec<String> = (0..24)
        .map(|i| {
            let text = if i % 4 == 1 { "bad\0byte" } else { "fine" };
            let body = compact(&format!("batch_nul_{i}"), text);
            if i % 4 == 3 {
                // Epoch milliseconds of about 29,700 BC: read as no timestamp.
                body.replace("1625097600", "-1000000000000000")
            } else {
                body
            }
        })
        .collect();
    let answers = post_as_one_batch(&app, "nul", &bodies).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {body}");
        assert_eq!(body["accepted"], 1, "request {i}: {body}");
    }
    let texts: Vec<(String, String)> = sqlx::query_as(
        "SELECT dedup_key, message_text FROM webhook_logs WHERE dedup_key LIKE 'ig:comment:batch_nul_%'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(texts.len(), 24);
    let replaced = texts
        .iter()
        .filter(|(_, t)| *t == format!("bad{REPLACEMENT}byte"))
        .count();
    assert_eq!(replaced, 6, "{texts:?}");
    let undated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_logs WHERE dedup_key LIKE 'ig:comment:batch_nul_%' AND occurred_at IS NULL",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(undated, 6);
    // Rows one statement wrote share its transaction id: the NUL events were written in
    // the same batch as others, and that batch committed.
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_logs n JOIN webhook_logs o ON o.xmin = n.xmin
         WHERE n.message_text = $1 AND o.message_text = 'fine'",
    )
    .bind(format!("bad{REPLACEMENT}byte"))
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(shared > 0, "the NUL events did not share a batch");
    assert_alive(&app).await;
    app.stop().await;
}

/// If the database still refuses a value of a batch (here a constraint that fails with
/// a data exception on one message text, which no check before the batch can foresee),
/// the writer falls back to one statement per request: only that request fails, with a
/// 422, and everything else in its batch is stored.
#[tokio::test]
async fn a_value_the_database_refuses_fails_only_its_own_request() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    sqlx::query(
        "ALTER TABLE webhook_logs ADD CONSTRAINT poison
         CHECK (message_text IS DISTINCT FROM 'poison' OR message_text::int > 0) NOT VALID",
    )
    .execute(app.pool())
    .await
    .unwrap();
    slow_ingest(app.pool(), 0.1).await;
    let poisoned = |i: usize| i % 5 == 2;
    let bodies: Vec<String> = (0..15)
        .map(|i| {
            let text = if poisoned(i) { "poison" } else { "fine" };
            compact(&format!("refused_req_{i}"), text)
        })
        .collect();
    let answers = post_as_one_batch(&app, "refused", &bodies).await;
    for (i, (status, body)) in answers.into_iter().enumerate() {
        if poisoned(i) {
            assert_eq!(status, 422, "request {i}: {body}");
            assert_eq!(body["error"], "invalid", "{body}");
            let detail = body["detail"].as_str().unwrap();
            assert!(detail.contains("refused by the database"), "{detail}");
        } else {
            assert_eq!(status, 200, "request {i}: {body}");
            assert_eq!(body["accepted"], 1, "request {i}: {body}");
        }
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message_text FROM webhook_logs WHERE dedup_key LIKE 'ig:comment:refused_req_%'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(stored.len(), 12);
    assert!(stored.iter().all(|t| t == "fine"));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_jobs")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 14, "one job per stored log, openers included");
    // The same refused body sent alone is refused alone, the same way.
    let (status, body) = json(app.post_instagram(&bodies[2]).await).await;
    assert_eq!(status, 422, "{body}");
    assert_alive(&app).await;
    app.stop().await;
}

/// About 10 kB that PostgreSQL cannot compress (hex of random UUIDs): stored in an index,
/// such a value is refused with "index row requires … bytes" (SQLSTATE 54000).
fn incompressible_10kb() -> String {
    (0..320)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

/// Issue 13.7: an over-long identifier is a clear 422, never a 503 (which a sender would
/// retry forever), in a signed webhook and in every admin write alike; nothing of it is
/// stored, and the requests around it are unaffected. A permanent refusal no check in
/// Rust foresees (here: an index an operator added over a field hookq does not bound)
/// is a 422 too, decided by the one database-error classification.
#[tokio::test]
async fn over_long_identifiers_answer_422_and_store_nothing() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let long = incompressible_10kb();

    // Webhooks: an id inside a signed payload.
    let long_comment = compact(&long, "hi");
    let long_sender = compact("long_sender", "hi").replace("\"user_456\"", &format!("\"{long}\""));
    let long_message =
        json!({"event_type": "message.received", "timestamp": "2024-01-15T10:30:00Z",
        "data": {"from_number": "+1234567890", "to_number": "+0987654321", "message_id": long,
                 "text": "hi"}})
        .to_string();
    for (what, resp) in [
        ("comment id", app.post_instagram(&long_comment).await),
        ("sender id", app.post_instagram(&long_sender).await),
        ("bridge message id", app.post_bridge(&long_message).await),
    ] {
        let (status, body) = assert_clear_4xx(resp, what).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"], "invalid", "{what}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("bytes long"),
            "{what}: {body}"
        );
    }
    let (status, body) = json(app.post_instagram(&compact("short_id", "hi")).await).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_logs")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the well-formed event is stored");

    // Admin writes: every external id and account id.
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        app.http
            .request(method, format!("{}{path}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let (_, user) = json(
        admin(
            reqwest::Method::POST,
            "/api/users",
            json!({"external_id": "long_ids_user", "name": "U"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let (_, template) = json(
        admin(
            reqwest::Method::POST,
            "/api/persona-templates",
            json!({"name": "T", "reply_template": "hi"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let (_, integration) = json(
        admin(
            reqwest::Method::POST,
            "/api/integrations",
            json!({"user_id": user["id"], "platform": "instagram", "account_id": "long_ids_acct"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let user_path = format!("/api/users/{}", user["id"].as_str().unwrap());
    let cases = [
        (
            reqwest::Method::POST,
            "/api/users".to_string(),
            json!({"external_id": long, "name": "U"}),
        ),
        (
            reqwest::Method::PATCH,
            user_path,
            json!({"external_id": long}),
        ),
        (
            reqwest::Method::POST,
            "/api/integrations".to_string(),
            json!({"user_id": user["id"], "platform": "facebook", "account_id": long}),
        ),
        (
            reqwest::Method::POST,
            "/api/personas".to_string(),
            json!({"external_id": long, "user_id": user["id"], "template_id": template["id"], "name": "P"}),
        ),
        (
            reqwest::Method::POST,
            "/api/posts".to_string(),
            json!({"external_id": long, "integration_id": integration["id"], "caption": "c"}),
        ),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path}");
        let (status, answer) =
            assert_clear_4xx(admin(method, &path, body).await.unwrap(), &what).await;
        assert_eq!(status, 422, "{what}: {answer}");
        assert_eq!(answer["error"], "invalid", "{what}: {answer}");
    }

    // A refusal only the database knows of: 54000 is permanent, so 4xx, not 503.
    sqlx::query("CREATE INDEX operator_template_names ON persona_templates (name)")
        .execute(app.pool())
        .await
        .unwrap();
    let resp = admin(
        reqwest::Method::POST,
        "/api/persona-templates",
        json!({"name": long, "reply_template": "hi"}),
    )
    .await
    .unwrap();
    let (status, body) = assert_clear_4xx(resp, "template with an unindexable name").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("refused by the database"),
        "{body}"
    );
    assert_alive(&app).await;
    app.stop().await;
}
