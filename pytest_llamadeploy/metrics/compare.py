"""New versus old: error rate and p95 side by side, and a rank test on per-interval samples.

Absolute thresholds miss a release that doubled its latency while staying under
500 ms; this compares the two versions serving at the same time, as Kayenta does,
on the functions' own per-version signal (EMF, docs/service-contract.md: AWS's
Lambda metrics have 2-4 one-minute points in a 5-minute window, too few to
compare anything):

- the API function: its requests, 5xx answers and latency; the WebSocket
  function: its connects, failed connects and event delivery latency;
- error rate: ``new - old <= compare.max_error_rate_diff``;
- p95 over the window: ``new / old <= compare.max_p95_ratio``, or the new one slower by no
  more than ``compare.min_p95_delta`` ms (a ratio of two small numbers is mostly noise);
- Mann-Whitney U (one-sided: is the new version slower?) on per-interval p95
  latencies (one sample per ``compare.interval`` per version), failing when
  ``p < compare.alpha`` and the new median exceeds the old by more than
  ``compare.tolerance`` and by more than ``compare.min_p95_delta`` ms (significant and
  material). It needs ``compare.min_samples`` intervals per version;
  fewer is "inconclusive", which is not a pass (lengthen the bake).

Everything comes from one GetMetricData call; the window ends where the data has
arrived (the service source's lag).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .. import metricnames as mn
from .evaluate import fetch_with_retry
from .query import SeriesSpec, valid_period

Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass
class Comparison:
    function: str
    old_version: str
    new_version: str
    window: float
    old_invocations: float
    new_invocations: float
    old_error_rate: float | None
    new_error_rate: float | None
    error_rate_diff: float | None
    old_p95: float | None
    new_p95: float | None
    p95_ratio: float | None
    old_intervals: list[float]
    new_intervals: list[float]
    mannwhitney_u: float | None
    mannwhitney_p: float | None
    error_verdict: Verdict
    p95_verdict: Verdict
    rank_verdict: Verdict
    limits: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def side_by_side(self) -> str:
        def pct(v: float | None) -> str:
            return "no data" if v is None else f"{v * 100:.2f}%"

        def ms(v: float | None) -> str:
            return "no data" if v is None else f"{v:.1f} ms"

        return (f"{self.function} over {self.window:.0f}s: "
                f"old v{self.old_version}: {pct(self.old_error_rate)} errors, p95 {ms(self.old_p95)}, "
                f"{self.old_invocations:g} invocations, {len(self.old_intervals)} intervals | "
                f"new v{self.new_version}: {pct(self.new_error_rate)} errors, p95 {ms(self.new_p95)}, "
                f"{self.new_invocations:g} invocations, {len(self.new_intervals)} intervals")

    def error_message(self) -> str:
        diff = "n/a" if self.error_rate_diff is None else f"{self.error_rate_diff * 100:+.2f} points"
        return (f"compare error rate ({self.error_verdict}): new - old = {diff}, must be <= "
                f"{self.limits['max_error_rate_diff'] * 100:g} points; {self.side_by_side}")

    def p95_message(self) -> str:
        ratio = "n/a" if self.p95_ratio is None else f"{self.p95_ratio:.2f}x"
        return (f"compare p95 ({self.p95_verdict}): new / old = {ratio}, must be <= "
                f"{self.limits['max_p95_ratio']:g}x (or no more than {self.limits['min_p95_delta']:g} ms slower); "
                f"{self.side_by_side}")

    def rank_message(self) -> str:
        need = int(self.limits["min_samples"])
        if self.rank_verdict == "inconclusive":
            return (f"compare Mann-Whitney ({self.rank_verdict}): needs >= {need} per-interval samples per version, "
                    f"has old {len(self.old_intervals)} / new {len(self.new_intervals)}: inconclusive is not a pass "
                    f"(lengthen the bake); {self.side_by_side}")
        shift = _median(self.new_intervals) / _median(self.old_intervals) if _median(self.old_intervals) > 0 else None
        shown = f"{shift:.2f}x" if shift is not None else "n/a"
        return (f"compare Mann-Whitney U ({self.rank_verdict}): new slower than old? U = {self.mannwhitney_u:g}, "
                f"p = {self.mannwhitney_p:.4g} (fails below alpha {self.limits['alpha']:g}), median shift {shown} "
                f"(fails above {1 + self.limits.get('tolerance', 0.0):g}x and "
                f"{self.limits.get('min_p95_delta', 0.0):g} ms); {self.side_by_side}")


#: Per function role: (samples metric, failures metric, latency metric) of the service contract.
_ROLES = {
    "api": (mn.SVC_REQUESTS, mn.SVC_5XX, mn.SVC_LATENCY),
    "ws": (mn.SVC_WS_CONNECTS, mn.SVC_WS_CONNECT_ERRORS, mn.SVC_EVENT_LATENCY),
}


def _specs(namespace: str, role: str, fn: str, version: str, resolution: int, span: int,
           interval: int) -> dict[str, SeriesSpec]:
    dims = tuple((d["Name"], d["Value"]) for d in mn.service_dims(fn, version))
    samples, failures, latency = _ROLES[role]
    return {
        "invocations": SeriesSpec(namespace, samples, dims, "Sum", resolution),
        "errors": SeriesSpec(namespace, failures, dims, "Sum", resolution),
        "p95": SeriesSpec(namespace, latency, dims, "p95", span),
        "intervals": SeriesSpec(namespace, latency, dims, "p95", interval),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def judge(old_inv: float, new_inv: float, old_err: float | None, new_err: float | None,
          old_p95: float | None, new_p95: float | None, old_iv: list[float], new_iv: list[float],
          settings: Any) -> tuple[Verdict, Verdict, Verdict, float | None, float | None, float | None, float | None]:
    """Pure decision: (error, p95, rank verdicts, diff, ratio, U, p)."""
    need = settings.min_samples
    enough = old_inv >= need and new_inv >= need
    diff = None if old_err is None or new_err is None else new_err - old_err
    error_v: Verdict = "inconclusive" if not enough or diff is None else (
        "pass" if diff <= settings.max_error_rate_diff else "fail")
    floor = settings.min_p95_delta
    ratio = None
    within_floor = False
    if old_p95 is not None and new_p95 is not None and old_p95 > 0:
        ratio = new_p95 / old_p95
        within_floor = new_p95 - old_p95 <= floor
    p95_v: Verdict = "inconclusive" if not enough or ratio is None else (
        "pass" if ratio <= settings.max_p95_ratio or within_floor else "fail")
    u = p = None
    rank_v: Verdict = "inconclusive"
    if len(old_iv) >= need and len(new_iv) >= need:
        from scipy.stats import mannwhitneyu

        test = mannwhitneyu(new_iv, old_iv, alternative="greater")
        u, p = float(test.statistic), float(test.pvalue)
        # Significant is not the same as material: with enough intervals a 10 % slower
        # new version is "significant". Like Kayenta's tolerance, the rank test fails only
        # when the new version is slower beyond compare.tolerance (median per interval).
        old_med, new_med = _median(old_iv), _median(new_iv)
        shift = new_med / old_med if old_med > 0 else float("inf")
        material = shift > 1.0 + settings.tolerance and new_med - old_med > floor
        rank_v = "fail" if p < settings.alpha and material else "pass"
    return error_v, p95_v, rank_v, diff, ratio, u, p


def compare_versions(
    cloudwatch: Any,
    policy: Any,
    functions: list[str],
    alias: str,
    old_versions: Mapping[str, str],
    new_versions: Mapping[str, str],
    start: float,
    end: float,
    *,
    now: float | None = None,
) -> list[Comparison]:
    """One Comparison per function serving both versions, from one GetMetricData call.

    ``end`` is clamped to where the service source's data has arrived (now - lag).
    """
    source = policy.metrics.service
    resolution = int(source.resolution)
    interval = max(resolution, valid_period(float(policy.compare.interval)))
    now = time.time() if now is None else now
    end = min(end, now - float(source.lag))
    # Skip the warm-up after the shift, but never below min_samples intervals of window.
    start = min(start + policy.compare.warmup, max(start, end - policy.compare.min_samples * interval))
    span = valid_period(max(end - math.floor(start / 60.0) * 60.0, 1.0))
    roles = {policy.service.api_function: "api", policy.service.ws_function: "ws"}
    pairs = [(fn, str(old_versions[fn]), str(new_versions[fn])) for fn in functions
             if fn in roles and fn in old_versions and fn in new_versions
             and str(old_versions[fn]) != str(new_versions[fn])]
    namespace = source.namespace
    wanted = {(fn, v): _specs(namespace, roles[fn], fn, v, resolution, span, interval)
              for fn, o, n in pairs for v in (o, n)}
    specs = [s for d in wanted.values() for s in d.values()]
    data = fetch_with_retry(cloudwatch, specs, start, max(now, start + 1.0))
    settings = policy.compare
    out: list[Comparison] = []
    since, until = start - resolution / 2.0, end - resolution / 2.0

    def total(points: list[tuple[float, float]]) -> float:
        return sum(v for t, v in points if since <= t < until)

    for fn, old, new in pairs:
        o, n = wanted[(fn, old)], wanted[(fn, new)]
        old_inv, new_inv = total(data[o["invocations"]]), total(data[n["invocations"]])
        old_err = total(data[o["errors"]]) / old_inv if old_inv else None
        new_err = total(data[n["errors"]]) / new_inv if new_inv else None
        old_p95 = max((v for t, v in data[o["p95"]] if t < end), default=None)
        new_p95 = max((v for t, v in data[n["p95"]] if t < end), default=None)
        # Whole intervals only: the last one may still be arriving.
        old_iv = [v for t, v in data[o["intervals"]] if start - interval / 2.0 <= t <= end - interval]
        new_iv = [v for t, v in data[n["intervals"]] if start - interval / 2.0 <= t <= end - interval]
        ev, pv, rv, diff, ratio, u, p = judge(old_inv, new_inv, old_err, new_err, old_p95, new_p95, old_iv, new_iv,
                                              settings)
        out.append(Comparison(
            fn, old, new, end - start, old_inv, new_inv, old_err, new_err, diff, old_p95, new_p95, ratio,
            old_iv, new_iv, u, p, ev, pv, rv,
            {"max_error_rate_diff": settings.max_error_rate_diff, "max_p95_ratio": settings.max_p95_ratio,
             "min_p95_delta": settings.min_p95_delta,
             "alpha": settings.alpha, "tolerance": settings.tolerance, "min_samples": float(settings.min_samples)}))
    return out
