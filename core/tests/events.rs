//! Webhook body parsing: every spec fixture, batching, dedup keys, and hostile input.

// Test code is not a public API: the workspace's `missing_docs` lint does not apply.
#![allow(missing_docs)]

use hookq_core::intake::{
    AccountRef, Handling, MAX_EVENTS_PER_BODY, ParseError, ParsedEvent, Source, parse_instagram,
    parse_whatsapp,
};
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/",
            $name,
            ".json"
        ))
    };
}

fn one(result: Result<Vec<ParsedEvent>, ParseError>) -> ParsedEvent {
    let mut events = result.expect("parses");
    assert_eq!(events.len(), 1, "{events:#?}");
    events.remove(0)
}

fn acct(id: &str) -> AccountRef {
    AccountRef::Account {
        account_id: id.into(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializes")
}

fn unknown_shape(result: Result<Vec<ParsedEvent>, ParseError>) -> String {
    match result {
        Err(ParseError::UnknownShape(detail)) => detail,
        other => panic!("expected UnknownShape, got {other:?}"),
    }
}

fn is_sha256_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(":sha256:"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A comments change in Meta's shape.
fn comment_change(id: &str, text: &str) -> Value {
    json!({"field": "comments", "value": {
        "from": {"id": "6721849302157734", "username": "maria"},
        "media": {"id": "18047215893126544"}, "id": id, "text": text}})
}

// ---- the compact shape -------------------------------------------------------------

#[test]
fn compact_comment() {
    let e = one(parse_instagram(fixture!("compact_comment")));
    assert_eq!(e.event_type, "comment");
    assert_eq!(e.handling, Handling::Reply);
    assert_eq!(
        (e.source, e.platform),
        (Source::Instagram, Source::Instagram)
    );
    assert_eq!(
        e.account,
        AccountRef::Compact {
            user_external_id: "user_123".into()
        }
    );
    assert_eq!(e.persona_external_id.as_deref(), Some("persona_123"));
    assert_eq!(e.post_external_id.as_deref(), Some("post_123"));
    assert_eq!(e.item_id.as_deref(), Some("comment_123"));
    assert_eq!(e.sender_id.as_deref(), Some("user_456"));
    assert_eq!(e.sender_name.as_deref(), Some("Test User"));
    assert_eq!(e.text.as_deref(), Some("This is a test comment"));
    assert!(!e.is_own);
    assert_eq!(e.occurred_at.map(|t| t.timestamp()), Some(1_625_097_600));
    assert_eq!(e.dedup_key, "ig:comment:comment_123");
    // The top-level fields that name the user and persona stay in the payload.
    assert_eq!(e.payload["user_id"], "user_123");
    assert_eq!(e.payload["persona_id"], "persona_123");
    assert_eq!(
        e.payload["entry"][0]["changes"][0]["value"]["comment_id"],
        "comment_123"
    );
}

#[test]
fn compact_shape_without_user_id_is_a_missing_field() {
    let body =
        json!({"object": "instagram", "entry": [{"changes": [{"value": {"comment_id": "c"}}]}]});
    let detail = unknown_shape(parse_instagram(&bytes(&body)));
    assert_eq!(detail, "entry[0].changes[0]: missing field");
}

// ---- Instagram / Facebook changes ---------------------------------------------------

#[test]
fn ig_comment() {
    let e = one(parse_instagram(fixture!("ig_comments")));
    assert_eq!(e.event_type, "comment");
    assert_eq!(e.handling, Handling::Reply);
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.post_external_id.as_deref(), Some("18047215893126544"));
    assert_eq!(e.item_id.as_deref(), Some("17912345678901234"));
    assert_eq!(e.sender_id.as_deref(), Some("6721849302157734"));
    assert_eq!(e.sender_name.as_deref(), Some("maria.lopes.shop"));
    assert_eq!(e.text.as_deref(), Some("Does this come in blue? 😍"));
    assert_eq!(e.persona_external_id, None);
    assert!(!e.is_own);
    assert_eq!(e.occurred_at.map(|t| t.timestamp()), Some(1_785_412_861));
    assert_eq!(e.dedup_key, "ig:comment:17912345678901234");
}

#[test]
fn ig_live_comment() {
    let e = one(parse_instagram(fixture!("ig_live_comments")));
    assert_eq!(e.event_type, "live_comment");
    assert_eq!(e.handling, Handling::Reply);
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.post_external_id.as_deref(), Some("18123456789012345"));
    assert_eq!(e.item_id.as_deref(), Some("17850001112223334"));
    assert_eq!(
        e.text.as_deref(),
        Some("Can you show the back of the jacket?")
    );
    assert_eq!(e.dedup_key, "ig:comment:17850001112223334");
}

#[test]
fn ig_mention_in_comment() {
    let e = one(parse_instagram(fixture!("ig_mentions_in_comment")));
    assert_eq!(e.event_type, "mention");
    assert_eq!(e.handling, Handling::Reply);
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.post_external_id.as_deref(), Some("17918195224117851"));
    assert_eq!(e.item_id.as_deref(), Some("17894227972186120"));
    assert_eq!((e.sender_id, e.text), (None, None));
    // Shares the comment key: a comment notified as both `comments` and `mentions` is one event.
    assert_eq!(e.dedup_key, "ig:comment:17894227972186120");
}

#[test]
fn caption_mention_is_recorded() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": [
        {"field": "mentions", "value": {"media_id": "m1"}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("mention", Handling::Record)
    );
    assert_eq!(e.post_external_id.as_deref(), Some("m1"));
    assert_eq!(e.dedup_key, "ig:mention:m1");
}

#[test]
fn own_comment_is_marked_own() {
    let body = json!({"object": "instagram", "entry": [{"id": "6721849302157734", "changes": [
        comment_change("c1", "thanks!")]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert!(e.is_own);
    assert_eq!(e.handling, Handling::Reply);
}

#[test]
fn facebook_feed_comment() {
    let body = json!({"object": "page", "entry": [{"id": "448242228374517", "time": 1785414001, "changes": [
        {"field": "feed", "value": {
            "item": "comment", "verb": "add", "comment_id": "448242228374517_991", "post_id": "448242228374517_77",
            "from": {"id": "25108722364712345", "name": "Ana Costa"}, "message": "Price?",
            "created_time": 1785414000}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!((e.source, e.platform), (Source::Facebook, Source::Facebook));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("feed_comment", Handling::Reply)
    );
    assert_eq!(e.account, acct("448242228374517"));
    assert_eq!(e.post_external_id.as_deref(), Some("448242228374517_77"));
    assert_eq!(e.item_id.as_deref(), Some("448242228374517_991"));
    assert_eq!(e.sender_id.as_deref(), Some("25108722364712345"));
    assert_eq!(e.sender_name.as_deref(), Some("Ana Costa"));
    assert_eq!(e.text.as_deref(), Some("Price?"));
    assert_eq!(e.occurred_at.map(|t| t.timestamp()), Some(1_785_414_000));
    assert_eq!(e.dedup_key, "fb:comment:448242228374517_991");
}

#[test]
fn facebook_feed_edit_and_other_items_are_recorded() {
    for (item, verb, expected) in [
        ("comment", "edited", "feed:comment:edited"),
        ("comment", "remove", "feed:comment:remove"),
        ("reaction", "add", "feed:reaction:add"),
    ] {
        let body = json!({"object": "page", "entry": [{"id": "448242228374517", "changes": [
            {"field": "feed", "value": {"item": item, "verb": verb, "comment_id": "c9", "post_id": "p1"}}]}]});
        let e = one(parse_instagram(&bytes(&body)));
        assert_eq!(
            (e.event_type.as_str(), e.handling),
            (expected, Handling::Record)
        );
        assert!(is_sha256_key(&e.dedup_key, "fb:feed"), "{}", e.dedup_key);
    }
}

// ---- Instagram / Messenger messaging ------------------------------------------------

#[test]
fn ig_message() {
    let e = one(parse_instagram(fixture!("ig_messaging_message")));
    let mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDA1NzI2NjUzMDI2OjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1OTgzNjg4NDE2MzQ2NTY0MzozMTk3NjQ5NzY0MDk4NzgxNjMyMjM3MjY1MDI1OTQ2NTQwOAZDZD";
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message", Handling::Reply)
    );
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.sender_id.as_deref(), Some("6721849302157734"));
    assert_eq!(e.item_id.as_deref(), Some(mid));
    assert_eq!(
        e.text.as_deref(),
        Some("Hi! Is the blue jacket still available in M?")
    );
    assert_eq!(e.post_external_id, None);
    assert!(!e.is_own);
    assert_eq!(
        e.occurred_at.map(|t| t.timestamp_millis()),
        Some(1_785_413_500_911)
    );
    assert_eq!(e.dedup_key, format!("ig:message:{mid}"));
}

#[test]
fn messenger_page_message() {
    let e = one(parse_instagram(fixture!("messenger_page_message")));
    assert_eq!((e.source, e.platform), (Source::Facebook, Source::Facebook));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message", Handling::Reply)
    );
    assert_eq!(e.account, acct("448242228374517"));
    assert_eq!(e.sender_id.as_deref(), Some("25108722364712345"));
    assert_eq!(e.text.as_deref(), Some("Do you ship to Porto?"));
    assert!(
        e.dedup_key
            .starts_with("fb:message:m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM")
    );
}

#[test]
fn message_echo_is_own_and_addressed_to_the_recipient() {
    let body = json!({"object": "instagram", "entry": [{"id": "17841405726653026", "time": 1785413501532_i64, "messaging": [{
        "sender": {"id": "17841405726653026"}, "recipient": {"id": "6721849302157734"}, "timestamp": 1785413500911_i64,
        "message": {"mid": "m-echo", "text": "Yes, it is!", "is_echo": true}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message_echo", Handling::Reply)
    );
    assert!(e.is_own);
    assert_eq!(e.sender_id.as_deref(), Some("6721849302157734"));
    assert_eq!(e.dedup_key, "ig:message:m-echo");
}

#[test]
fn message_without_text_has_no_text() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "messaging": [{
        "sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 1785413500911_i64,
        "message": {"mid": "m-att", "attachments": [{"type": "image", "payload": {"url": "https://x"}}]}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!((e.event_type.as_str(), e.text), ("message", None));
}

#[test]
fn ig_message_reaction() {
    let e = one(parse_instagram(fixture!("ig_message_reactions")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message_reaction", Handling::Record)
    );
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.sender_id.as_deref(), Some("6721849302157734"));
    let mid = e.item_id.clone().expect("mid");
    assert_eq!(
        e.dedup_key,
        format!("ig:reaction:6721849302157734:{mid}:react:love:1785413600349")
    );
}

#[test]
fn ig_messaging_postback() {
    let e = one(parse_instagram(fixture!("ig_messaging_postbacks")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("messaging_postback", Handling::Record)
    );
    assert_eq!(e.text.as_deref(), Some("Track my order"));
    let mid = e.item_id.clone().expect("mid");
    assert_eq!(e.dedup_key, format!("ig:postback:{mid}"));
}

#[test]
fn postback_without_mid_is_keyed_by_sender_and_time() {
    let body = json!({"object": "page", "entry": [{"id": "1", "messaging": [{
        "sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 1785413700377_i64,
        "postback": {"title": "Start", "payload": "GET_STARTED"}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(e.dedup_key, "fb:postback:2:1785413700377");
}

#[test]
fn ig_messaging_referral() {
    let e = one(parse_instagram(fixture!("ig_messaging_referral")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("messaging_referral", Handling::Record)
    );
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.dedup_key, "ig:referral:6721849302157734:1785413800377");
}

#[test]
fn ig_messaging_seen() {
    let e = one(parse_instagram(fixture!("ig_messaging_seen")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("messaging_seen", Handling::Record)
    );
    let mid = e.item_id.clone().expect("mid");
    assert_eq!(e.dedup_key, format!("ig:seen:6721849302157734:{mid}"));
}

#[test]
fn messenger_read_uses_the_watermark() {
    let body = json!({"object": "page", "entry": [{"id": "1", "messaging": [{
        "sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 1785413900349_i64,
        "read": {"watermark": 1785413900000_i64}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(e.event_type, "messaging_seen");
    assert_eq!(e.dedup_key, "fb:seen:2:1785413900000");
}

#[test]
fn messaging_delivered_as_a_change_is_understood() {
    // The dashboard's Test button sends messaging events as `changes`.
    let body = json!({"object": "instagram", "entry": [{"id": "0", "time": 1527459824, "changes": [{
        "field": "messages", "value": {"sender": {"id": "12334"}, "recipient": {"id": "23245"},
        "timestamp": "1527459824", "message": {"mid": "random_mid", "text": "random_text"}}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message", Handling::Reply)
    );
    assert_eq!(e.sender_id.as_deref(), Some("12334"));
    assert_eq!(e.text.as_deref(), Some("random_text"));
    assert_eq!(e.dedup_key, "ig:message:random_mid");
}

// ---- WhatsApp Cloud API --------------------------------------------------------------

#[test]
fn whatsapp_text_message() {
    let e = one(parse_whatsapp(fixture!("whatsapp_messages_text")));
    assert_eq!((e.source, e.platform), (Source::Whatsapp, Source::Whatsapp));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("whatsapp_message", Handling::Reply)
    );
    assert_eq!(e.account, acct("106540352242922"));
    assert_eq!(e.sender_id.as_deref(), Some("351912345678"));
    assert_eq!(e.sender_name.as_deref(), Some("Rita Almeida"));
    assert_eq!(
        e.text.as_deref(),
        Some("Olá! Do you have the jacket in blue?")
    );
    let id = "wamid.HBgMMzUxOTEyMzQ1Njc4FQIAEhgUM0E0RkQ1QjI4OEM4NjEyRjQ2QjYA";
    assert_eq!(e.item_id.as_deref(), Some(id));
    assert_eq!(e.occurred_at.map(|t| t.timestamp()), Some(1_785_414_200));
    assert_eq!(e.dedup_key, format!("wa:message:{id}"));
    let value = &e.payload["entry"][0]["changes"][0]["value"];
    assert_eq!(value["metadata"]["phone_number_id"], "106540352242922");
    assert_eq!(value["messages"].as_array().map(Vec::len), Some(1));
}

#[test]
fn whatsapp_statuses() {
    let delivered = one(parse_whatsapp(fixture!("whatsapp_statuses_delivered")));
    assert_eq!(
        (delivered.event_type.as_str(), delivered.handling),
        ("whatsapp_status", Handling::DeliveryStatus)
    );
    assert_eq!(delivered.account, acct("106540352242922"));
    assert_eq!(delivered.sender_id.as_deref(), Some("351912345678"));
    let id = "wamid.HBgMMzUxOTEyMzQ1Njc4FQIAERgSQjQ5RkE3RjNDOTc0MTU2QTk5AA==";
    assert_eq!(delivered.item_id.as_deref(), Some(id));
    assert_eq!(delivered.dedup_key, format!("wa:status:{id}:delivered"));

    let failed = one(parse_whatsapp(fixture!("whatsapp_statuses_failed")));
    assert_eq!(failed.handling, Handling::DeliveryStatus);
    assert!(
        failed.dedup_key.ends_with(":failed"),
        "{}",
        failed.dedup_key
    );
    assert_eq!(
        failed.occurred_at.map(|t| t.timestamp()),
        Some(1_785_500_631)
    );
}

#[test]
fn whatsapp_batch_splits_messages_and_statuses() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": "pn1"},
        "contacts": [{"wa_id": "111", "profile": {"name": "One"}}, {"wa_id": "222", "profile": {"name": "Two"}}],
        "messages": [
            {"from": "222", "id": "w1", "timestamp": "1785414200", "type": "button", "button": {"text": "Yes"}},
            {"from": "111", "id": "w2", "timestamp": "1785414201", "type": "interactive",
             "interactive": {"type": "list_reply", "list_reply": {"id": "x", "title": "Blue"}}},
            {"from": "", "user_id": "US.42", "id": "w3", "timestamp": "1785414202", "type": "image",
             "image": {"id": "img", "caption": "this one"}}],
        "statuses": [{"id": "w0", "status": "read", "timestamp": "1785414203", "recipient_id": "111"}]}}]}]});
    let events = parse_whatsapp(&bytes(&body)).expect("parses");
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event_type.as_str(),
                e.sender_id.as_deref(),
                e.sender_name.as_deref(),
                e.text.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("whatsapp_message", Some("222"), Some("Two"), Some("Yes")),
            ("whatsapp_message", Some("111"), Some("One"), Some("Blue")),
            ("whatsapp_message", Some("US.42"), None, Some("this one")),
            ("whatsapp_status", Some("111"), None, None),
        ]
    );
    for e in &events {
        let value = &e.payload["entry"][0]["changes"][0]["value"];
        let items = value["messages"]
            .as_array()
            .or(value["statuses"].as_array())
            .map(Vec::len);
        assert_eq!(items, Some(1), "each payload holds only its own item");
        assert!(value.get("messages").is_none() || value.get("statuses").is_none());
        assert_eq!(value["contacts"].as_array().map(Vec::len), Some(2));
    }
}

#[test]
fn whatsapp_unknown_field_is_recorded() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [
        {"field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_id": 1}}]}]});
    let e = one(parse_whatsapp(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("unknown:message_template_status_update", Handling::Record)
    );
    assert_eq!(e.account, AccountRef::None);
    assert!(is_sha256_key(&e.dedup_key, "wa:unknown"), "{}", e.dedup_key);
}

// ---- WhatsApp Bridge -------------------------------------------------------------------

#[test]
fn bridge_message_received() {
    let e = one(parse_whatsapp(fixture!("bridge_message_received")));
    assert_eq!((e.source, e.platform), (Source::Whatsapp, Source::Whatsapp));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message.received", Handling::Reply)
    );
    assert_eq!(e.account, acct("+0987654321"));
    assert_eq!(e.sender_id.as_deref(), Some("+1234567890"));
    assert_eq!(e.item_id.as_deref(), Some("msg_123"));
    assert_eq!(e.text.as_deref(), Some("Hello, can you help me?"));
    assert_eq!(
        e.occurred_at.map(|t| t.to_rfc3339()).as_deref(),
        Some("2024-01-15T10:30:00+00:00")
    );
    assert_eq!(e.dedup_key, "bridge:message.received:msg_123");
    assert_eq!(e.payload["data"]["message_id"], "msg_123");
}

#[test]
fn bridge_message_sent() {
    // The fixture carries no `from_number`: the outbound reply is found by `message_id`.
    let e = one(parse_whatsapp(fixture!("bridge_message_sent")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message.sent", Handling::DeliveryStatus)
    );
    assert_eq!(e.account, AccountRef::None);
    assert_eq!(e.item_id.as_deref(), Some("wamid.out_001"));
    assert_eq!(e.dedup_key, "bridge:message.sent:wamid.out_001");

    let body = json!({"event_type": "message.sent", "timestamp": "2024-01-15T10:30:05Z",
        "data": {"message_id": "m1", "from_number": "+0987654321", "to_number": "+1234567890"}});
    assert_eq!(
        one(parse_whatsapp(&bytes(&body))).account,
        acct("+0987654321")
    );
}

#[test]
fn bridge_message_failed() {
    let body = json!({"event_type": "message.failed", "timestamp": 1705314605,
        "data": {"message_id": "m2", "from_number": "+0987654321", "error": "not on WhatsApp"}});
    let e = one(parse_whatsapp(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("message.failed", Handling::DeliveryStatus)
    );
    assert_eq!(e.account, acct("+0987654321"));
    assert_eq!(e.dedup_key, "bridge:message.failed:m2");
    let no_account = json!({"event_type": "message.failed", "data": {"message_id": "m3"}});
    assert_eq!(
        one(parse_whatsapp(&bytes(&no_account))).account,
        AccountRef::None
    );
}

#[test]
fn bridge_connection_status() {
    let e = one(parse_whatsapp(fixture!("bridge_connection_status")));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("connection.status", Handling::Record)
    );
    assert_eq!(e.account, AccountRef::None);
    assert_eq!(
        e.dedup_key,
        "bridge:connection.status:session_abc:2024-01-15T10:31:00Z:connected"
    );
}

#[test]
fn bridge_unknown_event_type_is_recorded() {
    let body =
        json!({"event_type": "presence.update", "timestamp": "2024-01-15T10:31:00Z", "data": {}});
    let e = one(parse_whatsapp(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("unknown:presence.update", Handling::Record)
    );
    assert_eq!(e.account, AccountRef::None);
    assert!(
        is_sha256_key(&e.dedup_key, "bridge:unknown"),
        "{}",
        e.dedup_key
    );
}

// ---- batches, keys, timestamps, ids ------------------------------------------------------

#[test]
fn batch_of_comments_in_two_entries() {
    let body = json!({"object": "instagram", "entry": [
        {"id": "acct1", "time": 1785412861, "changes": [comment_change("c1", "one"), comment_change("c2", "two")]},
        {"id": "acct2", "time": 1785412862, "changes": [comment_change("c3", "three")]}]});
    let events = parse_instagram(&bytes(&body)).expect("parses");
    let keys: Vec<_> = events.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys, ["ig:comment:c1", "ig:comment:c2", "ig:comment:c3"]);
    let accounts: Vec<_> = events.iter().map(|e| e.account.clone()).collect();
    assert_eq!(accounts, [acct("acct1"), acct("acct1"), acct("acct2")]);
    for e in &events {
        let entries = e.payload["entry"].as_array().expect("entry");
        assert_eq!(entries.len(), 1);
        let changes = entries[0]["changes"].as_array().expect("changes");
        assert_eq!(changes.len(), 1);
        assert_eq!(
            Some(&changes[0]["value"]["id"]),
            e.item_id.as_ref().map(|id| json!(id)).as_ref()
        );
        assert_eq!(e.payload["object"], "instagram");
        assert!(
            entries[0]["time"].is_number(),
            "entry fields other than changes are kept"
        );
    }
}

#[test]
fn same_body_twice_gives_the_same_keys() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "time": 5, "changes": [
        comment_change("c1", "hi"),
        {"field": "story_insights", "value": {"media_id": "m", "reach": 3}},
        {"field": "story_insights", "value": {"media_id": "m", "reach": 4}}]}]});
    let keys = |b: &[u8]| {
        parse_instagram(b)
            .expect("parses")
            .into_iter()
            .map(|e| e.dedup_key)
            .collect::<Vec<_>>()
    };
    let first = keys(&bytes(&body));
    assert_eq!(first, keys(&bytes(&body)));
    assert_ne!(
        first[1], first[2],
        "different unknown items hash differently"
    );
    // Key order in the bytes does not matter: the hash is over canonical JSON.
    let reordered = br#"{"entry":[{"changes":[{"value":{"text":"hi","id":"c1","media":{"id":"18047215893126544"},"from":{"username":"maria","id":"6721849302157734"}},"field":"comments"},{"value":{"reach":3,"media_id":"m"},"field":"story_insights"},{"value":{"reach":4,"media_id":"m"},"field":"story_insights"}],"time":5,"id":"1"}],"object":"instagram"}"#;
    assert_eq!(first, keys(reordered));
}

#[test]
fn seconds_milliseconds_and_text_timestamps() {
    let at = |time: Value| {
        let body = json!({"object": "instagram", "entry": [{"id": "1", "time": time, "changes": [comment_change("c", "x")]}]});
        one(parse_instagram(&bytes(&body)))
            .occurred_at
            .map(|t| t.timestamp_millis())
    };
    assert_eq!(at(json!(1785412861)), Some(1_785_412_861_000));
    assert_eq!(at(json!(1785412861123_i64)), Some(1_785_412_861_123));
    assert_eq!(at(json!("1785412861")), Some(1_785_412_861_000));
    assert_eq!(at(json!("1785412861123")), Some(1_785_412_861_123));
    assert_eq!(at(json!("2026-07-30T12:01:01Z")), Some(1_785_412_861_000));
    assert_eq!(
        at(json!("2026-07-30T12:01:01+0000")),
        Some(1_785_412_861_000)
    );
    assert_eq!(at(json!("yesterday")), None);
    assert_eq!(at(json!(1e300)), None);
    assert_eq!(at(json!(-1e300)), None);
    assert_eq!(at(json!("NaN")), None);
    assert_eq!(at(json!(null)), None);
}

#[test]
fn numeric_ids_become_strings() {
    let body = br#"{"object":"instagram","entry":[{"id":17841405726653026,"time":1785412861,"changes":[{"field":"comments",
        "value":{"from":{"id":6721849302157734,"username":"maria"},"media":{"id":18047215893126544},"id":17912345678901234,"text":"hi"}}]}]}"#;
    let e = one(parse_instagram(body));
    assert_eq!(e.account, acct("17841405726653026"));
    assert_eq!(e.item_id.as_deref(), Some("17912345678901234"));
    assert_eq!(e.sender_id.as_deref(), Some("6721849302157734"));
    assert_eq!(e.post_external_id.as_deref(), Some("18047215893126544"));
    assert_eq!(e.dedup_key, "ig:comment:17912345678901234");
}

#[test]
fn unknown_field_is_recorded() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": [
        {"field": "story_insights", "value": {"media_id": "m", "reach": 3}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("unknown:story_insights", Handling::Record)
    );
    assert_eq!(e.account, acct("1"));
    assert!(is_sha256_key(&e.dedup_key, "ig:unknown"), "{}", e.dedup_key);
}

#[test]
fn unknown_messaging_kind_is_recorded() {
    let body = json!({"object": "page", "entry": [{"id": "1", "messaging": [{
        "sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 1, "optin": {"ref": "x"}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(
        (e.event_type.as_str(), e.handling),
        ("unknown:optin", Handling::Record)
    );
    assert!(is_sha256_key(&e.dedup_key, "fb:unknown"), "{}", e.dedup_key);
}

#[test]
fn missing_natural_id_falls_back_to_the_payload_hash() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": [
        {"field": "comments", "value": {"text": "no id"}}]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(e.event_type, "comment");
    assert!(is_sha256_key(&e.dedup_key, "ig:comment"), "{}", e.dedup_key);
    let long_id = "9".repeat(600);
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": [comment_change(&long_id, "x")]}]});
    let e = one(parse_instagram(&bytes(&body)));
    assert_eq!(e.item_id.as_deref(), Some(long_id.as_str()));
    assert!(
        is_sha256_key(&e.dedup_key, "ig:comment"),
        "an over-long key is hashed: {}",
        e.dedup_key
    );
}

// ---- errors -------------------------------------------------------------------------------

#[test]
fn unknown_shapes() {
    for body in [
        &b"{}"[..],
        b"[]",
        b"null",
        b"3",
        br#"{"object":"instagram"}"#,
        br#"{"object":"instagram","entry":[]}"#,
        br#"{"object":"instagram","entry":{}}"#,
        br#"{"object":"user","entry":[{"changes":[]}]}"#,
        br#"{"object":"instagram","entry":[{"id":"1"}]}"#,
        br#"{"object":"instagram","entry":[{"id":"1","changes":[]}]}"#,
    ] {
        unknown_shape(parse_instagram(body));
    }
    for body in [
        &b"{}"[..],
        b"[]",
        br#"{"object":"instagram","entry":[]}"#,
        br#"{"object":"whatsapp_business_account"}"#,
        br#"{"object":"whatsapp_business_account","entry":[]}"#,
        br#"{"event_type":42}"#,
    ] {
        unknown_shape(parse_whatsapp(body));
    }
}

#[test]
fn shape_errors_say_where() {
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": [
        comment_change("c1", "ok"), {"field": "comments"}]}]});
    assert_eq!(
        unknown_shape(parse_instagram(&bytes(&body))),
        "entry[0].changes[1]: missing value"
    );
    let body = json!({"object": "instagram", "entry": [{"id": "1", "messaging": [1]}]});
    assert_eq!(
        unknown_shape(parse_instagram(&bytes(&body))),
        "entry[0].messaging[0]: expected an object, got a number"
    );
    let body = json!({"object": "instagram", "entry": [{"id": "1", "changes": "x"}]});
    assert_eq!(
        unknown_shape(parse_instagram(&bytes(&body))),
        "entry[0].changes: expected an array, got a string"
    );
}

#[test]
fn not_json() {
    for body in [
        &b""[..],
        b"not json",
        b"{\"object\":",
        b"{} trailing",
        b"\xff\xfe{}",
        b"{\"object\":\"\xc3\x28\"}",
    ] {
        for result in [parse_instagram(body), parse_whatsapp(body)] {
            assert!(
                matches!(result, Err(ParseError::NotJson(ref d)) if !d.is_empty()),
                "{body:?}: {result:?}"
            );
        }
    }
}

#[test]
fn too_many_events() {
    let body = |n: usize| {
        let changes: Vec<_> = (0..n)
            .map(|i| comment_change(&format!("c{i}"), "x"))
            .collect();
        bytes(&json!({"object": "instagram", "entry": [{"id": "1", "changes": changes}]}))
    };
    assert_eq!(
        parse_instagram(&body(MAX_EVENTS_PER_BODY)).map(|e| e.len()),
        Ok(MAX_EVENTS_PER_BODY)
    );
    assert!(matches!(
        parse_instagram(&body(MAX_EVENTS_PER_BODY + 1)),
        Err(ParseError::TooManyEvents(_))
    ));

    let statuses: Vec<_> = (0..=MAX_EVENTS_PER_BODY)
        .map(|i| json!({"id": format!("w{i}"), "status": "sent"}))
        .collect();
    let wa = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"statuses": statuses}}]}]});
    assert!(matches!(
        parse_whatsapp(&bytes(&wa)),
        Err(ParseError::TooManyEvents(_))
    ));
}

#[test]
fn a_huge_shared_envelope_is_not_copied_into_every_event() {
    let changes: Vec<_> = (0..MAX_EVENTS_PER_BODY)
        .map(|i| comment_change(&format!("c{i}"), "x"))
        .collect();
    let body = json!({"object": "instagram", "entry": [{"id": "1", "padding": "p".repeat(64 << 10), "changes": changes}]});
    assert!(matches!(
        parse_instagram(&bytes(&body)),
        Err(ParseError::TooManyEvents(_))
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for body in [
        "[".repeat(10_000),
        "{\"a\":".repeat(10_000),
        format!(
            "{{\"object\":\"instagram\",\"entry\":{}",
            "[".repeat(10_000)
        ),
    ] {
        assert!(parse_instagram(body.as_bytes()).is_err());
        assert!(parse_whatsapp(body.as_bytes()).is_err());
    }
}

#[test]
fn wrong_types_everywhere_do_not_panic() {
    let odd = [
        json!(null),
        json!(true),
        json!(-1.5),
        json!(""),
        json!([]),
        json!({}),
        json!([{"id": {}}]),
    ];
    for v in &odd {
        let bodies = [
            json!({"object": "instagram", "user_id": v, "persona_id": v, "entry": [{"id": v, "time": v, "changes": [{"value": {"comment_id": v, "created_time": v, "item": v}}]}]}),
            json!({"object": "page", "entry": [{"id": v, "time": v, "changes": [{"field": "feed", "value": {"item": v, "verb": v, "from": v, "post_id": v}},
                {"field": "comments", "value": {"from": v, "media": v, "id": v, "text": v}}, {"field": "mentions", "value": {"comment_id": v}}]}]}),
            json!({"object": "instagram", "entry": [{"id": "1", "messaging": [{"sender": v, "timestamp": v, "message": v}, {"reaction": v},
                {"postback": v}, {"read": v}, {"referral": v}, {}]}]}),
        ];
        for body in &bodies {
            let _ = parse_instagram(&bytes(body));
        }
        let wa = [
            json!({"event_type": "message.received", "timestamp": v, "data": v}),
            json!({"event_type": "connection.status", "data": {"session_id": v, "status": v}}),
            json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
                "metadata": v, "contacts": v, "messages": [{"from": v, "id": v, "text": v, "timestamp": v}], "statuses": [v]}}]}]}),
        ];
        for body in &wa {
            let _ = parse_whatsapp(&bytes(body));
        }
    }
}

#[test]
fn truncated_and_corrupted_fixtures_do_not_panic() {
    let fixtures: [&[u8]; 16] = [
        fixture!("compact_comment"),
        fixture!("ig_comments"),
        fixture!("ig_live_comments"),
        fixture!("ig_mentions_in_comment"),
        fixture!("ig_message_reactions"),
        fixture!("ig_messaging_message"),
        fixture!("ig_messaging_postbacks"),
        fixture!("ig_messaging_referral"),
        fixture!("ig_messaging_seen"),
        fixture!("messenger_page_message"),
        fixture!("whatsapp_messages_text"),
        fixture!("whatsapp_statuses_delivered"),
        fixture!("whatsapp_statuses_failed"),
        fixture!("bridge_connection_status"),
        fixture!("bridge_message_received"),
        fixture!("bridge_message_sent"),
    ];
    for body in fixtures {
        for end in 0..body.len() {
            let _ = parse_instagram(&body[..end]);
            let _ = parse_whatsapp(&body[..end]);
        }
        for (i, junk) in [b'"', b'{', b']', b'0', 0xff]
            .into_iter()
            .cycle()
            .take(body.len())
            .enumerate()
        {
            let mut corrupted = body.to_vec();
            corrupted[i] = junk;
            let _ = parse_instagram(&corrupted);
            let _ = parse_whatsapp(&corrupted);
        }
    }
}
