//! `relay up --backend aws` as a process, against a real local AWS API (moto over HTTP): the
//! receiver behind an API Gateway stand-in, the outbox, the dispatcher, crashes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::*;
use relay_aws::testing::MotoServer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_go_through_aws_once_enriched_and_unchanged() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(200.0, 20.0).await;
    let relay = Relay::start_aws(dir.path(), &moto, "thousand", &target.url(), &[]);

    let events: Vec<Value> = (0..1000).map(event).collect();
    let acked = post_all(&relay.events_url(), &events).await;
    assert_eq!(acked.len(), 1000, "every valid event is acknowledged");
    eventually("all 1000 delivered", 120, || target.stats().events == 1000).await;
    let received = target.events();
    for e in &events {
        let got = &received[e["id"].as_str().unwrap()];
        let mut expected = e.clone();
        expected["brand"] = json!("testBrand");
        assert_eq!(Value::Object(got.input.clone()), expected);
        assert_eq!(got.deliveries, 1, "{} delivered more than once", e["id"]);
    }
    assert_eq!(target.stats().bad_idempotency_keys, 0);
    assert_eq!(relay.terminate().code(), Some(0));
    // Every delivered event is in the S3 archive once the relay has stopped.
    let aws = relay_aws::Aws::connect(&moto.options("thousand"))
        .await
        .unwrap();
    let archived = relay_aws::testing::archived(&aws).await;
    let ids: std::collections::HashSet<&str> =
        archived.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids.len(), 1000, "{} lines", archived.len());
    assert!(archived.iter().all(|l| l["status"] == "delivered"));
}

/// Batches both ways on AWS: `relay import` through the receiver's `POST /events/batch` (a
/// conditional put per event), and the dispatcher's requests of ten aliased events, into a
/// target whose limit counts requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_goes_through_aws_and_reaches_the_target_in_batches() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(20.0, 20.0).await;
    let relay = Relay::start_aws(
        dir.path(),
        &moto,
        "batches",
        &target.url(),
        &["--batch", "10"],
    );
    let file = dir.path().join("backlog.jsonl");
    let mut lines: Vec<String> = (0..600).map(|i| event(i).to_string()).collect();
    lines[300] = r#"{"id": "no-name", "body": "b", "timestamp": 1}"#.into();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = assert_cmd::Command::new(relay_bin())
        .arg("import")
        .arg(&file)
        .args([
            "--url",
            &relay.url,
            "--api-key",
            KEY,
            "--batch-size",
            "100",
            "--json",
        ])
        .timeout(std::time::Duration::from_secs(120))
        .assert()
        .code(1);
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        (&report["accepted"], &report["invalid"]),
        (&json!(599), &json!(1)),
        "{report}"
    );
    assert_eq!(report["failures"][0]["line"], 301);
    assert_eq!(report["failures"][0]["field"], "name");

    eventually("all 599 delivered", 120, || target.stats().events == 599).await;
    let stats = target.stats();
    assert_eq!(
        (stats.duplicates, stats.bad_idempotency_keys),
        (0, 0),
        "{stats:?}"
    );
    assert!(stats.requests < 300, "batched: {stats:?}");
    assert!(!target.events().contains_key("no-name"));
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_drain_then_restart_loses_nothing() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(40.0, 5.0).await;
    let relay = Relay::start_aws(dir.path(), &moto, "killed", &target.url(), &[]);
    let events: Vec<Value> = (0..300).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 300);
    eventually("the drain is under way", 60, || target.stats().events >= 40).await;
    relay.kill();
    let at_kill = target.stats().events;
    assert!(at_kill < 300, "the kill must land mid-drain ({at_kill})");

    // Leases of the dead process run out with its messages' visibility: a short one here.
    let relay = Relay::start_aws(dir.path(), &moto, "killed", &target.url(), &[]);
    eventually("all 300 delivered after the restart", 180, || {
        target.stats().events == 300
    })
    .await;
    // Only requests in flight at the kill can arrive twice, under the same idempotency key.
    assert!(target.stats().duplicates <= 10, "{:?}", target.stats());
    assert_eq!(relay.terminate().code(), Some(0));
}

/// Every id the receiver accepts reaches the target byte for byte through DynamoDB, the stream
/// and SQS; the others are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_id_reaches_the_target_unchanged_through_aws() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(500.0, 50.0).await;
    let relay = Relay::start_aws(dir.path(), &moto, "ids", &target.url(), &[]);
    edge_ids_reach_the_target_unchanged(&relay.events_url(), &target).await;
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_api_gateway_gets_the_contract_answers_and_changes_nothing() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(1000.0, 100.0).await;
    let relay = Relay::start_aws(dir.path(), &moto, "bad", &target.url(), &[]);
    let client = reqwest::Client::new();
    let post = |body: String, key: Option<&str>, ct: &str| {
        let mut r = client
            .post(relay.events_url())
            .header("content-type", ct.to_owned())
            .body(body);
        if let Some(key) = key {
            r = r.header("x-api-key", key.to_owned());
        }
        r.send()
    };
    let good = event(1).to_string();
    let cases = [
        (
            post(good.clone(), None, "application/json").await.unwrap(),
            401,
        ),
        (
            post(good.clone(), Some("wrong"), "application/json")
                .await
                .unwrap(),
            401,
        ),
        (
            post("{".into(), Some(KEY), "application/json")
                .await
                .unwrap(),
            400,
        ),
        (
            post(r#"{"id": 5}"#.into(), Some(KEY), "application/json")
                .await
                .unwrap(),
            422,
        ),
        (
            post(good.clone(), Some(KEY), "text/plain").await.unwrap(),
            415,
        ),
        (
            post("x".repeat(300 * 1024), Some(KEY), "application/json")
                .await
                .unwrap(),
            413,
        ),
    ];
    for (response, expected) in cases {
        assert_eq!(response.status().as_u16(), expected);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    let health = client
        .get(format!("{}/health", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // The contract's good answers come through the same path.
    assert_eq!(
        post(good.clone(), Some(KEY), "application/json")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        post(good, Some(KEY), "application/json")
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    eventually("the one good event delivered", 30, || {
        target.stats().events == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(target.stats().events, 1, "nothing bad was stored or sent");
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_credentials_come_from_secrets_manager() {
    let moto = MotoServer::start();
    moto.put_secret(
        "relay/target",
        r#"{"Authorization": "Bearer from-the-secret"}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let target = target(200.0, 20.0).await;
    let mut faults = target.faults();
    faults.require_header = Some("Authorization: Bearer from-the-secret".into());
    target.set_faults(faults);

    // A secret that is not there: a clear error, before anything starts.
    let env = moto.env();
    let missing = std::process::Command::new(relay_bin())
        .args([
            "up",
            "--backend",
            "aws",
            "--create-resources",
            "--stack",
            "creds",
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--target-url",
            &target.url(),
        ])
        .args(["--header-secret", "secretsmanager:relay/absent"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("secretsmanager:relay/absent"), "{stderr}");

    let relay = Relay::start_aws(
        dir.path(),
        &moto,
        "creds",
        &target.url(),
        &["--header-secret", "secretsmanager:relay/target"],
    );
    let events: Vec<Value> = (0..20).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 20);
    eventually("all 20 delivered with the secret's header", 60, || {
        target.stats().events == 20
    })
    .await;
    assert_eq!(target.stats().unauthorized, 0);
    assert_eq!(relay.terminate().code(), Some(0));
}

/// On AWS the dispatcher signs with the secret Terraform names (`sign_target_requests` sets
/// `RELAY_TARGET_SIGNING_SECRET_REF`), and the reference Python package verifies what arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_the_target_are_signed_with_the_secret_from_secrets_manager() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let moto = MotoServer::start();
    moto.put_secret("relay/target-signing-secret", SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let target = VerifyingTarget::start(SECRET);
    let relay = Relay::start_aws(
        dir.path(),
        &moto,
        "signed",
        &target.url,
        &[
            "--target-signing-secret-ref",
            "secretsmanager:relay/target-signing-secret",
        ],
    );
    let events: Vec<Value> = (0..10).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 10);
    eventually("all 10 delivered, verified", 60, || {
        target.seen().iter().filter(|r| r.valid).count() >= 10
    })
    .await;
    let seen = target.seen();
    assert!(seen.iter().all(|r| r.valid), "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.webhook_id.as_deref() == r.events.first().map(String::as_str)),
        "{seen:?}"
    );
    assert_eq!(relay.terminate().code(), Some(0));
}

/// Every event gets one X-Ray trace: receive → forward (queue) → each attempt, with the target
/// call under it, all annotated with `event_id`, and the trace id stored on the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_has_one_x_ray_trace_from_receipt_to_every_attempt() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(50.0, 10.0).await;
    target.set_faults(target_sim::Faults {
        outage: true,
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let relay = Relay::start_aws(dir.path(), &moto, "traced", &target.url(), &[]);
    let retried = event(1);
    let mut poison = event(2);
    poison["name"] = json!("poison");
    let header = "Root=1-67a0b1c2-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";
    let client = reqwest::Client::new();
    let answer = client
        .post(relay.events_url())
        .header("x-api-key", KEY)
        .header("X-Amzn-Trace-Id", header)
        .json(&retried)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    // The only event so far: the outage's answer is to its first attempt.
    eventually("the outage answers a first attempt", 60, || {
        target.stats().requests >= 1
    })
    .await;
    target.set_faults(target_sim::Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    // Without a header the receiver starts the trace itself.
    assert_eq!(
        post_all(&relay.events_url(), &[poison.clone()]).await.len(),
        1
    );
    eventually(
        "the retried event is delivered, the poison one refused",
        60,
        || target.stats().events == 1 && target.stats().rejected == 1,
    )
    .await;
    assert_eq!(relay.terminate().code(), Some(0));

    let aws = relay_aws::Aws::connect(&moto.options("traced"))
        .await
        .unwrap();
    let id = |e: &Value| e["id"].as_str().unwrap().to_owned();
    let trace_id = relay_aws::xray::trace_id_of(&aws, &id(&retried))
        .await
        .unwrap();
    assert_eq!(
        trace_id.as_deref(),
        Some("1-67a0b1c2-0123456789abcdef01234567"),
        "the caller's trace is continued and stored on the event"
    );
    let segments = relay_aws::xray::fetch_trace(&aws, trace_id.as_deref().unwrap())
        .await
        .unwrap();
    let named =
        |name: &str| -> Vec<&Value> { segments.iter().filter(|s| s["name"] == name).collect() };
    let (receive, forward, attempts) = (
        named("relay-receiver"),
        named("relay-forwarder"),
        named("relay-dispatcher"),
    );
    assert_eq!((receive.len(), forward.len()), (1, 1), "{segments:#?}");
    assert!(
        attempts.len() >= 2,
        "an attempt in the outage, then the delivery: {segments:#?}"
    );
    assert!(
        segments
            .iter()
            .all(|s| s["annotations"]["event_id"] == json!(id(&retried))),
        "{segments:#?}"
    );
    // One tree: the caller's segment → receive → forward → each attempt → the target call.
    assert_eq!(receive[0]["parent_id"], "53995c3f42cd8ad8");
    assert_eq!(forward[0]["parent_id"], receive[0]["id"]);
    assert!(attempts.iter().all(|a| a["parent_id"] == forward[0]["id"]));
    assert_eq!(receive[0]["subsegments"][0]["name"], "DynamoDB");
    let first = attempts[0];
    assert_eq!(first["fault"], true, "{first}");
    assert_eq!(first["subsegments"][0]["http"]["response"]["status"], 503);
    let last = attempts.last().unwrap();
    assert_eq!(last["annotations"]["settled"], "delivered");
    assert_eq!(last["subsegments"][0]["name"], "target");

    // The event the receiver started a trace for: its one attempt is an error, dead-lettered.
    let poison_trace = relay_aws::xray::trace_id_of(&aws, &id(&poison))
        .await
        .unwrap()
        .expect("a trace started by the receiver");
    assert_ne!(Some(poison_trace.clone()), trace_id);
    let segments = relay_aws::xray::fetch_trace(&aws, &poison_trace)
        .await
        .unwrap();
    let dead: Vec<&Value> = segments
        .iter()
        .filter(|s| s["name"] == "relay-dispatcher")
        .collect();
    assert_eq!(dead.len(), 1, "{segments:#?}");
    assert_eq!(dead[0]["annotations"]["settled"], "dead");
    assert_eq!(dead[0]["error"], true);
    assert!(
        segments
            .iter()
            .any(|s| s["name"] == "relay-receiver" && s.get("parent_id").is_none())
    );
}

/// The deploy pipeline's post-deploy smoke test (`scripts/smoke-aws.sh`, the AWS CLI, curl and
/// jq), run here against `relay up --backend aws` standing in for the deployed stack: the
/// outputs file names its API URL, table and API-key secret, as `terraform output -json` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_smoke_test_passes_against_a_working_stack_and_fails_on_a_wrong_key() {
    let Some(aws_cli) = aws_cli() else {
        panic!("the AWS CLI is needed: scripts/test.sh installs it into .venv-awscli");
    };
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(100.0, 10.0).await;
    let relay = Relay::start_aws(dir.path(), &moto, "smoke", &target.url(), &[]);
    moto.put_secret("smoke/api-keys", &format!("old-key,{KEY}"))
        .await;
    moto.put_secret("smoke/wrong-keys", "not-the-key").await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/smoke-aws.sh");
    let run = |secret: &str| {
        let outputs = dir
            .path()
            .join(format!("{}.json", secret.replace('/', "-")));
        std::fs::write(
            &outputs,
            json!({
                "api_url": {"value": relay.url},
                "events_table": {"value": "smoke-events"},
                "api_keys_secret": {"value": secret},
            })
            .to_string(),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(script).arg(&outputs);
        for (k, v) in moto.env() {
            cmd.env(k, v);
        }
        let path = format!(
            "{}:{}",
            aws_cli.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("AWS_ENDPOINT_URL", &moto.url)
            .env_remove("AWS_DEFAULT_REGION")
            .env("PATH", path)
            .output()
            .unwrap()
    };

    let good = run("smoke/api-keys");
    let said =
        String::from_utf8_lossy(&good.stdout).into_owned() + &String::from_utf8_lossy(&good.stderr);
    assert_eq!(good.status.code(), Some(0), "{said}");
    assert!(said.contains("delivered"), "{said}");
    assert_eq!(
        target.stats().events,
        1,
        "one smoke event reached the target"
    );

    let wrong = run("smoke/wrong-keys");
    let said = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert_eq!(wrong.status.code(), Some(1), "{said}");
    assert!(said.contains("expected 202"), "{said}");
    assert_eq!(relay.terminate().code(), Some(0));
}

/// `aws` from PATH, or the one scripts/test.sh installs.
fn aws_cli() -> Option<std::path::PathBuf> {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-awscli/bin/aws");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("aws"))
        .find(|p| p.exists())
}

/// The receiver checks Standard Webhooks signatures as `relay up` does: signed by an
/// independent signer passes, unsigned is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_takes_signed_requests_and_refuses_unsigned_ones() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(200.0, 20.0).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let relay = Relay::start_aws(
        dir.path(),
        &moto,
        "signed",
        &target.url(),
        &["--signing-secret", secret],
    );
    let body = serde_json::to_vec(&event(1)).unwrap();
    let headers = signed(secret, "msg_1", now(), &body);
    let (status, answer) = post_signed(&relay.url, Some(KEY), &headers, &body).await;
    assert_eq!(status, 202, "{answer}");
    let other = serde_json::to_vec(&event(2)).unwrap();
    let (status, answer) = post_signed(&relay.url, Some(KEY), &[], &other).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("signature_required"))
    );
    eventually("the signed event delivered", 60, || {
        target.stats().events == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(target.stats().events, 1, "the unsigned event was delivered");
}

/// On AWS the dispatcher reads the OAuth2 client secret, the client certificate (chain and key
/// in one secret) and the CA from Secrets Manager, and delivers to a target behind both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_behind_oauth2_and_mtls_is_reached_with_credentials_from_secrets_manager() {
    let moto = MotoServer::start();
    let pki = Pki::new();
    let identity = format!("{}{}", pki.read("client.pem"), pki.read("client-key.pem"));
    moto.put_secret("relay/target-oauth-client-secret", OAUTH_CLIENT.1)
        .await;
    moto.put_secret("relay/target-client-certificate", &identity)
        .await;
    moto.put_secret("relay/target-ca", &pki.read("ca.pem"))
        .await;
    let target = CredentialedTarget::start(Some(300), Some(&pki));
    let dir = tempfile::tempdir().unwrap();
    let mut flags = target.oauth_flags();
    flags.extend(
        [
            "--target-oauth-client-secret-ref",
            "secretsmanager:relay/target-oauth-client-secret",
            "--target-client-cert",
            "secretsmanager:relay/target-client-certificate",
            "--target-ca",
            "secretsmanager:relay/target-ca",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = Relay::start_aws(dir.path(), &moto, "credentialed", &target.url(), &flags);
    let events: Vec<Value> = (0..10).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 10);
    eventually("all 10 delivered with a token, over mTLS", 60, || {
        let seen = target.seen();
        let delivered = seen.iter().filter(|r| r.authorized);
        delivered.map(|r| r.events.len()).sum::<usize>() == 10
    })
    .await;
    let seen = target.seen();
    assert_eq!(seen.iter().filter(|r| r.granted).count(), 1, "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.peer.as_deref() == Some("relay-client") || r.path == "/token"),
        "{seen:?}"
    );
    assert_eq!(relay.terminate().code(), Some(0));
}
