"""AWS's physics as the sandbox plays it (sandbox/physics.py), and the pieces that serve it: pure logic."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llamadeploy.sandbox.frontdoor.logship import extract, parse_line
from pytest_llamadeploy.sandbox.moto_ext import request_start, trace_filter
from pytest_llamadeploy.sandbox.physics import (
    Delivery,
    apigw_rest_dimension_sets,
    apigw_ws_dimension_sets,
    elasticache_dimension_sets,
    lambda_dimension_sets,
    lambda_outcome,
    physics,
)


def test_only_an_unhandled_failure_is_a_lambda_error() -> None:
    handled = lambda_outcome(500)
    assert (handled.invoked, handled.error, handled.client_status) == (True, False, 500)
    raised = lambda_outcome(500, function_error="Unhandled")
    assert (raised.invoked, raised.error, raised.client_status) == (True, True, 502)
    crashed = lambda_outcome(0, unreachable=True)
    assert crashed.error and crashed.client_status == 502
    throttled = lambda_outcome(200, throttled=True)
    assert (throttled.invoked, throttled.error, throttled.throttled, throttled.client_status) == (False, False, True, 500)


def test_dimension_sets_are_exactly_awss() -> None:
    def names(sets: list[list[dict[str, str]]]) -> list[tuple[str, ...]]:
        return [tuple(d["Name"] for d in dims) for dims in sets]

    assert names(lambda_dimension_sets("f", "live", "3")) == [
        ("FunctionName",), ("FunctionName", "Resource"), ("FunctionName", "Resource", "ExecutedVersion")]
    # A direct invoke of version 3: Resource f:3, and no ExecutedVersion.
    direct = lambda_dimension_sets("f", "3", None)
    assert names(direct) == [("FunctionName",), ("FunctionName", "Resource")] and direct[1][1]["Value"] == "f:3"
    assert names(apigw_rest_dimension_sets("api", "live")) == [("ApiName",), ("ApiName", "Stage")]
    assert names(apigw_ws_dimension_sets("abc123", "live", "$connect")) == [
        ("ApiId",), ("ApiId", "Stage"), ("ApiId", "Stage", "Route")]
    node = elasticache_dimension_sets("onchain-redis")
    assert [d["Value"] for d in node[1]] == ["onchain-redis-001", "0001"]


def test_physics_names_and_fixed_lag() -> None:
    aws = physics("aws")
    assert (aws.service_resolution, aws.service_lag, aws.storage_resolution) == (60, (60.0, 180.0), 60)
    assert physics("aws", 90.0).service_lag == (90.0, 90.0)
    fast = physics("fast")
    assert (fast.service_resolution, fast.storage_resolution) == (1, 1)
    with pytest.raises(ValueError, match="physics 'slow': use one of fast, aws"):
        physics("slow")


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def test_delivery_rolls_up_to_a_minute_and_holds_each_minute_for_its_lag() -> None:
    now = [1_000_020.0]
    delivery = Delivery(60, (60.0, 180.0), 60, rng=random.Random(1), clock=lambda: now[0])
    dims = [{"Name": "FunctionName", "Value": "f"}]
    for second in range(1_000_020, 1_000_080):  # a whole minute, second by second
        delivery.add("AWS/Lambda", [{"MetricName": "Invocations", "Dimensions": dims, "Timestamp": _ts(second),
                                     "Value": 2.0},
                                    {"MetricName": "Duration", "Dimensions": dims, "Timestamp": _ts(second),
                                     "Values": [10.0, 20.0], "Counts": [1.0, 1.0]}])
    now[0] = 1_000_080 + 59.0  # the minute closed 59 s ago: no lag is that short
    assert delivery.due() == {}
    now[0] = 1_000_080 + 181.0
    [count, duration] = delivery.due()["AWS/Lambda"]
    assert count["Value"] == 120.0 and count["Timestamp"] == _ts(1_000_020) and count["StorageResolution"] == 60
    assert dict(zip(duration["Values"], duration["Counts"], strict=True)) == {10.0: 60.0, 20.0: 60.0}
    assert delivery.pending() == 0


def test_emf_documents_become_the_metrics_cloudwatch_would_extract() -> None:
    line = json.dumps({
        "FunctionName": "onchain-api", "Version": "7", "Requests": 3, "Latency": [1.5, 2.0, 2.0],
        "_aws": {"Timestamp": 1_000_020_000, "CloudWatchMetrics": [{
            "Namespace": "LlamaDeploy/Service", "Dimensions": [["FunctionName", "Version"]],
            "Metrics": [{"Name": "Requests", "Unit": "Count", "StorageResolution": 1},
                        {"Name": "Latency", "Unit": "Milliseconds", "StorageResolution": 1}]}]}})
    document = parse_line(line)
    assert document is not None and (document.function, document.version) == ("onchain-api", "7")
    [requests, latency] = document.datums["LlamaDeploy/Service"]
    assert requests["Value"] == 3.0 and requests["StorageResolution"] == 1
    assert dict(zip(latency["Values"], latency["Counts"], strict=True)) == {1.5: 1.0, 2.0: 2.0}
    assert [d["Name"] for d in requests["Dimensions"]] == ["FunctionName", "Version"]
    assert parse_line("INFO: uvicorn started") is None and parse_line('{"not": "emf"}') is None
    # A dimension set whose members the document lacks is skipped, as CloudWatch does.
    assert extract({"_aws": {"Timestamp": 0, "CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [["Missing"]],
                                                                   "Metrics": [{"Name": "X"}]}]}, "X": 1}) == {}


@pytest.mark.parametrize(("requested", "period", "rounded"), [
    ("12:32:34", 60, "12:32:00"), ("12:32:34", 1, "12:32:00"), ("12:32:34", 300, "12:32:00"),
    ("01:05:23", 10, "01:05:20"), ("15:07:17", 5, "15:07:15"), ("15:07:47", 30, "15:07:30"),
])
def test_start_time_is_rounded_as_cloudwatch_rounds_it(requested: str, period: int, rounded: str) -> None:
    day = "2026-12-01T"
    assert request_start(datetime.fromisoformat(day + requested), period) == datetime.fromisoformat(day + rounded)


def test_xray_filter_subset_and_refusal() -> None:
    def seg(name: str, **annotations: Any) -> Any:
        return SimpleNamespace(name=name, annotations=annotations)

    keep = trace_filter('service("onchain-api") AND annotation.function_version = "4"')
    assert keep([seg("onchain-api", function_version="4")])
    assert not keep([seg("onchain-api", function_version="3")])
    assert not keep([seg("onchain-ws", function_version="4")])
    assert trace_filter("annotation.n = 4")([seg("x", n=4)])
    with pytest.raises(ValueError, match="does not evaluate filter clause 'responsetime > 5'"):
        trace_filter('service("x") AND responsetime > 5')


def test_list_metrics_answers_one_entry_per_series() -> None:
    # The sandbox's ListMetrics (doctor, preflight) runs over its series index: moto's own scan of every
    # datum outlasted the client's timeout on a sandbox holding an hour of 1-s data.
    from moto.cloudwatch.models import CloudWatchBackend

    from pytest_llamadeploy.sandbox.moto_ext import list_series

    backend = CloudWatchBackend("us-east-1", "123456789012")
    dims = [{"Name": "FunctionName", "Value": "onchain-api"}, {"Name": "Version", "Value": "2"}]
    for value in range(50):
        backend.put_metric_data("LlamaDeploy/Service", [{"MetricName": "Requests", "Value": value, "Dimensions": dims}])
    backend.put_metric_data("LlamaDeploy/Service", [{"MetricName": "Requests", "Value": 1, "Dimensions": dims[:1]}])
    backend.put_metric_data("AWS/DynamoDB", [{"MetricName": "ReadThrottleEvents", "Value": 1,
                                              "Dimensions": [{"Name": "TableName", "Value": "onchain-alerts"}]}])
    found = list_series(backend, "Requests", "LlamaDeploy/Service", dims[:1])
    assert sorted(len(d.dimensions) for d in found) == [1, 2]  # both series with FunctionName, once each
    assert len(list_series(backend, "Requests", "LlamaDeploy/Service", dims)) == 1
    assert list_series(backend, "ReadThrottleEvents", "AWS/DynamoDB",
                       [{"Name": "TableName", "Value": "onchain-alert"}]) == []
    assert len(list_series(backend, None, "AWS/DynamoDB", [])) == 1
