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
    """The sandbox's moto process (moto + moto_ext) on a free port (stopped by PID)."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest_llamadeploy.sandbox.moto_server", "--port",
                                      str(self.port), "--state-dir", str(state_dir)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:  # 60 s: its imports alone (moto, CloudFormation's models) took over 20 s at load average 11
            wait_for(lambda: self.proc.poll() is None and _http_ok(f"{self.url}/moto-api/data.json"), 60, "moto")
        except BaseException:
            self.stop()  # a server that never answered is still ours to end
            raise

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
        self.invocations: list[tuple[str | None, str | None]] = []
        self.sock = bind_loopback(0, f"stand-in {release}")
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", ws="websockets-sansio", interface="asgi3",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, f"stand-in {release}")

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from pytest_llamadeploy.sandbox.physics import (
            ANNOTATIONS_HEADER,
            FUNCTION_ERROR_HEADER,
            FUNCTION_NAME_HEADER,
            FUNCTION_VERSION_HEADER,
            THROTTLED_HEADER,
        )

        release = [(b"x-llama-release", self.release.encode()), (b"content-type", b"application/json")]
        if scope["type"] == "http":
            path = scope["path"]
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            # What the runtime told this invocation it runs as (AWS_LAMBDA_FUNCTION_NAME / _VERSION).
            self.invocations.append((headers.get(FUNCTION_NAME_HEADER), headers.get(FUNCTION_VERSION_HEADER)))
            status, body = 200, {"release": self.release, "path": path}
            if path == "/fail":  # a handled error: the function answers 500
                status, body = 500, {"error": "injected"}
            elif path == "/raise":  # the handler raised: the runtime reports an unhandled error
                status, body = 500, {"error": "raised"}
                release.append((FUNCTION_ERROR_HEADER.encode(), b"Unhandled"))
            elif path == "/throttle":  # Lambda refused the invocation for concurrency
                status, body = 429, {"error": "throttled"}
                release.append((THROTTLED_HEADER.encode(), b"1"))
            elif path == "/too-many":  # the application's own 429: an answer like any other
                status, body = 429, {"error": "slow down"}
            elif path == "/annotated":
                release.append((ANNOTATIONS_HEADER.encode(), json.dumps({"function_version": "from-the-app"}).encode()))
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


def set_alias(lam: Any, function: str, version: str, weights: dict[str, float] | None = None,
              alias: str = "live") -> None:
    routing = {"AdditionalVersionWeights": weights or {}}
    try:
        lam.update_alias(FunctionName=function, Name=alias, FunctionVersion=version, RoutingConfig=routing)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_alias(FunctionName=function, Name=alias, FunctionVersion=version, RoutingConfig=routing)


class FrontDoorProcess:
    def __init__(self, state_dir: Path):
        ready = state_dir / "frontdoor.ready"
        self.log = state_dir / "frontdoor.log"
        with self.log.open("w") as log:  # the child has its own descriptor once started
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_llamadeploy.sandbox.frontdoor", "--port", "0", "--state-dir",
                 str(state_dir), "--ready-file", str(ready), "--exit-with-pid", str(os.getpid()), "--log-level",
                 "info", "--trace-sample", "1.0"],  # every invocation traced: the tests count them
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        try:
            wait_for(lambda: ready.exists() or self.proc.poll() is not None, 20, "front door ready file")
            assert self.proc.poll() is None, f"front door exited: {self.log.read_text()}"
            ports = json.loads(ready.read_text())
            self.port = ports["port"]
            self.url = f"http://127.0.0.1:{self.port}"
            self.preview_url = f"http://127.0.0.1:{ports['preview_port']}"
            self.lambda_url = f"http://127.0.0.1:{ports['lambda_port']}"
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

        self.moto = Moto(tmp)
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
            set_alias(self.lam, fn, self.versions["r1"][fn], alias="preview")
        self.state = SandboxState(directory=tmp, aws_endpoint=self.moto.url, redis_url=redis_url,
                                  postgres_dsn=postgres_dsn)
        self.state.save()
        self.frontdoor = FrontDoorProcess(tmp)
        self._parts.append(self.frontdoor)
        self.state.api_url = self.frontdoor.url
        self.state.ws_url = f"ws://127.0.0.1:{self.frontdoor.port}/ws"
        self.state.preview_api_url = self.frontdoor.preview_url
        self.state.preview_ws_url = self.frontdoor.preview_url.replace("http", "ws") + "/ws"
        self.state.lambda_endpoint = self.frontdoor.lambda_url
        self.state.save()

    def invoker(self) -> Any:
        """A Lambda client whose endpoint is the front door's Invoke API, as the sandbox's gate gets it."""
        from pytest_llamadeploy.aws import AwsConfig
        from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

        return AwsConfig("us-east-1", self.moto.url, max_attempts=1, credentials=dict(SANDBOX_CREDENTIALS),
                         endpoints={"lambda": self.frontdoor.lambda_url}).client("lambda")

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


def _wait_routing(client: Any, function: str, version: str, weights: dict[str, float], base: str = "") -> None:
    """Wait until the front door's stage (``base``: its URL, default the live stage) reports the alias as given."""

    def matches() -> bool:
        view = client.get(f"{base}/_frontdoor/routing").json()["functions"].get(function) or {}
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
        # API Gateway answers with the function's headers only: no version header reaches a client.
        assert "x-amz-executed-version" not in response.headers
    # Binomial(300, 0.3): mean 90, sd 7.9; +-4 sd (+-32) fails a correct router with p < 1e-4.
    tolerance = 4 * math.sqrt(n * 0.3 * 0.7)
    assert abs(served["r2"] - n * 0.3) <= tolerance, f"{served} over {n} requests, expected 30 % +- {tolerance:.0f} on r2"
    assert served["r1"] + served["r2"] == n


def test_preview_stage_serves_the_preview_alias_at_zero_weight(rig: Rig, client: Any) -> None:
    v1, v2 = rig.versions["r1"][API], rig.versions["r2"][API]
    set_alias(rig.lam, API, v1)
    set_alias(rig.lam, API, v2, alias="preview")
    _wait_routing(client, API, v1, {})
    _wait_routing(client, API, v2, {}, base=rig.frontdoor.preview_url)
    try:
        releases = {client.get(f"{rig.frontdoor.preview_url}/x").headers["x-llama-release"] for _ in range(20)}
        assert releases == {"r2"}  # the release under test, at 0 % of the live stage
        assert {client.get("/x").headers["x-llama-release"] for _ in range(20)} == {"r1"}
        # No header reaches a version: API Gateway has no such thing.
        assert {client.get("/x", headers={"x-llama-version": v2}).headers["x-llama-release"]
                for _ in range(10)} == {"r1"}
    finally:
        set_alias(rig.lam, API, v1, alias="preview")
    assert client.get("/_sandbox/faults").status_code == 403


def test_lambda_invoke_api_runs_a_version_as_lambda_does(rig: Rig) -> None:
    from botocore.exceptions import ClientError

    from pytest_llamadeploy.probe import apigw_proxy_event

    lam = rig.invoker()
    v2 = rig.versions["r2"][API]

    def invoke(path: str, qualifier: str = v2) -> dict[str, Any]:
        answer = lam.invoke(FunctionName=API, Qualifier=qualifier, Payload=json.dumps(apigw_proxy_event(path)).encode())
        answer["payload"] = json.loads(answer["Payload"].read())
        return answer

    ok = invoke("/ok")
    assert ok["ExecutedVersion"] == v2 and "FunctionError" not in ok and ok["payload"]["statusCode"] == 200
    assert json.loads(ok["payload"]["body"])["release"] == "r2"
    assert rig.backends["r2"].invocations[-1] == (API, v2)  # the runtime told the function who it is
    handled = invoke("/fail")
    assert "FunctionError" not in handled and handled["payload"]["statusCode"] == 500  # a handled error
    raised = invoke("/raise")
    assert raised["FunctionError"] == "Unhandled" and raised["payload"]["errorType"] == "Runtime.UnhandledError"
    with pytest.raises(ClientError) as throttled:
        invoke("/throttle")
    assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert invoke("/too-many")["payload"]["statusCode"] == 429  # the app's own 429 is an answer
    with pytest.raises(ClientError) as missing:
        invoke("/ok", qualifier="99")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # Through an alias, Lambda picks the version and says which ran (the alias set here: the module's
    # other tests move its weights, and xdist does not promise their order).
    lam.update_alias(FunctionName=API, Name="live", FunctionVersion=rig.versions["r1"][API],
                     RoutingConfig={"AdditionalVersionWeights": {}})
    # The front door reads the alias from the Lambda API as it polls it, as Lambda's routing follows an
    # UpdateAlias within moments: the first invoke right after it may still see the old routing.
    wait_for(lambda: invoke("/ok", qualifier="live")["ExecutedVersion"] == rig.versions["r1"][API], 10,
             "the alias update to reach the front door")
    # Every other Lambda call is moto's, passed through unchanged.
    assert lam.get_alias(FunctionName=API, Name="live")["FunctionVersion"] == rig.versions["r1"][API]



@pytest.mark.parametrize("path", ["/too-many", "/throttle"])
def test_the_bake_counts_only_a_lambda_throttle_as_a_throttle_an_apps_429_fails_its_probe(rig: Rig, path: str) -> None:
    """Issue 15: a release answering 429 everywhere must not pass shift10 as "throttled, not failed"."""
    from pytest_llamadeploy.bakeprobe import attribute_probe
    from pytest_llamadeploy.metrics.watch import BakeWatch
    from pytest_llamadeploy.policy import load_policy
    from pytest_llamadeploy.probe import probe_http
    from tests.test_metrics_unit import StubCloudWatch

    lam = rig.invoker()
    v1, v2 = rig.versions["r1"][API], rig.versions["r2"][API]

    def probe() -> tuple[bool | None, str]:  # what bakeprobe.bake_probe does, on the path under test
        return attribute_probe(probe_http(None, path, version=v2, function=API, lambda_client=lam), None)  # type: ignore[arg-type]

    app_429 = path == "/too-many"
    one = probe_http(None, path, version=v2, function=API, lambda_client=lam)  # type: ignore[arg-type]
    assert (one.ok, one.status, one.throttled) == ((False, 429, False) if app_429 else (False, None, True))
    policy = load_policy(ROOT / "policies", "sandbox").policy
    breaches: list[Any] = []
    watch = BakeWatch(StubCloudWatch(), policy, [API, WS], "live", {API: v1}, {API: v2}, time.time(), probe,
                      breaches.append)
    watch.start()
    try:
        wait_for(lambda: breaches or watch.evidence()["probes"]["count"] >= 3, 10, "three probes or a breach")
    finally:
        watch.stop()
    probes = watch.evidence()["probes"]
    if app_429:  # the application's answer: failed probes, and the probe rule rolls back
        assert probes["failed"] == probes["count"] >= 2 and probes["throttled"] == 0
        assert [b.kind for b in breaches] == ["probe"] and "HTTP 429" in breaches[0].message
    else:  # Lambda refused the invocation: the throttle-rate trigger's to judge, not a failed probe
        assert probes["throttled"] == probes["count"] >= 3 and probes["failed"] == 0 and breaches == []


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


def test_backend_down_is_an_unhandled_error_naming_the_version(rig: Rig, client: Any) -> None:
    from pytest_llamadeploy.probe import apigw_proxy_event

    dead = f"http://127.0.0.1:{free_port()}"
    v3 = publish(rig.lam, API, dead, "r-dead")
    answer = rig.invoker().invoke(FunctionName=API, Qualifier=v3, Payload=json.dumps(apigw_proxy_event("/x")).encode())
    assert answer["FunctionError"] == "Unhandled"
    message = json.loads(answer["Payload"].read())["errorMessage"]
    assert f"version {v3}" in message and "r-dead" in message
    set_alias(rig.lam, API, v3, alias="preview")
    _wait_routing(client, API, v3, {}, base=rig.frontdoor.preview_url)
    try:
        # Through a stage, API Gateway answers an integration failure itself: 502, no detail.
        response = client.get(f"{rig.frontdoor.preview_url}/x")
        assert response.status_code == 502 and response.json() == {"message": "Internal server error"}
    finally:
        set_alias(rig.lam, API, rig.versions["r1"][API], alias="preview")


def test_websocket_routing_and_refusal(rig: Rig) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = rig.state.ws_url
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=5))["release"] == "r1"
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    set_alias(rig.lam, WS, rig.versions["r2"][WS], alias="preview")
    try:
        wait_for(lambda: _http_ok(f"{rig.frontdoor.preview_url}/_frontdoor/routing"), 5, "preview stage")
        _wait_routing(__import__("httpx").Client(timeout=5), WS, rig.versions["r2"][WS], {},
                      base=rig.frontdoor.preview_url)
        with connect(rig.state.preview_ws_url) as ws:
            assert json.loads(ws.recv(timeout=5))["release"] == "r2"
    finally:
        set_alias(rig.lam, WS, rig.versions["r1"][WS], alias="preview")
    with pytest.raises(InvalidStatus) as refused:
        with connect(url.replace("/ws", "/refuse")):
            pass
    assert refused.value.response.status_code == 503
    assert b"the $connect handler refused the connection" in refused.value.response.body


# -- telemetry ------------------------------------------------------------------------
def _sum(cw: Any, namespace: str, name: str, dims: list[dict[str, str]], start: datetime) -> float:
    result = cw.get_metric_data(
        MetricDataQueries=[{"Id": "q", "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": name,
                                                                  "Dimensions": dims},
                                                       "Period": 1, "Stat": "Sum"}}],
        StartTime=start, EndTime=datetime.now(UTC) + timedelta(seconds=5))
    # CloudWatch rounds StartTime down to the minute (as AWS does): keep only this test's seconds.
    series = result["MetricDataResults"][0]
    return sum(v for t, v in zip(series["Timestamps"], series["Values"], strict=True) if t >= start)


def test_metrics_logs_and_traces_per_version(rig: Rig, client: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from pytest_llamadeploy import metricnames as m
    from pytest_llamadeploy.probe import apigw_proxy_event

    v1 = rig.versions["r1"][API]
    w1 = rig.versions["r1"][WS]
    # Fresh versions with their own dimensions, so counts from other tests cannot mix in.
    v5 = publish(rig.lam, API, rig.backends["r1"].url, "r1")
    v6 = publish(rig.lam, API, rig.backends["r2"].url, "r2")
    ws4 = publish(rig.lam, WS, rig.backends["r1"].url, "r1")
    ws5 = publish(rig.lam, WS, rig.backends["r2"].url, "r2")
    set_alias(rig.lam, API, v5, {v6: 0.5})
    set_alias(rig.lam, WS, ws4, {ws5: 0.5})
    _wait_routing(client, API, v5, {v6: 0.5})
    _wait_routing(client, WS, ws4, {ws5: 0.5})
    # The API-wide series (API Gateway's) carry no version: count from a second no earlier test used.
    first = math.floor(time.time()) + 1
    wait_for(lambda: time.time() >= first, 2, "the next second")
    start = datetime.fromtimestamp(first, UTC)
    served: Counter[tuple[str, str]] = Counter()
    statuses: Counter[int] = Counter()
    releases = {"r1": v5, "r2": v6}
    for path in ["/ok"] * 30 + ["/fail"] * 20 + ["/raise"] * 10 + ["/throttle"] * 10 + ["/annotated"] * 5:
        before = {r: len(b.invocations) for r, b in rig.backends.items()}
        response = client.get(path)
        statuses[response.status_code] += 1
        # Which version ran: the stand-in that saw the invocation (a gateway error carries no header of it).
        ran = [r for r, b in rig.backends.items() if len(b.invocations) > before[r]]
        served[(releases[ran[0]], path)] += 1
    # What users get (API Gateway): the function's own answers, 502 for a raise, 500 for a throttle.
    assert statuses == Counter({200: 35, 500: 30, 502: 10}), statuses
    targeted = sum(rig.invoker().invoke(FunctionName=API, Qualifier=v6, Payload=json.dumps(
        apigw_proxy_event("/ok")).encode())["StatusCode"] == 200 for _ in range(7))
    for _ in range(6):
        with connect(rig.state.ws_url) as ws:
            json.loads(ws.recv(timeout=5))
    for _ in range(4):  # refused handshakes: the $connect handler said no
        with pytest.raises(InvalidStatus):
            with connect(rig.state.ws_url.replace("/ws", "/refuse")):
                pass
    set_alias(rig.lam, API, v1)
    set_alias(rig.lam, WS, w1)

    cw = rig.moto.client("cloudwatch")
    rest = m.dims(("ApiName", "onchain-api"), ("Stage", "live"))
    connect_route = m.dims(("ApiId", "onchain-ws"), ("Stage", "live"), ("Route", "$connect"))

    def count(version: str, *paths: str) -> int:
        return sum(n for (v, p), n in served.items() if v == version and p in paths)

    expected: dict[str, float] = {}
    queries: dict[str, tuple[str, str, list[dict[str, str]]]] = {}
    for version in (v5, v6):
        dims = m.lambda_version_dims(API, "live", version)
        # Invocations: everything the function ran (not the throttled); Errors: only the raises.
        invoked = count(version, "/ok", "/fail", "/raise", "/annotated")
        for name, value in ((m.LAMBDA_INVOCATIONS, invoked), (m.LAMBDA_ERRORS, count(version, "/raise"))):
            expected[f"{name} {version}"] = value
            queries[f"{name} {version}"] = (m.LAMBDA, name, dims)
    # A throttle has no ExecutedVersion (it is refused before a version runs): the alias counts it.
    expected["throttles"] = 10
    queries["throttles"] = (m.LAMBDA, m.LAMBDA_THROTTLES, m.lambda_alias_dims(API, "live"))
    # Direct invokes are Resource fn:N, not alias traffic.
    expected["targeted"] = targeted
    queries["targeted"] = (m.LAMBDA, m.LAMBDA_INVOCATIONS, m.lambda_qualified_dims(API, v6))
    expected["apigw 5xx"] = 30 + 10  # handled 500s, throttles (500) and raises (502) are all 5xx to users
    queries["apigw 5xx"] = (m.APIGATEWAY, m.APIGW_5XX, rest)
    expected["ws connects"], expected["ws refused"] = 10, 4
    queries["ws connects"] = (m.APIGATEWAY, m.WS_CONNECT_COUNT, connect_route)
    queries["ws refused"] = (m.APIGATEWAY, m.WS_INTEGRATION_ERROR, connect_route)
    # A refused $connect ran fine: no Lambda Error on the WS function.
    expected["ws errors"] = 0
    queries["ws errors"] = (m.LAMBDA, m.LAMBDA_ERRORS, m.lambda_alias_dims(WS, "live"))

    def snapshot() -> dict[str, float]:
        return {k: _sum(cw, *q, start) for k, q in queries.items()}

    # fast physics: every bucket is visible 1-3 s after its second; compare exactly once it has all arrived.
    deadline = time.monotonic() + 20
    got = snapshot()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.3)
        got = snapshot()
    assert got == expected
    assert _sum(cw, m.APIGATEWAY, m.APIGW_COUNT, rest, start) == sum(statuses.values())
    for version in (v5, v6):
        durations = cw.get_metric_data(MetricDataQueries=[{"Id": "d", "MetricStat": {"Metric": {
            "Namespace": m.LAMBDA, "MetricName": m.LAMBDA_DURATION,
            "Dimensions": m.lambda_version_dims(API, "live", version)}, "Period": 60, "Stat": "SampleCount"}}],
            StartTime=start, EndTime=datetime.now(UTC) + timedelta(seconds=5))
        assert sum(durations["MetricDataResults"][0]["Values"]) == expected[f"{m.LAMBDA_INVOCATIONS} {version}"]

    logs = rig.moto.client("logs")

    def v6_streams() -> list[str]:
        try:
            found = logs.describe_log_streams(logGroupName=m.log_group(API))["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return []  # the group is created with the first batch of log events
        return [s["logStreamName"] for s in found if f"[{v6}]" in s["logStreamName"]]

    def v6_reports() -> list[dict[str, Any]]:
        # The stream is created just before its first batch is put, and a line can come a batch later:
        # wait for the line itself, not for the stream (reading the stream once failed a full run).
        return [e for stream in v6_streams() for e in logs.get_log_events(
            logGroupName=m.log_group(API), logStreamName=stream)["events"] if f"REPORT Version: {v6}" in e["message"]]

    # Log events go out in batches every SLOW_FLUSH seconds, as CloudWatch Logs shows them seconds late.
    assert wait_for(v6_reports, 2 * SLOW_FLUSH + 5, f"the REPORT line of version {v6} in its log stream")
    xray = rig.moto.client("xray")
    end = datetime.now(UTC) + timedelta(seconds=5)
    sent = sum(n for (_, path), n in served.items() if path == "/annotated")

    def all_annotated_arrived() -> list[dict[str, Any]]:
        # Segments go out in batches every SLOW_FLUSH seconds: the /annotated requests came last, so
        # they may arrive a batch after the others (waiting for any trace read the earlier batch alone).
        found = xray.get_trace_summaries(StartTime=start, EndTime=end)["TraceSummaries"]
        return found if sum(1 for t in found if t.get("Annotations")) >= sent else []

    traces = wait_for(all_annotated_arrived, 2 * SLOW_FLUSH + 5, "the traces of every /annotated request")
    # Annotations are what the function wrote, nothing more: the stand-in annotates /annotated only.
    annotated = [t for t in traces if t.get("Annotations")]
    assert len(annotated) == sent and all(set(t["Annotations"]) == {"function_version"} for t in annotated), annotated
    assert all("ExecutedVersion" not in (t.get("Annotations") or {}) for t in traces)
    assert len(annotated) < len(traces)
    mine = xray.get_trace_summaries(StartTime=start, EndTime=end,
                                    FilterExpression='annotation.function_version = "from-the-app"')
    assert mine["TraceSummaries"] and len(mine["TraceSummaries"]) == len(annotated)


def _merged(datums: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]]:
    """Datums by (metric, dimensions), as CloudWatch aggregates them: several datums of one
    metric and second (one per alias or version that served) add up."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for d in datums:
        key = (d["MetricName"], tuple((x["Name"], x["Value"]) for x in d["Dimensions"]))
        into = merged.setdefault(key, {"Value": 0.0, "Values": []})
        into["Value"] += d.get("Value", 0.0)
        into["Values"] += d.get("Values", [])
    return merged


def test_telemetry_datums_have_the_documented_dimensions() -> None:
    from pytest_llamadeploy import metricnames as m
    from pytest_llamadeploy.sandbox.frontdoor.telemetry import Telemetry
    from pytest_llamadeploy.sandbox.physics import lambda_outcome

    t = Telemetry(None)
    now = 1_700_000_000.5
    live = {"function": API, "resource": "live", "executed_version": "3", "version": "3", "now": now}
    t.record_invocation(**live, outcome=lambda_outcome(200), duration_ms=12.0)
    t.record_invocation(**live, outcome=lambda_outcome(500), duration_ms=5.0)  # handled: no Error
    t.record_invocation(**live, outcome=lambda_outcome(500, function_error="Unhandled"), duration_ms=6.0)
    t.record_invocation(**live, outcome=lambda_outcome(200, throttled=True), duration_ms=0.0)
    t.record_invocation(function=API, resource="4", executed_version=None, version="4", outcome=lambda_outcome(200),
                        duration_ms=7.0, now=now)
    t.record_rest(stage="live", status=502, latency_ms=8.0, now=now)
    bucket = t.take(everything=True)[int(now)]
    datums = t.datums(int(now), bucket)
    by_key = _merged(datums[m.LAMBDA])
    per_version = tuple((x["Name"], x["Value"]) for x in m.lambda_version_dims(API, "live", "3"))
    alias = tuple((x["Name"], x["Value"]) for x in m.lambda_alias_dims(API, "live"))
    assert by_key[("Invocations", per_version)]["Value"] == 3  # the throttled one is not an invocation
    assert by_key[("Errors", per_version)]["Value"] == 1  # only the unhandled one
    assert ("Throttles", per_version) not in by_key and by_key[("Throttles", alias)]["Value"] == 1
    assert sorted(by_key[("Duration", per_version)]["Values"]) == [5.0, 6.0, 12.0]
    assert by_key[("Invocations", (("FunctionName", API),))]["Value"] == 4
    assert by_key[("Invocations", (("FunctionName", API), ("Resource", f"{API}:4")))]["Value"] == 1
    assert not any(dict(dims).get("ExecutedVersion") == "4" for _, dims in by_key)
    rest = _merged(datums[m.APIGATEWAY])
    assert rest[("5XXError", (("ApiName", "onchain-api"), ("Stage", "live")))]["Value"] == 1
    assert rest[("5XXError", (("ApiName", "onchain-api"),))]["Value"] == 1


def test_release_stdout_emf_is_shipped_and_extracted(tmp_path: Path) -> None:
    from pytest_llamadeploy.sandbox.frontdoor.logship import LogShipper
    from pytest_llamadeploy.sandbox.frontdoor.telemetry import Telemetry

    log = tmp_path / "service-v9.log"
    log.write_text("old line from an earlier run\n")
    (tmp_path / "state.json").write_text(json.dumps({"versions": {"v9": {"log": str(log)}}}))
    shipper = LogShipper(tmp_path)
    assert shipper.poll() == []  # what was there when the front door started is an earlier run's
    doc = {"FunctionName": API, "Version": "9", "Requests": 4, "Responses5xx": 1,
           "_aws": {"Timestamp": 1_700_000_000_000, "CloudWatchMetrics": [{
               "Namespace": "LlamaDeploy/Service", "Dimensions": [["FunctionName", "Version"]],
               "Metrics": [{"Name": "Requests", "Unit": "Count", "StorageResolution": 1},
                           {"Name": "Responses5xx", "Unit": "Count", "StorageResolution": 1}]}]}}
    with log.open("a") as fh:
        fh.write("INFO uvicorn noise\n" + json.dumps(doc) + "\n" + '{"half a line')
    [document] = shipper.poll()
    assert (document.function, document.version) == (API, "9")
    telemetry = Telemetry(None, clock=lambda: 1_700_000_000.0)
    telemetry.ingest([document])
    assert telemetry.emf_delivery.due() == {}  # CloudWatch Logs takes its time (0.5-1.5 s under fast physics)
    telemetry.emf_delivery._clock = lambda: 1_700_000_010.0
    [requests, errors] = telemetry.emf_delivery.due()["LlamaDeploy/Service"]
    assert (requests["MetricName"], requests["Value"], errors["Value"]) == ("Requests", 4.0, 1.0)
    assert requests["StorageResolution"] == 1
    with log.open("a") as fh:
        fh.write(" too\n")  # the half line, completed, is read once whole
    assert shipper.poll() == []


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


@pytest.mark.sandbox
def test_traffic_refuses_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.sandbox.traffic", "--state-dir", str(tmp_path),
                             "--rate", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--rate 0: must be > 0" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.sandbox.traffic", "--state-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no running sandbox" in result.stderr
