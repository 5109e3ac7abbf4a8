"""A deterministic CloudWatch on a virtual clock, for simulations that drive the gate's real watch.

What it plays is ``sandbox/physics.py``'s ``aws`` physics, not moto: AWS's service
metrics (AWS/Lambda per ExecutedVersion, AWS/ApiGateway per API and stage, the
WebSocket API's $connect route, ElastiCache per node) in 60-s datapoints, each
minute visible only after a lag drawn between 60 and 180 s (or never, for the
minutes listed in ``lost_minutes``); the functions' EMF metrics per version at
1-s resolution, seconds late. ``get_metric_data`` answers as CloudWatch does:
StartTime rounded down, sub-minute periods only for high-resolution series,
Sum / SampleCount / nearest-rank percentiles per period.

Traffic is generated per virtual second from a :class:`Workload` with a seeded
NumPy generator, so a run is the same every time for a seed.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pytest_llamadeploy import metricnames as mn
from pytest_llamadeploy.sandbox.moto_ext import request_start
from pytest_llamadeploy.sandbox.physics import EMF_LAG_AWS, SERVICE_LAG_AWS, Delivery

SERVICE_NAMESPACE = "LlamaDeploy/Service"
API, WS = "onchain-api", "onchain-ws"
ALIAS = "live"


class VirtualClock:
    def __init__(self, start: float):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Faults:
    """What is wrong with a version (all zero: healthy)."""

    error_rate: float = 0.0          # handled 5xx answers
    unhandled_error_rate: float = 0.0  # the handler raises: a Lambda Error, and a 5xx to the user
    latency_ms: float = 0.0          # added to every request
    ws_connect_error_rate: float = 0.0
    event_drop_rate: float = 0.0
    slow_query_ms: float = 0.0       # added to every database query
    cache_bypass: bool = False       # every lookup a miss, read from the database


@dataclass(frozen=True)
class Workload:
    """The service's traffic, and how it is split between an old and a new version."""

    #: API requests per second through the alias (100/s: 600 a minute on the new version at 10 %).
    rps: float = 100.0
    #: WebSocket connects per second: sparse (30 a minute on the new version at 10 %).
    cps: float = 5.0
    #: Event deliveries per second (events x subscribed clients), split as the connections are.
    dps: float = 100.0
    #: Request latency: lognormal around this median (ms).
    latency_median_ms: float = 60.0
    latency_sigma: float = 0.4
    weight: float = 0.0
    old: str = "1"
    new: str = "2"
    new_faults: Faults = field(default_factory=Faults)


class CloudWatchSim:
    """Publishes a workload's metrics second by second under AWS's physics; answers GetMetricData."""

    def __init__(self, clock: VirtualClock, seed: int, *, lost_minutes: tuple[int, ...] = (),
                 rest_api: str = "onchain-api", rest_stage: str = "live", ws_api: str = "onchain-ws",
                 ws_stage: str = "live", cache_node: str = "onchain-redis-001"):
        import random

        self.clock = clock
        self.rng = np.random.default_rng(seed)
        draw = random.Random(seed)
        self.service = Delivery(60, SERVICE_LAG_AWS, 60, rng=draw, clock=clock)
        self.emf = Delivery(1, EMF_LAG_AWS, 1, rng=draw, clock=clock)
        #: Minutes (epoch // 60) of AWS/* data that never arrive.
        self.lost_minutes = set(lost_minutes)
        self.rest = mn.dims(("ApiName", rest_api), ("Stage", rest_stage))
        self.ws_connect = mn.dims(("ApiId", ws_api), ("Stage", ws_stage), ("Route", mn.WS_CONNECT_ROUTE))
        self.cache = mn.dims(("CacheClusterId", cache_node))
        #: series -> bucket start -> [sum, sample count, values]
        self._store: dict[tuple[Any, ...], dict[int, list[Any]]] = defaultdict(dict)
        #: series -> its bucket starts, sorted (cells never change once delivered: one release per bucket)
        self._stamps: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        #: (series, bucket start, stat) -> value of a single-cell bucket (immutable once delivered)
        self._memo: dict[tuple[Any, ...], float | None] = {}
        self._high_resolution: set[tuple[Any, ...]] = set()
        self.calls = 0
        self.generated_to = math.floor(clock.now)

    # ---------------------------------------------------------------- publishing

    def run_until(self, t: float, workload: Workload) -> None:
        """Generate every whole second up to ``t`` with ``workload``, then move the clock to ``t``."""
        while self.generated_to + 1 <= t:
            self._second(self.generated_to, workload)
            self.generated_to += 1
        self.clock.now = t
        self._deliver()

    def _second(self, second: int, w: Workload) -> None:
        ts = datetime.fromtimestamp(second, UTC)
        service: dict[str, list[dict[str, Any]]] = defaultdict(list)
        emf: list[dict[str, Any]] = []
        total = {"count": 0, "5xx": 0}
        for version, share, faults in ((w.old, 1.0 - w.weight, Faults()), (w.new, w.weight, w.new_faults)):
            if share <= 0:
                continue
            n = int(self.rng.poisson(w.rps * share))
            handled = int(self.rng.binomial(n, faults.error_rate)) if n else 0
            unhandled = int(self.rng.binomial(n - handled, faults.unhandled_error_rate)) if n else 0
            latencies = np.round(self.rng.lognormal(math.log(w.latency_median_ms), w.latency_sigma, n)
                                 + faults.latency_ms).tolist()
            total["count"] += n
            total["5xx"] += handled + unhandled
            emf_dims = mn.service_dims(API, version)
            emf += [_datum(mn.SVC_REQUESTS, emf_dims, ts, n), _datum(mn.SVC_5XX, emf_dims, ts, handled + unhandled)]
            if latencies:
                emf.append(_values(mn.SVC_LATENCY, emf_dims, ts, latencies))
            # Cache lookups: 90 % hits; each miss is one database query (~4 ms median).
            misses = n if faults.cache_bypass else (int(self.rng.binomial(n, 0.1)) if n else 0)
            emf += [_datum(mn.SVC_CACHE_HITS, emf_dims, ts, n - misses),
                    _datum(mn.SVC_CACHE_MISSES, emf_dims, ts, misses)]
            if misses:
                queries = np.round(self.rng.lognormal(math.log(4.0), w.latency_sigma, misses)
                                   + faults.slow_query_ms, 3).tolist()
                emf.append(_values(mn.SVC_DB_TIME, emf_dims, ts, queries))
            for dims in (mn.lambda_version_dims(API, ALIAS, version), mn.lambda_alias_dims(API, ALIAS)):
                service[mn.LAMBDA] += [_datum(mn.LAMBDA_INVOCATIONS, dims, ts, n),
                                       _datum(mn.LAMBDA_ERRORS, dims, ts, unhandled)]
                if latencies:
                    service[mn.LAMBDA].append(_values(mn.LAMBDA_DURATION, dims, ts, latencies))
            connects = int(self.rng.poisson(w.cps * share))
            refused = int(self.rng.binomial(connects, faults.ws_connect_error_rate)) if connects else 0
            ws_dims = mn.service_dims(WS, version)
            emf += [_datum(mn.SVC_WS_CONNECTS, ws_dims, ts, connects),
                    _datum(mn.SVC_WS_CONNECT_ERRORS, ws_dims, ts, refused)]
            due = int(self.rng.poisson(w.dps * share))
            delivered = due - (int(self.rng.binomial(due, faults.event_drop_rate)) if due else 0)
            emf += [_datum(mn.SVC_EVENTS_TO_DELIVER, ws_dims, ts, due),
                    _datum(mn.SVC_EVENTS_DELIVERED, ws_dims, ts, delivered)]
            if delivered:
                delays = np.round(self.rng.lognormal(math.log(8.0), w.latency_sigma, delivered)).tolist()
                emf.append(_values(mn.SVC_EVENT_LATENCY, ws_dims, ts, delays))
            handshakes = np.round(self.rng.lognormal(math.log(20.0), w.latency_sigma, connects)).tolist()
            for dims in (mn.lambda_version_dims(WS, ALIAS, version), mn.lambda_alias_dims(WS, ALIAS)):
                # A $connect handler that refuses ran fine: no Lambda Error (physics.py).
                service[mn.LAMBDA] += [_datum(mn.LAMBDA_INVOCATIONS, dims, ts, connects),
                                       _datum(mn.LAMBDA_ERRORS, dims, ts, 0)]
                if handshakes:
                    service[mn.LAMBDA].append(_values(mn.LAMBDA_DURATION, dims, ts, handshakes))
            service[mn.APIGATEWAY] += [_datum(mn.WS_CONNECT_COUNT, self.ws_connect, ts, connects),
                                       _datum(mn.WS_INTEGRATION_ERROR, self.ws_connect, ts, refused)]
        for fn in (API, WS):
            service[mn.LAMBDA].append(_datum(mn.LAMBDA_THROTTLES, mn.lambda_alias_dims(fn, ALIAS), ts, 0))
        service[mn.APIGATEWAY] += [_datum(mn.APIGW_COUNT, self.rest, ts, total["count"]),
                                   _datum(mn.APIGW_5XX, self.rest, ts, total["5xx"])]
        hits = int(self.rng.binomial(total["count"], 0.9)) if total["count"] else 0
        service[mn.ELASTICACHE] += [_datum(mn.CACHE_HITS, self.cache, ts, hits),
                                    _datum(mn.CACHE_MISSES, self.cache, ts, total["count"] - hits)]
        for namespace, datums in service.items():
            self.service.add(namespace, datums)
        self.emf.add(SERVICE_NAMESPACE, emf)

    def _deliver(self) -> None:
        for delivery, high in ((self.service, False), (self.emf, True)):
            for namespace, datums in delivery.due().items():
                for d in datums:
                    stamp = int(d["Timestamp"].timestamp())
                    if not high and stamp // 60 in self.lost_minutes:
                        continue
                    key = (namespace, d["MetricName"], tuple(sorted((x["Name"], x["Value"]) for x in d["Dimensions"])))
                    if high:
                        self._high_resolution.add(key)
                    if stamp not in self._store[key]:
                        bisect.insort(self._stamps[key], stamp)
                    cell = self._store[key].setdefault(stamp, [0.0, 0.0, []])
                    if "Value" in d:
                        cell[0] += d["Value"]
                        cell[1] += 1
                    for value, count in zip(d.get("Values", []), d.get("Counts", []), strict=True):
                        cell[0] += value * count
                        cell[1] += count
                        cell[2].extend([value] * int(count))

    # ---------------------------------------------------------------- reading

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        requested = kw["StartTime"].timestamp()
        end = kw["EndTime"].timestamp()
        results = []
        for query in kw["MetricDataQueries"]:
            stat_spec = query["MetricStat"]
            metric = stat_spec["Metric"]
            period = int(stat_spec["Period"])
            assert period in (1, 5, 10, 20, 30) or period % 60 == 0, f"CloudWatch refuses Period {period}"
            key = (metric["Namespace"], metric["MetricName"],
                   tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", []))))
            stamps: list[datetime] = []
            values: list[float] = []
            if period >= 60 or key in self._high_resolution:
                start = request_start(datetime.fromtimestamp(requested, UTC).replace(tzinfo=None), period)
                start_epoch = start.replace(tzinfo=UTC).timestamp()
                buckets: dict[int, list[int]] = defaultdict(list)
                stamps_of = self._stamps.get(key, [])
                for stamp in stamps_of[bisect.bisect_left(stamps_of, start_epoch):bisect.bisect_left(stamps_of, end)]:
                    buckets[int((stamp - start_epoch) // period)].append(stamp)
                cells = self._store.get(key, {})
                for index in sorted(buckets):
                    members = buckets[index]
                    if len(members) == 1:
                        memo = (key, members[0], stat_spec["Stat"])
                        if memo not in self._memo:
                            self._memo[memo] = _statistic([cells[members[0]]], stat_spec["Stat"])
                        value = self._memo[memo]
                    else:
                        value = _statistic([cells[m] for m in members], stat_spec["Stat"])
                    if value is not None:
                        stamps.append(datetime.fromtimestamp(start_epoch + index * period, UTC))
                        values.append(value)
            results.append({"Id": query["Id"], "Timestamps": stamps, "Values": values, "StatusCode": "Complete"})
        return {"MetricDataResults": results}


def _statistic(cells: list[list[Any]], stat: str) -> float | None:
    if stat == "Sum":
        return float(sum(c[0] for c in cells))
    if stat == "SampleCount":
        return float(sum(c[1] for c in cells))
    # A delivered cell never changes: its values are kept as an array for every later read (a poll
    # asks for minutes of 1-s cells each time; sorting them in Python was most of this module's time).
    for c in cells:
        if len(c) == 3:
            c.append(np.asarray(c[2], dtype=float))
    values = np.concatenate([c[3] for c in cells]) if len(cells) > 1 else cells[0][3]
    if not len(values):
        return None
    # Nearest rank, as the sandbox's moto_ext computes percentiles.
    rank = min(max(1, math.ceil(float(stat[1:]) / 100.0 * len(values))), len(values))
    return float(np.partition(values, rank - 1)[rank - 1])


def _datum(name: str, dims: list[dict[str, str]], ts: datetime, value: float) -> dict[str, Any]:
    return {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Value": float(value)}


def _values(name: str, dims: list[dict[str, str]], ts: datetime, values: list[float]) -> dict[str, Any]:
    counts: dict[float, float] = {}
    for v in values:
        counts[v] = counts.get(v, 0.0) + 1.0
    return {"MetricName": name, "Dimensions": dims, "Timestamp": ts, "Values": list(counts),
            "Counts": list(counts.values())}


def with_weight(workload: Workload, weight: float) -> Workload:
    return replace(workload, weight=weight)
