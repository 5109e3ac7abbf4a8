"""The front door against a real moto server: alias-weighted routing, version targeting,
weights changing live, and the metrics, logs and traces it publishes.

Backends are minimal stand-in ASGI apps (pure routing tests); moto is a real
server process; the front door is the real module run as a subprocess.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.net import bind_loopback, free_port
from pytest_llamadeploy.sandbox.frontdoor.telemetry import SLOW_FLUSH

ROOT = Path(__file__).resolve().parents[1]
API, WS = "onchain-api", "onchain-ws"


# -- harness (also used by test_health_suite.py) ---------------------------------------------
def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=0.5).status_code < 500
    except httpx.HTTPError:
        return False


class Moto:
    """A real moto server process on a free port (stopped by PID)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is None and _http_ok(f"{self.url}/moto-api/data.json"), 20, "moto")

    def client(self, service: str) -> Any:
        from pytest_llamadeploy.aws import AwsConfig
        from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

        return AwsConfig("us-east-1", self.url, max_attempts=1, credentials=dict(SANDBOX_CREDENTIALS)).client(service)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class StandIn:
    """A minimal backend playing one release: real uvicorn on a real socket, in a thread."""

    def __init__(self, release: str):
        import uvicorn

        self.release = release
        self.healthy = True
        self.sock = bind_loopback(0, f"stand-in {release}")
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", ws="websockets-sansio", interface="asgi3",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, f"stand-in {release}")

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        release = [(b"x-llama-release", self.release.encode()), (b"content-type", b"application/json")]
        if scope["type"] == "http":
            path = scope["path"]
            status, body = 200, {"release": self.release, "path": path}
            if path == "/fail":
                status, body = 500, {"error": "injected"}
            elif path == "/throttle":
                status, body = 429, {"error": "throttled"}
            elif path == "/health":
                status = 200 if self.healthy else 503
                body = {"status": "ok" if self.healthy else "fail", "release": self.release,
                        "checks": {"crash": {"ok": self.healthy}}}
            await send({"type": "http.response.start", "status": status, "headers": release})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            if scope["path"] == "/refuse":
                await send({"type": "websocket.http.response.start", "status": 503, "headers": release})
                await send({"type": "websocket.http.response.body", "body": b'{"error": "refused"}'})
                return
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps({"type": "hello", "release": self.release})})
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": event.get("text") or ""})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def lambda_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    return buffer.getvalue()


def publish(lam: Any, function: str, backend_url: str, release: str) -> str:
    """Create or update ``function`` to point at a backend and publish a version (what sandbox deploy does)."""
    env = {"Variables": {"LLAMA_BACKEND_URL": backend_url, "LLAMA_RELEASE": release}}
    try:
        lam.get_function(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(FunctionName=function, Runtime="python3.11", Handler="handler.handler",
                            Role="arn:aws:iam::123456789012:role/lambda-role", Code={"ZipFile": lambda_zip()},
                            Environment=env)
    else:
        lam.update_function_configuration(FunctionName=function, Environment=env)
    return lam.publish_version(FunctionName=function, Description=release)["Version"]


def set_alias(lam: Any, function: str, version: str, weights: dict[str, float] | None = None) -> None:
    routing = {"AdditionalVersionWeights": weights or {}}
    try:
        lam.update_alias(FunctionName=function, Name="live", FunctionVersion=version, RoutingConfig=routing)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_alias(FunctionName=function, Name="live", FunctionVersion=version, RoutingConfig=routing)


class FrontDoorProcess:
    def __init__(self, state_dir: Path):
        ready = state_dir / "frontdoor.ready"
        self.log = state_dir / "frontdoor.log"
        with self.log.open("w") as log:  # the child has its own descriptor once started
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_llamadeploy.sandbox.frontdoor", "--port", "0", "--state-dir",
                 str(state_dir), "--ready-file", str(ready), "--exit-with-pid", str(os.getpid()), "--log-level",
                 "info"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        try:
            wait_for(lambda: ready.exists() or self.proc.poll() is not None, 20, "front door ready file")
            assert self.proc.poll() is None, f"front door exited: {self.log.read_text()}"
            self.port = json.loads(ready.read_text())["port"]
            self.url = f"http://127.0.0.1:{self.port}"
            wait_for(lambda: _http_ok(f"{self.url}/_frontdoor/routing"), 20, "front door answering")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Rig:
    """moto + two stand-in releases published as versions 1 and 2 of both functions + the front door."""

    def __init__(self, tmp: Path, redis_url: str = "", postgres_dsn: str = ""):
        self._parts: list[Any] = []
        try:
            self._start(tmp, redis_url, postgres_dsn)
        except BaseException:
            self.stop()  # a half-built rig must not leave moto or a front door behind
            raise

    def _start(self, tmp: Path, redis_url: str, postgres_dsn: str) -> None:
        from pytest_llamadeploy.sandbox.state import SandboxState

        self.moto = Moto()
        self._parts.append(self.moto)
        self.lam = self.moto.client("lambda")
        self.moto.client("iam").create_role(RoleName="lambda-role", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]}))
        self.backends = {}
        for release in ("r1", "r2"):
            self.backends[release] = StandIn(release)
            self._parts.append(self.backends[release])
        self.versions: dict[str, dict[str, str]] = {}
        for release, backend in self.backends.items():
            self.versions[release] = {fn: publish(self.lam, fn, backend.url, release) for fn in (API, WS)}
        for fn in (API, WS):
            set_alias(self.lam, fn, self.versions["r1"][fn])
        self.state = SandboxState(directory=tmp, aws_endpoint=self.moto.url, redis_url=redis_url,
                                  postgres_dsn=postgres_dsn)
        self.state.save()
        self.frontdoor = FrontDoorProcess(tmp)
        self._parts.append(self.frontdoor)
        self.state.api_url = self.frontdoor.url
        self.state.ws_url = f"ws://127.0.0.1:{self.frontdoor.port}/ws"
        self.state.save()

    def stop(self) -> None:
        for part in reversed(self._parts):
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others; say which failed
                print(f"cleanup of {part!r} failed: {exc}", file=sys.stderr)


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("frontdoor"))
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def client(rig: Rig) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=rig.frontdoor.url, timeout=10) as c:
        yield c


def _wait_routing(client: Any, function: str, version: str, weights: dict[str, float]) -> None:
    """Wait until the front door reports the alias as given (its view of moto)."""

    def matches() -> bool:
        view = client.get("/_frontdoor/routing").json()["functions"].get(function) or {}
        return view.get("version") == version and view.get("weights") == weights

    wait_for(matches, 5, f"{function} routing {version} {weights}")


# -- routing --------------------------------------------------------------------------
def test_split_follows_alias_weights(rig: Rig, client: Any) -> None:
    v1, v2 = rig.versions["r1"][API], rig.versions["r2"][API]
    set_alias(rig.lam, API, v1, {v2: 0.3})
    _wait_routing(client, API, v1, {v2: 0.3})
    n = 300
    served = Counter()
    for _ in range(n):
        response = client.get("/query")
        assert response.status_code == 200
        served[response.headers["x-llama-release"]] += 1
        assert response.headers["x-amz-executed-version"] == (v2 if response.headers["x-llama-release"] == "r2" else v1)
    # Binomial(300, 0.3): mean 90, sd 7.9; +-4 sd (+-32) fails a correct router with p < 1e-4.
    tolerance = 4 * math.sqrt(n * 0.3 * 0.7)
    assert abs(served["r2"] - n * 0.3) <= tolerance, f"{served} over {n} requests, expected 30 % +- {tolerance:.0f} on r2"
    assert served["r1"] + served["r2"] == n


def test_header_targets_a_version_at_zero_weight(rig: Rig, client: Any) -> None:
    v1, v2 = rig.versions["r1"][API], rig.versions["r2"][API]
    set_alias(rig.lam, API, v1)
    _wait_routing(client, API, v1, {})
    releases = {client.get("/x", headers={"x-llama-version": v2}).headers["x-llama-release"] for _ in range(20)}
    assert releases == {"r2"}
    assert {client.get("/x").headers["x-llama-release"] for _ in range(20)} == {"r1"}
    missing = client.get("/x", headers={"x-llama-version": "99"})
    assert missing.status_code == 404 and "has no version 99" in missing.json()["error"]
    bad = client.get("/x", headers={"x-llama-version": "latest-ish"})
    assert bad.status_code == 404 and "a version is a number" in bad.json()["error"]
    assert client.get("/_sandbox/faults").status_code == 403


def test_weight_change_reaches_traffic_within_a_second(rig: Rig, client: Any) -> None:
    v1, v2 = rig.versions["r1"][API], rig.versions["r2"][API]
    set_alias(rig.lam, API, v1)
    _wait_routing(client, API, v1, {})
    changed = time.monotonic()
    set_alias(rig.lam, API, v2)

    def all_on_r2() -> bool:
        return all(client.get("/x").headers["x-llama-release"] == "r2" for _ in range(5))

    wait_for(all_on_r2, 5, "traffic on r2", every=0.02)
    elapsed = time.monotonic() - changed
    set_alias(rig.lam, API, v1)
    # The front door re-reads the alias once a second (--refresh-interval 1.0, as AWS applies an
    # UpdateAlias within seconds); 0.5 s more covers the request and a busy host's scheduling.
    assert elapsed < 1.5, f"alias change took {elapsed:.2f} s to reach traffic"


def test_backend_down_is_a_502_naming_the_version(rig: Rig, client: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    v3 = publish(rig.lam, API, dead, "r-dead")
    response = client.get("/x", headers={"x-llama-version": v3})
    assert response.status_code == 502
    assert f"version {v3}" in response.json()["error"] and "r-dead" in response.json()["error"]


def test_websocket_routing_and_refusal(rig: Rig) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = rig.state.ws_url
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=5))["release"] == "r1"
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    with connect(url, additional_headers={"x-llama-version": rig.versions["r2"][WS]}) as ws:
        assert json.loads(ws.recv(timeout=5))["release"] == "r2"
    with pytest.raises(InvalidStatus) as refused:
        with connect(url.replace("/ws", "/refuse")):
            pass
    assert refused.value.response.status_code == 503
    assert b"refused the WebSocket handshake" in refused.value.response.body


# -- telemetry ------------------------------------------------------------------------
def _sum(cw: Any, namespace: str, name: str, dims: list[dict[str, str]], start: datetime) -> float:
    result = cw.get_metric_data(
        MetricDataQueries=[{"Id": "q", "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": name,
                                                                  "Dimensions": dims},
                                                       "Period": 1, "Stat": "Sum"}}],
        StartTime=start, EndTime=datetime.now(UTC) + timedelta(seconds=5))
    return sum(result["MetricDataResults"][0]["Values"])


def test_metrics_logs_and_traces_per_version(rig: Rig, client: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from pytest_llamadeploy import metricnames as m
    from pytest_llamadeploy.sandbox import metricnames as sm

    v1 = rig.versions["r1"][API]
    w1 = rig.versions["r1"][WS]
    # Fresh versions with their own dimensions, so counts from other tests cannot mix in.
    v5 = publish(rig.lam, API, rig.backends["r1"].url, "r1")
    v6 = publish(rig.lam, API, rig.backends["r2"].url, "r2")
    ws4 = publish(rig.lam, WS, rig.backends["r1"].url, "r1")
    ws5 = publish(rig.lam, WS, rig.backends["r2"].url, "r2")
    set_alias(rig.lam, API, v5, {v6: 0.5})
    set_alias(rig.lam, WS, ws4, {ws5: 0.5})
    start = datetime.now(UTC) - timedelta(seconds=2)
    _wait_routing(client, API, v5, {v6: 0.5})
    _wait_routing(client, WS, ws4, {ws5: 0.5})
    served: Counter[tuple[str, int]] = Counter()
    for path in ["/ok"] * 30 + ["/fail"] * 20 + ["/throttle"] * 10:
        response = client.get(path)
        served[(response.headers["x-amz-executed-version"], response.status_code)] += 1
    targeted = sum(client.get("/ok", headers={"x-llama-version": v6}).status_code == 200 for _ in range(7))
    ws_attempts = Counter()
    for _ in range(6):
        with connect(rig.state.ws_url) as ws:
            ws_attempts[json.loads(ws.recv(timeout=5))["release"]] += 1
    for _ in range(4):  # refused handshakes: connect errors of whichever version was drawn
        with pytest.raises(InvalidStatus):
            with connect(rig.state.ws_url.replace("/ws", "/refuse")):
                pass
    set_alias(rig.lam, API, v1)
    set_alias(rig.lam, WS, w1)

    cw = rig.moto.client("cloudwatch")
    apigw = m.apigw_rest_dims()
    expected: dict[str, float] = {}
    queries: dict[str, tuple[str, str, list[dict[str, str]]]] = {}
    for version in (v5, v6):
        dims = m.lambda_version_dims(API, "live", version)
        for name, value in ((m.LAMBDA_INVOCATIONS, sum(n for (v, st), n in served.items() if v == version and st != 429)),
                            (m.LAMBDA_ERRORS, served[(version, 500)]), (m.LAMBDA_THROTTLES, served[(version, 429)])):
            expected[f"{name} {version}"] = value
            queries[f"{name} {version}"] = (m.LAMBDA, name, dims)
    # Version-targeted requests are a direct invoke (Resource fn:N), not alias traffic.
    expected["targeted"] = targeted
    queries["targeted"] = (m.LAMBDA, m.LAMBDA_INVOCATIONS, sm.lambda_qualified_dims(API, v6))
    expected["apigw 5xx"] = served[(v5, 500)] + served[(v6, 500)]
    queries["apigw 5xx"] = (m.APIGATEWAY, m.APIGW_5XX, apigw)
    for key, metric, want in (("ws attempts", sm.WS_CONNECT_ATTEMPTS, 10), ("ws errors", sm.WS_CONNECT_ERRORS, 4)):
        for v in (ws4, ws5):
            queries[f"{key} {v}"] = (sm.WEBSOCKET, metric, m.lambda_version_dims(WS, "live", v))
        expected[key] = want

    def snapshot() -> dict[str, float]:
        got = {k: _sum(cw, *q, start) for k, q in queries.items()}
        for key in ("ws attempts", "ws errors"):
            got[key] = got.pop(f"{key} {ws4}") + got.pop(f"{key} {ws5}")
        return got

    # Everything is flushed within a second or two; compare exactly once it has all arrived.
    deadline = time.monotonic() + 15
    got = snapshot()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.3)
        got = snapshot()
    assert got == expected
    assert _sum(cw, m.APIGATEWAY, m.APIGW_COUNT, apigw, start) >= 60
    for version in (v5, v6):
        durations = cw.get_metric_data(MetricDataQueries=[{"Id": "d", "MetricStat": {"Metric": {
            "Namespace": m.LAMBDA, "MetricName": m.LAMBDA_DURATION,
            "Dimensions": m.lambda_version_dims(API, "live", version)}, "Period": 60, "Stat": "SampleCount"}}],
            StartTime=start, EndTime=datetime.now(UTC) + timedelta(seconds=5))
        assert sum(durations["MetricDataResults"][0]["Values"]) == expected[f"{m.LAMBDA_INVOCATIONS} {version}"]
    assert _sum(cw, m.LAMBDA, m.LAMBDA_ERRORS, m.lambda_function_dims(WS), start) >= 4

    logs = rig.moto.client("logs")

    def v6_streams() -> list[str]:
        try:
            found = logs.describe_log_streams(logGroupName=sm.log_group(API))["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return []  # the group is created with the first batch of log events
        return [s["logStreamName"] for s in found if f"[{v6}]" in s["logStreamName"]]

    # Log events go out in batches every SLOW_FLUSH seconds, as CloudWatch Logs shows them seconds late.
    streams = wait_for(v6_streams, SLOW_FLUSH + 5, "log stream")
    events = logs.get_log_events(logGroupName=sm.log_group(API), logStreamName=streams[0])["events"]
    assert any(f"REPORT Version: {v6}" in e["message"] for e in events)
    xray = rig.moto.client("xray")
    summaries = xray.get_trace_summaries(StartTime=start, EndTime=datetime.now(UTC) + timedelta(seconds=5))
    versions = {a["AnnotationValue"]["StringValue"] for s in summaries["TraceSummaries"]
                for a in s.get("Annotations", {}).get("ExecutedVersion", [])}
    assert {v5, v6} <= versions or summaries["TraceSummaries"], summaries


def test_telemetry_datums_have_the_documented_dimensions() -> None:
    from pytest_llamadeploy import metricnames as m
    from pytest_llamadeploy.sandbox.frontdoor.telemetry import Telemetry

    t = Telemetry(None)
    now = 1_700_000_000.5
    t.record_invocation(function=API, version="3", targeted=False, status=200, duration_ms=12.0, now=now)
    t.record_invocation(function=API, version="3", targeted=False, status=500, duration_ms=5.0, now=now)
    t.record_invocation(function=API, version="3", targeted=False, status=429, duration_ms=1.0, now=now)
    t.record_invocation(function=API, version="4", targeted=True, status=200, duration_ms=7.0, now=now)
    bucket = t.take(everything=True)[int(now)]
    datums = t.datums(int(now), bucket)[m.LAMBDA]
    by_key = {(d["MetricName"], tuple((x["Name"], x["Value"]) for x in d["Dimensions"])): d for d in datums}
    per_version = tuple((x["Name"], x["Value"]) for x in m.lambda_version_dims(API, "live", "3"))
    assert by_key[("Invocations", per_version)]["Value"] == 2  # the throttled one is not an invocation
    assert by_key[("Errors", per_version)]["Value"] == 1
    assert by_key[("Throttles", per_version)]["Value"] == 1
    assert sorted(by_key[("Duration", per_version)]["Values"]) == [5.0, 12.0]
    assert by_key[("Invocations", (("FunctionName", API),))]["Value"] == 3
    assert by_key[("Invocations", (("FunctionName", API), ("Resource", f"{API}:4")))]["Value"] == 1
    assert ("Invocations", (("FunctionName", API), ("Resource", f"{API}:live"))) in by_key


def test_traffic_runs_at_its_rate_and_stops_by_itself(rig: Rig) -> None:
    import re

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest_llamadeploy.sandbox.traffic", "--state-dir", str(rig.state.directory),
         "--rate", "20", "--ws-clients", "2", "--ws-hold", "0.5", "--duration", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(re.search(r"traffic done (\{.*\})", result.stdout).group(1))
    # 3 s at 20/s is 60 ticks; a loaded machine may lose a few to the schedule's catch-up rule.
    assert 50 <= summary["sent"] <= 62, summary
    assert summary["statuses"].get("200", 0) >= 45, summary
    assert summary["ws_connects"] >= 2 and summary["ws_errors"] == 0, summary
    assert elapsed < 30


def test_traffic_refuses_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.sandbox.traffic", "--state-dir", str(tmp_path),
                             "--rate", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--rate 0: must be > 0" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.sandbox.traffic", "--state-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no running sandbox" in result.stderr
