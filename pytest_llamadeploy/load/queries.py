"""Database query latency for the representative queries the policy names.

The one mapping from a query name (``performance.queries`` in a policy) to its
SQL is ``pytest_llamadeploy.sandbox.service.db.REPRESENTATIVE_QUERIES``: the
reference service runs exactly that SQL for ``GET /protocols?chain=`` and
``GET /tvl/{chain}``, and the service contract (docs/service-contract.md)
binds the real service to the same schema, so the gate times the same SQL
against a real database. A new name is added there, once.

Two views are measured, and both must be under ``performance.db_p95``. Both are
times in the database (``clock_timestamp()`` around the query, in one pipeline:
``sandbox.service.db.CLOCK``), so a loaded host's scheduling delays in the
client do not pass for a slow query:

* direct: the gate runs each query on its own connection (``postgres_dsn``)
  and times it: the database's own speed;
* as served: the service's timings of the same queries during the load (Redis
  lists ``llama:stats:db_ms:<name>``, newest first, all releases), which is
  where a release that slows its own queries (``slow_query_ms``) shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Redis list (newest first) where the service records each query's time in ms.
SERVICE_TIMINGS_PREFIX = "llama:stats:db_ms:"


class QueryConfigError(Exception):
    """A policy names a query the mapping does not know."""


def representative_queries(names: Sequence[str]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """name -> (SQL with %s placeholders, example parameters), for each name the policy lists."""
    from ..sandbox.service.db import REPRESENTATIVE_QUERIES

    unknown = [n for n in names if n not in REPRESENTATIVE_QUERIES]
    if unknown:
        raise QueryConfigError(
            f"policy performance.queries names {', '.join(map(repr, unknown))}, which "
            f"pytest_llamadeploy/sandbox/service/db.py REPRESENTATIVE_QUERIES does not define; "
            f"known: {', '.join(sorted(REPRESENTATIVE_QUERIES))}"
        )
    return {n: REPRESENTATIVE_QUERIES[n] for n in names}


def percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (the smallest sample with at least ``percent`` of samples at or below it)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class QueryTiming:
    name: str
    #: "direct" (the gate's own connection) or "service" (the service's timings during the load).
    source: str
    samples: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def p95(self) -> float | None:
        return percentile(self.samples, 0.95) if self.samples else None

    @property
    def p50(self) -> float | None:
        return percentile(self.samples, 0.50) if self.samples else None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "count": self.count,
                "p50_ms": None if self.p50 is None else round(self.p50, 3),
                "p95_ms": None if self.p95 is None else round(self.p95, 3)}


def time_queries_directly(dsn: str, names: Sequence[str], samples: int = 30,
                          connect_timeout: int = 5) -> list[QueryTiming]:
    """Run each named query ``samples`` times on one connection and time each run (ms, in the database)."""
    import psycopg

    from ..sandbox.service.db import fetch_timed

    queries = representative_queries(names)
    timings = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        # A stuck query must fail the gate, not hang it.
        conn.execute("SET statement_timeout = 10000")
        for name, (sql, params) in queries.items():
            values = []
            for _ in range(samples):
                values.append(fetch_timed(conn, sql, params)[1])
            timings.append(QueryTiming(name, "direct", tuple(values)))
    return timings


def service_timings(redis_client: Any, names: Iterable[str], newest: int) -> list[QueryTiming]:
    """The service's newest ``newest`` timings of each named query (0: none).

    The lists carry no timestamps; the caller bounds ``newest`` by the number
    of database reads during the load (the cache-miss count), so older
    samples hardly enter.
    """
    result = []
    for name in names:
        raw = redis_client.lrange(SERVICE_TIMINGS_PREFIX + name, 0, newest - 1) if newest > 0 else []
        values = []
        for item in raw:
            try:
                values.append(float(item))
            except (TypeError, ValueError):
                continue
        result.append(QueryTiming(name, "service", tuple(values)))
    return result
