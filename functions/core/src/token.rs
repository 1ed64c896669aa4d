//! HS256 bearer tokens as the service verifies them outside API Gateway (`TASKQ_JWT_SECRET`):
//! the claims shape and minting, shared by the API (which verifies), `taskq-local token` and the
//! `taskq token` CLI command (which mint). Behind the `token` feature so only the crates that
//! handle tokens build the JWT library.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The secret `taskq-local` verifies with when `TASKQ_JWT_SECRET` is unset, so a token minted
/// on this machine without configuration is accepted by a local server without configuration.
pub const DEV_SECRET: &str = "taskq-local-dev-secret";

/// The configured secret (`TASKQ_JWT_SECRET`'s value, read by the caller's `main`), or
/// [`DEV_SECRET`] when it is unset or empty.
pub fn secret_or_dev(configured: Option<String>) -> String {
    configured
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEV_SECRET.to_owned())
}

/// Roles from a command-line list: `admin,ops` (empty items ignored).
pub fn roles_from_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Value>,
    #[serde(default, rename = "cognito:groups", skip_serializing_if = "Option::is_none")]
    pub groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Mints an HS256 token for `sub` with `roles`, valid for `ttl_seconds`.
pub fn mint(
    secret: &str,
    sub: &str,
    roles: &[String],
    ttl_seconds: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + ttl_seconds;
    let claims = Claims {
        sub: sub.to_owned(),
        exp,
        roles: Some(Value::from(roles.to_vec())),
        groups: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_secret_means_the_dev_secret() {
        assert_eq!(secret_or_dev(None), DEV_SECRET);
        assert_eq!(secret_or_dev(Some(String::new())), DEV_SECRET);
        assert_eq!(secret_or_dev(Some("s".into())), "s");
    }

    #[test]
    fn role_lists_drop_empty_items() {
        assert_eq!(roles_from_list("admin, ops,,"), ["admin", "ops"]);
        assert!(roles_from_list("").is_empty());
    }
}
