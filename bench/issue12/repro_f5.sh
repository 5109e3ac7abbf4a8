#!/bin/bash
# Finding 5: each hostile prod value of the issue, appended to a copy of the shipped policies.
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
run() {
  name=$1; shift
  d=$OUT/f5-$name; rm -rf $d; cp -r policies $d
  .venv/bin/python - "$d/prod.yaml" "$@" <<'PY'
import sys, yaml
path, key, val = sys.argv[1], sys.argv[2], sys.argv[3]
doc = yaml.safe_load(open(path))
node = doc
parts = key.split(".")
for p in parts[:-1]:
    node = node.setdefault(p, {})
node[parts[-1]] = yaml.safe_load(val)
open(path, "w").write(yaml.safe_dump(doc))
PY
  out=$(timeout 60 .venv/bin/python -m pytest_llamadeploy.cli policy check $d 2>&1); rc=$?
  echo "[$name] $2=$3 -> exit $rc: $(echo "$out" | grep -m1 -i 'error' | cut -c1-260)"
}
run weight stages.deploy.weight '100%'
run promote stages.shift10.action promote
run home approval.env_vars '[HOME]'
run lease0 ledger.lease 0s
run file ledger.backend file
run nan performance.api_p95 .nan
run inf compare.min_p95_delta .inf
run suites stages.shift10.suites '[]'
run probe watch.probe_rate 0
run bake stages.shift10.bake .nan
