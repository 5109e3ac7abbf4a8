"""Monitoring gate: parameters come from the policy, the metric values from one GetMetricData call.

``pytest_generate_tests`` reads the env's policy (names of key metrics,
dashboards, alarms) so each shows as its own test in the report; without an
env the plugin is inert and these tests are not collected with parameters.
"""

from __future__ import annotations

from typing import Any

import pytest


def _policy(config: pytest.Config) -> Any | None:
    try:
        from pytest_llamadeploy.plugin import SETTINGS_KEY
        from pytest_llamadeploy.policy import load_policy

        settings = config.stash.get(SETTINGS_KEY, None)
        if settings is None or not settings.env:
            return None
        return load_policy(settings.policy_dir, settings.env).policy
    except Exception:  # noqa: BLE001 - a bad policy is reported by the plugin itself, not here
        return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    policy = _policy(metafunc.config)
    lists = {
        "key_metric": list(policy.key_metrics) if policy else [],
        "dashboard": list(policy.monitoring.dashboards) if policy else [],
    }
    for name, values in lists.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


@pytest.fixture(scope="session")
def key_metric_results(llama: Any) -> list[Any]:
    """Every key metric x version x function over the bake window (one GetMetricData call per worker)."""
    from pytest_llamadeploy.metrics.evaluate import evaluate_rules, serving_versions
    from pytest_llamadeploy.metrics.query import ProviderError

    start, end = llama.bake_window()
    policy = llama.policy
    try:
        return evaluate_rules(llama.client("cloudwatch"), policy, policy.key_metrics, serving_versions(llama),
                              start, end)
    except ProviderError as exc:
        pytest.fail(f"key metrics inconclusive: {exc}", pytrace=False)
