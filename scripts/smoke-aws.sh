#!/usr/bin/env bash
# Post-deploy smoke test of a deployed stack, from `terraform output -json` (OUTPUTS_JSON): one
# event through API Gateway is acknowledged (202), a wrong key is refused (401), and the event is
# delivered within two minutes (its STATE item says so). Needs curl, jq and the AWS CLI with the
# deploy role's credentials; exits 1 with the reason on any failure.
set -euo pipefail
outputs=${1:?usage: scripts/smoke-aws.sh OUTPUTS_JSON}
# AWS CLI v1 reads only AWS_DEFAULT_REGION; v2 and the SDKs read AWS_REGION too.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-${AWS_REGION:-}}
out() { jq -er ".$1.value" "$outputs"; }
api=$(out api_url)
table=$(out events_table)
key=$(aws secretsmanager get-secret-value --secret-id "$(out api_keys_secret)" \
  --query SecretString --output text | tr ',\n' '  ' | awk '{print $NF}')
id="smoke-$(date +%s)-$RANDOM"
event=$(jq -cn --arg id "$id" '{id: $id, name: "smoke.test", body: "{}", timestamp: (now * 1000 | floor)}')

post() { curl -sS -o /dev/null -w '%{http_code}' -X POST "$api/events" \
  -H "x-api-key: $1" -H 'content-type: application/json' -d "$event"; }

status=$(post "not-$key")
[ "$status" = 401 ] || { echo "smoke: a wrong key got $status, expected 401" >&2; exit 1; }
status=$(post "$key")
[ "$status" = 202 ] || { echo "smoke: $id got $status, expected 202" >&2; exit 1; }
echo "smoke: $id accepted; waiting for its delivery"

for _ in $(seq 1 60); do
  state=$(aws dynamodb get-item --table-name "$table" --consistent-read \
    --key "{\"pk\":{\"S\":\"EVT#$id\"},\"sk\":{\"S\":\"STATE\"}}" \
    --query 'Item.status.S' --output text 2>/dev/null || true)
  case "$state" in
    delivered) echo "smoke: $id delivered"; exit 0 ;;
    dead) echo "smoke: $id was dead-lettered: relay trace $id --backend aws" >&2; exit 1 ;;
  esac
  sleep 2
done
echo "smoke: $id not delivered within 2 minutes (last state: ${state:-none})" >&2
exit 1
