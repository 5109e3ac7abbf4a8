"""Extending the gate without forking (issue 16, item 2): a team's own suites, probe checks and verdict say.

The gate runs are in-process (pytester's ``runpytest_inprocess``, as tests/test_integrity.py does)
in test_gate.py's project, against the moto server of the ``aws`` fixture; the plugins are the
project's ``conftest.py``, as a team would write them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.policy import PolicyError, load_policy
from pytest_llamadeploy.suiteassign import unassigned
from pytest_llamadeploy.suitenames import KNOWN_SUITES
from pytest_llamadeploy.verdict import BROKEN_PREFIX, VETO_PREFIX, Verdict, judged
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.reliability import seed_deployed, set_policy
from tests.test_gate import NOTIFIER, ledger, project, statuses  # noqa: F401 - the gate project fixture
from tests.test_integrity import out, run

pytest_plugins = ["pytester"]

POLICIES = Path(__file__).parent.parent / "policies"
AT_ONE = {fn: ("1", {}) for fn in FUNCTIONS}

# ------------------------------------------------------------------ suites of a team's own


def _team_policy(tmp_path: Path, extra: dict[str, object]) -> Path:
    pdir = tmp_path / "policies"
    shutil.copytree(POLICIES, pdir)
    (pdir / "team.yaml").write_text(yaml.safe_dump({"extends": "staging", **extra}))
    return pdir


def test_a_stage_may_list_only_a_built_in_or_declared_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pdir = _team_policy(tmp_path, {"stages": {"verify": {"suites": ["health", "smoke"]}}})
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, "team")
    (problem,) = info.value.problems
    assert problem == (f"{pdir / 'team.yaml'}: stages.verify.suites.1 = 'smoke': unknown suite; allowed: "
                       f"{', '.join(KNOWN_SUITES)}; declare your own at the top level: suites: {{smoke: {{}}}}")
    assert cli(["policy", "check", str(pdir)]) == 1  # `policy check` holds the same catalogue
    assert "'smoke': unknown suite" in capsys.readouterr().err
    (pdir / "team.yaml").write_text(yaml.safe_dump({"extends": "staging", "suites": {"smoke": {"description": "quotes"}},
                                                    "stages": {"verify": {"suites": ["health", "smoke"]}}}))
    policy = load_policy(pdir, "team").policy
    assert policy.stages["verify"].suites == ["health", "smoke"]
    assert policy.suite_catalogue() == (*KNOWN_SUITES, "smoke")
    assert cli(["policy", "check", str(pdir)]) == 0


MARKED_MODULE = 'import pytest\npytestmark = pytest.mark.llamadeploy_suite("{suite}")\n\ndef test_a():\n    pass\n'
MARKED_TESTS = ('import pytest\n\n@pytest.mark.llamadeploy_suite("health")\ndef test_a():\n    pass\n\n'
                '@pytest.mark.llamadeploy_suite("health")\nclass TestB:\n    def test_c(self):\n        pass\n\n'
                'class TestD:\n    pytestmark = [pytest.mark.llamadeploy_suite("health")]\n\n'
                '    def test_e(self):\n        pass\n')
PLAIN = "def test_a():\n    pass\n"


def test_a_test_under_suites_in_no_suite_is_found_with_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "suites"
    files = {"health/test_h.py": PLAIN, "health/deep/test_d.py": PLAIN, "smoke/test_s.py": PLAIN,
             "quotes/test_marked_module.py": MARKED_MODULE.format(suite="smoke"),
             "quotes/test_marked_tests.py": MARKED_TESTS, "helpers/util.py": PLAIN, "test_top.py": PLAIN,
             "health/test_typo.py": MARKED_MODULE.format(suite="helth"), "extra/test_p.py": PLAIN}
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    catalogue = (*KNOWN_SUITES, "smoke")
    problems = unassigned([root], catalogue, ["test_*.py"], Path("policies/team.yaml"), "team")
    assert len(problems) == 3, problems
    extra, typo, top = problems  # by path; smoke/ is declared, quotes/ is marked, helpers/ has no tests
    assert typo.startswith(f"{root / 'health/test_typo.py'}: marked llamadeploy_suite('helth'), which is no suite of team")
    assert "declare it in policies/team.yaml at the top level (suites: {helth: {description: ...}})" in typo
    assert extra.startswith(f"{root / 'extra/test_p.py'}: test_a in folder {root / 'extra'}, which is no suite")
    assert "would run in every stage; declare it in policies/team.yaml at the top level (suites: {extra:" in extra
    assert 'or mark its tests (pytestmark = pytest.mark.llamadeploy_suite("<suite>"))' in extra
    assert top.startswith(f"{root / 'test_top.py'}: test_a in {root} itself (not in a suite's folder)")
    # Without smoke in the env's suites, its folder is refused too, and so is the marker naming it.
    problems = unassigned([root], KNOWN_SUITES, ["test_*.py"], Path("policies/team.yaml"), "team")
    assert sum("smoke" in p for p in problems) == 2


def test_a_custom_suites_folder_narrows_a_run(tmp_path: Path) -> None:
    from pytest_llamadeploy.narrowing import _narrowing_path

    (tmp_path / "suites" / "smoke").mkdir(parents=True)
    assert _narrowing_path("suites/smoke", tmp_path, tmp_path) == "suites/smoke (one suite's folder)"
    assert _narrowing_path("suites", tmp_path, tmp_path) is None  # every suite: not narrowed


SMOKE_GATE = """\
import os, pytest
{mark}
def test_quote_has_a_price(llama):
    if os.environ.get("SKIP_SMOKE"):
        pytest.skip("no quote service in this run")
    assert llama.stage == "shift10"
"""


def _smoke(p: pytest.Pytester, folder: str, mark: str = "") -> None:
    (p.path / "suites" / folder).mkdir(parents=True)
    (p.path / "suites" / folder / "test_smoke_gate.py").write_text(SMOKE_GATE.format(mark=mark))


def test_an_unknown_suite_folder_is_refused_before_anything_changes(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    seed_deployed(aws, ledger(aws))
    _smoke(project, "smoke")
    r = run(project, "shift10")
    assert r.ret == 4, out(r)
    assert f"{project.path / 'suites/smoke/test_smoke_gate.py'}: test_quote_has_a_price in folder " \
           f"{project.path / 'suites/smoke'}, which is no suite of fastprod" in out(r)
    assert "declare it in" in out(r) and "fastprod.yaml at the top level (suites: {smoke:" in out(r)
    assert alias_state(aws) == AT_ONE and statuses(aws) == {"v2/deploy": "passed"}  # no lock, no record, no move


def test_a_declared_suite_must_pass_like_a_built_in_one(project: pytest.Pytester, aws: str,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    set_policy(project, {"suites": {"smoke": {"description": "a quote has a price"}},
                         "stages": {"shift10": {"suites": ["health", "monitoring", "smoke"]}}})
    seed_deployed(aws, ledger(aws))
    # The smoke tests live in a folder of another name, assigned by their module's marker.
    _smoke(project, "quotes", mark='pytestmark = pytest.mark.llamadeploy_suite("smoke")')
    monkeypatch.setenv("SKIP_SMOKE", "1")
    r = run(project, "shift10")
    assert r.ret == 1, out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and rec.reason.startswith(
        "inconclusive: suite smoke of stage shift10 passed no test"), rec.reason
    assert alias_state(aws) == AT_ONE
    monkeypatch.delenv("SKIP_SMOKE")
    r = run(project, "shift10")
    assert r.ret == 0, out(r)
    r.assert_outcomes(passed=4)  # health 2, monitoring 1, smoke 1
    assert ledger(aws).get("fastprod", "v2", "shift10").status == "passed"


# ------------------------------------------------------------------ a plugin's probe check

PROBE_PLUGIN = """
from pytest_llamadeploy.bakeprobe import ProbeCheck

def _no_price(target):
    return False, f"{target.function} version {target.version} (old {target.old_version}) quoted no price"

def pytest_llamadeploy_probe_checks(policy):
    return [ProbeCheck("quote", _no_price, description="a quote has a price")]
"""


def test_a_plugins_probe_checks_are_checked_before_anything_changes() -> None:
    from pytest_llamadeploy.bakeprobe import ProbeCheck, plugin_checks

    prod = load_policy(POLICIES, "prod").policy
    policy = prod.model_copy(update={"watch": prod.watch.model_copy(update={"checks": ["path", "quote"]})})
    ok = ProbeCheck("quote", lambda target: (True, "ok"), function="onchain-ws")
    assert plugin_checks([[ok], None], policy) == {"quote": ok}
    bad = [[ProbeCheck("path", ok.run), ProbeCheck("Quote!", ok.run), "quote"],
           [ProbeCheck("depth", ok.run, function="onchain-db")]]
    with pytest.raises(ValueError) as info:
        plugin_checks(bad, policy)
    problems = str(info.value).splitlines()
    assert problems[0].startswith("probe check 'path': a name is a-z, 0-9 and '_'")  # no built-in's name
    assert problems[1].startswith("probe check 'Quote!': a name is")
    assert problems[2] == "a probe check must be a pytest_llamadeploy.bakeprobe.ProbeCheck, got 'quote'"
    assert problems[3] == "probe check 'depth': function 'onchain-db' is not one of service.functions " \
                          "(onchain-api, onchain-ws)"
    assert problems[4].startswith("watch.checks names 'quote', which is neither built in")
    with pytest.raises(ValueError, match="probe check 'quote' is contributed twice"):
        plugin_checks([[ok], [ok]], policy)


def test_a_plugins_probe_check_breaches_the_bake_and_rolls_back(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    set_policy(project, {"stages": {"shift10": {"bake": "30s", "watch": True}},
                         "watch": {"checks": ["quote"], "probe_rate": 10}})
    seed_deployed(aws, ledger(aws))
    r = run(project, "shift10")  # the conftest has no such check yet
    assert r.ret == 4, out(r)
    assert "watch.checks names 'quote', which is neither built in (path, cache, event) nor contributed" in out(r)
    assert alias_state(aws) == AT_ONE and statuses(aws) == {"v2/deploy": "passed"}
    project.makeconftest(NOTIFIER + PROBE_PLUGIN)
    r = run(project, "shift10")
    assert r.ret == 1, out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back"
    assert rec.reason.startswith("probe failed: rollback trigger quote_probe_failure_ratio: 2 of the last 2 quote "
                                 "checks of onchain-api version 2 (new) failed"), rec.reason
    assert "quote check: onchain-api version 2 (old 1) quoted no price" in rec.reason
    probes = json.loads(next((project.path / ".llamadeploy/runs").glob("*/context.json")).read_text())
    assert probes["watch"]["bake"]["probes"]["rule"].startswith("per check (quote), last 10")
    assert alias_state(aws) == AT_ONE


# ------------------------------------------------------------------ a plugin's say on the verdict

VERDICT_PLUGIN = """
import json, os

def pytest_llamadeploy_verdict(verdict):
    with open(os.environ["VERDICT_LOG"], "a") as f:
        f.write(json.dumps({"stage": verdict.stage, "status": verdict.status, "reason": verdict.reason,
                            "passed": dict(verdict.passed_by_suite), "evidence": sorted(verdict.evidence),
                            "record_status": verdict.evidence["record"]["status"]}) + "\\n")
    return os.environ.get("VETO")
"""


def test_a_verdict_plugin_vetoes_a_pass_before_it_is_recorded(project: pytest.Pytester, aws: str,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    project.makeconftest(NOTIFIER + VERDICT_PLUGIN)
    monkeypatch.setenv("VERDICT_LOG", str(project.path / "verdicts.jsonl"))
    monkeypatch.setenv("VETO", "change freeze: promotion held")
    seed_deployed(aws, ledger(aws))
    r = run(project, "shift10")
    assert r.ret == 1, out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and rec.reason == f"{VETO_PREFIX} change freeze: promotion held"
    assert rec.details["verdict_plugins"] == ["change freeze: promotion held"]
    assert alias_state(aws) == AT_ONE  # the veto was acted on like any failure
    (seen,) = map(json.loads, (project.path / "verdicts.jsonl").read_text().splitlines())
    assert seen == {"stage": "shift10", "status": "passed", "reason": "", "passed": {"health": 2, "monitoring": 1},
                    "evidence": ["record", "watch"], "record_status": "started"}  # before the verdict was written


def _verdict(reason: str) -> Verdict:
    return Verdict(env="prod", stage="shift50", release="v2", run_id="r", status="failed" if reason else "passed",
                   reason=reason)


def test_a_verdict_plugin_can_make_the_gate_stricter_never_kinder() -> None:
    def answering(*answers: str | None):  # noqa: ANN202 - the hook relay's shape: every implementation's answer
        return lambda verdict: list(answers)

    def raising(verdict: Verdict) -> list[str]:
        raise ConnectionError("freeze service down, token=abc")

    failed = "rollback triggered: service.error_rate 9% > 5%"
    assert judged(_verdict(""), answering(None, "")) == ("", [])
    assert judged(_verdict(""), answering(None, "held")) == (f"{VETO_PREFIX} held", ["held"])
    reason, said = judged(_verdict(""), raising)  # fail closed: a plugin that cannot answer has not agreed
    assert reason.startswith(f"{BROKEN_PREFIX} ConnectionError: freeze service down") and "abc" not in reason
    # A failure stays the gate's own failure, whatever a plugin answers or raises.
    assert judged(_verdict(failed), answering("held")) == (failed, ["held"])
    assert judged(_verdict(failed), raising)[0] == failed
