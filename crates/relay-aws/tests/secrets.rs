//! Target credentials from Secrets Manager and SSM on a local AWS API (moto over HTTP).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use relay_aws::secrets::{SecretRef, headers};
use relay_aws::testing::MotoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_come_from_secrets_manager_and_ssm_with_clear_errors() {
    let moto = MotoServer::start();
    let aws = relay_aws::Aws::connect(&moto.options("secrets"))
        .await
        .unwrap();
    let sm = aws_sdk_secretsmanager::Client::new(&aws.config);
    sm.create_secret()
        .name("relay/target")
        .secret_string(r#"{"Authorization": "Bearer first"}"#)
        .send()
        .await
        .unwrap();
    let secret: SecretRef = "secretsmanager:relay/target".parse().unwrap();
    assert_eq!(
        headers(&aws, &secret).await.unwrap(),
        [("Authorization".to_owned(), "Bearer first".to_owned())]
    );
    // Rotated: the next read (a new instance, a restart) gets the current version.
    sm.put_secret_value()
        .secret_id("relay/target")
        .secret_string(r#"{"Authorization": "Bearer second"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(headers(&aws, &secret).await.unwrap()[0].1, "Bearer second");

    aws_sdk_ssm::Client::new(&aws.config)
        .put_parameter()
        .name("/relay/target")
        .value("Authorization: Bearer from-ssm\nX-Tenant: acme")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let param: SecretRef = "ssm:/relay/target".parse().unwrap();
    assert_eq!(
        headers(&aws, &param).await.unwrap(),
        [
            ("Authorization".to_owned(), "Bearer from-ssm".to_owned()),
            ("X-Tenant".to_owned(), "acme".to_owned())
        ],
        "a SecureString is decrypted"
    );

    let missing = headers(&aws, &"secretsmanager:absent".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(missing, relay_aws::AwsError::NotFound(_)),
        "{missing}"
    );
    assert!(
        missing.to_string().contains("secretsmanager:absent"),
        "{missing}"
    );

    sm.create_secret()
        .name("relay/garbled")
        .secret_string("Bearer only-a-token")
        .send()
        .await
        .unwrap();
    let garbled = headers(&aws, &"secretsmanager:relay/garbled".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(garbled.contains("relay/garbled"), "{garbled}");
    assert!(
        !garbled.contains("only-a-token"),
        "never shows the value: {garbled}"
    );
}
