//! Signature checks on hostile headers and bodies: never a panic, never a false accept,
//! and the real signature of the same body always verifies.
#![no_main]

use hookq_core::intake::signature::{hmac_hex, standard_sign, standard_verify, verify_meta};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fuzz_target!(|data: &[u8]| {
    // Split the input: header | body.
    let cut = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (header, body) = data.split_at(cut);
    let header = String::from_utf8_lossy(header);
    let good = format!("sha256={}", hmac_hex(SECRET.as_bytes(), body));
    assert!(verify_meta(SECRET, body, &good));
    if verify_meta(SECRET, body, &header) {
        assert!(
            header.trim().eq_ignore_ascii_case(&good),
            "accepted a wrong signature: {header}"
        );
    }
    let ts = body.len() as i64;
    let sig = standard_sign(WHSEC, "msg_1", ts, body).unwrap();
    assert!(standard_verify(WHSEC, "msg_1", ts, body, &sig));
    assert!(!standard_verify(WHSEC, "msg_2", ts, body, &sig));
    let _ = standard_verify(WHSEC, "msg_1", ts, body, &header);
    let _ = standard_verify(&header, "msg_1", ts, body, &sig);
});
