"""Issue 12's findings 2, 3, 4, 7, 8, 10 (JUnit) and 11 (publish marker), each against a real gate run.

Gate runs are subprocesses against the moto server of the ``aws`` fixture (test_gate.py's
project); AWS API faults come from a fault proxy in front of moto (tests/support/faultproxy.py).
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_llamadeploy.ledger import FileLedger, LockHeld
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.faultproxy import FaultProxy
from tests.support.forked import run_forked
from tests.support.reliability import (
    add_checkpoint_plugin,
    dynamodb,
    finish,
    publish,
    record,
    seed_deployed,
    set_alias,
    set_policy,
    spawn_gate,
)
from tests.test_gate import events, gate, ledger, project, statuses  # noqa: F401 - the gate project fixture

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]

AT_OLD = {fn: ("1", {}) for fn in FUNCTIONS}
AT_10 = {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
ONE = {fn: "1" for fn in FUNCTIONS}


# ------------------------------------------------------------------------- finding 2


@pytest.fixture
def v3_serving(project: pytest.Pytester, aws: str) -> pytest.Pytester:  # noqa: F811
    """v2 and then v3 went through the whole plan: v3 serves 100 %, v2 is history."""
    lg = ledger(aws)
    v2 = publish(aws, "v2")
    record(lg, "v2", "deploy", "passed", ONE, v2)
    record(lg, "v2", "shift100", "passed", ONE, v2)
    v3 = publish(aws, "v3")
    record(lg, "v3", "deploy", "passed", v2, v3)
    record(lg, "v3", "shift100", "passed", v2, v3)
    set_alias(aws, "3")
    return project


def test_failed_verify_of_an_older_release_does_not_move_a_newer_one(
        v3_serving: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_GATE_AT", "verify")
    r = gate(v3_serving, "verify", release="v2")
    assert r.ret == 1, r.stdout.str()
    assert alias_state(aws) == {fn: ("3", {}) for fn in FUNCTIONS}
    rec = ledger(aws).get("fastprod", "v2", "verify")
    assert rec.status == "failed" and "gate failed at verify" in rec.reason
    assert "not rolled back: onchain-api serves v3 100%" in rec.reason and "traffic left as it is" in rec.reason
    assert rec.details["rollback"]["ok"] is False and "refused" in rec.details["rollback"]
    r.stdout.fnmatch_lines(["fastprod verify v2: FAILED"])


def test_rollback_of_a_release_that_does_not_serve_is_refused(v3_serving: pytest.Pytester, aws: str) -> None:
    r = gate(v3_serving, "rollback", release="v2")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*release v2 is not what serves now (onchain-api serves v3 100%*rolling it back would "
                            "move traffic it did not put there*"])
    assert alias_state(aws) == {fn: ("3", {}) for fn in FUNCTIONS}
    assert gate(v3_serving, "rollback", release="v3").ret == 0  # what serves can be rolled back
    assert alias_state(aws) == {fn: ("2", {}) for fn in FUNCTIONS}


def test_a_function_moved_by_hand_during_the_bake_is_left_alone_and_the_others_rolled_back(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # Before: onchain-api pointed at a hotfix during shift10's bake made the whole rollback refuse, and the
    # failed v2 went on serving 10 % of onchain-ws with exit 1 and nothing marking the env.
    add_checkpoint_plugin(project)
    set_policy(project, {"stages": {"shift10": {"bake": "1s"}}})
    lg = ledger(aws)
    seed_deployed(aws, lg)
    publish(aws, "hotfix")  # version 3 of each function
    monkeypatch.setenv("MOVE_ALIAS_AT", "baking")
    monkeypatch.setenv("MOVE_ALIAS_TO", "onchain-api=3")
    monkeypatch.setenv("FAIL_GATE_AT", "shift10")
    r = gate(project, "shift10")
    assert r.ret == 1, r.stdout.str()
    assert alias_state(aws) == {"onchain-api": ("3", {}), "onchain-ws": ("1", {})}
    rec = lg.get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and "left alone: onchain-api serves v3 100%" in rec.reason, rec.reason
    assert "rolled back onchain-ws only" in rec.reason
    assert list(rec.details["rollback"]["functions"]) == ["onchain-ws"] and rec.details["rollback"]["ok"]


# ------------------------------------------------------------------------- finding 3


def test_the_lease_is_renewed_during_a_long_deploy_command(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    """A 2 s lease and a deploy command of 5 s: nobody may take the lock meanwhile."""
    set_policy(project, {"ledger": {"lease": "2s"}})
    proc = spawn_gate(project, "deploy", env={"DEPLOY_SLEEP": "5"})
    lg = ledger(aws)
    deadline = time.monotonic() + 60
    while lg.current_lock("fastprod") is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the gate did not take the lock"
        time.sleep(0.05)
    refused, renewals = 0, []
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            lg.acquire_lock("fastprod", "run-intruder", 60)
        except LockHeld as exc:
            refused += 1
            renewals.append(getattr(exc.lock, "counter", 0))
        else:  # only once the run has given its verdict and let go of the lock
            rec = lg.get("fastprod", "v2", "deploy")
            assert rec is not None and rec.status == "passed", f"the lock was taken over after {refused} refusals"
            lg.release_lock("fastprod", "run-intruder")
            break
        time.sleep(0.2)
    code, out = finish(proc)
    assert code == 0, out
    assert refused >= 10  # tried all along the 5 s, two and a half leases long
    assert max(renewals) >= 5, renewals  # the heartbeat renewed every third of the lease
    assert lg.get("fastprod", "v2", "deploy").status == "passed" and lg.current_lock("fastprod") is None


def test_a_run_that_lost_its_lock_stops_acting(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    set_policy(project, {"ledger": {"lease": "1500ms"}, "stages": {"shift10": {"bake": "30s"}}})
    lg = ledger(aws)
    seed_deployed(aws, lg)
    # The stage fails, so the run would roll back at its end: it must not, once the lock is another run's.
    proc = spawn_gate(project, "shift10", env={"FAIL_GATE_AT": "shift10"})
    proc.wait_for_line("llamadeploy: baking")
    # Another run takes the env over (a takeover after a network partition, say) and records its own run.
    mine = lg.current_lock("fastprod")
    theirs = {"env": "fastprod", "owner": "bob@elsewhere:7", "run_id": "run-intruder", "acquired_at": time.time(),
              "expires_at": time.time() + 600, "stage": "shift10", "release": "v2"}
    dynamodb(aws).put_item(TableName=lg.table, Item={
        "pk": {"S": "env#fastprod"}, "sk": {"S": "lock"}, "run_id": {"S": "run-intruder"},
        "expires_at": {"N": repr(theirs["expires_at"])}, "counter": {"N": "0"}, "doc": {"S": json.dumps(theirs)}})
    intruder = lg.get("fastprod", "v2", "shift10")
    intruder.run_id, intruder.owner, intruder.reason = "run-intruder", "bob@elsewhere:7", "taken over"
    lg.put(intruder, fence="run-intruder")  # the intruder holds the lock: its writes are fenced on it
    sent = time.monotonic()
    code, out = finish(proc)
    assert code == 3, out
    assert time.monotonic() - sent < 20, "the bake went on after the lock was lost"
    assert "LOST THE LOCK of fastprod" in out and "stops acting" in out and "LEASE_LOST" in out
    assert alias_state(aws) == AT_10  # no rollback by a run that no longer holds the env
    got = lg.get("fastprod", "v2", "shift10")
    assert (got.run_id, got.status, got.reason) == ("run-intruder", "started", "taken over")  # not overwritten
    assert lg.current_lock("fastprod").run_id == "run-intruder" and mine.run_id != "run-intruder"


def test_preconditions_are_checked_again_once_the_lock_is_held(project: pytest.Pytester, aws: str,  # noqa: F811
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    add_checkpoint_plugin(project)
    lg = ledger(aws)
    seed_deployed(aws, lg)
    publish(aws, "hotfix")  # version 3, someone's manual fix
    # Between the decision and the lock, someone points onchain-api at version 3 by hand.
    monkeypatch.setenv("MOVE_ALIAS_AT", "lock_acquired")
    monkeypatch.setenv("MOVE_ALIAS_TO", "onchain-api=3")
    r = gate(project, "shift10")
    assert r.ret == 4, r.stdout.str()
    r.stderr.fnmatch_lines(["*the preconditions changed while the lock was being taken*",
                            "*the alias moved since deploy (now {'onchain-api': '3'}*"])
    assert alias_state(aws) == {"onchain-api": ("3", {}), "onchain-ws": ("1", {})}  # not shifted on top of it
    assert lg.get("fastprod", "v2", "shift10") is None and lg.current_lock("fastprod") is None


# ------------------------------------------------------------------------- finding 4


def test_a_failed_rollback_is_rollback_failed_and_the_env_needs_attention(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The issue's case: the shift goes through, its rollback is throttled on onchain-ws for good."""
    set_policy(project, {"rollback_deadline": "2s", "aws": {"max_attempts": 1}})
    lg = ledger(aws)
    seed_deployed(aws, lg)
    with FaultProxy(aws).running() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        rule = proxy.fail("lambda.UpdateAlias", "throttle", target="onchain-ws", after=1)
        monkeypatch.setenv("FAIL_GATE_AT", "shift10")
        r = gate(project, "shift10")
        assert r.ret == 5, r.stdout.str()
        assert rule.failed >= 3  # retried with backoff until the deadline, not once
        assert alias_state(aws) == {"onchain-api": ("1", {}), "onchain-ws": ("1", {"2": 0.1})}
        rec = lg.get("fastprod", "v2", "shift10")
        repair = ("pytest --env=fastprod --stage=rollback --release=v2 --to-version=onchain-api=1,onchain-ws=1 "
                  "--approved-by=NAME")
        assert rec.status == "rollback_failed" and "fastprod needs attention" in rec.reason and repair in rec.reason
        done = rec.details["rollback"]["functions"]
        assert done["onchain-api"]["ok"] and done["onchain-api"]["after"] == {"version": "1", "weights": {}}
        assert done["onchain-api"]["before"] == {"version": "1", "weights": {"2": 0.1}}
        assert not done["onchain-ws"]["ok"] and "TooManyRequests" in done["onchain-ws"]["error"]
        assert done["onchain-ws"]["after"] == {"version": "1", "weights": {"2": 0.1}}
        assert rec.details["needs_attention"]["repair"] == repair
        assert ("rollback_failed", "shift10") in events(project) and lg.current_lock("fastprod") is None
        r.stdout.fnmatch_lines(["*ROLLBACK FAILED*onchain-ws*", "fastprod shift10 v2: ROLLBACK_FAILED"])
        # The next run refuses, naming the exact repair.
        monkeypatch.delenv("FAIL_GATE_AT")
        r = gate(project, "shift10")
        assert r.ret == 4
        r.stderr.fnmatch_lines([f"*fastprod needs attention: the rollback of shift10 of release v2 failed*{repair}*"])
        proxy.clear()  # AWS answers again
        r = gate(project, "rollback", "--to-version=onchain-api=1,onchain-ws=1")
        assert r.ret == 0, r.stdout.str()
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert alias_state(aws) == AT_OLD
    assert "resolved_by" in lg.get("fastprod", "v2", "shift10").details
    assert gate(project, "shift10").ret == 0  # the env is usable again


# ------------------------------------------------------------------------- finding 7


def test_a_corrupt_ledger_file_is_refused_with_exit_4_and_a_recovery_command(
        project: pytest.Pytester, aws: str, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "ledger"
    set_policy(project, {"ledger": {"backend": "file", "path": str(folder)}})
    fl = FileLedger(folder)
    new = seed_deployed(aws, fl)
    record(fl, "v2", "shift10", "passed", ONE, new)
    path = folder / "fastprod.json"
    truncated = path.read_bytes()[:300]
    path.write_bytes(truncated)
    for args in (["--stage=shift50", "--release=v2", "--plan"], ["--stage=shift50", "--release=v2"],
                 ["--stage=rollback", "--to-version=1"]):
        r = run_forked(project, "-p", "no:cacheprovider", "--env=fastprod", "--approved-by=alice", *args,
                                         timeout=120)
        assert r.ret == 4, (args, r.stdout.str(), r.stderr.str())
        r.stderr.fnmatch_lines([f"*the ledger file {path} is unreadable (JSONDecodeError*nothing was changed. "
                                f"To recover: restore the previous copy*`cp {path}.prev {path}`*"])
        assert "Traceback" not in r.stderr.str() + r.stdout.str()
    assert path.read_bytes() == truncated and alias_state(aws) == AT_OLD
    subprocess.run(["cp", f"{path}.prev", str(path)], check=True)  # the recovery command it printed
    r = run_forked(project, "-p", "no:cacheprovider", "--env=fastprod", "--approved-by=alice",
                                     "--stage=shift10", "--release=v2", "--plan", timeout=120)
    assert r.ret == 0, r.stdout.str()


# ------------------------------------------------------------------------- finding 8


def test_a_failed_verdict_write_exits_3_with_the_lock_released(project: pytest.Pytester, aws: str,  # noqa: F811
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    add_checkpoint_plugin(project)
    folder = tmp_path / "ledger"
    set_policy(project, {"ledger": {"backend": "file", "path": str(folder)}})
    fl = FileLedger(folder)
    seed_deployed(aws, fl)
    monkeypatch.setenv("FAIL_VERDICT_WRITES", str(folder))  # every write but `started` fails: a full disk
    r = gate(project, "shift10")
    assert r.ret == 3, r.stdout.str()
    out = r.stdout.str()
    assert out.count("writing the verdict failed") == 4 and "VERDICT NOT RECORDED" in out
    assert "No space left on device" in out and "Traceback" not in out + r.stderr.str()
    assert fl.current_lock("fastprod") is None  # released: the next run need not wait for a lease
    assert fl.get("fastprod", "v2", "shift10").status == "started"  # what the next run sees and resolves
    verdicts = [json.loads(p.read_text()) for p in (project.path / "allure-results").glob("*-result.json")]
    stage = [v for v in verdicts if v["name"].startswith("[fastprod] shift10 v2")]
    assert len(stage) == 1 and stage[0]["status"] == "passed"
    monkeypatch.delenv("FAIL_VERDICT_WRITES")
    r = gate(project, "shift10")  # the next run resumes it; nothing was lost
    assert r.ret == 0, r.stdout.str()
    assert fl.get("fastprod", "v2", "shift10").details["resumed_run"]


# ------------------------------------------------------------------------ finding 10


LEAKY_GATE = """\
import pytest

@pytest.fixture
def auth_headers():
    return {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2ln", "X-Cache": "redis://:ElastiCacheT0ken@cache:6379"}

def test_api_answers_with_a_token(llama, auth_headers):
    print("calling with", auth_headers)
    assert auth_headers["X-Cache"] == "down", auth_headers
"""


def test_the_junit_xml_is_scrubbed_like_the_allure_results(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    seed_deployed(aws, ledger(aws))
    (project.path / "suites" / "health" / "test_leaky_gate.py").write_text(LEAKY_GATE)
    report = project.path / "junit.xml"
    r = gate(project, "shift10", f"--junitxml={report}", "--tb=long", "-l")
    assert r.ret == 1
    text = report.read_text()
    assert "eyJhbGciOiJIUzI1NiJ9" not in text and "ElastiCacheT0ken" not in text
    root = ET.parse(report).getroot()  # still a valid report, with the failure in it
    failures = [f for f in root.iter("failure")]
    assert len(failures) == 1 and "auth_headers" in (failures[0].text or "") and "Bearer ***" in failures[0].text


# ------------------------------------------------------------------------ finding 11


def test_a_foreign_publish_is_not_adopted_as_the_release(project: pytest.Pytester, aws: str,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREIGN_PUBLISH", "1")  # someone publishes release v9 on top while the deploy runs
    r = gate(project, "deploy")
    assert r.ret == 0, r.stdout.str()
    assert ledger(aws).get("fastprod", "v2", "deploy").new_versions == {fn: "2" for fn in FUNCTIONS}
    r.stdout.fnmatch_lines(["*published meanwhile but not release v2 (not adopted): onchain-api v3 ('release v9')*"])


def test_a_publish_that_does_not_name_the_release_fails_the_deploy(project: pytest.Pytester, aws: str,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNMARKED_PUBLISH", "1")
    r = gate(project, "deploy")
    assert r.ret == 1
    rec = ledger(aws).get("fastprod", "v2", "deploy")
    assert "published no version of onchain-api, onchain-ws that names release v2" in rec.reason
    assert "never adopted as the release" in rec.reason and rec.new_versions == {}
    assert alias_state(aws) == AT_OLD
