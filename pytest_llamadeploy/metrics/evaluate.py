"""Rule evaluation: a policy's MetricRules, per version and function, from one GetMetricData call.

Every rule is ``value <op> threshold`` over its window. The window is clamped to
the start given (the moment traffic moved): datapoints before it belong to
another traffic split.

Honest no-data handling: when a value rests on fewer than ``min_samples``
samples (or has no datapoint at all), the rule's ``no_data`` decides:
``pass`` and ``fail`` are immediate; ``wait`` keeps waiting ("no_data") until
``no_data_grace`` has passed since the start of the window, or the evaluation is
final (end of a bake), and is then ``inconclusive`` - which fails the stage.
``wait`` never turns into a pass.

Time resolution: when every rule's window starts at the same moment (always
during a bake shorter than the shortest window, and at the end of a bake for
the key metrics), each sum is asked as ONE datapoint covering the span. When
windows differ, sums are asked per bucket (at least ``resolution``: 1 s when
the watch polls faster than a minute, as in the sandbox, 60 s otherwise, the
period of AWS's standard Lambda metrics; at most ~12 buckets per series) and
added up on the client per window, so one call still serves every rule. A percentile cannot be added up: it is asked with
one period covering the whole span of the call, i.e. over the earliest window of
the poll (with the runbook's policies every percentile rule has the same 5 m
window, and during a bake all windows start at the shift anyway).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..units import format_duration
from .query import Points, ProviderError, SeriesSpec, count_since, fetch, sum_since, valid_period
from .signals import Signal, format_value, get_signal, series_dims, statistic_for

Verdict = Literal["pass", "fail", "no_data", "inconclusive"]
ALL = "all"
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "==": lambda v, t: v == t,
}


@dataclass
class RuleResult:
    rule: str
    signal: str
    #: Version label ("old", "new") or "all" for a service-wide value.
    version: str
    #: Lambda version number behind the label ("" for service-wide values).
    version_number: str
    function: str
    value: float | None
    threshold: float
    op: str
    window: float
    samples: float
    verdict: Verdict
    message: str
    statistic: str = "Sum"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """One value to compute: a rule for one version label and function (or the whole service)."""

    rule_name: str
    rule: Any  # policy.MetricRule
    signal: Signal
    label: str
    function: str | None
    #: Lambda versions whose series are added up (one for a per-version value).
    versions: tuple[str, ...]
    start: float
    statistic: str


@dataclass
class PollPlan:
    targets: list[Target]
    specs: list[SeriesSpec]
    span_start: float
    end: float
    resolution: int
    percentile_period: int
    #: Period of the summed series: the whole span (one datapoint per series) when every window
    #: starts at the same moment, else ``resolution`` (summed on the client per window).
    sum_period: int = 1
    extra: list[SeriesSpec] = field(default_factory=list)


def resolution_for(policy: Any) -> int:
    """Seconds per summed bucket: 1 s for a fast watch (sandbox), 60 s otherwise (AWS Lambda's period)."""
    return 1 if policy.watch.interval < 60 else 60


def plan_targets(
    rules: Mapping[str, Any],
    functions: list[str],
    alias: str,
    versions: Mapping[str, Mapping[str, str]],
    ws_function: str,
    start: float,
    end: float,
) -> list[Target]:
    """Targets of every rule x version label x function; windows clamped to ``start``."""
    targets: list[Target] = []
    for name, rule in rules.items():
        signal = get_signal(rule.signal, f"rule {name}")
        statistic = statistic_for(signal, rule.statistic)
        window_start = max(start, end - rule.window)
        if signal.scope == "global":
            targets.append(Target(name, rule, signal, ALL, None, (), window_start, statistic))
            continue
        fns = [ws_function] if signal.scope == "ws" else list(functions)
        for fn in fns:
            if rule.per_version:
                for label, by_fn in versions.items():
                    if fn in by_fn:
                        targets.append(Target(name, rule, signal, label, fn, (str(by_fn[fn]),), window_start, statistic))
            else:
                every = tuple(sorted({str(by_fn[fn]) for by_fn in versions.values() if fn in by_fn}))
                targets.append(Target(name, rule, signal, ALL, fn, every, window_start, statistic))
    return targets


def _series(target: Target, alias: str, metric: str, stat: str, period: int) -> list[SeriesSpec]:
    s = target.signal
    if s.scope == "global":
        return [SeriesSpec(s.namespace, metric, s.global_dims, stat, period)]
    if s.kind == "percentile" and len(target.versions) != 1:
        # A percentile of several versions cannot be added up: ask the function-wide series.
        return [SeriesSpec(s.namespace, metric, series_dims(s, target.function, alias, None), stat, period)]
    return [SeriesSpec(s.namespace, metric, series_dims(s, target.function, alias, v), stat, period) for v in target.versions]


def plan_poll(targets: list[Target], alias: str, end: float, resolution: int,
              extra: list[SeriesSpec] | None = None) -> PollPlan:
    """Every series the targets need (sums per ``resolution``, percentiles over the whole span)."""
    span_start = min((t.start for t in targets), default=end - resolution)
    percentile_period = valid_period(max(end - span_start, 1.0))
    # One datapoint per series instead of one per second: the response (and moto's work) is what
    # makes a poll of 50 functions slow, not the number of queries.
    if len({t.start for t in targets}) <= 1:
        sum_period = percentile_period
    else:
        # Windows differ (a bake longer than the shortest window): at most ~12 buckets per series,
        # so a window edge is placed within half a bucket (2.5 s of a 1 m window in the sandbox).
        sum_period = max(resolution, valid_period((end - span_start) / 12.0))
    specs: list[SeriesSpec] = []
    for target in targets:
        s = target.signal
        for metric in dict.fromkeys(s.numerator + s.denominator + s.samples):
            if s.kind == "percentile" and metric in s.numerator:
                specs.extend(_series(target, alias, metric, target.statistic, percentile_period))
            else:
                specs.extend(_series(target, alias, metric, "Sum", sum_period))
    specs.extend(extra or [])
    return PollPlan(targets, list(dict.fromkeys(specs)), span_start, end, resolution, percentile_period,
                    sum_period, list(extra or []))


def _total(target: Target, alias: str, data: Mapping[SeriesSpec, Points], metrics: tuple[str, ...],
           plan: PollPlan) -> tuple[float, int]:
    """Sum over the window of the named metrics, and how many datapoints carried it."""
    total = 0.0
    points = 0
    # Buckets start on whole seconds from the call's start: take the bucket nearest the window start.
    since = math.floor(target.start) - plan.sum_period / 2.0
    for metric in dict.fromkeys(metrics):
        for spec in _series(target, alias, metric, "Sum", plan.sum_period):
            series = data.get(spec, [])
            total += sum_since(series, since)
            points += count_since(series, since)
    return total, points


def compute(target: Target, alias: str, data: Mapping[SeriesSpec, Points], plan: PollPlan) -> tuple[float | None, float]:
    """(value, samples) of one target from fetched data; value None when there is nothing to compute on."""
    s = target.signal
    samples, _ = _total(target, alias, data, s.samples, plan) if s.samples else (0.0, 0)
    if s.kind == "ratio":
        num, _ = _total(target, alias, data, s.numerator, plan)
        den, _ = _total(target, alias, data, s.denominator, plan)
        return (num / den if den > 0 else None), samples
    if s.kind == "sum":
        num, points = _total(target, alias, data, s.numerator, plan)
        return num, (samples if s.samples else float(points))
    values: list[float] = []
    for spec in _series(target, alias, s.numerator[0], target.statistic, plan.percentile_period):
        values.extend(v for _, v in data.get(spec, []))
    # One bucket spans the window; several only if the span crossed a period boundary: be conservative.
    return (max(values) if values else None), samples


def judge(rule: Any, value: float | None, samples: float, *, waited: float, grace: float, final: bool) -> Verdict:
    """The verdict of one value under the rule's op, min_samples and no_data policy."""
    if value is None or samples < rule.min_samples:
        if rule.no_data == "pass":
            return "pass"
        if rule.no_data == "fail":
            return "fail"
        return "inconclusive" if final or waited >= grace else "no_data"
    return "pass" if _OPS[rule.op](value, rule.threshold) else "fail"


def describe(result_kind: str, target: Target, value: float | None, samples: float, verdict: Verdict,
             window: float, source: str = "cloudwatch") -> str:
    """One line a human reads at 3 a.m.: rule, value, where, window, the bound, source and samples."""
    s = target.signal
    rule = target.rule
    where = "the whole service"
    if target.function is not None:
        versions = ",".join(target.versions) or "?"
        label = "" if target.label == ALL else f" ({target.label})"
        where = f"{target.function} version{'s' if len(target.versions) > 1 else ''} {versions}{label}"
    stat = f" {target.statistic}" if s.kind == "percentile" else ""
    bound = format_value(s, rule.threshold, bound=True)
    sample_text = f"{samples:g} {s.samples_noun}" if s.samples else f"{samples:g} datapoints"
    head = f"{result_kind} {target.rule_name}:{stat} {format_value(s, value)} on {where} over the last {format_duration(round(window))}"
    if value is None or samples < rule.min_samples:
        need = f"needs >= {rule.min_samples} {s.samples_noun if s.samples else 'datapoints'}"
        tail = {
            "pass": "passes by policy (no_data: pass)",
            "fail": "fails by policy (no_data: fail)",
            "no_data": "waiting for data",
            "inconclusive": "inconclusive: not enough data to decide, which is not a pass",
        }[verdict]
        return f"{head}: {sample_text}, {need}; {tail} (source: {source})"
    verb = "within" if verdict == "pass" else "breaks"
    return f"{head}, must be {rule.op} {bound} ({verb}; source: {source}; {sample_text})"


def evaluate_plan(plan: PollPlan, alias: str, data: Mapping[SeriesSpec, Points], *, now: float, grace: float,
                  final: bool, result_kind: str = "rule") -> list[RuleResult]:
    results: list[RuleResult] = []
    for target in plan.targets:
        value, samples = compute(target, alias, data, plan)
        window = max(0.0, now - target.start)
        verdict = judge(target.rule, value, samples, waited=window, grace=grace, final=final)
        results.append(RuleResult(
            rule=target.rule_name, signal=target.signal.name, version=target.label,
            version_number=",".join(target.versions), function=target.function or "",
            value=value, threshold=target.rule.threshold, op=target.rule.op, window=window, samples=samples,
            verdict=verdict, message=describe(result_kind, target, value, samples, verdict, window),
            statistic=target.statistic,
        ))
    return results


def fetch_with_retry(cloudwatch: Any, specs: list[SeriesSpec], start: float, end: float, *, attempts: int = 3,
                     backoff: float = 0.5) -> dict[SeriesSpec, Points]:
    """fetch(), retrying provider errors a few times; the last one is raised ('metrics unavailable')."""
    last: ProviderError | None = None
    for attempt in range(attempts):
        try:
            return fetch(cloudwatch, specs, start, end)
        except ProviderError as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff * (2 ** attempt))
    raise ProviderError(f"metrics unavailable: {attempts} GetMetricData attempts failed (last: {last})")


def evaluate_rules(
    cloudwatch: Any,
    policy: Any,
    rules: Mapping[str, Any],
    functions: list[str],
    alias: str,
    versions: Mapping[str, Mapping[str, str]],
    start: float,
    end: float,
    *,
    final: bool = True,
    result_kind: str = "key metric",
) -> list[RuleResult]:
    """Every rule x version x function over [start, end], from ONE GetMetricData call (chunked past 500)."""
    targets = plan_targets(rules, functions, alias, versions, policy.service.ws_function, start, end)
    plan = plan_poll(targets, alias, end, resolution_for(policy))
    data = fetch_with_retry(cloudwatch, plan.specs, plan.span_start, end)
    return evaluate_plan(plan, alias, data, now=end, grace=policy.watch.no_data_grace, final=final,
                         result_kind=result_kind)


def serving_versions(context: Any) -> dict[str, dict[str, str]]:
    """Version labels that served in a stage's bake: "new", plus "old" during a shift (both serve then).

    After a promote the old version serves nothing, so judging it would only
    produce "no data"; at ``verify`` new and old are the same versions.
    """
    new = {fn: str(v) for fn, v in context.new_versions.items()} or {
        fn: str(a.get("version")) for fn, a in context.alias_after.items() if a.get("version")}
    versions: dict[str, dict[str, str]] = {"new": new}
    old = {fn: str(v) for fn, v in context.old_versions.items()}
    if context.stage_policy.action == "shift" and old and old != new:
        versions["old"] = old
    return versions
