//! Reply generation and delivery against real local HTTP peers (issue 4): a callback
//! receiver (signed per Standard Webhooks, checked on every request), a fake Graph API
//! and a fake chat-completions server; every retry path; 410; private addresses; the
//! per-endpoint limits; delivery reports.

use std::time::Duration;

use crate::common::*;
use hookq_core::{
    comment::ports::Directory,
    delivery::{
        self, Limits,
        store::{self, Claim},
    },
    directory::PgDirectory,
    resources::ReplyDelivery,
};
use hookq_tasks::outbound::send::Target;
use hookq_testkit::demo::DEMO_IG_ACCOUNT;
use serde_json::Value;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path},
};

async fn callback_app(server: &MockServer) -> TestApp {
    let app = spawn_app(Options {
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
    app
}

async fn attempts(app: &TestApp, log_id: i64) -> Vec<delivery::DeliveryAttempt> {
    delivery::delivery_attempts(app.pool(), log_id)
        .await
        .unwrap()
}

async fn outbound(app: &TestApp, log_id: i64) -> delivery::OutboundReply {
    delivery::outbound_reply(app.pool(), log_id)
        .await
        .unwrap()
        .expect("an outbound reply")
}

#[tokio::test]
async fn callback_is_signed_and_delivered_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/reply"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let app = callback_app(&server).await;
    let id = app
        .ingest("/webhooks/instagram", &fixture("compact_comment.json"))
        .await[0];
    let row = app.wait_status(id, "processed").await;
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));

    let reqs = wait_requests(&server, 1).await;
    assert_eq!(reqs.len(), 1);
    let (webhook_id, body) = verify_callback(&reqs[0]);
    let reply = outbound(&app, id).await;
    assert_eq!(webhook_id, reply.webhook_id);
    assert_eq!(reply.status.as_str(), "delivered");
    assert_eq!(body["type"], "comment.reply");
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "{ts}"
    );
    let data = &body["data"];
    assert_eq!(data["log_id"], id);
    assert_eq!(data["source"], "instagram");
    assert_eq!(data["event_type"], "comment");
    assert_eq!(data["comment_id"], "comment_123");
    assert_eq!(data["post_id"], "post_123");
    assert_eq!(data["sender_id"], "user_456");
    assert_eq!(data["reply_text"].as_str(), row.reply_text.as_deref());
    assert_eq!(data["persona_id"], row.persona_id.unwrap().to_string());
    assert_eq!(
        data["integration_id"],
        row.integration_id.unwrap().to_string()
    );

    let tries = attempts(&app, id).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(
        (tries[0].state.as_str(), tries[0].status_code),
        ("succeeded", Some(200))
    );
    assert!(tries[0].duration_ms.is_some() && tries[0].error.is_none());
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_on_the_schedule_with_the_same_webhook_id() {
    let server = answering_after(ResponseTemplate::new(503), 2, ResponseTemplate::new(200)).await;
    let app = callback_app(&server).await;
    let id = app
        .ingest(
            "/webhooks/instagram",
            &compact("retry_1", "Is it waterproof?"),
        )
        .await[0];
    app.wait_status(id, "processed").await;

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 3);
    let ids: Vec<String> = reqs.iter().map(|r| verify_callback(r).0).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id for every attempt: {ids:?}"
    );
    let bodies: Vec<&[u8]> = reqs.iter().map(|r| r.body.as_slice()).collect();
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same bytes on every attempt"
    );

    let tries = attempts(&app, id).await;
    let states: Vec<(&str, Option<i32>)> = tries
        .iter()
        .map(|a| (a.state.as_str(), a.status_code))
        .collect();
    assert_eq!(
        states,
        [
            ("failed", Some(503)),
            ("failed", Some(503)),
            ("succeeded", Some(200))
        ]
    );
    for (pair, min_ms) in tries.windows(2).zip([50, 100]) {
        let gap = (pair[1].started_at - pair[0].started_at).num_milliseconds();
        assert!(
            gap >= min_ms,
            "attempts {} and {} only {gap} ms apart",
            pair[0].attempt,
            pair[1].attempt
        );
    }
    assert_eq!(
        app.wait_status(id, "processed").await.attempts,
        1,
        "delivery retries are not processing attempts"
    );
    app.stop().await;
}

/// Contract section 10, order, through delivery: the reply to a thread's first comment
/// fails twice and is retried (each retry a new job); the thread's second comment,
/// posted while that delivery waits, is answered only after it is delivered.
#[tokio::test]
async fn a_threads_later_reply_waits_for_the_earlier_replys_delivery_retries() {
    let server = answering_after(ResponseTemplate::new(503), 2, ResponseTemplate::new(200)).await;
    let app = callback_app(&server).await;
    let first = app
        .ingest(
            "/webhooks/instagram",
            &compact("thread_root", "Which sizes?"),
        )
        .await[0];
    // Its first delivery attempt has failed: the retry is scheduled.
    wait_requests(&server, 1).await;
    let mut answer: Value = serde_json::from_str(&compact("thread_reply", "And colours?")).unwrap();
    answer["entry"][0]["changes"][0]["value"]["parent_id"] = "thread_root".into();
    let second = app.ingest("/webhooks/instagram", &answer.to_string()).await[0];
    app.wait_status(first, "processed").await;
    app.wait_status(second, "processed").await;
    let delivered: Vec<i64> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| verify_callback(r).1["data"]["log_id"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered, [first, first, first, second]);
    app.stop().await;
}

#[tokio::test]
async fn retries_run_out_into_dead_letter() {
    let server = answering(ResponseTemplate::new(500).set_body_string("boom")).await;
    let app = callback_app(&server).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("exhaust_1", "Hello"))
        .await[0];
    let row = app.wait_status(id, "dead_letter").await;
    let msg = row.error_message.unwrap();
    assert!(
        msg.starts_with("delivery failed after 4 attempts") && msg.contains("500"),
        "{msg}"
    );
    assert_eq!(
        attempts(&app, id).await.len(),
        4,
        "one try and three retries"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
    assert_eq!(outbound(&app, id).await.status.as_str(), "failed");
    assert!(row.reply_text.is_some(), "the reply is kept for a resend");

    // The operator sees every attempt with the log, and /metrics counts them.
    let (status, detail) = json(
        app.http
            .get(format!("{}/api/webhook-logs/{id}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    let d = &detail["delivery"];
    assert_eq!(d["kind"], "callback");
    assert_eq!(d["status"], "failed");
    let tries = d["attempts"].as_array().unwrap();
    assert_eq!(tries.len(), 4);
    assert!(
        tries
            .iter()
            .all(|t| t["status_code"] == 500 && t["state"] == "failed")
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hookq_delivery_attempts_recent{kind=\"callback\",result=\"500\"} 4"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_400_is_permanent() {
    let server = answering(ResponseTemplate::new(400).set_body_string("bad payload")).await;
    let app = callback_app(&server).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("perm_1", "Hello"))
        .await[0];
    let row = app.wait_status(id, "dead_letter").await;
    let msg = row.error_message.unwrap();
    assert!(
        msg.starts_with("delivery failed: endpoint answered 400") && msg.contains("bad payload"),
        "{msg}"
    );
    let tries = attempts(&app, id).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].status_code, Some(400));
    app.stop().await;
}

#[tokio::test]
async fn a_410_disables_the_integrations_delivery_until_re_enabled() {
    let server = answering(ResponseTemplate::new(410)).await;
    let app = callback_app(&server).await;
    let first = app
        .ingest("/webhooks/instagram", &compact("gone_1", "Hello"))
        .await[0];
    let row = app.wait_status(first, "dead_letter").await;
    assert!(
        row.error_message
            .unwrap()
            .contains("disabled until re-enabled")
    );
    let enabled: bool =
        sqlx::query_scalar("SELECT delivery_enabled FROM integrations WHERE account_id = $1")
            .bind(DEMO_IG_ACCOUNT)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(!enabled);

    // The next reply is not sent at all.
    let second = app
        .ingest("/webhooks/instagram", &compact("gone_2", "Hello again"))
        .await[0];
    let row = app.wait_status(second, "dead_letter").await;
    assert!(
        row.error_message
            .unwrap()
            .starts_with("delivery disabled for integration")
    );
    assert!(attempts(&app, second).await.is_empty());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = answering_after(
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let app = callback_app(&server).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("ra_1", "Hello"))
        .await[0];
    app.wait_status(id, "processed").await;
    let tries = attempts(&app, id).await;
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].status_code, Some(429));
    let gap = (tries[1].started_at - tries[0].started_at).num_milliseconds();
    assert!(
        gap >= 1000,
        "Retry-After: 1 honoured over the 50 ms backoff, got {gap} ms"
    );
    app.stop().await;
}

#[tokio::test]
async fn callbacks_to_private_addresses_are_refused_unless_allowed() {
    let server = answering(ResponseTemplate::new(200)).await;
    let app = spawn_app(Options {
        env: env_of(&[("HOOKQ_DELIVERY_BACKOFF", "50ms")]),
        ..Options::default()
    })
    .await;
    set_delivery(
        app.pool(),
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hooks", server.uri())),
    )
    .await;
    let id = app
        .ingest("/webhooks/instagram", &compact("ssrf_1", "Hello"))
        .await[0];
    let row = app.wait_status(id, "dead_letter").await;
    let msg = row.error_message.unwrap();
    assert!(
        msg.contains("private or loopback") && msg.contains("HOOKQ_ALLOW_PRIVATE_CALLBACKS"),
        "{msg}"
    );
    assert!(attempts(&app, id).await.is_empty(), "nothing left hookq");
    assert!(server.received_requests().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn graph_api_answers_comments_and_messages() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/17912345678901234/replies"))
        .and(header(
            "authorization",
            format!("Bearer {GRAPH_TOKEN}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"id": "17890000000000001"})),
        )
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/{DEMO_IG_ACCOUNT}/messages")))
        .and(header(
            "authorization",
            format!("Bearer {GRAPH_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"recipient_id": "6721849302157734", "message_id": "m_reply_1"}),
        ))
        .mount(&graph)
        .await;
    let mut env = delivery_env();
    env.insert("META_GRAPH_URL".into(), graph.uri());
    let app = spawn_app(Options {
        env,
        ..Options::default()
    })
    .await;
    set_delivery(app.pool(), DEMO_IG_ACCOUNT, "graph_api", None).await;

    let comment: Value = serde_json::from_str(&fixture("ig_comments.json")).unwrap();
    assert_eq!(
        comment["entry"][0]["changes"][0]["value"]["id"], "17912345678901234",
        "fixture's comment id"
    );
    let c = app
        .ingest("/webhooks/instagram", &fixture("ig_comments.json"))
        .await[0];
    let m = app
        .ingest("/webhooks/instagram", &fixture("ig_messaging_message.json"))
        .await[0];
    let c_row = app.wait_status(c, "processed").await;
    let m_row = app.wait_status(m, "processed").await;

    let reqs = graph.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        if r.url.path().ends_with("/replies") {
            assert_eq!(body["message"].as_str(), c_row.reply_text.as_deref());
        } else {
            assert_eq!(body["recipient"]["id"], "6721849302157734");
            assert_eq!(
                body["message"]["text"].as_str(),
                m_row.reply_text.as_deref()
            );
        }
        assert!(
            r.url.query().is_none(),
            "the token never travels in the URL"
        );
    }
    assert_eq!(
        outbound(&app, c).await.provider_message_id.as_deref(),
        Some("17890000000000001")
    );
    assert_eq!(
        outbound(&app, m).await.provider_message_id.as_deref(),
        Some("m_reply_1")
    );
    let shown = &attempts(&app, c).await[0].url;
    assert!(!shown.contains(GRAPH_TOKEN));
    app.stop().await;
}

#[tokio::test]
async fn delivery_reports_update_the_outbound_reply_they_name() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/106540352242922/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"messaging_product": "whatsapp",
            "contacts": [{"input": "351912345678", "wa_id": "351912345678"}], "messages": [{"id": "wamid.REPLY1"}]})))
        .mount(&graph)
        .await;
    let callback = answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"message_id": "wamid.out_001"})),
    )
    .await;
    let mut env = delivery_env();
    env.insert("META_GRAPH_URL".into(), graph.uri());
    let app = spawn_app(Options {
        env,
        ..Options::default()
    })
    .await;
    let cloud = add_integration(app.pool(), "whatsapp", "106540352242922").await;
    set_delivery(app.pool(), "106540352242922", "graph_api", None).await;
    let bridge = add_integration(app.pool(), "whatsapp", "+0987654321").await;
    set_delivery(app.pool(), "+0987654321", "callback", Some(&callback.uri())).await;

    // Cloud API: reply sent through the Graph API, then its statuses arrive.
    let msg = app
        .ingest(
            "/webhooks/whatsapp",
            &fixture("whatsapp_messages_text.json"),
        )
        .await[0];
    app.wait_status(msg, "processed").await;
    let sent: Value =
        serde_json::from_slice(&graph.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        (sent["messaging_product"].as_str(), sent["to"].as_str()),
        (Some("whatsapp"), Some("351912345678"))
    );
    let status = |wamid: &str, st: &str, ts: &str| {
        fixture("whatsapp_statuses_failed.json")
            .replace(
                "wamid.HBgMMzUxOTEyMzQ1Njc4FQIAERgSNzE2QzE3MjA5QkM1QjNBRTREAA==",
                wamid,
            )
            .replace("\"failed\"", &format!("\"{st}\""))
            .replace("1785500631", ts)
    };
    for (st, ts) in [
        ("delivered", "1785500700"),
        ("sent", "1785500600"),
        ("read", "1785500800"),
    ] {
        let id = app
            .ingest("/webhooks/whatsapp", &status("wamid.REPLY1", st, ts))
            .await[0];
        let row = app.wait_status(id, "processed").await;
        assert_eq!(
            (row.outcome.map(|o| o.as_str()), row.integration_id),
            (Some("recorded"), Some(cloud))
        );
    }
    let reply = outbound(&app, msg).await;
    assert_eq!(
        reply.provider_status.as_deref(),
        Some("read"),
        "a late `sent` never moves it back"
    );
    let id = app
        .ingest(
            "/webhooks/whatsapp",
            &status("wamid.REPLY1", "failed", "1785500900"),
        )
        .await[0];
    app.wait_status(id, "processed").await;
    let reply = outbound(&app, msg).await;
    assert_eq!(reply.provider_status.as_deref(), Some("failed"));
    assert!(reply.provider_error.unwrap().contains("131047"));

    // Bridge: reply delivered by callback, whose receiver answered the message id; the
    // Bridge's message.sent (which names no from_number) finds it by that id.
    let received = app
        .ingest("bridge", &fixture("bridge_message_received.json"))
        .await[0];
    app.wait_status(received, "processed").await;
    assert_eq!(
        outbound(&app, received)
            .await
            .provider_message_id
            .as_deref(),
        Some("wamid.out_001")
    );
    let sent_id = app
        .ingest("bridge", &fixture("bridge_message_sent.json"))
        .await[0];
    let row = app.wait_status(sent_id, "processed").await;
    assert_eq!(
        row.integration_id,
        Some(bridge),
        "routed by the outbound reply's message id"
    );
    assert_eq!(
        outbound(&app, received).await.provider_status.as_deref(),
        Some("sent")
    );

    // The conversation view (contract section 13) ties the reports back to the reply.
    let key: String = sqlx::query_scalar("SELECT conversation_key FROM webhook_logs WHERE id = $1")
        .bind(msg)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let url = format!("{}/api/conversations/{key}", app.base);
    let resp = app
        .http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let conv: Value = resp.json().await.unwrap();
    let events = conv["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{conv}");
    assert_eq!(events[0]["log"]["id"].as_i64(), Some(msg));
    assert_eq!(events[0]["delivery"]["status"].as_str(), Some("delivered"));
    assert_eq!(
        events[0]["delivery"]["provider_message_id"].as_str(),
        Some("wamid.REPLY1")
    );
    let reports: Vec<&str> = events[0]["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        reports,
        ["sent", "delivered", "read", "failed"],
        "every report, in the platform's order"
    );
    let missing = app
        .http
        .get(format!(
            "{}/api/conversations/whatsapp:nobody:dm:0",
            app.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    app.stop().await;
}

async fn chat_app(server: &MockServer, extra: &[(&str, &str)]) -> TestApp {
    let mut env = env_of(&[
        ("REPLY_LLM_URL", &format!("{}/v1", server.uri())),
        ("REPLY_LLM_MODEL", "test-model"),
        ("REPLY_LLM_API_KEY", "sk-test-key"),
    ]);
    env.extend(env_of(extra));
    spawn_app(Options {
        env,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_llm_writes_the_reply_from_prompt_comment_and_caption() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test-key"))
        .respond_with(chat_completion("  Yes, it is waterproof!  "))
        .mount(&server)
        .await;
    let app = chat_app(&server, &[]).await;
    let id = app
        .ingest(
            "/webhooks/instagram",
            &compact("llm_1", "Is it waterproof?"),
        )
        .await[0];
    let row = app.wait_status(id, "processed").await;
    assert_eq!(row.reply_text.as_deref(), Some("Yes, it is waterproof!"));
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "generated once");
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("friendly community manager")
    );
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Is it waterproof?") && user.contains("Our new spring jacket"),
        "{user}"
    );
    app.stop().await;
}

#[tokio::test]
async fn llm_failures_are_retried_unless_the_request_is_invalid() {
    let server = answering_after(
        ResponseTemplate::new(503),
        1,
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"choices": [{"message": {"content": "Second time lucky"}}]}),
        ),
    )
    .await;
    let app = chat_app(&server, &[]).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("llm_retry", "Hello?"))
        .await[0];
    let row = app.wait_status(id, "processed").await;
    assert_eq!(
        (row.reply_text.as_deref(), row.attempts),
        (Some("Second time lucky"), 2)
    );
    app.stop().await;

    let server = answering(
        ResponseTemplate::new(400)
            .set_body_json(serde_json::json!({"error": {"message": "model not found"}})),
    )
    .await;
    let app = chat_app(&server, &[]).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("llm_bad", "Hello?"))
        .await[0];
    let row = app.wait_status(id, "dead_letter").await;
    let msg = row.error_message.unwrap();
    assert!(
        msg.contains("400") && msg.contains("model not found"),
        "{msg}"
    );
    assert_eq!(row.attempts, 1, "an invalid request is not retried");
    assert!(
        row.reply_text.is_none(),
        "no silent fallback to the template"
    );
    app.stop().await;
}

/// Issue 13.3: a job runs at most `HOOKQ_MAX_ATTEMPTS` times, whoever enqueued it (the
/// webhook intake included), and the log's `attempts` says how many runs there were.
#[tokio::test]
async fn a_generator_that_always_fails_runs_max_attempts_times_then_dead_letters() {
    let server = answering(ResponseTemplate::new(500)).await;
    let app = chat_app(&server, &[("HOOKQ_MAX_ATTEMPTS", "2")]).await;
    let id = app
        .ingest("/webhooks/instagram", &compact("llm_always_500", "Hello?"))
        .await[0];
    let row = app.wait_status(id, "dead_letter").await;
    assert_eq!(row.attempts, 2, "runs of the log's job");
    // The job's completion is written just after its log is final (completions are
    // batched): wait for the row to arrive in the done table.
    let job_id = row.job_id.unwrap();
    let job: (i32, i32) = hookq_testkit::wait_for(10, "the job's completion", || async {
        sqlx::query_as("SELECT attempts, max_attempts FROM queue_jobs_done WHERE id = $1")
            .bind(job_id)
            .fetch_optional(app.pool())
            .await
            .unwrap()
    })
    .await;
    assert_eq!(job, (2, 2), "the job's own count and limit");
    let calls = server.received_requests().await.unwrap().len();
    assert_eq!(calls, 2, "one generation request per run");
    app.stop().await;
}

/// The limits are counted in the database under a per-endpoint lock: a claim past them
/// is deferred without using a try.
#[tokio::test]
async fn endpoint_limits_defer_claims() {
    let app = spawn_app(Options {
        env: delivery_env(),
        worker: false,
        ..Options::default()
    })
    .await;
    set_delivery(
        app.pool(),
        DEMO_IG_ACCOUNT,
        "callback",
        Some("http://127.0.0.1:9/hook"),
    )
    .await;
    let dir = PgDirectory {
        pool: app.pool().clone(),
    };
    let integration = dir
        .integration_by_account("instagram", DEMO_IG_ACCOUNT)
        .await
        .unwrap()
        .unwrap();
    let mut replies = Vec::new();
    for i in 0..3 {
        let id = app
            .ingest("/webhooks/instagram", &compact(&format!("lim_{i}"), "hi"))
            .await[0];
        sqlx::query(
            "UPDATE webhook_logs SET status = 'processing', reply_text = 'r' WHERE id = $1",
        )
        .bind(id)
        .execute(app.pool())
        .await
        .unwrap();
        let mut tx = app.pool().begin().await.unwrap();
        store::stage(&mut tx, id, Some(integration.id), ReplyDelivery::Callback)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let log = hookq_core::logs::get(app.pool(), id)
            .await
            .unwrap()
            .unwrap();
        let reply = outbound(&app, id).await;
        let target = Target::build(&log, &reply, &integration, "http://unused").unwrap();
        replies.push((reply, target));
    }
    let one_in_flight = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let claim = |i: usize, limits: Limits| {
        let (reply, target) = &replies[i];
        let pool = app.pool().clone();
        async move {
            store::claim(&pool, reply, &target.endpoint, None, &limits)
                .await
                .unwrap()
        }
    };
    assert!(matches!(claim(0, one_in_flight).await, Claim::Claimed(_)));
    match claim(1, one_in_flight).await {
        Claim::Deferred(d) => assert!(d < Duration::from_secs(1), "{d:?}"),
        other => panic!("expected a deferral, got {other:?}"),
    }
    let two_a_minute = Limits {
        per_window: 2,
        ..Limits::default()
    };
    assert!(matches!(claim(1, two_a_minute).await, Claim::Claimed(_)));
    match claim(2, two_a_minute).await {
        Claim::Deferred(d) => assert!(
            d > Duration::from_secs(50),
            "waits for the window to roll: {d:?}"
        ),
        other => panic!("expected a deferral, got {other:?}"),
    }
    assert_eq!(
        outbound(&app, replies[2].0.log_id).await.attempts,
        0,
        "a deferral uses no try"
    );
    // A claimed reply cannot be claimed twice.
    assert_eq!(claim(0, Limits::default()).await, Claim::NotDue);
    app.stop().await;
}

/// A generator's NUL (in a reply, or quoted from its error answer) never reaches a
/// `text` column as such: the run stores U+FFFD instead of failing on every retry.
#[tokio::test]
async fn nul_characters_from_the_llm_are_stored_as_replacement_characters() {
    let server = answering_after(
        ResponseTemplate::new(400).set_body_string("bad\u{0}request"),
        1,
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"choices": [{"message": {"content": "Thanks\u{0}!"}}]}),
        ),
    )
    .await;
    let app = chat_app(&server, &[]).await;
    let refused = app
        .ingest("/webhooks/instagram", &compact("llm_nul_1", "hello"))
        .await[0];
    let row = app.wait_status(refused, "dead_letter").await;
    let error = row.error_message.unwrap();
    assert!(error.contains("bad\u{FFFD}request"), "{error}");
    let replied = app
        .ingest("/webhooks/instagram", &compact("llm_nul_2", "hello"))
        .await[0];
    let row = app.wait_status(replied, "processed").await;
    assert_eq!(row.reply_text.as_deref(), Some("Thanks\u{FFFD}!"));
    app.stop().await;
}

/// A log's id, status, reply, runs and last change.
type LogState = (
    i64,
    String,
    Option<String>,
    i32,
    chrono::DateTime<chrono::Utc>,
);

/// Polls `GET /api/replays/{id}` until every item is replayed (or 30 s pass).
async fn replay_done(app: &TestApp, id: i64) -> Value {
    let url = format!("{}/api/replays/{id}?limit=500", app.base);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = app
            .http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["replay"]["done"].as_bool() == Some(true) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replay {id} not done: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Contract section 13: a shadow replay runs the use case again (the LLM may be asked,
/// with the replay's prompt or model) but delivers nothing and changes no log, outbound
/// reply or delivery attempt; the callback peer and the LLM peer count every request.
#[tokio::test]
async fn a_shadow_replay_asks_the_llm_but_delivers_nothing_and_changes_no_log() {
    let llm = MockServer::start().await;
    let answer = |text: &str| {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}))
    };
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_string_contains("Be terse"))
        .respond_with(answer("Terse."))
        .with_priority(1)
        .mount(&llm)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer("Thanks for asking!"))
        .mount(&llm)
        .await;
    let callback = answering(ResponseTemplate::new(200)).await;
    let mut extra: Vec<(String, String)> = delivery_env().into_iter().collect();
    extra.push(("REPLY_LLM_MODEL".into(), "live-model".into()));
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = chat_app(&llm, &extra).await;
    set_delivery(
        app.pool(),
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hooks/reply", callback.uri())),
    )
    .await;

    let mut ids = Vec::new();
    for (i, text) in ["Is it waterproof?", "Ship to Lisbon?", "Any discount?"]
        .iter()
        .enumerate()
    {
        ids.push(
            app.ingest("/webhooks/instagram", &compact(&format!("rp_{i}"), text))
                .await[0],
        );
    }
    for id in &ids {
        app.wait_status(*id, "processed").await;
    }
    assert_eq!(callback.received_requests().await.unwrap().len(), 3);
    assert_eq!(llm.received_requests().await.unwrap().len(), 3);
    let snapshot = || async {
        let logs: Vec<LogState> = sqlx::query_as(
            "SELECT id, status, reply_text, attempts, updated_at FROM webhook_logs ORDER BY id",
        )
        .fetch_all(app.pool())
        .await
        .unwrap();
        let replies: Vec<(i64, String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT id, status, attempts, updated_at FROM outbound_replies ORDER BY id",
        )
        .fetch_all(app.pool())
        .await
        .unwrap();
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_attempts")
            .fetch_one(app.pool())
            .await
            .unwrap();
        (logs, replies, attempts)
    };
    let before = snapshot().await;

    // A new system prompt, over every log.
    let post = |body: Value| {
        let app = &app;
        async move {
            let resp = app
                .http
                .post(format!("{}/api/replays", app.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (s, made) = post(serde_json::json!({"system_prompt": "Be terse."})).await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["total"].as_i64(), Some(3));
    let done = replay_done(&app, made["id"].as_i64().unwrap()).await;
    let items = done["items"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for item in items {
        assert_eq!(
            (
                item["status"].as_str(),
                item["old_reply"].as_str(),
                item["new_reply"].as_str(),
                item["new_outcome"].as_str()
            ),
            (
                Some("done"),
                Some("Thanks for asking!"),
                Some("Terse."),
                Some("replied")
            ),
            "{item}"
        );
    }
    assert_eq!(done["replay"]["changed"].as_i64(), Some(3));

    // Another model, over one log found by search.
    let (s, made) =
        post(serde_json::json!({"model": "shadow-model", "filter": {"q": "lisbon"}})).await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["total"].as_i64(), Some(1));
    let done = replay_done(&app, made["id"].as_i64().unwrap()).await;
    assert_eq!(done["items"]["items"][0]["log_id"].as_i64(), Some(ids[1]));
    let asked = llm.received_requests().await.unwrap();
    assert_eq!(
        asked.len(),
        3 + 3 + 1,
        "the replays asked the LLM once per log"
    );
    let last: Value = serde_json::from_slice(&asked.last().unwrap().body).unwrap();
    assert_eq!(last["model"], "shadow-model");

    // Nothing left hookq: no callback, no log, reply or attempt changed.
    assert_eq!(
        callback.received_requests().await.unwrap().len(),
        3,
        "a replay never delivers"
    );
    assert_eq!(snapshot().await, before, "a replay changes no log");

    // Refused: an unknown persona.
    let (s, v) =
        post(serde_json::json!({"persona_id": "00000000-0000-0000-0000-000000000000"})).await;
    assert_eq!(s, 422, "{v}");
    app.stop().await;
}
