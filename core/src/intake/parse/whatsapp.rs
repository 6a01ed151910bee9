//! The WhatsApp route: Bridge events (`event_type`, `timestamp`, `data`) and Cloud API
//! `whatsapp_business_account` payloads (`entry[].changes[]` with `messages`/`statuses`).

use serde_json::Value;

use super::common::{
    Events, Object, Shared, account, array, dedup_key, entries, event, hashed_key, id_of, object,
    shape, str_of, text_of, timestamp, unknown,
};
use crate::intake::{AccountRef, Handling, ParseError, ParsedEvent, Source};

/// One Bridge event per body; the payload is the whole body.
pub(super) fn bridge(root: Object) -> Result<Vec<ParsedEvent>, ParseError> {
    let payload = Value::Object(root);
    let name = str_of(payload.get("event_type"))
        .ok_or_else(|| shape("event_type: expected a non-empty string"))?;
    let data = |key: &str| payload.get("data").and_then(|d| d.get(key));
    let message_id = id_of(data("message_id"));
    let message_key = || {
        dedup_key(
            &format!("bridge:{name}"),
            &[message_id.as_deref()],
            &payload,
        )
    };
    let (event_type, handling, account_id, peer, key) = match name {
        // Inbound: written by the peer to the account's number.
        "message.received" => (
            name.to_owned(),
            Handling::Reply,
            id_of(data("to_number")),
            id_of(data("from_number")),
            message_key(),
        ),
        // Reports on our own outbound message, sent from the account's number to the peer.
        "message.sent" | "message.failed" => (
            name.to_owned(),
            Handling::DeliveryStatus,
            id_of(data("from_number")),
            id_of(data("to_number")),
            message_key(),
        ),
        "connection.status" => {
            let parts = [
                str_of(data("session_id")),
                str_of(payload.get("timestamp")),
                str_of(data("status")),
            ];
            let key = dedup_key("bridge:connection.status", &parts, &payload);
            (name.to_owned(), Handling::Record, None, None, key)
        }
        other => {
            let key = hashed_key("bridge:unknown", &payload);
            (unknown(other), Handling::Record, None, None, key)
        }
    };
    let text = text_of(data("text"));
    let occurred_at = timestamp(payload.get("timestamp")).or_else(|| timestamp(data("timestamp")));
    Ok(vec![ParsedEvent {
        item_id: message_id,
        sender_id: peer,
        text,
        occurred_at,
        ..event(
            key,
            Source::Whatsapp,
            event_type,
            handling,
            account(account_id),
            payload,
        )
    }])
}

/// Cloud API: one event per `messages[]` or `statuses[]` item of every change.
pub(super) fn cloud(root: &Object) -> Result<Vec<ParsedEvent>, ParseError> {
    let top = Shared::new(root, &["entry"]);
    let mut out = Events::default();
    for (i, entry) in entries(root)?.iter().enumerate() {
        let here = || format!("entry[{i}]");
        let entry = object(entry, &here)?;
        let entry_fields = Shared::new(entry, &["changes"]);
        for (j, change) in array(entry, "changes", &here)?.iter().enumerate() {
            let at = || format!("entry[{i}].changes[{j}]");
            let in_value = || format!("{}.value", at());
            let change = object(change, &at)?;
            let value = change
                .get("value")
                .ok_or_else(|| shape(format!("{}: missing value", at())))?;
            let value = object(value, &in_value)?;
            let field = str_of(change.get("field"))
                .ok_or_else(|| shape(format!("{}: missing field", at())))?;
            let phone_id = id_of(value.get("metadata").and_then(|m| m.get("phone_number_id")));
            let (messages, statuses) = match field {
                "messages" => (
                    array(value, "messages", &in_value)?,
                    array(value, "statuses", &in_value)?,
                ),
                _ => (&[][..], &[][..]),
            };
            let budget = top.len + entry_fields.len;

            if messages.is_empty() && statuses.is_empty() {
                // Other fields (template and account updates…), or a `messages` change
                // that carries only `errors`: recorded as `unknown:<field>`.
                out.add(budget, &at, || {
                    let whole = entry_fields.with_one("changes", Value::Object(change.clone()));
                    let payload = top.with_one("entry", whole);
                    let key = hashed_key("wa:unknown", &payload);
                    let account = account(phone_id.clone());
                    event(
                        key,
                        Source::Whatsapp,
                        unknown(field),
                        Handling::Record,
                        account,
                        payload,
                    )
                })?;
                continue;
            }

            let change_fields = Shared::new(change, &["value"]);
            let value_fields = Shared::new(value, &["messages", "statuses"]);
            let budget = budget + change_fields.len + value_fields.len;
            let slice = |key: &str, item: &Value| {
                let value = value_fields.with_one(key, item.clone());
                top.with_one(
                    "entry",
                    entry_fields.with_one("changes", change_fields.with("value", value)),
                )
            };
            for (k, message) in messages.iter().enumerate() {
                let at = || format!("{}.messages[{k}]", in_value());
                out.add(budget, &at, || {
                    inbound(
                        value,
                        message,
                        account(phone_id.clone()),
                        slice("messages", message),
                    )
                })?;
            }
            for (k, status) in statuses.iter().enumerate() {
                let at = || format!("{}.statuses[{k}]", in_value());
                out.add(budget, &at, || {
                    delivery(status, account(phone_id.clone()), slice("statuses", status))
                })?;
            }
        }
    }
    out.finish("no event in the body: every entry has an empty or missing changes")
}

/// Where a message's text may be, by message type.
const TEXT_PATHS: [&str; 7] = [
    "/text/body",
    "/button/text",
    "/interactive/button_reply/title",
    "/interactive/list_reply/title",
    "/image/caption",
    "/video/caption",
    "/document/caption",
];

/// An inbound Cloud API message: reply-able, addressed to its sender.
fn inbound(value: &Object, message: &Value, account: AccountRef, payload: Value) -> ParsedEvent {
    let id = id_of(message.get("id"));
    // `from` is the phone number; it may be empty for users known only by `user_id`.
    let from = id_of(message.get("from")).or_else(|| id_of(message.get("user_id")));
    let sender_name = from.as_deref().and_then(|from| {
        let contacts = value.get("contacts").and_then(Value::as_array)?;
        contacts
            .iter()
            .find(|c| {
                [c.get("wa_id"), c.get("user_id")]
                    .into_iter()
                    .any(|v| id_of(v).as_deref() == Some(from))
            })
            .and_then(|c| str_of(c.pointer("/profile/name")))
            .map(str::to_owned)
    });
    ParsedEvent {
        sender_name,
        sender_id: from,
        text: TEXT_PATHS.iter().find_map(|p| text_of(message.pointer(p))),
        occurred_at: timestamp(message.get("timestamp")),
        item_id: id.clone(),
        ..event(
            dedup_key("wa:message", &[id.as_deref()], &payload),
            Source::Whatsapp,
            "whatsapp_message",
            Handling::Reply,
            account,
            payload,
        )
    }
}

/// A delivery report (`sent`, `delivered`, `read`, `failed`) for one of our messages.
fn delivery(status: &Value, account: AccountRef, payload: Value) -> ParsedEvent {
    let id = id_of(status.get("id"));
    let key = dedup_key(
        "wa:status",
        &[id.as_deref(), str_of(status.get("status"))],
        &payload,
    );
    ParsedEvent {
        item_id: id,
        sender_id: id_of(status.get("recipient_id")),
        occurred_at: timestamp(status.get("timestamp")),
        ..event(
            key,
            Source::Whatsapp,
            "whatsapp_status",
            Handling::DeliveryStatus,
            account,
            payload,
        )
    }
}
