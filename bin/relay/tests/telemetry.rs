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

    // Every graph of the Grafana dashboard has data from this relay, and every alert's
    // expression is one this Prometheus evaluates.
    for (title, expr) in dashboard_queries() {
        let series = prometheus.query(&expr).await;
        assert!(
            !series.is_empty(),
            "dashboard panel {title:?}: {expr} has no data"
        );
    }
    for (alert, expr) in alert_expressions() {
        prometheus.query(&expr).await;
        println!("{alert}: evaluated");
    }
    assert_eq!(relay.terminate().code(), Some(0));
}

fn repo_file(path: &str) -> String {
    let at = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()))
}

/// Each panel's title and PromQL, with Grafana's `$__rate_interval` as Prometheus takes it.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("docs/grafana/relay-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            panel["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"].as_str().unwrap();
                (title.clone(), expr.replace("$__rate_interval", "1m"))
            })
        })
        .collect()
}

/// Each alert's name and expression, from docs/prometheus/alerts.yml.
fn alert_expressions() -> Vec<(String, String)> {
    let rules = repo_file("docs/prometheus/alerts.yml");
    let mut found = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("- alert: ") else {
            continue;
        };
        let expr_line = lines.next().unwrap();
        let indent = expr_line.len() - expr_line.trim_start().len();
        let expr = match expr_line.trim().strip_prefix("expr: ").unwrap() {
            // A block scalar: the lines indented deeper than `expr:`.
            "|" => {
                let mut block = String::new();
                while let Some(l) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
                    block.push_str(l.trim());
                    block.push(' ');
                }
                block
            }
            one => one.to_owned(),
        };
        found.push((name.to_owned(), expr));
    }
    assert_eq!(found.len(), 8, "{found:?}");
    found
}

/// `promtool` checks the alert rules, and runs their unit tests: each alert fires on the
/// series that should raise it, with the annotations an on-call engineer reads.
#[test]
fn the_alert_rules_are_valid_and_fire_when_they_should() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Prometheus, Debian's package; scripts/test.sh installs it)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
        assert!(said.contains("SUCCESS"), "promtool {args:?}:\n{said}");
    }
}

/// docs/telemetry.md lists every metric; the dashboard and the alerts use no other; every
/// alert points at a section of the runbook that exists.
#[test]
fn the_docs_the_dashboard_and_the_alerts_name_the_metrics_relay_records() {
    use relay_core::telemetry::METRICS;
    let doc = repo_file("docs/telemetry.md");
    for m in METRICS {
        assert!(
            doc.contains(&format!("`{}`", m.name)),
            "docs/telemetry.md lacks {}",
            m.name
        );
    }
    let known = |name: &str| {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        METRICS.iter().any(|m| m.name == base)
    };
    let queries = dashboard_queries()
        .into_iter()
        .chain(alert_expressions())
        .map(|(_, expr)| expr);
    for expr in queries {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("relay_") {
                assert!(
                    known(word),
                    "{word} (in {expr}) is not a metric relay records"
                );
            }
        }
    }
    let runbook = repo_file("docs/runbook.md");
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let rules = repo_file("docs/prometheus/alerts.yml");
    for line in rules.lines() {
        if let Some(link) = line.trim().strip_prefix("runbook: \"docs/runbook.md#") {
            let anchor = link.trim_end_matches('"');
            assert!(
                anchors.iter().any(|a| a == anchor),
                "no runbook section #{anchor}"
            );
        }
    }
}

/// `--otlp-endpoint`: each event is one trace (its receipt the root, each attempt and each
/// settlement a child) and the metrics arrive too, at a real OTLP receiver that decodes them
/// with the opentelemetry-proto package; `OTEL_EXPORTER_OTLP_HEADERS` is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_one_trace_and_the_metrics_reach_a_real_otlp_receiver() {
    let receiver = OtlpReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target_rejecting("bad").await;
    let relay = Relay::start_env(
        &data,
        &target.url(),
        &["--otlp-endpoint", &receiver.url],
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-test=yes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let mut events: Vec<_> = (0..5)
        .map(|i| named(&format!("otel-{i}"), "order"))
        .collect();
    events.push(named("otel-bad", "bad"));
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 6);
    eventually("5 delivered", 30, || target.stats().events == 5).await;

    let spans_of = |lines: &[serde_json::Value], id: &str| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["signal"] == "span" && l["attributes"]["relay.event_id"] == id)
            .cloned()
            .collect()
    };
    let settled = |lines: &[serde_json::Value]| {
        events.iter().all(|e| {
            spans_of(lines, e["id"].as_str().unwrap())
                .iter()
                .any(|s| s["name"] == "relay.settle")
        })
    };
    let accepted = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|l| l["signal"] == "metric" && l["name"] == "relay_events_accepted_total")
            .any(|l| l["value"] == 6.0 || l["value"] == 6)
    };
    eventually(
        "every event's trace and the accepted count at the receiver",
        30,
        || {
            let lines = receiver.lines();
            settled(&lines) && accepted(&lines)
        },
    )
    .await;

    let lines = receiver.lines();
    for e in &events {
        let id = e["id"].as_str().unwrap();
        let spans = spans_of(&lines, id);
        let hash = hmac_sha256::Hash::hash(id.as_bytes());
        let trace_id: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        let root_id: String = hash[16..24].iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            spans.iter().all(|s| s["trace_id"] == trace_id.as_str()),
            "{id}: one trace: {spans:#?}"
        );
        let receive: Vec<_> = spans
            .iter()
            .filter(|s| s["name"] == "relay.receive")
            .collect();
        assert_eq!(receive.len(), 1, "{id}: one receipt");
        assert_eq!(
            receive[0]["span_id"],
            root_id.as_str(),
            "{id}: the receipt is the root"
        );
        assert_eq!(
            receive[0]["parent_id"], "",
            "{id}: the receipt has no parent"
        );
        for child in spans.iter().filter(|s| s["name"] != "relay.receive") {
            assert_eq!(child["parent_id"], root_id.as_str(), "{id}: {child}");
            assert!(child["start_ns"].as_u64() <= child["end_ns"].as_u64());
            assert_eq!(child["service"], "relay");
            assert_eq!(
                child["headers"]["x-test"], "yes",
                "OTEL_EXPORTER_OTLP_HEADERS"
            );
        }
        let attempts: Vec<_> = spans
            .iter()
            .filter(|s| s["name"] == "relay.attempt")
            .collect();
        assert!(!attempts.is_empty(), "{id}: an attempt");
        let last = spans.iter().rfind(|s| s["name"] == "relay.settle").unwrap();
        if id == "otel-bad" {
            assert_eq!(last["attributes"]["relay.settlement"], "dead", "{last}");
            assert_eq!(last["status"], 2, "an error: {last}");
            assert_eq!(
                attempts[0]["attributes"]["relay.attempt.outcome"],
                "permanent"
            );
        } else {
            assert_eq!(
                last["attributes"]["relay.settlement"], "delivered",
                "{last}"
            );
            assert_eq!(
                attempts.last().unwrap()["attributes"]["http.response.status_code"],
                200
            );
        }
    }
    let names: std::collections::HashSet<&str> = lines
        .iter()
        .filter(|l| l["signal"] == "metric")
        .filter_map(|l| l["name"].as_str())
        .collect();
    for name in [
        "relay_events_delivered_total",
        "relay_delivery_attempts_total",
        "relay_ingest_ack_duration_seconds",
        "relay_backlog_events",
    ] {
        assert!(names.contains(name), "{name} over OTLP: {names:?}");
    }
    assert_eq!(relay.terminate().code(), Some(0));
}
