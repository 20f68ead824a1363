//! The command line itself: help that teaches, and usage errors that exit 2 and say why.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use assert_cmd::Command;

fn relay() -> Command {
    let mut cmd = Command::new(common::relay_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn help_lists_the_commands_and_teaches_up() {
    let out = relay()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for cmd in [
        "demo", "up", "trace", "dlq", "status", "e2e", "target", "simulate",
    ] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = relay()
        .args(["up", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for flag in [
        "--target-url",
        "--api-key",
        "--data-dir",
        "--target-rate",
        "--brand",
        "RELAY_API_KEY",
        "Example:",
    ] {
        assert!(
            text.contains(flag),
            "`relay up --help` lacks {flag}:\n{text}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--api-key", "k", "--data-dir", "d"], "--target-url"),
        (
            &["up", "--target-url", "http://t", "--data-dir", "d"],
            "--api-key",
        ),
        (
            &[
                "up",
                "--target-url",
                "localhost:80",
                "--api-key",
                "k",
                "--data-dir",
                "d",
            ],
            "--target-url",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "k",
                "--data-dir",
                "d",
                "--target-rate=-3",
            ],
            "--target-rate",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "",
                "--data-dir",
                "d",
            ],
            "--api-key",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "k",
                "--data-dir",
                "d",
                "--max-age",
                "soon",
            ],
            "--max-age",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "k",
                "--data-dir",
                "d",
                "--header",
                "NoColon",
            ],
            "--header",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "k",
                "--data-dir",
                "d",
                "--max-attempts",
                "0",
            ],
            "--max-attempts",
        ),
        (
            &[
                "up",
                "--target-url",
                "http://t",
                "--api-key",
                "k",
                "--data-dir",
                "d",
                "--backoff-base",
                "10s",
                "--backoff-cap",
                "1s",
            ],
            "--backoff-cap",
        ),
        (&["target", "--rate", "0"], "--rate"),
        (
            &["target", "--rate", "5", "--fail-rate", "2"],
            "--fail-rate",
        ),
        (
            &[
                "simulate",
                "--url",
                "http://x",
                "--api-key",
                "k",
                "--rps",
                "5",
            ],
            "--duration",
        ),
        (
            &[
                "simulate",
                "--url",
                "http://x",
                "--api-key",
                "k",
                "--rps",
                "5",
                "--count",
                "3",
                "--duration",
                "1s",
            ],
            "--count",
        ),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, flag) in cases {
        let out = relay()
            .args(*args)
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(flag),
            "{args:?}: stderr does not name {flag}:\n{text}"
        );
    }
}

#[test]
fn flags_fall_back_to_relay_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    // Every required flag of `up` comes from the environment, so parsing succeeds and the start
    // reaches its own check of two settings that contradict each other: a binary that ignored
    // any of the variables would stop earlier, at a missing argument.
    relay()
        .args(["up"])
        .env("RELAY_TARGET_URL", "http://127.0.0.1:9/graphql")
        .env("RELAY_API_KEY", "k1,k2")
        .env("RELAY_DATA_DIR", dir.path())
        .env("RELAY_BACKOFF_BASE", "10m")
        .env("RELAY_BACKOFF_CAP", "1m")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--backoff-base (10m) must not exceed --backoff-cap (1m)",
        ));
    // And a bad value from the environment is refused as the flag's would be.
    relay()
        .args(["up"])
        .env("RELAY_TARGET_URL", "http://127.0.0.1:9/graphql")
        .env("RELAY_API_KEY", "k")
        .env("RELAY_DATA_DIR", dir.path())
        .env("RELAY_TARGET_RATE", "nope")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--target-rate"));
}

#[test]
fn target_headers_come_from_the_environment_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    // The second line is malformed: the refusal proves every line was read and checked.
    relay()
        .args([
            "up",
            "--target-url",
            "http://127.0.0.1:9/graphql",
            "--api-key",
            "k",
        ])
        .env("RELAY_DATA_DIR", dir.path())
        .env("RELAY_HEADERS", "Authorization: Bearer abc\nNoColonHere")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("NoColonHere"));
}

#[test]
fn a_data_dir_that_is_not_a_relay_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.db"), b"this is not sqlite at all, just text padding..........................................................................").unwrap();
    relay()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "k",
            "--target-url",
            "http://127.0.0.1:9/graphql",
            "--data-dir",
        ])
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicates::str::contains("relay.db"));
}
