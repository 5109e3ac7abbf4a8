"""Integration: the metrics watch against the sandbox's real moto server process (moto_ext installed).

Each test gets its own moto process on a free 127.0.0.1 port and its own state
folder, so the tests run in parallel under pytest-xdist. The policy is the
sandbox's with no lag (data is put at "now" here; the lag is tested on its own).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy import metricnames as mn
from pytest_llamadeploy.metrics.compare import compare_versions
from pytest_llamadeploy.metrics.evaluate import evaluate_rules
from pytest_llamadeploy.metrics.watch import BakeWatch, Breach
from pytest_llamadeploy.net import free_port
from pytest_llamadeploy.policy import load_policy
from pytest_llamadeploy.sandbox.observability import ALARM_NAMES, DASHBOARD_NAMES, provision

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = "3", "4"


class Moto:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        for _ in range(3):
            port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_llamadeploy.sandbox.moto_server", "--port", str(port),
                 "--state-dir", str(self.tmp)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if "listening" in line:
                self.url = f"http://127.0.0.1:{port}"
                return
            self.stop()
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def client(self, service: str = "cloudwatch") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="sandbox", aws_secret_access_key="sandbox",
                            config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                          connect_timeout=1, read_timeout=5))


@pytest.fixture
def moto(tmp_path: Path):
    server = Moto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def no_lag(base: Any) -> Any:
    metrics = base.metrics.model_copy(update={"service": base.metrics.service.model_copy(update={"lag": 0.0}),
                                              "aws": base.metrics.aws.model_copy(update={"lag": 0.0})})
    return base.model_copy(update={"metrics": metrics})


@pytest.fixture(scope="module")
def policy():
    base = load_policy(ROOT / "policies", "sandbox").policy
    watch = base.watch.model_copy(update={"interval": 0.3, "no_data_grace": 2.0, "provider_error_limit": 3,
                                          "probe_rate": 5.0})
    return no_lag(base.model_copy(update={"watch": watch}))


HIGH = {"StorageResolution": 1}  # the sandbox's fast physics: a second per datapoint


def put_lambda(cw: Any, fn: str, version: str, invocations: int, errors: int = 0, durations: list[float] | None = None,
               throttles: int = 0, at: datetime | None = None) -> None:
    """AWS/Lambda as the front door publishes it: per version through the alias, throttles per alias."""
    dims = mn.lambda_version_dims(fn, "live", version)
    stamp = at or datetime.now(UTC)
    data: list[dict[str, Any]] = [
        {"MetricName": mn.LAMBDA_INVOCATIONS, "Dimensions": dims, "Values": [1.0], "Counts": [float(invocations)],
         "Timestamp": stamp, **HIGH},
        {"MetricName": mn.LAMBDA_ERRORS, "Dimensions": dims, "Value": float(errors), "Timestamp": stamp, **HIGH},
        {"MetricName": mn.LAMBDA_INVOCATIONS, "Dimensions": mn.lambda_alias_dims(fn, "live"), "Value": float(invocations),
         "Timestamp": stamp, **HIGH},
        {"MetricName": mn.LAMBDA_THROTTLES, "Dimensions": mn.lambda_alias_dims(fn, "live"), "Value": float(throttles),
         "Timestamp": stamp, **HIGH},
    ]
    if durations:
        data.append({"MetricName": mn.LAMBDA_DURATION, "Dimensions": dims, "Values": durations, "Timestamp": stamp,
                     "Unit": "Milliseconds", **HIGH})
    cw.put_metric_data(Namespace=mn.LAMBDA, MetricData=data)


def put_service(cw: Any, policy: Any, fn: str, version: str, requests: int, errors: int = 0,
                latencies: list[float] | None = None, at: datetime | None = None) -> None:
    """What a function's EMF lines become (docs/service-contract.md): per version, high resolution."""
    dims = mn.service_dims(fn, version)
    stamp = at or datetime.now(UTC)
    def count(name: str, value: float) -> dict[str, Any]:
        return {"MetricName": name, "Dimensions": dims, "Value": float(value), "Timestamp": stamp, **HIGH}

    def values(name: str, value: float) -> dict[str, Any]:
        return {"MetricName": name, "Dimensions": dims, "Values": [value], "Counts": [float(requests)],
                "Timestamp": stamp, "Unit": "Milliseconds", **HIGH}

    # A healthy function's other series too (every request a cache hit plus one fresh read, every
    # event delivered): the per-version triggers of issue 14 judge them.
    if fn == "onchain-ws":
        data = [count(mn.SVC_WS_CONNECTS, requests), count(mn.SVC_WS_CONNECT_ERRORS, errors),
                count(mn.SVC_EVENTS_TO_DELIVER, requests), count(mn.SVC_EVENTS_DELIVERED, requests)]
        if requests:
            data.append(values(mn.SVC_EVENT_LATENCY, 5.0))
    else:
        data = [count(mn.SVC_REQUESTS, requests), count(mn.SVC_5XX, errors), count(mn.SVC_CACHE_HITS, requests),
                count(mn.SVC_CACHE_MISSES, 0)]
        if requests:
            data.append(values(mn.SVC_DB_TIME, 2.0))
        if latencies:
            data.append({"MetricName": mn.SVC_LATENCY, "Dimensions": dims, "Values": latencies, "Timestamp": stamp,
                         "Unit": "Milliseconds", **HIGH})
    cw.put_metric_data(Namespace=policy.metrics.service.namespace, MetricData=data)


def count_calls(cw: Any) -> list[int]:
    calls = [0]

    def hook(**_: Any) -> None:
        calls[0] += 1

    cw.meta.events.register("before-call.cloudwatch.GetMetricData", hook)
    return calls


def test_key_metrics_per_version_with_percentiles_in_one_call(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    start = time.time() - 1
    put_lambda(cw, "onchain-api", OLD, 200, errors=1, durations=[float(v) for v in range(1, 201)])
    put_lambda(cw, "onchain-api", NEW, 200, errors=8, durations=[float(v) for v in range(1, 101)])
    put_lambda(cw, "onchain-ws", OLD, 50)
    put_lambda(cw, "onchain-ws", NEW, 50)
    put_service(cw, policy, "onchain-api", OLD, 200, latencies=[float(v) for v in range(1, 201)])
    put_service(cw, policy, "onchain-api", NEW, 200, errors=3, latencies=[float(v) for v in range(1, 101)])
    put_service(cw, policy, "onchain-ws", OLD, 50)
    put_service(cw, policy, "onchain-ws", NEW, 50, errors=1)
    calls = count_calls(cw)
    results = evaluate_rules(cw, policy, policy.key_metrics,
                             {"old": {"onchain-api": OLD, "onchain-ws": OLD}, "new": {"onchain-api": NEW, "onchain-ws": NEW}},
                             start, time.time() + 1)
    assert calls[0] == 1
    by = {(r.rule, r.version, r.function): r for r in results}
    assert by[("lambda_duration_p95", "old", "onchain-api")].value == 190.0
    assert by[("lambda_duration_p95", "new", "onchain-api")].value == 95.0
    assert by[("latency_p95", "new", "onchain-api")].value == 95.0
    err_new = by[("lambda_error_rate", "new", "onchain-api")]
    assert err_new.value == pytest.approx(8 / 200) and err_new.verdict == "fail"
    assert "4.0%" in err_new.message and "onchain-api version 4 (new)" in err_new.message
    assert by[("lambda_error_rate", "old", "onchain-api")].verdict == "pass"
    svc = by[("error_rate", "new", "onchain-api")]
    assert svc.value == pytest.approx(3 / 200) and svc.verdict == "fail" and "LlamaDeploy/Service" in svc.message
    # 50 connects >= min_samples 5, and 1/50 = 2% breaks < 0.1% (the functions' own count).
    assert by[("ws_connect_error_rate", "new", "onchain-ws")].verdict == "fail"
    # Nothing published for ElastiCache: min_samples 50 with no_data wait is inconclusive at the end, never a pass.
    cache = by[("cache_hit_rate", "all", "")]
    assert cache.verdict == "inconclusive" and "not a pass" in cache.message
    # DynamoDB throttles publish only when throttled: no data passes by policy.
    assert by[("dynamodb_throttles", "all", "")].verdict == "pass"


def test_data_newer_than_the_lag_is_not_judged_yet(moto: Moto) -> None:
    cw = moto.client()
    lagged = load_policy(ROOT / "policies", "sandbox").policy  # service lag 3 s
    start = time.time() - 20
    put_service(cw, lagged, "onchain-api", NEW, 50, errors=0, at=datetime.fromtimestamp(start + 5, tz=UTC))
    put_service(cw, lagged, "onchain-api", NEW, 50, errors=50, at=datetime.now(UTC))  # not arrived, on AWS
    rule = {"error_rate": lagged.rollback_triggers["error_rate"]}
    [result] = evaluate_rules(cw, lagged, rule, {"new": {"onchain-api": NEW}}, start, time.time() - 3.0)
    assert result.value == 0.0 and result.samples == 50.0 and result.verdict == "pass"


@pytest.mark.parametrize("functions", [2, 50])
def test_one_get_metric_data_call_per_poll(moto: Moto, policy: Any, functions: int) -> None:
    cw = moto.client()
    names = [f"fn{i}" for i in range(functions)]
    pol = policy.model_copy(update={"service": policy.service.model_copy(
        update={"functions": names, "api_function": names[0], "ws_function": names[1]})})
    for fn in names[:3]:
        put_lambda(cw, fn, NEW, 30)
    watch = BakeWatch(cw, pol, names, "live", {fn: OLD for fn in names}, {fn: NEW for fn in names},
                      time.time() - 1, None, lambda b: None)
    calls = count_calls(cw)
    assert watch.poll() == "decided"
    assert watch.poll() == "decided"
    assert calls[0] == 2
    series = {q for q in watch.evidence()["polls"][0]["values"]}
    # Lambda errors per version x every function, throttles per alias x every function, the service's
    # error rate (API function) and connect errors (WS function) per version, the API's 5xx, the event
    # delivery ratio per version (WS), and one verdict (new against old) for each of the four
    # baseline: old rules (latency, database time, cache hit rate on the API; event latency on WS).
    assert len(series) == 2 * functions + functions + 2 + 2 + 1 + 2 + 4


def _watch(cw: Any, policy: Any, started: float, probe: Any = None) -> tuple[BakeWatch, list[Breach], list[str]]:
    breaches: list[Breach] = []
    lines: list[str] = []
    watch = BakeWatch(cw, policy, policy.service.functions, "live",
                      {"onchain-api": OLD, "onchain-ws": OLD}, {"onchain-api": NEW, "onchain-ws": NEW},
                      started, probe, breaches.append, lambda line, same: lines.append(line))
    return watch, breaches, lines


def _feed(cw: Any, policy: Any, stop: threading.Event, errors_new: int = 0) -> None:
    while not stop.is_set():
        put_lambda(cw, "onchain-api", NEW, 10, errors=errors_new, durations=[20.0] * 10)
        put_lambda(cw, "onchain-api", OLD, 10, durations=[20.0] * 10)
        put_lambda(cw, "onchain-ws", NEW, 10)
        put_lambda(cw, "onchain-ws", OLD, 10)
        put_service(cw, policy, "onchain-api", NEW, 10, errors=errors_new, latencies=[20.0] * 10)
        put_service(cw, policy, "onchain-api", OLD, 10, latencies=[20.0] * 10)
        put_service(cw, policy, "onchain-ws", NEW, 10)
        put_service(cw, policy, "onchain-ws", OLD, 10)
        rest = mn.dims(("ApiName", policy.resources.rest_api), ("Stage", policy.resources.rest_stage))
        cw.put_metric_data(Namespace=mn.APIGATEWAY, MetricData=[
            {"MetricName": mn.APIGW_COUNT, "Dimensions": rest, "Value": 20.0, **HIGH},
            {"MetricName": mn.APIGW_5XX, "Dimensions": rest, "Value": float(errors_new), **HIGH}])
        stop.wait(0.2)


def test_breach_calls_on_breach_within_two_polls(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    feeder_cw = moto.client()
    stop = threading.Event()
    started = time.time()
    watch, breaches, _ = _watch(cw, policy, started)
    feeder = threading.Thread(target=_feed, args=(feeder_cw, policy, stop), kwargs={"errors_new": 3}, daemon=True)
    feeder.start()
    try:
        # Wait until enough samples exist in the window the watch reads (it ends `lag` before now: data
        # younger than that is not there yet on AWS), then the next two polls must fire. Asked up to
        # now + 1 s instead, this saw samples the watch's first polls could not: 3 polls under load.
        lag = max(float(policy.metrics.source(name).lag) for name in ("service", "aws"))
        deadline = time.time() + 10 + lag
        while time.time() < deadline:
            res = evaluate_rules(cw, policy, {"e": policy.rollback_triggers["lambda_error_rate"]},
                                 {"new": {"onchain-api": NEW}}, started, time.time() - lag)
            if res[0].samples >= 20:
                break
            time.sleep(0.1)
        t0 = time.time()
        watch.start()
        outcome = watch.wait(30)
        elapsed = time.time() - t0
    finally:
        stop.set()
        watch.stop()
        feeder.join(5)
    assert outcome is not None and outcome.kind == "threshold", outcome
    assert len(breaches) == 1 and breaches[0] is outcome
    # The functions' 5xx and Lambda's Errors both breach: whichever the watch reads first names it.
    assert outcome.rule in ("error_rate", "lambda_error_rate"), outcome
    assert outcome.version == NEW and outcome.source == "cloudwatch"
    assert "must be <= 5%" in outcome.message and "onchain-api version 4 (new)" in outcome.message
    # Counted in polls, not seconds: this machine's load decides how long a poll takes.
    assert watch.evidence()["poll_count"] <= 2, elapsed
    assert watch.evidence()["breach"]["rule"] == outcome.rule


def test_healthy_bake_passes_and_records_evidence(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    stop = threading.Event()
    started = time.time()
    policy = policy.model_copy(update={"watch": policy.watch.model_copy(update={"no_data_grace": 60.0})})
    for fn in policy.service.functions:
        for version in (OLD, NEW):
            put_lambda(cw, fn, version, 30, durations=[20.0] * 30)
            put_service(cw, policy, fn, version, 30, latencies=[20.0] * 30)
    feeder = threading.Thread(target=_feed, args=(moto.client(), policy, stop), daemon=True)
    feeder.start()
    watch, breaches, lines = _watch(cw, policy, started, probe=lambda: (True, "200"))
    try:
        watch.start()
        outcome = watch.wait(3.0)
    finally:
        stop.set()
        watch.stop()
        feeder.join(5)
    assert outcome is None, outcome
    assert breaches == []
    ev = watch.evidence()
    assert ev["poll_count"] >= 3 and ev["get_metric_data_calls"] == ev["poll_count"]
    assert ev["probes"]["count"] >= 5 and ev["probes"]["failed"] == 0
    assert ev["series"]["new"]["onchain-api"]["invocations"]
    assert any("new v4" in line and "left" in line for line in lines)
    json.dumps(ev)


def test_no_data_is_inconclusive_not_a_pass(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    watch, breaches, _ = _watch(cw, policy, time.time())
    watch.start()
    try:
        outcome = watch.wait(10)
    finally:
        watch.stop()
    assert outcome is not None and outcome.kind == "inconclusive"
    assert "not a pass" in outcome.message and outcome.label == "new"
    assert breaches == [outcome]


def test_probe_failures_trigger_with_source_probe(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(moto.client(), policy, stop), daemon=True)
    feeder.start()
    outcomes = iter([True] * 4 + [False] * 100)
    watch, breaches, _ = _watch(cw, policy, time.time(), probe=lambda: (next(outcomes), "HTTP 502 from v4"))
    try:
        watch.start()
        outcome = watch.wait(10)
    finally:
        stop.set()
        watch.stop()
        feeder.join(5)
    assert outcome is not None and outcome.kind == "probe" and outcome.source == "probe"
    assert "2 of the last 6 probes" in outcome.message and "HTTP 502" in outcome.message


def test_probes_neither_version_answered_are_shown_not_counted(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(moto.client(), policy, stop), daemon=True)
    feeder.start()
    unanswered = "no answer within 2 s; the old version gave no answer either: the probe path failed, not the release"
    outcomes = iter([True, None] * 200)
    watch, breaches, lines = _watch(cw, policy, time.time(), probe=lambda: (next(outcomes), unanswered))
    try:
        watch.start()
        deadline = time.time() + 20
        while watch.evidence()["probes"]["unattributed"] < 6 and time.time() < deadline:
            time.sleep(0.05)
        probes = watch.evidence()["probes"]
    finally:
        stop.set()
        watch.stop()
        feeder.join(5)
    # Half the probes unanswered by both versions: far above the 5 % rule if they counted.
    assert probes["unattributed"] >= 6 and probes["failed"] == 0, probes
    assert not [b for b in breaches if b.source == "probe"], breaches
    assert probes["failures"] and probes["failures"][0]["counted"] is False


def test_moto_stopped_mid_watch_is_metrics_unavailable(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(moto.client(), policy, stop), daemon=True)
    feeder.start()
    # A long grace: the only thing that may end this bake is the provider going away.
    patient = policy.model_copy(update={"watch": policy.watch.model_copy(update={"no_data_grace": 120.0})})
    watch, breaches, _ = _watch(cw, patient, time.time())
    try:
        watch.start()
        deadline = time.time() + 5
        while watch.evidence()["poll_count"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        feeder.join(5)
        moto.stop()
        outcome = watch.wait(60)
    finally:
        watch.stop()
    assert outcome is not None and outcome.kind == "provider", outcome
    assert "metrics unavailable" in outcome.message and "not passed" in outcome.message
    assert watch.evidence()["provider_errors"] >= policy.watch.provider_error_limit


def test_compare_catches_p95_doubled_under_the_absolute_threshold(moto: Moto, policy: Any) -> None:
    cw = moto.client()
    start = float(int(time.time()) - 25)
    data = []
    for i in range(25):
        at = datetime.fromtimestamp(start + i + 0.5, tz=UTC)
        for version, base, step in ((OLD, 100.0, 1), (NEW, 200.0, 2)):
            dims = mn.service_dims("onchain-api", version)
            data += [
                {"MetricName": mn.SVC_REQUESTS, "Dimensions": dims, "Value": 10.0, "Timestamp": at, **HIGH},
                {"MetricName": mn.SVC_5XX, "Dimensions": dims, "Value": 0.0, "Timestamp": at, **HIGH},
                {"MetricName": mn.SVC_LATENCY, "Dimensions": dims, "Timestamp": at, **HIGH,
                 "Values": [base + step * j for j in range(10)]},
            ]
    cw.put_metric_data(Namespace=policy.metrics.service.namespace, MetricData=data)
    calls = count_calls(cw)
    [cmp] = compare_versions(cw, policy, ["onchain-api"], "live", {"onchain-api": OLD}, {"onchain-api": NEW},
                             start, start + 25)
    assert calls[0] == 1
    assert cmp.old_p95 == 109.0 and cmp.new_p95 == 218.0 and cmp.new_p95 < 500  # both under the 500 ms bound
    assert cmp.p95_verdict == "fail" and cmp.rank_verdict == "fail" and cmp.error_verdict == "pass"
    assert "old v3" in cmp.p95_message() and "new v4" in cmp.p95_message() and "2.00x" in cmp.p95_message()


def test_alarms_and_dashboards_are_provisioned_and_evaluated(moto: Moto) -> None:
    cw = moto.client()

    class Cfg:
        def client(self, service: str) -> Any:
            return moto.client(service)

    made = provision(Cfg())
    assert made["alarms"] == list(ALARM_NAMES) and made["dashboards"] == list(DASHBOARD_NAMES)
    alarms = {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}
    assert set(alarms) == set(ALARM_NAMES)
    assert all(a["ActionsEnabled"] and a["AlarmActions"] for a in alarms.values())
    assert {d["DashboardName"] for d in cw.list_dashboards()["DashboardEntries"]} == set(DASHBOARD_NAMES)
    # 30% errors through the alias: the error-rate alarm goes to ALARM, the others to OK.
    dims = mn.lambda_alias_dims("onchain-api", "live")
    cw.put_metric_data(Namespace=mn.LAMBDA, MetricData=[
        {"MetricName": mn.LAMBDA_INVOCATIONS, "Dimensions": dims, "Value": 100.0, **HIGH},
        {"MetricName": mn.LAMBDA_ERRORS, "Dimensions": dims, "Value": 30.0, **HIGH},
        {"MetricName": mn.LAMBDA_THROTTLES, "Dimensions": dims, "Value": 0.0, **HIGH},
    ])
    deadline = time.time() + 5
    states: dict[str, str] = {}
    while time.time() < deadline:
        states = {a["AlarmName"]: a["StateValue"] for a in cw.describe_alarms()["MetricAlarms"]}
        if states["onchain-lambda-error-rate"] == "ALARM" and "INSUFFICIENT_DATA" not in states.values():
            break
        time.sleep(0.2)
    assert states["onchain-lambda-error-rate"] == "ALARM", states
    assert states["onchain-lambda-throttle-rate"] == "OK" and states["onchain-apigw-5xx"] == "OK", states


def test_dashboard_rows_resolve_to_the_series_cloudwatch_has(aws: str) -> None:
    # Issue 13, on moto: a console-made dashboard's rows name exactly the series published, and a
    # row whose series has no data is the one reported empty.
    import boto3

    from pytest_llamadeploy.metrics.dashboards import dashboard_series
    from pytest_llamadeploy.metrics.evaluate import fetch_with_retry

    cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=aws)
    body = {"widgets": [{"type": "metric", "properties": {"stat": "Sum", "metrics": [
        ["AWS/Lambda", "Invocations", "FunctionName", "onchain-api", "Resource", "onchain-api:live"],
        ["...", "onchain-ws", "Resource", "onchain-ws:live"],
        [".", "Errors", ".", ".", ".", "."]]}}]}
    cw.put_dashboard(DashboardName="Lambda", DashboardBody=json.dumps(body))
    now = datetime.now(UTC)
    for fn in ("onchain-api", "onchain-ws"):
        cw.put_metric_data(Namespace="AWS/Lambda", MetricData=[{
            "MetricName": "Invocations", "Value": 3.0, "Timestamp": now,
            "Dimensions": [{"Name": "FunctionName", "Value": fn}, {"Name": "Resource", "Value": f"{fn}:live"}]}])
    stored = json.loads(cw.get_dashboard(DashboardName="Lambda")["DashboardBody"])
    specs = dashboard_series("Lambda", stored, 60)
    data = fetch_with_retry(cw, specs, now.timestamp() - 300, now.timestamp() + 60)
    assert [(s.metric, dict(s.dims)["FunctionName"], bool(data[s])) for s in specs] == [
        ("Invocations", "onchain-api", True), ("Invocations", "onchain-ws", True), ("Errors", "onchain-ws", False)]
