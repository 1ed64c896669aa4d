//! Secrets read at init from Secrets Manager, so their values never sit in a function's
//! configuration (anyone with `lambda:GetFunctionConfiguration` can read environment variables).

use aws_sdk_secretsmanager::error::DisplayErrorContext;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading secret {id} failed: {detail}")]
    Read { id: String, detail: String },
    #[error("secret {id} has no string value")]
    NotAString { id: String },
    #[error("secret {id} is shorter than {MIN_SIGNING_SECRET_LEN} characters")]
    TooShort { id: String },
}

/// The `SecretString` of the secret `id` (an ARN or a name).
pub async fn secret_string(client: &aws_sdk_secretsmanager::Client, id: &str) -> Result<String, SecretError> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| SecretError::Read {
            id: id.to_owned(),
            detail: DisplayErrorContext(&e).to_string(),
        })?;
    out.secret_string
        .ok_or_else(|| SecretError::NotAString { id: id.to_owned() })
}

/// A shorter signing secret is a configuration mistake (the template generates 64 characters).
pub const MIN_SIGNING_SECRET_LEN: usize = 32;

/// The secret completion webhooks and `http` task targets are signed with: the secret
/// `secret_id` names, at least [`MIN_SIGNING_SECRET_LEN`] characters.
pub async fn signing_secret(sdk: &aws_config::SdkConfig, secret_id: &str) -> Result<String, SecretError> {
    let secret = secret_string(&aws_sdk_secretsmanager::Client::new(sdk), secret_id).await?;
    if secret.len() < MIN_SIGNING_SECRET_LEN {
        return Err(SecretError::TooShort {
            id: secret_id.to_owned(),
        });
    }
    Ok(secret)
}
