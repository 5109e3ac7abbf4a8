"""Observed, not acted on: dry-run analysis (Argo Rollouts' ``dryRun``) for the gate tests that judge metrics.

The watch observes its own rules (metrics/watch.py). The analyses that run as gate
tests are the key metrics (any test parametrized by ``key_metric``, the monitoring
suite's) and the compare suite. Under ``--observe`` (every one of them) or a key
metric's ``observe: true`` (that one), a failing analysis test is reported as an
expected failure ("x") whose reason starts ``OBSERVED ONLY``, counted as run for its
suite, and recorded with the verdict (``details.observed``); it does not fail the
stage. Every other gate test (health, functional, ...) still acts: observing is
about the thresholds being tuned, not about a service that does not answer.
"""

from __future__ import annotations

from typing import Any

import pytest

#: Suites whose every test is a metric analysis.
ANALYSIS_SUITES = ("compare",)
#: The user property an observed report carries (xdist forwards it to the controller).
OBSERVED_PROPERTY = "llamadeploy_observed"
#: What a test of each key metric is parametrized by (suites/monitoring/conftest.py).
KEY_METRIC_PARAM = "key_metric"


def observed_only(item: pytest.Item, suite: str | None, observe_all: bool, policy: Any) -> str | None:
    """Why a failure of ``item`` is observed only (``--observe``, a rule's ``observe: true``), or None."""
    callspec = getattr(item, "callspec", None)
    key_metric = callspec.params.get(KEY_METRIC_PARAM) if callspec is not None else None
    if key_metric is not None:
        rule = policy.key_metrics.get(key_metric) if policy is not None else None
        if observe_all:
            return "--observe"
        if rule is not None and rule.observe:
            return f"key_metrics.{key_metric}.observe: true"
        return None
    if observe_all and suite in ANALYSIS_SUITES:
        return "--observe"
    return None


def mark_observed(report: pytest.TestReport, why: str) -> None:
    """Turn a failed analysis report into an observed one: an expected failure that fails nothing."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = crash.message.splitlines()[0] if crash is not None and crash.message else "failed"
    report.outcome = "skipped"
    report.wasxfail = f"OBSERVED ONLY ({why}), not acted on: {message}"  # type: ignore[attr-defined]
    report.user_properties.append((OBSERVED_PROPERTY, f"{report.nodeid}: {message} ({why})"))


def observed_of(report: pytest.TestReport) -> str | None:
    """The observed breach an (observed) report carries, or None."""
    return next((str(v) for k, v in report.user_properties if k == OBSERVED_PROPERTY), None)
