//! More than one event per request, both ways, as a user runs it: `relay import` through
//! `POST /events/batch`, a SIGKILL during batches, and `relay up --batch` into a target whose
//! limit counts requests.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use common::*;
use relay_store::Reader;
use serde_json::{Value, json};

/// `lines` JSON lines; the 0-based indexes in `bad` are broken (two not JSON, one invalid).
fn write_lines(path: &Path, lines: usize, bad: &[usize]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..lines {
        let line = match bad.iter().position(|b| *b == i) {
            Some(0) => format!(r#"{{"id": "broken-{i}", "name": "#),
            Some(1) => {
                format!(r#"{{"id":"bad-ts-{i}","name":"n","body":"b","timestamp":"never"}}"#)
            }
            Some(_) => "not json at all".to_owned(),
            None => event(i).to_string(),
        };
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
}

fn import(file: &Path, relay: &Relay, extra: &[&str]) -> assert_cmd::assert::Assert {
    Command::new(relay_bin())
        .arg("import")
        .arg(file)
        .args(["--url", &relay.url, "--api-key", KEY])
        .args(extra)
        .timeout(Duration::from_secs(120))
        .assert()
}

fn report(assert: &assert_cmd::assert::Assert) -> Value {
    let out = &assert.get_output().stdout;
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_ten_thousand_lines_with_three_bad_ones_delivers_the_rest_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The limit counts requests: 50/s, so one event per request would take 200 s.
    let target = target(50.0, 50.0).await;
    let relay = Relay::start(&data, &target.url(), &["--batch", "50"]);
    let file = dir.path().join("backlog.jsonl");
    write_lines(&file, 10_000, &[10, 5_000, 9_998]);
    let errors = dir.path().join("failed.jsonl");

    let first = import(
        &file,
        &relay,
        &["--json", "--errors", errors.to_str().unwrap()],
    );
    let first = first.code(1);
    let r = report(&first);
    assert_eq!(
        (
            &r["lines"],
            &r["accepted"],
            &r["duplicate"],
            &r["invalid"],
            &r["failed"]
        ),
        (
            &json!(10_000),
            &json!(9_997),
            &json!(0),
            &json!(3),
            &json!(3)
        ),
        "{r}"
    );
    let failed: Vec<Value> = std::fs::read_to_string(&errors)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<(u64, &str)> = failed
        .iter()
        .map(|f| (f["line"].as_u64().unwrap(), f["error"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            (11, "invalid_json"),
            (5_001, "invalid_event"),
            (9_999, "invalid_json")
        ]
    );
    assert_eq!(
        (&failed[1]["id"], &failed[1]["field"]),
        (&json!("bad-ts-5000"), &json!("timestamp"))
    );
    assert!(
        !file.with_extension("jsonl.relay-import").exists(),
        "a finished import leaves no state"
    );

    // Sent again: all duplicates, the same three failures, still exit 1; and the table.
    let again = import(&file, &relay, &[]).code(1);
    let table = String::from_utf8_lossy(&again.get_output().stdout).into_owned();
    assert!(
        table.contains("duplicate (already stored)") && table.contains("9997"),
        "{table}"
    );
    assert!(
        table.contains("5001") && table.contains("bad-ts-5000"),
        "{table}"
    );

    eventually("all 9,997 delivered", 90, || target.stats().events == 9_997).await;
    let stats = target.stats();
    assert_eq!(
        (stats.duplicates, stats.bad_idempotency_keys),
        (0, 0),
        "{stats:?}"
    );
    assert!(stats.requests < 1_000, "batched: {stats:?}");
    let received = target.events();
    let sample = event(4_321);
    let mut expected = sample.clone();
    expected["brand"] = json!("testBrand");
    assert_eq!(Value::Object(received["evt-04321"].input.clone()), expected);
    eventually("every delivery recorded", 30, || {
        let counts = Reader::open(&data).unwrap().status_counts().unwrap();
        (counts.delivered, counts.queued, counts.leased) == (9_997, 0, 0)
    })
    .await;
    let status = Command::new(relay_bin())
        .args(["status", "--data-dir"])
        .arg(&data)
        .assert()
        .success();
    let status = String::from_utf8_lossy(&status.get_output().stdout).into_owned();
    assert!(
        status.contains("requests/s (up to 50 events each)"),
        "{status}"
    );
    assert_eq!(relay.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes_after_the_last_answered_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1e6, 1e6).await;
    let relay = Relay::start(&data, &target.url(), &[]);
    let file = dir.path().join("big.jsonl");
    write_lines(&file, 100_000, &[]);

    // One small batch at a time, stopped by the relay going away under it.
    let first = std::process::Command::new(relay_bin())
        .arg("import")
        .arg(&file)
        .args(["--url", &relay.url, "--api-key", KEY])
        .args([
            "--batch-size",
            "50",
            "--concurrency",
            "1",
            "--attempts",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.kill();
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(file.with_extension("jsonl.relay-import")).unwrap(),
    )
    .unwrap();
    let done = state["lines"].as_u64().unwrap();
    assert!(done > 0 && done < 100_000, "stopped midway: {state}");

    let relay = Relay::start(&data, &target.url(), &[]);
    let resumed = import(&file, &relay, &["--resume", "--json"]).success();
    let r = report(&resumed);
    // The whole file is accounted for once: what the first run answered, plus the rest, of
    // which the batch in flight at the kill may have been stored already.
    assert_eq!(r["lines"], 100_000);
    assert_eq!(
        r["accepted"].as_u64().unwrap() + r["duplicate"].as_u64().unwrap(),
        100_000,
        "{r}"
    );
    assert!(
        r["duplicate"].as_u64().unwrap() <= 50,
        "only the batch in flight: {r}"
    );
    let stored = {
        relay.terminate();
        Reader::open(&data).unwrap().event_ids().unwrap().len()
    };
    assert_eq!(stored, 100_000);
}

/// A SIGKILL while batches are being committed: every batch answered 200 is stored whole, and
/// one left unanswered is stored whole or not at all (one journal record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_batch_ingest_keeps_each_batch_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1e6, 1e6).await;
    let relay = Relay::start(&data, &target.url(), &[]);
    let url = format!("{}/events/batch", relay.url);
    let client = reqwest::Client::new();
    let answered = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let unanswered = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let senders: Vec<_> = (0..6)
        .map(|sender| {
            let (client, url) = (client.clone(), url.clone());
            let (answered, unanswered) = (answered.clone(), unanswered.clone());
            tokio::spawn(async move {
                for round in 0.. {
                    let ids: Vec<String> =
                        (0..200).map(|i| format!("k{sender}-{round}-{i}")).collect();
                    let items: Vec<Value> = ids.iter().map(|id| named(id, "bulk")).collect();
                    let sent = client
                        .post(&url)
                        .header("x-api-key", KEY)
                        .json(&items)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => {
                            let body: Value = r.json().await.unwrap();
                            assert!(
                                body["results"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .all(|r| r["status"] == "accepted")
                            );
                            answered.lock().unwrap().push(ids);
                        }
                        _ => {
                            unanswered.lock().unwrap().push(ids);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay.kill();
    for s in senders {
        s.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let unanswered = unanswered.lock().unwrap().clone();
    assert!(
        answered.len() > 5,
        "the kill must land mid-stream: {}",
        answered.len()
    );

    let store = relay_store::SqliteStore::open(&data).unwrap();
    store.indexed().await.unwrap();
    drop(store);
    let stored: HashSet<String> = Reader::open(&data)
        .unwrap()
        .event_ids()
        .unwrap()
        .into_iter()
        .collect();
    for batch in &answered {
        let missing = batch.iter().filter(|id| !stored.contains(*id)).count();
        assert_eq!(missing, 0, "an acknowledged batch lost {missing} events");
    }
    for batch in &unanswered {
        let kept = batch.iter().filter(|id| stored.contains(*id)).count();
        assert!(
            kept == 0 || kept == batch.len(),
            "a batch was cut: {kept} of {} stored",
            batch.len()
        );
    }
}

#[test]
fn a_custom_document_with_batches_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let up = |extra: &[&str]| {
        Command::new(relay_bin())
            .args([
                "up",
                "--target-url",
                "http://127.0.0.1:9/graphql",
                "--api-key",
                "k",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .timeout(Duration::from_secs(20))
            .assert()
            .code(2)
    };
    let document = "mutation M($input: EventInput!) { m(input: $input) }";
    up(&["--batch", "10", "--document", document]).stderr(predicates::str::contains("--batch 1"));
    up(&["--batch", "501"]).stderr(predicates::str::contains("501"));
}

#[test]
fn import_refuses_a_wrong_key_at_once_and_a_missing_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("few.jsonl");
    write_lines(&file, 3, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = rt.block_on(target(1e6, 1e6));
    let relay = Relay::start(&dir.path().join("data"), &target.url(), &[]);
    Command::new(relay_bin())
        .arg("import")
        .arg(&file)
        .args(["--url", &relay.url, "--api-key", "wrong"])
        .timeout(Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("401"));
    Command::new(relay_bin())
        .args([
            "import",
            "/nonexistent.jsonl",
            "--url",
            &relay.url,
            "--api-key",
            KEY,
        ])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("cannot open /nonexistent.jsonl"));
    assert!(
        Reader::open(&dir.path().join("data"))
            .unwrap()
            .event_ids()
            .unwrap()
            .is_empty()
    );
}
