//! Strong ETags over the response body, and `If-None-Match` matching.

use taskq_core::submit::fnv1a64;

pub fn of(body: &[u8]) -> String {
    format!("\"{:016x}\"", fnv1a64(body))
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 13.1.2).
pub fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matching() {
        let e = super::of(b"x");
        assert!(super::matches(&e, &e));
        assert!(super::matches(&format!("\"nope\", W/{e}"), &e));
        assert!(super::matches("*", &e));
        assert!(!super::matches("\"nope\"", &e));
    }
}
