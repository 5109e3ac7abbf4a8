"""The stage's verdict as a plugin sees it (``pytest_llamadeploy_verdict``), and what its answers may change.

A plugin may turn a pass into a failure (a veto), never a failure into a pass: a gate
must never be kinder for a plugin being installed. A plugin that raises has not
agreed, so it fails a passing stage too (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .redact import redact, redact_data

#: The reason of a stage a verdict plugin vetoed (reporting/categories.py groups it with breached thresholds).
VETO_PREFIX = "threshold breached: a verdict plugin vetoed the pass:"
#: The reason of a passing stage whose verdict plugin raised.
BROKEN_PREFIX = "inconclusive: a verdict plugin failed, and a plugin that cannot answer has not agreed:"


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, before the rollback of a failure and before the ledger has it."""

    env: str
    stage: str
    release: str
    run_id: str
    #: ``passed`` or ``failed`` (the ledger then says ``rolled_back`` where traffic was moved back).
    status: Literal["passed", "failed"]
    #: Why it failed, starting with its category (``inconclusive:``, ``rollback triggered:``, ...); "" if passed.
    reason: str
    #: ``nodeid: message`` of each failed gate test.
    failed_tests: tuple[str, ...] = ()
    #: Gate tests passed per suite.
    passed_by_suite: Mapping[str, int] = field(default_factory=dict)
    #: The stage's evidence, secrets redacted: ``watch`` (the bake's rules, values, probes and breach: what the
    #: Allure report shows), ``record`` (the ``started`` record: versions, weights before, approver, details).
    evidence: Mapping[str, Any] = field(default_factory=dict)


def _plain(data: Any) -> Any:
    return redact_data(json.loads(json.dumps(data, default=str)))


def make_verdict(runner: Any, reason: str, failed_tests: list[str], passed_by_suite: Mapping[str, int] | None) -> Verdict:
    """The verdict of ``runner`` (stage.StageRunner) as plugins get it."""
    watch = dict(runner.context.watch) if runner.context is not None else {}
    return Verdict(env=runner.env, stage=runner.stage, release=runner.release or "", run_id=runner.run_id,
                   status="failed" if reason else "passed", reason=reason, failed_tests=tuple(failed_tests),
                   passed_by_suite=dict(passed_by_suite or {}),
                   evidence={"watch": _plain(watch), "record": _plain(runner.record.to_json() if runner.record else {})})


def judged(verdict: Verdict, call: Any) -> tuple[str, list[str]]:
    """(the stage's reason after its verdict plugins, what they said). ``call(verdict=...)`` is the hook.

    A failure keeps its reason whatever they answer; a pass becomes a failure on the first veto
    (a non-empty string) or when the hook raises.
    """
    try:
        answers = [redact(str(a)) for a in call(verdict=verdict) if a]
    except Exception as exc:  # noqa: BLE001 - any error of a plugin's is its answer here
        said = redact(f"{type(exc).__name__}: {exc}")
        return (verdict.reason or f"{BROKEN_PREFIX} {said}"), [f"raised {said}"]
    if verdict.reason or not answers:
        return verdict.reason, answers
    return f"{VETO_PREFIX} {'; '.join(answers)}", answers
