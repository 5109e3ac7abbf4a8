"""Metric providers: who answers a poll's series, per source of the policy.

The watch, the monitoring suite and compare ask for series (:class:`~.query.SeriesSpec`) over a
window; each series names its source (``service``, ``aws``, or a ``metrics.sources`` entry of the
policy), and the source names its provider. A provider is anything with

    fetch(specs, start, end) -> {spec: [(bucket start, value), ...]}

(:class:`MetricProvider`): datapoints of each series between ``start`` and ``end`` (epoch
seconds) at the spec's period, oldest first, a missing bucket simply absent (never a zero);
outages raised as :class:`~.query.ProviderError` (counted apart from breaches, enough in a row is
"metrics unavailable"), a request the provider refuses as :class:`~.query.QueryError`.

Built in: CloudWatch (GetMetricData, the default of every source) and Prometheus
(``prometheus.py``). A plugin supplies others through ``pytest_llamadeploy_metric_provider``
(newhooks.py); :func:`metric_providers` asks it for every source before the stage moves traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .query import Points, QueryError, SeriesSpec, fetch


@runtime_checkable
class MetricProvider(Protocol):
    """What the watch, the monitoring suite and compare ask of a source of metrics."""

    def fetch(self, specs: Sequence[SeriesSpec], start: float, end: float) -> dict[SeriesSpec, Points]:
        """Datapoints of every spec in [start, end]; ProviderError for an outage, QueryError for a bad request."""
        ...


class CloudWatchProvider:
    """GetMetricData through a boto3 CloudWatch client (made on first use: a stage without a bake needs none)."""

    def __init__(self, client: Any | Callable[[], Any]):
        self._client = client if hasattr(client, "get_metric_data") else None
        self._factory = None if self._client is not None else client

    @property
    def client(self) -> Any:
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        return self._client

    def fetch(self, specs: Sequence[SeriesSpec], start: float, end: float) -> dict[SeriesSpec, Points]:
        return fetch(self.client, specs, start, end)


class MetricRouter:
    """One provider per source: a poll's series are grouped by source, each group asked of its provider.

    Series without a source (``SeriesSpec.source == ""``: the report's plots, compare) are the
    functions' own signal, the ``service`` source's.
    """

    def __init__(self, providers: Mapping[str, MetricProvider]):
        self.providers = dict(providers)

    @property
    def cloudwatch(self) -> Any:
        """The CloudWatch client, if a source reads CloudWatch (the watch counts its GetMetricData calls)."""
        for provider in self.providers.values():
            if isinstance(provider, CloudWatchProvider):
                return provider.client
        return None

    def fetch(self, specs: Sequence[SeriesSpec], start: float, end: float) -> dict[SeriesSpec, Points]:
        # Grouped by provider, not by source: the sources CloudWatch serves still share ONE GetMetricData.
        groups: dict[int, tuple[MetricProvider, list[SeriesSpec]]] = {}
        for spec in specs:
            source = spec.source or "service"
            provider = self.providers.get(source)
            if provider is None:
                raise QueryError(f"no metric provider for source {source!r} here (known: {', '.join(self.providers)}): "
                                 "a plugin's provider serves it through pytest_llamadeploy_metric_provider, which "
                                 "this caller was not given")
            groups.setdefault(id(provider), (provider, []))[1].append(spec)
        out: dict[SeriesSpec, Points] = {}
        for provider, group in groups.values():
            out.update(provider.fetch(group, start, end))
        return out


class NoProvider(Exception):
    """A source whose provider nobody supplies (a plugin's provider name without the plugin)."""


def builtin_provider(name: str, source: Any, cloudwatch: CloudWatchProvider) -> MetricProvider | None:
    """The built-in provider of a ``metrics.sources`` entry (None: not a built-in provider name)."""
    if source.provider == "cloudwatch":
        return cloudwatch
    if source.provider == "prometheus":
        from .prometheus import PrometheusProvider

        return PrometheusProvider.from_source(name, source)
    return None


def metric_providers(policy: Any, cloudwatch: Any | Callable[[], Any],
                     hook: Any = None, *, strict: bool = True) -> MetricRouter:
    """The provider of every source of ``policy``; ``hook`` (pytest's) lets a plugin supply any of them.

    ``cloudwatch`` is a boto3 client or a function making one. Raises :class:`NoProvider`,
    naming the policy key and the fix, for a source no provider serves (``strict``; otherwise
    the source is left out, and only a series asked of it fails).
    """
    default = CloudWatchProvider(cloudwatch)
    providers: dict[str, MetricProvider] = {}
    for name in ("service", "aws", *policy.metrics.sources):
        source = policy.metrics.source(name)
        supplied = None
        if hook is not None:
            supplied = hook.pytest_llamadeploy_metric_provider(name=name, source=source, policy=policy)
        if supplied is None:
            supplied = default if name in ("service", "aws") else builtin_provider(name, source, default)
        if supplied is None and not strict:
            continue
        if supplied is None:
            raise NoProvider(
                f"metrics.sources.{name}.provider = {source.provider!r}: no plugin supplies it "
                "(pytest_llamadeploy_metric_provider returned None for this source); install the plugin that "
                "provides it, or use provider: cloudwatch or prometheus")
        if not isinstance(supplied, MetricProvider):
            raise NoProvider(f"metrics source {name!r}: the plugin's provider {type(supplied).__name__} has no "
                             "fetch(specs, start, end) (see pytest_llamadeploy_metric_provider in newhooks.py)")
        providers[name] = supplied
    return MetricRouter(providers)


def provider_of(source: Any, policy: Any = None) -> MetricProvider:
    """A provider for what a caller holds: a provider (a router) as is; a CloudWatch client, then with the
    policy's declared sources (without plugins: those come through the stage's router)."""
    if isinstance(source, MetricProvider):
        return source
    if policy is None:
        return CloudWatchProvider(source)
    return metric_providers(policy, source, strict=False)
