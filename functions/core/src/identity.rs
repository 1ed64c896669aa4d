//! Which strings may be a user id. A user id is used raw everywhere downstream: the DynamoDB
//! partition key (`U#<id>`), the SQS `MessageGroupId` of every task message, Redis keys, log
//! fields. SQS is the strictest of them: a `MessageGroupId` is 1-128 characters of ASCII
//! alphanumerics and punctuation, nothing else (no spaces, no control characters, no non-ASCII).
//! The edge (`taskq-api`'s authentication) turns a token's `sub` into a user id with
//! [`user_id_from_sub`]'s rule; the embedded queue refuses what SQS refuses
//! ([`check_message_group_id`]), so a rule broken anywhere fails in the contract suite too.

/// The longest `MessageGroupId` SQS accepts.
pub const MAX_MESSAGE_GROUP_ID_CHARS: usize = 128;

/// Derived user ids start with this; a `sub` that starts with it is derived too, so a derived
/// id can never equal a `sub` used as is.
pub const DERIVED_PREFIX: char = '~';

/// SQS's rule for `MessageGroupId`: 1-128 characters, each `a-z`, `A-Z`, `0-9` or one of
/// ``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~``. The error is what SQS's
/// `InvalidParameterValue` would say.
pub fn check_message_group_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MESSAGE_GROUP_ID_CHARS {
        return Err(format!(
            "MessageGroupId must be 1-{MAX_MESSAGE_GROUP_ID_CHARS} characters, got {}",
            id.chars().count()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "MessageGroupId may hold only alphanumerics and punctuation, not {c:?}"
        ));
    }
    Ok(())
}

/// Whether `sub` can be used as the user id as it is.
pub fn usable_as_is(sub: &str) -> bool {
    check_message_group_id(sub).is_ok() && !sub.starts_with(DERIVED_PREFIX)
}

/// The user id for a token's `sub`: the `sub` itself when it is usable everywhere, else
/// `~` followed by the 64 hex digits of `digest(sub)` (a SHA-256, given by the caller so this
/// crate needs no crypto library). The same `sub` always gives the same id; two different subs
/// never give the same id (short of a SHA-256 collision). `None` for an empty `sub`.
pub fn user_id_from_sub(sub: &str, digest: impl FnOnce(&[u8]) -> [u8; 32]) -> Option<String> {
    if sub.is_empty() {
        return None;
    }
    if usable_as_is(sub) {
        return Some(sub.to_owned());
    }
    let mut id = String::with_capacity(65);
    id.push(DERIVED_PREFIX);
    for b in digest(sub.as_bytes()) {
        id.push_str(&format!("{b:02x}"));
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a hash: enough to tell the derived path was taken and what it was given.
    fn fake_digest(bytes: &[u8]) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in bytes.iter().enumerate() {
            d[i % 32] ^= b.wrapping_add(i as u8);
        }
        d
    }

    #[test]
    fn message_group_ids_follow_the_sqs_rule() {
        for ok in [
            "a",
            "alice",
            "a-b_c.d",
            "U#1/2",
            "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
            &"x".repeat(128),
        ] {
            assert!(check_message_group_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(129), "a b", "a\tb", "é", "a\nb", "\u{7f}", "日本"] {
            assert!(check_message_group_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usable_subs_are_kept_and_others_derived() {
        assert_eq!(user_id_from_sub("alice", fake_digest).unwrap(), "alice");
        let uuid = "3f6b1c9e-8a5d-4e2f-9b7a-1c2d3e4f5a6b";
        assert_eq!(user_id_from_sub(uuid, fake_digest).unwrap(), uuid);
        assert_eq!(user_id_from_sub("a#b/c", fake_digest).unwrap(), "a#b/c");
        for sub in ["with space", "héllo", &"x".repeat(129), "~tilde", "tab\there"] {
            let id = user_id_from_sub(sub, fake_digest).unwrap();
            assert!(id.starts_with('~') && id.len() == 65, "{sub:?} -> {id}");
            assert!(check_message_group_id(&id).is_ok(), "{id}");
            // Deterministic.
            assert_eq!(user_id_from_sub(sub, fake_digest).unwrap(), id);
        }
        assert!(user_id_from_sub("", fake_digest).is_none());
    }
}
