"""One GetMetricData call per poll: every series a decision needs, in one request.

A poll names the series it needs as :class:`SeriesSpec` (namespace, metric,
full dimension set, statistic, period); identical specs are asked once. Up to
500 queries go in one call (CloudWatch's limit); beyond that the batch is
chunked, which is the only case of more than one call per poll.

Provider errors (throttling, 5xx, timeouts, connection failures) are raised as
:class:`ProviderError` so that callers count them apart from threshold breaches.
A request CloudWatch rejects as invalid is our bug, not the provider's: it is
raised as :class:`QueryError` and never retried.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_QUERIES = 500
#: Periods CloudWatch accepts below a minute (above: multiples of 60).
_SHORT_PERIODS = (1, 5, 10, 30)
_THROTTLE_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalFailure", "InternalError", "InternalServiceError", "LimitExceededException",
}


class ProviderError(Exception):
    """CloudWatch could not answer (counted apart from breaches; enough in a row is 'metrics unavailable')."""


class QueryError(Exception):
    """CloudWatch refused the request itself (a bug in the query, not an outage)."""


@dataclass(frozen=True)
class SeriesSpec:
    namespace: str
    metric: str
    dims: tuple[tuple[str, str], ...]
    stat: str
    period: int
    #: The policy's source of the series (``service``, ``aws``, a ``metrics.sources`` name): which
    #: provider answers it (providers.py). Empty: CloudWatch.
    source: str = ""

    def query(self, query_id: str) -> dict[str, Any]:
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": self.metric,
                    "Dimensions": [{"Name": n, "Value": v} for n, v in self.dims],
                },
                "Period": self.period,
                "Stat": self.stat,
            },
            "ReturnData": True,
        }


#: (epoch seconds of the bucket start, value), oldest first.
Points = list[tuple[float, float]]


def valid_period(seconds: float) -> int:
    """The smallest period CloudWatch accepts that is >= ``seconds`` (1, 5, 10, 30, or n x 60)."""
    for p in _SHORT_PERIODS:
        if seconds <= p:
            return p
    return int(math.ceil(seconds / 60.0)) * 60


def build_queries(specs: Iterable[SeriesSpec]) -> tuple[list[dict[str, Any]], dict[str, SeriesSpec]]:
    """MetricDataQueries for distinct specs, with ids ``q0, q1, ...`` and the id -> spec map."""
    queries: list[dict[str, Any]] = []
    ids: dict[str, SeriesSpec] = {}
    seen: set[SeriesSpec] = set()
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        query_id = f"q{len(queries)}"
        queries.append(spec.query(query_id))
        ids[query_id] = spec
    return queries, ids


def classify(exc: BaseException) -> Exception:
    """ProviderError for an outage, QueryError for a rejected request (botocore imported lazily)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{code or 'error'} (HTTP {status}): {error.get('Message', '')}".strip()
        if code in _THROTTLE_CODES or status >= 500 or status == 429:
            return ProviderError(text)
        return QueryError(f"CloudWatch rejected GetMetricData: {text}")
    if isinstance(exc, BotoCoreError):
        return ProviderError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return ProviderError(f"{type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def fetch(
    cloudwatch: Any,
    specs: Iterable[SeriesSpec],
    start: float,
    end: float,
) -> dict[SeriesSpec, Points]:
    """Datapoints of every spec between ``start`` and ``end`` (epoch seconds): one call per 500 series."""
    queries, ids = build_queries(specs)
    result: dict[SeriesSpec, Points] = {spec: [] for spec in ids.values()}
    if not queries:
        return result
    start_dt = datetime.fromtimestamp(math.floor(start), tz=UTC)
    end_dt = datetime.fromtimestamp(max(math.ceil(end), math.floor(start) + 1), tz=UTC)
    for offset in range(0, len(queries), MAX_QUERIES):
        chunk = queries[offset:offset + MAX_QUERIES]
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "MetricDataQueries": chunk, "StartTime": start_dt, "EndTime": end_dt,
                "ScanBy": "TimestampAscending",
            }
            if token:
                kwargs["NextToken"] = token
            try:
                answer = cloudwatch.get_metric_data(**kwargs)
            except Exception as exc:  # noqa: BLE001 - classified right here
                raise classify(exc) from exc
            for item in answer.get("MetricDataResults", []):
                spec = ids.get(item["Id"])
                if spec is None:
                    continue
                points = [(_epoch(t), float(v)) for t, v in zip(item.get("Timestamps", []), item.get("Values", []), strict=True)]
                result[spec].extend(points)
            token = answer.get("NextToken")
            if not token:
                break
    for points in result.values():
        points.sort()
    return result


def sum_since(points: Points, since: float) -> float:
    return sum(v for t, v in points if t >= since - 1e-6)


def count_since(points: Points, since: float) -> int:
    return sum(1 for t, _ in points if t >= since - 1e-6)
