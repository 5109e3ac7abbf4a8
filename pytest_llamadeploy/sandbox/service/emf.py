"""The release's own per-version signal: CloudWatch Embedded Metric Format lines on stdout.

What a function must emit for the gate to watch it is ``docs/service-contract.md``;
this is the reference service's implementation of it. Each invocation adds to an
in-memory record of its function and version; once a second every record is
written as EMF documents (``StorageResolution: 1``, dimensions exactly
``FunctionName, Version``) by ``aws-embedded-metrics``' stdout sink, the way a
Lambda function's stdout reaches CloudWatch Logs. The sandbox's log shipper
(``frontdoor/logship.py``) then plays CloudWatch Logs: it stores the lines and
extracts the metrics.

One document per function version per second rather than one per invocation:
the same values reach CloudWatch (EMF carries up to 100 values per metric in a
document), at a fraction of the JSON the service writes and the shipper parses.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .tasks import cancel_and_wait

# Local: write to stdout, never probe for an agent or the instance metadata endpoint. Set
# before the library reads its configuration (at import).
os.environ.setdefault("AWS_EMF_ENVIRONMENT", "Local")

#: The namespace of the reference service's metrics (the policy's metrics.service.namespace).
NAMESPACE = "LlamaDeploy/Service"

# Metric names and units: the contract (docs/service-contract.md) spells the same.
COUNTS = {
    "Requests": "Count",          # HTTP requests the function answered (any status)
    "Responses5xx": "Count",      # of which answered 5xx, including invocations that failed (unhandled)
    "WsConnects": "Count",        # WebSocket $connect attempts the function handled
    "WsConnectErrors": "Count",   # of which refused or failed
    "CacheHits": "Count",         # cache lookups answered from the cache
    "CacheMisses": "Count",       # cache lookups that went to the database
    "EventsToDeliver": "Count",   # events received for a subscribed client (before delivery)
    "EventsDelivered": "Count",   # events written to a client's socket
}
VALUES = {
    "Latency": "Milliseconds",               # per HTTP request, from arrival to the last byte of the answer
    "DbQueryTime": "Milliseconds",           # per database query, in the database
    "EventDeliveryLatency": "Milliseconds",  # per delivered event, from its publication to the client's socket
}


@dataclass(frozen=True)
class Invocation:
    """Who is running: the function and version the runtime says (AWS_LAMBDA_FUNCTION_NAME/VERSION)."""

    function: str
    version: str


#: The invocation being served (set per request / WebSocket connection from the runtime's headers).
current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("llama_invocation", default=None)


@dataclass
class _Record:
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Emf:
    """Per-second EMF records of one service process, by (function, version)."""

    def __init__(self, namespace: str = NAMESPACE):
        from .prom import PromMetrics

        self.namespace = namespace
        #: The same counts and values for Prometheus (GET /metrics, prom.py).
        self.prom = PromMetrics()
        self._records: dict[tuple[str, str], _Record] = {}
        self._task: asyncio.Task[None] | None = None
        self.documents = 0

    # -- recording (request path: a dict lookup and an addition) -------------------------
    def count(self, name: str, value: float = 1.0, who: Invocation | None = None) -> None:
        who = who or current.get()
        if who is None:
            return  # not an invocation (a direct call to the process, the admin paths): nothing to say
        self._record(who).counts[name] += value
        self.prom.count(name, value, who)

    def value(self, name: str, value: float, who: Invocation | None = None) -> None:
        who = who or current.get()
        if who is None:
            return
        self._record(who).values[name].append(round(value, 3))
        self.prom.value(name, value, who)

    def _record(self, who: Invocation) -> _Record:
        key = (who.function, who.version)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
        return record

    # -- flushing ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="emf-flush")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.flush()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0 - (loop.time() % 1.0))
            self.flush()

    def flush(self) -> None:
        """Write every record as EMF documents and start new ones."""
        records, self._records = self._records, {}
        if not records:
            return
        from aws_embedded_metrics.logger.metrics_logger_factory import create_metrics_logger
        from aws_embedded_metrics.storage_resolution import StorageResolution

        stamp = datetime.now(UTC).replace(microsecond=0)
        for (function, version), record in records.items():
            logger: Any = create_metrics_logger()
            logger.set_namespace(self.namespace)
            logger.set_dimensions({"FunctionName": function, "Version": version})
            logger.set_timestamp(stamp)
            for name, total in record.counts.items():
                logger.put_metric(name, total, COUNTS.get(name, "Count"), StorageResolution.HIGH)
            for name, values in record.values.items():
                for v in values:
                    logger.put_metric(name, v, VALUES.get(name, "None"), StorageResolution.HIGH)
            logger.flush_sync()
            self.documents += 1
