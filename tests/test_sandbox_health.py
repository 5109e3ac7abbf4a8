"""The health gate, alias routing and every fault knob on the real shared sandbox.

One release of our own is deployed once for the module; each test holds the
sandbox alone (``sandbox_exclusive``: it moves the alias or sets faults, and
the sandbox is reset around it). The health suite runs as CI runs it: ``pytest --env=sandbox
--stage=verify -k health`` (verify has no action and no bake, so it is the
cheapest stage that runs the real suite against what the alias serves).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pytest_llamadeploy.sandbox.state import RELEASE_HEADER, SandboxState

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[1]
API, WS = "onchain-api", "onchain-ws"
#: Requests sent through the front door to measure the split.
SPLIT_REQUESTS = 400
SPLIT_WEIGHT = 0.3
#: Allowed |observed share - weight|: binomial sd at n=400, p=0.3 is 0.023, so 0.08 is ~3.5 sd
#: (a false failure about once in 2,000 runs) while a router ignoring the weights (0 or 1) fails.
SPLIT_TOLERANCE = 0.08


@dataclass
class Rig:
    state: SandboxState
    release: str
    versions: dict[str, str]
    baseline: dict[str, str]
    token: str
    tmp: Path


def _client() -> httpx.Client:
    return httpx.Client(timeout=10.0, trust_env=False)


@pytest.fixture(scope="module")
def deployed(sandbox: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Rig:
    """Our own release, deployed once per module (a name of its own: safe next to other tests)."""
    from pytest_llamadeploy.sandbox.deploy import deploy_release

    release = f"t-{uuid.uuid4().hex[:6]}"
    versions, _ = deploy_release(sandbox.directory, release, [])
    fresh = SandboxState.load(sandbox.directory)
    with _client() as http:
        token = http.post(f"{fresh.api_url}/auth/token", json={"user": "health-test"}).json()["token"]
    return Rig(fresh, release, {k: str(v) for k, v in versions.items()},
               {k: str(v) for k, v in fresh.extra["baseline"]["lambda_versions"].items()}, token,
               tmp_path_factory.mktemp("health-gate"))


@pytest.fixture
def clean(deployed: Rig, sandbox_exclusive: SandboxState) -> Rig:
    """The sandbox held alone and reset (alias on the baseline, no faults) for one test."""
    return deployed


def _set_alias(rig: Rig, primary: dict[str, str], weights: dict[str, dict[str, float]] | None = None,
               alias: str = "live") -> None:
    """Point an alias (``live``: the live stage; ``preview``: the preview stage), then wait (with
    a deadline) until the front door's stage routes with it."""
    from pytest_llamadeploy.sandbox.provision import sandbox_aws

    lam = sandbox_aws(rig.state).client("lambda")
    weights = weights or {}
    for function, version in primary.items():
        lam.update_alias(FunctionName=function, Name=alias, FunctionVersion=version,
                         RoutingConfig={"AdditionalVersionWeights": weights.get(function, {})})
    stage_url = rig.state.preview_api_url if alias == "preview" else rig.state.api_url
    deadline = time.monotonic() + 10
    with _client() as http:
        while True:
            seen = http.get(f"{stage_url}/_frontdoor/routing").json()["functions"]
            if all(seen[f]["version"] == v and seen[f]["weights"] == weights.get(f, {}) for f, v in primary.items()):
                return
            assert time.monotonic() < deadline, f"front door still routes {seen} 10 s after update_alias"
            time.sleep(0.1)


def _faults(rig: Rig, *pairs: str) -> None:
    from pytest_llamadeploy.sandbox.deploy import set_faults

    set_faults(rig.state.directory, rig.release, list(pairs))


def _health_only_policies(rig: Rig) -> Path:
    """The sandbox policy with a verify stage of the health suite alone: every suite a stage lists must
    pass a test (issue 15), so the stage is narrowed in its policy, not with -k."""
    import shutil

    import yaml

    folder = rig.tmp / "policies"
    if not folder.exists():
        shutil.copytree(ROOT / "policies", folder)
        data = yaml.safe_load((folder / "sandbox.yaml").read_text())
        data.setdefault("stages", {}).setdefault("verify", {})["suites"] = ["health"]
        (folder / "sandbox.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _verify_health(rig: Rig, name: str) -> subprocess.CompletedProcess[str]:
    out = rig.tmp / name
    out.mkdir()
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=sandbox", "--stage=verify",
         f"--release={rig.release}-{name}", f"--policy-dir={_health_only_policies(rig)}", "-q", "-rfE",
         f"--llama-alluredir={out}", f"--llama-artifacts={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        # COLUMNS: the short test summary lines are cut to the terminal width otherwise.
        env={**os.environ, "LLAMADEPLOY_SANDBOX_DIR": str(rig.state.directory), "COLUMNS": "1000"})


def test_health_suite_passes_on_a_good_version_and_names_crash_and_ws_refusal(clean: Rig) -> None:
    rig = clean
    _set_alias(rig, rig.versions)

    good = _verify_health(rig, "good")
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    assert "passed" in good.stdout, good.stdout[-3000:]

    # Both faults at once, one run: each probe fails on its own cause and must say so.
    _faults(rig, "crash=true", "ws_connect_error_rate=1")
    bad = _verify_health(rig, "bad")
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1, output[-4000:]
    api_port = rig.state.api_url.rsplit(":", 1)[1]
    api_failure = next((ln for ln in output.splitlines() if ln.startswith("FAILED") and "test_api_health" in ln), "")
    # What was probed, where, and what came back (status and the service's own reason).
    assert "/health" in api_failure and api_port in api_failure, output[-4000:]
    assert "503" in api_failure and "crash" in api_failure, api_failure
    assert rig.release in api_failure, f"the failure does not name the release that answered: {api_failure}"
    ws_failure = next((ln for ln in output.splitlines()
                       if ln.startswith("FAILED") and "test_websocket_first_message" in ln), "")
    assert "WebSocket" in ws_failure and api_port in ws_failure and "503" in ws_failure, output[-4000:]
    # PostgreSQL and Redis are healthy: their probes must not be dragged down with the release.
    assert "test_postgres_select_1" not in output.split("short test summary")[-1]
    assert "test_redis_ping" not in output.split("short test summary")[-1]


def test_split_through_the_front_door_matches_the_alias_weights(clean: Rig) -> None:
    rig = clean
    _set_alias(rig, rig.baseline, {API: {rig.versions[API]: SPLIT_WEIGHT}})
    served: Counter[str] = Counter()
    with _client() as http:
        for _ in range(SPLIT_REQUESTS):
            response = http.get(f"{rig.state.api_url}/health")
            assert response.status_code == 200, response.text
            served[response.headers[RELEASE_HEADER]] += 1
    baseline_release = rig.state.extra["baseline"]["release"]
    assert set(served) == {baseline_release, rig.release}, served
    share = served[rig.release] / SPLIT_REQUESTS
    assert abs(share - SPLIT_WEIGHT) <= SPLIT_TOLERANCE, (
        f"{rig.release} (version {rig.versions[API]}, weight {SPLIT_WEIGHT}) served {share:.3f} of "
        f"{SPLIT_REQUESTS} requests; allowed {SPLIT_WEIGHT} +/- {SPLIT_TOLERANCE}: {dict(served)}")


def _timed_get(http: httpx.Client, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = http.get(url, **kwargs)
    return response, (time.perf_counter() - started) * 1000.0


def _ws(url: str):
    from websockets.sync.client import connect

    return connect(url, open_timeout=5, close_timeout=1)


def _subscribed(ws) -> None:
    ws.send(json.dumps({"action": "subscribe", "channel": "tvl"}))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if json.loads(ws.recv(timeout=5)).get("type") == "subscribed":
            return
    raise AssertionError("no 'subscribed' answer within 5 s")


def _events_for(ws, chain: str, wait: float) -> int:
    """How many tvl events for ``chain`` arrive within ``wait`` seconds."""
    seen = 0
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if message.get("type") == "event" and message.get("chain") == chain:
            seen += 1
    return seen


def test_each_fault_knob_takes_effect_through_the_front_door(clean: Rig) -> None:
    """One request-level check per knob, on the release through the preview stage (its alias on the
    release's versions, as at the deploy stage; users on live stay on the baseline)."""
    from websockets.exceptions import InvalidStatus

    rig = clean
    _set_alias(rig, rig.versions, alias="preview")
    api = rig.state.preview_api_url
    auth = {"authorization": f"Bearer {rig.token}"}
    with _client() as http:
        def served(response: httpx.Response) -> None:
            assert response.headers.get(RELEASE_HEADER) == rig.release, response.headers

        ok, plain_ms = _timed_get(http, f"{api}/health")
        assert ok.status_code == 200 and ok.json()["status"] == "ok", ok.text
        served(ok)

        _faults(rig, "error_rate=1")
        response = http.get(f"{api}/chains", headers=auth)
        assert response.status_code == 500 and response.json()["error"] == "injected", response.text
        served(response)
        _faults(rig, "error_rate=0", "throttle_rate=1")
        response = http.get(f"{api}/chains", headers=auth)
        # Lambda refused the invocation (throttle): API Gateway answers 500 for it, as on AWS.
        assert response.status_code == 500 and response.json() == {"message": "Internal server error"}, \
            response.text
        _faults(rig, "throttle_rate=0", "unhandled_error_rate=1")
        response = http.get(f"{api}/chains", headers=auth)
        # An unhandled error: API Gateway's 502 (and a Lambda Error on the version).
        assert response.status_code == 502 and response.json() == {"message": "Internal server error"}, \
            response.text
        _faults(rig, "unhandled_error_rate=0")
        _faults(rig, "throttle_rate=0", "latency_ms=400")
        response, slow_ms = _timed_get(http, f"{api}/health")
        assert response.status_code == 200 and slow_ms >= 400, f"{slow_ms:.0f} ms with latency_ms=400"
        _faults(rig, "latency_ms=0", "slow_query_ms=400")
        # A chain nobody asked for: a cache miss, so the release really queries PostgreSQL.
        response, query_ms = _timed_get(http, f"{api}/protocols", params={"chain": f"t2-{uuid.uuid4().hex[:8]}"},
                                        headers=auth)
        assert response.status_code == 200 and response.headers["x-cache"] == "miss", response.headers
        assert query_ms >= 400, f"{query_ms:.0f} ms with slow_query_ms=400"
        _faults(rig, "slow_query_ms=0", "cache_bypass=true")
        for _ in range(2):  # the second read of the same key is a hit unless the cache is bypassed
            response = http.get(f"{api}/chains", headers=auth)
            assert response.status_code == 200 and response.headers["x-cache"] == "miss", response.headers
        _faults(rig, "cache_bypass=false", "crash=true")
        response = http.get(f"{api}/health")
        assert response.status_code == 503 and response.json()["checks"]["crash"]["ok"] is False, response.text
        _faults(rig, "crash=false", "ws_connect_error_rate=1")
        with pytest.raises(InvalidStatus) as refused:
            _ws(rig.state.preview_ws_url).close()
        assert refused.value.response.status_code == 503
        _faults(rig, "ws_connect_error_rate=0", "event_drop_rate=1")
        chain = f"t2drop-{uuid.uuid4().hex[:6]}"
        with _ws(rig.state.preview_ws_url) as dropping, _ws(rig.state.ws_url) as control:
            for ws in (dropping, control):
                assert json.loads(ws.recv(timeout=5))["type"] == "hello"
                _subscribed(ws)
            posted = http.post(f"{api}/events/tvl", json={"chain": chain, "tvl": 1.0},
                               headers={"authorization": f"Bearer {rig.token}"})
            assert posted.status_code == 200, posted.text
            assert _events_for(control, chain, 5.0) == 1, "the control connection got no event: the check proves nothing"
            assert _events_for(dropping, chain, 1.0) == 0, "event_drop_rate=1 still delivered the event"
