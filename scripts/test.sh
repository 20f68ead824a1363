#!/usr/bin/env bash
# Runs every check and test of the workspace, exactly as CI does. Needs only the Rust toolchain;
# uses cargo-nextest when installed (faster, isolated tests), `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  echo "==> cargo nextest run"
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "==> cargo test (cargo-nextest not installed)"
  cargo test --workspace --locked --no-fail-fast
fi

# The README's cargo commands, exactly as a new user types them (tests/readme.rs runs every
# `relay …` line of the README with --help, and checks that this list matches the README).
echo "==> README: the commands a new user runs first"
cargo build --release
cargo run --release -- demo
