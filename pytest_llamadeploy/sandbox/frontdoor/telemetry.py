"""What the front door tells CloudWatch, CloudWatch Logs and X-Ray, once a second.

Requests only append to an in-memory bucket for the current second (a lock
and a few additions); a background thread flushes completed seconds, so
publication never slows a request. Series and semantics: ``sandbox/metricnames.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ... import metricnames as m
from .. import metricnames as sm

log = logging.getLogger("llamadeploy.frontdoor")

#: put_metric_data takes at most 150 distinct values per datum and 1000 datums per call.
_MAX_VALUES = 150
_MAX_DATUMS = 1000
_ERROR_LINES_PER_SECOND = 5
#: Seconds between publications of log events and trace segments (metrics go every second).
SLOW_FLUSH = 5.0
_TRACE_ERRORS_PER_SECOND = 3


@dataclass
class _VersionStats:
    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    durations: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    release: str = ""
    error_lines: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class _WsStats:
    attempts: int = 0
    errors: int = 0


@dataclass
class _ApiStats:
    count: int = 0
    e4xx: int = 0
    e5xx: int = 0
    latencies: list[float] = field(default_factory=list)
    ws_connects: int = 0


@dataclass
class _Bucket:
    #: (function, resource, version or "") -> stats; resource "live" = alias-routed, "N" = targeted.
    lam: dict[tuple[str, str, str], _VersionStats] = field(default_factory=dict)
    ws: dict[tuple[str, str], _WsStats] = field(default_factory=dict)
    api: _ApiStats = field(default_factory=_ApiStats)
    traces: list[dict[str, Any]] = field(default_factory=list)
    traced: set[tuple[str, str]] = field(default_factory=set)


def _trace_id(now: float) -> str:
    return f"1-{int(now):08x}-{os.urandom(12).hex()}"


def _values_datums(name: str, dims: list[dict[str, str]], ts: datetime, values: list[float],
                   unit: str) -> list[dict[str, Any]]:
    counts = Counter(round(v, 1) for v in values)
    items = sorted(counts.items())
    return [
        {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Unit": unit, "StorageResolution": 1,
         "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk]}
        for chunk in (items[i:i + _MAX_VALUES] for i in range(0, len(items), _MAX_VALUES))
    ]


def _count_datum(name: str, dims: list[dict[str, str]], ts: datetime, value: float,
                 unit: str = "Count") -> dict[str, Any]:
    return {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Unit": unit,
            "StorageResolution": 1, "Value": float(value)}


class Telemetry:
    """Per-second aggregates of what the front door served, flushed to the AWS endpoint."""

    def __init__(self, clients: dict[str, Any] | None, alias: str = sm.LAMBDA_ALIAS,
                 redis_url: str = "", trace_sample: float = 0.05, started: float | None = None):
        #: service -> boto3 client ("cloudwatch", "logs", "xray"); None: aggregate only (unit tests).
        self._clients = clients
        self.alias = alias
        self.trace_sample = trace_sample
        self._redis_url = redis_url
        self._redis: Any = None
        self._redis_last: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._buckets: dict[int, _Bucket] = defaultdict(_Bucket)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams: dict[str, str] = {}
        self._groups: set[str] = set()
        day = datetime.fromtimestamp(started or time.time(), UTC).strftime("%Y/%m/%d")
        self._stream_prefix = day
        self._instance = os.urandom(16).hex()
        self.flushes = 0
        self.publish_errors = 0
        self._pending_logs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self._pending_traces: list[str] = []
        self._last_slow_flush = time.monotonic()
        self._warned: set[str] = set()

    # -- recording (request path: cheap) -----------------------------------------------
    def record_invocation(self, *, function: str, version: str, targeted: bool, status: int,
                          duration_ms: float, release: str = "", detail: str = "",
                          method: str = "GET", path: str = "/", now: float | None = None) -> None:
        now = time.time() if now is None else now
        resource = version if targeted else self.alias
        with self._lock:
            bucket = self._buckets[int(now)]
            stats = bucket.lam.setdefault((function, resource, version), _VersionStats())
            stats.release = release or stats.release
            stats.statuses[status] += 1
            if status == 429:
                stats.throttles += 1
            else:
                stats.invocations += 1
                stats.durations.append(duration_ms)
                if status >= 500:
                    stats.errors += 1
                    if len(stats.error_lines) < _ERROR_LINES_PER_SECOND:
                        stats.error_lines.append((now, f"ERROR {method} {path} -> {status} {detail}".strip()))
            self._maybe_trace(bucket, function, version, status, duration_ms, release, method, path, now)

    def record_api(self, *, status: int, latency_ms: float, now: float | None = None) -> None:
        """One REST request through API Gateway (alias-routed requests only)."""
        now = time.time() if now is None else now
        with self._lock:
            api = self._buckets[int(now)].api
            api.count += 1
            api.latencies.append(latency_ms)
            if 400 <= status < 500:
                api.e4xx += 1
            elif status >= 500:
                api.e5xx += 1

    def record_ws_connect(self, *, function: str, version: str, targeted: bool, ok: bool,
                          duration_ms: float, release: str = "", detail: str = "",
                          now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.record_invocation(function=function, version=version, targeted=targeted,
                               status=200 if ok else 502, duration_ms=duration_ms, release=release,
                               detail=detail, method="WS", path="$connect", now=now)
        if targeted:
            return
        with self._lock:
            bucket = self._buckets[int(now)]
            ws = bucket.ws.setdefault((function, version), _WsStats())
            ws.attempts += 1
            ws.errors += 0 if ok else 1
            bucket.api.ws_connects += 1 if ok else 0

    def _maybe_trace(self, bucket: _Bucket, function: str, version: str, status: int, duration_ms: float,
                     release: str, method: str, path: str, now: float) -> None:
        # The first request of each version each second, plus a few errors: every version that
        # served in a window has traces, without a segment per request.
        key = (function, version)
        is_error = status >= 500
        errors_traced = sum(1 for t in bucket.traces if t["fault"])
        if key in bucket.traced and not (is_error and errors_traced < _TRACE_ERRORS_PER_SECOND) \
                and random.random() >= self.trace_sample:
            return
        bucket.traced.add(key)
        start = now - duration_ms / 1000.0
        bucket.traces.append({
            "name": function, "id": os.urandom(8).hex(), "trace_id": _trace_id(start),
            "start_time": start, "end_time": now, "origin": "AWS::Lambda::Function",
            "http": {"request": {"method": method, "url": path}, "response": {"status": status}},
            "error": 400 <= status < 500, "fault": is_error, "throttle": status == 429,
            "annotations": {"ExecutedVersion": version, "FunctionName": function, "Release": release},
            "metadata": {"llamadeploy": {"resource": f"{function}:{version}", "status": status}},
        })

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
        current = int(time.time())
        with self._lock:
            done = {s: b for s, b in self._buckets.items() if everything or s < current}
            for second in done:
                del self._buckets[second]
        return done

    def flush(self, everything: bool = False) -> None:
        buckets = self.take(everything)
        cache = self._cache_datums()
        if self._clients is None:
            return
        metric_data: dict[str, list[dict[str, Any]]] = defaultdict(list)
        logs, traces = self._pending_logs, self._pending_traces
        for second, bucket in sorted(buckets.items()):
            for namespace, datums in self.datums(second, bucket).items():
                metric_data[namespace].extend(datums)
            for function_version, events in self.log_events(second, bucket).items():
                logs[function_version].extend(events)
            traces.extend(json.dumps(t) for t in bucket.traces)
        now_ts = datetime.fromtimestamp(int(time.time()) - 1, UTC)
        metric_data[m.ELASTICACHE].extend(d | {"Timestamp": now_ts} for d in cache)
        if buckets or cache:
            metric_data[m.DYNAMODB].extend(self._dynamodb_datums(now_ts))
        # Logs and traces go out every SLOW_FLUSH seconds (CloudWatch Logs and X-Ray show them
        # seconds late on AWS too): each call costs moto a request whatever it carries.
        slow = everything or time.monotonic() - self._last_slow_flush >= SLOW_FLUSH
        if slow:
            self._pending_logs, self._pending_traces = defaultdict(list), []
            self._last_slow_flush = time.monotonic()
        self._publish(metric_data, logs if slow else {}, traces if slow else [])
        self.flushes += 1

    def datums(self, second: int, bucket: _Bucket) -> dict[str, list[dict[str, Any]]]:
        """CloudWatch datums, by namespace, for one second's bucket."""
        ts = datetime.fromtimestamp(second, UTC)
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        totals: dict[tuple[str, ...], _VersionStats] = defaultdict(_VersionStats)
        for (function, resource, version), stats in bucket.lam.items():
            if resource == self.alias:
                dim_sets = [m.lambda_version_dims(function, self.alias, version)]
                for rollup in (("alias", function), ("function", function)):
                    _add(totals[rollup], stats)
            else:
                dim_sets = [sm.lambda_qualified_dims(function, version)]
                _add(totals[("function", function)], stats)
            for dims in dim_sets:
                out[m.LAMBDA].extend(_lambda_datums(dims, ts, stats))
        for key, stats in totals.items():
            kind, function = key[0], key[1]
            dims = sm.lambda_alias_dims(function, self.alias) if kind == "alias" else m.lambda_function_dims(function)
            out[m.LAMBDA].extend(_lambda_datums(dims, ts, stats))
        api = bucket.api
        if api.count:
            dims = m.apigw_rest_dims()
            out[m.APIGATEWAY] += [
                _count_datum(m.APIGW_COUNT, dims, ts, api.count),
                _count_datum(m.APIGW_4XX, dims, ts, api.e4xx),
                _count_datum(m.APIGW_5XX, dims, ts, api.e5xx),
                *_values_datums(m.APIGW_LATENCY, dims, ts, api.latencies, "Milliseconds"),
            ]
        if bucket.ws:
            out[m.APIGATEWAY].append(_count_datum(m.WS_CONNECT_COUNT, m.apigw_ws_dims(), ts, api.ws_connects))
        for (function, version), ws in bucket.ws.items():
            dims = m.lambda_version_dims(function, self.alias, version)
            out[sm.WEBSOCKET] += [
                _count_datum(sm.WS_CONNECT_ATTEMPTS, dims, ts, ws.attempts),
                _count_datum(sm.WS_CONNECT_ERRORS, dims, ts, ws.errors),
            ]
        return out

    def log_events(self, second: int, bucket: _Bucket) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """One REPORT line per version per second (plus a few error lines), Lambda-style."""
        events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        merged: dict[tuple[str, str], list[tuple[str, _VersionStats]]] = defaultdict(list)
        for (function, resource, version), stats in bucket.lam.items():
            merged[(function, version)].append((resource, stats))
        for (function, version), parts in merged.items():
            for resource, stats in parts:
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
        """ElastiCache hit/miss from the real Redis's counters (deltas since the last second)."""
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
        dims = m.elasticache_dims()
        datums = [_count_datum(m.CACHE_HITS, dims, datetime.now(UTC), hits),
                  _count_datum(m.CACHE_MISSES, dims, datetime.now(UTC), misses)]
        if hits + misses:
            datums.append(_count_datum(sm.CACHE_HIT_RATE, dims, datetime.now(UTC),
                                       100.0 * hits / (hits + misses), unit="Percent"))
        return datums

    @staticmethod
    def _dynamodb_datums(ts: datetime) -> list[dict[str, Any]]:
        dims = m.dynamodb_dims()
        return [_count_datum(name, dims, ts, 0)
                for name in (m.DDB_READ_THROTTLES, m.DDB_WRITE_THROTTLES, sm.DDB_THROTTLED_REQUESTS)]

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
                self._call("logs", "put_log_events", logGroupName=sm.log_group(function),
                           logStreamName=stream, logEvents=sorted(events, key=lambda e: e["timestamp"]))
        for i in range(0, len(traces), 50):
            self._call("xray", "put_trace_segments", TraceSegmentDocuments=traces[i:i + 50])

    def _stream(self, function: str, version: str) -> str | None:
        """The version's log stream, ``YYYY/MM/DD/[N]<id>`` as Lambda names them (created once)."""
        key = f"{function}:{version}"
        if key in self._streams:
            return self._streams[key]
        group = sm.log_group(function)
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
        except Exception as exc:  # moto down: drop this second, say so once per cause
            self.publish_errors += 1
            self._warn_once(f"{service}.{operation}", f"{service}.{operation} failed: {type(exc).__name__}: {exc}")
        else:
            self._warned.discard(f"{service}.{operation}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _add(total: _VersionStats, stats: _VersionStats) -> None:
    total.invocations += stats.invocations
    total.errors += stats.errors
    total.throttles += stats.throttles
    total.durations.extend(stats.durations)


def _lambda_datums(dims: list[dict[str, str]], ts: datetime, stats: _VersionStats) -> list[dict[str, Any]]:
    datums = [
        _count_datum(m.LAMBDA_INVOCATIONS, dims, ts, stats.invocations),
        _count_datum(m.LAMBDA_ERRORS, dims, ts, stats.errors),
        _count_datum(m.LAMBDA_THROTTLES, dims, ts, stats.throttles),
    ]
    if stats.durations:
        datums += _values_datums(m.LAMBDA_DURATION, dims, ts, stats.durations, "Milliseconds")
    return datums
