"""What the sandbox's moto process adds to moto's CloudWatch (see MOTO.md), and nothing more.

Runs only inside ``python -m pytest_llamadeploy.sandbox.moto_server``:
``install()`` patches the backend before the server starts, ``start_background``
starts one daemon thread afterwards. The gate's boto3 calls stay exactly what
they are against AWS; only the server answers more like CloudWatch does:

- ``GetMetricData`` with percentile stats (``p95``, ``p99.9``...) computed from
  the stored values (``Values``/``Counts`` included), instead of moto's HTTP 500.
  It also reads an index per series (namespace, name, exact dimension set), so
  a call costs the points of the series asked, not buckets x every stored point,
  and it honours the namespace as CloudWatch does.
- Alarm evaluation every second from the stored data (Period, EvaluationPeriods,
  DatapointsToAlarm, Statistic/ExtendedStatistic, Threshold, ComparisonOperator,
  TreatMissingData; metric-math alarms of simple arithmetic over their metrics),
  states set through the backend's own ``set_alarm_state``. New alarms start in
  INSUFFICIENT_DATA, as on AWS.
- The SQS queue-depth metrics AWS publishes by itself (AWS/SQS, QueueName), every 5 s.
- ``GetMetricData`` as CloudWatch serves it: StartTime rounded down (to the minute, or to
  the 5/10/20/30-s division for those periods), and sub-minute periods answered only for
  series stored at high resolution (``StorageResolution: 1``).
- X-Ray ``GetTraceSummaries`` with a FilterExpression (moto answers 500): conjunctions of
  ``service("name")`` and ``annotation.key = value``, the subset the gate uses; anything
  else is refused with the unsupported clause named. Summaries carry their annotations,
  and HasFault/HasError/HasThrottle and Duration from the segments' values.
- Points older than an hour are pruned, so the sandbox stays fast over a long day.
- A CloudFormation update whose template contains ``STACK_ROLLBACK_FAILED_MARKER``
  fails and its rollback fails too, leaving the stack in ``UPDATE_ROLLBACK_FAILED``
  with the events AWS would record (moto has no failing updates): how
  ``llamadeploy doctor`` is rehearsed. Any other update behaves as moto's.

Percentiles use the nearest-rank definition (the smallest value with at least
p % of the samples at or below it). CloudWatch interpolates on its own sketch;
for the gate's thresholds the difference is within one sample.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import operator
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: Guards moto's metric list and our index (moto's server answers from several threads).
_LOCK = threading.RLock()
_RETENTION = timedelta(hours=1)
_INSTALLED = False
_BACKGROUND: threading.Thread | None = None

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]
#: In an update's template body: the update fails and so does its rollback (see ``install``).
STACK_ROLLBACK_FAILED_MARKER = "llamadeploy-sandbox:update-and-rollback-fail"


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty), p in (0, 100]."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _parse_percentile(stat: str) -> float | None:
    if len(stat) > 1 and stat[0] == "p":
        try:
            p = float(stat[1:])
        except ValueError:
            return None
        if 0.0 < p <= 100.0:
            return p
    return None


def statistic(datums: list[Any], stat: str) -> float | None:
    """One statistic of a bucket of moto datums (single values and statistic sets)."""
    from moto.cloudwatch.models import MetricAggregatedDatum, MetricDatum

    singles = [d.value for d in datums if isinstance(d, MetricDatum)]
    sets = [d for d in datums if isinstance(d, MetricAggregatedDatum)]
    count = len(singles) + sum(s.sample_count for s in sets)
    if stat == "SampleCount":
        return float(count)
    if stat == "Sum":
        return float(sum(singles) + sum(s.sum for s in sets))
    if count == 0:
        return None
    if stat == "Average":
        return (sum(singles) + sum(s.sum for s in sets)) / count
    if stat == "Minimum":
        return float(min(singles + [s.min for s in sets]))
    if stat == "Maximum":
        return float(max(singles + [s.max for s in sets]))
    p = _parse_percentile(stat)
    if p is not None:
        # A statistic set carries no distribution: like CloudWatch, percentiles need raw values.
        return percentile(singles, p) if singles else None
    raise ValueError(stat)


# ---------------------------------------------------------------- the series index


def _key(datum: Any) -> SeriesKey:
    return datum.namespace, datum.name, tuple(sorted((d.name, d.value) for d in datum.dimensions))


def _stamp(datum: Any) -> datetime:
    return _naive_utc(datum.timestamp)


def _index(backend: Any) -> dict[SeriesKey, list[Any]]:
    """Per-series lists of moto's datums, each in timestamp order, brought up to date incrementally
    (call under _LOCK).

    In order so that a window is two bisections: the alarms (every second) and each GetMetricData
    read a few seconds or minutes of series that hold up to an hour (bench/IDLE.md). Datums come
    nearly in order (each namespace's buckets are released after their own drawn lag): a late one
    is inserted in its place.
    """
    index = backend.__dict__.get("_llama_index")
    data = backend.metric_data
    if index is None or backend.__dict__.get("_llama_list") is not data or backend._llama_indexed > len(data):
        index = defaultdict(list)
        backend._llama_index = index
        backend._llama_list = data
        backend._llama_indexed = 0
    for datum in data[backend._llama_indexed:]:
        series = index[_key(datum)]
        if series and _stamp(series[-1]) > _stamp(datum):
            bisect.insort_right(series, datum, key=_stamp)
        else:
            series.append(datum)
    backend._llama_indexed = len(data)
    return index


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _provider_series(backend: Any) -> dict[SeriesKey, list[Any]]:
    extra: dict[SeriesKey, list[Any]] = defaultdict(list)
    for datum in backend.aws_metric_data:
        extra[_key(datum)].append(datum)
    return extra


def list_series(backend: Any, metric_name: str | None, namespace: str | None,
                dimensions: list[dict[str, str]] | None) -> list[Any]:
    """ListMetrics over the series index: one entry per series, as AWS answers.

    moto scans every datum per call and de-duplicates them pairwise; on an hour of
    1-s data (~10^5 datums) that outlasts a client's read timeout, and doctor
    and the preflight ask once per series a rule reads. Same answer, per series.
    """
    with _LOCK:
        series = {key: data[-1] for key, data in _index(backend).items() if data}
    for datum in backend.aws_metric_data:
        series.setdefault(_key(datum), datum)
    return [d for d in series.values()
            if d.filter(namespace=namespace, name=metric_name, dimensions=dimensions or [])]


class _Snapshot:
    """The datums of one series between two instants, each window copied under the lock.

    Copying whole series for every GetMetricData call and every alarm pass cost moto time
    growing with everything stored: the idle sandbox stores ~280 points a second, ~10^6 in
    the hour kept, and its four alarms are evaluated every second (bench/IDLE.md).
    """

    def __init__(self, backend: Any):
        self._backend = backend
        self._provider: dict[SeriesKey, list[Any]] | None = None

    def window(self, key: SeriesKey, start: datetime, end: datetime) -> list[Any]:
        """Datums of the series ``key`` with ``start <= timestamp < end`` (naive UTC), in timestamp order."""
        with _LOCK:
            series = _index(self._backend).get(key, [])
            copy = series[bisect.bisect_left(series, start, key=_stamp):bisect.bisect_left(series, end, key=_stamp)]
        if self._provider is None:
            self._provider = _provider_series(self._backend)
        return copy + [d for d in self._provider.get(key, ()) if start <= _stamp(d) < end]


#: Series that received a datum with StorageResolution 1: only these answer sub-minute periods.
_HIGH_RESOLUTION: set[SeriesKey] = set()
_SUB_MINUTE = (1, 5, 10, 20, 30)


def request_start(start: datetime, period: int) -> datetime:
    """StartTime as CloudWatch rounds it for data under 15 days old (API reference, GetMetricData StartTime):
    down to the 5/10/20/30-second division of the minute for those periods, else to the whole minute."""
    start = start.replace(microsecond=0)
    if period in (5, 10, 20, 30):
        return start - timedelta(seconds=start.second % period)
    return start.replace(second=0)


def series_values(
    series: list[Any], start: datetime, end: datetime, period: int, stat: str, unit: str | None = None
) -> tuple[list[datetime], list[float]]:
    """Buckets of ``period`` seconds from ``start`` (naive UTC) holding data, oldest first."""
    buckets: dict[int, list[Any]] = defaultdict(list)
    for datum in series:
        ts = _naive_utc(datum.timestamp)
        if start <= ts < end and (not unit or datum.unit == unit):
            buckets[int((ts - start).total_seconds() // period)].append(datum)
    stamps: list[datetime] = []
    values: list[float] = []
    for index in sorted(buckets):
        value = statistic(buckets[index], stat)
        if value is not None:
            stamps.append(start + timedelta(seconds=index * period))
            values.append(value)
    return stamps, values


def _get_metric_data(self: Any, queries: list[dict[str, Any]], start_time: datetime, end_time: datetime,
                     scan_by: str = "TimestampAscending") -> list[dict[str, Any]]:
    from moto.cloudwatch.exceptions import InvalidParameterValue, ValidationError
    from moto.cloudwatch.metric_data_expression_parser import parse_expression

    requested = _naive_utc(start_time).replace(microsecond=0)
    end = _naive_utc(end_time).replace(microsecond=0)
    if requested >= end:
        raise ValidationError("The parameter EndTime must be greater than StartTime.")
    snapshot = _Snapshot(self)

    results: list[dict[str, Any]] = []
    returned: list[dict[str, Any]] = []
    for query in queries:
        if "MetricStat" not in query:
            continue
        stat_spec = query["MetricStat"]
        metric = stat_spec["Metric"]
        stat = stat_spec["Stat"]
        period = int(stat_spec["Period"])
        if period <= 0 or (period not in _SUB_MINUTE and period % 60):
            raise InvalidParameterValue(f"The value {period} for parameter Period is invalid: use 1, 5, 10, 20, 30 "
                                        "or a multiple of 60.")
        if stat not in ("Sum", "Average", "Minimum", "Maximum", "SampleCount") and _parse_percentile(stat) is None:
            raise InvalidParameterValue(f"The value {stat} for parameter MetricStat.Stat is not supported.")
        key = (metric["Namespace"], metric["MetricName"],
               tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", []))))
        messages: list[dict[str, str]] = []
        stamps: list[datetime] = []
        values: list[float] = []
        if period < 60 and key not in _HIGH_RESOLUTION:
            # AWS: a standard-resolution metric has one datapoint a minute; sub-minute periods return nothing.
            messages.append({"Code": "NoDataForPeriod", "Value": f"{metric['MetricName']} is stored at standard "
                             f"resolution: Period {period} needs a high-resolution metric (StorageResolution 1)"})
        else:
            first = request_start(requested, period)
            stamps, values = series_values(snapshot.window(key, first, end), first, end, period, stat,
                                           stat_spec.get("Unit"))
        if scan_by == "TimestampDescending":
            stamps.reverse()
            values.reverse()
        item = {"id": query["Id"], "label": query.get("Label") or metric["MetricName"], "values": values,
                "timestamps": stamps, "status_code": "Complete"}
        if messages:
            item["messages"] = messages
        results.append(item)
        if query.get("ReturnData", True) not in (False, "false"):
            returned.append(item)
    for query in queries:
        if "Expression" in query and not query["Expression"].startswith("SELECT"):
            math_values, math_stamps = parse_expression(query["Expression"], results)
            returned.append({"id": query["Id"], "label": query.get("Label") or query["Id"], "values": math_values,
                             "timestamps": math_stamps, "status_code": "Complete"})
    return returned


# ---------------------------------------------------------------- alarms

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
_WORDS = {
    "GreaterThanThreshold": "greater than",
    "GreaterThanOrEqualToThreshold": "greater than or equal to",
    "LessThanThreshold": "less than",
    "LessThanOrEqualToThreshold": "less than or equal to",
}
_ARITH: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}


def _arith(expression: str, names: dict[str, float | None]) -> float | None:
    """Value of a metric-math expression of + - * / over query ids and numbers (None when undefined)."""

    def walk(node: ast.AST) -> float | None:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = walk(node.operand)
            return None if inner is None else -inner
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right = walk(node.left), walk(node.right)
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.Div) and right == 0:
                return None
            return _ARITH[type(node.op)](left, right)
        raise ValueError(f"unsupported metric math in the sandbox: {expression!r}")

    return walk(ast.parse(expression, mode="eval"))


def _alarm_period_values(alarm: Any, snapshot: _Snapshot, now: datetime) -> tuple[int, list[float | None]]:
    """The alarm's value for each of its last EvaluationPeriods periods, newest first (None: missing)."""
    periods = int(alarm.evaluation_periods or 1)
    if alarm.metric_name:
        period = int(alarm.period or 60)
        key = (alarm.namespace, alarm.metric_name, tuple(sorted((d.name, d.value) for d in alarm.dimensions)))
        stat = alarm.extended_statistic or alarm.statistic or "Average"
        out: list[float | None] = []
        for k in range(periods):
            end = now - timedelta(seconds=k * period)
            start = end - timedelta(seconds=period)
            _, values = series_values(snapshot.window(key, start, end), start, end, period, stat, alarm.unit)
            out.append(values[0] if values else None)
        return period, out
    stats = [q for q in alarm.metric_data_queries if q.metric_stat is not None]
    expr = [q for q in alarm.metric_data_queries if q.expression]
    if not stats:
        return int(alarm.period or 60), [None] * periods
    period = int(stats[0].metric_stat.period or alarm.period or 60)
    out = []
    for k in range(periods):
        end = now - timedelta(seconds=k * period)
        named: dict[str, float | None] = {}
        for q in stats:
            ms = q.metric_stat
            key = (ms.metric.namespace, ms.metric.metric_name,
                   tuple(sorted((d.name, d.value) for d in ms.metric.dimensions)))
            start = end - timedelta(seconds=period)
            _, values = series_values(snapshot.window(key, start, end), start, end, period, ms.stat)
            named[q.id] = values[0] if values else None
        if expr:
            out.append(_arith(expr[-1].expression, named))
        else:
            out.append(named[stats[0].id])
    return period, out


def evaluate_alarm(alarm: Any, snapshot: _Snapshot, now: datetime) -> tuple[str, str, dict[str, Any]]:
    """(state, reason, reason data) of one metric alarm as CloudWatch would set it now."""
    compare = _COMPARE.get(alarm.comparison_operator)
    if compare is None:
        return alarm.state_value, alarm.state_reason, {}
    period, values = _alarm_period_values(alarm, snapshot, now)
    needed = int(alarm.datapoints_to_alarm or len(values))
    treat = alarm.treat_missing_data or "missing"
    threshold = float(alarm.threshold)
    present = [v for v in values if v is not None]
    breaching = sum(1 for v in present if compare(v, threshold))
    if treat == "breaching":
        breaching += len(values) - len(present)
    shown = ", ".join(f"{v:g}" for v in present[:5]) or "no datapoints"
    data = {"version": "1.0", "queryDate": now.isoformat(), "period": period, "recentDatapoints": present[:5],
            "threshold": threshold, "evaluatedDatapoints": len(values)}
    word = _WORDS[alarm.comparison_operator]
    if breaching >= needed:
        return "ALARM", (f"Threshold Crossed: {breaching} out of the last {len(values)} datapoints [{shown}] "
                         f"{'was' if breaching == 1 else 'were'} {word} the threshold ({threshold:g})."), data
    if not present:
        if treat == "missing":
            return "INSUFFICIENT_DATA", f"Insufficient Data: {len(values)} datapoints were unknown.", data
        if treat == "ignore":
            return alarm.state_value, alarm.state_reason, data
    return "OK", (f"Threshold Crossed: {len(values) - breaching} out of the last {len(values)} datapoints "
                  f"[{shown}] {'was' if len(values) - breaching == 1 else 'were'} not {word} the threshold ({threshold:g})."), data


def evaluate_alarms(backend: Any, now: datetime | None = None) -> int:
    """Evaluate every metric alarm of one backend; returns how many changed state."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    snapshot = _Snapshot(backend)
    changed = 0
    for alarm in list(backend.alarms.values()):
        if alarm.rule is not None:
            continue  # composite alarms: not evaluated in the sandbox
        try:
            state, reason, data = evaluate_alarm(alarm, snapshot, now)
        except ValueError as exc:
            state, reason, data = "INSUFFICIENT_DATA", f"sandbox cannot evaluate this alarm: {exc}", {}
        if state != alarm.state_value:
            backend.set_alarm_state(alarm.name, reason, json.dumps(data), state)
            changed += 1
    return changed


# ---------------------------------------------------------------- housekeeping


def prune(backend: Any, now: datetime | None = None) -> int:
    """Drop points older than the retention; returns how many."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    cutoff = now - _RETENTION
    with _LOCK:
        # Each series (in timestamp order) drops its head; the index stays valid trimmed (rebuilding it
        # cost seconds), and nothing to drop is found without a scan of moto's list.
        dropped: set[int] = set()
        for series in _index(backend).values():
            head = bisect.bisect_left(series, cutoff, key=_stamp)
            if head:
                dropped.update(map(id, series[:head]))
                del series[:head]
        if not dropped:
            return 0
        before = len(backend.metric_data)
        # In place: moto's own code holds a reference to this list. By identity: no timestamp per datum.
        backend.metric_data[:] = [d for d in backend.metric_data if id(d) not in dropped]
        backend._llama_indexed = len(backend.metric_data)
        return before - len(backend.metric_data)


def publish_sqs_metrics(now: datetime | None = None) -> None:
    """The queue-depth metrics AWS publishes for every queue (moto does not)."""
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.sqs.models import sqs_backends

    stamp = now or datetime.now(UTC)
    for account, regions in list(sqs_backends.items()):
        for region, sqs in list(regions.items()):
            data = []
            for queue in list(sqs.queues.values()):
                dims = [{"Name": "QueueName", "Value": queue.name}]
                for name, value in (
                    ("ApproximateNumberOfMessagesVisible", queue.approximate_number_of_messages),
                    ("ApproximateNumberOfMessagesNotVisible", queue.approximate_number_of_messages_not_visible),
                ):
                    data.append({"MetricName": name, "Dimensions": dims, "Value": float(value), "Timestamp": stamp,
                                 "Unit": "Count"})
            if data:
                cloudwatch_backends[account][region].put_metric_data("AWS/SQS", data)


def _backends() -> Iterable[Any]:
    from moto.cloudwatch.models import cloudwatch_backends

    for _account, regions in list(cloudwatch_backends.items()):
        yield from list(regions.values())


def _loop(stop: threading.Event) -> None:
    last_prune = last_sqs = 0.0
    while not stop.wait(1.0):
        try:
            now = time.time()
            if now - last_sqs >= 5.0:
                last_sqs = now
                publish_sqs_metrics()
            for backend in _backends():
                evaluate_alarms(backend)
                if now - last_prune >= 60.0:
                    prune(backend)
            if now - last_prune >= 60.0:
                last_prune = now
        except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad alarm or a reset mid-pass
            print(f"moto_ext: background pass failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- entry points


_SERVICE_CLAUSE = re.compile(r'service\(\s*"([^"]*)"\s*\)')
_ANNOTATION_CLAUSE = re.compile(r'annotation\.([A-Za-z0-9_]+)\s*=\s*(?:"([^"]*)"|(-?\d+(?:\.\d+)?)|(true|false))')


def trace_filter(expression: str) -> Callable[[list[Any]], bool]:
    """A predicate over a trace's segments for an X-Ray filter expression (the subset above)."""
    tests: list[Callable[[list[Any]], bool]] = []
    for clause in re.split(r"\s+AND\s+", expression.strip(), flags=re.IGNORECASE):
        clause = clause.strip()
        if match := _SERVICE_CLAUSE.fullmatch(clause):
            def named(segs: list[Any], n: str = match.group(1)) -> bool:
                return any(seg.name == n for seg in segs)

            tests.append(named)
        elif match := _ANNOTATION_CLAUSE.fullmatch(clause):
            key, text, number, boolean = match.groups()
            wanted: Any = text if text is not None else (float(number) if number is not None else boolean == "true")

            def has(segs: list[Any], k: str = key, w: Any = wanted) -> bool:
                for seg in segs:
                    value = (seg.annotations or {}).get(k)
                    if value is not None and (value == w or (isinstance(w, float) and _number(value) == w)):
                        return True
                return False

            tests.append(has)
        else:
            raise ValueError(f"the sandbox's X-Ray does not evaluate filter clause {clause!r} "
                             "(supported: service(\"name\"), annotation.key = value, joined by AND)")
    return lambda segs: all(test(segs) for test in tests)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _install_xray_filters() -> None:
    from moto.core.exceptions import AWSError
    from moto.xray.models import SegmentCollection

    original = SegmentCollection.summary

    def summary(self: Any, start_time: Any, end_time: Any, filter_expression: Any = None) -> dict[str, Any]:
        result = original(self, start_time, end_time, None)
        keep = None
        if filter_expression:
            try:
                keep = trace_filter(str(filter_expression))
            except ValueError as exc:
                raise AWSError(str(exc), exception_type="InvalidRequestException", status=400) from None
        kept = []
        for item in result["TraceSummaries"]:
            segments = self._traces[item["Id"]]["segments"]
            if keep is not None and not keep(segments):
                continue
            annotations: dict[str, list[dict[str, Any]]] = {}
            for seg in segments:
                for key, value in (seg.annotations or {}).items():
                    kind = "BooleanValue" if isinstance(value, bool) else (
                        "NumberValue" if isinstance(value, int | float) else "StringValue")
                    annotations.setdefault(key, []).append({"AnnotationValue": {kind: value}})
            item["Annotations"] = annotations
            # moto sets these from the keys' presence ("fault": false is a fault) and whole seconds.
            for flag, key in (("HasFault", "fault"), ("HasError", "error"), ("HasThrottle", "throttle")):
                item[flag] = any(seg.misc.get(key) is True for seg in segments)
            duration = max(s.end_time or s.start_time for s in segments) - min(s.start_time for s in segments)
            item["Duration"] = item["ResponseTime"] = round(duration, 6)
            kept.append(item)
        result["TraceSummaries"] = kept
        result["TracesProcessedCount"] = len(kept)
        return result

    SegmentCollection.summary = summary  # type: ignore[method-assign]


def install() -> None:
    """Patch moto's CloudWatch and X-Ray backends (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from moto.cloudwatch import models

    original_put = models.CloudWatchBackend.put_metric_data
    original_alarm_init = models.Alarm.__init__

    def put_metric_data(self: Any, namespace: str, metric_data: list[dict[str, Any]]) -> None:
        with _LOCK:
            original_put(self, namespace, metric_data)
            for datum in metric_data:  # moto drops StorageResolution; the period check needs it
                if str(datum.get("StorageResolution", "60")) == "1":
                    dims = tuple(sorted((d["Name"], d["Value"]) for d in datum.get("Dimensions", [])))
                    _HIGH_RESOLUTION.add((namespace, datum["MetricName"], dims))

    def alarm_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_alarm_init(self, *args, **kwargs)
        # AWS: a new alarm has not been evaluated yet.
        self.state_value = "INSUFFICIENT_DATA"
        self.state_reason = "Unchecked: Initial alarm creation"

    _install_stack_failure()
    _install_xray_filters()
    _install_module_list_cache()
    _install_epoch_timestamps()
    models.CloudWatchBackend.put_metric_data = put_metric_data  # type: ignore[method-assign]
    models.CloudWatchBackend.get_metric_data = _get_metric_data  # type: ignore[method-assign]
    models.CloudWatchBackend.get_filtered_metrics = list_series  # type: ignore[method-assign,assignment]
    models.Alarm.__init__ = alarm_init  # type: ignore[method-assign]
    _INSTALLED = True


def _install_module_list_cache() -> None:
    """moto's server lists its package folder (a listdir and ~150 isdir calls) on every request to
    find the backend a Host names; the folder does not change while it runs. Profiled idle, that
    was 5-10 % of moto's CPU (bench/IDLE.md)."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]


def _install_epoch_timestamps() -> None:
    """A JSON-protocol timestamp (epoch seconds, as botocore sends every PutMetricData datum's) parsed
    straight to moto's naive UTC datetime. moto's parser goes through dateutil's tzlocal for each one:
    a seventh of moto's CPU on the front door's metrics, profiled idle (bench/IDLE.md). Same result."""
    from moto.core import parse

    original = parse.default_timestamp_parser

    def timestamp(value: Any) -> datetime:
        parsed = epoch_timestamp(value)
        return original(value) if parsed is None else parsed

    parse.default_timestamp_parser = timestamp


def epoch_timestamp(value: Any) -> datetime | None:
    """Epoch seconds as moto keeps timestamps (naive UTC); None for anything else (ISO strings etc.)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    return None


def _install_stack_failure() -> None:
    from moto.cloudformation import models as cfn

    original_update = cfn.Stack.update

    def update(self: Any, template: str, *args: Any, **kwargs: Any) -> None:
        if STACK_ROLLBACK_FAILED_MARKER not in template:
            original_update(self, template, *args, **kwargs)
            return
        # The event sequence of a real failed update whose rollback also failed (newest last here;
        # describe_stack_events returns newest first). The template is left as it was.
        self._add_stack_event("UPDATE_IN_PROGRESS", resource_status_reason="User Initiated")
        self._add_stack_event("UPDATE_FAILED", resource_status_reason=(
            "Resource handler returned message: Rate exceeded (Service: Lambda, Status Code: 429)"))
        self._add_stack_event("UPDATE_ROLLBACK_IN_PROGRESS", resource_status_reason=(
            "The following resource(s) failed to update: [ReleaseParameter]."))
        self._add_stack_event("UPDATE_ROLLBACK_FAILED", resource_status_reason=(
            "The following resource(s) failed to update: [ReleaseParameter]."))
        self.status = "UPDATE_ROLLBACK_FAILED"

    cfn.Stack.update = update  # type: ignore[method-assign]


def start_background(state_dir: Path) -> None:
    """Start the alarm-evaluation / SQS-metrics / pruning thread (a daemon: it ends with the process)."""
    global _BACKGROUND
    if _BACKGROUND is not None and _BACKGROUND.is_alive():
        return
    _BACKGROUND = threading.Thread(target=_loop, args=(threading.Event(),), name="moto-ext", daemon=True)
    _BACKGROUND.start()
