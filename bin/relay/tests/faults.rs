//! The built binary on a disk that fails on cue (`RELAY_FAULTS`, the store's fault schedule):
//! what a source, `/health`, `relay status` and the target see, and, over SIGKILLs and a
//! schedule of every kind of fault, that every acknowledged event is delivered.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_gets_503_and_says_so_then_recovers_and_delivers_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(500.0, 50.0).await;
    // Flushes 30 to 60 fail (and with them the attempts to write the journal again elsewhere):
    // a few seconds of a failing disk.
    let env = [("RELAY_FAULTS", "flush.journal=error@30..60")];
    let relay = Relay::start_env(&data, &target.url(), &[], &env);
    let client = reqwest::Client::new();
    let (mut acked, mut failing_answers, mut saw_health, mut saw_status) =
        (Vec::new(), 0, false, false);
    let mut recovered_after = 0;
    for i in 0..3000 {
        let e = event(i);
        let answer = client
            .post(relay.events_url())
            .header("x-api-key", KEY)
            .json(&e)
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            202 => {
                acked.push(e["id"].as_str().unwrap().to_owned());
                if failing_answers > 0 {
                    recovered_after += 1;
                }
            }
            503 => {
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["error"], "store_failing", "{body}");
                failing_answers += 1;
                if !saw_health {
                    let health = client
                        .get(format!("{}/health", relay.url))
                        .send()
                        .await
                        .unwrap();
                    saw_health = health.status().as_u16() == 503;
                }
                if !saw_status {
                    let status = std::process::Command::new(relay_bin())
                        .args(["status", "--data-dir", data.to_str().unwrap()])
                        .output()
                        .unwrap();
                    saw_status = String::from_utf8_lossy(&status.stdout).contains("STORE FAILING");
                }
            }
            other => panic!("answered {other}"),
        }
        if recovered_after >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failing_answers > 0, "the disk never failed");
    assert!(saw_health, "/health never said 503 while failing");
    assert!(saw_status, "relay status never said STORE FAILING");
    assert!(recovered_after >= 50, "it never recovered");
    let health = client
        .get(format!("{}/health", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let log = relay.log();
    assert!(log.contains("the store is failing"), "the log says so");
    assert!(
        log.contains("the journal recovered"),
        "and that it recovered"
    );
    // SIGKILL now: every acknowledged event, those acknowledged around the failure too, is
    // delivered by the next start.
    relay.kill();
    let relay = Relay::start(&data, &target.url(), &[]);
    eventually("every acknowledged event delivered", 90, || {
        let got = target.events();
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    assert_eq!(relay.terminate().code(), Some(0));
}

/// Every kind of storage fault at random (short and failed writes, failed and stalled flushes,
/// segments that cannot be made, SQLite commits and checkpoints that fail), a source at
/// 200/s, and SIGKILLs; then a start without faults. Every acknowledged event reaches the
/// target; nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_disk_faults_and_sigkills_every_acknowledged_event_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(400.0, 40.0).await;
    let schedule = "write.journal=short@p:0.003, write.journal=error@p:0.003, \
                    flush.journal=error@p:0.01, flush.*=stall:150ms@p:0.01, \
                    create.segment=error@p:0.3, write.index=error@p:0.01, flush.index=error@p:0.05";
    let listen = free_addr();
    let start = |seed: &'static str| {
        Relay::start_at(
            &data,
            &listen,
            &target.url(),
            &[("RELAY_FAULTS", schedule), ("RELAY_FAULTS_SEED", seed)],
        )
    };
    let relay = start("1");
    let mut config = source_sim::SourceConfig::new(relay.events_url(), KEY, 200.0, 1600);
    config.keep_ids = true;
    config.patience = Duration::from_secs(2);
    let prefix = config.id_prefix.clone();
    let sending = tokio::spawn(source_sim::run(config, Arc::default()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.kill();
    let relay = start("2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.kill();
    let relay = start("3");
    let report = sending.await.unwrap().unwrap();
    assert!(report.acked > 500, "{report:?}");
    assert!(
        report.rejected + report.errors > 0,
        "the faults and kills cost some sends: {report:?}"
    );
    assert!(
        relay.log().contains("fault injection"),
        "the schedule was on"
    );
    assert_eq!(relay.terminate().code(), Some(0));

    let relay = Relay::start_at(&data, &listen, &target.url(), &[]);
    let acked: HashSet<String> = report.acked_ids.iter().cloned().collect();
    eventually("every acknowledged event delivered", 120, || {
        let got = target.events();
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    for id in target.events().keys() {
        assert!(id.starts_with(&prefix), "{id} was never sent");
    }
    assert_eq!(relay.terminate().code(), Some(0));
    let check = std::process::Command::new(relay_bin())
        .args(["store", "check", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        !text.contains("index integrity (SQLite)              ┆ 1"),
        "{text}"
    );
}
