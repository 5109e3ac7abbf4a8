"""Hostile YAML (issue 12, finding 9): aliases, duplicate keys, non-UTF-8, size, error text that never floods."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.policy import PolicyError, load_policy
from pytest_llamadeploy.policy_yaml import MAX_BYTES, PolicyYamlError, read_policy_yaml
from tests.support.forked import run_forked
from tests.test_policy import pdir  # noqa: F401  (a copy of policies/ to edit)

REPO = Path(__file__).parent.parent
pytest_plugins = ["pytester"]


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs' in a valid-looking env policy: 10**levels strings once expanded, ~600 bytes written."""
    lines = ["extends: defaults", "deploy:", "  argv: [x]", "plan: [deploy]", "stages:",
             "  deploy: {action: deploy, weight: 0%}",
             'x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# Run apart, under a 2 GiB address-space limit and a timeout: before the loader refused aliases,
# this bomb ran `policy check` past 60 s and 2.9 GB; a regression must fail here, not take the host.
_MEASURE = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from pytest_llamadeploy import policy_cli  # imports (pydantic) before the clock starts
from pytest_llamadeploy.cli import main
err = io.StringIO()
# CPU time, not wall time: an expanding bomb costs CPU seconds, and a loaded CI runner (load 13 on
# 2 cores) stretched 100-150 ms of work to 1.26 s of wall time.
start = time.process_time()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = main(["policy", "check", sys.argv[1]])
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child spawned by a
# 260 MB pytest worker reported 262 MB in CI; VmHWM belongs to this process's own address space.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": time.process_time() - start, "err": err.getvalue(),
                  "maxrss_mb": int(hwm.split()[1]) / 1024}))
"""


@pytest.mark.sandbox
def test_alias_bomb_is_refused_in_milliseconds_without_expanding(pdir: Path) -> None:  # noqa: F811
    (pdir / "bomb.yaml").write_text(alias_bomb())
    assert (pdir / "bomb.yaml").stat().st_size < 2048
    try:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(pdir)], capture_output=True, text=True, timeout=30,
                             cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("policy check on a 600-byte alias bomb ran over 30 s")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["rc"] == 1
    assert f"{pdir / 'bomb.yaml'}: line 7, column 5: anchor &x0 is not allowed" in result["err"]
    assert result["seconds"] < 1.0, result  # measured 100-150 ms of CPU for all five files, ~7 ms of it the bomb
    assert result["maxrss_mb"] < 250, result  # the interpreter and pydantic: ~60 MB
    # The loader alone, in process: refused at the first anchor, nothing expanded.
    tracemalloc.start()
    start = time.thread_time()
    with pytest.raises(PolicyYamlError, match="anchor &x0"):
        read_policy_yaml(pdir / "bomb.yaml")
    elapsed = time.thread_time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.2 and peak < 2 * 1024 * 1024, (elapsed, peak)


def test_a_lone_alias_or_merge_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb: *a\n")
    with pytest.raises(PolicyYamlError, match=r"x.yaml: line 2, column 4: alias \*a is not allowed"):
        read_policy_yaml(path)
    path.write_text("targets:\n  <<: {api_url: https://evil.example}\n  api_url: https://api.llama.fi\n")
    with pytest.raises(PolicyYamlError, match=r"line 2, column 3: merge key `<<` is not allowed"):
        read_policy_yaml(path)


def test_duplicate_keys_are_refused_at_any_level_naming_both_lines(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    text = (pdir / "prod.yaml").read_text()
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  api_url:")) + 1
    # A second targets.api_url further down the same mapping silently won before.
    sneaky = text.replace("  ws_url: wss://api.llama.fi\n", "  ws_url: wss://api.llama.fi\n  api_url: https://evil.example\n")
    (pdir / "prod.yaml").write_text(sneaky)
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, "prod")
    (problem,) = info.value.problems
    assert problem.startswith(f"{pdir / 'prod.yaml'}: line {first + 2}")
    assert f"duplicate key 'api_url' at line {first} and line {first + 2}" in problem
    # At the top level too, and `policy check` says the same with a non-zero exit.
    (pdir / "prod.yaml").write_text(text + "\nrollback_on_failure: false\n")
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert f"{pdir / 'prod.yaml'}: line" in err and "duplicate key 'rollback_on_failure'" in err
    # Once, not once per env that extends prod.yaml (it was printed three times).
    assert err.count("duplicate key 'rollback_on_failure'") == 1 and "(envs: prod, sandbox, sandbox-aws)" in err


def test_non_utf8_policy_names_file_and_byte_offset(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    raw = (pdir / "staging.yaml").read_bytes()
    offset = raw.index(b"Pre-production")
    (pdir / "staging.yaml").write_bytes(raw[:offset] + "Pré".encode("latin-1") + raw[offset + 3:])
    with pytest.raises(PolicyError, match=rf"staging.yaml: not UTF-8: byte 0xe9 at byte offset {offset + 2} \(line 2\)"):
        load_policy(pdir, "staging")
    assert cli(["policy", "check", str(pdir)]) == 1
    assert f"byte offset {offset + 2}" in capsys.readouterr().err


@pytest.mark.sandbox
def test_non_utf8_policy_is_a_usage_error_in_pytest_not_internalerror(pytester: pytest.Pytester) -> None:
    shutil.copytree(REPO / "policies", pytester.path / "policies")
    path = pytester.path / "policies" / "staging.yaml"
    path.write_bytes(path.read_bytes() + b"\n# caf\xe9\n")
    r = run_forked(pytester, "-p", "no:cacheprovider", "--env=staging", "--stage=verify", timeout=60)
    assert r.ret == 4
    err = r.stderr.str()
    assert "staging.yaml: not UTF-8: byte 0xe9 at byte offset" in err
    assert "INTERNALERROR" not in err and "Traceback" not in err


def test_oversized_policy_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("description: '" + "x" * MAX_BYTES + "'\n")
    with pytest.raises(PolicyYamlError, match=r"big.yaml: \d+ bytes, over the 256 KiB limit"):
        read_policy_yaml(path)


def nest(depth: int, width: int) -> str:
    return "1" if depth == 0 else "[" + ",".join([nest(depth - 1, width)] * width) + "]"


def test_error_text_stays_short_for_huge_and_nested_values(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # Before, every unknown or mistyped value was printed whole (39 MB for a 7-level structure), and
    # every item of a list had its own line; now a value is cut, and one mistake is one line.
    (pdir / "staging.yaml").write_text((pdir / "staging.yaml").read_text()
                                       + f"notes: {nest(7, 3)}\n"
                                       + f"service:\n  alias: [{'x' * 200_000}]\n"
                                       + "preflight:\n  window_days: [" + ",".join(["9"] * 1000) + "]\n"
                                       + "".join(f"unknown_{i}: {i}\n" for i in range(60)))
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert len(err) < 25_000, len(err)
    assert "staging.yaml: notes = [[[[[[[1, 1, 1]" in err and "more chars)" in err
    assert "service.alias = ['xxxx" in err
    assert ("preflight.window_days.0 = 9: 9 is outside the allowed range: 1 .. 7 (and 999 more items like it)"
            in err)
    assert "staging.yaml: unknown_0 = 0: unknown key" in err and "... and 23 more problems (fix these first)" in err
    assert all(len(line) <= 460 for line in err.splitlines())


def test_too_many_values_are_refused_before_they_cost_seconds(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(f"notes: {nest(7, 6)}\n")  # 335,923 values, 0.67 MB
    with pytest.raises(PolicyYamlError, match=r"over the 256 KiB limit"):
        read_policy_yaml(path)
    path.write_text(f"notes: {nest(5, 6)}\n")  # 9,331 values in 18 KB: 0.6 s to parse whole
    start = time.thread_time()  # CPU time: a loaded runner stretched the wall time past 2 s
    with pytest.raises(PolicyYamlError, match="x.yaml: line 1, column .*: more than 5000 values in one file"):
        read_policy_yaml(path)
    assert time.thread_time() - start < 2.0


def test_deep_nesting_huge_integers_and_bad_dates_are_errors_not_tracebacks(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(PolicyYamlError, match="nested more than 16 levels deep"):
        read_policy_yaml(path)
    path.write_text("watch:\n  provider_error_limit: " + "9" * 5000 + "\n")
    with pytest.raises(PolicyYamlError, match=r"x.yaml: line 2, column 25: '9999.*more chars\).* cannot be read"):
        read_policy_yaml(path)
    path.write_text("when: 2024-02-31\n")
    with pytest.raises(PolicyYamlError, match="line 1, column 7: '2024-02-31' cannot be read: day is out of range"):
        read_policy_yaml(path)


_REIMPORTED = """
import sys
from pathlib import Path

import yaml, yaml._yaml  # the C module keeps the yaml.events classes of this first import
for name in [m for m in sys.modules if m.split(".")[0] in ("yaml", "pytest_llamadeploy")]:
    del sys.modules[name]  # as pytester does between tests
from pytest_llamadeploy.policy_yaml import read_policy_yaml

print(sorted(read_policy_yaml(Path(sys.argv[1]))))
"""


@pytest.mark.sandbox  # a fresh interpreter, whose sys.modules it changes
def test_a_policy_reads_after_the_yaml_modules_were_imported_again() -> None:
    # libyaml's events then match none of the composer's classes: every file failed with an
    # UnboundLocalError inside PyYAML's composer (seen in a pytester test after another one).
    done = subprocess.run([sys.executable, "-c", _REIMPORTED, str(Path(__file__).parents[1] / "policies" / "prod.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'extends'" in done.stdout and "'approval'" in done.stdout, done.stdout
