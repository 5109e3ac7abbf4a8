"""Issue 12 audit figures (SIGTERM during a bake to exit 2 with the rollback, and edge cases), printed.

Run from the repository root: `.venv/bin/python -m pytest -p tests.conftest bench/issue12/measure_signals.py -s -p no:cacheprovider`
(moto in server mode, loopback, each run bounded). Not part of the test suite: it prints figures.
"""
from __future__ import annotations

import signal
import time

from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.support.reliability import (
    add_checkpoint_plugin,
    finish,
    record,
    seed_deployed,
    set_policy,
    spawn_gate,
)
from tests.test_gate import ledger, project  # noqa: F401

pytest_plugins = ["pytester"]


def test_m1_sigterm_during_bake_to_exit(project, aws):  # noqa: F811
    add_checkpoint_plugin(project)
    set_policy(project, {"stages": {"shift10": {"bake": "30s"}}})
    seed_deployed(aws, ledger(aws))
    proc = spawn_gate(project, "shift10")
    proc.wait_for_line("llamadeploy: baking")
    at10 = alias_state(aws)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    took = time.monotonic() - sent
    rec = ledger(aws).get("fastprod", "v2", "shift10")
    print(f"\nFIG sigterm-bake: exit {code} in {took:.2f}s; before {at10}; after {alias_state(aws)}; "
          f"status {rec.status}; reason {rec.reason[:160]!r}; lock {ledger(aws).current_lock('fastprod')}")


def test_m2_sigterm_during_rollback_stage_bake(project, aws):  # noqa: F811
    """A rollback stage baking (prod: 10 min): what does SIGTERM do there?"""
    set_policy(project, {"stages": {"rollback": {"bake": "30s"}}})
    lg = ledger(aws)
    new = seed_deployed(aws, lg)
    from tests.support.reliability import set_alias
    set_alias(aws, "1", {"2": 0.1})
    record(lg, "v2", "shift10", "passed", {fn: "1" for fn in FUNCTIONS}, new)
    proc = spawn_gate(project, "rollback")
    proc.wait_for_line("llamadeploy: baking")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    took = time.monotonic() - sent
    rec = lg.get("fastprod", "v2", "rollback")
    print(f"\nFIG sigterm-rollback-bake: exit {code} in {took:.2f}s; after {alias_state(aws)}; "
          f"status {rec.status if rec else None}; reason {(rec.reason if rec else '')[:200]!r}; "
          f"lock {lg.current_lock('fastprod')}")
    print("\n".join(out.splitlines()[-8:]))


def test_m3_hotfix_during_bake_is_left_alone_by_the_rollback(project, aws, monkeypatch):  # noqa: F811
    from tests.support.reliability import publish
    from tests.test_gate import gate
    add_checkpoint_plugin(project)
    set_policy(project, {"stages": {"shift10": {"bake": "1s"}}})
    lg = ledger(aws)
    seed_deployed(aws, lg)
    publish(aws, "hotfix")  # version 3
    monkeypatch.setenv("MOVE_ALIAS_AT", "baking")
    monkeypatch.setenv("MOVE_ALIAS_TO", "onchain-api=3")
    monkeypatch.setenv("FAIL_GATE_AT", "shift10")
    r = gate(project, "shift10")
    rec = lg.get("fastprod", "v2", "shift10")
    print(f"\nFIG hotfix-during-bake: exit {r.ret}; after {alias_state(aws)}; status {rec.status}; "
          f"reason {rec.reason[:400]!r}; rollback {rec.details.get('rollback')}")
