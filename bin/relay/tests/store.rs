//! `relay store check` and `relay store backup` on the built binary, and what `relay up` does
//! with a damaged or missing index.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::Value;

fn relay(args: &[&str]) -> std::process::Output {
    Command::new(relay_bin()).args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_holds_every_event_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A slow target: a backlog builds, so the backup holds undelivered work too.
    let target = target(50.0, 5.0).await;
    let relay_up = Relay::start(&data, &target.url(), &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sending = {
        let (url, acked) = (relay_up.events_url(), Arc::clone(&acked));
        tokio::spawn(async move {
            for chunk in (0..3000).collect::<Vec<usize>>().chunks(100) {
                let events: Vec<Value> = chunk.iter().map(|i| event(*i)).collect();
                let ids = post_all(&url, &events).await;
                acked.lock().unwrap().extend(ids);
            }
        })
    };
    eventually("a thousand acknowledged", 60, || {
        acked.lock().unwrap().len() >= 1000
    })
    .await;
    let before: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let copy = dir.path().join("backup");
    let out = tokio::task::spawn_blocking({
        let (copy, data) = (copy.clone(), data.clone());
        move || {
            relay(&[
                "store",
                "backup",
                copy.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ])
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["journal_segments"].as_u64().unwrap() >= 1,
        "{report}"
    );
    sending.await.unwrap();
    assert_eq!(relay_up.terminate().code(), Some(0));

    // The copy checks out, and a relay started on it delivers everything acknowledged before it.
    let check = relay(&["store", "check", "--data-dir", copy.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let fresh = common::target(2000.0, 200.0).await;
    let restored = Relay::start(&copy, &fresh.url(), &[]);
    eventually("the backup's backlog delivered", 90, || {
        let counts = relay_store::Reader::open(&copy)
            .unwrap()
            .status_counts()
            .unwrap();
        counts.queued + counts.leased == 0
    })
    .await;
    assert_eq!(restored.terminate().code(), Some(0));
    let reader = relay_store::Reader::open(&copy).unwrap();
    let held: HashSet<String> = reader.event_ids().unwrap().into_iter().collect();
    let lost: Vec<&String> = before.iter().filter(|id| !held.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the backup, not in it: {lost:?}"
    );
    // What was still undelivered at the backup reached the target from the copy.
    assert!(fresh.stats().events > 0, "the backup held a backlog");
    // A backup is never written over.
    let again = relay(&[
        "store",
        "backup",
        copy.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("not an empty directory"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_missing_index_stops_the_start_with_what_to_do_and_check_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(500.0, 50.0).await;
    let relay_up = Relay::start(&data, &target.url(), &[]);
    let events: Vec<Value> = (0..300).map(event).collect();
    assert_eq!(post_all(&relay_up.events_url(), &events).await.len(), 300);
    eventually("all delivered", 60, || target.stats().events == 300).await;
    assert_eq!(relay_up.terminate().code(), Some(0));
    let ok = relay(&[
        "store",
        "check",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["events"], 300);

    // A missing index, with the journal still there: refused, never started empty.
    let missing = dir.path().join("missing");
    copy_dir(&data, &missing);
    std::fs::remove_file(missing.join("relay.db")).unwrap();
    let up = up_on(&missing, &target.url());
    assert_eq!(up.status.code(), Some(1), "{}", text(&up));
    assert!(
        text(&up).contains("no relay.db") && text(&up).contains("backup"),
        "{}",
        text(&up)
    );
    assert!(!missing.join("relay.db").exists(), "nothing was created");

    // Damaged pages: a clear error, no panic, nothing changed; check says DAMAGED.
    let damaged = dir.path().join("damaged");
    copy_dir(&data, &damaged);
    let db = damaged.join("relay.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes.len() / 2;
    bytes[at..at + 4096].fill(0xa5);
    std::fs::write(&db, &bytes).unwrap();
    let up = up_on(&damaged, &target.url());
    assert_eq!(up.status.code(), Some(1), "{}", text(&up));
    assert!(
        text(&up).contains("is damaged") && text(&up).contains("relay store check"),
        "{}",
        text(&up)
    );
    assert!(!text(&up).contains("panicked"), "{}", text(&up));
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "nothing was changed");
    let check = relay(&["store", "check", "--data-dir", damaged.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("DAMAGED"), "{}", text(&check));
}

/// `relay up` on `dir`, expected to stop at once.
fn up_on(dir: &std::path::Path, target: &str) -> std::process::Output {
    relay(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        KEY,
        "--target-url",
        target,
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
