//! Secrets read at init from Secrets Manager, so their values never sit in a function's
//! configuration (anyone with `lambda:GetFunctionConfiguration` can read environment variables).

use aws_sdk_secretsmanager::error::DisplayErrorContext;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading secret {id} failed: {detail}")]
    Read { id: String, detail: String },
    #[error("secret {id} has no string value")]
    NotAString { id: String },
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
