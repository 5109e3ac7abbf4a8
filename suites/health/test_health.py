"""Health gate: the API, the WebSocket, PostgreSQL and Redis answer, fast.

Targets come from the stage context (``llama``): the sandbox state or the
env's policy. At a deploy stage the new version serves 0 % of traffic, so it is
also checked through the preview stage (its alias points at the new version) and
by invoking the Lambda version itself with an API Gateway event (``Qualifier=N``,
as CodeDeploy PreTraffic hooks do): the same calls on AWS and in the sandbox.
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.probe import ProbeResult, probe_http, probe_postgres, probe_redis, probe_ws

#: Seconds each probe may take; a health check slower than this is a failed check.
PROBE_TIMEOUT = 5.0
ROUTES = ["live", "preview", "new-version"]


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
    """The Lambda version to invoke (route new-version), or None for a stage's URL; skips what the stage lacks."""
    if route == "live":
        return None
    if not llama.probe_new_directly:
        pytest.skip(f"stage {llama.stage} checks through the live stage only (the new version already serves users)")
    if route == "preview":
        return None
    version = llama.new_versions.get(function)
    if not version:
        pytest.fail(f"stage {llama.stage} must probe the new version of {function} directly, but the context "
                    f"names no new version for it (new_versions={llama.new_versions})")
    return str(version)


def _url_key(route: str, kind: str) -> str:
    return f"preview_{kind}" if route == "preview" else kind


def _served_by_release(llama, result: ProbeResult, what: str) -> None:
    """The release under test answered (a preview stage or an invoke that reached another release is wrong)."""
    if result.release:
        assert result.release == llama.release, (
            f"{what} is served by release {result.release}, not by the release under deployment "
            f"{llama.release}: {result.describe()}")


@pytest.mark.parametrize("route", ROUTES)
def test_api_health(stage, route, record_property):
    llama = stage.context
    version = _version(llama, route, llama.api_function)
    result = probe_http(llama.resolved_targets, "/health", version=version, timeout=PROBE_TIMEOUT,
                        function=llama.api_function, lambda_client=llama.client("lambda", max_attempts=1),
                        url_key=_url_key(route, "api_url"))
    _record(record_property, result)
    assert result.ok, f"API health check failed: {result.describe()}"
    status = result.body.get("status") if isinstance(result.body, dict) else None
    assert status == "ok", f"API health body does not say status ok: {result.describe()}"
    if route != "live":
        _served_by_release(llama, result, f"the {route} route of {llama.api_function}")


@pytest.mark.parametrize("route", ROUTES)
def test_websocket_first_message(stage, route, record_property):
    llama = stage.context
    version = _version(llama, route, llama.ws_function)
    result = probe_ws(llama.resolved_targets, version=version, timeout=PROBE_TIMEOUT,
                      function=llama.ws_function, lambda_client=llama.client("lambda", max_attempts=1),
                      url_key=_url_key(route, "ws_url"))
    _record(record_property, result)
    assert result.ok, f"WebSocket check failed: {result.describe()}"
    if version is None:
        assert isinstance(result.body, dict) and result.body.get("release"), (
            f"the first WebSocket message does not name the release: {result.describe()}")
    if route != "live":
        _served_by_release(llama, result, f"the {route} route of {llama.ws_function}")


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
