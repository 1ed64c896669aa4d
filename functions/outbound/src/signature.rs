//! Webhook signatures. Every delivery carries
//!
//! ```text
//! Taskq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes (before any
//! JSON parsing), compares in constant time, and refuses timestamps outside its replay window
//! ([`DEFAULT_TOLERANCE`], 5 minutes, either way). Each attempt is signed afresh, so a late retry
//! still verifies. Several `v1=` entries may appear (secret rotation: one per active secret);
//! one match is enough. Unknown keys are ignored, so new schemes can be added alongside `v1`.

use std::time::Duration;

use aws_lc_rs::hmac;
use thiserror::Error;

pub const SIGNATURE_HEADER: &str = "Taskq-Signature";
pub const DELIVERY_HEADER: &str = "Taskq-Delivery";
pub const EVENT_HEADER: &str = "Taskq-Event";

/// The replay window receivers should use: a signature older (or newer) than this is refused.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature's timestamp is {age_seconds} s from now, outside the replay window")]
    OutsideWindow { age_seconds: i64 },
    #[error("no signature matches the body")]
    Mismatch,
}

fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

fn signed_text(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut text = format!("{timestamp}.").into_bytes();
    text.extend_from_slice(body);
    text
}

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex(hmac::sign(&key(secret), &signed_text(timestamp, body)).as_ref())
}

/// The `Taskq-Signature` header value for `body` sent at `timestamp` (unix seconds).
pub fn header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Checks a `Taskq-Signature` header against the raw body, at `now` (unix seconds).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance: Duration) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("expected key=value pairs"))?;
        match k {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t="));
                }
                timestamp = Some(
                    v.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not a number"))?,
                );
            }
            "v1" => candidates.push(unhex(v).ok_or(SignatureError::Malformed("v1 is not hex"))?),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    let age = now.saturating_sub(t);
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::OutsideWindow { age_seconds: age });
    }
    let key = key(secret);
    let text = signed_text(t, body);
    // hmac::verify compares in constant time.
    if candidates.iter().any(|c| hmac::verify(&key, &text, c).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test-0123456789abcdef0123456789";

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac::sign(&key(b"Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            hex(mac.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // And the signed text is exactly "<t>.<body>".
        assert_eq!(sign(b"Jefe", 1, b"x"), hex(hmac::sign(&key(b"Jefe"), b"1.x").as_ref()));
    }

    #[test]
    fn a_fresh_signature_verifies_and_anything_else_is_refused() {
        let body = br#"{"id":"01J","status":"succeeded"}"#;
        let now = 1_800_000_000;
        let h = header(SECRET, now, body);
        assert_eq!(verify(SECRET, &h, body, now + 10, DEFAULT_TOLERANCE), Ok(()));
        // Another body, another secret: mismatch.
        assert_eq!(
            verify(SECRET, &h, br#"{"id":"01J","status":"failed"}"#, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret", &h, body, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        // A replay after the window, or a timestamp from the future.
        assert_eq!(
            verify(SECRET, &h, body, now + 301, DEFAULT_TOLERANCE),
            Err(SignatureError::OutsideWindow { age_seconds: 301 })
        );
        assert!(matches!(
            verify(SECRET, &h, body, now - 301, DEFAULT_TOLERANCE),
            Err(SignatureError::OutsideWindow { .. })
        ));
        // Moving the timestamp forward breaks the signature (it is signed too).
        let moved = h.replacen(&format!("t={now}"), &format!("t={}", now + 200), 1);
        assert_eq!(
            verify(SECRET, &moved, body, now + 200, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rotation_and_malformed_headers() {
        let body = b"{}";
        let good = sign(SECRET, 5, body);
        let rotated = format!("t=5,v1={},v1={good},v0=ignored", "ab".repeat(32));
        assert_eq!(verify(SECRET, &rotated, body, 5, DEFAULT_TOLERANCE), Ok(()));
        for bad in [
            "",
            "t=5",
            &format!("v1={good}"),
            "t=x,v1=00",
            "t=5,v1=zz",
            "t=5,t=5,v1=00",
            "garbage",
        ] {
            assert!(
                matches!(
                    verify(SECRET, bad, body, 5, DEFAULT_TOLERANCE),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
