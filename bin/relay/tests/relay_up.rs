//! `relay up` as a process: end to end into a rate-limited target, crashes, and clean shutdown.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use relay_store::Reader;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_reach_a_rate_limited_target_once_enriched_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(200.0, 20.0).await;
    let relay = Relay::start(&data, &target.url(), &[]);

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
    let stats = target.stats();
    assert_eq!((stats.duplicates, stats.bad_idempotency_keys), (0, 0));
    assert!(
        stats.rate_limited > 0,
        "the target's limit was reached, so the test exercised it"
    );
    // The target has each event before the relay has recorded its answer.
    eventually("every delivery recorded", 30, || {
        let counts = Reader::open(&data).unwrap().status_counts().unwrap();
        (counts.delivered, counts.dead, counts.queued, counts.leased) == (1000, 0, 0, 0)
    })
    .await;
    assert_eq!(relay.terminate().code(), Some(0));
}

/// Every id ingest accepts reaches the target byte for byte; the others are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_id_reaches_the_target_unchanged_and_the_rest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(500.0, 50.0).await;
    let relay = Relay::start(&dir.path().join("data"), &target.url(), &[]);
    edge_ids_reach_the_target_unchanged(&relay.events_url(), &target).await;
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1e6, 1e6).await;
    let relay = Relay::start(&data, &target.url(), &[]);

    let mut config = source_sim::SourceConfig::new(relay.events_url(), KEY, 400.0, 1200);
    config.keep_ids = true;
    let source = tokio::spawn(source_sim::run(config, Arc::default()));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    relay.kill();
    let report = source.await.unwrap().unwrap();
    assert!(
        report.acked > 100 && report.acked < 1200,
        "the kill must land mid-stream: {report:?}"
    );

    let stored = stored_after_restart(&data).await;
    let missing: Vec<_> = report
        .acked_ids
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );

    let relay = Relay::start(&data, &target.url(), &[]);
    eventually(
        "every acknowledged event delivered after restart",
        60,
        || {
            let received = target.events();
            report.acked_ids.iter().all(|id| received.contains_key(id))
        },
    )
    .await;
    assert_eq!(relay.terminate().code(), Some(0));
}

/// What a restart finds on disk: opening the store replays the journal into the index, as
/// `relay up` does when it starts.
async fn stored_after_restart(data: &std::path::Path) -> HashSet<String> {
    let store = relay_store::SqliteStore::open(data).unwrap();
    store.indexed().await.unwrap();
    drop(store);
    Reader::open(data)
        .unwrap()
        .event_ids()
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_flushes_stalled_every_event_is_acked_in_time_survives_sigkill_and_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1e6, 1e6).await;
    // Every flush of the journal takes 2 s, far past the source's 500 ms budget.
    let stall = [("RELAY_FAULTS", "flush.journal=stall:2s")];
    let relay = Relay::start_env(&data, &target.url(), &[], &stall);
    let mut config = source_sim::SourceConfig::new(relay.events_url(), KEY, 200.0, 1000);
    config.keep_ids = true;
    let report = source_sim::run(config, Arc::default()).await.unwrap();
    assert_eq!(
        (report.acked, report.rejected, report.late, report.errors),
        (1000, 0, 0, 0),
        "every event answered 2xx within 500 ms: {report:?}"
    );
    // The last flushes are still stalled: kill now.
    relay.kill();
    let stored = stored_after_restart(&data).await;
    let missing: Vec<_> = report
        .acked_ids
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let status = relay_core::ops::Operations::status(&Reader::open(&data).unwrap())
        .await
        .unwrap();
    assert!(
        status.acked_before_flush > 0,
        "the stall made the relay answer before flushing, and it counted that"
    );

    let relay = Relay::start(&data, &target.url(), &[]);
    eventually("all 1000 delivered after the restart", 60, || {
        let received = target.events();
        report.acked_ids.iter().all(|id| received.contains_key(id))
    })
    .await;
    assert_eq!(target.stats().bad_idempotency_keys, 0);
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_policy_refuses_rather_than_answer_before_a_stalled_flush() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1e6, 1e6).await;
    let stall = [("RELAY_FAULTS", "flush.journal=stall:2s")];
    let relay = Relay::start_env(&data, &target.url(), &["--durability", "flush"], &stall);
    let config = source_sim::SourceConfig::new(relay.events_url(), KEY, 50.0, 50);
    let report = source_sim::run(config, Arc::default()).await.unwrap();
    assert!(
        report.statuses.get(&503).copied().unwrap_or(0) > 0,
        "a 2 s flush is past the store timeout: {report:?}"
    );
    assert!(report.acked < 50, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_drain_then_restart_delivers_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(100.0, 10.0).await;
    let flags = ["--max-in-flight", "8"];
    let relay = Relay::start(&data, &target.url(), &flags);

    let events: Vec<Value> = (0..600).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 600);
    eventually("the drain is under way", 60, || {
        target.stats().events >= 100
    })
    .await;
    relay.kill();
    let at_kill = target.stats().events;
    assert!(
        at_kill < 600,
        "the kill must land mid-drain ({at_kill} delivered)"
    );

    let relay = Relay::start(&data, &target.url(), &flags);
    eventually("all 600 delivered after restart", 120, || {
        target.stats().events == 600
    })
    .await;
    assert_eq!(relay.terminate().code(), Some(0));

    let reader = Reader::open(&data).unwrap();
    for e in &events {
        let id = e["id"].as_str().unwrap();
        let delivered = reader
            .attempts(id)
            .unwrap()
            .iter()
            .filter(|a| a.outcome.as_str() == "delivered")
            .count();
        assert_eq!(delivered, 1, "{id} recorded as delivered {delivered} times");
    }
    // Only requests in flight at the kill can reach the target twice, and they carry the same
    // idempotency key, so the target keeps one copy.
    let stats = target.stats();
    assert!(
        stats.duplicates <= 8,
        "{} duplicates with at most 8 in flight",
        stats.duplicates
    );
    assert_eq!(stats.bad_idempotency_keys, 0);
    assert_eq!(reader.status_counts().unwrap().delivered, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_leaves_nothing_leased() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(20.0, 1.0).await;
    let relay = Relay::start(&data, &target.url(), &["--target-rate", "20"]);
    let events: Vec<Value> = (0..200).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 200);
    eventually("some delivered", 30, || target.stats().events >= 5).await;
    let log_before = relay.log();
    let status = relay.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit on SIGTERM; log:\n{log_before}"
    );

    let counts = Reader::open(&data).unwrap().status_counts().unwrap();
    assert_eq!(counts.leased, 0, "{counts:?}");
    assert_eq!(counts.total(), 200);
    assert!(
        counts.queued > 0,
        "the test must stop mid-drain: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _relay = Relay::start(&data, "http://127.0.0.1:9/graphql", &[]);
    let output = std::process::Command::new(relay_bin())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--target-url",
            "http://127.0.0.1:9/graphql",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another `relay up`"), "{stderr}");
}

/// With `--target-signing-secret`, every request to the target is signed the Standard Webhooks
/// way and the reference package (Python, not relay's code) verifies it: one event a request,
/// whose `webhook-id` is the event id, and batches, whose id is `batch_…`. The same verifier
/// refuses a request signed with another secret, so the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_the_target_carry_signatures_an_independent_verifier_accepts() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let target = VerifyingTarget::start(SECRET);
    let body = br#"{"query":"mutation { x }","variables":{"input":{"id":"forged"}}}"#;
    let forged = reqwest::Client::new()
        .post(&target.url)
        .header("webhook-id", "forged")
        .header("webhook-timestamp", now().to_string())
        .header(
            "webhook-signature",
            python_signature("whsec_c2VjcmV0", "forged", now(), body),
        )
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "the verifier refuses another secret");

    let dir = tempfile::tempdir().unwrap();
    for (batch, ids) in [("1", 0..10), ("5", 10..40)] {
        let relay = Relay::start(
            &dir.path().join(format!("data-{batch}")),
            &target.url,
            &["--target-signing-secret", SECRET, "--batch", batch],
        );
        // In one batch request, so that the dispatcher finds them all waiting.
        let events: Vec<Value> = ids.clone().map(event).collect();
        let stored = reqwest::Client::new()
            .post(format!("{}/events/batch", relay.url))
            .header("x-api-key", KEY)
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), 200);
        let sent: HashSet<String> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        eventually(
            &format!("--batch {batch}: every event verified"),
            60,
            || {
                let verified: HashSet<String> = target
                    .seen()
                    .into_iter()
                    .filter(|r| r.valid)
                    .flat_map(|r| r.events)
                    .collect();
                sent.is_subset(&verified)
            },
        )
        .await;
        assert_eq!(relay.terminate().code(), Some(0));
    }
    let seen = target.seen();
    let refused: Vec<&Verified> = seen.iter().filter(|r| !r.valid).collect();
    assert_eq!(refused.len(), 1, "only the forged request: {refused:?}");
    let signed: Vec<&Verified> = seen.iter().filter(|r| r.valid).collect();
    for request in &signed {
        let id = request.webhook_id.as_deref().unwrap();
        match request.events.as_slice() {
            [one] => assert_eq!(id, one, "one event's message id is its own"),
            _ => assert!(id.starts_with("batch_"), "{request:?}"),
        }
    }
    assert!(
        signed.iter().any(|r| r.events.len() > 1),
        "some requests were batches"
    );
}

/// A target behind OAuth2: relay fetches a token by the client credentials grant, reuses it,
/// fetches the next one before it expires (no request ever carries an expired token), and when
/// the server revokes it, fetches a new one on the 401 and sends again at once: no event spends
/// an attempt on it. Neither the secret nor a token is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_behind_oauth2_gets_tokens_that_are_reused_renewed_and_replaced() {
    let target = CredentialedTarget::start(Some(2), None);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = target.oauth_flags();
    flags.extend(["--target-oauth-client-secret".into(), OAUTH_CLIENT.1.into()]);
    flags.extend(["--target-rate".into(), "20".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = Relay::start(&dir.path().join("data"), &target.url(), &flags);
    let delivered = |target: &CredentialedTarget| -> HashSet<String> {
        let seen = target.seen();
        let authorized = seen.iter().filter(|r| r.path == "/graphql" && r.authorized);
        authorized.flat_map(|r| r.events.clone()).collect()
    };
    // Five seconds of sending: more than two tokens' lifetimes.
    for round in 0..5 {
        let events: Vec<Value> = (round * 10..round * 10 + 10).map(event).collect();
        assert_eq!(post_all(&relay.events_url(), &events).await.len(), 10);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    eventually("the first 50 delivered", 60, || {
        delivered(&target).len() == 50
    })
    .await;
    let before = target.seen();
    assert!(
        before.iter().all(|r| r.path == "/token" || r.authorized),
        "no request carried an expired token: {before:?}"
    );
    let grants = before.iter().filter(|r| r.granted).count();
    let requests = before.iter().filter(|r| r.path == "/graphql").count();
    assert!(
        (3..=6).contains(&grants),
        "a token per lifetime, renewed ahead: {grants} tokens for {requests} requests"
    );

    let revoked = reqwest::Client::new()
        .post(format!("{}/revoke", target.base))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let late: Vec<Value> = (50..60).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &late).await.len(), 10);
    eventually("the last 10 delivered", 60, || {
        delivered(&target).len() == 60
    })
    .await;
    let after = &target.seen()[before.len()..];
    let refused = after
        .iter()
        .filter(|r| r.path == "/graphql" && !r.authorized)
        .count();
    assert!(refused >= 1, "the revoked token was refused: {after:?}");
    let id = late[0]["id"].as_str().unwrap();
    let trace = || {
        json_of(
            assert_cmd::Command::new(relay_bin())
                .args(["trace", id, "--json", "--data-dir"])
                .arg(dir.path().join("data"))
                .assert()
                .success(),
        )
    };
    eventually("its delivery recorded", 30, || {
        trace()["delivery"]["status"] == "delivered"
    })
    .await;
    let trace = trace();
    assert_eq!(
        outcomes(&trace),
        vec![("scheduled".to_owned(), "delivered".to_owned())],
        "the 401 was answered with a new token inside the attempt: {trace}"
    );
    let log = relay.log();
    assert!(log.contains("OAuth2 token fetched"), "{log}");
    assert!(
        !log.contains(OAUTH_CLIENT.1) && !log.contains("tok-"),
        "{log}"
    );
    assert_eq!(relay.terminate().code(), Some(0));
}

/// A private target behind mTLS: its certificate is signed by a CA only `--target-ca` names,
/// and it refuses a client without a certificate from its client CA. relay presents its client
/// certificate and every event is delivered; a key that is not PEM stops the start, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_behind_mtls_takes_relays_client_certificate() {
    let pki = Pki::new();
    let target = CredentialedTarget::start(None, Some(&pki));
    let ca = reqwest::Certificate::from_pem(pki.read("ca.pem").as_bytes()).unwrap();
    let without = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap()
        .post(target.url())
        .body("{}")
        .send()
        .await;
    assert!(
        without.is_err(),
        "no client certificate, no answer: {without:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let tls = [
        "--target-client-cert",
        &pki.path("client.pem"),
        "--target-client-key",
        &pki.path("client-key.pem"),
        "--target-ca",
        &pki.path("ca.pem"),
    ];
    let relay = Relay::start(&dir.path().join("data"), &target.url(), &tls);
    let events: Vec<Value> = (0..10).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 10);
    eventually("all 10 delivered over mTLS", 60, || {
        target.seen().iter().map(|r| r.events.len()).sum::<usize>() == 10
    })
    .await;
    assert!(
        target
            .seen()
            .iter()
            .all(|r| r.peer.as_deref() == Some("relay-client")),
        "{:?}",
        target.seen()
    );
    assert_eq!(relay.terminate().code(), Some(0));

    let bad = dir.path().join("bad-key.pem");
    std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let out = std::process::Command::new(relay_bin())
        .args(["up", "--api-key", KEY, "--target-url", &target.url()])
        .args(["--target-client-cert", &pki.path("client.pem")])
        .arg("--target-client-key")
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--target-client-key"), "{stderr}");
}
