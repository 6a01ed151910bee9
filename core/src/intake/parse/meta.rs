//! The Instagram route: Meta's `entry[].changes[]` and `entry[].messaging[]` shapes for
//! `object: instagram` and `object: page` (Facebook, Messenger), and the compact comment
//! shape (`user_id`/`persona_id` at the top, changes without `field`).

use serde_json::Value;

use super::common::{
    Events, Object, Shared, account, array, clip, dedup_key, entries, event, hashed_key, id_of,
    object, shape, str_of, text_of, timestamp, unknown,
};
use crate::intake::{AccountRef, Handling, ParseError, ParsedEvent, Source};

pub(super) fn parse(root: &Object) -> Result<Vec<ParsedEvent>, ParseError> {
    let source = match root.get("object") {
        Some(Value::String(o)) if o == "instagram" => Source::Instagram,
        Some(Value::String(o)) if o == "page" => Source::Facebook,
        Some(Value::String(o)) => {
            return Err(shape(format!(
                "object {:?} is not taken on this route (expected \"instagram\" or \"page\")",
                clip(o)
            )));
        }
        _ => return Err(shape("missing object: expected \"instagram\" or \"page\"")),
    };
    let top = Shared::new(root, &["entry"]);
    let mut out = Events::default();
    for (i, entry) in entries(root)?.iter().enumerate() {
        let here = || format!("entry[{i}]");
        let entry = object(entry, &here)?;
        let ctx = Entry {
            root,
            source,
            tag: match source {
                Source::Facebook => "fb",
                _ => "ig",
            },
            account_id: id_of(entry.get("id")),
            time: entry.get("time"),
        };
        let shared = Shared::new(entry, &["changes", "messaging"]);
        let budget = top.len + shared.len;
        let slice =
            |key: &str, item: &Value| top.with_one("entry", shared.with_one(key, item.clone()));

        for (j, change) in array(entry, "changes", &here)?.iter().enumerate() {
            let at = || format!("entry[{i}].changes[{j}]");
            let change_obj = object(change, &at)?;
            let value = change_obj
                .get("value")
                .filter(|v| v.is_object())
                .ok_or_else(|| shape(format!("{}: missing value", at())))?;
            let kind = match change_obj.get("field") {
                Some(Value::String(field)) => ChangeKind::Field(field),
                Some(_) => return Err(shape(format!("{}: field is not a string", at()))),
                None => ChangeKind::Compact(
                    id_of(root.get("user_id"))
                        .ok_or_else(|| shape(format!("{}: missing field", at())))?,
                ),
            };
            out.add(budget, &at, || {
                let payload = slice("changes", change);
                match kind {
                    ChangeKind::Compact(user) => ctx.compact(user, value, payload),
                    ChangeKind::Field(field) => ctx.change(field, value, payload),
                }
            })?;
        }

        for (j, item) in array(entry, "messaging", &here)?.iter().enumerate() {
            let at = || format!("entry[{i}].messaging[{j}]");
            object(item, &at)?;
            out.add(budget, &at, || {
                ctx.messaging(item, slice("messaging", item))
            })?;
        }
    }
    out.finish("no event in the body: every entry has an empty or missing changes/messaging")
}

enum ChangeKind<'a> {
    /// Meta's shape, dispatched on `field`.
    Field(&'a str),
    /// The compact shape, with its top-level `user_id`.
    Compact(String),
}

/// What every event of one entry shares.
struct Entry<'a> {
    root: &'a Object,
    source: Source,
    /// Dedup key prefix: `ig` or `fb`.
    tag: &'static str,
    /// `entry.id`: the Instagram account or Page the event belongs to.
    account_id: Option<String>,
    time: Option<&'a Value>,
}

/// `messaging` kinds that the dashboard's Test button (and some API versions) deliver as
/// `changes` with the messaging item as `value`.
const MESSAGING_FIELDS: [&str; 6] = [
    "messages",
    "message_echoes",
    "message_reactions",
    "messaging_postbacks",
    "messaging_referral",
    "messaging_seen",
];

/// Where a comment kind keeps its comment id, text and media/post id.
struct CommentPaths {
    id: &'static str,
    text: &'static str,
    post: &'static str,
}

const GRAPH_COMMENT: CommentPaths = CommentPaths {
    id: "/id",
    text: "/text",
    post: "/media/id",
};
const MENTION: CommentPaths = CommentPaths {
    id: "/comment_id",
    text: "/text",
    post: "/media_id",
};
const FEED_COMMENT: CommentPaths = CommentPaths {
    id: "/comment_id",
    text: "/message",
    post: "/post_id",
};

impl Entry<'_> {
    fn key(&self, kind: &str, parts: &[Option<&str>], payload: &Value) -> String {
        dedup_key(&format!("{}:{kind}", self.tag), parts, payload)
    }

    fn base(
        &self,
        key: String,
        event_type: impl Into<String>,
        handling: Handling,
        payload: Value,
    ) -> ParsedEvent {
        event(
            key,
            self.source,
            event_type,
            handling,
            account(self.account_id.clone()),
            payload,
        )
    }

    /// Records a change or item this parser does not know, keyed by its payload.
    fn unknown(&self, name: &str, payload: Value) -> ParsedEvent {
        let key = hashed_key(&format!("{}:unknown", self.tag), &payload);
        ParsedEvent {
            occurred_at: timestamp(self.time),
            ..self.base(key, unknown(name), Handling::Record, payload)
        }
    }

    /// The compact shape: a comment naming the user, persona and post by external id.
    fn compact(&self, user: String, value: &Value, payload: Value) -> ParsedEvent {
        if let Some(item) = str_of(value.get("item"))
            && item != "comment"
        {
            return self.unknown(item, payload);
        }
        let comment_id = id_of(value.get("comment_id"));
        let key = self.key("comment", &[comment_id.as_deref()], &payload);
        ParsedEvent {
            account: AccountRef::Compact {
                user_external_id: user,
            },
            persona_external_id: id_of(self.root.get("persona_id")),
            post_external_id: id_of(value.get("post_id")),
            item_id: comment_id,
            sender_id: id_of(value.get("sender_id")),
            sender_name: str_of(value.get("sender_name")).map(str::to_owned),
            text: text_of(value.get("message")),
            occurred_at: timestamp(value.get("created_time")).or_else(|| timestamp(self.time)),
            ..self.base(key, "comment", Handling::Reply, payload)
        }
    }

    fn change(&self, field: &str, value: &Value, payload: Value) -> ParsedEvent {
        match field {
            "comments" => self.comment("comment", value, &GRAPH_COMMENT, payload),
            "live_comments" => self.comment("live_comment", value, &GRAPH_COMMENT, payload),
            "mentions" => self.mention(value, payload),
            "feed" => self.feed(value, payload),
            f if MESSAGING_FIELDS.contains(&f) => self.messaging(value, payload),
            other => self.unknown(other, payload),
        }
    }

    /// A comment to reply to. Every comment kind shares the `<tag>:comment:<id>` key, so
    /// a comment notified twice (say as `comments` and as `mentions`) is answered once.
    fn comment(
        &self,
        event_type: &str,
        value: &Value,
        at: &CommentPaths,
        payload: Value,
    ) -> ParsedEvent {
        let item_id = id_of(value.pointer(at.id));
        let from = id_of(value.pointer("/from/id"));
        let key = self.key("comment", &[item_id.as_deref()], &payload);
        ParsedEvent {
            post_external_id: id_of(value.pointer(at.post)),
            is_own: from.is_some() && from == self.account_id,
            sender_id: from,
            sender_name: str_of(value.pointer("/from/username"))
                .or_else(|| str_of(value.pointer("/from/name")))
                .map(str::to_owned),
            item_id,
            text: text_of(value.pointer(at.text)),
            occurred_at: timestamp(value.get("created_time")).or_else(|| timestamp(self.time)),
            ..self.base(key, event_type, Handling::Reply, payload)
        }
    }

    /// The account was @mentioned in a comment (reply-able) or, without `comment_id`, in
    /// a caption (recorded).
    fn mention(&self, value: &Value, payload: Value) -> ParsedEvent {
        if value.get("comment_id").is_some() {
            return self.comment("mention", value, &MENTION, payload);
        }
        let media_id = id_of(value.get("media_id"));
        let key = self.key("mention", &[media_id.as_deref()], &payload);
        ParsedEvent {
            post_external_id: media_id,
            occurred_at: timestamp(self.time),
            ..self.base(key, "mention", Handling::Record, payload)
        }
    }

    /// Page feed: a new comment is reply-able; edits, removals and other items
    /// (posts, reactions, shares) are recorded as `feed:<item>:<verb>`.
    fn feed(&self, value: &Value, payload: Value) -> ParsedEvent {
        let item = str_of(value.get("item")).unwrap_or("none");
        let verb = str_of(value.get("verb")).unwrap_or("add");
        if item == "comment" && verb == "add" {
            return self.comment("feed_comment", value, &FEED_COMMENT, payload);
        }
        let key = hashed_key(&format!("{}:feed", self.tag), &payload);
        ParsedEvent {
            post_external_id: id_of(value.get("post_id")),
            item_id: id_of(value.get("comment_id")),
            sender_id: id_of(value.pointer("/from/id")),
            occurred_at: timestamp(value.get("created_time")).or_else(|| timestamp(self.time)),
            ..self.base(
                key,
                format!("feed:{}:{}", clip(item), clip(verb)),
                Handling::Record,
                payload,
            )
        }
    }

    /// One `messaging[]` item, dispatched on the key that names its kind.
    fn messaging(&self, item: &Value, payload: Value) -> ParsedEvent {
        let sender = id_of(item.pointer("/sender/id"));
        let ts = id_of(item.get("timestamp"));
        let occurred_at = timestamp(item.get("timestamp")).or_else(|| timestamp(self.time));
        let (sender, ts) = (sender.as_deref(), ts.as_deref());
        let with = |event: ParsedEvent| ParsedEvent {
            sender_id: event.sender_id.or_else(|| sender.map(str::to_owned)),
            occurred_at,
            ..event
        };

        if let Some(message) = item.get("message") {
            let mid = id_of(message.get("mid"));
            if message.get("is_deleted").and_then(Value::as_bool) == Some(true) {
                let key = self.key("message_deleted", &[mid.as_deref()], &payload);
                return with(ParsedEvent {
                    item_id: mid,
                    ..self.base(key, "message_deleted", Handling::Record, payload)
                });
            }
            // An echo is our own outbound message: the conversation peer is the recipient.
            let echo = message.get("is_echo").and_then(Value::as_bool) == Some(true);
            let key = self.key("message", &[mid.as_deref()], &payload);
            return with(ParsedEvent {
                item_id: mid,
                text: text_of(message.get("text")),
                is_own: echo,
                sender_id: if echo {
                    id_of(item.pointer("/recipient/id"))
                } else {
                    None
                },
                ..self.base(
                    key,
                    if echo { "message_echo" } else { "message" },
                    Handling::Reply,
                    payload,
                )
            });
        }
        if let Some(reaction) = item.get("reaction") {
            let mid = id_of(reaction.get("mid"));
            let action = str_of(reaction.get("action")).unwrap_or("");
            let emoji = str_of(reaction.get("reaction")).unwrap_or("");
            let parts = [sender, mid.as_deref(), Some(action), Some(emoji), ts];
            let key = self.key("reaction", &parts, &payload);
            return with(ParsedEvent {
                item_id: mid,
                ..self.base(key, "message_reaction", Handling::Record, payload)
            });
        }
        if let Some(postback) = item.get("postback") {
            let mid = id_of(postback.get("mid"));
            let key = match &mid {
                Some(mid) => self.key("postback", &[Some(mid)], &payload),
                None => self.key("postback", &[sender, ts], &payload),
            };
            return with(ParsedEvent {
                item_id: mid,
                text: text_of(postback.get("title")),
                ..self.base(key, "messaging_postback", Handling::Record, payload)
            });
        }
        if item.get("referral").is_some() {
            let key = self.key("referral", &[sender, ts], &payload);
            return with(self.base(key, "messaging_referral", Handling::Record, payload));
        }
        if let Some(read) = item.get("read") {
            let mid = id_of(read.get("mid"));
            let mark = id_of(read.get("watermark")).or_else(|| mid.clone());
            let key = self.key("seen", &[sender, mark.as_deref()], &payload);
            return with(ParsedEvent {
                item_id: mid,
                ..self.base(key, "messaging_seen", Handling::Record, payload)
            });
        }
        let name = item
            .as_object()
            .and_then(|o| {
                o.keys()
                    .find(|k| !matches!(k.as_str(), "sender" | "recipient" | "timestamp"))
            })
            .map_or("messaging", String::as_str);
        with(self.unknown(name, payload))
    }
}
