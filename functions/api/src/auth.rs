//! Who is calling. Behind API Gateway the JWT authorizer has verified the token and its claims
//! are in the request context; elsewhere (local server, tests, a deployment without the
//! authorizer) the bearer token is verified here: HS256 with `TASKQ_JWT_SECRET`, `exp` required,
//! issuer and audience checked when configured. The user id is the `sub` claim, never the body.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lambda_http::request::RequestContext;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// Minting lives in `taskq_core::token` so the CLI can mint without the API's dependencies.
pub use taskq_core::token::{mint, Claims};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub roles: Vec<String>,
}

pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    /// `secret`: HS256 key; `None` accepts only API Gateway authorizer claims.
    pub fn new(secret: Option<&str>, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(issuer.map(|_| "iss"));
        required.extend(audience.map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.leeway = 30;
        match issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        Self {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// From `TASKQ_JWT_SECRET`, `TASKQ_JWT_ISSUER`, `TASKQ_JWT_AUDIENCE`.
    pub fn from_env() -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Self::new(
            var("TASKQ_JWT_SECRET").as_deref(),
            var("TASKQ_JWT_ISSUER").as_deref(),
            var("TASKQ_JWT_AUDIENCE").as_deref(),
        )
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("this deployment verifies tokens at API Gateway only".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        let mut roles = data.claims.roles.as_ref().map(roles_of).unwrap_or_default();
        roles.extend(data.claims.groups.as_ref().map(roles_of).unwrap_or_default());
        caller(data.claims.sub, roles)
    }

    /// Claims that API Gateway's JWT authorizer put in the request context (all strings).
    pub fn from_authorizer(claims: &HashMap<String, String>) -> Result<Caller, ApiError> {
        let sub = claims
            .get("sub")
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("the token has no sub claim".into()))?;
        let mut roles = Vec::new();
        for name in ["roles", "cognito:groups"] {
            if let Some(v) = claims.get(name) {
                roles.extend(roles_of(&Value::String(v.clone())));
            }
        }
        caller(sub, roles)
    }
}

/// The longest `sub` taken at all (longer ones are refused, not hashed: no identity provider
/// issues them, and a bound keeps the hashing cheap).
const MAX_SUB_BYTES: usize = 1024;

/// The one place a `sub` becomes a user id (see [`taskq_core::identity`]): kept as it is when
/// SQS, DynamoDB, Redis and the logs can all take it raw, else replaced by `~` and its SHA-256.
fn caller(sub: String, mut roles: Vec<String>) -> Result<Caller, ApiError> {
    if sub.len() > MAX_SUB_BYTES {
        return Err(ApiError::Unauthorized(format!(
            "the sub claim is longer than {MAX_SUB_BYTES} bytes"
        )));
    }
    let user_id = taskq_core::identity::user_id_from_sub(&sub, sha256)
        .ok_or_else(|| ApiError::Unauthorized("the sub claim is empty".into()))?;
    roles.sort();
    roles.dedup();
    Ok(Caller { user_id, roles })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Roles from a claim: a JSON array, or the string form API Gateway's authorizer gives array
/// claims (`"[admin ops]"`), or a JSON array in a string, or one role.
pub fn roles_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(s) {
                return roles_of(&Value::Array(items));
            }
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect()
        }
        _ => Vec::new(),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // The rate-limit middleware authenticated the request already.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if let Some(RequestContext::ApiGatewayV2(ctx)) = parts.extensions.get::<RequestContext>() {
            if let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()) {
                return Authenticator::from_authorizer(&jwt.claims);
            }
        }
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be Bearer <token>".into()))?;
        state.auth.verify(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_in_every_shape_a_claim_arrives_in() {
        assert_eq!(roles_of(&json!(["admin", "ops"])), ["admin", "ops"]);
        assert_eq!(roles_of(&json!("[admin ops]")), ["admin", "ops"]);
        assert_eq!(roles_of(&json!("[\"admin\",\"ops\"]")), ["admin", "ops"]);
        assert_eq!(roles_of(&json!("admin")), ["admin"]);
        assert_eq!(roles_of(&json!("[]")), Vec::<String>::new());
        assert_eq!(roles_of(&json!(7)), Vec::<String>::new());
    }

    #[test]
    fn minted_tokens_verify_and_tampered_ones_do_not() {
        let auth = Authenticator::new(Some("s3cret"), None, None);
        let t = mint("s3cret", "alice", &["admin".into()], 60).unwrap();
        assert_eq!(
            auth.verify(&t).unwrap(),
            Caller {
                user_id: "alice".into(),
                roles: vec!["admin".into()]
            }
        );
        assert!(auth.verify(&mint("other", "alice", &[], 60).unwrap()).is_err());
        assert!(auth.verify(&format!("{t}x")).is_err());
    }

    #[test]
    fn subs_that_sqs_would_refuse_become_derived_ids() {
        let auth = Authenticator::new(Some("s3cret"), None, None);
        let id = |sub: &str| auth.verify(&mint("s3cret", sub, &[], 60).unwrap()).map(|c| c.user_id);
        assert_eq!(id("a#b/c").unwrap(), "a#b/c");
        let long = "x".repeat(129);
        for sub in [long.as_str(), "with space", "héllo", "~x"] {
            let derived = id(sub).unwrap();
            assert!(derived.starts_with('~') && derived.len() == 65, "{sub}: {derived}");
            assert!(taskq_core::identity::check_message_group_id(&derived).is_ok());
            assert_eq!(id(sub).unwrap(), derived, "deterministic");
        }
        assert_ne!(id("with space").unwrap(), id("with  space").unwrap());
        // Known answer: SHA-256("with space").
        assert_eq!(
            id("with space").unwrap(),
            "~b8b8f25a5fc711caea1cfebfe02359e3ce2b9a8f9ce02d18fdcb1ba47ff095f1"
        );
        assert!(matches!(id(""), Err(ApiError::Unauthorized(_))));
        assert!(matches!(id(&"y".repeat(1025)), Err(ApiError::Unauthorized(_))));
        // API Gateway's claims go through the same rule.
        let claims = HashMap::from([("sub".to_owned(), "with space".to_owned())]);
        assert_eq!(
            Authenticator::from_authorizer(&claims).unwrap().user_id,
            id("with space").unwrap()
        );
    }
}
