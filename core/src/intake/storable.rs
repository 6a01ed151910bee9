//! What PostgreSQL refuses to store, and what intake does about it.
//!
//! A webhook body can carry values that are valid JSON and valid Rust strings but that
//! PostgreSQL refuses with a *data exception* (SQLSTATE class 22):
//!
//! - U+0000 (NUL, JSON's `\u0000`): `text` refuses it (22021) and `jsonb` refuses the
//!   escape (22P05). Meta and WhatsApp both relay user-typed text, so a NUL can arrive in
//!   any string, key included.
//! - Timestamps outside `timestamptz`'s range, 4714-11-24 BC to 294276 AD (22008): the
//!   parsers read epochs of any size.
//!
//! - An id longer than an index can hold: a unique index refuses a key over 2,704 bytes
//!   with *program limit exceeded* (54000; "index row requires 11464 bytes, maximum size
//!   is 8191" once TOAST gives up). Every stored identifier is bounded far below that:
//!   [`MAX_ID_BYTES`] for an external id (in a payload or an admin write alike),
//!   [`MAX_KEY_BYTES`] for a dedup key and an event type.
//!
//! Ingest is group-committed, so one refused value would fail every request sharing its
//! statement. Hence two layers:
//!
//! 1. The parsers never produce such a value. A NUL is replaced by U+FFFD (the Unicode
//!    replacement character) in every string and object key of the decoded body
//!    ([`replace_nul`]), so every field derived from it (ids, sender name, text, the
//!    stored payload, dedup keys) is storable and the event is kept rather than refused:
//!    the sender cannot fix its payload, and refusing a real comment would lose it. This
//!    runs on the parsed value, after the signature was checked on the raw bytes. A
//!    timestamp out of range is read as no timestamp, like any other unreadable one.
//! 2. The ingest seam checks every row again before it joins a batch
//!    ([`has_nul_escape`], [`timestamp_storable`], the length bounds) and refuses only
//!    that request, with a `422`: an id of 10 kB is no real event, and no retry of the
//!    same body can help.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The longest external id hookq stores, in bytes: the ids inside webhook payloads
/// (account, post, comment or message, sender, user, persona) and the admin API's
/// external ids and account ids. Meta's and WhatsApp's ids are under 100 bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The longest dedup key or event type hookq stores, in bytes (a dedup key joins a
/// prefix and up to three ids).
pub const MAX_KEY_BYTES: usize = 1024;

/// What a NUL becomes: U+FFFD, the character Unicode reserves for "a character that could
/// not be represented".
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `timestamptz`'s first instant, 4714-11-24 00:00:00 BC (Julian day 0), in Unix seconds.
const PG_MIN_UNIX_SECS: i64 = -210_866_803_200;
/// The first instant past `timestamptz`'s range, 294277-01-01 00:00:00 AD, in Unix
/// seconds (chrono stops earlier, at year 262143, so this bound is for completeness).
const PG_END_UNIX_SECS: i64 = 9_224_318_016_000;

/// Replaces every NUL in `v`'s strings and object keys with [`NUL_REPLACEMENT`]; returns
/// how many strings (values or keys) it changed.
///
/// A key that becomes equal to a key already present (`"a\u0000"` next to `"a\uFFFD"`)
/// gets more U+FFFD appended until it is unique, so no value is dropped; keys without a
/// NUL keep their names, and the map keeps its order.
pub fn replace_nul(v: &mut Value) -> usize {
    match v {
        Value::String(s) => usize::from(replace_nul_in(s)),
        Value::Array(items) => items.iter_mut().map(replace_nul).sum(),
        Value::Object(map) => {
            let mut changed = map.values_mut().map(replace_nul).sum();
            if map.keys().any(|k| k.contains('\0')) {
                changed += rename_keys(map);
            }
            changed
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Replaces every NUL in `s` with [`NUL_REPLACEMENT`]; true when it changed something.
/// For text from outside that reaches a `text` column on the worker side: a generated
/// reply, a provider's answer, an error message quoting either.
pub fn replace_nul_in(s: &mut String) -> bool {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
        true
    } else {
        false
    }
}

/// Rebuilds `map` with its NUL-bearing keys renamed (see [`replace_nul`]).
fn rename_keys(map: &mut Map<String, Value>) -> usize {
    let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
    // Keys without a NUL are taken first, so they keep their names whatever the order.
    let mut taken: std::collections::HashSet<String> = entries
        .iter()
        .filter(|(k, _)| !k.contains('\0'))
        .map(|(k, _)| k.clone())
        .collect();
    let mut renamed = 0;
    for (mut key, value) in entries {
        if replace_nul_in(&mut key) {
            renamed += 1;
            while taken.contains(&key) {
                key.push(NUL_REPLACEMENT);
            }
            taken.insert(key.clone());
        }
        map.insert(key, value);
    }
    renamed
}

/// True when `json` (JSON text, as serde_json writes it) holds a `\u0000` escape, which
/// `jsonb` refuses. An escaped backslash followed by the text `u0000` (`\\u0000`) is not
/// one: escapes are read pairwise, as a JSON parser does.
pub fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // Not valid in JSON text, but `jsonb` would refuse it all the same.
            0 => return true,
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                // Skip the escaped character, so `\\` never starts another escape.
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
}

/// True when `t` fits `timestamptz` (4714-11-24 BC to 294276 AD).
pub fn timestamp_storable(t: &DateTime<Utc>) -> bool {
    (PG_MIN_UNIX_SECS..PG_END_UNIX_SECS).contains(&t.timestamp())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_in_strings_and_keys_becomes_the_replacement_character() {
        let mut v: Value = serde_json::from_str(
            r#"{"te\u0000xt": "a\u0000b\u0000", "list": ["\u0000", 1, null, {"k": "\u0000"}],
                "plain": "\\u0000", "n": 1}"#,
        )
        .unwrap();
        assert_eq!(replace_nul(&mut v), 4);
        assert_eq!(
            v,
            json!({"te\u{FFFD}xt": "a\u{FFFD}b\u{FFFD}", "list": ["\u{FFFD}", 1, null, {"k": "\u{FFFD}"}],
                   "plain": "\\u0000", "n": 1})
        );
        assert!(!has_nul_escape(&v.to_string()));
        // Nothing to replace: nothing changes.
        let before = v.clone();
        assert_eq!(replace_nul(&mut v), 0);
        assert_eq!(v, before);
    }

    #[test]
    fn a_renamed_key_never_overwrites_another() {
        let mut v: Value =
            serde_json::from_str(r#"{"a\u0000": 1, "a\ufffd": 2, "a\u0000\u0000": 3}"#).unwrap();
        replace_nul(&mut v);
        let map = v.as_object().unwrap();
        assert_eq!(map.len(), 3, "{v}");
        assert_eq!(map["a\u{FFFD}"], 2, "a key without NUL keeps its name");
        let mut rest: Vec<i64> = map
            .iter()
            .filter(|(k, _)| k.as_str() != "a\u{FFFD}")
            .map(|(_, v)| v.as_i64().unwrap())
            .collect();
        rest.sort_unstable();
        assert_eq!(rest, [1, 3]);
        assert!(map.keys().all(|k| !k.contains('\0')));
    }

    #[test]
    fn nul_escapes_are_told_from_escaped_backslashes() {
        for (text, nul) in [
            (r#""\u0000""#, true),
            (r#""a\u0000b""#, true),
            (r#""\\u0000""#, false),
            (r#""\\\u0000""#, true),
            (r#""\\\\u0000""#, false),
            (r#""\u00000""#, true),
            (r#""\u0001""#, false),
            (r#""\"u0000""#, false),
            (r#"{"\u0000": 1}"#, true),
            ("\"a\0b\"", true),
            (r#""u0000""#, false),
            (r#""\"#, false),
        ] {
            assert_eq!(has_nul_escape(text), nul, "{text}");
        }
        // serde_json's own output for a NUL, and for the six characters `\u0000`.
        assert!(has_nul_escape(&json!("\0").to_string()));
        assert!(!has_nul_escape(&json!("\\u0000").to_string()));
    }

    /// Whatever the body, no event the parsers return holds a value PostgreSQL refuses.
    #[test]
    fn parsed_events_are_storable() {
        use crate::intake::{parse_instagram, parse_whatsapp};
        let compact = json!({
            "object": "instagram", "user_id": "user\u{0}1",
            "entry": [{"changes": [{"value": {"item": "comment", "comment_id": "c\u{0}1",
                "post_id": "p\u{0}", "sender_id": "s\u{0}", "sender_name": "Ana\u{0}",
                "message": "hi\u{0}", "k\u{0}": "\u{0}",
                // About 29,700 BC as epoch milliseconds: chrono reads it, PostgreSQL would not.
                "created_time": -1e15}}]}]
        });
        let bridge = json!({"event_type": "message.received\u{0}", "timestamp": "-1000000000000000",
            "data": {"from_number": "+1\u{0}", "to_number": "+2", "message_id": "m\u{0}",
                     "text": "\u{0}"}});
        let events = [
            parse_instagram(compact.to_string().as_bytes()).unwrap(),
            parse_whatsapp(bridge.to_string().as_bytes()).unwrap(),
        ];
        for e in events.iter().flatten() {
            let all = serde_json::to_string(e).unwrap();
            assert!(!has_nul_escape(&all), "{all}");
            assert!(all.contains('\u{FFFD}'), "{all}");
            assert_eq!(e.occurred_at, None, "{all}");
        }
        let comment = &events[0][0];
        assert_eq!(comment.dedup_key, "ig:comment:c\u{FFFD}1");
        assert_eq!(comment.text.as_deref(), Some("hi\u{FFFD}"));
        assert_eq!(comment.sender_name.as_deref(), Some("Ana\u{FFFD}"));
        assert_eq!(events[1][0].event_type, "unknown:message.received\u{FFFD}");
    }

    #[test]
    fn timestamptz_range() {
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        assert!(timestamp_storable(&at(0)));
        assert!(timestamp_storable(&at(PG_MIN_UNIX_SECS)));
        assert!(!timestamp_storable(&at(PG_MIN_UNIX_SECS - 1)));
        assert_eq!(
            at(PG_MIN_UNIX_SECS).to_rfc3339(),
            "-4713-11-24T00:00:00+00:00"
        );
        assert!(timestamp_storable(&DateTime::<Utc>::MAX_UTC));
    }
}
