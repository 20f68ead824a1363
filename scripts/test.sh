#!/usr/bin/env bash
# Runs every check and test of the workspace, exactly as CI does. Needs the Rust toolchain and
# Python 3 (for the local AWS API); uses cargo-nextest when installed (faster, isolated tests),
# `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

# The AWS tests run against moto, a local AWS API, each on a private server they start.
if [ ! -x .venv-moto/bin/moto_server ]; then
  echo "==> installing the local AWS API (moto) into .venv-moto"
  python3 -m venv .venv-moto
  .venv-moto/bin/pip install --quiet "moto[server]==5.2.5"
fi

# The built Lambda functions are invoked under cargo-lambda's local Runtime API.
if [ ! -x .venv-lambda/bin/cargo-lambda ]; then
  echo "==> installing cargo-lambda (a local Lambda Runtime API, and the Lambda build) into .venv-lambda"
  python3 -m venv .venv-lambda
  .venv-lambda/bin/pip install --quiet "cargo-lambda==1.9.2"
fi

# The Python test peers, from relay's counterparts rather than its own code: signed requests are
# checked against the Standard Webhooks reference signer, and OTLP is decoded by the
# opentelemetry-proto package.
if [ ! -x .venv-webhooks/bin/python ] || ! .venv-webhooks/bin/python -c "import standardwebhooks, opentelemetry.proto" 2>/dev/null; then
  echo "==> installing the Python test peers (standardwebhooks, opentelemetry-proto) into .venv-webhooks"
  python3 -m venv .venv-webhooks
  .venv-webhooks/bin/pip install --quiet "standardwebhooks==1.3.0" "opentelemetry-proto==1.29.0"
fi

# The deploy pipeline's smoke test (scripts/smoke-aws.sh) runs on the AWS CLI; it is tested
# against moto too.
if ! command -v aws >/dev/null 2>&1 && [ ! -x .venv-awscli/bin/aws ]; then
  echo "==> installing the AWS CLI into .venv-awscli"
  python3 -m venv .venv-awscli
  .venv-awscli/bin/pip install --quiet "awscli==1.46.2"
fi

# Real peers from Debian's packages: Prometheus scrapes the metrics (and promtool checks the
# alert rules); Chromium (or Chrome), driven through ChromeDriver, clicks through the console.
# Installing them needs root, or sudo without a password (as on GitHub's runners).
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian's packages)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
      echo "missing ${missing[*]}, and this is not root: run 'sudo apt-get install ${missing[*]}' first" >&2
      exit 1
    fi
    sudo="sudo -n"
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv-browser/bin/python ] || ! .venv-browser/bin/python -c "import selenium" 2>/dev/null; then
  echo "==> installing Selenium into .venv-browser"
  python3 -m venv .venv-browser
  .venv-browser/bin/pip install --quiet "selenium==4.27.1"
fi

# The supply chain: cargo-deny (crates.io, as locked) checks every dependency's license, bans
# and source against deny.toml. Advisories need the RustSec database from GitHub, which the
# GitHub CI workflow fetches (`cargo deny check advisories` there); see deny.toml to accept one.
if [ ! -x .tools/cargo-deny/bin/cargo-deny ]; then
  echo "==> installing cargo-deny into .tools/cargo-deny (a few minutes, once)"
  cargo install cargo-deny --locked --version 0.20.2 --root .tools/cargo-deny --quiet
fi
echo "==> cargo deny check licenses bans sources"
.tools/cargo-deny/bin/cargo-deny deny --log-level error check licenses bans sources

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Terraform and the workflows: terraform fmt, checkov, actionlint (installed by the script).
scripts/check-infra.sh

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
