"""The signal catalog: what a policy's ``signal:`` means in CloudWatch series.

A signal is computed on the client from a few series, so that every rate is
``sum(numerator) / sum(denominator)`` over exactly the rule's window (CloudWatch
metric math is not evaluated by moto, and summing raw counts is also what keeps
a rate honest when the window holds few requests). Percentiles are asked of
CloudWatch (``Stat: p95``): they cannot be rebuilt from per-interval values.

Scopes:
- ``function``: one value per function and Lambda version (``ExecutedVersion``).
- ``ws``: like ``function`` but only the WebSocket function ($connect attempts and
  errors are that function's Invocations and Errors, see ``metricnames``).
- ``global``: one value for the whole service (API Gateway, ElastiCache, DynamoDB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import metricnames as mn

Scope = Literal["function", "ws", "global"]
Kind = Literal["ratio", "sum", "percentile"]
Unit = Literal["rate", "ms", "count"]


@dataclass(frozen=True)
class Signal:
    name: str
    kind: Kind
    scope: Scope
    unit: Unit
    namespace: str
    #: ratio: numerator / denominator; sum: numerator; percentile: numerator[0] with the rule's statistic.
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    #: Metric names whose Sum counts the samples a value rests on (requests, connects).
    samples: tuple[str, ...] = ()
    #: What the samples are called in a message ("invocations", "connects").
    samples_noun: str = "samples"
    #: For a global signal: the dimension set of every series.
    global_dims: tuple[tuple[str, str], ...] = ()
    default_statistic: str = "Sum"


def _dims(dims: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((d["Name"], d["Value"]) for d in dims)


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("lambda.error_rate", "ratio", "function", "rate", mn.LAMBDA,
               (mn.LAMBDA_ERRORS,), (mn.LAMBDA_INVOCATIONS,), (mn.LAMBDA_INVOCATIONS,), "invocations"),
        # Throttled requests are not counted in Invocations, so they join the denominator.
        Signal("lambda.throttle_rate", "ratio", "function", "rate", mn.LAMBDA,
               (mn.LAMBDA_THROTTLES,), (mn.LAMBDA_INVOCATIONS, mn.LAMBDA_THROTTLES),
               (mn.LAMBDA_INVOCATIONS, mn.LAMBDA_THROTTLES), "requests"),
        Signal("lambda.duration", "percentile", "function", "ms", mn.LAMBDA,
               (mn.LAMBDA_DURATION,), (), (mn.LAMBDA_INVOCATIONS,), "invocations", default_statistic="p95"),
        Signal("apigw.5xx", "sum", "global", "count", mn.APIGATEWAY,
               (mn.APIGW_5XX,), (), (mn.APIGW_COUNT,), "requests", _dims(mn.apigw_rest_dims())),
        Signal("ws.connect_error_rate", "ratio", "ws", "rate", mn.LAMBDA,
               (mn.LAMBDA_ERRORS,), (mn.LAMBDA_INVOCATIONS,), (mn.LAMBDA_INVOCATIONS,), "connects"),
        Signal("cache.hit_rate", "ratio", "global", "rate", mn.ELASTICACHE,
               (mn.CACHE_HITS,), (mn.CACHE_HITS, mn.CACHE_MISSES), (mn.CACHE_HITS, mn.CACHE_MISSES),
               "lookups", _dims(mn.elasticache_dims())),
        Signal("dynamodb.throttles", "sum", "global", "count", mn.DYNAMODB,
               (mn.DDB_READ_THROTTLES, mn.DDB_WRITE_THROTTLES), (), (), "requests", _dims(mn.dynamodb_dims())),
    )
}


class UnknownSignal(ValueError):
    pass


def get_signal(name: str, where: str = "") -> Signal:
    """The catalog entry for ``name``; the error names the policy key and the known signals."""
    try:
        return SIGNALS[name]
    except KeyError:
        at = f"{where}: " if where else ""
        raise UnknownSignal(
            f"{at}signal {name!r} is not known; use one of {', '.join(sorted(SIGNALS))}"
        ) from None


def statistic_for(signal: Signal, statistic: str) -> str:
    """The CloudWatch statistic a rule asks for (``auto`` = the signal's natural one)."""
    if signal.kind != "percentile":
        return "Sum"
    stat = signal.default_statistic if statistic in ("auto", "") else statistic
    if not (stat.startswith("p") and _is_number(stat[1:])):
        raise ValueError(f"statistic {statistic!r} of signal {signal.name} must be a percentile such as p95, p99")
    return stat


def _is_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return 0.0 < value <= 100.0


def format_value(signal: Signal, value: float | None, bound: bool = False) -> str:
    """A value as a human reads it: 31.2%, 412 ms, 3 (a policy bound as written: 5%, 0.1%)."""
    if value is None:
        return "no data"
    if signal.unit == "rate":
        pct = value * 100.0
        if bound:
            return f"{pct:g}%"
        return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"
    if signal.unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.2g} ms"
    return f"{value:g}"


def series_dims(signal: Signal, function: str | None, alias: str, version: str | None) -> tuple[tuple[str, str], ...]:
    """Full dimension set of one series (full, because moto matches subsets loosely, see MOTO.md)."""
    if signal.scope == "global":
        return signal.global_dims
    assert function is not None
    if version is None:
        return _dims(mn.lambda_function_dims(function))
    return _dims(mn.lambda_version_dims(function, alias, version))
