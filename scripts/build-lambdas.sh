#!/usr/bin/env bash
# Builds the four Lambda functions as deployable zips (x86_64, release, stripped):
#   target/lambda/relay-{authorizer,receiver,forwarder,dispatcher}/bootstrap.zip
# Installs cargo-lambda (PyPI; it brings zig as the cross linker) into .venv-lambda if needed.
# Pass --arm64 for Graviton; other arguments go to `cargo lambda build`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-lambda/bin/cargo-lambda ]; then
  echo "==> installing cargo-lambda into .venv-lambda"
  python3 -m venv .venv-lambda
  .venv-lambda/bin/pip install --quiet "cargo-lambda==1.9.2"
fi
export PATH="$PWD/.venv-lambda/bin:$PATH"

cargo lambda build --release --output-format zip \
  -p relay-authorizer -p relay-receiver -p relay-forwarder -p relay-dispatcher "$@"

python3 - "${CARGO_TARGET_DIR:-target}/lambda" <<'PY'
import os, sys, zipfile
print("| function | bootstrap | zip |\n|---|---|---|")
for f in ("authorizer", "receiver", "forwarder", "dispatcher"):
    path = os.path.join(sys.argv[1], f"relay-{f}", "bootstrap.zip")
    raw = zipfile.ZipFile(path).getinfo("bootstrap").file_size
    print(f"| relay-{f} | {raw / 1e6:.1f} MB | {os.path.getsize(path) / 1e6:.1f} MB |")
PY
