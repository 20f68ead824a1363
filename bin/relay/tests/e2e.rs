//! `relay e2e` itself: it passes against a correct relay, and its checks fail when the far end
//! loses or duplicates events.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use assert_cmd::Command;
use serde_json::Value;

fn e2e(args: &[&str]) -> (Option<i32>, Value) {
    let output = Command::new(common::relay_bin())
        .arg("e2e")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), json)
}

/// Every scenario, in the order `relay e2e` runs them.
const SCENARIOS: [&str; 7] = [
    "steady",
    "outage",
    "storm429",
    "graphql-limits",
    "dlq-redrive",
    "sigkill",
    "batches",
];

fn scenario<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == name)
        .unwrap()
}

/// The same scenarios on the AWS backend, against a local AWS API: `relay up --backend aws`
/// on a stack per scenario, and `relay dlq` on AWS for the redrive.
#[test]
fn every_scenario_passes_on_aws() {
    let moto = relay_aws::testing::MotoServer::start();
    let (code, report) = e2e(&["--backend", "aws", "--endpoint-url", &moto.url]);
    assert_eq!(code, Some(0), "{report:#}");
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, SCENARIOS);
    for s in report["scenarios"].as_array().unwrap() {
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["acked"], s["delivered"], "{s}");
    }
    assert!(
        scenario(&report, "dlq-redrive")["notes"]
            .to_string()
            .contains("10 dead-lettered, 10 redriven"),
        "{report:#}"
    );
    // Without a local AWS API it would create stacks in an account: refused.
    let no_endpoint = Command::new(common::relay_bin())
        .args(["e2e", "--backend", "aws"])
        .env_remove("RELAY_ENDPOINT_URL")
        .output()
        .unwrap();
    assert_eq!(no_endpoint.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_endpoint.stderr).contains("--endpoint-url"));
}

#[test]
fn every_scenario_passes_against_the_relay() {
    let (code, report) = e2e(&[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["passed"], true);
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, SCENARIOS);
    for s in report["scenarios"].as_array().unwrap() {
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["acked"], s["delivered"], "{s}");
    }
    assert!(
        scenario(&report, "storm429")["rate_limited"]
            .as_u64()
            .unwrap()
            >= 5
    );
    assert!(
        scenario(&report, "batches")["notes"]
            .to_string()
            .contains("per request"),
        "{report:#}"
    );
}

#[test]
fn a_target_that_drops_events_fails_the_run() {
    let (code, report) = e2e(&["--scenario", "steady", "--inject", "drop"]);
    assert_eq!(code, Some(1), "{report:#}");
    let steady = scenario(&report, "steady");
    assert_eq!(steady["passed"], false);
    assert_eq!(
        steady["lost"].as_array().unwrap().len(),
        12,
        "every 50th of 600 acknowledged but dropped: {steady}"
    );
}

#[test]
fn a_target_that_duplicates_events_fails_the_run() {
    let (code, report) = e2e(&["--scenario", "steady", "--inject", "duplicate"]);
    assert_eq!(code, Some(1), "{report:#}");
    let steady = scenario(&report, "steady");
    assert_eq!(steady["passed"], false);
    assert_eq!(
        steady["duplicated"].as_array().unwrap().len(),
        12,
        "{steady}"
    );
    assert!(steady["lost"].as_array().unwrap().is_empty());
}

#[test]
fn only_known_backends_and_scenarios_are_accepted() {
    for args in [
        &["e2e", "--backend", "cloud"][..],
        &["e2e", "--scenario", "meteor"],
        &["e2e", "--inject", "chaos"],
    ] {
        Command::new(common::relay_bin())
            .args(args)
            .assert()
            .code(2);
    }
}

/// The AWS scenarios that crash, dead-letter and batch, with a faulty AWS API between relay and
/// the local one: 5 % of calls meet a 500, throttling, a dropped connection (before or after
/// the call is made) or a slow answer. Nothing acknowledged may be lost.
#[test]
fn the_aws_scenarios_lose_nothing_through_a_faulty_aws_api() {
    let moto = relay_aws::testing::MotoServer::start();
    let (code, report) = e2e(&[
        "--backend",
        "aws",
        "--endpoint-url",
        &moto.url,
        "--aws-faults",
        "0.05",
        "--scenario",
        "sigkill",
        "--scenario",
        "dlq-redrive",
        "--scenario",
        "batches",
    ]);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        report["aws_faults"]["injected"].as_u64().unwrap() > 50,
        "{report:#}"
    );
    assert!(
        report["aws_faults"]["drop_after"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    for s in report["scenarios"].as_array().unwrap() {
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["acked"], s["delivered"], "{s}");
        assert_eq!(s["lost"].as_array().map(Vec::len), Some(0), "{s}");
    }
    // Faults are for the AWS backend only.
    let local = Command::new(common::relay_bin())
        .args(["e2e", "--aws-faults", "0.05"])
        .output()
        .unwrap();
    assert_eq!(local.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&local.stderr).contains("needs --backend aws"));
}

/// `relay soak` itself, briefly: SIGKILLs, disk faults and a flaky target, and its table.
#[test]
fn a_short_soak_kills_faults_and_loses_nothing() {
    let output = Command::new(common::relay_bin())
        .args([
            "soak",
            "--duration",
            "12s",
            "--kill-every",
            "4s",
            "--rps",
            "40",
            "--json",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    let soak = &report["soak"];
    assert!(soak["kills"].as_u64().unwrap() >= 2, "{soak}");
    assert!(soak["acked"].as_u64().unwrap() > 200, "{soak}");
    assert_eq!(soak["lost"].as_array().map(Vec::len), Some(0), "{soak}");
    assert!(
        soak["delivered"].as_u64().unwrap() + soak["dead_lettered"].as_u64().unwrap()
            >= soak["acked"].as_u64().unwrap(),
        "{soak}"
    );
    assert!(
        soak["target_failures"].as_u64().unwrap() > 0,
        "the target was flaky: {soak}"
    );
    assert!(
        !soak["notes"].to_string().contains("not built into"),
        "the tested binary injects disk faults: {soak}"
    );
}
