"""Dry-run analysis and manual judgement (issue 16, item 4), as Argo Rollouts' dryRun and pause/resume offer.

Gate runs are in-process in test_gate.py's project against the moto server of the ``aws`` fixture
(tests/test_integrity.py's pattern); bakes are 2 s with the metrics sources' lag at 0, so the
watch evaluates every rollback trigger to the bake's end without waiting for late data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.guard import check_guard
from pytest_llamadeploy.policy import load_policy
from pytest_llamadeploy.reporting.stage_result import stage_title
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.faultproxy import FaultProxy
from tests.support.reliability import seed_deployed, set_policy
from tests.test_gate import ledger, project  # noqa: F401 - the gate project fixture
from tests.test_guard import edit
from tests.test_integrity import _no_probe, _set_bake_probe, out, run
from tests.test_options import no_aws  # noqa: F401 - the repository's policies, no AWS at all
from tests.test_policy import pdir  # noqa: F401 - a copy of policies/ to edit

pytest_plugins = ["pytester"]

REPO = Path(__file__).parent.parent
AT_10 = {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
AT_1 = {fn: ("1", {}) for fn in FUNCTIONS}
#: shift10 watched for 2 s; every source's data counts as arrived at once (moto has none).
WATCHED = {"stages": {"shift10": {"bake": "2s", "watch": True}},
           "metrics": {"service": {"lag": "0s"}, "aws": {"lag": "0s"}}}
TRIGGERS = list(load_policy(REPO / "policies", "prod").policy.rollback_triggers)


def _exploding_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def factory(context: object, policy: object, plugins: object = None) -> object:
        def probe() -> tuple[bool | None, str]:
            raise ConnectionError("probe refused")
        return probe
    _set_bake_probe(monkeypatch, factory)


def test_observe_reports_every_breach_and_moves_no_traffic(project: pytest.Pytester, aws: str,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    set_policy(project, WATCHED)
    seed_deployed(aws, ledger(aws))
    _exploding_probe(monkeypatch)  # without --observe this rolls back at the second probe (test_integrity.py)
    ini = project.makeini("[pytest]\nllamadeploy_observe = true\n")  # the ini twin, through --plan
    r = run(project, "shift10", "--plan")
    assert r.ret == 0 and "--observe: every breach of the watch, key metrics and compare is reported and NEVER " \
        "acted on" in out(r), out(r)
    ini.unlink()
    r = run(project, "shift10", "--observe")
    assert r.ret == 0, out(r)  # Argo's dry-run does not fail the rollout
    assert alias_state(aws) == AT_10  # nothing rolled back
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    observed = rec.details["observed"]
    assert rec.status == "passed" and observed["mode"] == "--observe: every rule" and observed["acted"] is False
    breaches = observed["breaches"]
    assert any(b.startswith("rollback trigger probe_failure_ratio:") and "ConnectionError: probe refused" in b
               for b in breaches), breaches
    # Every rule was evaluated to the end of the bake: those without data are reported too, not only the first.
    assert any("rollback trigger error_rate:" in b and "inconclusive" in b for b in breaches), breaches
    assert "OBSERVED ONLY (--observe: every rule): not acted on" in rec.reason
    assert "BREACH(ES) OBSERVED ONLY (--observe: every rule): NOT ACTED ON" in out(r)
    assert "OBSERVED (not acted on) rollback trigger probe_failure_ratio" in out(r)
    # The Allure stage verdict carries each observed breach as a failed step of the passed stage.
    verdict = [json.loads(p.read_text()) for p in (project.path / "allure-results").glob("*-result.json")]
    stage = next(v for v in verdict if v["name"] == stage_title(env="fastprod", stage="shift10", release="v2"))
    assert stage["status"] == "passed"
    assert any(s["name"].startswith("OBSERVED ONLY, not acted on: rollback trigger probe_failure_ratio")
               and s["status"] == "failed" for s in stage["steps"])
    # And CI's job summary (`llamadeploy summary`) lists them under their own heading.
    assert cli(["summary", "--results", str(project.path / "allure-results")]) == 0
    summary = capsys.readouterr().out
    assert "PASSED" in summary and f"#### Observed only, NOT acted on ({len(breaches)}; --observe: every rule)" in summary, summary


KEY_METRIC_GATE = """\
import pytest

@pytest.mark.parametrize("key_metric", ["error_rate"])
def test_key_metric(llama, key_metric):
    assert False, f"key metric {key_metric}: 7.0% on onchain-api version 2 (new), must be < 1%"
"""


def test_an_observe_only_rule_is_reported_and_never_acts(project: pytest.Pytester, aws: str,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Every trigger but one passes on missing data; lambda_throttle_rate (no data: inconclusive at the bake's
    # end, which fails a stage) is observe-only, as is the key metric error_rate, which the gate test breaks.
    triggers: dict[str, Any] = {name: {"no_data": "pass"} for name in TRIGGERS}
    triggers["lambda_throttle_rate"] = {"observe": True}
    set_policy(project, {**WATCHED, "rollback_triggers": triggers, "key_metrics": {"error_rate": {"observe": True}}})
    (project.path / "suites" / "monitoring" / "test_key_metric_gate.py").write_text(KEY_METRIC_GATE)
    seed_deployed(aws, ledger(aws))
    _no_probe(monkeypatch)
    r = run(project, "shift10")
    assert r.ret == 0, out(r)
    assert alias_state(aws) == AT_10
    r.assert_outcomes(passed=3, xfailed=1)  # the key metric's failure is shown as observed, not as a pass
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    observed = rec.details["observed"]
    assert observed["mode"] == "observe: true on error_rate, lambda_throttle_rate"
    *watch, test = observed["breaches"]  # nothing else breached: every other trigger passed
    assert [w.split(" on ")[1].split(" versions")[0] for w in watch] == ["onchain-api", "onchain-ws"], watch
    assert all(w.startswith("rollback trigger lambda_throttle_rate:") and "inconclusive" in w for w in watch)
    assert test.startswith("suites/monitoring/test_key_metric_gate.py::test_key_metric[error_rate]: ")
    assert test.endswith("7.0% on onchain-api version 2 (new), must be < 1% (key_metrics.error_rate.observe: true)")


PAUSING = {**WATCHED, "watch": {"on_inconclusive": "pause"}}


def _paused(p: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """shift10 whose watch has no data to decide on: paused, exit 6, traffic left at 10 %."""
    set_policy(p, PAUSING)
    seed_deployed(aws, ledger(aws))
    _no_probe(monkeypatch)
    r = run(p, "shift10")
    assert r.ret == 6, out(r)
    assert alias_state(aws) == AT_10
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "paused" and rec.reason.startswith("paused: inconclusive: rollback trigger")
    promote = "llamadeploy decide --env fastprod --release v2 --stage shift10 --promote --reason TEXT --approved-by NAME"
    assert rec.details["awaiting"]["commands"]["promote"] == promote and promote in rec.reason
    assert "PAUSED (exit 6): awaiting a decision" in out(r)
    # While paused, the next stage is refused, naming the decide commands; nothing moves.
    r = run(p, "shift50")
    assert r.ret == 4, out(r)
    assert "shift10 of release v2 in fastprod is paused awaiting a decision" in out(r) and promote in out(r)
    assert alias_state(aws) == AT_10
    return rec


def decide(p: pytest.Pytester, *args: str) -> int:
    return cli(["decide", "--env", "fastprod", "--release", "v2", "--policy-dir", str(p.path / "policies"),
                *args])


def test_pause_then_decide_promote(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _paused(project, aws, monkeypatch)
    capsys.readouterr()
    assert cli(["summary", "--results", str(project.path / "allure-results")]) == 0
    summary = capsys.readouterr().out
    assert "fastprod shift10 v2: PAUSED" in summary and "#### Awaiting a decision" in summary, summary
    assert "`llamadeploy decide --env fastprod --release v2 --stage shift10 --rollback --reason TEXT" in summary
    assert decide(project, "--promote", "--reason", "metrics late; checked by hand") == 4  # prod-like: an approver
    assert "requires an approval for a decision" in capsys.readouterr().err
    assert decide(project, "--promote", "--reason", "metrics late; checked by hand", "--approved-by", "carol") == 0
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "passed" and "decided: promoted by carol: metrics late; checked by hand" in rec.reason
    decision = rec.details["decision"]
    assert (decision["decision"], decision["by"], decision["pending"]) == ("promote", "carol", None)
    assert alias_state(aws) == AT_10 and ledger(aws).current_lock("fastprod") is None
    assert decide(project, "--promote", "--reason", "again", "--approved-by", "carol") == 4  # nothing awaits
    assert "no stage of release v2 in fastprod awaits a decision (deploy=passed, shift10=passed)" in capsys.readouterr().err
    assert run(project, "shift50").ret == 0  # the next stage may run now
    assert alias_state(aws) == {fn: ("1", {"2": 0.5}) for fn in FUNCTIONS}


def test_pause_then_decide_rollback_killed_half_way_is_seen_and_finished(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    lg = ledger(aws)
    _paused(project, aws, monkeypatch)
    # A decide (a process, as an operator runs it) SIGKILLed in the middle of its rollback: onchain-api is
    # back on v1, the UpdateAlias of onchain-ws is held by the fault proxy when the kill comes.
    argv = [sys.executable, "-m", "pytest_llamadeploy.cli", "decide", "--env", "fastprod", "--release", "v2",
            "--rollback", "--reason", "p95 looked wrong on the dashboard", "--policy-dir",
            str(project.path / "policies")]
    with FaultProxy(aws, hold=20.0).running() as proxy:
        held = proxy.fail("lambda.UpdateAlias", "timeout", target="onchain-ws")
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "PYTHONPATH": str(REPO), "LLAMADEPLOY_APPROVED_BY": "dave"}
        proc = subprocess.Popen(argv, cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while held.failed == 0 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the condition itself (the held call), bounded
            assert held.failed == 1, (proc.poll(), [str(c) for c in proxy.calls])
        finally:
            proc.kill()
            output = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == -9, output
    rec = lg.get("fastprod", "v2", "shift10")
    killed = rec.details["decision"]
    assert rec.status == "started" and killed["pending"] == "rollback" and killed["by"] == "dave"
    assert alias_state(aws) == {"onchain-api": ("1", {}), "onchain-ws": ("1", {"2": 0.1})}  # half-way
    assert lg.current_lock("fastprod").run_id == killed["run_id"]  # its lock is left too
    # The next run sees it and names the command that finishes it; nothing moves.
    r = run(project, "shift50")
    assert r.ret == 4, out(r)
    assert "a `llamadeploy decide` (rollback) of shift10 of release v2 was started" in out(r)
    assert "llamadeploy decide --env fastprod --release v2 --stage shift10 --rollback --reason TEXT" in out(r)
    # Running it again takes the dead run's lock over and finishes the rollback.
    monkeypatch.setenv("LLAMADEPLOY_APPROVED_BY", "dave")  # the approvals' resolution: the policy's variable
    assert decide(project, "--rollback", "--reason", "p95 looked wrong on the dashboard") == 0
    assert alias_state(aws) == AT_1  # rolled back exactly as a failed stage would
    rec = lg.get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and "decided: roll back by dave: p95 looked wrong" in rec.reason
    assert rec.details["decision"]["by"] == "dave" and rec.details["decision"]["resumed_decide"] == killed["run_id"]
    assert rec.details["rollback"]["ok"] is True and lg.current_lock("fastprod") is None


def test_observe_in_a_guarded_env_needs_an_emergency(no_aws: pytest.Pytester) -> None:  # noqa: F811
    r = no_aws.runpytest_inprocess("-p", "no:cacheprovider", "--env=prod", "--stage=shift10", "--release=v1",
                                   "--observe", "--plan")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*prod is guarded: --observe would let a breach of the runbook's rollback triggers pass "
                            "shift10 without a rollback. Nothing was changed.*--emergency --reason TEXT*"])
    # An emergency gets past the guard (and --emergency is not refused on a shift): --plan then needs AWS.
    r = no_aws.runpytest_inprocess("-p", "no:cacheprovider", "--env=prod", "--stage=shift10", "--release=v1",
                                   "--observe", "--emergency", "--reason=INC-42 tuning the new triggers", "--plan")
    assert r.ret == 4 and "guarded" not in r.stderr.str() and "does not apply" not in r.stderr.str()
    r.stderr.fnmatch_lines(["*--plan for shift10 in prod needs to read the alias and the ledger*"])
    r = no_aws.runpytest_inprocess("-p", "no:cacheprovider", "--env=staging", "--stage=backup", "--observe", "--plan")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*--observe does not apply to --stage=backup: it has no watch and no analysis suite*"])


def test_guard_refuses_an_observe_only_runbook_rule_unless_one_beside_it_acts(
        pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    edit(pdir / "prod.yaml", {"rollback_triggers": {"error_rate": {"observe": True}}})
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert (f"{pdir}/prod.yaml: rollback_triggers.error_rate.observe = True: breaks guard rule "
            "'rollback_triggers.service.error_rate acts on a breach' (RUNBOOK.md:143-149): must be false") in err, err
    assert "add a second rule on service.error_rate with observe: true" in err
    # A stricter trial rule observed beside the enforcing one is what observe-only is for: allowed.
    trial = {"signal": "service.error_rate", "op": "<", "threshold": "2%", "window": "1m", "min_samples": 50,
             "observe": True}
    edit(pdir / "prod.yaml", {"rollback_triggers": {"error_rate": {"observe": False}, "error_rate_trial": trial}})
    assert check_guard(load_policy(pdir, "prod").policy) == []


def test_a_rollback_stage_decides_a_paused_stage(project: pytest.Pytester, aws: str,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # CI's rollback job (or an operator at 3 a.m.) need not know about the pause: a rollback is a decision.
    _paused(project, aws, monkeypatch)
    r = run(project, "rollback")
    assert r.ret == 0, out(r)
    assert alias_state(aws) == AT_1
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and "decided: rolled back by rollback run" in rec.reason
    assert rec.details["decision"]["via"] == "--stage=rollback" and rec.details["decision"]["by"] == "alice"
    assert run(project, "shift50").ret == 4  # v2 was rolled back: its shift10 did not pass
