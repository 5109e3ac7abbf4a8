"""The runbook's performance tests: API p95 and failures, WebSocket latency, database queries, cache.

Thresholds come from the policy's ``performance`` section; every failure names
the metric, its value, the threshold, the load and the release.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llamadeploy.load.gate import (
    PerformanceEvidence,
    Thresholds,
    attach_artifacts,
    check_api,
    check_cache,
    check_db,
    check_ws,
)


def _verdict(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_api_p95_and_failure_ratio(performance_run: PerformanceEvidence, performance_thresholds: Thresholds) -> None:
    attach_artifacts(performance_run)
    _verdict(check_api(performance_run, performance_thresholds))


def test_websocket_event_latency_p95(llama: Any, performance_run: PerformanceEvidence,
                                     performance_thresholds: Thresholds) -> None:
    from pytest_llamadeploy.testdata import write_refusal

    refusal = write_refusal(llama.policy, llama.env, "performance")
    if refusal:  # the load published no event to time
        pytest.skip(refusal)
    _verdict(check_ws(performance_run, performance_thresholds))


def test_database_query_p95(performance_run: PerformanceEvidence, performance_thresholds: Thresholds) -> None:
    _verdict(check_db(performance_run, performance_thresholds))


def test_cache_hit_rate(performance_run: PerformanceEvidence, performance_thresholds: Thresholds) -> None:
    _verdict(check_cache(performance_run, performance_thresholds))
