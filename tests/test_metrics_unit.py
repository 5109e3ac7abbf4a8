"""Unit tests of the metrics watch's pure logic (query building, rate maths, no-data rules, provider errors)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy import metricnames as mn
from pytest_llamadeploy.metrics.compare import judge as compare_judge
from pytest_llamadeploy.metrics.dashboards import DashboardError, dashboard_series
from pytest_llamadeploy.metrics.evaluate import (
    arrived,
    compute,
    evaluate_plan,
    judge,
    percentile_period,
    plan_poll,
    plan_targets,
    settled,
)
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
        dims = dict(spec.dims)
        version = dims.get("ExecutedVersion") or dims.get("Version") or ""
        out[spec] = values.get((spec.metric, version, spec.stat), [])
    return out


def test_windows_end_where_the_data_has_arrived_and_start_at_the_shift(policy: Any) -> None:
    # sandbox: AWS/* per 1 s, 5 s late; the functions' EMF per 1 s, 3 s late.
    rules = {"err": rule(), "svc": rule(signal="service.error_rate")}
    targets = {t.rule_name: t for t in plan_targets(rules, policy, {"new": {"onchain-api": "4"}}, 100.0, 130.0)}
    assert (targets["err"].start, targets["err"].end) == (100.0, 125.0)  # clamped to the shift; now - lag
    assert (targets["svc"].start, targets["svc"].end) == (100.0, 127.0)
    # A window shorter than the time since the shift slides, and still ends at now - lag.
    late = plan_targets({"err": rule(window="10s")}, policy, {"new": {"onchain-api": "4"}}, 100.0, 160.0)
    assert [(t.start, t.end) for t in late] == [(145.0, 155.0)]
    final = plan_targets(rules, policy, {"new": {"onchain-api": "4"}}, 100.0, 200.0, final_end=120.0)
    assert {(t.start, t.end) for t in final} == {(100.0, 120.0)}  # the final decision: the bake's own end


def test_rates_are_sums_over_exactly_the_window(policy: Any) -> None:
    rules = {"err": rule(), "thr": rule(signal="lambda.throttle_rate", threshold="0.1%")}
    targets = plan_targets(rules, policy, {"new": {"onchain-api": "4"}}, 100.0, 115.0)
    plan = plan_poll(targets, 115.0)
    assert plan.span_start == 100.0  # the call itself starts at the shift: earlier data is never fetched
    data = _data(plan, {
        ("Invocations", "4", "Sum"): [(99.0, 50.0), (100.0, 10.0), (105.0, 10.0), (110.0, 99.0)],
        ("Errors", "4", "Sum"): [(99.0, 50.0), (100.0, 1.0), (105.0, 2.0), (110.0, 99.0)],
        ("Invocations", "", "Sum"): [(100.0, 10.0), (105.0, 10.0)],
        ("Throttles", "", "Sum"): [(105.0, 1.0)],
    })
    by = {t.rule_name: compute(t, data, plan.span_start) for t in targets}
    # Before the shift (99) and after the arrived data (110 >= now - lag) are outside the window.
    assert by["err"] == (pytest.approx(3 / 20), 20.0)
    # Throttles carry no ExecutedVersion: the rate is the alias's.
    assert by["thr"] == (pytest.approx(1 / 21), 21.0)


def test_a_sum_with_no_datapoint_is_no_data_never_zero(policy: Any) -> None:
    five = {"apigw_5xx": policy.rollback_triggers["apigw_5xx"]}
    [target] = plan_targets(five, policy, {"new": {"onchain-api": "4"}}, 0.0, 60.0)
    plan = plan_poll([target], 60.0)
    value, samples = compute(target, {spec: [] for spec in plan.specs}, plan.span_start)
    assert value is None and samples == 0.0



def test_a_count_over_its_bound_fails_however_few_samples_it_rests_on(policy: Any) -> None:
    """Issue 15: min_samples of a million must not turn 500 API Gateway 5xx into "no data" (or a pass)."""
    greedy = policy.rollback_triggers["apigw_5xx"].model_copy(update={"min_samples": 1_000_000, "no_data": "pass"})
    [target] = plan_targets({"apigw_5xx": greedy}, policy, {"new": {"onchain-api": "4"}}, 0.0, 60.0)
    plan = plan_poll([target], 60.0)
    metric = {spec.metric: spec for spec in plan.specs}
    data = {spec: [] for spec in plan.specs}
    data[metric["5XXError"]] = [(10.0, 500.0)]
    data[metric["Count"]] = [(10.0, 1000.0)]
    [result] = evaluate_plan(plan, data, now=60.0, grace=5, final=True)
    assert (result.verdict, result.value, result.samples) == ("fail", 500.0, 1000.0)
    assert "must be <= 10 (breaks" in result.message
    # Under its bound the same count is still short of min_samples: the rule's no_data decides (here: pass).
    data[metric["5XXError"]] = [(10.0, 3.0)]
    [result] = evaluate_plan(plan, data, now=60.0, grace=5, final=True)
    assert result.verdict == "pass" and "passes by policy (no_data: pass)" in result.message
    # A rate is never judged short of its samples: 1 error in 2 invocations is no data, not 50 %.
    assert judge(rule(), 0.5, 2, waited=0, grace=5, final=True, count=False) == "inconclusive"


def test_one_query_per_distinct_series_and_ids(policy: Any) -> None:
    targets = plan_targets(policy.rollback_triggers, policy, {"new": {"onchain-api": "4", "onchain-ws": "4"},
                           "old": {"onchain-api": "3", "onchain-ws": "3"}}, 0.0, 10.0)
    plan = plan_poll(targets, 10.0)
    queries, ids = build_queries(plan.specs + plan.specs)
    assert len(queries) == len(set(plan.specs)) == len(ids)
    assert [q["Id"] for q in queries] == [f"q{i}" for i in range(len(queries))]
    versions = {dict(s.dims).get("ExecutedVersion") for s in plan.specs if s.namespace == mn.LAMBDA}
    assert versions == {"3", "4", None}  # per version, and the alias for the throttle rate
    emf = {dict(s.dims)["Version"] for s in plan.specs if s.namespace == policy.metrics.service.namespace}
    assert emf == {"3", "4"}


def test_percentile_period_covers_the_window_from_the_rounded_start(policy: Any) -> None:
    latency = {"p": rule(signal="service.latency", threshold="500ms", op="<")}
    [target] = plan_targets(latency, policy, {"new": {"onchain-api": "4"}}, 1_000_050.0, 1_000_078.0)
    # The window is 1_000_050..1_000_075; CloudWatch rounds StartTime down to the minute (1_000_020), so one
    # period covering the window from there is 60 s, not the 25 s the window lasts.
    assert (target.start, target.end) == (1_000_050.0, 1_000_075.0)
    assert percentile_period(target, target.start) == 60


def test_arrival_needs_every_bucket_and_settling_judges_what_arrived(policy: Any) -> None:
    [target] = plan_targets({"err": rule(window="10s", min_samples=1)}, policy, {"new": {"onchain-api": "4"}},
                            100.0, 200.0, final_end=110.0)
    plan = plan_poll([target], 200.0)
    full = _data(plan, {("Invocations", "4", "Sum"): [(float(t), 5.0) for t in range(100, 110)],
                        ("Errors", "4", "Sum"): [(105.0, 1.0)]})
    assert arrived(target, full, plan.span_start)
    # A later bucket visible before an earlier one (each minute has its own delay on AWS) is not "arrived".
    holes = _data(plan, {("Invocations", "4", "Sum"): [(float(t), 5.0) for t in range(100, 110) if t != 104]})
    assert not arrived(target, holes, plan.span_start)
    # The last buckets never came: the window is judged where its data ends, and says so.
    early = _data(plan, {("Invocations", "4", "Sum"): [(float(t), 5.0) for t in range(100, 106)],
                         ("Errors", "4", "Sum"): [(101.0, 1.0)]})
    judged = settled(target, early, plan.span_start)
    assert (judged.start, judged.end) == (100.0, 106.0) and "had not arrived" in judged.late
    assert compute(judged, early, plan.span_start) == (pytest.approx(1 / 30), 30.0)


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
        assert watch.poll() == "error"
    assert breaches == []
    assert watch.poll() == "error"
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


def test_message_names_rule_value_version_window_bound_and_source(policy: Any) -> None:
    targets = plan_targets({"lambda_error_rate": rule()}, policy, {"new": {"onchain-api": "4"}}, 0.0, 15.0)
    plan = plan_poll(targets, 15.0)
    data = _data(plan, {("Invocations", "4", "Sum"): [(1.0, 187.0)], ("Errors", "4", "Sum"): [(1.0, 58.0)]})
    [result] = evaluate_plan(plan, data, now=15.0, grace=5, final=False, result_kind="rollback trigger")
    assert result.verdict == "fail"
    assert result.message == ("rollback trigger lambda_error_rate: 31.0% on onchain-api version 4 (new) over 10s "
                              "ending 00:00:10 UTC, must be <= 5% (breaks; source: cloudwatch: aws metrics, "
                              "AWS/Lambda; 187 invocations)")


def test_unknown_signal_names_the_rule_and_the_choices(policy: Any) -> None:
    with pytest.raises(UnknownSignal, match=r"rule x: signal 'lambda.eror_rate' is not known: declare it under metrics.signals .*, or use one of .*lambda.error_rate"):
        plan_targets({"x": rule(signal="lambda.eror_rate")}, policy, {"new": {"onchain-api": "1"}}, 0, 1)


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
    # 14.1 -> 50.8 ms (two healthy versions' WebSocket p95 in one 20-s window, bench/FRONTDOOR.md)
    # is 3.6x but only 37 ms slower: with the sandbox's 50 ms floor that is jitter; 2x at 100 ->
    # 200 ms still fails.
    settings = policy.compare.model_copy(update={"min_p95_delta": 50.0})
    fast = [14.0 + i * 0.1 for i in range(25)]
    slow = [50.0 + i * 0.1 for i in range(25)]
    _, pv, rv, _, ratio, _, p = compare_judge(250, 250, 0.0, 0.0, 14.1, 50.8, fast, slow, settings)
    assert ratio == pytest.approx(50.8 / 14.1) and p < 0.001
    assert (pv, rv) == ("pass", "pass")
    strict = policy.compare.model_copy(update={"min_p95_delta": 10.0})
    _, pv, rv, *_ = compare_judge(250, 250, 0.0, 0.0, 14.1, 50.8, fast, slow, strict)
    assert (pv, rv) == ("fail", "fail")  # a 10 ms floor (prod's default) does not hide 37 ms
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


def test_dashboard_ellipsis_repeats_the_previous_row_with_new_last_values() -> None:
    # What the console writes: "..." is the previous row with its last values replaced.
    body = {"widgets": [{"type": "metric", "properties": {"stat": "Sum", "metrics": [
        ["AWS/Lambda", "Invocations", "FunctionName", "a", "Resource", "a:live"], ["...", "b", "Resource", "b:live"],
        ["...", "c:live"]]}}]}
    specs = dashboard_series("Lambda", body, 60)
    assert [dict(s.dims) for s in specs] == [{"FunctionName": "a", "Resource": "a:live"},
                                             {"FunctionName": "b", "Resource": "b:live"},
                                             {"FunctionName": "b", "Resource": "c:live"}]
    with pytest.raises(DashboardError, match="repeats a previous row"):
        dashboard_series("x", {"widgets": [{"type": "metric", "properties": {"metrics": [["...", "a"]]}}]}, 60)


def test_sandbox_alarms_and_dashboards_match_the_policy(policy: Any) -> None:
    assert list(ALARM_NAMES) == policy.monitoring.alarms
    assert list(DASHBOARD_NAMES) == policy.monitoring.dashboards
    for name, body in dashboard_bodies().items():
        assert dashboard_series(name, body, 60), name


def test_nearest_rank_percentile() -> None:
    assert moto_ext.percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert moto_ext.percentile([5.0], 99.9) == 5.0
    assert moto_ext.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


@pytest.mark.parametrize("value", [1796194903, 1796194903.0, 1796194903.125, 0, 951782400.5])
def test_epoch_timestamps_parse_as_moto_parses_them(value: float) -> None:
    """moto_ext's fast path for PutMetricData timestamps gives moto's own result: the same naive UTC instant."""
    from datetime import UTC

    from moto.core.parse import botocore_parse_timestamp

    moto_result = botocore_parse_timestamp(value).astimezone(UTC).replace(tzinfo=None)
    assert moto_ext.epoch_timestamp(value) == moto_result
    assert moto_ext.epoch_timestamp(value).tzinfo is None  # type: ignore[union-attr]
    assert moto_ext.epoch_timestamp("2026-12-02T07:00:00Z") is None  # ISO strings stay moto's
    assert moto_ext.epoch_timestamp(True) is None


class _Backend:
    """The two lists of moto's CloudWatch backend that moto_ext's index reads."""

    def __init__(self) -> None:
        self.metric_data: list[Any] = []
        self.aws_metric_data: list[Any] = []


def test_series_windows_and_prune_read_only_the_instants_asked() -> None:
    """The index keeps each series in timestamp order (a late datum lands in its place), a window is
    exactly [start, end), and prune drops exactly what is older than the retention, index and list alike."""
    from moto.cloudwatch.models import MetricDatum

    dims = [{"Name": "FunctionName", "Value": "f"}]
    t0 = datetime(2026, 12, 2, 6, 0, 0)
    backend = _Backend()

    def put(*seconds: int) -> None:
        backend.metric_data += [MetricDatum("NS", "Errors", float(s), dims, t0 + timedelta(seconds=s), "Count")
                                for s in seconds]

    key = ("NS", "Errors", (("FunctionName", "f"),))
    put(0, 1, 2, 5, 6)
    put(3, 4)  # late: a bucket released after the next one
    put(7)
    window = moto_ext._Snapshot(backend).window(key, t0 + timedelta(seconds=2), t0 + timedelta(seconds=6))
    assert [d.value for d in window] == [2.0, 3.0, 4.0, 5.0]
    assert moto_ext._Snapshot(backend).window(("NS", "Other", ()), t0, t0 + timedelta(hours=1)) == []

    now = t0 + moto_ext._RETENTION + timedelta(seconds=3)  # the cutoff is t0 + 3 s
    assert moto_ext.prune(backend, now) == 3
    assert sorted(d.value for d in backend.metric_data) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert moto_ext.prune(backend, now) == 0
    put(8)  # indexed after a prune too
    window = moto_ext._Snapshot(backend).window(key, t0, t0 + timedelta(hours=1))
    assert [d.value for d in window] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


class Series(dict):  # type: ignore[type-arg]
    """What moto_ext reads series from: ``window(key, start, end)`` is the series' datums in [start, end)."""

    def window(self, key: Any, start: datetime, end: datetime) -> list[Any]:
        return sorted((d for d in self.get(key, []) if start <= d.timestamp < end), key=lambda d: d.timestamp)


def test_alarm_evaluation_states() -> None:
    from moto.cloudwatch.models import Alarm, MetricDatum

    now = datetime(2026, 1, 1, 12, 0, 0)
    dims = [{"Name": "FunctionName", "Value": "a"}]

    def alarm(treat: str | None) -> Any:
        return Alarm("123456789012", "us-east-1", "x", "AWS/Lambda", "Errors", None, "GreaterThanThreshold", 2, None,
                     10, 3.0, "Sum", None, "", dims, ["arn:sns"], None, None, None, True, treat, None, None, None)

    key = ("AWS/Lambda", "Errors", (("FunctionName", "a"),))
    snap = Series({key: [MetricDatum("AWS/Lambda", "Errors", 5.0, dims, now - timedelta(seconds=3))]})
    assert moto_ext.evaluate_alarm(alarm(None), snap, now)[0] == "OK"  # 1 of 2 periods breaching, need 2
    snap[key].append(MetricDatum("AWS/Lambda", "Errors", 4.0, dims, now - timedelta(seconds=13)))
    state, reason, _ = moto_ext.evaluate_alarm(alarm(None), snap, now)
    assert state == "ALARM" and "2 out of the last 2" in reason
    empty = Series()
    assert moto_ext.evaluate_alarm(alarm(None), empty, now)[0] == "INSUFFICIENT_DATA"
    assert moto_ext.evaluate_alarm(alarm("notBreaching"), empty, now)[0] == "OK"
    assert moto_ext.evaluate_alarm(alarm("breaching"), empty, now)[0] == "ALARM"


def test_baseline_rules_judge_the_new_version_against_the_old_over_the_same_seconds(policy: Any) -> None:
    # Issue 14: latency at 10 % judged against the old version (a floor AND a ratio must both be exceeded).
    rules = {"latency_vs_old": policy.rollback_triggers["latency_vs_old"],
             "cache_hit_rate_vs_old": policy.rollback_triggers["cache_hit_rate_vs_old"]}
    both = {"new": {"onchain-api": "4"}, "old": {"onchain-api": "3"}}
    targets = plan_targets(rules, policy, both, 100.0, 130.0)
    assert sorted((t.rule_name, t.label) for t in targets) == [
        ("cache_hit_rate_vs_old", "new"), ("cache_hit_rate_vs_old", "old"),
        ("latency_vs_old", "new"), ("latency_vs_old", "old")]
    assert len({(t.start, t.end) for t in targets}) == 1  # the same seconds
    plan = plan_poll(targets, 130.0)

    def judged(new_ms: float, old_ms: float, new_hits: float = 40.0, old_hits: float = 40.0) -> dict[str, Any]:
        data = _data(plan, {("Latency", "4", "p50"): [(100.0, new_ms)], ("Latency", "3", "p50"): [(100.0, old_ms)],
                            ("Requests", "4", "Sum"): [(float(t), 2.0) for t in range(100, 127)],
                            ("Requests", "3", "Sum"): [(float(t), 18.0) for t in range(100, 127)],
                            ("CacheHits", "4", "Sum"): [(115.0, new_hits)],
                            ("CacheMisses", "4", "Sum"): [(115.0, 50.0 - new_hits)],
                            ("CacheHits", "3", "Sum"): [(115.0, old_hits)], ("CacheMisses", "3", "Sum"): [(115.0, 10.0)]})
        results = evaluate_plan(plan, data, now=130.0, grace=5, final=False, result_kind="rollback trigger")
        assert [r.version for r in results] == ["new", "new"]  # one verdict per rule, on the new version
        return {r.rule: r for r in results}

    slow = judged(180.0, 100.0)["latency_vs_old"]  # bound max(100 + 50, 100 x 1.5) = 150
    assert (slow.verdict, slow.threshold, slow.baseline_value, slow.baseline_version) == ("fail", 150.0, 100.0, "3")
    assert slow.message == (
        "rollback trigger latency_vs_old: p50 180 ms on onchain-api version 4 (new) against 100 ms on version 3 "
        "(old) over the same 15s ending 00:02:07 UTC, must be <= 150 ms (old + 50 ms or x1.5; breaks: over the old "
        "version by more than allowed; source: cloudwatch: service metrics, LlamaDeploy/Service; 30 and 270 requests)")
    assert judged(140.0, 100.0)["latency_vs_old"].verdict == "pass"
    assert judged(290.0, 200.0)["latency_vs_old"].verdict == "pass"  # +90 ms but x1.45: jitter on a slow service
    assert judged(35.0, 10.0)["latency_vs_old"].verdict == "pass"  # x3.5 but +25 ms: jitter on a fast one
    bypass = judged(20.0, 20.0, new_hits=0.0)["cache_hit_rate_vs_old"]  # 0 % against 80 % - 20 points
    assert (bypass.verdict, bypass.threshold) == ("fail", pytest.approx(0.6))
    # 25 of 50 against 40 of 50: 30 points under, and chance cannot explain it (p ~ 0.0008 < 0.001).
    assert judged(20.0, 20.0, new_hits=25.0)["cache_hit_rate_vs_old"].verdict == "fail"
    # 29 of 50 against 40 of 50 is 22 points under, over the bound, yet a few seconds of lookups explain
    # it (p ~ 0.009): no rollback on a streak of misses (seen: 75.8 % against 97 % over 4 s, 33 lookups
    # a side, on a healthy release, p ~ 0.006).
    noisy = judged(20.0, 20.0, new_hits=29.0)["cache_hit_rate_vs_old"]
    assert noisy.verdict == "pass" and "chance explains it (p = " in noisy.message, noisy.message
    # The deploy stage (nothing old serving beside it) and rollback have no pair: no target, no verdict.
    assert plan_targets(rules, policy, {"new": {"onchain-api": "4"}}, 100.0, 130.0) == []


@pytest.mark.parametrize(("kw", "error"), [
    ({"op": "==", "baseline": "old"}, "baseline: old needs an ordering op"),
    ({"baseline": "old", "per_version": False}, "per_version must stay true"),
    ({"op": ">=", "baseline": "old", "max_ratio": 2}, "max_ratio applies to a baseline: old rule with op < or <="),
    ({"max_ratio": 2}, "max_ratio applies to a baseline: old rule"),
])
def test_baseline_rule_shapes_that_cannot_be_judged_are_refused(kw: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        rule(**kw)


def test_dashboard_shorthand_as_the_console_writes_it() -> None:
    # Issue 13: console-made dashboards: "." rows shorter than the previous one, "..." with only new
    # options or with new last values, "..." after a metric-math row (it repeats the last metric row).
    body = {"widgets": [{"type": "metric", "properties": {"stat": "Sum", "metrics": [
        ["AWS/ApiGateway", "5XXError", "ApiName", "onchain-api", "Stage", "live"],
        ["...", "preview"],
        [".", "4XXError", ".", ".", ".", "."],
        [{"expression": "m1 / m2", "id": "e1"}],
        ["...", {"stat": "Average", "label": "4xx"}],
        [".", "Count", ".", ".", {"stat": "SampleCount"}]]}}]}
    specs = dashboard_series("Main", body, 60)
    assert [(s.metric, dict(s.dims), s.stat) for s in specs] == [
        ("5XXError", {"ApiName": "onchain-api", "Stage": "live"}, "Sum"),
        ("5XXError", {"ApiName": "onchain-api", "Stage": "preview"}, "Sum"),
        ("4XXError", {"ApiName": "onchain-api", "Stage": "preview"}, "Sum"),
        ("4XXError", {"ApiName": "onchain-api", "Stage": "preview"}, "Average"),
        ("Count", {"ApiName": "onchain-api"}, "SampleCount")]
    with pytest.raises(DashboardError, match="'.' at a position the previous row does not have"):
        dashboard_series("x", {"widgets": [{"type": "metric", "properties": {"metrics": [
            ["AWS/Lambda", "Errors"], [".", ".", "FunctionName", "."]]}}]}, 60)



class ScriptedCloudWatch:
    """GetMetricData over per-second Sums the test scripts: ``visible(metric, second, now)`` says whether a
    bucket can be read yet, ``value(metric, second)`` what it holds (the functions' EMF, per Version)."""

    def __init__(self, clock: Any, value: Any, visible: Any):
        self.clock, self.value, self.visible = clock, value, visible

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        start, end = int(kw["StartTime"].timestamp()), int(kw["EndTime"].timestamp())
        results = []
        for q in kw["MetricDataQueries"]:
            metric = q["MetricStat"]["Metric"]["MetricName"]
            seconds = [s for s in range(start, end) if self.visible(metric, s, self.clock()) and
                       self.value(metric, s) is not None]
            results.append({"Id": q["Id"], "Timestamps": [datetime.fromtimestamp(s, UTC) for s in seconds],
                            "Values": [float(self.value(metric, s)) for s in seconds]})
        return {"MetricDataResults": results}


def _final_phase_watch(policy: Any, delivered: Any, visible: Any) -> tuple[Any, list[Any]]:
    """shift10's watch on the WebSocket function's event delivery alone, 6 events a second due on the new
    version, run on a virtual clock to its final decision."""
    only = policy.model_copy(update={"rollback_triggers": {"event_delivery_ratio":
                                                           policy.rollback_triggers["event_delivery_ratio"]},
                                     "key_metrics": {}})
    now = [1_000_000.0]
    due = {mn.SVC_EVENTS_TO_DELIVER: lambda s: 6, mn.SVC_EVENTS_DELIVERED: delivered}
    cw = ScriptedCloudWatch(lambda: now[0], lambda metric, s: due[metric](s) if metric in due else None, visible)
    breaches: list[Any] = []
    watch = BakeWatch(cw, only, ["onchain-ws"], "live", {"onchain-ws": "3"}, {"onchain-ws": "4"}, now[0], None,
                      breaches.append, clock=lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    watch.simulate(15.0, advance)
    return watch, breaches


def test_a_trigger_failing_on_final_data_still_arriving_waits_one_poll(policy: Any) -> None:
    """A store may show one series of a put before another (the sandbox's moto did, CI 2026-12-02): the bake's
    last second's EventsToDeliver is readable, its EventsDelivered a moment later. Read once, 84 of 90
    events looked delivered (93.3 % < 95 %); read again one interval later, all 90 were."""
    deadline = 1_000_015
    last = deadline - 1

    def visible(metric: str, second: int, now: float) -> bool:
        late = 0.5 if (metric == mn.SVC_EVENTS_DELIVERED and second == last) else 0.0
        return now >= second + 1 + 1.0 + late

    watch, breaches = _final_phase_watch(policy, lambda s: 6, visible)
    assert breaches == [], [b.message for b in breaches]
    polls = watch.evidence()["polls"]
    final = [p for p in polls if p["t"] >= deadline]
    ratios = [p["values"]["event_delivery_ratio|new|onchain-ws"] for p in final]
    # The torn read was seen, and not acted on; the next read judged all 90 events.
    assert any(r["verdict"] == "fail" for r in ratios), ratios
    assert ratios[-1]["verdict"] == "pass" and ratios[-1]["samples"] == 90, ratios


def test_a_trigger_failing_on_the_bake_s_last_data_rolls_back_one_poll_later(policy: Any) -> None:
    """The last two seconds delivered nothing: only the final windows hold them. Confirmed, then acted on."""
    deadline = 1_000_015

    def visible(metric: str, second: int, now: float) -> bool:
        return now >= second + 2.0

    watch, breaches = _final_phase_watch(policy, lambda s: 0 if s >= deadline - 2 else 6, visible)
    [breach] = breaches
    assert breach.rule == "event_delivery_ratio" and breach.label == "new" and breach.value == pytest.approx(78 / 90)
    final = [p for p in watch.evidence()["polls"] if p["t"] >= deadline]
    failing = [p["t"] for p in final if p["values"]["event_delivery_ratio|new|onchain-ws"]["verdict"] == "fail"]
    assert len(failing) == 2 and failing[1] - failing[0] == pytest.approx(watch.interval), final
    assert breach.at == pytest.approx(failing[1])
