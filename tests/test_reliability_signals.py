"""Finding 1: SIGTERM and SIGINT on the controller end the stage, roll back, record it, release the lock, exit 2.

Each gate runs in its own process against the moto server, as CI starts it, and is
signalled from outside (as a cancelled job is) or from the test-only checkpoint
plugin (tests/support/reliability.py) at an exact point of the stage.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pytest_llamadeploy.procs import pid_alive
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.reliability import (
    add_checkpoint_plugin,
    finish,
    seed_deployed,
    set_policy,
    spawn_gate,
)
from tests.test_gate import events, ledger, project  # noqa: F401 - the gate project fixture

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]

AT_10 = {fn: ("1", {"2": 0.1}) for fn in FUNCTIONS}
AT_OLD = {fn: ("1", {}) for fn in FUNCTIONS}


@pytest.fixture
def baking(project: pytest.Pytester, aws: str) -> pytest.Pytester:  # noqa: F811
    """v2 deployed; shift10 bakes 30 s (longer than any of these tests may take)."""
    add_checkpoint_plugin(project)
    set_policy(project, {"stages": {"shift10": {"bake": "30s"}}})
    seed_deployed(aws, ledger(aws))
    return project


def _assert_rolled_back_on(aws: str, sig: str, step: str) -> None:
    assert alias_state(aws) == AT_OLD
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    assert rec.status == "rolled_back", rec.reason
    assert rec.reason.startswith(f"interrupted: {sig} received during the {step}"), rec.reason
    assert rec.details["rollback"]["ok"] and ledger(aws).current_lock("fastprod") is None


@pytest.mark.parametrize(("sig", "ignore_sigint"), [("SIGTERM", False), ("SIGINT", False), ("SIGINT", True)],
                         ids=["sigterm", "sigint", "sigint-inherited-as-ignored"])
def test_signal_during_the_bake_rolls_back_records_and_exits_2(
        baking: pytest.Pytester, aws: str, sig: str, ignore_sigint: bool) -> None:
    proc = spawn_gate(baking, "shift10", ignore_sigint=ignore_sigint)
    proc.wait_for_line("llamadeploy: baking")
    assert alias_state(aws) == AT_10
    sent = time.monotonic()
    proc.send_signal(getattr(signal, sig))
    code, out = finish(proc)
    assert code == 2, out
    assert time.monotonic() - sent < 20, "the 30 s bake did not end at the signal"
    _assert_rolled_back_on(aws, sig, "bake")
    assert f"{sig} received during the bake" in out and "ROLLED_BACK" in out
    assert [e for e in events(baking) if e[1] == "shift10"] == [("start", "shift10"), ("rollback", "shift10"),
                                                                ("fail", "shift10")]


def test_sigterm_during_the_deploy_command_kills_it_and_exits_2(project: pytest.Pytester, aws: str,  # noqa: F811
                                                               tmp_path: Path) -> None:
    ready = tmp_path / "deploy-started"
    proc = spawn_gate(project, "deploy", env={"DEPLOY_BLOCK": str(ready)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the deploy command did not start"
        time.sleep(0.05)
    pids = [int(p) for p in ready.read_text().split()]
    try:
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
        assert code == 2, out
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "the deploy command (or its child) outlived the gate"
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    rec = ledger(aws).get("fastprod", "v2", "deploy")
    # Killed before it published anything: nothing moved, so failed, never rolled_back (issue 15).
    assert rec.status == "failed" and rec.reason.startswith("interrupted: SIGTERM received during the deploy command")
    assert "nothing was moved, nothing rolled back" in rec.reason and "rollback" not in rec.details
    assert alias_state(aws) == AT_OLD and ledger(aws).current_lock("fastprod") is None


def test_sigterm_during_the_gate_suites_rolls_back(project: pytest.Pytester, aws: str,  # noqa: F811
                                                   tmp_path: Path) -> None:
    seed_deployed(aws, ledger(aws))
    ready = tmp_path / "suites-running"
    proc = spawn_gate(project, "shift10", env={"BLOCK_AT": "shift10", "BLOCK_READY": str(ready)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the gate suites did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 2, out
    _assert_rolled_back_on(aws, "SIGTERM", "gate suites")


def test_signal_during_the_shift_waits_for_every_function_then_rolls_back(
        project: pytest.Pytester, aws: str, tmp_path: Path) -> None:  # noqa: F811
    """SIGTERM between two UpdateAlias calls: no half-shifted service, then the stage ends and rolls back."""
    add_checkpoint_plugin(project)
    seed_deployed(aws, ledger(aws))
    log = tmp_path / "checkpoints"
    proc = spawn_gate(project, "shift10", env={"CHECKPOINT_LOG": str(log),
                                               "SIGNAL_AT": "alias_written:onchain-api=SIGTERM"})
    code, out = finish(proc)
    assert code == 2, out
    seen = log.read_text().split()
    assert seen.index("alias_written:onchain-ws") < seen.index("rollback_start"), seen
    _assert_rolled_back_on(aws, "SIGTERM", "shift")


def test_a_second_signal_does_not_abort_the_rollback(baking: pytest.Pytester, aws: str, tmp_path: Path) -> None:
    log = tmp_path / "checkpoints"
    proc = spawn_gate(baking, "shift10", env={
        "CHECKPOINT_LOG": str(log),
        # Ctrl-C pressed again and again, and CI's SIGTERM, while the rollback runs.
        "SIGNAL_AT": "rollback_start=SIGINT,rollback_written:onchain-api=SIGTERM,rollback_written:onchain-api=SIGINT"})
    proc.wait_for_line("llamadeploy: baking")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 2, out
    assert "rollback_written:onchain-ws" in log.read_text().split() and "verdict_recorded" in log.read_text().split()
    _assert_rolled_back_on(aws, "SIGTERM", "bake")
