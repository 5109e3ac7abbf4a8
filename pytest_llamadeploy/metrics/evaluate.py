"""Rule evaluation: a policy's MetricRules, per version and function, from one GetMetricData call.

Every rule is ``value <op> threshold`` over its window, on data as CloudWatch
serves it (../shared/AWS.md):

- **Lag-aware windows.** Each signal's source (policy ``metrics:``) says how late
  its datapoints arrive at worst; a window ends at ``now - lag``, where the data
  has arrived, never at ``now`` where the newest buckets are still missing. At the
  end of a bake the caller passes ``final_end`` (the bake's end) and waits, bounded,
  until the data up to it has arrived (``arrived``).
- **Periods CloudWatch accepts.** Sums are asked per datapoint of the source
  (``resolution``: 1 s for the functions' EMF, 60 s for AWS's service metrics)
  and added on the client over exactly the window's buckets. A percentile cannot
  be added up: it is asked with one period covering the window from the minute
  its StartTime is rounded down to (CloudWatch rounds StartTime down to the whole
  minute); data of the same version from up to a minute before the window is then
  included, which is the same code serving under another split.
- **Honest no-data.** A value resting on fewer than ``min_samples`` samples (or no
  datapoint at all) is "no data"; the rule's ``no_data`` decides: ``pass`` and
  ``fail`` are immediate; ``wait`` waits until ``no_data_grace`` has passed since
  the window's first data could have arrived (its start + lag + one datapoint),
  or the evaluation is final, and is then ``inconclusive`` - which fails the stage.
  ``wait`` never turns into a pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..units import format_duration
from .providers import provider_of
from .query import Points, ProviderError, SeriesSpec, valid_period
from .signals import (
    DimTuple,
    Signal,
    format_value,
    functions_of,
    get_signal,
    namespace_of,
    series_dims,
    statistic_for,
)

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
    #: Where the window ends (epoch s): the data's arrival, not the poll's time.
    window_end: float = 0.0
    #: For a ``baseline: old`` rule: the old version's value and number (``threshold`` is then the
    #: bound derived from it).
    baseline_value: float | None = None
    baseline_version: str = ""

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
    #: Lambda versions behind the value (one for a per-version value).
    versions: tuple[str, ...]
    start: float
    end: float
    statistic: str
    namespace: str
    #: Dimension sets whose series are added up.
    dims: tuple[DimTuple, ...]
    #: Seconds per datapoint of the source.
    resolution: int
    #: When the window's first data could have arrived (start + lag + one datapoint).
    data_from: float
    #: The earliest a window may start (the moment traffic moved).
    earliest: float = 0.0
    #: Why the window ends before the evaluation asked (its last data never arrived), if it does.
    late: str = ""


@dataclass
class PollPlan:
    targets: list[Target]
    specs: list[SeriesSpec]
    span_start: float
    end: float
    extra: list[SeriesSpec] = field(default_factory=list)


def plan_targets(rules: Mapping[str, Any], policy: Any, versions: Mapping[str, Mapping[str, str]], start: float,
                 now: float, *, final_end: float | None = None) -> list[Target]:
    """Targets of every rule x version label x function.

    Windows are clamped to ``start`` (the moment traffic moved: datapoints before it belong
    to another split) and end where each source's data has arrived: ``now - lag``, or
    ``final_end`` for the final decision of a bake.
    """
    targets: list[Target] = []
    for name, rule in rules.items():
        signal = get_signal(rule.signal, f"rule {name}", policy)
        statistic = statistic_for(signal, rule.statistic)
        source = policy.metrics.source(signal.source)
        resolution = int(source.resolution)
        end = final_end if final_end is not None else now - float(source.lag)
        end = max(end, start)
        window_start = max(start, end - rule.window)
        data_from = start + float(source.lag) + resolution
        namespace = namespace_of(signal, policy)

        def add(label: str, fn: str | None, numbers: tuple[str, ...], dims: list[DimTuple],
                _rule: Any = rule, _name: str = name, _signal: Signal = signal, _stat: str = statistic,
                _ws: float = window_start, _end: float = end, _res: int = resolution, _from: float = data_from,
                _ns: str = namespace) -> None:
            targets.append(Target(_name, _rule, _signal, label, fn, numbers, _ws, _end, _stat, _ns,
                                  tuple(dict.fromkeys(dims)), _res, _from, start))

        if signal.scope == "global":
            add(ALL, None, (), series_dims(signal, policy, None, None))
            continue
        for fn in functions_of(signal, policy.service):
            present = {label: str(by_fn[fn]) for label, by_fn in versions.items() if fn in by_fn}
            if not present:
                continue
            if rule.baseline:
                # New against old over the same seconds: only while both serve (a shift).
                if {"new", rule.baseline} <= set(present) and present["new"] != present[rule.baseline]:
                    for label in ("new", rule.baseline):
                        add(label, fn, (present[label],), series_dims(signal, policy, fn, present[label]))
                continue
            if rule.per_version and signal.versioned:
                for label, version in present.items():
                    add(label, fn, (version,), series_dims(signal, policy, fn, version))
                continue
            every = tuple(sorted(set(present.values())))
            if signal.per_version_only or (signal.source == "service" and not signal.dims_template):
                # no function-wide series (the EMF, a custom signal labelled by version): add the versions' up
                dims = [d for v in every for d in series_dims(signal, policy, fn, v)]
            else:
                dims = series_dims(signal, policy, fn, None)
            add(ALL, fn, every, dims)
    return targets


def percentile_period(target: Target, span_start: float) -> int:
    """One period from the minute the call's StartTime is rounded down to, through the window's end."""
    rounded = math.floor(span_start / 60.0) * 60.0
    return max(valid_period(max(target.end - rounded, 1.0)), target.resolution)


def _spec(target: Target, metric: str, dims: DimTuple, stat: str, period: int) -> SeriesSpec:
    return SeriesSpec(target.namespace, metric, dims, stat, period, target.signal.source)


def target_specs(target: Target, span_start: float) -> dict[str, list[SeriesSpec]]:
    """role ("numerator", "denominator", "samples", "percentile") -> the series it needs."""
    s = target.signal
    roles: dict[str, list[SeriesSpec]] = {}
    for dims in target.dims:
        if s.kind == "percentile":
            roles.setdefault("percentile", []).append(
                _spec(target, s.numerator[0], dims, target.statistic, percentile_period(target, span_start)))
        else:
            for metric in s.numerator:
                roles.setdefault("numerator", []).append(_spec(target, metric, dims, "Sum", target.resolution))
        for metric in s.denominator:
            roles.setdefault("denominator", []).append(_spec(target, metric, dims, "Sum", target.resolution))
        for metric in s.samples:
            roles.setdefault("samples", []).append(_spec(target, metric, dims, s.samples_stat, target.resolution))
    return roles


def plan_poll(targets: list[Target], now: float, extra: list[SeriesSpec] | None = None) -> PollPlan:
    """Every series the targets need, for one call covering every window."""
    span_start = min((t.start for t in targets), default=now - 60.0)
    specs: list[SeriesSpec] = []
    for target in targets:
        for role_specs in target_specs(target, span_start).values():
            specs.extend(role_specs)
    specs.extend(extra or [])
    return PollPlan(targets, list(dict.fromkeys(specs)), span_start, now, list(extra or []))


def _in_window(points: Points, target: Target) -> Points:
    """Datapoints whose bucket lies in the window (a bucket counts where most of it lies)."""
    half = target.resolution / 2.0
    return [(t, v) for t, v in points if target.start - half - 1e-6 <= t < target.end - half + 1e-6]


def _sum(target: Target, data: Mapping[SeriesSpec, Points], specs: list[SeriesSpec]) -> tuple[float, int]:
    total, points = 0.0, 0
    for spec in specs:
        window = _in_window(data.get(spec, []), target)
        total += sum(v for _, v in window)
        points += len(window)
    return total, points


def compute(target: Target, data: Mapping[SeriesSpec, Points], span_start: float) -> tuple[float | None, float]:
    """(value, samples) of one target from fetched data; value None when there is nothing to compute on."""
    s = target.signal
    roles = target_specs(target, span_start)
    samples, _ = _sum(target, data, roles.get("samples", []))
    if s.kind == "ratio":
        num, _ = _sum(target, data, roles.get("numerator", []))
        den, _ = _sum(target, data, roles.get("denominator", []))
        return (num / den if den > 0 else None), samples
    if s.kind == "sum":
        num, points = _sum(target, data, roles.get("numerator", []))
        if not s.samples:
            samples = float(points)
        # No datapoint at all is no data, never a zero: a series that does not exist reads as None.
        return (num if points else None), samples
    values = [v for spec in roles.get("percentile", []) for t, v in data.get(spec, []) if t < target.end]
    if not s.samples:  # a custom percentile without a count of its own: the datapoints it rests on
        samples = float(len(values))
    # Several versions' series (or a window split over two periods): the worst one, conservatively.
    return (max(values) if values else None), samples


def arrived(target: Target, data: Mapping[SeriesSpec, Points], span_start: float) -> bool:
    """True when every series of the target has a datapoint in every bucket of its window.

    Every bucket, not only the last: AWS publishes each minute with its own delay, so a
    later minute can be visible before an earlier one. A bucket without traffic has no
    datapoint either; such a series is waited for until the bound (the source's lag).
    """
    roles = target_specs(target, span_start)
    specs = roles.get("samples") or roles.get("numerator") or roles.get("denominator") or []
    res = target.resolution
    first = math.floor((target.start + res / 2.0) / res) * res
    wanted = {first + k * res for k in range(max(0, int(round((target.end - first) / res))))}
    return bool(specs) and all(wanted <= {round(t) for t, _ in data.get(spec, [])} for spec in specs)


def settled(target: Target, data: Mapping[SeriesSpec, Points], span_start: float) -> Target:
    """The target to judge once the wait for the last data is over.

    A target whose last bucket never arrived is judged on the window (of the rule's
    length) ending where its newest data did; one with no data at all in its window
    stays as it is and is judged as no data. Every datapoint that exists is judged;
    none that is missing is read as a zero.
    """
    if arrived(target, data, span_start):
        return target
    roles = target_specs(target, span_start)
    specs = roles.get("samples") or roles.get("numerator") or roles.get("denominator") or []
    half = target.resolution / 2.0
    stamps = [t for spec in specs for t, _ in data.get(spec, []) if target.earliest - half <= t < target.end]
    if not stamps:
        return target
    end = max(stamps) + target.resolution
    if end >= target.end:
        return target
    start = max(target.earliest, end - target.rule.window)
    note = (f"its data after {_clock(end)} had not arrived when the wait for it ended; judged on the "
            f"window ending there")
    return replace(target, start=start, end=end, late=note)


def settle_all(targets: list[Target], data: Mapping[SeriesSpec, Points], span_start: float) -> list[Target]:
    """:func:`settled` for every target, keeping each ``baseline: old`` pair on the same seconds
    (both end where the earlier of the two has data)."""
    out = [settled(t, data, span_start) for t in targets]
    ends: dict[tuple[str, str | None], float] = {}
    for t in out:
        if t.rule.baseline:
            key = (t.rule_name, t.function)
            ends[key] = min(ends.get(key, t.end), t.end)
    for i, t in enumerate(out):
        if t.rule.baseline and t.end != ends[(t.rule_name, t.function)]:
            end = ends[(t.rule_name, t.function)]
            out[i] = replace(t, end=end, start=max(t.earliest, end - t.rule.window),
                             late=t.late or f"judged on the seconds both versions' data had reached ({_clock(end)})")
    return out


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch))


def judge(rule: Any, value: float | None, samples: float, *, waited: float, grace: float, final: bool,
          count: bool = False) -> Verdict:
    """The verdict of one value under the rule's op, min_samples and no_data policy.

    ``count``: the value is a count (a ``sum`` signal: 5xx answers, throttle events), which more
    samples can only raise. A count already over an upper bound is a breach however few samples
    it rests on: 500 5xx errors fail ``<= 10`` whatever ``min_samples`` asks.
    """
    if count and value is not None and _over_upper_bound(rule, value):
        return "fail"  # more samples can only raise a count
    if value is None or samples < rule.min_samples:
        if rule.no_data == "pass":
            return "pass"
        if rule.no_data == "fail":
            return "fail"
        return "inconclusive" if final or waited >= grace else "no_data"
    return "pass" if _OPS[rule.op](value, rule.threshold) else "fail"


def _over_upper_bound(rule: Any, value: float) -> bool:
    """``value`` breaks the rule's upper bound (``<``, ``<=``); a count that does is a breach (see judge)."""
    return rule.op in ("<", "<=") and not _OPS[rule.op](value, rule.threshold)


def describe(result_kind: str, target: Target, value: float | None, samples: float, verdict: Verdict,
             window: float) -> str:
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
    sample_text = f"{samples:g} {s.samples_noun if s.samples else 'datapoints'}"
    origin = f"{s.provider}: {s.source} metrics, {target.namespace}"
    head = (f"{result_kind} {target.rule_name}:{stat} {format_value(s, value)} on {where} over "
            f"{format_duration(round(window))} ending {_clock(target.end)} UTC")
    if value is None or (samples < rule.min_samples and not (s.kind == "sum" and _over_upper_bound(rule, value))):
        need = f"needs >= {rule.min_samples} {s.samples_noun if s.samples else 'datapoints'}"
        tail = {
            "pass": "passes by policy (no_data: pass)",
            "fail": "fails by policy (no_data: fail)",
            "no_data": "waiting for data",
            "inconclusive": "inconclusive: not enough data to decide, which is not a pass",
        }[verdict]
        return f"{head}: {sample_text}, {need}; {tail} (source: {origin})"
    verb = "within" if verdict == "pass" else "breaks"
    return f"{head}, must be {rule.op} {bound} ({verb}; source: {origin}; {sample_text})"


def worse_by_chance(op: str, new: float, new_n: float, old: float, old_n: float) -> float:
    """One-sided p-value that the new version's proportion is this much worse than the old one's by
    chance alone (a two-proportion z-test with the pooled proportion; "worse" is lower for ``>=``/``>``
    rules, higher for ``<=``/``<``). 0.0 when the counts leave no doubt (a pooled rate of 0 or 1)."""
    if new_n <= 0 or old_n <= 0:
        return 1.0
    pooled = (new * new_n + old * old_n) / (new_n + old_n)
    spread = math.sqrt(pooled * (1.0 - pooled) * (1.0 / new_n + 1.0 / old_n))
    if spread == 0.0:
        return 0.0 if new != old else 1.0
    z = (old - new) / spread if op in (">", ">=") else (new - old) / spread
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def baseline_bound(rule: Any, old: float) -> float:
    """The new version's bound under a ``baseline: old`` rule, given the old version's value."""
    if rule.op in ("<", "<="):
        bound = old + rule.threshold
        return max(bound, old * rule.max_ratio) if rule.max_ratio is not None else bound
    return old - rule.threshold


def _judge_against_old(plan: PollPlan, target: Target, old_target: Target, data: Mapping[SeriesSpec, Points], *,
                       now: float, grace: float, final: bool, result_kind: str) -> RuleResult:
    """One verdict for a ``baseline: old`` rule: the new version's value against the old one's bound."""
    rule, signal = target.rule, target.signal
    new_value, new_samples = compute(target, data, plan.span_start)
    old_value, old_samples = compute(old_target, data, plan.span_start)
    window = max(0.0, target.end - target.start)
    samples = min(new_samples, old_samples)
    bound = baseline_bound(rule, old_value) if old_value is not None else None
    value = new_value if bound is not None else None
    chance = ""
    if value is None or samples < rule.min_samples:
        verdict = judge(rule, None, 0.0, waited=now - target.data_from, grace=grace, final=final)
    else:
        assert bound is not None and old_value is not None
        verdict = "pass" if _OPS[rule.op](value, bound) else "fail"
        if verdict == "fail" and signal.kind == "ratio":
            p = worse_by_chance(rule.op, value, new_samples, old_value, old_samples)
            if p >= rule.alpha:
                verdict = "pass"
                chance = f"; chance explains it (p = {p:.3g} >= alpha {rule.alpha:g} on these counts)"
    stat = f" {target.statistic}" if signal.kind == "percentile" else ""
    noun = signal.samples_noun if signal.samples else "datapoints"
    head = (f"{result_kind} {target.rule_name}:{stat} {format_value(signal, new_value)} on {target.function} "
            f"version {target.versions[0]} (new) against {format_value(signal, old_value)} on version "
            f"{old_target.versions[0]} (old) over the same {format_duration(round(window))} ending "
            f"{_clock(target.end)} UTC")
    counts = f"{new_samples:g} and {old_samples:g} {noun}"
    origin = f"{signal.provider}: {signal.source} metrics, {target.namespace}"
    if bound is None or samples < rule.min_samples:
        tail = {"pass": "passes by policy (no_data: pass)", "fail": "fails by policy (no_data: fail)",
                "no_data": "waiting for data",
                "inconclusive": "inconclusive: not enough data to decide, which is not a pass"}[verdict]
        message = f"{head}: {counts}, needs >= {rule.min_samples} on each; {tail} (source: {origin})"
    else:
        worse = "over" if rule.op in ("<", "<=") else "under"
        allowed = f"old {'+' if rule.op in ('<', '<=') else '-'} {format_value(signal, rule.threshold, bound=True)}"
        if rule.max_ratio is not None:
            allowed += f" or x{rule.max_ratio:g}"
        message = (f"{head}, must be {rule.op} {format_value(signal, bound)} ({allowed}; "
                   f"{'within' if verdict == 'pass' else 'breaks: ' + worse + ' the old version by more than allowed'}"
                   f"{chance}; source: {origin}; {counts})")
    return RuleResult(
        rule=target.rule_name, signal=signal.name, version="new", version_number=target.versions[0],
        function=target.function or "", value=value, threshold=bound if bound is not None else rule.threshold,
        op=rule.op, window=window, samples=samples, verdict=verdict,
        message=message + (f" ({target.late})" if target.late else ""), statistic=target.statistic,
        window_end=target.end, baseline_value=old_value, baseline_version=old_target.versions[0])


def evaluate_plan(plan: PollPlan, data: Mapping[SeriesSpec, Points], *, now: float, grace: float,
                  final: bool, result_kind: str = "rule") -> list[RuleResult]:
    results: list[RuleResult] = []
    baselines = {(t.rule_name, t.function): t for t in plan.targets if t.rule.baseline and t.label == t.rule.baseline}
    for target in plan.targets:
        if target.rule.baseline:
            if target.label == "new" and (target.rule_name, target.function) in baselines:
                results.append(_judge_against_old(plan, target, baselines[(target.rule_name, target.function)],
                                                   data, now=now, grace=grace, final=final, result_kind=result_kind))
            continue
        value, samples = compute(target, data, plan.span_start)
        window = max(0.0, target.end - target.start)
        verdict = judge(target.rule, value, samples, waited=now - target.data_from, grace=grace, final=final,
                        count=target.signal.kind == "sum")
        message = describe(result_kind, target, value, samples, verdict, window)
        results.append(RuleResult(
            rule=target.rule_name, signal=target.signal.name, version=target.label,
            version_number=",".join(target.versions), function=target.function or "",
            value=value, threshold=target.rule.threshold, op=target.rule.op, window=window, samples=samples,
            verdict=verdict, message=message + (f" ({target.late})" if target.late else ""),
            statistic=target.statistic, window_end=target.end,
        ))
    return results


def fetch_with_retry(cloudwatch: Any, specs: list[SeriesSpec], start: float, end: float, *, attempts: int = 3,
                     backoff: float = 0.5, policy: Any = None) -> dict[SeriesSpec, Points]:
    """fetch(), retrying provider errors a few times; the last one is raised ('metrics unavailable').

    ``cloudwatch``: a CloudWatch client or a metric provider (providers.py); with ``policy``, a
    client also serves the policy's declared sources (a Prometheus source's custom signals).
    """
    provider = provider_of(cloudwatch, policy)
    last: ProviderError | None = None
    for attempt in range(attempts):
        try:
            return provider.fetch(specs, start, end)
        except ProviderError as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff * (2 ** attempt))
    raise ProviderError(f"metrics unavailable: {attempts} GetMetricData attempts failed (last: {last})")


def max_lag(policy: Any, rules: Mapping[str, Any]) -> float:
    """The longest lag among the sources of ``rules``: how long the final decision may wait."""
    sources = {get_signal(r.signal, policy=policy).source for r in rules.values()}
    return max((float(policy.metrics.source(s).lag) for s in sources), default=0.0)


def evaluate_rules(
    cloudwatch: Any,
    policy: Any,
    rules: Mapping[str, Any],
    versions: Mapping[str, Mapping[str, str]],
    start: float,
    end: float,
    *,
    final: bool = True,
    result_kind: str = "key metric",
    now: float | None = None,
) -> list[RuleResult]:
    """Every rule x version x function over [start, end], from ONE GetMetricData call (chunked past 500).

    ``end`` is where the windows end (a bake's end); the data up to it should have
    arrived (callers run after the watch's final wait, or accept fewer datapoints).
    """
    now = time.time() if now is None else now
    targets = plan_targets(rules, policy, versions, start, now, final_end=end)
    plan = plan_poll(targets, now)
    data = fetch_with_retry(cloudwatch, plan.specs, plan.span_start, now, policy=policy)
    return evaluate_plan(plan, data, now=now, grace=policy.watch.no_data_grace, final=final, result_kind=result_kind)


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
