"""Unit tests of the metrics watch's pure logic (query building, rate maths, no-data rules, provider errors)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy import metricnames as mn
from pytest_llamadeploy.metrics.compare import judge as compare_judge
from pytest_llamadeploy.metrics.dashboards import DashboardError, dashboard_series
from pytest_llamadeploy.metrics.evaluate import compute, evaluate_plan, judge, plan_poll, plan_targets
from pytest_llamadeploy.metrics.query import (
    MAX_QUERIES,
    ProviderError,
    QueryError,
    SeriesSpec,
    build_queries,
    classify,
    fetch,
    valid_period,
)
from pytest_llamadeploy.metrics.signals import UnknownSignal, format_value, get_signal
from pytest_llamadeploy.metrics.watch import BakeWatch
from pytest_llamadeploy.policy import MetricRule, load_policy
from pytest_llamadeploy.sandbox import moto_ext
from pytest_llamadeploy.sandbox.observability import ALARM_NAMES, DASHBOARD_NAMES, dashboard_bodies

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy(ROOT / "policies", "sandbox").policy


def rule(**kw: Any) -> MetricRule:
    base = {"signal": "lambda.error_rate", "op": "<=", "threshold": "5%", "window": "1m", "min_samples": 20}
    return MetricRule(**{**base, **kw})


@pytest.mark.parametrize(("no_data", "waited", "final", "expected"), [
    ("wait", 1.0, False, "no_data"),
    ("wait", 5.0, False, "inconclusive"),
    ("wait", 1.0, True, "inconclusive"),
    ("fail", 0.0, False, "fail"),
    ("pass", 0.0, True, "pass"),
])
def test_no_data_rules(no_data: str, waited: float, final: bool, expected: str) -> None:
    r = rule(no_data=no_data)
    assert judge(r, None, 0, waited=waited, grace=5.0, final=final) == expected
    # Fewer samples than min_samples is no data too, whatever the value says.
    assert judge(r, 0.0, 19, waited=waited, grace=5.0, final=final) == expected


def test_threshold_ops() -> None:
    assert judge(rule(), 0.05, 20, waited=0, grace=5, final=False) == "pass"
    assert judge(rule(), 0.0501, 20, waited=0, grace=5, final=False) == "fail"
    assert judge(rule(op=">", threshold="80%"), 0.8, 100, waited=0, grace=5, final=False) == "fail"


def _data(plan: Any, values: dict[tuple[str, str, str], list[tuple[float, float]]]) -> dict[SeriesSpec, Any]:
    out: dict[SeriesSpec, Any] = {}
    for spec in plan.specs:
        version = dict(spec.dims).get("ExecutedVersion", "")
        out[spec] = values.get((spec.metric, version, spec.stat), [])
    return out


def test_rates_are_sums_over_the_window_clamped_to_the_shift() -> None:
    rules = {"err": rule(), "thr": rule(signal="lambda.throttle_rate", threshold="0.1%")}
    targets = plan_targets(rules, ["onchain-api"], "live", {"new": {"onchain-api": "4"}}, "onchain-ws", 100.0, 110.0)
    assert {t.start for t in targets} == {100.0}  # a 1 m window clamped to the moment traffic moved
    plan = plan_poll(targets, "live", 110.0, 1)
    assert plan.span_start == 100.0  # the call itself starts at the shift: earlier data is never fetched
    data = _data(plan, {
        ("Invocations", "4", "Sum"): [(100.0, 10.0), (105.0, 10.0)],
        ("Errors", "4", "Sum"): [(100.0, 1.0), (105.0, 2.0)],
        ("Throttles", "4", "Sum"): [(105.0, 1.0)],
    })
    by = {t.rule_name: compute(t, "live", data, plan) for t in targets}
    assert by["err"] == (pytest.approx(3 / 20), 20.0)
    assert by["thr"] == (pytest.approx(1 / 21), 21.0)


def test_windows_that_differ_are_summed_per_bucket_on_the_client() -> None:
    rules = {"short": rule(window="10s", min_samples=1), "long": rule(window="1m", min_samples=1)}
    targets = plan_targets(rules, ["f"], "live", {"new": {"f": "4"}}, "f", 0.0, 60.0)
    plan = plan_poll(targets, "live", 60.0, 1)
    assert plan.sum_period == 5 and plan.span_start == 0.0
    data = _data(plan, {("Invocations", "4", "Sum"): [(t, 10.0) for t in range(0, 60, 5)],
                        ("Errors", "4", "Sum"): [(50.0, 1.0), (55.0, 1.0), (0.0, 8.0)]})
    by = {t.rule_name: compute(t, "live", data, plan) for t in targets}
    assert by["short"] == (pytest.approx(2 / 20), 20.0)
    assert by["long"] == (pytest.approx(10 / 120), 120.0)


def test_one_query_per_distinct_series_and_ids(policy: Any) -> None:
    targets = plan_targets(policy.rollback_triggers, ["a", "b"], "live", {"new": {"a": "4", "b": "4"},
                           "old": {"a": "3", "b": "3"}}, "b", 0.0, 10.0)
    plan = plan_poll(targets, "live", 10.0, 1)
    queries, ids = build_queries(plan.specs + plan.specs)
    assert len(queries) == len(set(plan.specs)) == len(ids)
    assert [q["Id"] for q in queries] == [f"q{i}" for i in range(len(queries))]
    versions = {dict(s.dims).get("ExecutedVersion") for s in plan.specs if s.namespace == mn.LAMBDA}
    assert versions == {"3", "4"}


@pytest.mark.parametrize(("seconds", "period"), [(0.5, 1), (3, 5), (10, 10), (11, 30), (31, 60), (301, 360)])
def test_valid_period(seconds: float, period: int) -> None:
    assert valid_period(seconds) == period


class StubCloudWatch:
    """A stand-in client for pure logic: records calls, answers empty, or raises what it is given."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[int] = []
        self.error = error

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(len(kw["MetricDataQueries"]))
        if self.error is not None:
            raise self.error
        return {"MetricDataResults": [{"Id": q["Id"], "Timestamps": [], "Values": []} for q in kw["MetricDataQueries"]]}


def test_more_than_500_series_are_chunked() -> None:
    specs = [SeriesSpec("AWS/Lambda", "Invocations", (("FunctionName", f"f{i}"),), "Sum", 1) for i in range(MAX_QUERIES + 20)]
    cw = StubCloudWatch()
    result = fetch(cw, specs, 0.0, 10.0)
    assert cw.calls == [MAX_QUERIES, 20] and len(result) == MAX_QUERIES + 20


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetMetricData")


def test_provider_errors_are_told_apart_from_bad_queries() -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert isinstance(classify(_client_error("Throttling", 400)), ProviderError)
    assert isinstance(classify(_client_error("InternalFailure", 500)), ProviderError)
    assert isinstance(classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")), ProviderError)
    assert isinstance(classify(ReadTimeoutError(endpoint_url="http://127.0.0.1:1")), ProviderError)
    bad = classify(_client_error("InvalidParameterValue", 400))
    assert isinstance(bad, QueryError) and "InvalidParameterValue" in str(bad)


def test_watch_counts_provider_errors_in_a_row_then_is_inconclusive(policy: Any) -> None:
    cw = StubCloudWatch(_client_error("Throttling", 400))
    breaches: list[Any] = []
    watch = BakeWatch(cw, policy, ["onchain-api", "onchain-ws"], "live", {"onchain-api": "3"}, {"onchain-api": "4"},
                      0.0, None, breaches.append, clock=lambda: 5.0)
    for _ in range(policy.watch.provider_error_limit - 1):
        assert watch.poll() is False
    assert breaches == []
    assert watch.poll() is False
    [breach] = breaches
    assert breach.kind == "provider" and "metrics unavailable" in breach.message
    assert watch.evidence()["provider_errors"] == policy.watch.provider_error_limit


def test_watch_one_call_per_poll_with_a_stub(policy: Any) -> None:
    cw = StubCloudWatch()
    watch = BakeWatch(cw, policy, policy.service.functions, "live", {"onchain-api": "3", "onchain-ws": "3"},
                      {"onchain-api": "4", "onchain-ws": "4"}, 0.0, None, lambda b: None, clock=lambda: 2.0)
    watch.poll()
    watch.poll()
    assert len(cw.calls) == 2


def test_message_names_rule_value_version_window_bound_and_source() -> None:
    targets = plan_targets({"lambda_error_rate": rule()}, ["onchain-api"], "live", {"new": {"onchain-api": "4"}},
                           "onchain-ws", 0.0, 10.0)
    plan = plan_poll(targets, "live", 10.0, 1)
    data = _data(plan, {("Invocations", "4", "Sum"): [(1.0, 187.0)], ("Errors", "4", "Sum"): [(1.0, 58.0)]})
    [result] = evaluate_plan(plan, "live", data, now=10.0, grace=5, final=False, result_kind="rollback trigger")
    assert result.verdict == "fail"
    assert result.message == ("rollback trigger lambda_error_rate: 31.0% on onchain-api version 4 (new) over the "
                              "last 10s, must be <= 5% (breaks; source: cloudwatch; 187 invocations)")


def test_unknown_signal_names_the_rule_and_the_choices() -> None:
    with pytest.raises(UnknownSignal, match=r"rule x: signal 'lambda.eror_rate' is not known; use one of .*lambda.error_rate"):
        plan_targets({"x": rule(signal="lambda.eror_rate")}, ["f"], "live", {"new": {"f": "1"}}, "f", 0, 1)


def test_format_value() -> None:
    rate = get_signal("lambda.error_rate")
    assert format_value(rate, 0.312) == "31.2%" and format_value(rate, 0.001, bound=True) == "0.1%"
    assert format_value(get_signal("lambda.duration"), 412.4) == "412 ms"


def test_compare_judge_rank_test_and_min_samples(policy: Any) -> None:
    slow = [200.0 + i for i in range(25)]
    fast = [100.0 + i for i in range(25)]
    ev, pv, rv, diff, ratio, u, p = compare_judge(250, 250, 0.0, 0.004, 124, 224, fast, slow, policy.compare)
    assert (ev, pv, rv) == ("pass", "fail", "fail") and ratio == pytest.approx(224 / 124) and p < 0.001
    *_, rv2, _, _, u2, _ = compare_judge(250, 250, 0.0, 0.0, 1, 1, fast[:5], slow[:5], policy.compare)
    assert rv2 == "inconclusive" and u2 is None


def test_compare_judge_ignores_a_ratio_of_small_numbers(policy: Any) -> None:
    # 20.8 -> 39.6 ms (a healthy release seen in CI) is 1.9x but only 19 ms slower: with the
    # sandbox's 25 ms floor that is jitter; the same 2x at 100 -> 200 ms still fails.
    settings = policy.compare.model_copy(update={"min_p95_delta": 25.0})
    fast = [20.0 + i * 0.1 for i in range(25)]
    slow = [40.0 + i * 0.1 for i in range(25)]
    _, pv, rv, _, ratio, _, p = compare_judge(250, 250, 0.0, 0.0, 20.8, 39.6, fast, slow, settings)
    assert ratio == pytest.approx(39.6 / 20.8) and p < 0.001
    assert (pv, rv) == ("pass", "pass")
    strict = policy.compare.model_copy(update={"min_p95_delta": 10.0})
    _, pv, rv, *_ = compare_judge(250, 250, 0.0, 0.0, 20.8, 39.6, fast, slow, strict)
    assert (pv, rv) == ("fail", "fail")  # a 10 ms floor (prod's default) does not hide 19 ms
    _, pv, rv, *_ = compare_judge(250, 250, 0.0, 0.0, 100.0, 200.0, [x * 5 for x in fast], [x * 5 for x in slow],
                                  settings)
    assert (pv, rv) == ("fail", "fail")


def test_dashboard_shorthand_and_errors() -> None:
    body = {"widgets": [{"type": "metric", "properties": {"stat": "Sum", "metrics": [
        ["AWS/Lambda", "Invocations", "FunctionName", "a"], [".", "Errors", ".", "."],
        ["AWS/Lambda", "Duration", "FunctionName", "a", {"stat": "p95"}]]}}, {"type": "text"}]}
    specs = dashboard_series("Main", body, 60)
    assert [(s.metric, dict(s.dims), s.stat) for s in specs] == [
        ("Invocations", {"FunctionName": "a"}, "Sum"), ("Errors", {"FunctionName": "a"}, "Sum"),
        ("Duration", {"FunctionName": "a"}, "p95")]
    with pytest.raises(DashboardError, match="dashboard Main: widget 0 metric row 0"):
        dashboard_series("Main", {"widgets": [{"type": "metric", "properties": {"metrics": [["AWS/Lambda"]]}}]}, 60)


def test_sandbox_alarms_and_dashboards_match_the_policy(policy: Any) -> None:
    assert list(ALARM_NAMES) == policy.monitoring.alarms
    assert list(DASHBOARD_NAMES) == policy.monitoring.dashboards
    for name, body in dashboard_bodies().items():
        assert dashboard_series(name, body, 60), name


def test_nearest_rank_percentile() -> None:
    assert moto_ext.percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert moto_ext.percentile([5.0], 99.9) == 5.0
    assert moto_ext.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_alarm_evaluation_states() -> None:
    from moto.cloudwatch.models import Alarm, MetricDatum

    now = datetime(2026, 1, 1, 12, 0, 0)
    dims = [{"Name": "FunctionName", "Value": "a"}]

    def alarm(treat: str | None) -> Any:
        return Alarm("123456789012", "us-east-1", "x", "AWS/Lambda", "Errors", None, "GreaterThanThreshold", 2, None,
                     10, 3.0, "Sum", None, "", dims, ["arn:sns"], None, None, None, True, treat, None, None, None)

    key = ("AWS/Lambda", "Errors", (("FunctionName", "a"),))
    snap = {key: [MetricDatum("AWS/Lambda", "Errors", 5.0, dims, now - timedelta(seconds=3))]}
    assert moto_ext.evaluate_alarm(alarm(None), snap, now)[0] == "OK"  # 1 of 2 periods breaching, need 2
    snap[key].append(MetricDatum("AWS/Lambda", "Errors", 4.0, dims, now - timedelta(seconds=13)))
    state, reason, _ = moto_ext.evaluate_alarm(alarm(None), snap, now)
    assert state == "ALARM" and "2 out of the last 2" in reason
    assert moto_ext.evaluate_alarm(alarm(None), {}, now)[0] == "INSUFFICIENT_DATA"
    assert moto_ext.evaluate_alarm(alarm("notBreaching"), {}, now)[0] == "OK"
    assert moto_ext.evaluate_alarm(alarm("breaching"), {}, now)[0] == "ALARM"
