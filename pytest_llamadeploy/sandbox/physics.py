"""AWS's physics as the sandbox plays it: what counts, under which dimensions, how coarse and how late.

The sandbox must never be kinder than AWS (../shared/AWS.md): a gate that passes
only because the sandbox counts more, labels better or publishes sooner than AWS
is a defect. Every rule the front door and the log shipper follow is here, with
the AWS documentation it comes from (read 2026-12-01), so a reader can check it.

What counts
-----------
- **Lambda ``Errors``** count invocations that end in a *function error*: an
  exception the code throws, a runtime crash, a timeout. A handler that returns
  ``{"statusCode": 500}`` ended successfully: no Error; API Gateway counts a
  5XXError. An unhandled error behind a proxy integration reaches the client as
  502. (Lambda developer guide, "Types of metrics for Lambda functions":
  https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html ;
  "Handle Lambda errors in API Gateway":
  https://docs.aws.amazon.com/lambda/latest/dg/services-apigateway-errors.html)
  In the sandbox a release signals an unhandled error the way Lambda's Invoke API
  does, with ``X-Amz-Function-Error: Unhandled`` (``FUNCTION_ERROR_HEADER``).
- **Lambda ``Throttles``** count invocation requests refused for concurrency; a
  throttled request is not an Invocation. Through an API Gateway proxy
  integration the client sees HTTP 500 (INTEGRATION_FAILURE), without the
  throttle's error type; a direct ``Invoke`` gets ``TooManyRequestsException``
  (HTTP 429). In the sandbox a release signals "Lambda refused this invocation"
  with ``THROTTLED_HEADER``; the front door plays the rest.
- **Lambda ``Invocations``** include failed invocations (errors) and exclude
  throttled ones; ``Duration`` is the function's run time. A throttle is refused
  before any version runs, so the sandbox counts ``Throttles`` under
  ``FunctionName`` and ``FunctionName, Resource`` only, never with an
  ``ExecutedVersion`` it cannot be sure AWS gives: a throttle rule watches the alias.
- **DynamoDB throttle metrics** (``ReadThrottleEvents``, ``WriteThrottleEvents``,
  ``ThrottledRequests``) are published only when a request is throttled: a table
  that never throttles has no series (AWS.md). The sandbox publishes nothing.

Which labels exist
------------------
- AWS/Lambda dimension sets: ``FunctionName``; ``FunctionName, Resource``
  (``name:alias`` or ``name:version``); ``FunctionName, Resource, ExecutedVersion``
  for invocations through an alias (Lambda guide, "Using CloudWatch metrics with
  Lambda", dimensions). A direct invoke of ``Qualifier=N`` is recorded under
  ``Resource=name:N`` and carries no ExecutedVersion.
- AWS/ApiGateway, REST: ``ApiName`` and ``ApiName, Stage`` (API Gateway guide,
  "Amazon API Gateway dimensions and metrics":
  https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-metrics-and-dimensions.html).
  WebSocket APIs: ``ApiId``, ``ApiId, Stage``, ``ApiId, Stage, Route`` ("Monitoring
  WebSocket API execution with CloudWatch metrics":
  https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-logging.html).
  Nothing in either splits by Lambda version.
- AWS/ElastiCache publishes per cache node: ``CacheClusterId`` is a member
  cluster (``<replication group>-001``), with and without ``CacheNodeId``
  (``0001``) (ElastiCache guide, "Host-level metrics" / "Metrics for Redis OSS":
  https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/CacheMetrics.Redis.html).
- X-Ray: Lambda adds no version annotation; annotations on a trace are only
  what the function writes (X-Ray guide, "Add annotations and metadata"). The
  front door records the annotations the release hands it and nothing else.

How coarse and how late
-----------------------
- Standard-resolution metrics (every ``AWS/*`` metric the gate reads) exist per
  60 s; only metrics stored with ``StorageResolution: 1`` accept 1/5/10/20/30 s
  periods (CloudWatch API reference, ``MetricStat.Period``:
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricStat.html).
- Service metrics arrive late: a minute is usually visible 1-3 minutes after it
  closes, sometimes several (AWS.md). ``aws`` physics draws each minute's lag
  from ``SERVICE_LAG_AWS`` per namespace; ``--metric-lag`` fixes it instead.
- Embedded Metric Format lines are turned into metrics by CloudWatch Logs once
  the logs are delivered; Lambda's log flush cannot be tuned, so a few seconds
  pass (CloudWatch guide, "Setting alarms on metrics created with the embedded
  metric format":
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Alarms.html).
  ``EMF_LAG_AWS`` draws that per batch. EMF metrics keep the resolution their
  directive declares (``StorageResolution: 1``: high resolution).

``fast`` physics keeps every meaning above and compresses AWS's clock for CI:
a service-metric "minute" is one second, visible 1-3 s after it closes (60-180 s
divided by 60), and EMF lines become metrics within about a second.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PHYSICS_NAMES = ("fast", "aws")
#: Response header a release sets when its handler raised (Lambda Invoke API: X-Amz-Function-Error).
FUNCTION_ERROR_HEADER = "x-amz-function-error"
#: Response header a release sets when Lambda would have refused the invocation for concurrency.
THROTTLED_HEADER = "x-llama-lambda-throttled"
#: Request headers the front door (playing the Lambda runtime) gives each invocation, as Lambda gives a
#: function AWS_LAMBDA_FUNCTION_NAME and AWS_LAMBDA_FUNCTION_VERSION.
FUNCTION_NAME_HEADER = "x-llama-lambda-function"
FUNCTION_VERSION_HEADER = "x-llama-lambda-version"
#: Response header carrying the X-Ray annotations the release wrote for this invocation (JSON object).
ANNOTATIONS_HEADER = "x-llama-xray-annotations"

SERVICE_LAG_AWS = (60.0, 180.0)
EMF_LAG_AWS = (2.0, 12.0)
SERVICE_LAG_FAST = (1.0, 3.0)
EMF_LAG_FAST = (0.5, 1.5)


@dataclass(frozen=True)
class Physics:
    """Resolution and delivery delay of what the sandbox publishes."""

    name: str
    #: Seconds per datapoint of AWS's own service metrics.
    service_resolution: int
    #: Bounds (seconds after a bucket closes) between which its delay is drawn.
    service_lag: tuple[float, float]
    #: Bounds (seconds after the log line) between which an EMF metric's delay is drawn.
    emf_lag: tuple[float, float]

    @property
    def storage_resolution(self) -> int:
        """StorageResolution of the AWS/* datums: 60 (standard) under aws, 1 under the compressed clock."""
        return 60 if self.service_resolution >= 60 else 1

    def describe(self) -> str:
        return (f"{self.name}: AWS/* metrics per {self.service_resolution}s, visible "
                f"{_span(self.service_lag)} after their bucket closes; EMF metrics {_span(self.emf_lag)} after the line")


def _span(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return f"{low:g}s" if low == high else f"{low:g}-{high:g}s"


def physics(name: str, metric_lag: float | None = None) -> Physics:
    """The named physics; ``metric_lag`` (seconds) fixes the AWS/* delay instead of drawing it."""
    if name == "aws":
        lag = SERVICE_LAG_AWS if metric_lag is None else (metric_lag, metric_lag)
        return Physics("aws", 60, lag, EMF_LAG_AWS)
    if name == "fast":
        lag = SERVICE_LAG_FAST if metric_lag is None else (metric_lag, metric_lag)
        return Physics("fast", 1, lag, EMF_LAG_FAST)
    raise ValueError(f"physics {name!r}: use one of {', '.join(PHYSICS_NAMES)}")


# ------------------------------------------------------------------------------ what counts


@dataclass(frozen=True)
class Outcome:
    """How Lambda counts one invocation request, and what API Gateway answers for it."""

    invoked: bool
    error: bool
    throttled: bool
    #: HTTP status the client of an API Gateway proxy integration sees.
    client_status: int


def lambda_outcome(status: int, function_error: str | None = None, throttled: bool = False,
                   unreachable: bool = False) -> Outcome:
    """Count one request the way Lambda and an API Gateway proxy integration do (see the module docstring).

    ``status`` is what the release answered (ignored when ``function_error``, ``throttled`` or
    ``unreachable``); a handled 5xx is an invocation without an Error.
    """
    if throttled:
        return Outcome(invoked=False, error=False, throttled=True, client_status=500)
    if unreachable or function_error:
        # A crash or a timeout of the function: an Error, and a 502 from API Gateway.
        return Outcome(invoked=True, error=True, throttled=False, client_status=502)
    return Outcome(invoked=True, error=False, throttled=False, client_status=status)


# ------------------------------------------------------------------------------ which labels exist

Dims = list[dict[str, str]]


def _dims(*pairs: tuple[str, str]) -> Dims:
    return [{"Name": name, "Value": value} for name, value in pairs]


def lambda_dimension_sets(function: str, resource: str, executed_version: str | None) -> list[Dims]:
    """Every AWS/Lambda dimension set one invocation is counted under.

    ``resource`` is the qualifier the caller used (an alias name or a version
    number); ``executed_version`` is the version that ran when the caller used an
    alias (None for a direct invoke of a version).
    """
    sets = [_dims(("FunctionName", function)), _dims(("FunctionName", function), ("Resource", f"{function}:{resource}"))]
    if executed_version is not None:
        sets.append(_dims(("FunctionName", function), ("Resource", f"{function}:{resource}"),
                          ("ExecutedVersion", str(executed_version))))
    return sets


def apigw_rest_dimension_sets(api_name: str, stage: str) -> list[Dims]:
    return [_dims(("ApiName", api_name)), _dims(("ApiName", api_name), ("Stage", stage))]


def apigw_ws_dimension_sets(api_id: str, stage: str, route: str | None = None) -> list[Dims]:
    sets = [_dims(("ApiId", api_id)), _dims(("ApiId", api_id), ("Stage", stage))]
    if route is not None:
        sets.append(_dims(("ApiId", api_id), ("Stage", stage), ("Route", route)))
    return sets


def cache_node(replication_group: str, member: int = 1) -> tuple[str, str]:
    """(CacheClusterId, CacheNodeId) of a replication group's member cluster, as ElastiCache names them."""
    return f"{replication_group}-{member:03d}", f"{1:04d}"


def elasticache_dimension_sets(replication_group: str, member: int = 1) -> list[Dims]:
    cluster, node = cache_node(replication_group, member)
    return [_dims(("CacheClusterId", cluster)), _dims(("CacheClusterId", cluster), ("CacheNodeId", node))]


# ------------------------------------------------------------------------------ how coarse and how late


def _series_key(namespace: str, datum: Mapping[str, Any]) -> tuple[Any, ...]:
    dims = tuple(sorted((d["Name"], d["Value"]) for d in datum.get("Dimensions", [])))
    return namespace, datum["MetricName"], dims, datum.get("Unit", "None")


@dataclass
class _Held:
    namespace: str
    name: str
    dims: Dims
    unit: str
    bucket: int
    storage_resolution: int
    total: float = 0.0
    has_value: bool = False
    values: dict[float, float] = field(default_factory=dict)

    def add(self, datum: Mapping[str, Any]) -> None:
        if "Value" in datum:
            self.total += float(datum["Value"])
            self.has_value = True
        for value, count in zip(datum.get("Values", []), datum.get("Counts") or [1.0] * len(datum.get("Values", [])),
                                strict=True):
            self.values[float(value)] = self.values.get(float(value), 0.0) + float(count)

    def datums(self, max_values: int) -> list[dict[str, Any]]:
        ts = datetime.fromtimestamp(self.bucket, UTC)
        base = {"MetricName": self.name, "Dimensions": self.dims, "Timestamp": ts, "Unit": self.unit,
                "StorageResolution": self.storage_resolution}
        out: list[dict[str, Any]] = []
        if self.has_value:
            out.append(base | {"Value": self.total})
        items = sorted(self.values.items())
        for i in range(0, len(items), max_values):
            chunk = items[i:i + max_values]
            out.append(base | {"Values": [v for v, _ in chunk], "Counts": [c for _, c in chunk]})
        return out


class Delivery:
    """Holds datums until AWS would show them: rolled up to a resolution, released after a drawn lag.

    ``add`` takes put_metric_data datums (each with a ``Timestamp``); ``due`` returns, by
    namespace, the merged datums of every bucket whose lag has passed. Counts are summed,
    value lists merged, as CloudWatch aggregates datapoints of one period.
    """

    def __init__(self, resolution: int, lag: tuple[float, float], storage_resolution: int, *,
                 rng: random.Random | None = None, clock: Callable[[], float] | None = None,
                 max_values: int = 150):
        import time

        self.resolution = max(1, int(resolution))
        self.lag = lag
        self.storage_resolution = storage_resolution
        self._rng = rng or random.Random()
        self._clock = clock or time.time
        self._max_values = max_values
        self._held: dict[tuple[Any, ...], _Held] = {}
        #: (namespace, bucket) -> the moment it becomes visible (drawn once per namespace and bucket).
        self._release_at: dict[tuple[str, int], float] = {}

    def add(self, namespace: str, datums: Iterable[Mapping[str, Any]]) -> None:
        for datum in datums:
            ts = datum["Timestamp"]
            stamp = ts.timestamp() if isinstance(ts, datetime) else float(ts)
            bucket = int(stamp // self.resolution) * self.resolution
            key = (*_series_key(namespace, datum), bucket)
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(namespace, datum["MetricName"], list(datum.get("Dimensions", [])),
                                               datum.get("Unit", "None"), bucket, self.storage_resolution)
            held.add(datum)
            if (namespace, bucket) not in self._release_at:
                low, high = self.lag
                self._release_at[(namespace, bucket)] = bucket + self.resolution + self._rng.uniform(low, high)

    def due(self, everything: bool = False) -> dict[str, list[dict[str, Any]]]:
        now = self._clock()
        out: dict[str, list[dict[str, Any]]] = {}
        for key, held in list(self._held.items()):
            if everything or self._release_at.get((held.namespace, held.bucket), 0.0) <= now:
                out.setdefault(held.namespace, []).extend(held.datums(self._max_values))
                del self._held[key]
        live = {(h.namespace, h.bucket) for h in self._held.values()}
        for key in [k for k in self._release_at if k not in live]:
            del self._release_at[key]
        return out

    def pending(self) -> int:
        return len(self._held)
