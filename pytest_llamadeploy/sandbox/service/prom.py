"""The function's own per-version signal in Prometheus's text format (``GET /metrics``).

The same counts and values as the EMF (emf.py, docs/service-contract.md), for a team whose metrics
live in Prometheus: ``llamadeploy_service_<name>_total`` counters and ``..._ms`` histograms,
labelled ``function`` and ``version`` as the function itself knows them (on Lambda
``AWS_LAMBDA_FUNCTION_NAME`` / ``AWS_LAMBDA_FUNCTION_VERSION``; here the runtime's headers, see
app.invocation_of). Nothing else labels by version: the front door, like API Gateway, does not.

On AWS a function is not scraped: it pushes (the ADOT Lambda layer's remote write, or a push
gateway). In the sandbox each service process is scraped directly on its own port, which gives the
Prometheus server the same series. One registry per process (never prometheus_client's global
one), so that several services in one test process keep their counts apart.
"""

from __future__ import annotations

import re
from typing import Any

from .emf import COUNTS, VALUES, Invocation

PREFIX = "llamadeploy_service_"
LABELS = ("function", "version")
#: Milliseconds: a healthy answer is a few ms, a slow fault hundreds, a timeout seconds.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def metric_name(emf_name: str) -> str:
    """``Responses5xx`` -> ``llamadeploy_service_responses_5xx`` (Prometheus's snake case)."""
    snake = re.sub(r"(?<=[a-z])(?=[A-Z0-9])|(?<=[0-9])(?=[A-Z])", "_", emf_name).lower()
    return PREFIX + snake


class PromMetrics:
    """Counters and histograms of one service process, by function and version."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Any] = {
            name: Counter(metric_name(name), f"{name} (EMF metric of the same name)", LABELS, registry=self.registry)
            for name in COUNTS}
        self._histograms: dict[str, Any] = {
            name: Histogram(metric_name(name) + "_ms", f"{name} in milliseconds (EMF metric of the same name)",
                            LABELS, registry=self.registry, buckets=BUCKETS_MS)
            for name in VALUES}

    def count(self, name: str, value: float, who: Invocation) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.labels(who.function, who.version).inc(value)

    def value(self, name: str, value: float, who: Invocation) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.labels(who.function, who.version).observe(value)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
