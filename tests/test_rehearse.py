"""``llamadeploy rehearse`` end to end on the shared sandbox: the suite's only full rehearsal (~2 min).

It reuses the sandbox named by ``LLAMADEPLOY_SANDBOX_DIR`` (``sandbox up`` is
idempotent) and moves the alias, so it holds the sandbox alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llamadeploy.sandbox.state import SandboxState

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[1]


def test_rehearse_promotes_the_good_release_and_rolls_back_the_bad(sandbox_exclusive: SandboxState,
                                                                    tmp_path: Path) -> None:
    from pytest_llamadeploy.policy import load_policy

    plan = load_policy(str(ROOT / "policies"), "sandbox").policy.plan
    env = {**os.environ, "LLAMADEPLOY_SANDBOX_DIR": str(sandbox_exclusive.directory)}
    result = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", "rehearse",
                             "--alluredir", str(tmp_path / "allure")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-3000:]
    good = re.search(r"^good release (good-\d+): promoted to 100%$", out, re.M)
    bad = re.search(r"^bad release (bad-\d+) \(error_rate=0\.3\): caught at (\w+) and rolled back; "
                    r"traffic back on the good release$", out, re.M)
    assert good and bad, out[-4000:]
    table = out.split("\n\n")[1] if "\n\n" in out else out
    rows = [ln.split() for ln in table.splitlines() if ln.startswith(("good-", "bad-"))]
    good_rows = [r for r in rows if r[0] == good.group(1)]
    bad_rows = [r for r in rows if r[0] == bad.group(1)]
    # Every stage of the plan passed for the good release, in order, and it ended at 100 %.
    assert [(r[1], r[2]) for r in good_rows] == [(stage, "passed") for stage in plan], table
    assert all(part.endswith("100%") and "+" not in part
               for part in " ".join(good_rows[-1][4:]).split(";")), good_rows[-1]
    # The bad release was rolled back at the stage that caught it (the deploy stage's functional suite,
    # through the preview stage, when the fault breaks what it tests), traffic back at 100 % on the good one.
    assert bad_rows and bad_rows[-1][2] == "rolled_back" and bad_rows[-1][1] == bad.group(2), table
    assert all(r[2] == "passed" for r in bad_rows[:-1]), table
    assert "+" not in " ".join(bad_rows[-1][4:]) and "100%" in " ".join(bad_rows[-1][4:]), bad_rows[-1]
    assert any((tmp_path / "allure").glob("*-result.json")), "no Allure results were written"
    # The good release baked every watched stage to its end with every trigger on (issue 14's per-version
    # comparisons from shift10), and no probe or active check failed: no false rollback, no flattery.
    logs = ROOT / re.search(r"logs in (\S+)", out).group(1)  # type: ignore[union-attr]
    policy = load_policy(str(ROOT / "policies"), "sandbox").policy
    for stage in (s for s in plan if policy.stages[s].watch):
        log = (logs / f"{good.group(1)}-{stage}.log").read_text()
        assert "bake complete, no trigger fired" in log, log[-3000:]
        probes = re.findall(r"probes (\d+)/(\d+) ok", log)
        assert probes and probes[-1][0] == probes[-1][1] != "0", probes[-1:]
        if policy.stages[stage].action == "shift":
            assert all(name in log for name in ("latency_vs_old", "db_time_vs_old", "cache_hit_vs_old",
                                                "event_delivery_ratio", "event_latency_vs_old")), log[-3000:]

    status = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", "status", "--env", "sandbox", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    data = json.loads(status.stdout)
    records = {r["release"]: r["stages"] for r in data["releases"]}
    assert records[good.group(1)] == dict.fromkeys(plan, "passed"), records[good.group(1)]
    assert "rolled_back" in records[bad.group(1)].values(), records[bad.group(1)]
    state = SandboxState.load(sandbox_exclusive.directory)
    good_versions = state.versions[good.group(1)]["lambda_versions"]
    for function, alias in data["functions"].items():
        assert str(alias["version"]) == str(good_versions[function]) and not alias.get("weights"), data["functions"]
