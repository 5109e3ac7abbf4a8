"""Gate integrity (issue 15): no stage passes by being retried, narrowed or starved of data.

Gate runs are in-process (pytester's ``runpytest_inprocess``, as tests/test_chaos.py does) in
test_gate.py's project, against the moto server of the ``aws`` fixture: no interpreter start-up per
run. Faults are injected at the exact AWS call by the fault proxy (tests/support/faultproxy.py) or
at the exact Python call by patching the one method on the code path.
"""

from __future__ import annotations

import pytest

from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.reliability import publish, record, seed_deployed, set_alias
from tests.test_gate import events, ledger, project, statuses  # noqa: F401 - the gate project fixture

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

