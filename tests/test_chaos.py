"""Chaos: the gate killed at every checkpoint of a shift, and AWS failing at every call site of a shift and a rollback.

(a) SIGKILL. The test-only checkpoint plugin (tests/support/reliability.py) kills the
    gate process at one named point: after the lock, after the ``started`` record,
    after the first function's UpdateAlias, mid-bake, and after the rollback's
    UpdateAlias calls before its record. The next
    run (``--stage=rollback --release=v2``) must take over the dead run's lock, put
    traffic back on v1, resolve the killed record, and lose nothing of the ledger.
(b) API faults. A proxy in front of moto (tests/support/faultproxy.py) makes one AWS
    operation fail from its Nth call on (throttling, HTTP 500, connection reset, read
    timeout) - once for every call site of a passing shift10 and of a passing rollback
    stage. No case may pass; each must end in the verdict the README promises for it,
    with the ledger telling the truth about where traffic is.

Faulted and repair runs are in-process (pytester) against the one moto server; the
killed runs are child processes forked from the test (tests/support/forked.py: SIGKILL must hit a
process of their own; forking skips the interpreter's start-up). A policy with a 1 s rollback deadline,
1.5 s AWS read timeout and one botocore attempt keeps every case to seconds (the read
timeout is the fault only where a site makes few calls).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from pytest_llamadeploy.ledger import FINAL
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.faultproxy import KINDS, FaultProxy
from tests.support.forked import run_forked
from tests.support.reliability import (
    add_checkpoint_plugin,
    record,
    seed_deployed,
    set_alias,
    set_policy,
)
from tests.test_gate import ledger, project, statuses  # noqa: F401 - the gate project fixture

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]

AT_OLD = {fn: ("1", {}) for fn in FUNCTIONS}
AT_10 = {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
CHAOS_POLICY = {"rollback_deadline": "1s", "aws": {"max_attempts": 1, "read_timeout": "1500ms"},
                "stages": {"shift10": {"bake": "1s"}}}


def run(project: pytest.Pytester, stage: str, *args: str, release: str = "v2") -> pytest.RunResult:  # noqa: F811
    return project.runpytest_inprocess("-p", "no:cacheprovider", "--env=fastprod", f"--stage={stage}",
                                       f"--release={release}", "--approved-by=alice", *args)


# --------------------------------------------------------------------------- (a) SIGKILL


KILL_POINTS = ["lock_acquired", "started", "alias_written:onchain-api", "baking", "rollback_applied"]


@pytest.mark.parametrize("checkpoint", KILL_POINTS)
def test_a_gate_killed_at_any_checkpoint_is_repaired_by_the_next_run(
        project: pytest.Pytester, aws: str, checkpoint: str) -> None:  # noqa: F811
    add_checkpoint_plugin(project)
    set_policy(project, CHAOS_POLICY)
    lg = ledger(aws)
    seed_deployed(aws, lg)
    # The rollback checkpoints need a stage that fails, so that it rolls back.
    r = run_forked(project, "-p", "no:cacheprovider", "--env=fastprod", "--stage=shift10", "--release=v2",
                   "--approved-by=alice", timeout=60,
                   env={"KILL_AT": checkpoint, "FAIL_GATE_AT": "shift10" if "rollback" in checkpoint else ""})
    assert r.ret == -signal.SIGKILL, r.stdout.str()  # nothing of ours ran after the checkpoint
    dead = lg.current_lock("fastprod")
    assert dead is not None and dead.stage == "shift10", "the killed run left no lock: it was not killed mid-stage"
    killed = statuses(aws).get("v2/shift10")
    assert killed == (None if checkpoint == "lock_acquired" else "started")

    r = run(project, "rollback")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines([f"*took over the lock of fastprod*run {dead.run_id}*its process * on this host is gone*"])
    assert alias_state(aws) == AT_OLD and lg.current_lock("fastprod") is None
    after = statuses(aws)
    assert after["v2/deploy"] == "passed" and after["v2/rollback"] == "passed"  # nothing lost
    assert after.get("v2/shift10") == (None if killed is None else "aborted")
    assert all(status in FINAL for status in after.values())
    takeover = lg.get_artifacts("fastprod", "lock_takeover")[0]
    assert takeover["previous"]["run_id"] == dead.run_id and "is gone" in takeover["reason"]


# ------------------------------------------------------------------------- (b) API faults

#: (scenario, operation, its Nth call in a clean run, fault, exit code). The Nth call and all later
#: calls of that operation fail. Every code site that calls AWS in a shift and in a rollback stage; the
#: rollback's decision, lock, verdict and release are the same code as the shift's: faulted once, in the shift.
SITES = [
    ("shift", "lambda.GetAlias", 1, "throttle", 4),  # decide: where traffic is
    ("shift", "dynamodb.DescribeTable", 1, "reset", 4),  # decide: the ledger table
    ("shift", "dynamodb.GetItem", 1, "timeout", 4),  # decide: the previous stage's record
    ("shift", "dynamodb.Query", 1, "timeout", 4),  # decide: the env's records
    ("shift", "dynamodb.GetItem", 4, "throttle", 4),  # taking the lock: who holds it
    ("shift", "dynamodb.PutItem", 1, "timeout", 4),  # taking the lock
    ("shift", "lambda.GetAlias", 3, "reset", 4),  # preconditions again, under the lock (released)
    ("shift", "dynamodb.TransactWriteItems", 1, "timeout", 4),  # the `started` record (lock released)
    ("shift", "lambda.GetFunctionConfiguration", 1, "http500", 1),  # the target's versions exist
    ("shift", "lambda.UpdateAlias", 1, "throttle", 1),  # first function: nothing moved
    ("shift", "lambda.UpdateAlias", 2, "reset", 5),  # second function: the first cannot be put back
    ("shift", "lambda.GetAlias", 7, "http500", 5),  # read-back after a write: state unknown
    ("shift", "lambda.GetAlias", 11, "throttle", 5),  # the alias after the action
    ("shift", "lambda.GetAlias", 13, "reset", 5),  # the alias for the verdict
    ("shift", "dynamodb.TransactWriteItems", 2, "http500", 3),  # the verdict
    ("shift", "dynamodb.DeleteItem", 1, "reset", 3),  # releasing the lock
    ("rollback", "lambda.GetFunctionConfiguration", 1, "throttle", 4),  # the rollback target exists
    ("rollback", "lambda.GetAlias", 5, "throttle", 5),  # the rollback's own read
    ("rollback", "lambda.UpdateAlias", 1, "timeout", 5),  # first function
    ("rollback", "lambda.UpdateAlias", 2, "http500", 5),  # second function
    ("rollback", "lambda.GetAlias", 7, "reset", 5),  # read-back of the rollback
    ("rollback", "dynamodb.TransactWriteItems", 2, "throttle", 3),  # the rollback's record, then the verdict
]


def _start(scenario: str, aws: str) -> dict[str, Any]:
    """v2 deployed (shift) or shifted to 10 % (rollback); returns what the env looked like before."""
    lg = ledger(aws)
    new = seed_deployed(aws, lg)
    if scenario == "rollback":
        record(lg, "v2", "shift10", "passed", {fn: "1" for fn in FUNCTIONS}, new)
        set_alias(aws, "1", {"2": 0.1})
    return {"alias": alias_state(aws), "records": statuses(aws)}


def _stage(scenario: str) -> str:
    return "shift10" if scenario == "shift" else "rollback"


def test_the_fault_sites_are_every_aws_operation_of_a_shift_and_a_rollback(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Clean runs through the proxy: every operation they call is faulted by SITES, at calls that happen."""
    set_policy(project, CHAOS_POLICY)
    _start("shift", aws)
    seen: dict[str, list[str]] = {}
    with FaultProxy(aws).running() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        for scenario in ("shift", "rollback"):  # the shift leaves v2 at 10 %: where the rollback starts
            proxy.clear()
            r = run(project, _stage(scenario))
            assert r.ret == 0, r.stdout.str()
            seen[scenario] = proxy.operations()
    faulted = {op for _, op, _, _, _ in SITES}
    for scenario, ops in seen.items():
        assert set(ops) <= faulted, f"{scenario} calls {sorted(set(ops) - faulted)}, which no case faults"
        for s, op, nth, _, _ in SITES:
            if s == scenario:
                assert ops.count(op) >= nth, f"{scenario} calls {op} {ops.count(op)} times, SITES expects call {nth}"
    assert {kind for *_, kind, _ in SITES} == set(KINDS)


@pytest.mark.parametrize(("scenario", "operation", "nth", "kind", "expected"), SITES,
                         ids=[f"{s}-{op.split('.')[1]}{n}-{k}" for s, op, n, k, _ in SITES])
def test_an_aws_fault_at_any_call_site_ends_in_the_right_verdict_never_a_pass(
        project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        scenario: str, operation: str, nth: int, kind: str, expected: int) -> None:
    set_policy(project, CHAOS_POLICY)
    before = _start(scenario, aws)
    stage = _stage(scenario)
    with FaultProxy(aws, hold=2.0).running() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        rule = proxy.fail(operation, kind, after=nth - 1)
        started = time.monotonic()
        r = run(project, stage)
        took = time.monotonic() - started
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    out = r.stdout.str() + r.stderr.str()
    assert rule.failed >= 1, f"the fault never fired: {[str(c) for c in proxy.calls]}"
    assert r.ret == expected, out
    assert took < 30, took
    lg = ledger(aws)
    rec = lg.get("fastprod", "v2", stage)
    lock = lg.current_lock("fastprod")
    if r.ret == 4:  # refused: nothing changed, the lock let go
        assert "nothing was changed" in out and "provider error" in out
        assert alias_state(aws) == before["alias"] and statuses(aws) == before["records"] and lock is None
    elif r.ret == 1:  # failed and rolled back
        assert rec.status == "rolled_back" and rec.reason.startswith("provider error")
        assert alias_state(aws) == AT_OLD and lock is None
    elif r.ret == 5:  # the rollback could not finish: the record says what is where, the env needs attention
        assert rec.status == "rollback_failed" and "needs attention" in rec.reason and lock is None
        assert rec.details["needs_attention"]["repair"].startswith("pytest --env=fastprod --stage=rollback")
        now = alias_state(aws)
        for fn, entry in rec.details["rollback"]["functions"].items():
            if entry["ok"]:  # what it claims it restored, it restored
                assert now[fn] == ("1", {}), (fn, entry)
        assert any(not e["ok"] for e in rec.details["rollback"]["functions"].values())
    else:  # 3: the verdict or the lock release could not be written; said so, nothing hidden
        assert r.ret == 3
        if "VERDICT NOT RECORDED" in out:
            # The `started` record stays for the next run to resolve (as after a kill: part (a)).
            assert rec.status == "started" and lock is None
        else:
            assert "LOCK NOT RELEASED" in out and rec.status == "passed" and lock is not None
            assert lock.holder_gone() is None  # the holder is this test process, which lives on
