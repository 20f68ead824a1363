//! What relay tells a monitoring system, read back through a real one: Debian's Prometheus
//! scrapes `relay up --metrics`, and its query API must hold the counts the test caused.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use assert_cmd::Command;
use common::*;
use serde_json::json;

/// Waits until Prometheus answers `promql` with `want` (one series).
async fn scraped(prometheus: &Prometheus, promql: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = prometheus.value(promql).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus answers {promql} with {got:?}, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_counts_the_backlog_and_the_pause() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(50.0, 5.0).await;
    let metrics = free_addr();
    let relay = Relay::start(&data, &target.url(), &["--metrics", &metrics]);
    let prometheus = Prometheus::start(&[("relay", &metrics)]).await;
    scraped(&prometheus, r#"up{job="relay"}"#, 1.0).await;
    let relay_cmd = |args: &[&str]| {
        Command::new(relay_bin())
            .args(args)
            .args(["--data-dir", data.to_str().unwrap()])
            .assert()
            .success()
    };

    // Paused, so the backlog stands still while Prometheus reads it.
    relay_cmd(&["pause", "--reason", "telemetry test"]);
    // The dispatcher looks every second.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let events: Vec<_> = (0..30).map(event).collect();
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 30);
    let client = reqwest::Client::new();
    let post = |key: &'static str, body: serde_json::Value| {
        let request = client
            .post(relay.events_url())
            .header("x-api-key", key)
            .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(KEY, events[0].clone()).await, 200, "a duplicate");
    for _ in 0..3 {
        assert_eq!(post("wrong-key", event(99)).await, 401);
    }
    for _ in 0..2 {
        assert_eq!(post(KEY, json!({"id": "no-name", "body": "{}"})).await, 422);
    }

    scraped(&prometheus, "relay_paused", 1.0).await;
    scraped(&prometheus, "relay_backlog_events", 30.0).await;
    scraped(&prometheus, "relay_events_accepted_total", 30.0).await;
    scraped(&prometheus, "relay_events_duplicate_total", 1.0).await;
    scraped(
        &prometheus,
        r#"relay_ingest_refused_total{reason="unauthorized"}"#,
        3.0,
    )
    .await;
    scraped(
        &prometheus,
        r#"relay_ingest_refused_total{reason="invalid_event"}"#,
        2.0,
    )
    .await;
    scraped(
        &prometheus,
        r#"relay_ingest_ack_duration_seconds_count{route="/events"}"#,
        31.0,
    )
    .await;
    scraped(&prometheus, "relay_events_delivered_total", 0.0).await;
    let oldest = prometheus.value("relay_backlog_oldest_age_seconds").await;
    assert!(
        oldest.unwrap() > 0.0,
        "the oldest waiting event has an age: {oldest:?}"
    );

    relay_cmd(&["resume"]);
    eventually("all 30 delivered", 60, || target.stats().events == 30).await;
    scraped(&prometheus, "relay_paused", 0.0).await;
    scraped(&prometheus, "relay_events_delivered_total", 30.0).await;
    scraped(
        &prometheus,
        r#"relay_delivery_attempts_total{outcome="delivered"}"#,
        30.0,
    )
    .await;
    scraped(&prometheus, "relay_backlog_events", 0.0).await;
    scraped(&prometheus, "relay_events_dead_total", 0.0).await;
    // One observation per request to the target; at least one flush per acknowledged event's
    // group, each a histogram Prometheus can take quantiles of.
    let requests = target.stats().requests as f64;
    scraped(
        &prometheus,
        "relay_delivery_attempt_duration_seconds_count",
        requests,
    )
    .await;
    let flushes = prometheus
        .value("relay_store_flush_duration_seconds_count")
        .await
        .unwrap();
    assert!(flushes >= 1.0, "{flushes} flushes");
    let p99 = prometheus
        .value("histogram_quantile(0.99, sum by (le) (relay_ingest_ack_duration_seconds_bucket))")
        .await
        .unwrap();
    assert!(p99 > 0.0 && p99 <= 5.0, "p99 ack {p99} s");
    assert_eq!(relay.terminate().code(), Some(0));
}
