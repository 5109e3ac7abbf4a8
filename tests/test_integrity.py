"""Gate integrity (issue 15): no stage passes by being retried, narrowed or starved of data.

Gate runs are in-process (pytester's ``runpytest_inprocess``, as tests/test_chaos.py does) in
test_gate.py's project, against the moto server of the ``aws`` fixture: no interpreter start-up per
run. Faults are injected at the exact AWS call by the fault proxy (tests/support/faultproxy.py) or
at the exact Python call by patching the one method on the code path.
"""

from __future__ import annotations

import pytest

from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.reliability import publish, record, seed_deployed, set_alias, set_policy
from tests.test_gate import events, ledger, project, statuses  # noqa: F401 - the gate project fixture

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]

AT = {v: {fn: (v, {}) for fn in FUNCTIONS} for v in ("1", "2", "3")}
ONE = {fn: "1" for fn in FUNCTIONS}


def run(p: pytest.Pytester, stage: str, *args: str, release: str | None = "v2") -> pytest.RunResult:
    argv = ["-p", "no:cacheprovider", "--env=fastprod", f"--stage={stage}", "--approved-by=alice", *args]
    if release:
        argv.append(f"--release={release}")
    return p.runpytest_inprocess(*argv)


def out(r: pytest.RunResult) -> str:
    return r.stdout.str() + r.stderr.str()


def promoted(url: str) -> dict[str, str]:
    """v2 went through the whole plan and serves 100 % (records seeded, no gate run)."""
    lg = ledger(url)
    new = seed_deployed(url, lg)
    for stage in ("shift10", "shift50", "shift100"):
        record(lg, "v2", stage, "passed", ONE, new)
    set_alias(url, "2")
    return new


# ------------------------------------------------------------------ rollback is idempotent


def test_a_retried_rollback_does_not_roll_forward_again(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    promoted(aws)
    first = run(project, "rollback", release=None)
    assert first.ret == 0, out(first)
    assert alias_state(aws) == AT["1"]
    # CI retries the rollback job: nothing to undo, it passes and moves nothing (main moved back to v2 here).
    second = run(project, "rollback", release=None)
    assert second.ret == 0, out(second)
    assert alias_state(aws) == AT["1"]
    assert "nothing to undo" in out(second)
    # The version rolled back from is not a target without --emergency --reason, even named.
    named = run(project, "rollback", "--to-version=2", release=None)
    assert named.ret == 4
    assert "onchain-api version 2 was rolled back from by rollback run" in out(named)
    assert alias_state(aws) == AT["1"]
    forced = run(project, "rollback", "--to-version=2", "--emergency", "--reason=v1 corrupts balances", release=None)
    assert forced.ret == 0, out(forced)
    assert alias_state(aws) == AT["2"]
    assert ledger(aws).get("fastprod", "", "rollback").details["emergency_reason"] == "v1 corrupts balances"


def test_a_rollback_never_targets_a_version_that_failed_its_gate(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    """What serves came from a release whose deploy record names a version that failed a gate since."""
    lg = ledger(aws)
    v2 = seed_deployed(aws, lg)
    record(lg, "v2", "shift10", "rolled_back", ONE, v2)  # v2 failed its gate
    v3 = publish(aws, "v3")
    record(lg, "v3", "deploy", "passed", v2, v3)  # v3 was deployed over v2 (by hand: v2 never passed)
    record(lg, "v3", "shift100", "passed", v2, v3)
    set_alias(aws, "3")
    r = run(project, "rollback", release=None)
    assert r.ret == 4
    assert "version 2 was release v2's new version and its shift10 stage ended rolled_back" in out(r)
    assert alias_state(aws) == AT["3"]


# ------------------------------------------------------------------ every suite of the stage runs


def test_a_stage_whose_suite_was_deselected_is_inconclusive_naming_it(project: pytest.Pytester, aws: str) -> None:  # noqa: F811
    seed_deployed(aws, ledger(aws))
    r = run(project, "shift10", "-k", "stage_context")  # health only: monitoring deselected
    assert r.ret == 1, out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back"
    assert rec.reason.startswith("inconclusive: suite monitoring of stage shift10 passed no test"), rec.reason
    assert rec.details["narrowed"] == ["-k 'stage_context'"]  # recorded in any env
    assert alias_state(aws) == AT["1"]


@pytest.mark.parametrize("selection", [["-k", "health"], ["-m", "not slow"], ["suites/health"],
                                       ["suites/health/test_health.py::test_x"]])
def test_narrowing_a_guarded_env_is_refused_before_anything_changes(
        pytester: pytest.Pytester, aws: str, selection: list[str]) -> None:
    from tests.test_guard import _prod_project

    _prod_project(pytester, {})
    (pytester.path / "suites" / "health").mkdir(parents=True)
    before = alias_state(aws)
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--env=prod", "--stage=shift50", "--release=v2",
                                     "--approved-by=alice", *selection)
    assert r.ret == 4, out(r)
    assert "prod is guarded: shift50 runs every test of its suites (health, monitoring, compare)" in out(r)
    assert "--emergency --reason TEXT" in out(r)
    assert alias_state(aws) == before and not (pytester.path / ".llamadeploy").exists()


def test_an_emergency_may_narrow_a_guarded_env(pytester: pytest.Pytester, aws: str) -> None:
    from tests.test_guard import _prod_project

    _prod_project(pytester, {})
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--env=prod", "--stage=shift50", "--release=v2",
                                     "--approved-by=alice", "-k", "health", "--emergency", "--reason=monitoring is down")
    # Past the narrowing check: refused further on, by shift50's own preconditions (shift10 never ran).
    assert r.ret == 4 and "is guarded" not in out(r), out(r)
    assert "shift10 has not run for release v2 in prod" in out(r)


# ------------------------------------------------------------------ second-order failures, in-process
#
# The rollback's UpdateAlias failing on the second function is proved by
# tests/test_reliability.py::test_a_failed_rollback_is_rollback_failed_and_the_env_needs_attention and the
# ("rollback", "lambda.UpdateAlias", 2, ...) site of tests/test_chaos.py: not repeated here.

WATCHED = {"stages": {"shift10": {"bake": "30s", "watch": True}}}


def _set_bake_probe(monkeypatch: pytest.MonkeyPatch, factory: object) -> None:
    # The module as sys.modules has it now: an in-process run before this one left a stale
    # `bakeprobe` attribute on the package (pytester restores sys.modules, not the attribute).
    import importlib

    monkeypatch.setattr(importlib.import_module("pytest_llamadeploy.bakeprobe"), "bake_probe", factory)


def _no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_bake_probe(monkeypatch, lambda context, policy, plugins=None: None)


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_watch_thread_that_raises_or_dies_fails_the_stage_and_rolls_back(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:  # noqa: F811
    from pytest_llamadeploy.metrics.watch import BakeWatch

    set_policy(project, WATCHED)
    seed_deployed(aws, ledger(aws))
    _no_probe(monkeypatch)

    def broken(self: BakeWatch, final: bool = False) -> str:
        raise RuntimeError("a bug in the watch")

    def gone(self: BakeWatch) -> None:  # the thread ends without a verdict (killed, a BaseException)
        return None

    if how == "raises":
        monkeypatch.setattr(BakeWatch, "poll", broken)
    else:
        monkeypatch.setattr(BakeWatch, "_run", gone)
    r = run(project, "shift10")
    assert r.ret == 1, out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back"
    expected = {"raises": "inconclusive: the metrics watch failed: RuntimeError: a bug in the watch\n",
                "dies": "inconclusive: the metrics watch stopped without a verdict"}[how]
    assert rec.reason.startswith(expected), rec.reason
    assert alias_state(aws) == AT["1"]


def test_a_probe_that_raises_is_a_failed_probe_and_on_breach_raising_still_rolls_back(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from pytest_llamadeploy.stage import StageRunner

    set_policy(project, WATCHED)
    seed_deployed(aws, ledger(aws))

    def exploding_probe(context: object, policy: object, plugins: object = None) -> object:
        def probe() -> tuple[bool | None, str]:
            raise ConnectionError("probe exploded")
        return probe

    def on_breach(self: StageRunner, breach: object) -> None:
        raise RuntimeError("on_breach is broken")

    _set_bake_probe(monkeypatch, exploding_probe)
    monkeypatch.setattr(StageRunner, "_on_breach", on_breach)
    r = run(project, "shift10")
    assert r.ret == 1, out(r)
    assert "on_breach failed: RuntimeError: on_breach is broken" in out(r)
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back" and rec.reason.startswith("probe failed: rollback trigger probe_failure_ratio")
    assert "ConnectionError: probe exploded" in rec.reason
    assert alias_state(aws) == AT["1"]  # rolled back by the verdict, since on_breach could not


def test_a_run_that_loses_its_lock_after_the_bake_does_not_roll_back(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The heartbeat renews every third of the lease: a takeover right after the bake is not seen by it yet."""
    import json
    import time

    from pytest_llamadeploy.stage import StageRunner
    from tests.support.reliability import dynamodb

    lg = ledger(aws)
    seed_deployed(aws, lg)
    bake = StageRunner.bake

    def bake_then_lose_the_lock(self: StageRunner, probe: object = None) -> None:
        bake(self, probe)  # type: ignore[arg-type]
        theirs = {"env": "fastprod", "owner": "bob@elsewhere:7", "run_id": "run-intruder", "acquired_at": time.time(),
                  "expires_at": time.time() + 600, "stage": "shift10", "release": "v2"}
        dynamodb(aws).put_item(TableName=lg.table, Item={
            "pk": {"S": "env#fastprod"}, "sk": {"S": "lock"}, "run_id": {"S": "run-intruder"},
            "expires_at": {"N": repr(theirs["expires_at"])}, "counter": {"N": "0"}, "doc": {"S": json.dumps(theirs)}})

    monkeypatch.setattr(StageRunner, "bake", bake_then_lose_the_lock)
    monkeypatch.setenv("FAIL_GATE_AT", "shift10")  # the stage fails: it would roll back, were the env still its
    r = run(project, "shift10")
    assert r.ret == 3, out(r)
    assert "LOST THE LOCK of fastprod" in out(r) and "run-intruder" in out(r)
    assert alias_state(aws) == {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}  # left to the lock's holder
    assert lg.get("fastprod", "v2", "shift10").status == "started"  # no verdict written without the lock
    assert lg.current_lock("fastprod").run_id == "run-intruder"


# ------------------------------------------------------------------ the sandbox reset clears the ledger


def test_the_sandbox_reset_clears_the_sandbox_envs_records_and_lock(aws: str) -> None:
    """A stage a watchdog killed leaves `started` and its lock: the reset between test modules clears both."""
    import boto3

    from pytest_llamadeploy.ledger import DynamoLedger, StageRecord
    from tests.sandbox_fixtures import clear_ledger

    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=aws)
    assert clear_ledger(client, "llamadeploy-ledger") == 0  # no table yet: nothing to clear, no error
    lg = DynamoLedger(client, "llamadeploy-ledger")
    for env in ("sandbox", "sandbox-aws", "prod"):
        lg.put(StageRecord(env=env, release="v2", stage="shift10", status="started", run_id=f"killed-{env}",
                           owner="ci@runner:1", started_at=1.0))
        lg.acquire_lock(env, f"killed-{env}", 600, stage="shift10", release="v2")
        lg.put_artifact(env, "v2", "backup", {"id": f"b-{env}"})
    assert clear_ledger(client, "llamadeploy-ledger") == 4
    for env in ("sandbox", "sandbox-aws"):
        assert lg.records(env) == [] and lg.current_lock(env) is None
        assert lg.get_artifacts(env, "backup")  # a backup stays: a restore test may need it
    assert [r.run_id for r in lg.records("prod")] == ["killed-prod"] and lg.current_lock("prod") is not None
