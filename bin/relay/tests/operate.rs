//! `relay trace`, `relay dlq` and `relay status` as built binaries against a running `relay up`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::*;
use serde_json::{Value, json};
use target_sim::Faults;

fn relay(args: &[&str], data: &Path) -> assert_cmd::assert::Assert {
    Command::new(relay_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .assert()
}

fn trace(id: &str, data: &Path) -> Value {
    json_of(relay(&["trace", id, "--json"], data))
}

const FAST_RETRIES: [&str; 4] = ["--backoff-base", "50ms", "--backoff-cap", "200ms"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_shows_delivered_retried_and_dead_lettered_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        outage: true,
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let relay_up = Relay::start(&data, &target.url(), &FAST_RETRIES);

    assert_eq!(
        post_all(
            &relay_up.events_url(),
            &[named("retried", "ok"), named("dead", "poison")]
        )
        .await
        .len(),
        2
    );
    eventually("a few failed attempts", 30, || {
        trace("retried", &data)["attempts"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    })
    .await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    assert_eq!(
        post_all(&relay_up.events_url(), &[named("delivered", "ok")])
            .await
            .len(),
        1
    );
    eventually("all settled", 30, || {
        ["retried", "dead", "delivered"].iter().all(|id| {
            ["delivered", "dead"]
                .contains(&trace(id, &data)["delivery"]["status"].as_str().unwrap())
        })
    })
    .await;

    let delivered = trace("delivered", &data);
    assert_eq!(delivered["delivery"]["status"], "delivered");
    assert_eq!(
        outcomes(&delivered),
        [("scheduled".into(), "delivered".into())]
    );
    assert_eq!(delivered["payload"], named("delivered", "ok"));

    let retried = trace("retried", &data);
    let steps = outcomes(&retried);
    assert!(steps.len() >= 3, "{steps:?}");
    assert!(
        steps[..steps.len() - 1]
            .iter()
            .all(|(_, o)| o == "transient"),
        "{steps:?}"
    );
    assert_eq!(steps.last().unwrap().1, "delivered");
    assert_eq!(retried["attempts"][0]["http_status"], 503);

    let dead = trace("dead", &data);
    assert_eq!(dead["delivery"]["status"], "dead");
    assert!(
        dead["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .contains("BAD_USER_INPUT")
    );
    // It met the outage too, so transient attempts come before the permanent rejection.
    let steps = outcomes(&dead);
    assert_eq!(steps.last().unwrap().1, "permanent", "{steps:?}");
    assert_eq!(
        dead["dead_letter"]["attempts"].as_u64(),
        Some(steps.len() as u64)
    );

    let table = relay(&["trace", "dead"], &data)
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("dead letter") && table.contains("relay dlq redrive --id dead"),
        "{table}"
    );

    relay(&["trace", "no-such-event"], &data)
        .code(1)
        .stderr(predicates::str::contains(
            "no event with id \"no-such-event\"",
        ));
    drop(relay_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_single_ids_then_all_into_a_target_that_first_rejects_then_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let relay_up = Relay::start(&data, &target.url(), &[]);

    let events: Vec<Value> = (1..=4)
        .map(|i| named(&format!("p-{i}"), "poison"))
        .collect();
    assert_eq!(post_all(&relay_up.events_url(), &events).await.len(), 4);
    eventually("all four dead-lettered", 30, || {
        json_of(relay(&["dlq", "list", "--json"], &data))
            .as_array()
            .unwrap()
            .len()
            == 4
    })
    .await;

    let listed = json_of(relay(
        &[
            "dlq",
            "list",
            "--json",
            "--reason",
            "bad_user_input",
            "--limit",
            "2",
        ],
        &data,
    ));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let dry = json_of(relay(
        &["dlq", "redrive", "--all", "--dry-run", "--json"],
        &data,
    ));
    assert_eq!(dry["would_redrive"].as_array().unwrap().len(), 4);
    assert_eq!(
        json_of(relay(&["dlq", "list", "--json"], &data))
            .as_array()
            .unwrap()
            .len(),
        4,
        "a dry run changes nothing"
    );

    target.set_faults(Faults::default());
    let one = json_of(relay(&["dlq", "redrive", "--id", "p-1", "--json"], &data));
    assert_eq!(one["redriven"], json!(["p-1"]));
    eventually("p-1 delivered", 30, || target.events().contains_key("p-1")).await;
    assert_eq!(
        json_of(relay(&["dlq", "list", "--json"], &data))
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        target.events().len(),
        1,
        "only the redriven event was sent again"
    );

    let all = json_of(relay(
        &["dlq", "redrive", "--all", "--spread", "1s", "--json"],
        &data,
    ));
    assert_eq!(all["redriven"].as_array().unwrap().len(), 3);
    eventually("every event delivered", 30, || target.events().len() == 4).await;
    // The target has them before the relay has its answers and records them.
    eventually("every delivery recorded", 30, || {
        ["p-1", "p-2", "p-3", "p-4"]
            .iter()
            .all(|id| trace(id, &data)["delivery"]["status"] == "delivered")
    })
    .await;
    for id in ["p-1", "p-2", "p-3", "p-4"] {
        let t = trace(id, &data);
        assert_eq!(t["delivery"]["status"], "delivered");
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
    assert!(
        json_of(relay(&["dlq", "list", "--json"], &data))
            .as_array()
            .unwrap()
            .is_empty()
    );

    relay(&["dlq", "redrive", "--id", "p-1"], &data)
        .code(1)
        .stderr(predicates::str::contains("not in the dead-letter queue"));
    drop(relay_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_a_known_backlog_and_shows_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let relay_up = Relay::start(&data, &target.url(), &[]);
    let mut events: Vec<Value> = (0..10).map(|i| named(&format!("ok-{i}"), "ok")).collect();
    events.extend((0..3).map(|i| named(&format!("bad-{i}"), "poison")));
    assert_eq!(post_all(&relay_up.events_url(), &events).await.len(), 13);
    eventually("settled", 30, || {
        target.events().len() == 10 && json_of(relay(&["status", "--json"], &data))["dead"] == 3
    })
    .await;

    // Now a backlog that cannot drain: the target is down and retries are far apart.
    target.set_faults(Faults {
        outage: true,
        ..Default::default()
    });
    let backlog: Vec<Value> = (0..25).map(|i| named(&format!("wait-{i}"), "ok")).collect();
    assert_eq!(post_all(&relay_up.events_url(), &backlog).await.len(), 25);
    // Counts follow the index, which trails the answers by milliseconds.
    eventually(
        "the dispatcher has reported, and the backlog is counted",
        10,
        || {
            let s = json_of(relay(&["status", "--json"], &data));
            !s["dispatcher"].is_null()
                && s["queued"].as_u64().unwrap() + s["in_flight"].as_u64().unwrap() == 25
        },
    )
    .await;

    let s = json_of(relay(&["status", "--json"], &data));
    assert_eq!(
        s["queued"].as_u64().unwrap() + s["in_flight"].as_u64().unwrap(),
        25,
        "{s}"
    );
    assert_eq!(
        (s["delivered"].as_u64(), s["dead"].as_u64()),
        (Some(10), Some(3)),
        "{s}"
    );
    assert_eq!(
        (
            s["delivered_last_minute"].as_u64(),
            s["dead_lettered_last_minute"].as_u64()
        ),
        (Some(10), Some(3)),
        "{s}"
    );
    assert!(s["oldest_waiting_received_at"].as_i64().unwrap() <= s["now"].as_i64().unwrap());
    assert!(s["dispatcher"]["rate"].as_f64().unwrap() > 0.0);
    // The drain forecast: the backlog at the learned pace, against the dispatcher's --max-age.
    let forecast = &s["forecast"];
    let pace = s["dispatcher"]["rate"].as_f64().unwrap();
    assert_eq!(forecast["backlog"], 25, "{s}");
    assert_eq!(forecast["pace_per_s"].as_f64(), Some(pace), "{s}");
    assert_eq!(
        forecast["drain_ms"].as_i64(),
        Some((25.0 / pace * 1000.0).ceil() as i64),
        "{s}"
    );
    assert_eq!(
        forecast["max_age_ms"], 86_400_000,
        "--max-age's default: {s}"
    );
    assert_eq!(forecast["passes_max_age"], false, "{s}");
    assert!(forecast["oldest_age_ms"].as_i64().unwrap() >= 0, "{s}");

    let text = String::from_utf8(
        relay(&["status"], &data)
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        text.contains("dead-letter queue")
            && text.contains("running: pacing at")
            && text.contains("backlog drains in"),
        "{text}"
    );
    drop(relay_up);
    let text = String::from_utf8(
        relay(&["status"], &data)
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        text.contains("queue depth"),
        "status works without a running relay: {text}"
    );
}

#[test]
fn bad_arguments_exit_2_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["trace"], "<ID>"),
        (&["dlq", "redrive"], "--id"),
        (&["dlq", "redrive", "--id", "a", "--all"], "--all"),
        (&["dlq", "list", "--limit", "0"], "--limit"),
        (&["dlq", "list", "--since", "the other day"], "--since"),
        (
            &["dlq", "redrive", "--all", "--spread", "a while"],
            "--spread",
        ),
        (&["status", "--watch=often"], "--watch"),
        (&["dlq", "purge"], "purge"),
    ];
    for (args, needle) in cases {
        let out = Command::new(relay_bin())
            .args(*args)
            .arg("--data-dir")
            .arg(dir.path())
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(needle),
            "{args:?}: stderr lacks {needle}:\n{text}"
        );
    }
    Command::new(relay_bin())
        .args(["status"])
        .env_remove("RELAY_DATA_DIR")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--data-dir"));
}

#[test]
fn a_missing_or_foreign_data_dir_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [&["status"][..], &["dlq", "list"], &["trace", "x"]] {
        relay(cmd, &dir.path().join("nope"))
            .code(1)
            .stderr(predicates::str::contains("does not exist"));
        relay(cmd, dir.path())
            .code(1)
            .stderr(predicates::str::contains("is not a relay data directory"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_archives_delivered_events_and_trace_finds_them_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1000.0, 1000.0).await;
    target.set_faults(Faults {
        reject_names: vec!["poison".into()],
        ..Default::default()
    });
    let relay_up = Relay::start(&data, &target.url(), &["--retention", "2s"]);
    let events = [
        named("kept-1", "ok"),
        named("kept-2", "ok"),
        named("dead-1", "poison"),
    ];
    assert_eq!(post_all(&relay_up.events_url(), &events).await.len(), 3);
    eventually(
        "delivered, then archived past the 2 s retention",
        30,
        || {
            trace("kept-1", &data)["archived"].is_object()
                && trace("kept-2", &data)["archived"].is_object()
        },
    )
    .await;
    let archived = trace("kept-1", &data);
    assert_eq!(archived["delivery"]["status"], "delivered");
    assert_eq!(archived["archived"]["why"], "retention");
    assert_eq!(archived["payload"], named("kept-1", "ok"));
    let file = archived["archived"]["location"].as_str().unwrap();
    assert!(
        file.contains("/archive/") && file.ends_with(".jsonl.gz"),
        "{file}"
    );
    assert!(std::path::Path::new(file).is_file());
    let status = json_of(relay(&["status", "--json"], &data));
    assert_eq!(
        (status["delivered"].as_u64(), status["dead"].as_u64()),
        (Some(0), Some(1)),
        "delivered events left the live store; the dead letter stays: {status}"
    );

    // Purging the dead letter: a dry run first, then for real; the copy stays findable.
    relay(&["dlq", "purge", "--before", "0s", "--dry-run"], &data)
        .success()
        .stdout(predicates::str::contains("would purge 1"));
    assert_eq!(json_of(relay(&["status", "--json"], &data))["dead"], 1);
    relay(&["dlq", "purge", "--before", "0s"], &data)
        .success()
        .stdout(predicates::str::contains("purged 1"));
    assert_eq!(trace("dead-1", &data)["archived"]["why"], "purged");
    relay(&["dlq", "redrive", "--id", "dead-1"], &data)
        .code(1)
        .stderr(predicates::str::contains("cannot be redriven"));
    drop(relay_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_delivery_back_and_resume_lets_it_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(1000.0, 1000.0).await;
    let up = Relay::start(&data, &target.url(), &[]);
    pause_then_resume(|args| relay(args, &data), &up.events_url(), &target).await;
    assert_eq!(up.terminate().code(), Some(0));
}
