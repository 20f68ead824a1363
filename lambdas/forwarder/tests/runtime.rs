//! The built forwarder bootstrap under a local Lambda Runtime API (`cargo lambda watch
//! --only-lambda-apis`, which `scripts/test.sh` installs into `.venv-lambda`), invoked with the
//! stream fixture, against a local AWS API (moto): the Lambda path end to end, runtime included.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use relay_aws::testing::MotoServer;
use relay_lambda::testing::{RuntimeApi, answer};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_forwarder_answers_the_runtime_api_and_queues_the_fixtures_events() {
    let moto = MotoServer::start();
    let aws = moto.stack("runtime").await;
    let runtime = RuntimeApi::start(&root());
    let env = moto.function_env("runtime");
    // If the test fails first, the function exits with the Runtime API gone.
    let function = runtime.function(env!("CARGO_BIN_EXE_relay-forwarder"), &env);
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("lambdas/events/dynamodb-stream-insert.json"))
            .unwrap(),
    )
    .unwrap();
    let answer = answer(&runtime.invoke(&fixture));
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));

    // The fixture's two new events are in the queue.
    let (url, _) = aws.queue_urls().await.unwrap();
    let received = aws
        .sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let mut ids: Vec<String> = received
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(m.body.as_deref()?).ok())
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    assert_eq!(ids, ["stream-1", "stream-2"]);

    // Its stdout carries the invocation's EMF line, as CloudWatch Logs would receive it.
    let output = function.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let emf = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["_aws"].is_object())
        .unwrap_or_else(|| panic!("no EMF line in: {stdout}"));
    assert_eq!(emf["Function"], "forwarder");
    assert_eq!(emf["Forwarded"], 2.0);
}
