//! Every inbound event type (issue 4), from a realistic payload through the real API and
//! worker, to the status and outcome the contract gives it; batches that mix types;
//! connection statuses kept per connection; and a NUL in a message on every route, kept
//! as U+FFFD.

use std::collections::HashMap;

use crate::common::*;
use hookq_core::delivery;
use hookq_testkit::demo::DEMO_IG_ACCOUNT;

const FB_PAGE: &str = "448242228374517";
const WA_PHONE_ID: &str = "106540352242922";
const BRIDGE_NUMBER: &str = "+0987654321";

/// (route, fixture, event_type, status, outcome, skip_reason)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const IG: &str = "/webhooks/instagram";
const WA: &str = "/webhooks/whatsapp";
const BRIDGE: &str = "bridge";

const CASES: &[Case] = &[
    (
        IG,
        "compact_comment.json",
        "comment",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_comments.json",
        "comment",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_live_comments.json",
        "live_comment",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_mentions_in_comment.json",
        "mention",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_messaging_message.json",
        "message",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_messaging_story_reply.json",
        "message",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_messaging_attachment.json",
        "message",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "ig_messaging_echo.json",
        "message_echo",
        "processed",
        "skipped",
        Some("own_message"),
    ),
    (
        IG,
        "ig_message_reactions.json",
        "message_reaction",
        "processed",
        "recorded",
        None,
    ),
    (
        IG,
        "ig_messaging_postbacks.json",
        "messaging_postback",
        "processed",
        "recorded",
        None,
    ),
    (
        IG,
        "ig_messaging_referral.json",
        "messaging_referral",
        "processed",
        "recorded",
        None,
    ),
    (
        IG,
        "ig_messaging_seen.json",
        "messaging_seen",
        "processed",
        "recorded",
        None,
    ),
    (
        IG,
        "ig_unknown_field.json",
        "unknown:story_insights",
        "processed",
        "recorded",
        None,
    ),
    (
        IG,
        "messenger_page_message.json",
        "message",
        "processed",
        "replied",
        None,
    ),
    (
        IG,
        "fb_feed_comment.json",
        "feed_comment",
        "processed",
        "replied",
        None,
    ),
    (
        WA,
        "whatsapp_messages_text.json",
        "whatsapp_message",
        "processed",
        "replied",
        None,
    ),
    (
        WA,
        "whatsapp_messages_image_user_id.json",
        "whatsapp_message",
        "processed",
        "replied",
        None,
    ),
    (
        WA,
        "whatsapp_statuses_delivered.json",
        "whatsapp_status",
        "processed",
        "recorded",
        None,
    ),
    (
        WA,
        "whatsapp_statuses_failed.json",
        "whatsapp_status",
        "processed",
        "recorded",
        None,
    ),
    (
        BRIDGE,
        "bridge_message_received.json",
        "message.received",
        "processed",
        "replied",
        None,
    ),
    (
        BRIDGE,
        "bridge_message_sent.json",
        "message.sent",
        "processed",
        "recorded",
        None,
    ),
    (
        BRIDGE,
        "bridge_message_failed.json",
        "message.failed",
        "processed",
        "recorded",
        None,
    ),
    (
        BRIDGE,
        "bridge_connection_status.json",
        "connection.status",
        "processed",
        "recorded",
        None,
    ),
    (
        BRIDGE,
        "bridge_unknown_event.json",
        "unknown:group.joined",
        "processed",
        "recorded",
        None,
    ),
];

async fn app_with_every_account() -> TestApp {
    let app = spawn_app(Options::default()).await;
    add_integration(app.pool(), "facebook", FB_PAGE).await;
    add_integration(app.pool(), "whatsapp", WA_PHONE_ID).await;
    add_integration(app.pool(), "whatsapp", BRIDGE_NUMBER).await;
    app
}

#[tokio::test]
async fn every_event_type_reaches_its_outcome() {
    let app = app_with_every_account().await;
    // Post everything first, then wait: the worker runs them concurrently.
    let mut posted = Vec::new();
    for case in CASES {
        let ids = app.ingest(case.0, &fixture(case.1)).await;
        assert_eq!(ids.len(), 1, "{}: one event", case.1);
        posted.push((ids[0], case));
    }
    for (id, &(_, file, event_type, status, outcome, skip)) in posted {
        let row = app.wait_finished(id).await;
        assert_eq!(row.event_type, event_type, "{file}");
        assert_eq!(
            row.status.as_str(),
            status,
            "{file}: {:?}",
            row.error_message
        );
        assert_eq!(row.outcome.map(|o| o.as_str()), Some(outcome), "{file}");
        assert_eq!(row.skip_reason.map(|s| s.as_str()), skip, "{file}");
        match outcome {
            "replied" => assert!(
                row.reply_text.as_deref().is_some_and(|r| !r.is_empty()),
                "{file}"
            ),
            _ => assert!(row.reply_text.is_none(), "{file}"),
        }
        // Events with a known account carry its integration, recorded ones included.
        let expects_integration = !matches!(
            file,
            "bridge_message_sent.json"
                | "bridge_connection_status.json"
                | "bridge_unknown_event.json"
        );
        assert_eq!(row.integration_id.is_some(), expects_integration, "{file}");
        assert_eq!(row.attempts, 1, "{file}");
    }

    // Postbacks and referrals keep their payload/ref fields.
    let kept: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM webhook_logs WHERE event_type IN ('messaging_postback', 'messaging_referral') ORDER BY event_type",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(
        kept[0]["entry"][0]["messaging"][0]["postback"]["payload"],
        "ICEBREAKER_TRACK_ORDER"
    );
    assert_eq!(
        kept[1]["entry"][0]["messaging"][0]["referral"]["ref"],
        "summer_sale_2026"
    );

    // A Cloud API message whose `from` is empty is answered to its `user_id`.
    let sender: Option<String> = sqlx::query_scalar(
        "SELECT sender_id FROM webhook_logs WHERE dedup_key LIKE 'wa:message:%' AND message_text LIKE 'Does this%'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(sender.as_deref(), Some("US.13491208655302741918"));

    // The connection status is visible per connection.
    let statuses = delivery::latest_connection_statuses(app.pool())
        .await
        .unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        (
            statuses[0].connection_key.as_str(),
            statuses[0].status.as_str()
        ),
        ("session_abc", "connected")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_mixing_types_makes_one_log_per_item() {
    let app = spawn_app(Options::default()).await;
    let comment = |id: &str| {
        serde_json::json!({"field": "comments", "value": {
            "from": {"id": "u1", "username": "ana"}, "media": {"id": "m1"}, "id": id, "text": "Nice!"}})
    };
    let messaging = serde_json::json!([
        {"sender": {"id": "u2"}, "recipient": {"id": DEMO_IG_ACCOUNT}, "timestamp": 1785413500911_i64,
         "message": {"mid": "mid.batch.1", "text": "Hello there"}},
        {"sender": {"id": "u2"}, "recipient": {"id": DEMO_IG_ACCOUNT}, "timestamp": 1785413500999_i64,
         "reaction": {"mid": "mid.batch.1", "action": "react", "reaction": "love", "emoji": "❤"}},
        {"sender": {"id": "u2"}, "recipient": {"id": DEMO_IG_ACCOUNT}, "timestamp": 1785413501000_i64,
         "read": {"mid": "mid.batch.1"}}
    ]);
    let body = serde_json::json!({"object": "instagram", "entry": [
        {"id": DEMO_IG_ACCOUNT, "time": 1785412861, "changes": [
            comment("batch_c1"),
            {"field": "story_insights", "value": {"media_id": "1", "reach": 2}},
            comment("batch_c2")]},
        {"id": DEMO_IG_ACCOUNT, "time": 1785412862, "messaging": messaging}
    ]})
    .to_string();
    let ids = app.ingest(IG, &body).await;
    assert_eq!(ids.len(), 6);
    let expected = [
        ("comment", "replied"),
        ("unknown:story_insights", "recorded"),
        ("comment", "replied"),
        ("message", "replied"),
        ("message_reaction", "recorded"),
        ("messaging_seen", "recorded"),
    ];
    for (id, (event_type, outcome)) in ids.iter().zip(expected) {
        let row = app.wait_status(*id, "processed").await;
        assert_eq!(
            (row.event_type.as_str(), row.outcome.map(|o| o.as_str())),
            (event_type, Some(outcome))
        );
    }
    // The same batch again is all duplicates: nothing new stored or replied.
    let (status, ack) = json(app.post_instagram(&body).await).await;
    assert_eq!(
        (status, ack["accepted"].as_i64(), ack["duplicates"].as_i64()),
        (200, Some(0), Some(6))
    );
    app.stop().await;
}

#[tokio::test]
async fn connection_status_keeps_the_newest_report_per_connection() {
    let app = spawn_app(Options::default()).await;
    let number = add_integration(app.pool(), "whatsapp", "+351910000000").await;
    let event = |ts: &str, status: &str| {
        serde_json::json!({"event_type": "connection.status", "timestamp": ts,
            "data": {"status": status, "session_id": "session_x", "phone_number": "+351910000000"}})
        .to_string()
    };
    for (ts, status) in [
        ("2024-01-15T10:00:00Z", "connected"),
        ("2024-01-15T11:00:00Z", "disconnected"),
        ("2024-01-15T09:00:00Z", "connecting"),
    ] {
        let id = app.ingest(BRIDGE, &event(ts, status)).await[0];
        let row = app.wait_status(id, "processed").await;
        assert_eq!(row.outcome.map(|o| o.as_str()), Some("recorded"));
        assert_eq!(
            row.integration_id,
            Some(number),
            "attached through the phone number"
        );
    }
    let statuses = delivery::latest_connection_statuses(app.pool())
        .await
        .unwrap();
    assert_eq!(statuses.len(), 1);
    let s = &statuses[0];
    assert_eq!(
        (s.connection_key.as_str(), s.status.as_str()),
        ("+351910000000", "disconnected"),
        "an older report never wins"
    );
    assert_eq!(s.session_id.as_deref(), Some("session_x"));
    assert_eq!(s.integration_id, Some(number));
    app.stop().await;
}

/// A NUL (`\u0000`) in a message, on every route and shape, is kept as U+FFFD: the event
/// is stored, its text and sender name carry the replacement character, and it is
/// answered like any other message. Before, PostgreSQL refused it and the sender got 503.
#[tokio::test]
async fn a_nul_in_a_message_is_replaced_on_every_route() {
    let app = app_with_every_account().await;
    // (route, fixture, its text as JSON source, its sender name if the event has one)
    let cases = [
        (
            IG,
            "ig_messaging_message.json",
            "Hi! Is the blue jacket still available in M?",
            None,
        ),
        (
            IG,
            "ig_comments.json",
            r"Does this come in blue? \ud83d\ude0d",
            None,
        ),
        (
            WA,
            "whatsapp_messages_text.json",
            r"Ol\u00e1! Do you have the jacket in blue?",
            Some("Rita Almeida"),
        ),
        (
            BRIDGE,
            "bridge_message_received.json",
            "Hello, can you help me?",
            None,
        ),
    ];
    // What a JSON string source decodes to, each NUL as U+FFFD.
    let stored = |source: &str| {
        serde_json::from_str::<String>(&format!("\"{source}\""))
            .unwrap()
            .replace('\0', "\u{FFFD}")
    };
    for (route, file, text, name) in cases {
        // A NUL escape after the text's first word, and inside the sender's name.
        let with_nul = text.replacen(' ', r"\u0000 ", 1);
        let mut body = fixture(file);
        assert!(body.contains(text), "{file}: text not found");
        body = body.replacen(text, &with_nul, 1);
        if let Some(name) = name {
            body = body.replacen(name, &name.replace(' ', r"\u0000"), 1);
        }

        let ids = app.ingest(route, &body).await;
        assert_eq!(ids.len(), 1, "{file}");
        let row = app.wait_finished(ids[0]).await;
        assert_eq!(
            row.status.as_str(),
            "processed",
            "{file}: {:?}",
            row.error_message
        );
        assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"), "{file}");
        assert_eq!(
            row.message_text.as_deref(),
            Some(stored(&with_nul).as_str()),
            "{file}"
        );
        assert!(row.message_text.unwrap().contains('\u{FFFD}'), "{file}");
        if let Some(name) = name {
            let sender_name: Option<String> =
                sqlx::query_scalar("SELECT sender_name FROM webhook_logs WHERE id = $1")
                    .bind(ids[0])
                    .fetch_one(app.pool())
                    .await
                    .unwrap();
            assert_eq!(sender_name, Some(name.replace(' ', "\u{FFFD}")), "{file}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_direct_message_older_than_the_reply_window_is_skipped_window_closed() {
    // The fixture's message is years old: with the default 24 h window it may no longer
    // be answered (contract section 10); a comment of the same age is still answered.
    let mut env = HashMap::new();
    env.insert("HOOKQ_MESSAGE_REPLY_WINDOW".to_string(), "24h".to_string());
    let app = spawn_app(Options {
        env,
        ..Options::default()
    })
    .await;
    let ids = app
        .ingest("/webhooks/instagram", &fixture("ig_messaging_message.json"))
        .await;
    let row = app.wait_finished(ids[0]).await;
    assert_eq!(row.status.as_str(), "processed");
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("skipped"));
    assert_eq!(row.skip_reason.map(|s| s.as_str()), Some("window_closed"));
    assert!(row.reply_text.is_none());
    let ids = app
        .ingest("/webhooks/instagram", &fixture("ig_comments.json"))
        .await;
    let row = app.wait_finished(ids[0]).await;
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));
}
