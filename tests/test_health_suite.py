"""The health gate suite (suites/health) run as pytest runs it, against live parts:
moto, the front door, real PostgreSQL and Redis, and stand-in releases whose health we control.

The stage context is built by hand (as the controller would write it) and
handed to the suite through a tiny plugin that provides the ``llama`` fixture;
the project's plugin is disabled so it does not need --env.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_frontdoor import API, ROOT, WS, Rig, _wait_routing, free_port, set_alias, wait_for  # noqa: E402

pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="redis-server is not installed")]

CONTEXT_PLUGIN = '''
import os
import pytest
from pytest_llamadeploy.context import StageContext

@pytest.fixture(scope="session")
def llama():
    from pathlib import Path
    return StageContext.load(Path(os.environ["LLAMA_TEST_CONTEXT"]))
'''


class Redis:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: self._ping(client), 10, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def _ping(client) -> bool:
        try:
            return bool(client.ping())
        except Exception:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, dict[str, str]]]:
    from pytest_llamadeploy.sandbox import postgres

    base = tmp_path_factory.mktemp("health")
    redis = Redis(base)
    (base / "pg").mkdir()
    pg = postgres.start(base / "pg", timeout=60)
    rig = None
    try:
        rig = Rig(base / "sandbox", redis_url=redis.url, postgres_dsn=pg.dsn)
        # As the deploy stage leaves it: live on r1, the preview alias on the new versions (r2).
        with httpx.Client(timeout=5) as http:
            for fn in (API, WS):
                set_alias(rig.lam, fn, rig.versions["r2"][fn], alias="preview")
                _wait_routing(http, fn, rig.versions["r2"][fn], {}, base=rig.frontdoor.preview_url)
        targets = {"api_url": rig.state.api_url, "ws_url": rig.state.ws_url, "postgres_dsn": pg.dsn,
                   "preview_api_url": rig.state.preview_api_url, "preview_ws_url": rig.state.preview_ws_url,
                   "redis_url": redis.url, "sqs_queue_url": "", "source": "sandbox"}
        yield rig, targets
    finally:
        if rig is not None:
            rig.stop()
        postgres.stop(pg.component())
        redis.stop()


def run_suite(tmp_path: Path, rig: Rig, targets: dict[str, str], release: str = "r2") -> tuple[dict[str, str], str]:
    """Run suites/health on a deploy-stage context; outcome per test id and the whole output."""
    from pytest_llamadeploy.aws import AwsConfig
    from pytest_llamadeploy.context import StageContext
    from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

    aws = AwsConfig("us-east-1", rig.moto.url, max_attempts=1, credentials=dict(SANDBOX_CREDENTIALS),
                    endpoints={"lambda": rig.frontdoor.lambda_url})
    context = StageContext(env="sandbox", stage="deploy", release=release, policy_dir=str(ROOT / "policies"),
                           old_versions={API: rig.versions["r1"][API], WS: rig.versions["r1"][WS]},
                           new_versions={API: rig.versions["r2"][API], WS: rig.versions["r2"][WS]},
                           probe_new_directly=True, targets=targets, aws=aws.to_json())
    # Written by hand: StageContext.save() leaves out targets that carry a password, and this
    # test hands one over on purpose to prove it never shows in the suite's output.
    (tmp_path / "context.json").write_text(json.dumps({**context.to_json(), "targets": targets}))
    (tmp_path / "llama_context_plugin.py").write_text(CONTEXT_PLUGIN)
    junit = tmp_path / "junit.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "suites" / "health"), "-p", "no:llamadeploy",
         "-p", "llama_context_plugin", "-p", "no:cacheprovider", "-q", "-rA", f"--junitxml={junit}",
         "-o", "junit_family=legacy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
             "LLAMA_TEST_CONTEXT": str(tmp_path / "context.json")},
    )
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure")
        skipped = case.find("skipped")
        outcomes[case.get("name")] = ("failed: " + (failed.get("message") or "")) if failed is not None else (
            "skipped" if skipped is not None else "passed")
    return outcomes, result.stdout + result.stderr


def test_health_suite_passes_on_healthy_parts(live, tmp_path: Path) -> None:
    rig, targets = live
    outcomes, output = run_suite(tmp_path, rig, targets)
    assert outcomes == {
        **{f"test_api_health[{route}]": "passed" for route in ("live", "preview", "new-version")},
        **{f"test_websocket_first_message[{route}]": "passed" for route in ("live", "preview", "new-version")},
        "test_postgres_select_1": "passed", "test_redis_ping": "passed",
    }, output
    # Each probe says where it went, what came back and how long it took (issue 15: was `"ms" in output`).
    for where in ("(through the live stage)", "(through the preview stage)", f"lambda:Invoke {API}:"):
        assert re.search(rf"{re.escape(where)}.* -> HTTP 200\b.*\(\d+\.\d ms", output), (where, output)


def test_failing_new_version_health_is_named_precisely(live, tmp_path: Path) -> None:
    rig, targets = live
    rig.backends["r2"].healthy = False
    try:
        outcomes, output = run_suite(tmp_path, rig, targets)
    finally:
        rig.backends["r2"].healthy = True
    assert outcomes["test_api_health[live]"] == "passed", output  # r1 serves the live alias and is healthy
    message = outcomes["test_api_health[new-version]"]
    version = rig.versions["r2"][API]
    for part in ("API health check failed", f"lambda:Invoke {API}:{version} GET /health", "HTTP 503",
                 '"status": "fail"', "release r2"):
        assert part in message, f"{part!r} missing from: {message}"
    preview = outcomes["test_api_health[preview]"]
    for part in ("API health check failed", f"{rig.state.preview_api_url}/health", "HTTP 503", "release r2"):
        assert part in preview, f"{part!r} missing from: {preview}"


def test_wrong_release_behind_the_new_version_fails(live, tmp_path: Path) -> None:
    rig, targets = live
    outcomes, _ = run_suite(tmp_path, rig, targets, release="r9")
    assert "served by release r2, not by the release under deployment r9" in outcomes["test_api_health[new-version]"]


def test_unreachable_redis_and_postgres_fail_without_leaking_secrets(live, tmp_path: Path) -> None:
    rig, _ = live
    port = free_port()
    targets = {"api_url": rig.state.api_url, "ws_url": rig.state.ws_url,
               "preview_api_url": rig.state.preview_api_url, "preview_ws_url": rig.state.preview_ws_url,
               "postgres_dsn": f"postgresql://llama:pgS3cretXYZ@127.0.0.1:{port}/defillama",
               "redis_url": f"redis://:rdS3cretXYZ@127.0.0.1:{port}/0", "sqs_queue_url": "", "source": "sandbox"}
    outcomes, output = run_suite(tmp_path, rig, targets)
    assert f"Redis check failed: Redis PING at 127.0.0.1:{port} -> no answer: ConnectionError" in \
        outcomes["test_redis_ping"], output
    assert f"PostgreSQL check failed: PostgreSQL SELECT 1 at 127.0.0.1:{port}/defillama -> no answer" in \
        outcomes["test_postgres_select_1"], output
    assert "S3cretXYZ" not in output and "S3cretXYZ" not in str(outcomes)
    assert "warning" not in output.lower(), output


def test_probe_result_of_a_lambda_invoke_is_mapped() -> None:
    """The AWS path (Lambda invoke with an API Gateway proxy event): pure mapping, fake responses."""
    import io
    import json

    from pytest_llamadeploy.probe import apigw_proxy_event, interpret_invoke, invoke_http

    event = apigw_proxy_event("/protocols?chain=Ethereum")
    assert event["path"] == "/protocols" and event["queryStringParameters"] == {"chain": "Ethereum"}
    assert event["httpMethod"] == "GET" and event["requestContext"]["stage"] == "live"

    class FakeLambda:
        def __init__(self, response):
            self.response, self.calls = response, []

        def invoke(self, **kwargs):
            self.calls.append(kwargs)
            return {**self.response, "Payload": io.BytesIO(self.response["Payload"])}

    ok = FakeLambda({"StatusCode": 200, "ExecutedVersion": "7", "Payload": json.dumps(
        {"statusCode": 200, "headers": {"X-Llama-Release": "v1.2"}, "body": json.dumps({"status": "ok"})}).encode()})
    result = invoke_http(ok, "onchain-api", "7", "/health")
    assert (result.ok, result.status, result.release, result.version, result.body) == (True, 200, "v1.2", "7",
                                                                                         {"status": "ok"})
    assert ok.calls[0]["Qualifier"] == "7" and json.loads(ok.calls[0]["Payload"])["path"] == "/health"
    crashed = interpret_invoke({"FunctionError": "Unhandled", "Payload": io.BytesIO(
        b'{"errorType": "KeyError", "errorMessage": "DB_URL"}')}, "lambda:Invoke onchain-api:7", 3.0)
    assert not crashed.ok and "KeyError: DB_URL" in crashed.describe()
    unhealthy = interpret_invoke({"Payload": io.BytesIO(b'{"statusCode": 503, "body": "{\\"status\\": \\"fail\\"}"}')},
                                 "x", 1.0)
    assert not unhealthy.ok and unhealthy.status == 503 and unhealthy.body == {"status": "fail"}


def test_unanswered_probe_is_attributed_by_asking_the_old_version() -> None:
    """Pure logic: a probe the new version did not answer counts only if the old version answered."""
    from pytest_llamadeploy.bakeprobe import attribute_probe
    from pytest_llamadeploy.probe import ProbeResult

    def result(status: int | None, ok: bool, version: str) -> ProbeResult:
        error = None if ok else ("no answer within 2 s" if status is None else "expected HTTP 200")
        return ProbeResult(ok, status, 2000.0 if status is None else 5.0, None, error, f"GET /stats (v{version})")

    assert attribute_probe(result(200, True, "4"), None) == (True, "GET /stats (v4) -> HTTP 200 (5.0 ms)")
    assert attribute_probe(result(502, False, "4"), result(None, False, "3"))[0] is False  # an answer is an answer
    ok, detail = attribute_probe(result(None, False, "4"), result(None, False, "3"))
    assert ok is None and "the old version gave no answer either" in detail
    ok, detail = attribute_probe(result(None, False, "4"), result(200, True, "3"))
    assert ok is False and "old version answered HTTP 200" in detail
    assert attribute_probe(result(None, False, "4"), None)[0] is False  # nobody to clear it
