//! Any bytes into the WhatsApp (Bridge and Cloud API) parser: an error or events, never a panic, and
//! every event's payload is an object with a bounded dedup key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = hookq_core::events::parse_whatsapp(data) {
        assert!(!events.is_empty());
        assert!(events.len() <= hookq_core::events::MAX_EVENTS_PER_BODY);
        for e in events {
            assert!(e.payload.is_object());
            assert!(!e.dedup_key.is_empty() && e.dedup_key.len() <= 600);
        }
    }
});
