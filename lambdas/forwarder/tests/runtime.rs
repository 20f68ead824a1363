//! The built forwarder bootstrap under a local Lambda Runtime API (`cargo lambda watch
//! --only-lambda-apis`, which `scripts/test.sh` installs into `.venv-lambda`), invoked with the
//! stream fixture, against a local AWS API (moto): the Lambda path end to end, runtime included.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_forwarder_answers_the_runtime_api_and_queues_the_fixtures_events() {
    let moto = MotoServer::start();
    let aws = moto.stack("runtime").await;
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
    // If the test fails first, the function exits with the Runtime API gone.
    let mut function = Command::new(env!("CARGO_BIN_EXE_relay-forwarder"))
        .envs(moto.env())
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("RELAY_STACK", "runtime")
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `invoke` waits for the function's answer: bounded, so a function that never answers
    // fails the test instead of hanging it.
    let invoked = Command::new("timeout")
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
        .arg("--data-file")
        .arg(root().join("lambdas/events/dynamodb-stream-insert.json"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&invoked.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&invoked.stdout),
            String::from_utf8_lossy(&invoked.stderr)
        )
    });
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
    let _ = function.kill();
    let output = function.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let emf = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["_aws"].is_object())
        .unwrap_or_else(|| panic!("no EMF line in: {stdout}"));
    assert_eq!(emf["Function"], "forwarder");
    assert_eq!(emf["Forwarded"], 2.0);
}
