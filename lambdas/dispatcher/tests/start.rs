//! The built dispatcher reads `relay up`'s delivery settings from its environment: a bad or
//! missing one stops its start, before it reaches AWS or the runtime, with a message that names
//! the variable (and never repeats the value).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

fn start(env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-dispatcher"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_setting_stops_the_start_naming_its_variable() {
    let (ok, stderr) = start(&[]);
    assert!(!ok);
    assert!(stderr.contains("RELAY_TARGET_URL must be set"), "{stderr}");

    let url = ("RELAY_TARGET_URL", "http://127.0.0.1:9/graphql");
    for (variable, value, said) in [
        (
            "RELAY_TARGET_RATE",
            "lots",
            "RELAY_TARGET_RATE is not valid",
        ),
        ("RELAY_MAX_ATTEMPTS", "0", "RELAY_MAX_ATTEMPTS is not valid"),
        ("RELAY_MAX_AGE", "forever", "RELAY_MAX_AGE is not valid"),
        ("RELAY_BATCH", "501", "RELAY_BATCH is not valid"),
        (
            "RELAY_HEADER_SECRET",
            "vault:token-xyz",
            "RELAY_HEADER_SECRET is not valid",
        ),
    ] {
        let (ok, stderr) = start(&[url, (variable, value)]);
        assert!(!ok, "{variable}={value} was taken");
        assert!(stderr.contains(said), "{variable}: {stderr}");
        assert!(
            !stderr.contains("token-xyz"),
            "the value is not repeated: {stderr}"
        );
    }

    // Settings that contradict each other, in the flags' words, as `relay up` says them.
    let (ok, stderr) = start(&[
        url,
        ("RELAY_BACKOFF_BASE", "10m"),
        ("RELAY_BACKOFF_CAP", "1m"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--backoff-base (10m) must not exceed --backoff-cap (1m)"),
        "{stderr}"
    );
}
