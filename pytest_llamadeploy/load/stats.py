"""Locust's ``--json-file`` stats, read back without importing locust.

Locust keeps, per (method, name), a histogram of response times rounded to
about two significant digits and computes percentiles from it; the functions
here do the same arithmetic (``locust.stats.calculate_response_time_percentile``)
so a gate's p95 is the number locust's own report shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Request types the locustfile uses for what is not an HTTP call.
WS_EVENT = "WS"
WS_CONNECT = "WSCONNECT"
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class StatsFileError(Exception):
    """The JSON stats file is missing or not what locust writes."""


def response_time_percentile(histogram: Mapping[int, int], num_requests: int, percent: float) -> int:
    """The response time (ms) that ``percent`` (0..1) of the requests finished within, as locust computes it."""
    if not 0.0 <= percent <= 1.0:
        raise ValueError(f"percent {percent!r} must be within 0..1 (0.95 for p95)")
    num_of_request = int(num_requests * percent)
    processed = 0
    for response_time in sorted(histogram, reverse=True):
        processed += histogram[response_time]
        if num_requests - processed <= num_of_request:
            return response_time
    return 0


@dataclass(frozen=True)
class EndpointStats:
    """One (method, name) row of a run, or several merged like locust's "Aggregated" row."""

    method: str
    name: str
    num_requests: int = 0
    num_failures: int = 0
    #: Requests reported without a response time (locust excludes them from percentiles).
    num_none_requests: int = 0
    total_response_time: float = 0.0
    min_response_time: float | None = None
    max_response_time: float = 0.0
    #: Rounded response time (ms) -> count.
    response_times: Mapping[int, int] = field(default_factory=dict)
    start_time: float = 0.0
    last_request_timestamp: float | None = None

    @classmethod
    def from_locust(cls, entry: Mapping[str, Any]) -> EndpointStats:
        try:
            return cls(
                method=str(entry["method"]),
                name=str(entry["name"]),
                num_requests=int(entry["num_requests"]),
                num_failures=int(entry["num_failures"]),
                num_none_requests=int(entry.get("num_none_requests") or 0),
                total_response_time=float(entry.get("total_response_time") or 0.0),
                min_response_time=entry.get("min_response_time"),
                max_response_time=float(entry.get("max_response_time") or 0.0),
                # JSON object keys are strings; locust's histogram keys are ints.
                response_times={int(float(k)): int(v) for k, v in (entry.get("response_times") or {}).items()},
                start_time=float(entry.get("start_time") or 0.0),
                last_request_timestamp=entry.get("last_request_timestamp"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StatsFileError(f"a stats entry lacks or mangles {exc}: {dict(entry)!r:.200}") from None

    @property
    def key(self) -> str:
        return f"{self.method} {self.name}"

    @property
    def failure_ratio(self) -> float:
        if self.num_requests == 0:
            return 1.0 if self.num_failures else 0.0
        return self.num_failures / self.num_requests

    def percentile(self, percent: float) -> int:
        return response_time_percentile(self.response_times, self.num_requests - self.num_none_requests, percent)

    @property
    def p50(self) -> int:
        return self.percentile(0.50)

    @property
    def p95(self) -> int:
        return self.percentile(0.95)

    @property
    def p99(self) -> int:
        return self.percentile(0.99)

    @property
    def avg_response_time(self) -> float:
        timed = self.num_requests - self.num_none_requests
        return self.total_response_time / timed if timed else 0.0

    @property
    def rps(self) -> float:
        """Requests per second between the first and the last request (locust's ``total_rps``)."""
        if not self.last_request_timestamp or not self.start_time:
            return 0.0
        span = self.last_request_timestamp - self.start_time
        return self.num_requests / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "name": self.name,
            "requests": self.num_requests,
            "failures": self.num_failures,
            "failure_ratio": round(self.failure_ratio, 6),
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
            "avg_ms": round(self.avg_response_time, 3),
            "max_ms": round(self.max_response_time, 3),
            "rps": round(self.rps, 2),
        }


def merge(entries: Iterable[EndpointStats], method: str = "", name: str = "Aggregated") -> EndpointStats:
    """Sum rows the way locust's ``StatsEntry.extend`` builds its total."""
    histogram: dict[int, int] = {}
    requests = failures = nones = 0
    total = 0.0
    low: float | None = None
    high = 0.0
    start = 0.0
    last: float | None = None
    for e in entries:
        requests += e.num_requests
        failures += e.num_failures
        nones += e.num_none_requests
        total += e.total_response_time
        high = max(high, e.max_response_time)
        if e.min_response_time is not None:
            low = e.min_response_time if low is None else min(low, e.min_response_time)
        if e.start_time:
            start = e.start_time if not start else min(start, e.start_time)
        if e.last_request_timestamp:
            last = e.last_request_timestamp if last is None else max(last, e.last_request_timestamp)
        for rt, count in e.response_times.items():
            histogram[rt] = histogram.get(rt, 0) + count
    return EndpointStats(method, name, requests, failures, nones, total, low, high, histogram, start, last)


@dataclass(frozen=True)
class RunStats:
    """Every row of one run."""

    entries: tuple[EndpointStats, ...]

    @classmethod
    def load(cls, path: Path) -> RunStats:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StatsFileError(f"{path}: locust wrote no JSON stats (see its log next to it)") from None
        except json.JSONDecodeError as exc:
            raise StatsFileError(f"{path}: not JSON ({exc}); was locust interrupted?") from None
        if not isinstance(data, list):
            raise StatsFileError(f"{path}: expected a list of stats entries, got {type(data).__name__}")
        return cls(tuple(EndpointStats.from_locust(e) for e in data))

    def by_key(self) -> dict[str, EndpointStats]:
        return {e.key: e for e in self.entries}

    def select(self, predicate: Callable[[EndpointStats], bool], name: str) -> EndpointStats:
        return merge((e for e in self.entries if predicate(e)), name=name)

    @property
    def total(self) -> EndpointStats:
        return merge(self.entries)

    @property
    def http(self) -> EndpointStats:
        """The API's requests only (what the API p95 and failure ratio gate on)."""
        return self.select(lambda e: e.method.upper() in HTTP_METHODS, name="HTTP")

    @property
    def ws_events(self) -> EndpointStats:
        return self.select(lambda e: e.method == WS_EVENT, name="WebSocket events")

    @property
    def ws_connects(self) -> EndpointStats:
        return self.select(lambda e: e.method == WS_CONNECT, name="WebSocket connects")
