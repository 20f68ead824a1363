//! The built authorizer bootstrap under a local Lambda Runtime API (`cargo lambda watch
//! --only-lambda-apis`, installed by `scripts/test.sh` into `.venv-lambda`), its keys read from
//! a secret on a local AWS API (moto), invoked with API Gateway's REQUEST authorizer event: a
//! known key is allowed for the whole stage, any other is the `Unauthorized` error that API
//! Gateway answers 401.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use relay_aws::testing::MotoServer;
use relay_lambda::testing::{RuntimeApi, answer};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_authorizer_allows_a_key_of_the_secret_and_refuses_any_other() {
    let moto = MotoServer::start();
    let aws = moto.stack("authorizer").await;
    aws_sdk_secretsmanager::Client::new(&aws.config)
        .create_secret()
        .name("authorizer/api-keys")
        .secret_string("old-key,fixture-key")
        .send()
        .await
        .unwrap();
    let runtime = RuntimeApi::start(&root());
    let mut env = moto.function_env("authorizer");
    env.push((
        "RELAY_API_KEY_SECRET".to_owned(),
        "secretsmanager:authorizer/api-keys".to_owned(),
    ));
    let _function = runtime.function(env!("CARGO_BIN_EXE_relay-authorizer"), &env);
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("lambdas/events/apigw-authorizer-request.json"))
            .unwrap(),
    )
    .unwrap();

    let answer = answer(&runtime.invoke(&fixture));
    let statement = &answer["policyDocument"]["Statement"][0];
    assert_eq!(statement["Effect"], "Allow", "{answer}");
    assert_eq!(
        statement["Resource"],
        "arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/live/*"
    );

    let mut wrong = fixture.clone();
    wrong["headers"]["x-api-key"] = "fixture-kez".into();
    wrong["multiValueHeaders"]["x-api-key"] = serde_json::json!(["fixture-kez"]);
    let refused = runtime.invoke(&wrong);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "a wrong key was allowed: {said}");
    assert!(said.contains("Unauthorized"), "{said}");
    assert!(!said.contains("Allow"), "{said}");
}
