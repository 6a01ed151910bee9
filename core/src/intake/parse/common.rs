//! Helpers shared by both routes: lenient field access (ids may be numbers or strings,
//! timestamps seconds, milliseconds or text), dedup keys, per-event payload slices and
//! the per-body event budget.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::intake::{
    AccountRef, Handling, MAX_EVENTS_PER_BODY, ParseError, ParsedEvent, Source, storable,
};

/// Envelope bytes one body may copy into its events' payloads. Every payload repeats its
/// envelope (top-level, entry and value fields), so 1,000 items sharing one entry with
/// a multi-megabyte field would otherwise become gigabytes.
const MAX_COPIED_BYTES: usize = 32 << 20;

/// Natural keys longer than this fall back to the payload hash: ids come from the body
/// and the unique index on `dedup_key` cannot hold arbitrarily long values.
const MAX_KEY_LEN: usize = 512;

/// Names taken from the body (unknown fields and event types) are cut to this many
/// characters before they reach `event_type` or an error detail.
const MAX_NAME_CHARS: usize = 64;

pub(super) type Object = Map<String, Value>;

pub(super) fn shape(detail: impl Into<String>) -> ParseError {
    ParseError::UnknownShape(detail.into())
}

/// Parses the body into its top-level object. serde_json's recursion limit (128) turns
/// deep nesting into an error instead of a stack overflow, and it rejects invalid UTF-8.
///
/// Every NUL in a string or key is replaced by U+FFFD here, before anything reads the
/// value, so no field of any event can carry one into PostgreSQL (which refuses it and
/// would fail the whole ingest batch); see [`storable`](crate::intake::storable). The
/// signature was checked on the raw bytes before this runs.
pub(super) fn decode(body: &[u8]) -> Result<Object, ParseError> {
    let mut root: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    // Only worth a walk when the text holds an escape at all: a NUL can only arrive as
    // `\u0000` (JSON forbids a raw control character in a string).
    if body.contains(&b'\\') {
        storable::replace_nul(&mut root);
    }
    match root {
        Value::Object(root) => Ok(root),
        other => Err(shape(format!(
            "expected a JSON object, got {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `v` as an object, or an error naming where it is (`at`).
pub(super) fn object<'a>(v: &'a Value, at: &dyn Fn() -> String) -> Result<&'a Object, ParseError> {
    v.as_object()
        .ok_or_else(|| shape(format!("{}: expected an object, got {}", at(), kind(v))))
}

/// `map[key]` as an array; absent means no items, anything else is malformed.
pub(super) fn array<'a>(
    map: &'a Object,
    key: &str,
    at: &dyn Fn() -> String,
) -> Result<&'a [Value], ParseError> {
    match map.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(shape(format!(
            "{}.{key}: expected an array, got {}",
            at(),
            kind(other)
        ))),
    }
}

/// The `entry` array of a Meta envelope; an empty one holds no event.
pub(super) fn entries(root: &Object) -> Result<&[Value], ParseError> {
    match root.get("entry") {
        Some(Value::Array(entries)) if !entries.is_empty() => Ok(entries),
        Some(Value::Array(_)) => Err(shape("entry is empty: no event in the body")),
        Some(other) => Err(shape(format!(
            "entry: expected an array, got {}",
            kind(other)
        ))),
        None => Err(shape(
            "missing entry: expected {\"object\": ..., \"entry\": [...]}",
        )),
    }
}

/// A non-empty string, as-is.
pub(super) fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id, which Meta sends as a string or a number: always a string, never empty.
pub(super) fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Message or comment text; an empty string is kept (the use case skips it as `empty`).
pub(super) fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// The first `MAX_NAME_CHARS` characters of a name taken from the body.
pub(super) fn clip(name: &str) -> &str {
    name.char_indices()
        .nth(MAX_NAME_CHARS)
        .map_or(name, |(end, _)| &name[..end])
}

/// `unknown:<name>`, the event type for fields and kinds this parser does not know.
pub(super) fn unknown(name: &str) -> String {
    format!("unknown:{}", clip(name))
}

/// Epoch seconds or milliseconds (number or numeric string), RFC 3339, or Graph's
/// `2024-01-15T10:30:00+0000`. Anything unreadable is simply no timestamp, and so is one
/// `timestamptz` cannot hold (before 4714 BC), which PostgreSQL would refuse.
pub(super) fn timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    any_timestamp(v).filter(storable::timestamp_storable)
}

fn any_timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    match v? {
        Value::Number(n) => epoch(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<f64>().ok().and_then(epoch).or_else(|| {
                DateTime::parse_from_rfc3339(s)
                    .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z"))
                    .ok()
                    .map(|t| t.to_utc())
            })
        }
        _ => None,
    }
}

/// Meta mixes seconds (`entry.time` of changes) and milliseconds (messaging); 10^11
/// seconds is past the year 5000, so anything larger must be milliseconds.
fn epoch(x: f64) -> Option<DateTime<Utc>> {
    let ms = if x.abs() > 1e11 { x } else { x * 1000.0 };
    if !ms.is_finite() {
        return None;
    }
    // `as` saturates, and chrono answers None out of range.
    DateTime::from_timestamp_millis(ms.round() as i64)
}

/// `prefix:part:part…` from the event's natural ids; when one is missing (or the key
/// would be too long), `prefix:sha256:<hex>` over the payload slice, so re-delivering the
/// same bytes still dedups.
pub(super) fn dedup_key(prefix: &str, parts: &[Option<&str>], payload: &Value) -> String {
    if let Some(parts) = parts.iter().copied().collect::<Option<Vec<_>>>()
        && !parts.is_empty()
    {
        let key = format!("{prefix}:{}", parts.join(":"));
        if key.len() <= MAX_KEY_LEN {
            return key;
        }
    }
    hashed_key(prefix, payload)
}

/// `prefix:sha256:<hex>` of the payload's canonical JSON.
pub(super) fn hashed_key(prefix: &str, payload: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(payload, &mut canonical);
    format!("{prefix}:sha256:{}", hex::encode(Sha256::digest(canonical)))
}

/// Compact JSON with object keys sorted, so the hash does not depend on map order
/// (another crate in the build may switch on serde_json's `preserve_order`).
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut fields: Vec<_> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

pub(super) fn account(id: Option<String>) -> AccountRef {
    id.map_or(AccountRef::None, |account_id| AccountRef::Account {
        account_id,
    })
}

/// An event with the fields every kind sets; callers fill in the rest with `..`.
pub(super) fn event(
    dedup_key: String,
    source: Source,
    event_type: impl Into<String>,
    handling: Handling,
    account: AccountRef,
    payload: Value,
) -> ParsedEvent {
    ParsedEvent {
        dedup_key,
        source,
        platform: source,
        event_type: event_type.into(),
        handling,
        account,
        persona_external_id: None,
        post_external_id: None,
        item_id: None,
        sender_id: None,
        sender_name: None,
        text: None,
        is_own: false,
        occurred_at: None,
        payload,
    }
}

/// An envelope object without its item array(s). Each event's payload is this plus
/// exactly one item, so a stored payload shows the event in the shape it arrived in.
pub(super) struct Shared {
    fields: Object,
    /// Serialized size, charged to the body's copy budget once per event.
    pub(super) len: usize,
}

impl Shared {
    pub(super) fn new(map: &Object, items: &[&str]) -> Self {
        let fields: Object = map
            .iter()
            .filter(|(k, _)| !items.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let len = fields
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        Shared { fields, len }
    }

    /// These fields plus `key: value`.
    pub(super) fn with(&self, key: &str, value: Value) -> Value {
        let mut fields = self.fields.clone();
        fields.insert(key.to_owned(), value);
        Value::Object(fields)
    }

    /// These fields plus `key: [item]`.
    pub(super) fn with_one(&self, key: &str, item: Value) -> Value {
        self.with(key, Value::Array(vec![item]))
    }
}

/// Collects one body's events and refuses the body before it creates unbounded work.
#[derive(Default)]
pub(super) struct Events {
    list: Vec<ParsedEvent>,
    copied: usize,
}

impl Events {
    /// Adds the event `build` makes, after checking the event count and that its payload's
    /// `shared` envelope bytes fit the budget; `at` names the item for the error detail.
    pub(super) fn add(
        &mut self,
        shared: usize,
        at: &dyn Fn() -> String,
        build: impl FnOnce() -> ParsedEvent,
    ) -> Result<(), ParseError> {
        if self.list.len() >= MAX_EVENTS_PER_BODY {
            return Err(ParseError::TooManyEvents(format!(
                "{}: more than {MAX_EVENTS_PER_BODY} events in one body",
                at()
            )));
        }
        self.copied = self.copied.saturating_add(shared);
        if self.copied > MAX_COPIED_BYTES {
            return Err(ParseError::TooManyEvents(format!(
                "{}: the envelope fields repeated in each event's payload exceed {} MiB",
                at(),
                MAX_COPIED_BYTES >> 20
            )));
        }
        self.list.push(build());
        Ok(())
    }

    /// The events, or `UnknownShape(empty)` when the known envelope held none.
    pub(super) fn finish(self, empty: &str) -> Result<Vec<ParsedEvent>, ParseError> {
        if self.list.is_empty() {
            Err(shape(empty))
        } else {
            Ok(self.list)
        }
    }
}
