//! Any bytes into the WhatsApp (Bridge and Cloud API) parser: an error or events, never a panic, and
//! every event's payload is an object with a bounded dedup key; nothing in an event is
//! a value PostgreSQL would refuse (a NUL anywhere, a timestamp out of range): one such
//! value would fail its whole ingest batch.
#![no_main]

use hookq_core::intake::storable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = hookq_core::intake::parse_whatsapp(data) {
        assert!(!events.is_empty());
        assert!(events.len() <= hookq_core::intake::MAX_EVENTS_PER_BODY);
        for e in events {
            assert!(e.payload.is_object());
            assert!(!e.dedup_key.is_empty() && e.dedup_key.len() <= 600);
            // Every string of the event (ids, names, text, payload keys and values).
            let all = serde_json::to_string(&e).unwrap();
            assert!(!storable::has_nul_escape(&all), "{all}");
            assert!(
                e.occurred_at
                    .is_none_or(|t| storable::timestamp_storable(&t))
            );
        }
    }
});
