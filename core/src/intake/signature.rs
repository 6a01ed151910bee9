//! HMAC-SHA256 signatures: verifying inbound webhooks on their raw bytes, and signing
//! outbound callbacks per Standard Webhooks.
//!
//! Verification always hashes the exact bytes received — never a re-serialisation — and
//! compares in constant time, so neither key order, escaping nor timing leaks matter.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Lowercase hex HMAC-SHA256 of `body` (what Meta and the Bridge send).
pub fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    hex::encode(mac(key, &[body]))
}

/// Checks a hex digest header value (optionally prefixed, e.g. `sha256=`) against the
/// body. Case-insensitive hex; any malformed value is simply a mismatch.
pub fn verify_hex(key: &[u8], body: &[u8], header: &str, prefix: &str) -> bool {
    let Some(hex_part) = header.trim().strip_prefix(prefix) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_part.to_ascii_lowercase()) else {
        return false;
    };
    let expected = mac(key, &[body]);
    given.len() == expected.len() && bool::from(given.ct_eq(&expected))
}

/// `X-Hub-Signature-256: sha256=<hex>` (Meta: Instagram, Facebook, WhatsApp Cloud API).
pub fn verify_meta(app_secret: &str, body: &[u8], header: &str) -> bool {
    verify_hex(app_secret.as_bytes(), body, header, "sha256=")
}

/// `X-Webhook-Signature: <hex>` (the WhatsApp Bridge).
pub fn verify_bridge(secret: &str, body: &[u8], header: &str) -> bool {
    verify_hex(secret.as_bytes(), body, header, "")
}

/// Constant-time equality for tokens (admin bearer, Meta verify token).
pub fn token_eq(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A Standard Webhooks secret (`whsec_<base64>`); the key is the decoded bytes.
#[derive(Debug)]
pub struct InvalidSecret;

fn standard_key(secret: &str) -> Result<Vec<u8>, InvalidSecret> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD.decode(b64).map_err(|_| InvalidSecret)
}

/// `webhook-signature` value for an outbound callback: `v1,<base64 HMAC of
/// "{id}.{timestamp}.{body}">`.
pub fn standard_sign(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, InvalidSecret> {
    let key = standard_key(secret)?;
    let ts = timestamp.to_string();
    let sig = mac(&key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    Ok(format!("v1,{}", STANDARD.encode(sig)))
}

/// Receiver side (used by tests and by anyone embedding hookq's callback checks):
/// accepts when any space-separated `v1,` signature matches, in constant time.
pub fn standard_verify(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let Ok(key) = standard_key(secret) else {
        return false;
    };
    let ts = timestamp.to_string();
    let expected = mac(&key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    header.split_whitespace().any(|part| {
        part.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|given| given.len() == 32 && bool::from(given.ct_eq(&expected)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn meta_vector_verifies_on_raw_bytes_only() {
        let v = fixture("meta_signature_vector.json");
        let secret = v["app_secret"].as_str().unwrap();
        let body = v["raw_body_utf8"].as_str().unwrap().as_bytes();
        let header = v["headers"]["X-Hub-Signature-256"].as_str().unwrap();
        assert_eq!(
            body.len() as u64,
            v["raw_body_length_bytes"].as_u64().unwrap()
        );
        assert!(verify_meta(secret, body, header));
        assert!(verify_meta(
            secret,
            body,
            &header.to_ascii_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_meta("wrong", body, header));
        assert!(!verify_meta(
            secret,
            body,
            header.trim_start_matches("sha256=")
        ));
        assert!(!verify_meta(secret, body, "sha256=zz"));
        for (name, case) in v["negative_cases"].as_object().unwrap() {
            if let Some(b) = case["body"].as_str() {
                assert!(
                    !verify_meta(secret, b.as_bytes(), header),
                    "{name} must not verify"
                );
            }
        }
    }

    #[test]
    fn standard_webhooks_vectors() {
        let v = fixture("standard_webhooks_vectors.json");
        let o = &v["official_vector_from_reference_library"];
        let sig = standard_sign(
            o["secret"].as_str().unwrap(),
            o["webhook-id"].as_str().unwrap(),
            o["webhook-timestamp"].as_i64().unwrap(),
            o["raw_body"].as_str().unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(sig, o["expected_webhook-signature"].as_str().unwrap());
        assert!(standard_verify(
            o["secret"].as_str().unwrap(),
            o["webhook-id"].as_str().unwrap(),
            o["webhook-timestamp"].as_i64().unwrap(),
            o["raw_body"].as_str().unwrap().as_bytes(),
            &format!("v1,AAAA {sig}"),
        ));
    }

    #[test]
    fn token_compare() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("abc", "ab"));
    }
}
