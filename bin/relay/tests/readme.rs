//! The README's commands cannot rot: every command line in its `sh` blocks is either run as
//! written by `scripts/test.sh` (the cargo commands) or run here, by the shell, against the built
//! binary with `--help` appended. Clap parses every flag and value before it prints help, so a
//! renamed flag or a bad value fails here.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;

/// Lines `scripts/test.sh` runs as they are written.
const RUN_BY_TEST_SCRIPT: [&str; 3] = [
    "cargo run --release -- demo",
    "cargo build --release",
    "scripts/test.sh",
];

/// The command lines of the README's `sh` blocks: continuations joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match trimmed.find(" #") {
            Some(at) if !trimmed[..at].contains('\'') => &trimmed[..at],
            _ => trimmed,
        };
        if code.starts_with('#') || code.is_empty() {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(code);
                commands.push(std::mem::take(&mut current).trim().to_owned());
            }
        }
    }
    commands
}

#[test]
fn every_readme_command_is_exercised() {
    let commands = readme_commands();
    assert!(
        commands.iter().any(|c| c.starts_with("relay up")),
        "the README lost its commands? {commands:#?}"
    );
    let mut checked = 0;
    for command in &commands {
        if RUN_BY_TEST_SCRIPT.contains(&command.as_str()) || command.starts_with("export PATH=") {
            continue;
        }
        assert!(
            command.starts_with("relay "),
            "README command {command:?} is neither a relay command nor run by scripts/test.sh"
        );
        // The shell expands quotes and variables as a user's would; `relay` is the built binary
        // with --help after the README's own arguments.
        let script = format!(
            "relay() {{ \"$RELAY_BIN\" \"$@\" --help; }}\n{}",
            command.trim_end_matches('&').trim()
        );
        let output = Command::new("sh")
            .args(["-c", &script])
            .env("RELAY_BIN", common::relay_bin())
            .env("TARGET_TOKEN", "t0ken")
            .env("TARGET_URL", "https://api.example.com/graphql")
            .env("RELAY_API_KEY", "k3y")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "README command failed: {command}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} relay commands found");
}

#[test]
fn the_test_script_runs_the_readme_cargo_commands_as_written() {
    let script = include_str!("../../../scripts/test.sh");
    for command in RUN_BY_TEST_SCRIPT {
        if command == "scripts/test.sh" {
            continue;
        }
        assert!(
            script.lines().any(|l| l.trim() == command),
            "scripts/test.sh does not run `{command}`"
        );
    }
    let readme = readme_commands();
    for command in RUN_BY_TEST_SCRIPT {
        assert!(
            readme.iter().any(|c| c == command),
            "`{command}` is no longer in the README: update RUN_BY_TEST_SCRIPT"
        );
    }
}
