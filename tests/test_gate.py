"""The gate end to end: pytest sessions (subprocesses, as CI runs them) against moto in server mode.

A stand-in gate suite (written into each test's project) reads the stage from
the ``llama`` fixture and fails on demand, so these tests exercise the plugin's
machinery: preconditions, lock, action, verdict, rollback, ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from pytest_llamadeploy.ledger import DynamoLedger
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.botocalls import allowed_actions, not_allowed, recorded
from tests.support.forked import run_forked

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

REPO = Path(__file__).parent.parent
pytest_plugins = ["pytester"]

FAST_PROD = """\
# prod's plan and thresholds without the waiting, pointed at moto through AWS_ENDPOINT_URL.
extends: prod
guarded: false  # not production: bakes of 0 s against moto
deploy:
  argv: [{python}, {publish}, "{{release}}", "onchain-api,onchain-ws"]
  timeout: 60s
targets:
  source: env
  api_url: http://127.0.0.1:9/unused
  postgres_dsn: ""
  redis_url: ""
  sqs_queue_url: ""
stages:
  deploy: {{suites: [health]}}  # the stand-in project has no functional suite: every listed suite must pass a test
  shift10: {{bake: 0s, watch: false, suites: [health, monitoring]}}
  shift50: {{bake: 0s, watch: false, suites: [health, monitoring]}}
  shift100: {{bake: 0s, watch: false, suites: [health, monitoring]}}
  rollback: {{bake: 0s, watch: false, suites: [health]}}
"""

HEALTH_GATE = """\
import os, time
from pathlib import Path

def test_stage_context(llama):
    assert llama.env == "fastprod"
    assert set(llama.new_versions) == {"onchain-api", "onchain-ws"}
    assert os.environ.get("FAIL_GATE_AT") != llama.stage, f"gate failed at {llama.stage} on purpose"

def test_blocks_when_asked(llama):
    block = os.environ.get("BLOCK_AT")
    if block != llama.stage:
        return
    Path(os.environ["BLOCK_READY"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60  # bounded: the test kills us long before
    while time.monotonic() < deadline and not Path(os.environ["BLOCK_READY"] + ".never").exists():
        time.sleep(0.1)
"""

MONITORING_GATE = """\
def test_only_while_traffic_moves(llama):
    assert llama.stage in ("shift10", "shift50", "shift100")
    assert llama.traffic_moved_at is not None
"""

NOTIFIER = """\
import json, os

if os.environ.get("BOTOCALLS"):  # record every AWS call of this gate run (docs/iam-policy.json is checked on them)
    from tests.support.botocalls import install
    install(os.environ["BOTOCALLS"])

def pytest_llamadeploy_notify(event, record):
    with open(os.environ["NOTIFY_LOG"], "a") as f:
        f.write(json.dumps({"event": event, "stage": record["stage"], "status": record["status"]}) + "\\n")
"""


@pytest.fixture
def project(pytester: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pol = pytester.path / "policies"
    pol.mkdir()
    for name in ("defaults.yaml", "prod.yaml"):
        shutil.copy(REPO / "policies" / name, pol / name)
    (pol / "fastprod.yaml").write_text(FAST_PROD.format(python=sys.executable, publish=REPO / "tests/support/publish_versions.py"))
    for suite, body in (("health", HEALTH_GATE), ("monitoring", MONITORING_GATE)):
        (pytester.path / "suites" / suite).mkdir(parents=True)
        (pytester.path / "suites" / suite / f"test_{suite}_gate.py").write_text(body)
    pytester.makeconftest(NOTIFIER)
    monkeypatch.setenv("NOTIFY_LOG", str(pytester.path / "notify.jsonl"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


def gate(p: pytest.Pytester, stage: str, *args: str, release: str = "v2", approve: bool = True) -> pytest.RunResult:
    argv = ["-p", "no:cacheprovider", "--env=fastprod", f"--stage={stage}", *args]
    if release:
        argv.append(f"--release={release}")
    if approve:
        argv.append("--approved-by=alice")
    return run_forked(p, *argv, timeout=120)


def ledger(url: str) -> DynamoLedger:
    return DynamoLedger(boto3.client("dynamodb", region_name="us-east-1", endpoint_url=url), "llamadeploy-ledger")


def statuses(url: str) -> dict[str, str]:
    return {f"{r.release}/{r.stage}": r.status for r in ledger(url).records("fastprod")}


def events(p: pytest.Pytester) -> list[tuple[str, str]]:
    path = p.path / "notify.jsonl"
    return [(e["event"], e["stage"]) for e in map(json.loads, path.read_text().splitlines())] if path.exists() else []


def test_prod_plan_stage_by_stage(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTOCALLS", str(project.path / "botocalls.jsonl"))  # checked against docs/iam-policy.json
    r = gate(project, "deploy")
    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(passed=2, deselected=1)
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}  # new version published at 0 %
    assert gate(project, "shift10").ret == 0
    assert alias_state(aws) == {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
    assert gate(project, "shift50").ret == 0
    assert alias_state(aws) == {fn: ("1", {"2": 0.5}) for fn in FUNCTIONS}
    r = gate(project, "shift100")
    assert r.ret == 0
    assert alias_state(aws) == {fn: ("2", {}) for fn in FUNCTIONS}
    r.stdout.fnmatch_lines(["*llamadeploy verdict*", "fastprod shift100 v2: PASSED"])
    assert statuses(aws) == {f"v2/{s}": "passed" for s in ("deploy", "shift10", "shift50", "shift100")}
    rec = ledger(aws).get("fastprod", "v2", "shift50")
    assert rec.approver == "alice" and rec.weights_before["onchain-api"] == {"version": "1", "weights": {"2": 0.1}}
    assert rec.weights_after["onchain-api"] == {"version": "1", "weights": {"2": 0.5}} and len(rec.policy_hash) == 64
    assert events(project).count(("pass", "shift100")) == 1 and ("start", "deploy") in events(project)
    # The deploy command's output is kept, with its secret redacted.
    deploy_log = next((project.path / ".llamadeploy/runs").glob("*/deploy.log")).read_text()
    assert "deployed v2" in deploy_log and "hunter2" not in deploy_log and "password=***" in deploy_log
    # Running a passed stage again is safe: nothing moves.
    assert gate(project, "shift100").ret == 0
    assert alias_state(aws) == {fn: ("2", {}) for fn in FUNCTIONS}
    assert_iam_policy_covers(project.path / "botocalls.jsonl", {"deploy", "shift10", "shift50", "shift100"})


def assert_iam_policy_covers(path: Path, stages: set[str]) -> None:
    """Every AWS call the gate made is allowed by docs/iam-policy.json's statements for that stage (issue 13)."""
    calls = recorded(path)
    assert {c["stage"] for c in calls} == stages, "every stage run made AWS calls, recorded per stage"
    document = json.loads((REPO / "docs" / "iam-policy.json").read_text())
    sids = [s["Sid"] for s in document["Statement"]]
    assert len(set(sids)) == len(sids) and all(s.isalnum() for s in sids), sids  # IAM: unique, alphanumeric
    problems = {}
    for stage in stages:
        action = yaml_stage_action(stage)
        sids = allowed_sids(action)
        missing = not_allowed([c["action"] for c in calls if c["stage"] == stage], allowed_actions(document, sids))
        if missing:
            problems[stage] = missing
    assert not problems, f"docs/iam-policy.json does not allow (stage: calls): {problems}"


def allowed_sids(action: str) -> set[str]:
    """docs/iam-policy.json's statements for a stage action: EveryStage*, and Stage<Action>* (verify: action none)."""
    name = "Verify" if action == "none" else action.capitalize()
    document = json.loads((REPO / "docs" / "iam-policy.json").read_text())
    return {s["Sid"] for s in document["Statement"] if s["Sid"].startswith(("EveryStage", f"Stage{name}"))}


def yaml_stage_action(stage: str) -> str:
    from pytest_llamadeploy.policy import load_policy

    return load_policy(REPO / "policies", "prod").policy.stages[stage].action


def test_status_json(project: pytest.Pytester, aws: str) -> None:
    assert gate(project, "deploy").ret == 0
    assert gate(project, "shift10", "--approved-by=bob", "-k", "stage_context or only_while", "--env=fastprod").ret == 0
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", "status", "--env", "fastprod", "--json",
                          "--policy-dir", str(project.path / "policies")], capture_output=True, text=True, env=env,
                         cwd=project.path, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["env"] == "fastprod" and data["lock"] is None
    assert data["functions"]["onchain-api"] == {"alias": "live", "version": "1", "weights": {"2": 0.1}}
    assert data["releases"][0] == {**data["releases"][0], "release": "v2", "versions": {"onchain-api": "2", "onchain-ws": "2"},
                                    "stages": {"deploy": "passed", "shift10": "passed"}}


def test_out_of_order_stage_is_refused_and_nothing_changes(project: pytest.Pytester, aws: str) -> None:
    assert gate(project, "deploy").ret == 0
    before = statuses(aws)
    r = gate(project, "shift50")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*shift50 of v2 in fastprod refused; nothing was changed*",
                            "*shift10 has not run for release v2 in fastprod; run `pytest --env=fastprod --stage=shift10 --release=v2` first*"])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    assert statuses(aws) == before and ledger(aws).current_lock("fastprod") is None


def test_prod_needs_an_approval(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = gate(project, "deploy", approve=False)
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*requires an approval: pass --approved-by NAME or set LLAMADEPLOY_APPROVED_BY*"])
    assert statuses(aws) == {}
    monkeypatch.setenv("LLAMADEPLOY_APPROVED_BY", "ci-approver@github")
    assert gate(project, "deploy", approve=False).ret == 0
    assert ledger(aws).get("fastprod", "v2", "deploy").approver == "ci-approver@github"


def test_failing_gate_rolls_back(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gate(project, "deploy").ret == 0
    monkeypatch.setenv("FAIL_GATE_AT", "shift10")
    r = gate(project, "shift10")
    assert r.ret == 1
    r.stdout.fnmatch_lines(["*rolled back*", "fastprod shift10 v2: ROLLED_BACK", "reason: threshold breached: 1 gate test(s) failed*"])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and "gate failed at shift10 on purpose" in rec.reason
    assert rec.details["rollback"]["after"]["onchain-ws"] == {"version": "1", "weights": {}}
    assert [e for e in events(project) if e[1] == "shift10"] == [("start", "shift10"), ("rollback", "shift10"), ("fail", "shift10")]
    monkeypatch.delenv("FAIL_GATE_AT")
    assert gate(project, "shift50").ret == 4  # a rolled-back shift10 does not open shift50
    # Rolling back *to* the version that just failed its gate is refused, unless it is an emergency.
    r = gate(project, "rollback", "--to-version=2")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*rollback target gate history not met: onchain-api version 2 was release v2's new "
                            "version and its shift10 stage ended rolled_back*--emergency --reason TEXT*"])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    r = gate(project, "rollback", "--to-version=2", "--emergency", "--reason=v1 corrupts balances; v2 is the way out")
    assert r.ret == 0, r.stdout.str()
    assert alias_state(aws) == {fn: ("2", {}) for fn in FUNCTIONS}
    assert ledger(aws).get("fastprod", "v2", "rollback").details["emergency_reason"].startswith("v1 corrupts")


def test_failed_verify_rolls_back_only_where_there_is_an_earlier_version(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_GATE_AT", "verify")
    # What serves was never deployed through the gate: nothing older is recorded, so nothing "rolls back".
    r = gate(project, "verify", release="v1")
    assert r.ret == 1, r.stdout.str()
    rec = ledger(aws).get("fastprod", "v1", "verify")
    assert rec.status == "failed" and "nothing to roll back to" in rec.reason
    assert "rollback" not in rec.details and alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    r.stdout.fnmatch_lines(["fastprod verify v1: FAILED"])
    # After a promote the deploy record names the previous versions: a failing verify goes back to them.
    monkeypatch.delenv("FAIL_GATE_AT")
    for stage in ("deploy", "shift10", "shift50", "shift100"):
        assert gate(project, stage).ret == 0
    monkeypatch.setenv("FAIL_GATE_AT", "verify")
    r = gate(project, "verify")
    assert r.ret == 1
    assert ledger(aws).get("fastprod", "v2", "verify").status == "rolled_back"
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}


def test_failed_deploy_command(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_DEPLOY", "v2")
    r = gate(project, "deploy")
    assert r.ret == 1
    rec = ledger(aws).get("fastprod", "v2", "deploy")
    # Nothing was published, nothing moved: failed, never rolled_back, and no rollback notified (issue 15).
    assert rec.status == "failed" and "deploy command exited 3" in rec.reason
    assert "UPDATE_ROLLBACK_FAILED" in rec.reason and "nothing was moved, nothing rolled back" in rec.reason
    assert "rollback" not in rec.details and rec.new_versions == {}
    assert [e for e in events(project) if e[1] == "deploy"] == [("start", "deploy"), ("fail", "deploy")]
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}


def test_second_concurrent_run_is_refused_by_the_lock(project: pytest.Pytester, aws: str) -> None:
    holder = ledger(aws)
    holder.acquire_lock("fastprod", "run-held-elsewhere", 600, stage="shift10", release="v1")
    r = gate(project, "deploy")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*env 'fastprod' is locked: held by *(run run-held-elsewhere, shift10 of v1) since *"])
    assert statuses(aws) == {} and alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}


def test_rollback_to_a_named_version_and_to_the_previous(project: pytest.Pytester, aws: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for stage in ("deploy", "shift10", "shift50", "shift100"):
        assert gate(project, stage).ret == 0
    monkeypatch.setenv("BOTOCALLS", str(project.path / "botocalls.jsonl"))  # checked against docs/iam-policy.json
    r = gate(project, "rollback", release="v2")
    assert r.ret == 0, r.stdout.str()
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}  # previous version, from the ledger
    monkeypatch.delenv("BOTOCALLS")
    assert_iam_policy_covers(project.path / "botocalls.jsonl", {"rollback"})
    # 2 was rolled back from: named again, it takes an emergency (issue 15: a retried rollback never rolls forward).
    assert gate(project, "rollback", "--to-version=2", release="v2").ret == 4
    assert gate(project, "rollback", "--to-version=2", "--emergency", "--reason=1 is worse", release="v2").ret == 0
    assert alias_state(aws) == {fn: ("2", {}) for fn in FUNCTIONS}
    assert gate(project, "rollback", "--to-version=onchain-api=1", "--emergency", "--reason=api back",
                release="v2").ret == 0
    assert alias_state(aws) == {"onchain-api": ("1", {}), "onchain-ws": ("2", {})}
    r = gate(project, "rollback", "--to-version=7", release="v2")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*rollback target not met: onchain-api has no version 7*"])
    assert gate(project, "rollback", "--to-version=onchain-api=1", release="v2").ret == 0  # twice is safe


def test_killed_run_is_reported_and_resolved(project: pytest.Pytester, aws: str, tmp_path: Path) -> None:
    assert gate(project, "deploy").ret == 0
    ready = tmp_path / "ready"
    env = {**os.environ, "BLOCK_AT": "shift10", "BLOCK_READY": str(ready)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=fastprod", "--stage=shift10",
                             "--release=v2", "--approved-by=alice"], cwd=project.path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stage did not reach its gate tests"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stage: traffic at 10 %, record `started`, lock held
    proc.wait(10)
    assert statuses(aws)["v2/shift10"] == "started"
    assert alias_state(aws) == {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
    # The next run sees it and refuses to ignore it.
    r = gate(project, "shift50")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*shift10 of release v2 was started by * and never finished (killed?)*"
                            "--stage=shift10 --release=v2* or roll back with *--stage=rollback*"])
    # Roll back resolves it: the dead run's lock is taken over and recorded.
    r = gate(project, "rollback", release="v2")
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines(["*took over the lock of fastprod*is gone*"])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    assert statuses(aws)["v2/shift10"] == "aborted"
    assert ledger(aws).get_artifacts("fastprod", "lock_takeover")[0]["previous"]["stage"] == "shift10"
    # ... and the release can go on from its last passed stage.
    assert gate(project, "shift10").ret == 0


def test_killed_run_can_be_resumed(project: pytest.Pytester, aws: str) -> None:
    assert gate(project, "deploy").ret == 0
    lg = ledger(aws)
    rec = lg.get("fastprod", "v2", "deploy")
    rec.stage, rec.status, rec.run_id, rec.ended_at = "shift10", "started", "run-killed", None
    lg.put(rec)
    r = gate(project, "shift10")
    assert r.ret == 0, r.stderr.str()
    got = lg.get("fastprod", "v2", "shift10")
    assert got.status == "passed" and got.details["resumed_run"] == "run-killed"


def test_xdist_acts_once_on_the_controller(project: pytest.Pytester, aws: str) -> None:
    r = gate(project, "deploy", "-n", "2")
    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(passed=2)
    client = boto3.client("lambda", region_name="us-east-1", endpoint_url=aws)
    versions = [v["Version"] for v in client.list_versions_by_function(FunctionName="onchain-api")["Versions"]]
    assert versions == ["$LATEST", "1", "2"]  # the deploy command ran once
    assert events(project).count(("start", "deploy")) == 1 and events(project).count(("pass", "deploy")) == 1
    assert gate(project, "shift10", "-n", "2").ret == 0
    assert alias_state(aws) == {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}


@pytest.mark.parametrize(("args", "message"), [
    ([], "*the gate suites need an environment and a stage*pytest --env=sandbox --stage=verify*"),
    (["--env=qa", "--stage=deploy"], "*no policy for env 'qa'; allowed: fastprod, prod*"),
    (["--env=fastprod", "--stage=shift75", "--release=v2"], "*--stage=shift75 is not a stage of fastprod*allowed: deploy, shift10, shift50, shift100 (plan)*"),
    (["--env=fastprod", "--stage=shift10"], "*--stage=shift10 needs --release TAG*"),
    (["--env=fastprod", "--stage=deploy", "--release=v 2"], "*--release 'v 2': use 1-64 letters*"),
    (["--env=fastprod", "--stage=rollback", "--to-version=latest"], "*--to-version 'latest': expected a version number*"),
    (["--env=fastprod", "--stage=deploy", "--release=v2", "--emergency"], "*--emergency needs --reason TEXT*"),
])
def test_bad_input_is_a_usage_error_and_changes_nothing(project: pytest.Pytester, aws: str, args: list[str], message: str) -> None:
    r = run_forked(project, "-p", "no:cacheprovider", *args, timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines([message])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS} and statuses(aws) == {}


def test_stage_missing_from_dev_plan(pytester: pytest.Pytester, aws: str) -> None:
    shutil.copytree(REPO / "policies", pytester.path / "policies")
    r = run_forked(pytester, "-p", "no:cacheprovider", "--env=dev", "--stage=shift10", "--release=v2", timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*--stage=shift10 is not a stage of dev*allowed: deploy, verify (plan)*"])


def test_plan_prints_the_decision_and_writes_nothing(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gate(project, "deploy").ret == 0
    assert gate(project, "shift10").ret == 0
    import botocore.client

    calls: list[str] = []
    real = botocore.client.BaseClient._make_api_call

    def recording(self, operation_name, api_params):  # noqa: ANN001
        calls.append(operation_name)
        return real(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    before = (alias_state(aws), statuses(aws))
    calls.clear()
    r = project.runpytest_inprocess("-p", "no:cacheprovider", "--env=fastprod", "--stage=shift50", "--release=v2", "--plan")
    assert r.ret == 4  # it would be refused: no approval
    out = r.stdout.str()
    for expected in ("llamadeploy plan: shift50 of release v2 in fastprod", "action: shift to 50%",
                     "onchain-api    now: v1 90%, v2 10%", "after: v1 50%, v2 50%", "suites: health, monitoring",
                     "[ok] previous stage: shift10 passed for v2", "[NO] approval", "would be REFUSED",
                     "lambda_error_rate", "changed nothing"):
        assert expected in out, expected
    assert calls, "the plan reads the alias and the ledger"
    writes = [c for c in calls if not c.startswith(("Get", "List", "Describe", "Query", "Scan"))]
    assert writes == []
    assert (alias_state(aws), statuses(aws)) == before


def test_partial_release_moves_only_what_it_published(project: pytest.Pytester, aws: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: a release that publishes a new version of one function used to fail its deploy stage.
    monkeypatch.setenv("DEPLOY_ONLY", "onchain-api")
    r = gate(project, "deploy")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["*publishes no version of onchain-ws: left on the version that serves it*",
                            "*partial release: shifts onchain-api, leaves onchain-ws*"])
    rec = ledger(aws).get("fastprod", "v2", "deploy")
    assert rec.new_versions == {"onchain-api": "2", "onchain-ws": "1"}
    assert rec.details["release_scope"]["unchanged"] == ["onchain-ws"]
    r = gate(project, "shift10")
    assert r.ret == 0, r.stdout.str()
    assert alias_state(aws) == {"onchain-api": ("1", {"2": 0.1}), "onchain-ws": ("1", {})}
    r.stdout.fnmatch_lines(["*partial release: shifts onchain-api, leaves onchain-ws (onchain-api v1 -> v2; "
                            "onchain-ws stays on v1 (not in this release))"])
    assert gate(project, "shift50").ret == 0
    assert alias_state(aws) == {"onchain-api": ("1", {"2": 0.5}), "onchain-ws": ("1", {})}
    # Promote: the API on its new version, the WebSocket on the one it had (never primary and weighted at once).
    r = gate(project, "shift100")
    assert r.ret == 0, r.stdout.str()
    assert alias_state(aws) == {"onchain-api": ("2", {}), "onchain-ws": ("1", {})}
    # A failing verify rolls the partial release back: the API to v1, the WebSocket still on v1.
    monkeypatch.setenv("FAIL_GATE_AT", "verify")
    r = gate(project, "verify")
    assert r.ret == 1, r.stdout.str()
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    assert {fn: _alias(aws, fn, "preview") for fn in FUNCTIONS} == {fn: "1" for fn in FUNCTIONS}
    rolled = ledger(aws).get("fastprod", "v2", "verify")
    assert rolled.status == "rolled_back", rolled.reason


def _alias(url: str, fn: str, name: str) -> str:
    return str(boto3.client("lambda", region_name="us-east-1", endpoint_url=url)
               .get_alias(FunctionName=fn, Name=name)["FunctionVersion"])


def test_preflight_refuses_a_no_data_pass_rule_cloudwatch_does_not_list(project: pytest.Pytester, aws: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: dynamodb_throttles passes on no data; with no series listed a misspelt table would pass forever.
    monkeypatch.setenv("BOTOCALLS", str(project.path / "botocalls.jsonl"))
    r = gate(project, "preflight")
    assert r.ret == 4, r.stdout.str()
    r.stderr.fnmatch_lines(["*precondition no_data: pass proven not met: key_metrics.dynamodb_throttles has "
                            "no_data: pass but CloudWatch lists none of AWS/DynamoDB ReadThrottleEvents "
                            "{TableName=onchain-alerts}*(ListMetrics)*"])
    assert statuses(aws) == {} and ledger(aws).get_artifacts("fastprod", "preflight") == []
    assert_iam_policy_covers(project.path / "botocalls.jsonl", {"preflight"})
