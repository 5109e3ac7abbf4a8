"""Health gate: the API, the WebSocket, PostgreSQL and Redis answer, fast.

Targets come from the stage context (``llama``): the sandbox state or the
env's policy. At a deploy stage the new version serves 0 % of traffic, so it
is also probed directly: in the sandbox through the front door's
``x-llama-version`` header, on AWS by invoking the Lambda version with an API
Gateway proxy event (as CodeDeploy PreTraffic hooks do).
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.probe import ProbeResult, probe_http, probe_postgres, probe_redis, probe_ws

#: Seconds each probe may take; a health check slower than this is a failed check.
PROBE_TIMEOUT = 5.0
ROUTES = ["alias", "new-version"]


class Stage:
    """The stage context behind a repr without targets: pytest prints a failing test's arguments,
    and the context's targets hold DSNs whose passwords must never reach a report."""

    def __init__(self, context):
        self.context = context

    def __repr__(self) -> str:
        c = self.context
        return f"<stage {c.env}/{c.stage} release {c.release} new_versions={c.new_versions}>"


@pytest.fixture
def stage(llama) -> Stage:
    return Stage(llama)


def _record(record_property, result: ProbeResult) -> None:
    record_property("probe", result.target_description)
    record_property("latency_ms", round(result.latency_ms, 2))
    print(result.describe())


def _version(llama, route: str, function: str) -> str | None:
    """The Lambda version to target, or None for the alias (skips where the stage has no direct probe)."""
    if route == "alias":
        return None
    if not llama.probe_new_directly:
        pytest.skip(f"stage {llama.stage} probes through the alias only (the new version already serves traffic)")
    version = llama.new_versions.get(function)
    if not version:
        pytest.fail(f"stage {llama.stage} must probe the new version of {function} directly, but the context "
                    f"names no new version for it (new_versions={llama.new_versions})")
    return str(version)


def _lambda_client(llama, version: str | None):
    if version is None or llama.resolved_targets.source == "sandbox":
        return None
    return llama.client("lambda")


@pytest.mark.parametrize("route", ROUTES)
def test_api_health(stage, route, record_property):
    llama = stage.context
    version = _version(llama, route, llama.api_function)
    result = probe_http(llama.resolved_targets, "/health", version=version, timeout=PROBE_TIMEOUT,
                        function=llama.api_function, lambda_client=_lambda_client(llama, version))
    _record(record_property, result)
    assert result.ok, f"API health check failed: {result.describe()}"
    status = result.body.get("status") if isinstance(result.body, dict) else None
    assert status == "ok", f"API health body does not say status ok: {result.describe()}"
    if version is not None and llama.resolved_targets.source == "sandbox" and result.release:
        assert result.release == llama.release, (
            f"version {version} of {llama.api_function} is served by release {result.release}, "
            f"not by the release under deployment {llama.release}: {result.describe()}")


@pytest.mark.parametrize("route", ROUTES)
def test_websocket_first_message(stage, route, record_property):
    llama = stage.context
    version = _version(llama, route, llama.ws_function)
    result = probe_ws(llama.resolved_targets, version=version, timeout=PROBE_TIMEOUT,
                      function=llama.ws_function, lambda_client=_lambda_client(llama, version))
    _record(record_property, result)
    assert result.ok, f"WebSocket check failed: {result.describe()}"
    if llama.resolved_targets.source == "sandbox" or version is None:
        assert isinstance(result.body, dict) and result.body.get("release"), (
            f"the first WebSocket message does not name the release: {result.describe()}")
    if version is not None and llama.resolved_targets.source == "sandbox":
        assert result.release == llama.release, (
            f"version {version} of {llama.ws_function} is served by release {result.release}, "
            f"not by the release under deployment {llama.release}: {result.describe()}")


def test_postgres_select_1(stage, record_property):
    llama = stage.context
    result = probe_postgres(llama.resolved_targets.require("postgres_dsn"), timeout=PROBE_TIMEOUT)
    _record(record_property, result)
    assert result.ok, f"PostgreSQL check failed: {result.describe()}"


def test_redis_ping(stage, record_property):
    llama = stage.context
    result = probe_redis(llama.resolved_targets.require("redis_url"), timeout=PROBE_TIMEOUT)
    _record(record_property, result)
    assert result.ok, f"Redis check failed: {result.describe()}"
