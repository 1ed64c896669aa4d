//! The webhook signing secret is read from Secrets Manager at init (moto over the wire).

use taskq_aws::secrets::{secret_string, SecretError};

#[tokio::test]
async fn a_secret_is_read_by_arn_and_a_missing_one_is_an_error_naming_it() {
    let Some(endpoint) = taskq_aws::testing::endpoint("secrets") else {
        return;
    };
    let sdk = taskq_aws::testing::sdk_config(&endpoint).await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = taskq_aws::testing::unique("webhook-secret");
    let created = client
        .create_secret()
        .name(&name)
        .secret_string("s".repeat(64))
        .send()
        .await
        .unwrap();
    let arn = created.arn.unwrap();
    assert_eq!(secret_string(&client, &arn).await.unwrap(), "s".repeat(64));
    assert_eq!(secret_string(&client, &name).await.unwrap(), "s".repeat(64));

    let missing = format!("{name}-missing");
    match secret_string(&client, &missing).await {
        Err(SecretError::Read { id, detail }) => {
            assert_eq!(id, missing);
            assert!(detail.contains("ResourceNotFound"), "{detail}");
        }
        other => panic!("expected a read error, got {other:?}"),
    }

    // A binary secret has no string value.
    let binary = taskq_aws::testing::unique("binary-secret");
    client
        .create_secret()
        .name(&binary)
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(vec![1, 2, 3]))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        secret_string(&client, &binary).await,
        Err(SecretError::NotAString { .. })
    ));
}
