"""The Prometheus provider: a policy's PromQL, asked of a Prometheus server's HTTP API.

A source ``metrics.sources.<name>: {provider: prometheus, url: ..., resolution, lag}`` and its
custom signals (``metrics.signals``) give the PromQL; each series is one query with the signal's
dimensions filled in (``$function``, ``$version``, ...), plus ``$period``, ``$window`` and
``$quantile`` in PromQL's spelling (``15s``, ``0.95``).

- **Counts** (statistic ``Sum``): the query is a counter (``sum(requests_total{...})``). It is
  read with ``/api/v1/query_range`` at one step per datapoint of the source, and each bucket
  ``[t, t + period)`` gets the counter's increase from ``t`` to ``t + period``, per returned
  series, then added up. Computed here rather than with ``increase()``, which needs two samples
  inside its range (a 1-s range at a 1-s scrape holds one) and extrapolates. A series that first
  appears inside the range was born at zero (a client library creates a labelled counter at its
  first increment); a counter lower than before restarted from zero. A step without a sample
  (nothing scraped yet) is absent, never a zero.
- **Percentiles** (``p95``): the query gives a histogram's bucket counters by ``le``
  (``sum by (le) (latency_ms_bucket{...})``); each bucket's increase over the window is taken the
  same way, and the quantile interpolated within its bucket as PromQL's ``histogram_quantile``
  does. Like CloudWatch's, the window runs from the minute its start rounds down to
  (evaluate.percentile_period).

Transport failures, timeouts, HTTP 429 and 5xx are :class:`~.query.ProviderError`; a query
Prometheus refuses (HTTP 400/422: bad PromQL) is :class:`~.query.QueryError`.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Sequence
from typing import Any

from .query import Points, ProviderError, QueryError, SeriesSpec

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _label_value(value: str) -> str:
    """A value safe inside a PromQL string literal ("...")."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(spec: SeriesSpec) -> str:
    """The spec's PromQL with its dimensions, ``$period``, ``$window`` and ``$quantile`` filled in."""
    values = {name: _label_value(value) for name, value in spec.dims}
    values["period"] = values["window"] = f"{int(spec.period)}s"
    if spec.stat.startswith("p"):
        values["quantile"] = f"{float(spec.stat[1:]) / 100.0:g}"
    try:
        return string.Template(spec.metric).substitute(values)
    except (KeyError, ValueError) as exc:
        raise QueryError(f"PromQL {spec.metric!r}: placeholder {exc} has no value") from None


def _deltas(values: Sequence[Sequence[Any]], base: float) -> list[tuple[float, float]]:
    """(step, rise since the step before) of one counter series from query_range's ``values``.

    A series present at ``base`` gives only the level to count from; one appearing later was born
    at zero (its first value is its rise); a value lower than the one before means the counter
    restarted from zero; a step without a sample (NaN, absent) is skipped, its rise going to the
    next step that has one.
    """
    out: list[tuple[float, float]] = []
    previous: float | None = None
    for stamp, text in values:
        t, value = float(stamp), float(text)
        if math.isnan(value):
            continue
        if previous is None:
            if t > base:
                out.append((t, value))
        else:
            out.append((t, value - previous if value >= previous else value))
        previous = value
    return out


def histogram_quantile(q: float, counts: dict[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts by upper bound, interpolated within its bucket (as
    PromQL's ``histogram_quantile``); None without observations or without the ``+Inf`` bucket."""
    if math.inf not in counts or counts[math.inf] <= 0:
        return None
    bounds = sorted(counts)
    rank = q * counts[math.inf]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = counts[upper]
        if count >= rank:
            if upper == math.inf:
                return lower  # in the open bucket: its lower bound is all that is known
            if upper <= 0 or count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class PrometheusProvider:
    """Answers a source's series from Prometheus's HTTP API (``/api/v1/query_range``, ``/api/v1/query``)."""

    def __init__(self, name: str, url: str, timeout: float = 10.0, client: Any = None):
        import httpx

        self.name = name
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = client or httpx.Client(timeout=timeout)
        self.queries = 0

    @classmethod
    def from_source(cls, name: str, source: Any) -> PrometheusProvider:
        """From a ``metrics.sources`` entry; ``url: ${VAR}`` is read from the environment (it may hold credentials)."""
        from .providers import NoProvider

        url = source.url
        found = _VARIABLE.fullmatch(url)
        if found:
            url = os.environ.get(found.group(1), "")
            if not url:
                raise NoProvider(f"metrics.sources.{name}.url = {source.url!r}: {found.group(1)} is not set; "
                                 f"export {found.group(1)}=http://HOST:PORT of the Prometheus server")
        return cls(name, url, float(source.timeout))

    def close(self) -> None:
        self._http.close()

    # -- the MetricProvider protocol (providers.py) ------------------------------------------

    def fetch(self, specs: Sequence[SeriesSpec], start: float, end: float) -> dict[SeriesSpec, Points]:
        out: dict[SeriesSpec, Points] = {}
        for spec in dict.fromkeys(specs):
            if spec.stat == "Sum":
                out[spec] = self._increases(spec, start, end)
            elif spec.stat.startswith("p"):
                out[spec] = self._quantile(spec, start, end)
            else:
                raise QueryError(f"source {self.name}: statistic {spec.stat!r} is not one Prometheus answers "
                                 "here (Sum or a percentile such as p95)")
        return out

    # -- internals -------------------------------------------------------------------------

    def _increases(self, spec: SeriesSpec, start: float, end: float) -> Points:
        period = max(1, int(spec.period))
        first = math.floor(start / period) * period
        last = math.floor(end / period) * period
        if last <= first:
            return []
        result = self._get("/api/v1/query_range", {"query": render(spec), "start": first - period, "end": last,
                                                    "step": period})
        buckets: dict[float, float] = {}
        for series in result:
            for t, delta in _deltas(series.get("values", []), first - period):
                if t - period >= first - period / 2.0:
                    buckets[t - period] = buckets.get(t - period, 0.0) + delta
        return sorted(buckets.items())

    def _quantile(self, spec: SeriesSpec, start: float, end: float) -> Points:
        bucket = math.floor(start / 60.0) * 60.0
        at = min(bucket + spec.period, end)
        # Only each counter's rise over the window counts: a step fine enough to see restarts, at most
        # ~600 points a series.
        step = max(1, math.ceil((at - bucket) / 600.0))
        base = bucket - step
        result = self._get("/api/v1/query_range", {"query": render(spec), "start": base, "end": at, "step": step})
        by_le: dict[float, float] = {}
        for series in result:
            le = series.get("metric", {}).get("le")
            if le is None:
                raise QueryError(f"source {self.name}: a percentile's query must give histogram buckets by le "
                                 f"(sum by (le) (NAME_bucket{{...}})); {render(spec)!r} gave a series without le")
            bound = math.inf if le in ("+Inf", "Inf", "inf") else float(le)
            rise = sum(delta for _, delta in _deltas(series.get("values", []), base))
            by_le[bound] = by_le.get(bound, 0.0) + rise
        value = histogram_quantile(float(spec.stat[1:]) / 100.0, by_le)
        return [] if value is None else [(bucket, value)]

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        import httpx

        self.queries += 1
        try:
            response = self._http.get(self.url + path, params=params)
        except httpx.HTTPError as exc:
            raise ProviderError(f"Prometheus {self.name} ({self._host()}): {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = f"{body.get('errorType', '')}: {body.get('error', '')}".strip(": ") or response.text[:200]
        if status == 429 or status >= 500:
            raise ProviderError(f"Prometheus {self.name} ({self._host()}): HTTP {status}: {error}")
        if status >= 400 or body.get("status") != "success":
            raise QueryError(f"Prometheus {self.name} refused {params.get('query')!r}: HTTP {status}: {error}")
        data = body.get("data", {})
        return list(data.get("result", [])) if data.get("resultType") in ("matrix", "vector") else []

    def _host(self) -> str:
        # Only the host is ever shown: a URL from a variable may carry credentials.
        return re.sub(r"^https?://(?:[^@/]*@)?([^/]+).*$", r"\1", self.url)
