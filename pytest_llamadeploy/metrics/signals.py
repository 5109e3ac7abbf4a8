"""The signal catalog: what a policy's ``signal:`` means in CloudWatch series, and where they come from.

A signal is computed on the client from a few series, so that every rate is
``sum(numerator) / sum(denominator)`` over exactly the rule's window (CloudWatch
metric math is not evaluated by moto, and summing raw counts keeps a rate honest
when the window holds few requests). Percentiles are asked of CloudWatch
(``Stat: p95``): they cannot be rebuilt from per-interval values.

Sources (the policy's ``metrics:`` section gives each its resolution and lag):
- ``service``: the functions' own Embedded Metric Format metrics
  (docs/service-contract.md), per ``FunctionName, Version``, high resolution,
  seconds late. The runbook's error rate (user-visible 5xx) and latency per
  version, which AWS's own metrics cannot give at 10 % of traffic within a bake.
- ``aws``: AWS's service metrics, 60-s datapoints published minutes late:
  Lambda per ``ExecutedVersion`` (Errors count unhandled failures only; Throttles
  exist per alias, not per version), API Gateway per API and stage, ElastiCache
  per cache node, DynamoDB per table. The second line and the service-wide view.

Scopes: ``function`` (every function), ``api`` (the REST API's function), ``ws``
(the WebSocket API's function), ``global`` (one value for the service).

A policy adds its own signals under ``metrics.signals`` (``custom.<name>``), from the built-in
sources or from a source of its own (``metrics.sources``: CloudWatch, Prometheus, a plugin's
provider): :func:`catalog` is the built-in signals plus the policy's, and every lookup that knows
the policy goes through it, so a rule naming a signal nobody declared is refused by ``policy check``.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .. import metricnames as mn

Scope = Literal["function", "api", "ws", "global"]
Kind = Literal["ratio", "sum", "percentile"]
Unit = Literal["rate", "ms", "count"]
#: ``service``, ``aws`` or the name of a source under the policy's ``metrics.sources``.
Source = str
#: A dimension set as a hashable tuple of (name, value).
DimTuple = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Signal:
    name: str
    kind: Kind
    scope: Scope
    unit: Unit
    source: Source
    #: ratio: numerator / denominator; sum: numerator; percentile: numerator[0] with the rule's statistic.
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    #: Metric names whose statistic ``samples_stat`` counts the samples a value rests on.
    samples: tuple[str, ...] = ()
    samples_stat: str = "Sum"
    #: What the samples are called in a message ("invocations", "connects").
    samples_noun: str = "samples"
    default_statistic: str = "Sum"
    #: Per version (ExecutedVersion / Version dimension) or only per alias or service.
    versioned: bool = True
    #: For an ``aws`` signal: the namespace (the service namespace comes from the policy).
    namespace: str = ""
    #: For a global signal: its dimension sets from the policy's resources (summed).
    global_dims: Callable[[Any], list[DimTuple]] | None = None
    description: str = ""
    #: The provider behind the source (``cloudwatch``, ``prometheus``, a plugin's), for messages.
    provider: str = "cloudwatch"
    #: A custom signal's dimensions, values naming ``$function``, ``$version``, ``$alias``.
    dims_template: DimTuple = ()
    #: Only per-version series exist (the EMF, a custom signal labelled by version): a function's
    #: value over every version is the sum of its versions' series.
    per_version_only: bool = False


def _dims(items: list[dict[str, str]]) -> DimTuple:
    return tuple((d["Name"], d["Value"]) for d in items)


def _apigw_rest(resources: Any) -> list[DimTuple]:
    return [_dims(mn.dims(("ApiName", resources.rest_api), ("Stage", resources.rest_stage)))]


def _apigw_ws_connect(resources: Any) -> list[DimTuple]:
    return [_dims(mn.dims(("ApiId", resources.ws_api_id), ("Stage", resources.ws_stage),
                          ("Route", mn.WS_CONNECT_ROUTE)))]


def _cache_nodes(resources: Any) -> list[DimTuple]:
    return [_dims(mn.dims(("CacheClusterId", cluster))) for cluster in resources.cache_clusters()]


def _tables(resources: Any) -> list[DimTuple]:
    return [_dims(mn.dims(("TableName", table))) for table in resources.dynamodb_tables]


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        # -- the functions' own signal (EMF), per version, seconds late
        Signal("service.error_rate", "ratio", "api", "rate", "service", (mn.SVC_5XX,), (mn.SVC_REQUESTS,),
               (mn.SVC_REQUESTS,), samples_noun="requests",
               description="user-visible 5xx answers / requests of a version"),
        Signal("service.latency", "percentile", "api", "ms", "service", (mn.SVC_LATENCY,), (),
               (mn.SVC_REQUESTS,), samples_noun="requests", default_statistic="p95",
               description="request latency of a version, as the function measured it"),
        Signal("service.ws_connect_error_rate", "ratio", "ws", "rate", "service", (mn.SVC_WS_CONNECT_ERRORS,),
               (mn.SVC_WS_CONNECTS,), (mn.SVC_WS_CONNECTS,), samples_noun="connects",
               description="refused or failed WebSocket connects / connects of a version"),
        Signal("service.db_time", "percentile", "api", "ms", "service", (mn.SVC_DB_TIME,), (),
               (mn.SVC_DB_TIME,), samples_stat="SampleCount", samples_noun="queries", default_statistic="p95",
               description="database query time of a version, in the database"),
        Signal("service.cache_hit_rate", "ratio", "api", "rate", "service", (mn.SVC_CACHE_HITS,),
               (mn.SVC_CACHE_HITS, mn.SVC_CACHE_MISSES), (mn.SVC_CACHE_HITS, mn.SVC_CACHE_MISSES),
               samples_noun="lookups", description="cache hits / lookups of a version"),
        Signal("service.event_delivery_ratio", "ratio", "ws", "rate", "service", (mn.SVC_EVENTS_DELIVERED,),
               (mn.SVC_EVENTS_TO_DELIVER,), (mn.SVC_EVENTS_TO_DELIVER,), samples_noun="events",
               description="events written to subscribers / events due to them, on a version"),
        Signal("service.event_latency", "percentile", "ws", "ms", "service", (mn.SVC_EVENT_LATENCY,), (),
               (mn.SVC_EVENT_LATENCY,), samples_stat="SampleCount", samples_noun="events",
               default_statistic="p95", description="event delivery latency on a version"),
        # -- AWS's service metrics: 60-s datapoints, minutes late
        Signal("lambda.error_rate", "ratio", "function", "rate", "aws", (mn.LAMBDA_ERRORS,),
               (mn.LAMBDA_INVOCATIONS,), (mn.LAMBDA_INVOCATIONS,), samples_noun="invocations",
               namespace=mn.LAMBDA, description="Lambda Errors (unhandled failures) / Invocations"),
        # Throttled requests are not in Invocations (they join the denominator) and carry no
        # ExecutedVersion: the rate is the alias's.
        Signal("lambda.throttle_rate", "ratio", "function", "rate", "aws", (mn.LAMBDA_THROTTLES,),
               (mn.LAMBDA_INVOCATIONS, mn.LAMBDA_THROTTLES), (mn.LAMBDA_INVOCATIONS, mn.LAMBDA_THROTTLES),
               samples_noun="requests", versioned=False, namespace=mn.LAMBDA,
               description="Lambda Throttles / (Invocations + Throttles) through the alias"),
        Signal("lambda.duration", "percentile", "function", "ms", "aws", (mn.LAMBDA_DURATION,), (),
               (mn.LAMBDA_INVOCATIONS,), samples_noun="invocations", default_statistic="p95",
               namespace=mn.LAMBDA, description="Lambda Duration"),
        Signal("apigw.5xx", "sum", "global", "count", "aws", (mn.APIGW_5XX,), (), (mn.APIGW_COUNT,),
               samples_noun="requests", namespace=mn.APIGATEWAY, global_dims=_apigw_rest,
               description="API Gateway 5XXError on the REST API's stage"),
        Signal("apigw.ws_connect_error_rate", "ratio", "global", "rate", "aws", (mn.WS_INTEGRATION_ERROR,),
               (mn.WS_CONNECT_COUNT,), (mn.WS_CONNECT_COUNT,), samples_noun="connects",
               namespace=mn.APIGATEWAY, global_dims=_apigw_ws_connect,
               description="WebSocket $connect IntegrationError / ConnectCount on the API's stage"),
        Signal("cache.hit_rate", "ratio", "global", "rate", "aws", (mn.CACHE_HITS,),
               (mn.CACHE_HITS, mn.CACHE_MISSES), (mn.CACHE_HITS, mn.CACHE_MISSES), samples_noun="lookups",
               namespace=mn.ELASTICACHE, global_dims=_cache_nodes,
               description="ElastiCache CacheHits / (CacheHits + CacheMisses) over the group's nodes"),
        Signal("dynamodb.throttles", "sum", "global", "count", "aws", (mn.DDB_READ_THROTTLES, mn.DDB_WRITE_THROTTLES),
               (), (), namespace=mn.DYNAMODB, global_dims=_tables,
               description="DynamoDB Read/WriteThrottleEvents (published only when one happens)"),
    )
}


class UnknownSignal(ValueError):
    pass


def custom_signal(name: str, decl: Any, metrics: Any) -> Signal:
    """The :class:`Signal` of a policy's ``metrics.signals`` entry (``policy.CustomSignal``)."""
    provider = metrics.provider_of(decl.source)
    prometheus = provider == "prometheus"
    numerator = (decl.query if prometheus else decl.metric,)
    denominator = tuple([decl.denominator_query] if decl.denominator_query else decl.denominator)
    dims: DimTuple = tuple(decl.dimensions.items())
    if not dims and decl.scope != "global":
        dims = (("function", "$function"), ("version", "$version")) if prometheus else (
            ("FunctionName", "$function"), ("Version", "$version"))
    namespace = decl.namespace or (metrics.service.namespace if decl.source == "service" else "")
    if prometheus:
        namespace = namespace or "PromQL"
    per_version_only = any("version" in string.Template(v).get_identifiers() for _, v in dims)
    return Signal(
        name, decl.kind, decl.scope, decl.unit, decl.source, numerator, denominator,
        samples=denominator if decl.kind == "ratio" else (), samples_noun=decl.samples_noun,
        default_statistic=decl.statistic if decl.kind == "percentile" else "Sum",
        versioned=per_version_only, namespace=namespace,
        global_dims=_fixed_dims(dims) if decl.scope == "global" else None,
        description=decl.description, provider=provider, dims_template=dims, per_version_only=per_version_only)


def _fixed_dims(dims: DimTuple) -> Callable[[Any], list[DimTuple]]:
    """A global custom signal's one dimension set (declared in the policy, not from ``resources``)."""
    def of(resources: Any) -> list[DimTuple]:
        return [_render(dims, None, None, "")]
    return of


def catalog(policy: Any = None) -> dict[str, Signal]:
    """The built-in signals, plus the custom ones ``policy`` declares under ``metrics.signals``."""
    declared = getattr(getattr(policy, "metrics", None), "signals", None) or {}
    if not declared:
        return SIGNALS
    return {**SIGNALS, **{name: custom_signal(name, decl, policy.metrics) for name, decl in declared.items()}}


def get_signal(name: str, where: str = "", policy: Any = None) -> Signal:
    """The catalog entry for ``name``; the error names the policy key, the known signals and the fix."""
    known = catalog(policy)
    try:
        return known[name]
    except KeyError:
        at = f"{where}: " if where else ""
        raise UnknownSignal(
            f"{at}signal {name!r} is not known: declare it under metrics.signals (custom.<name> with its source "
            f"and metric or query), or use one of {', '.join(sorted(known))}"
        ) from None


def _render(template: DimTuple, function: str | None, version: str | None, alias: str) -> DimTuple:
    values = {"function": function or "", "version": version or "", "alias": alias}
    return tuple((n, string.Template(v).safe_substitute(values)) for n, v in template)


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


def functions_of(signal: Signal, service: Any) -> list[str]:
    """The functions a signal has a value for (service: the policy's ``service`` section)."""
    if signal.scope == "global":
        return []
    if signal.scope == "api":
        return [service.api_function]
    if signal.scope == "ws":
        return [service.ws_function]
    return list(service.functions)


def namespace_of(signal: Signal, policy: Any) -> str:
    return policy.metrics.service.namespace if signal.source == "service" and not signal.namespace \
        else signal.namespace


def series_dims(signal: Signal, policy: Any, function: str | None, version: str | None) -> list[DimTuple]:
    """Full dimension sets of the series a value sums (moto matches subsets loosely, see MOTO.md).

    ``version`` None asks for the function's value over every version: the alias's
    series for Lambda; for the service's EMF, which has no function-wide series,
    the caller sums the versions itself.
    """
    if signal.scope == "global":
        assert signal.global_dims is not None
        return signal.global_dims(policy.resources)
    assert function is not None
    alias = policy.service.alias
    if signal.dims_template:
        assert version is not None or not signal.per_version_only, "per-version series only: sum the versions"
        return [_render(signal.dims_template, function, version, alias)]
    if signal.source == "service":
        assert version is not None, "the service's EMF has per-version series only"
        return [_dims(mn.service_dims(function, version))]
    if version is None or not signal.versioned:
        return [_dims(mn.lambda_alias_dims(function, alias))]
    return [_dims(mn.lambda_version_dims(function, alias, version))]
