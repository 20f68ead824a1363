//! `relay demo` as a user runs it: it finishes, reports, and loses nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use assert_cmd::Command;
use serde_json::Value;

#[test]
fn the_demo_delivers_everything_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Command::new(common::relay_bin())
        .args([
            "demo",
            "--rps",
            "100",
            "--duration",
            "2s",
            "--target-rate",
            "40",
            "--json",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(report["sent"], 200);
    assert_eq!(report["acked_within_500ms"], 200);
    assert_eq!(report["delivered"], 200);
    assert_eq!(
        (report["lost"].as_u64(), report["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    // The store was kept where asked, and agrees.
    let counts = relay_store::Reader::open(&data)
        .unwrap()
        .status_counts()
        .unwrap();
    assert_eq!(counts.delivered, 200);
}
