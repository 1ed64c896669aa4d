//! Completion webhooks, the part every crate shares: which `callback_url`s a task may carry, and
//! which network addresses a delivery may reach. The delivery itself lives in `taskq-webhook`.
//!
//! A callback URL is attacker-chosen input that our own function will request (SSRF). In Lambda,
//! `127.0.0.1:9001` is the Runtime API of the very function doing the delivery, so loopback,
//! private, link-local and other non-public addresses are refused twice: here for IP literals at
//! submission, and by the guarded outbound client (`taskq-outbound`, whose resolver judges what
//! a host name resolves to when it connects: a name can point anywhere, and can change between
//! the two).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

pub const MAX_CALLBACK_URL_CHARS: usize = 2048;

/// What the submission check allows besides public `https://` URLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackRules {
    /// `http://` (and `https://`) to a loopback host (`127.0.0.0/8`, `[::1]`, `localhost`):
    /// local development and tests only (`TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP=true` for
    /// taskq-local). Never in Lambda.
    pub allow_loopback: bool,
}

/// Validates a callback URL and returns its normalised form (what is stored and requested).
/// The error is the message for a 400 that names `callback_url`.
pub fn validate_callback_url(text: &str, rules: CallbackRules) -> Result<String, String> {
    if text.chars().count() > MAX_CALLBACK_URL_CHARS {
        return Err(format!("is longer than {MAX_CALLBACK_URL_CHARS} characters"));
    }
    // The URL parser silently drops tabs and newlines; refuse them instead of guessing.
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let https = text.starts_with("https://");
    let local_http = rules.allow_loopback && text.starts_with("http://");
    if !(https || local_http) {
        return Err("must be an https:// URL".into());
    }
    let url = Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".into());
    }
    let loopback = match url.host() {
        None => return Err("must name a host".into()),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(Host::Ipv4(ip)) => classify(IpAddr::V4(ip))?,
        Some(Host::Ipv6(ip)) => classify(IpAddr::V6(ip))?,
    };
    if loopback && !rules.allow_loopback {
        return Err("must not point at a loopback host".into());
    }
    if !https && !loopback {
        return Err("must be an https:// URL (http:// is allowed for loopback hosts only)".into());
    }
    let normalised = String::from(url);
    if normalised.chars().count() > MAX_CALLBACK_URL_CHARS {
        return Err(format!(
            "is longer than {MAX_CALLBACK_URL_CHARS} characters once normalised"
        ));
    }
    Ok(normalised)
}

/// `Ok(true)` for loopback, `Ok(false)` for public addresses, an error for the rest.
fn classify(ip: IpAddr) -> Result<bool, String> {
    if is_loopback(ip) {
        Ok(true)
    } else if is_public(ip) {
        Ok(false)
    } else {
        Err("must not point at a private, link-local or reserved address".into())
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Whether a delivery may connect to `ip`: globally routable unicast only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT (shared address space).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24: IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15: benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // 192.88.99.0/24: the deprecated 6to4 relay anycast.
        || (a == 192 && b == 88 && c == 99)
        // 240.0.0.0/4: reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // 64:ff9b:1::/48: local-use NAT64 (RFC 8215), translated inside someone's network.
    if s[..3] == [0x64, 0xff9b, 1] {
        return false;
    }
    // 64:ff9b::/96 (NAT64) reaches the IPv4 address it embeds.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = s;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    // 2002::/16 (6to4) embeds an IPv4 address in its next 32 bits: judge that address.
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // fec0::/10: deprecated site-local.
        || (s[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32: documentation.
        || (s[0] == 0x2001 && s[1] == 0xdb8)
        // 2001::/32: Teredo (tunnels to an embedded, possibly private, IPv4 address).
        || (s[0] == 0x2001 && s[1] == 0)
        // 100::/64: discard-only.
        || (s[..4] == [0x100, 0, 0, 0])
        // ::/96 IPv4-compatible (deprecated) and other addresses under ::/8.
        || s[0] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: CallbackRules = CallbackRules { allow_loopback: false };
    const LOCAL: CallbackRules = CallbackRules { allow_loopback: true };

    #[test]
    fn public_https_urls_are_accepted_and_normalised() {
        assert_eq!(
            validate_callback_url("https://Hooks.Example.com/taskq?a=1", STRICT).unwrap(),
            "https://hooks.example.com/taskq?a=1"
        );
        assert_eq!(
            validate_callback_url("https://93.184.216.34:8443", STRICT).unwrap(),
            "https://93.184.216.34:8443/"
        );
        assert!(validate_callback_url("https://[2606:2800:220:1::1]/x", STRICT).is_ok());
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_CALLBACK_URL_CHARS));
        let cases: &[(&str, &str)] = &[
            ("http://example.com/", "https://"),
            ("HTTPS://example.com/", "https://"),
            ("ftp://example.com/", "https://"),
            ("example.com", "https://"),
            ("https://", "valid URL"),
            ("https://exa mple.com/", "spaces"),
            ("https://example.com/\tx", "control"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            (&long, "2048"),
            ("https://127.0.0.1/", "loopback"),
            ("https://localhost:8080/", "loopback"),
            ("https://api.localhost/", "loopback"),
            ("https://[::1]/", "loopback"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://10.1.2.3/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://169.254.169.254/latest/meta-data", "private"),
            ("https://100.64.0.1/", "private"),
            ("https://0.0.0.0/", "private"),
            ("https://[fd00::1]/", "private"),
            ("https://[fe80::1]/", "private"),
            ("https://[64:ff9b::a00:1]/", "private"),
            // Decimal and hex IPv4 spellings parse to the address they name.
            ("https://2130706433/", "loopback"),
            ("https://0x7f.1/", "loopback"),
        ];
        for (url, reason) in cases {
            let e = validate_callback_url(url, STRICT).unwrap_err();
            assert!(e.contains(reason), "{url}: {e}");
        }
    }

    #[test]
    fn loopback_http_only_when_allowed() {
        for url in ["http://127.0.0.1:9001/hook", "http://localhost/", "http://[::1]:80/"] {
            assert!(validate_callback_url(url, STRICT).is_err(), "{url}");
            assert!(validate_callback_url(url, LOCAL).is_ok(), "{url}");
        }
        // Allowing loopback does not allow plain http elsewhere, nor private ranges.
        assert!(validate_callback_url("http://example.com/", LOCAL).is_err());
        assert!(validate_callback_url("http://10.0.0.1/", LOCAL).is_err());
        assert!(validate_callback_url("https://192.168.0.1/", LOCAL).is_err());
    }

    #[test]
    fn address_classes() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "192.0.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fd00:ec2::254",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "100::1",
            "192.88.99.1",
            "192.0.2.1",
            "0.1.2.3",
            "100.127.255.255",
            "64:ff9b:1::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
