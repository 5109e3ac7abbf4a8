#!/bin/bash
# Findings 6 and 12 at the pytest command line, no AWS credentials, from the repository root.
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
p() { echo "\$ pytest $*"; out=$(timeout 120 .venv/bin/python -m pytest -p no:cacheprovider "$@" 2>&1); rc=$?; echo "  exit $rc: $(echo "$out" | grep -v '^$' | grep -iv 'warning' | grep -m3 -i 'error\|refus\|usage\|not ' | cut -c1-330)"; echo "  traceback: $(echo "$out" | grep -c Traceback)"; }
p --env=./prod --stage=deploy --release=v1 --plan
p --env=prod/ --stage=shift10 --release=v1 --plan
p --env=staging --stage=deploy "--release=$(printf 'v1\n')" --plan
p --env=staging --stage=verify --to-version=3
p --env=staging --stage=verify --rds
p --env=staging --stage=verify --backup-id=b-1
p --env=staging --stage=deploy --release=v1 --plan
