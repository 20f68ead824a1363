//! The built authorizer bootstrap under a local Lambda Runtime API (`cargo lambda watch
//! --only-lambda-apis`, installed by `scripts/test.sh` into `.venv-lambda`), its keys read from
//! a secret on a local AWS API (moto), invoked with API Gateway's REQUEST authorizer event: a
//! known key is allowed for the whole stage, any other is the `Unauthorized` error that API
//! Gateway answers 401.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use relay_aws::testing::MotoServer;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo_lambda() -> PathBuf {
    let exe = std::env::var_os("RELAY_CARGO_LAMBDA").map_or_else(
        || root().join(".venv-lambda/bin/cargo-lambda"),
        PathBuf::from,
    );
    assert!(
        exe.exists(),
        "{} not found: run scripts/test.sh (it installs cargo-lambda into .venv-lambda), or set RELAY_CARGO_LAMBDA",
        exe.display()
    );
    exe
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Stops the process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn invoke(port: u16, event: &Value) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(cargo_lambda())
        .args([
            "lambda",
            "invoke",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .args(["--data-ascii", &event.to_string()])
        .output()
        .unwrap()
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
    let port = free_port();
    let _runtime = Running(
        Command::new(cargo_lambda())
            .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
            .args(["-P", &port.to_string()])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the Runtime API did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _function = Running(
        Command::new(env!("CARGO_BIN_EXE_relay-authorizer"))
            .envs(moto.env())
            .env("AWS_ENDPOINT_URL", &moto.url)
            .env("RELAY_STACK", "authorizer")
            .env("RELAY_API_KEY_SECRET", "secretsmanager:authorizer/api-keys")
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("lambdas/events/apigw-authorizer-request.json"))
            .unwrap(),
    )
    .unwrap();

    let allowed = invoke(port, &fixture);
    let answer: Value = serde_json::from_slice(&allowed.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&allowed.stdout),
            String::from_utf8_lossy(&allowed.stderr)
        )
    });
    let statement = &answer["policyDocument"]["Statement"][0];
    assert_eq!(statement["Effect"], "Allow", "{answer}");
    assert_eq!(
        statement["Resource"],
        "arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/live/*"
    );

    let mut wrong = fixture.clone();
    wrong["headers"]["x-api-key"] = "fixture-kez".into();
    wrong["multiValueHeaders"]["x-api-key"] = serde_json::json!(["fixture-kez"]);
    let refused = invoke(port, &wrong);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "a wrong key was allowed: {said}");
    assert!(said.contains("Unauthorized"), "{said}");
    assert!(!said.contains("Allow"), "{said}");
}
