#!/bin/bash
# Finding 9: hostile YAML through `policy check`, time and peak memory measured.
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"
mk() { d=$OUT/f9-$1; rm -rf $d; cp -r policies $d; echo $d; }
chk() { /usr/bin/time -f "%e s, %M KB max RSS" timeout 60 .venv/bin/python -m pytest_llamadeploy.cli policy check $1 > $OUT/out.txt 2>&1; rc=$?; echo "exit $rc, $(tail -1 $OUT/out.txt), output $(wc -c <$OUT/out.txt) bytes"; grep -m2 error $OUT/out.txt | cut -c1-300; }
# 9-level billion laughs (~2 KB)
d=$(mk bomb); python3 - > $d/prod.yaml <<'PY'
print('extends: defaults')
print('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
prev='a'
for c in 'bcdefghi':
    print(f'{c}: &{c} [' + ','.join(['*'+prev]*9) + ']')
    prev=c
PY
echo "bomb $(wc -c <$d/prod.yaml) bytes:"; chk $d
d=$(mk bomb7); python3 - > $d/prod.yaml <<'PY'
print('extends: defaults')
print('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
prev='a'
for c in 'bcdefg':
    print(f'{c}: &{c} [' + ','.join(['*'+prev]*9) + ']')
    prev=c
print('stages: *g')
PY
echo "7-level bomb used as a value:"; chk $d
d=$(mk dup); cat policies/prod.yaml > $d/prod.yaml; printf 'targets:\n  api_url: https://evil.example\n' >> $d/prod.yaml
echo "duplicate top-level key targets:"; chk $d
d=$(mk dup2); .venv/bin/python - $d/prod.yaml <<'PY'
import sys
p=sys.argv[1]; t=open(p).read()
print([l for l in t.splitlines() if 'api_url' in l])
PY
d=$(mk latin); printf '# caf\xe9\n' >> $d/prod.yaml
echo "non-UTF-8:"; chk $d
