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
