//! `relay trace`, `relay dlq` and `relay status` with `--backend aws`, as built binaries against
//! `relay up --backend aws` on a local AWS API (moto over HTTP).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::*;
use relay_aws::testing::MotoServer;
use serde_json::{Value, json};
use target_sim::Faults;

/// `relay ARGS --backend aws --stack STACK`, with moto's endpoint and credentials.
fn relay(moto: &MotoServer, stack: &str, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = Command::new(relay_bin());
    cmd.args(args).args(["--backend", "aws", "--stack", stack]);
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    cmd.assert()
}

fn segment_names(trace: &Value) -> Vec<String> {
    trace["segments"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_then_trace_of_retried_delivered_and_dead_events_with_their_x_ray_traces() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        outage: true,
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let up = Relay::start_aws(
        dir.path(),
        &moto,
        "ops",
        &target.url(),
        &["--max-age", "2h"],
    );

    // A known backlog while the target is down.
    let backlog: Vec<Value> = (0..12).map(|i| named(&format!("b-{i}"), "order")).collect();
    assert_eq!(post_all(&up.events_url(), &backlog).await.len(), 12);
    eventually("the down target is tried", 60, || {
        target.stats().requests >= 12
    })
    .await;
    let mut status = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        status = json_of(relay(&moto, "ops", &["status", "--json"]));
        if status["retried_last_minute"].as_u64().unwrap() >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        status["retried_last_minute"].as_u64().unwrap() >= 12,
        "{status:#}"
    );
    let waiting = status["queued"].as_u64().unwrap() + status["in_flight"].as_u64().unwrap();
    assert!(waiting >= 1, "the backlog is in the queue: {status:#}");
    assert_eq!(status["delivered_last_minute"], 0, "{status:#}");
    assert_eq!(status["acked_before_flush"], 0);
    assert!(
        status["dispatcher"]["rate"].as_f64().unwrap() > 0.0,
        "{status:#}"
    );
    let oldest = status["oldest_waiting_received_at"].as_i64().unwrap();
    assert!(relay_core::now_millis() - oldest < 120_000, "{status:#}");
    // The drain forecast, with the fleet's --max-age from its heartbeat.
    let forecast = &status["forecast"];
    assert_eq!(forecast["backlog"].as_u64(), Some(waiting), "{status:#}");
    assert_eq!(forecast["max_age_ms"], 7_200_000, "{status:#}");
    assert!(forecast["drain_ms"].as_i64().is_some(), "{status:#}");
    // The table a person reads.
    relay(&moto, "ops", &["status"])
        .success()
        .stdout(predicates::str::contains("queue depth"))
        .stdout(predicates::str::contains("backlog drains in"));

    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    assert_eq!(
        post_all(&up.events_url(), &[named("dead-1", "poison")])
            .await
            .len(),
        1
    );
    eventually("the backlog delivered", 90, || target.stats().events == 12).await;
    let dead = eventually_json(&moto, "ops", &["trace", "dead-1", "--json"], |t| {
        t["delivery"]["status"] == "dead"
            && segment_names(t).contains(&"relay-dispatcher".to_owned())
    })
    .await;
    assert_eq!(outcomes(&dead), [("scheduled".into(), "permanent".into())]);
    assert!(
        dead["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .contains("BAD_USER_INPUT"),
        "{dead:#}"
    );

    // X-Ray has each attempt's segment shortly after the attempt is recorded. The target's
    // circuit opened after a run of failures, so not every event of the backlog was tried
    // while it was down: the one to read is one that was.
    let tried_while_down = (0..12)
        .map(|i| format!("b-{i}"))
        .find(|id| {
            let t = json_of(relay(&moto, "ops", &["trace", id, "--json"]));
            outcomes(&t).first().is_some_and(|o| o.1 == "transient")
        })
        .expect("the target was tried while down");
    let retried = eventually_json(&moto, "ops", &["trace", &tried_while_down, "--json"], |t| {
        t["delivery"]["status"] == "delivered"
            && segment_names(t)
                .iter()
                .filter(|n| *n == "relay-dispatcher")
                .count()
                == t["attempts"].as_array().unwrap().len()
    })
    .await;
    let tried = outcomes(&retried);
    assert!(tried.len() >= 2, "{retried:#}");
    assert_eq!(tried[0].1, "transient");
    assert_eq!(tried.last().unwrap().1, "delivered");
    // The X-Ray trace: its id stored on the event, its segments fetched.
    assert_eq!(retried["trace_ids"][0]["system"], "xray");
    let names = segment_names(&retried);
    assert!(
        names.iter().filter(|n| *n == "relay-dispatcher").count() >= 2
            && names.contains(&"relay-receiver".to_owned())
            && names.contains(&"relay-forwarder".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "relay-dispatcher").count(),
        tried.len(),
        "a segment per attempt"
    );
    let dead_names = segment_names(&dead);
    assert!(
        dead_names.contains(&"relay-dispatcher".to_owned()),
        "{dead:#}"
    );

    // Delivered at once.
    assert_eq!(
        post_all(&up.events_url(), &[named("ok-1", "order")])
            .await
            .len(),
        1
    );
    let ok = eventually_json(&moto, "ops", &["trace", "ok-1", "--json"], |t| {
        t["delivery"]["status"] == "delivered"
    })
    .await;
    assert_eq!(outcomes(&ok), [("scheduled".into(), "delivered".into())]);
    // The timeline a person reads: the attempts and the trace's segments.
    relay(&moto, "ops", &["trace", "b-0"])
        .success()
        .stdout(predicates::str::contains("relay-dispatcher"))
        .stdout(predicates::str::contains("trace id (xray)"));
    relay(&moto, "ops", &["trace", "no-such-event"])
        .code(1)
        .stderr(predicates::str::contains(
            "no event with id \"no-such-event\" in stack ops",
        ));

    // The dispatchers' totals follow within a heartbeat (a second).
    let status = eventually_json(&moto, "ops", &["status", "--json"], |s| {
        s["delivered"].as_u64().unwrap() >= 13
    })
    .await;
    assert_eq!(status["dead"], 1, "{status:#}");
    assert_eq!(status["delivered_last_minute"], 13, "{status:#}");
    assert_eq!(up.terminate().code(), Some(0));
}

/// Polls `relay … --json` until `done` holds (the relay records an answer after the target has
/// it).
async fn eventually_json(
    moto: &MotoServer,
    stack: &str,
    args: &[&str],
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = json_of(relay(moto, stack, args));
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_one_id_then_all_into_a_target_that_first_rejects_then_accepts() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let up = Relay::start_aws(dir.path(), &moto, "redrive", &target.url(), &[]);
    let events: Vec<Value> = (1..=4)
        .map(|i| named(&format!("p-{i}"), "poison"))
        .collect();
    assert_eq!(post_all(&up.events_url(), &events).await.len(), 4);
    let listed = eventually_json(&moto, "redrive", &["dlq", "list", "--json"], |l| {
        l.as_array().unwrap().len() == 4
    })
    .await;
    assert!(
        listed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("BAD_USER_INPUT")
    );
    let limited = json_of(relay(
        &moto,
        "redrive",
        &[
            "dlq",
            "list",
            "--json",
            "--reason",
            "bad_user_input",
            "--limit",
            "2",
        ],
    ));
    assert_eq!(limited.as_array().unwrap().len(), 2);
    let dry = json_of(relay(
        &moto,
        "redrive",
        &["dlq", "redrive", "--all", "--dry-run", "--json"],
    ));
    assert_eq!(dry["would_redrive"].as_array().unwrap().len(), 4);
    eventually_json(&moto, "redrive", &["status", "--json"], |s| s["dead"] == 4).await;

    target.set_faults(Faults::default());
    let one = json_of(relay(
        &moto,
        "redrive",
        &["dlq", "redrive", "--id", "p-1", "--json"],
    ));
    assert_eq!(one["redriven"], json!(["p-1"]));
    eventually("p-1 delivered", 60, || target.events().contains_key("p-1")).await;
    assert_eq!(
        target.events().len(),
        1,
        "only the redriven event was sent again"
    );
    let left = json_of(relay(&moto, "redrive", &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 3);

    let all = json_of(relay(
        &moto,
        "redrive",
        &["dlq", "redrive", "--all", "--spread", "2s", "--json"],
    ));
    assert_eq!(all["redriven"].as_array().unwrap().len(), 3);
    eventually("every event delivered", 60, || target.events().len() == 4).await;
    for id in ["p-1", "p-2", "p-3", "p-4"] {
        let t = eventually_json(&moto, "redrive", &["trace", id, "--json"], |t| {
            t["delivery"]["status"] == "delivered"
        })
        .await;
        assert_eq!(
            outcomes(&t),
            [
                ("scheduled".into(), "permanent".into()),
                ("redrive".into(), "delivered".into())
            ],
            "{id}"
        );
        assert_eq!(target.events()[id].deliveries, 1);
    }
    // The DLQ's stale copies went with the redrive.
    let status = json_of(relay(&moto, "redrive", &["status", "--json"]));
    assert_eq!(status["dead"], 0, "{status:#}");
    relay(&moto, "redrive", &["dlq", "redrive", "--id", "p-1"])
        .code(1)
        .stderr(predicates::str::contains("not in the dead-letter queue"));

    // Terraform's outputs name the stack instead of --stack, and RELAY_BACKEND works as the flag.
    let outputs = dir.path().join("outputs.json");
    let names = relay_aws::Stack::named("redrive");
    std::fs::write(
        &outputs,
        json!({
            "events_table": {"value": names.events_table},
            "control_table": {"value": names.control_table},
            "queue_name": {"value": names.queue},
            "dlq_name": {"value": names.dlq},
            "archive_bucket": {"value": names.archive_bucket},
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(relay_bin());
    cmd.args(["trace", "p-2", "--json", "--stack-outputs"])
        .arg(&outputs)
        .env("RELAY_BACKEND", "aws");
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    assert_eq!(json_of(cmd.assert())["delivery"]["status"], "delivered");
    assert_eq!(up.terminate().code(), Some(0));
}

#[test]
fn bad_arguments_exit_2_and_unreachable_or_unauthenticated_stacks_exit_1_quickly() {
    for args in [
        &["status", "--backend", "azure"][..],
        &["dlq", "redrive", "--backend", "aws"],
        &["trace", "--backend", "aws"],
        &["status", "--backend", "aws", "--endpoint-url", "not a url"],
    ] {
        Command::new(relay_bin())
            .args(args)
            .env_remove("RELAY_DATA_DIR")
            .assert()
            .code(2);
    }

    // Nothing listens on port 9: refused at once. The timeouts are bounds, not measurements:
    // a hang would sit in the SDK's retries and timeouts for minutes.
    Command::new(relay_bin())
        .args(["status", "--backend", "aws", "--stack", "x"])
        .args([
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--region",
            "us-east-1",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("cannot reach"));

    // No credentials anywhere (and no instance metadata to ask).
    Command::new(relay_bin())
        .args([
            "dlq",
            "list",
            "--backend",
            "aws",
            "--stack",
            "x",
            "--region",
            "us-east-1",
        ])
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("credentials"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_copies_dead_letters_to_the_archive_and_trace_finds_them_there() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let up = Relay::start_aws(dir.path(), &moto, "purge", &target.url(), &[]);
    let events = [named("x-1", "poison"), named("x-2", "poison")];
    assert_eq!(post_all(&up.events_url(), &events).await.len(), 2);
    eventually_json(&moto, "purge", &["dlq", "list", "--json"], |l| {
        l.as_array().unwrap().len() == 2
    })
    .await;

    let dry = json_of(relay(
        &moto,
        "purge",
        &["dlq", "purge", "--before", "0s", "--dry-run", "--json"],
    ));
    assert_eq!(dry["purged"].as_array().unwrap().len(), 2);
    let still = json_of(relay(&moto, "purge", &["dlq", "list", "--json"]));
    assert_eq!(
        still.as_array().unwrap().len(),
        2,
        "a dry run changes nothing"
    );

    let purged = json_of(relay(
        &moto,
        "purge",
        &["dlq", "purge", "--before", "0s", "--json"],
    ));
    let mut ids: Vec<&str> = purged["purged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["x-1", "x-2"]);
    let archive = purged["archive"].as_str().unwrap();
    assert!(
        archive.starts_with("s3://purge-archive/events/date="),
        "{archive}"
    );
    assert!(
        json_of(relay(&moto, "purge", &["dlq", "list", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    let status = json_of(relay(&moto, "purge", &["status", "--json"]));
    assert_eq!(status["dead"], 0, "the DLQ's copies went too: {status:#}");

    // Its items are gone; the archive still tells its story.
    let t = json_of(relay(&moto, "purge", &["trace", "x-1", "--json"]));
    assert_eq!(t["delivery"]["status"], "dead");
    assert!(
        t["archived"]["location"]
            .as_str()
            .unwrap()
            .starts_with("s3://purge-archive/events/"),
        "{t:#}"
    );
    assert!(
        t["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .contains("BAD_USER_INPUT"),
        "{t:#}"
    );
    assert_eq!(t["payload"]["name"], "poison");
    relay(&moto, "purge", &["dlq", "redrive", "--id", "x-1"])
        .code(1)
        .stderr(predicates::str::contains("was archived"));
    assert_eq!(up.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_fleets_delivery_back_and_resume_lets_it_go() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target(1000.0, 1000.0).await;
    let up = Relay::start_aws(dir.path(), &moto, "paused", &target.url(), &[]);
    pause_then_resume(
        |args| relay(&moto, "paused", args),
        &up.events_url(),
        &target,
    )
    .await;
    assert_eq!(up.terminate().code(), Some(0));
}
