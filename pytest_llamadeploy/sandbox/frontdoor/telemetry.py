"""What the front door tells CloudWatch, CloudWatch Logs and X-Ray: AWS's metrics, under AWS's physics.

The front door plays API Gateway (a REST and a WebSocket API, each with its
stages) and Lambda's invoke service. This module records what those publish and
hands it to CloudWatch with AWS's meaning, labels, resolution and delay, as
``sandbox/physics.py`` writes them down:

- AWS/Lambda ``Invocations``, ``Errors`` (unhandled failures only), ``Throttles``,
  ``Duration`` under ``FunctionName``; ``FunctionName, Resource``; and, through an
  alias, ``FunctionName, Resource, ExecutedVersion``. A direct invoke of version N
  is under ``Resource=fn:N`` and has no ExecutedVersion.
- AWS/ApiGateway, REST: ``Count``, ``4XXError``, ``5XXError``, ``Latency``,
  ``IntegrationLatency`` by ``ApiName`` and ``ApiName, Stage``. WebSocket:
  ``ConnectCount``, ``MessageCount``, ``IntegrationError``, ``ClientError``,
  ``ExecutionError``, ``IntegrationLatency`` by ``ApiId``, ``ApiId, Stage`` and
  ``ApiId, Stage, Route``.
- AWS/ElastiCache ``CacheHits``, ``CacheMisses``, ``CacheHitRate`` per cache node,
  from the real Redis's INFO counters. Nothing for DynamoDB: moto never
  throttles, and AWS publishes DynamoDB throttle metrics only when one happens.
- The releases' EMF documents (their stdout, read by ``logship.py``), extracted
  into metrics after CloudWatch Logs' delay, and shipped to CloudWatch Logs with
  a REPORT line per function version and second and a few ERROR lines.
- X-Ray: a segment per sampled invocation, annotated with exactly what the release
  wrote (nothing about the version unless the release says it).

Requests only add to an in-memory bucket of the current second (a lock and a few
additions); a background thread flushes completed seconds through the physics'
``Delivery`` (rolled up to 60 s and held for the drawn lag under ``aws``) and
publishes with one PutMetricData per namespace per flush.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ... import metricnames as m
from ..physics import (
    Delivery,
    Outcome,
    Physics,
    apigw_rest_dimension_sets,
    apigw_ws_dimension_sets,
    elasticache_dimension_sets,
    lambda_dimension_sets,
)
from ..physics import physics as make_physics
from .logship import EmfDocument, LogShipper

log = logging.getLogger("llamadeploy.frontdoor")

#: put_metric_data takes at most 150 distinct values per datum and 1000 datums per call.
_MAX_VALUES = 150
_MAX_DATUMS = 1000
_ERROR_LINES_PER_SECOND = 5
_TRACE_ERRORS_PER_SECOND = 3
#: Seconds between publications of log events and trace segments (metrics go every second).
SLOW_FLUSH = 5.0
CONNECT_ROUTE = "$connect"


@dataclass(frozen=True)
class ApiNames:
    """The AWS names the front door publishes under (the sandbox provisions them; the policy names them)."""

    rest_api: str = "onchain-api"
    ws_api: str = "onchain-ws"
    cache_group: str = "onchain-redis"


@dataclass
class _LambdaStats:
    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    durations: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    release: str = ""
    error_lines: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class _RestStats:
    count: int = 0
    e4xx: int = 0
    e5xx: int = 0
    latencies: list[float] = field(default_factory=list)
    integration: list[float] = field(default_factory=list)


@dataclass
class _WsStats:
    connects: int = 0
    messages: int = 0
    integration_errors: int = 0
    client_errors: int = 0
    execution_errors: int = 0
    integration: list[float] = field(default_factory=list)


@dataclass
class _Bucket:
    #: (function, resource, executed version or None) -> stats; resource is an alias or a version.
    lam: dict[tuple[str, str, str | None], _LambdaStats] = field(default_factory=dict)
    rest: dict[str, _RestStats] = field(default_factory=dict)
    ws: dict[tuple[str, str], _WsStats] = field(default_factory=dict)
    traces: list[dict[str, Any]] = field(default_factory=list)
    traced: set[tuple[str, str]] = field(default_factory=set)


def _trace_id(now: float) -> str:
    return f"1-{int(now):08x}-{os.urandom(12).hex()}"


def _values_datums(name: str, dims: list[dict[str, str]], ts: datetime, values: list[float],
                   unit: str) -> list[dict[str, Any]]:
    counts = Counter(round(v, 1) for v in values)
    items = sorted(counts.items())
    return [
        {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Unit": unit,
         "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk]}
        for chunk in (items[i:i + _MAX_VALUES] for i in range(0, len(items), _MAX_VALUES))
    ]


def _count_datum(name: str, dims: list[dict[str, str]], ts: datetime, value: float,
                 unit: str = "Count") -> dict[str, Any]:
    return {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Unit": unit, "Value": float(value)}


class Telemetry:
    """Per-second aggregates of what the front door served, flushed to the AWS endpoint under a physics."""

    def __init__(self, clients: dict[str, Any] | None, *, names: ApiNames | None = None,
                 physics: Physics | None = None, redis_url: str = "", trace_sample: float = 0.05,
                 started: float | None = None, state_dir: Path | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time):
        #: service -> boto3 client ("cloudwatch", "logs", "xray"); None: aggregate only (unit tests).
        self._clients = clients
        self.names = names or ApiNames()
        self.physics = physics or make_physics("fast")
        self.trace_sample = trace_sample
        self._clock = clock
        self._rng = rng or random.Random()
        self._redis_url = redis_url
        self._redis: Any = None
        self._redis_last: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._buckets: dict[int, _Bucket] = defaultdict(_Bucket)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams: dict[str, str] = {}
        self._groups: set[str] = set()
        day = datetime.fromtimestamp(started or clock(), UTC).strftime("%Y/%m/%d")
        self._stream_prefix = day
        self._instance = os.urandom(16).hex()
        self.flushes = 0
        self.publish_errors = 0
        self._warned: set[str] = set()
        self._pending_logs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self._pending_traces: list[str] = []
        self._last_slow_flush = time.monotonic()
        p = self.physics
        self.service_delivery = Delivery(p.service_resolution, p.service_lag, p.storage_resolution,
                                         rng=self._rng, clock=clock, max_values=_MAX_VALUES)
        # EMF metrics keep the high resolution their directive declares; only their delay is physics.
        self.emf_delivery = Delivery(1, p.emf_lag, 1, rng=self._rng, clock=clock, max_values=_MAX_VALUES)
        self.shipper = LogShipper(state_dir) if state_dir is not None else None

    # -- recording (request path: cheap) -----------------------------------------------
    def record_invocation(self, *, function: str, resource: str, executed_version: str | None, version: str,
                          outcome: Outcome, duration_ms: float, release: str = "", detail: str = "",
                          method: str = "GET", path: str = "/", annotations: dict[str, Any] | None = None,
                          now: float | None = None) -> None:
        """One invocation request of ``function`` through ``resource`` (an alias, or the version for a direct invoke)."""
        now = self._clock() if now is None else now
        with self._lock:
            bucket = self._buckets[int(now)]
            stats = bucket.lam.setdefault((function, resource, executed_version), _LambdaStats())
            stats.release = release or stats.release
            stats.statuses[outcome.client_status] += 1
            if outcome.throttled:
                stats.throttles += 1
            else:
                stats.invocations += 1
                stats.durations.append(duration_ms)
                if outcome.error and len(stats.error_lines) < _ERROR_LINES_PER_SECOND:
                    stats.error_lines.append((now, f"ERROR Invoke Error {method} {path}: {detail}".strip()))
                stats.errors += 1 if outcome.error else 0
            if not outcome.throttled:
                self._maybe_trace(bucket, function, version, outcome, duration_ms, method, path, annotations, now)

    def record_rest(self, *, stage: str, status: int, latency_ms: float, integration_ms: float | None = None,
                    now: float | None = None) -> None:
        """One request through a stage of the REST API, with the status its client got."""
        now = self._clock() if now is None else now
        with self._lock:
            rest = self._buckets[int(now)].rest.setdefault(stage, _RestStats())
            rest.count += 1
            rest.latencies.append(latency_ms)
            if integration_ms is not None:
                rest.integration.append(integration_ms)
            if 400 <= status < 500:
                rest.e4xx += 1
            elif status >= 500:
                rest.e5xx += 1

    def record_ws(self, *, stage: str, route: str, integration_error: bool = False, client_error: bool = False,
                  execution_error: bool = False, integration_ms: float | None = None, messages: int = 1,
                  now: float | None = None) -> None:
        """One message of a WebSocket stage's route (``$connect`` for a handshake)."""
        now = self._clock() if now is None else now
        with self._lock:
            ws = self._buckets[int(now)].ws.setdefault((stage, route), _WsStats())
            ws.messages += messages
            if route == CONNECT_ROUTE and not client_error:
                ws.connects += 1  # ConnectCount: messages sent to the $connect route integration
            ws.integration_errors += 1 if integration_error else 0
            ws.client_errors += 1 if client_error else 0
            ws.execution_errors += 1 if execution_error else 0
            if integration_ms is not None:
                ws.integration.append(integration_ms)

    def _maybe_trace(self, bucket: _Bucket, function: str, version: str, outcome: Outcome, duration_ms: float,
                     method: str, path: str, annotations: dict[str, Any] | None, now: float) -> None:
        # The first invocation of each version each second, plus a few faults: every version that
        # served in a window has traces, without a segment per request.
        key = (function, version)
        fault = outcome.error or outcome.client_status >= 500
        faults_traced = sum(1 for t in bucket.traces if t["fault"])
        if key in bucket.traced and not (fault and faults_traced < _TRACE_ERRORS_PER_SECOND) \
                and self._rng.random() >= self.trace_sample:
            return
        bucket.traced.add(key)
        start = now - duration_ms / 1000.0
        segment: dict[str, Any] = {
            "name": function, "id": os.urandom(8).hex(), "trace_id": _trace_id(start),
            "start_time": start, "end_time": now, "origin": "AWS::Lambda::Function",
            "http": {"request": {"method": method, "url": path}, "response": {"status": outcome.client_status}},
            "error": 400 <= outcome.client_status < 500, "fault": fault,
        }
        if annotations:
            # Only what the function wrote (X-Ray: Lambda itself adds no version annotation).
            segment["annotations"] = dict(annotations)
        bucket.traces.append(segment)

    # -- flushing (background thread) -------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="telemetry-flush", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop flushing; publish what is left unless the flush thread is still stuck in a call."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                log.warning("telemetry flush still busy after %.0fs; the last seconds are not published", timeout)
                return
        self.flush(everything=True)

    def _loop(self) -> None:
        while True:
            # Just after each second boundary, so the second before is complete.
            delay = 1.05 - (time.time() % 1.0)
            if self._stop.wait(delay):
                return
            try:
                self.flush()
            except Exception as exc:  # a flush must never kill the thread
                self.publish_errors += 1
                log.warning("telemetry flush failed: %s: %s", type(exc).__name__, exc)

    def take(self, everything: bool = False) -> dict[int, _Bucket]:
        """Remove and return the completed seconds' buckets."""
        current = int(self._clock())
        with self._lock:
            done = {s: b for s, b in self._buckets.items() if everything or s < current}
            for second in done:
                del self._buckets[second]
        return done

    def flush(self, everything: bool = False) -> None:
        buckets = self.take(everything)
        logs, traces = self._pending_logs, self._pending_traces
        for second, bucket in sorted(buckets.items()):
            for namespace, datums in self.datums(second, bucket).items():
                self.service_delivery.add(namespace, datums)
            for function_version, events in self.log_events(second, bucket).items():
                logs[function_version].extend(events)
            traces.extend(json.dumps(t) for t in bucket.traces)
        cache = self._cache_datums()
        if cache:
            self.service_delivery.add(m.ELASTICACHE, cache)
        if self.shipper is not None:
            self.ingest(self.shipper.poll())
        if self._clients is None:
            return
        metric_data: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for delivery in (self.service_delivery, self.emf_delivery):
            for namespace, datums in delivery.due(everything).items():
                metric_data[namespace].extend(datums)
        # Logs and traces go out every SLOW_FLUSH seconds (CloudWatch Logs and X-Ray show them
        # seconds late on AWS too): each call costs moto a request whatever it carries.
        slow = everything or time.monotonic() - self._last_slow_flush >= SLOW_FLUSH
        if slow:
            self._pending_logs, self._pending_traces = defaultdict(list), []
            self._last_slow_flush = time.monotonic()
        self._publish(metric_data, logs if slow else {}, traces if slow else [])
        self.flushes += 1

    def ingest(self, documents: list[EmfDocument]) -> None:
        """EMF documents a release wrote: their metrics held for CloudWatch Logs' delay, the lines shipped."""
        for document in documents:
            for namespace, datums in document.datums.items():
                self.emf_delivery.add(namespace, datums)
            if document.function:
                self._pending_logs[(document.function, document.version)].append(
                    {"timestamp": document.timestamp_ms, "message": document.line})

    def datums(self, second: int, bucket: _Bucket) -> dict[str, list[dict[str, Any]]]:
        """CloudWatch datums, by namespace, for one second's bucket (AWS's dimension sets, see physics)."""
        ts = datetime.fromtimestamp(second, UTC)
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (function, resource, executed), stats in bucket.lam.items():
            for dims in lambda_dimension_sets(function, resource, executed):
                # A throttle is refused before any version runs: no ExecutedVersion (physics.py).
                per_version = any(d["Name"] == "ExecutedVersion" for d in dims)
                out[m.LAMBDA].extend(_lambda_datums(dims, ts, stats, throttles=not per_version))
        for stage, rest in bucket.rest.items():
            for dims in apigw_rest_dimension_sets(self.names.rest_api, stage):
                out[m.APIGATEWAY] += [
                    _count_datum(m.APIGW_COUNT, dims, ts, rest.count),
                    _count_datum(m.APIGW_4XX, dims, ts, rest.e4xx),
                    _count_datum(m.APIGW_5XX, dims, ts, rest.e5xx),
                    *_values_datums(m.APIGW_LATENCY, dims, ts, rest.latencies, "Milliseconds"),
                    *_values_datums(m.APIGW_INTEGRATION_LATENCY, dims, ts, rest.integration, "Milliseconds"),
                ]
        for (stage, route), ws in bucket.ws.items():
            # The API and stage totals are sums over routes: published with each route's share.
            for dims in apigw_ws_dimension_sets(self.names.ws_api, stage, route):
                counts = [(m.WS_MESSAGE_COUNT, ws.messages), (m.WS_INTEGRATION_ERROR, ws.integration_errors),
                          (m.WS_CLIENT_ERROR, ws.client_errors), (m.WS_EXECUTION_ERROR, ws.execution_errors)]
                if route == CONNECT_ROUTE:
                    counts.append((m.WS_CONNECT_COUNT, ws.connects))
                out[m.APIGATEWAY] += [_count_datum(name, dims, ts, value) for name, value in counts]
                out[m.APIGATEWAY] += _values_datums(m.WS_INTEGRATION_LATENCY, dims, ts, ws.integration,
                                                    "Milliseconds")
        return out

    def log_events(self, second: int, bucket: _Bucket) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """One REPORT line per version per second (plus a few error lines), Lambda-style."""
        events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for (function, resource, executed), stats in bucket.lam.items():
            version = executed or resource
            for at, line in stats.error_lines:
                events[(function, version)].append({"timestamp": int(at * 1000), "message": line})
            durations = sorted(stats.durations)
            p50 = durations[len(durations) // 2] if durations else 0.0
            peak = durations[-1] if durations else 0.0
            statuses = " ".join(f"{code}={n}" for code, n in sorted(stats.statuses.items()))
            line = (f"REPORT Version: {version} Resource: {function}:{resource} Release: {stats.release} "
                    f"Invocations: {stats.invocations} Errors: {stats.errors} Throttles: {stats.throttles} "
                    f"Duration p50: {p50:.1f} ms Max: {peak:.1f} ms Statuses: {statuses}")
            events[(function, version)].append({"timestamp": second * 1000 + 999, "message": line})
        return events

    def _cache_datums(self) -> list[dict[str, Any]]:
        """ElastiCache hit/miss from the real Redis's counters (deltas since the last flush), per node."""
        if not self._redis_url:
            return []
        try:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(self._redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            info = self._redis.info("stats")
            current = (int(info["keyspace_hits"]), int(info["keyspace_misses"]))
        except Exception as exc:
            self._warn_once("redis", f"cannot read Redis INFO for ElastiCache metrics: {type(exc).__name__}: {exc}")
            self._redis_last = None
            return []
        last, self._redis_last = self._redis_last, current
        if last is None or current[0] < last[0] or current[1] < last[1]:
            return []  # first reading, or Redis restarted: no delta to report
        hits, misses = current[0] - last[0], current[1] - last[1]
        ts = datetime.fromtimestamp(int(self._clock()) - 1, UTC)
        datums = []
        for dims in elasticache_dimension_sets(self.names.cache_group):
            datums += [_count_datum(m.CACHE_HITS, dims, ts, hits), _count_datum(m.CACHE_MISSES, dims, ts, misses)]
            if hits + misses:
                datums.append(_count_datum(m.CACHE_HIT_RATE, dims, ts, 100.0 * hits / (hits + misses),
                                           unit="Percent"))
        return datums

    # -- publishing ------------------------------------------------------------------
    def _publish(self, metric_data: dict[str, list[dict[str, Any]]],
                 logs: dict[tuple[str, str], list[dict[str, Any]]], traces: list[str]) -> None:
        assert self._clients is not None
        for namespace, datums in metric_data.items():
            for i in range(0, len(datums), _MAX_DATUMS):
                self._call("cloudwatch", "put_metric_data", Namespace=namespace,
                           MetricData=datums[i:i + _MAX_DATUMS])
        for (function, version), events in logs.items():
            stream = self._stream(function, version)
            if stream:
                self._call("logs", "put_log_events", logGroupName=m.log_group(function),
                           logStreamName=stream, logEvents=sorted(events, key=lambda e: e["timestamp"]))
        for i in range(0, len(traces), 50):
            self._call("xray", "put_trace_segments", TraceSegmentDocuments=traces[i:i + 50])

    def _stream(self, function: str, version: str) -> str | None:
        """The version's log stream, ``YYYY/MM/DD/[N]<id>`` as Lambda names them (created once)."""
        key = f"{function}:{version}"
        if key in self._streams:
            return self._streams[key]
        group = m.log_group(function)
        client = self._clients["logs"] if self._clients else None
        if client is None:
            return None
        try:
            if group not in self._groups:
                try:
                    client.create_log_group(logGroupName=group)
                except client.exceptions.ResourceAlreadyExistsException:
                    pass
                self._groups.add(group)
            name = f"{self._stream_prefix}/[{version}]{self._instance}"
            try:
                client.create_log_stream(logGroupName=group, logStreamName=name)
            except client.exceptions.ResourceAlreadyExistsException:
                pass
        except Exception as exc:
            self.publish_errors += 1
            self._warn_once(f"stream:{key}", f"cannot create log stream for {key}: {type(exc).__name__}: {exc}")
            return None
        self._streams[key] = name
        return name

    def _call(self, service: str, operation: str, **kwargs: Any) -> None:
        assert self._clients is not None
        try:
            getattr(self._clients[service], operation)(**kwargs)
        except Exception as exc:  # moto down: drop this batch, say so once per cause
            self.publish_errors += 1
            self._warn_once(f"{service}.{operation}", f"{service}.{operation} failed: {type(exc).__name__}: {exc}")
        else:
            self._warned.discard(f"{service}.{operation}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _lambda_datums(dims: list[dict[str, str]], ts: datetime, stats: _LambdaStats,
                   throttles: bool = True) -> list[dict[str, Any]]:
    datums = [
        _count_datum(m.LAMBDA_INVOCATIONS, dims, ts, stats.invocations),
        _count_datum(m.LAMBDA_ERRORS, dims, ts, stats.errors),
    ]
    if throttles:
        datums.append(_count_datum(m.LAMBDA_THROTTLES, dims, ts, stats.throttles))
    if stats.durations:
        datums += _values_datums(m.LAMBDA_DURATION, dims, ts, stats.durations, "Milliseconds")
    return datums
