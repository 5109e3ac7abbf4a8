"""The performance gate: one load run per session, then one verdict per runbook threshold.

``run_performance`` runs the load (Locust subprocess) while reading Redis's
cache counters before and after, then times the representative queries.
``check_*`` turn that evidence into a failure message naming the metric, its
value, the threshold (and its policy key), the load and the release, or None
when the metric is healthy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..redact import redact
from ..reporting.categories import INCONCLUSIVE, PROVIDER_ERROR, THRESHOLD_BREACHED
from .cache import CacheCounters, CacheDelta
from .options import LoadOptions
from .queries import QueryTiming, service_timings, time_queries_directly
from .runner import LoadResult, LocustRun, run_locust
from .stats import RunStats

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: Name suffix of the locustfile's fresh reads (``Cache-Control: no-cache``; locustfile.FRESH,
#: not imported: the locustfile imports locust, which must stay out of this process).
FRESH_SUFFIX = "(fresh)"
#: Samples per representative query on the gate's own connection.
DIRECT_SAMPLES = 30
#: Fewer WebSocket events than this is no evidence of latency, whatever their p95.
MIN_WS_EVENTS = 5
#: Written next to the locust artifacts so every xdist worker gates on the same single load.
EVIDENCE_FILE = "performance-evidence.json"


@dataclass(frozen=True)
class Thresholds:
    api_p95: float
    max_failure_ratio: float
    ws_p95: float
    db_p95: float
    cache_hit_rate: float
    queries: tuple[str, ...]

    @classmethod
    def from_policy(cls, performance: Any) -> Thresholds:
        return cls(performance.api_p95, performance.max_failure_ratio, performance.ws_p95, performance.db_p95,
                   performance.cache_hit_rate, tuple(performance.queries))


@dataclass(frozen=True)
class PerformanceEvidence:
    load: LoadResult
    cache: CacheDelta | None
    queries: tuple[QueryTiming, ...]
    release: str = ""
    target: str = ""
    #: Problems met while gathering evidence (Redis or PostgreSQL unreachable): each check reports its own.
    errors: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        text = f"load: {self.load.load_description} against {redact(self.target)}"
        return text + (f", release {self.release}" if self.release else "")

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the evidence in another process (xdist workers share one load)."""
        run = self.load.run
        return {
            "run": {**{k: getattr(run, k) for k in run.__dataclass_fields__}, "locustfile": str(run.locustfile)},
            "load": {"json_path": str(self.load.json_path), "html_path": str(self.load.html_path),
                     "log_path": str(self.load.log_path), "command": self.load.command,
                     "returncode": self.load.returncode, "elapsed": self.load.elapsed},
            "cache": None if self.cache is None else {k: getattr(self.cache, k) for k in self.cache.__dataclass_fields__},
            "queries": [{"name": q.name, "source": q.source, "samples": list(q.samples)} for q in self.queries],
            "release": self.release,
            "target": self.target,
            "errors": self.errors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerformanceEvidence:
        run_data = dict(data["run"])
        run_data["locustfile"] = Path(run_data["locustfile"])
        for key in ("user_classes", "tags", "exclude_tags"):
            run_data[key] = tuple(run_data.get(key) or ())
        loaded = data["load"]
        json_path = Path(loaded["json_path"])
        load = LoadResult(LocustRun(**run_data), RunStats.load(json_path), json_path, Path(loaded["html_path"]),
                          Path(loaded["log_path"]), loaded["command"], loaded["returncode"], loaded["elapsed"])
        cache = None if data.get("cache") is None else CacheDelta(**data["cache"])
        queries = tuple(QueryTiming(q["name"], q["source"], tuple(q["samples"])) for q in data.get("queries", []))
        return cls(load, cache, queries, data.get("release", ""), data.get("target", ""), dict(data.get("errors", {})))

    def summary(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "load": self.load.summary(),
            "api": self.load.http.summary(),
            "ws_events": self.load.ws_events.summary(),
            "ws_connects": self.load.ws_connects.summary(),
            "cache": None if self.cache is None else self.cache.summary(),
            "queries": [q.summary() for q in self.queries],
            "errors": self.errors,
        }


def run_performance(
    *,
    api_url: str,
    ws_url: str,
    redis_url: str,
    postgres_dsn: str,
    users: int,
    spawn_rate: float,
    duration: float,
    queries: Sequence[str],
    artifacts_dir: Path,
    options: LoadOptions | None = None,
    release: str = "",
    locustfile: Path = LOCUSTFILE,
    extra_env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> PerformanceEvidence:
    """Load the service as the policy says and gather every metric the gate checks."""
    options = options or LoadOptions()
    errors: dict[str, str] = {}
    redis_client = None
    before: CacheCounters | None = None
    if redis_url:
        try:
            import redis

            redis_client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
            before = CacheCounters.read(redis_client)
        except Exception as exc:  # noqa: BLE001 - reported by the cache check, the load still runs
            errors["cache"] = f"Redis at {redact(redis_url)} unreadable before the load: {redact(str(exc))}"
            redis_client = None
    else:
        errors["cache"] = "no redis_url target (policy key targets.redis_url)"

    env = {"LLAMA_WS_URL": ws_url, **(extra_env or {})}
    load = run_locust(
        locustfile, api_url, users, spawn_rate, duration, artifacts_dir=artifacts_dir,
        processes=options.processes, expect_workers=options.expect_workers,
        master_bind_host=options.master_bind_host,
        master_bind_port=options.master_bind_port if options.expect_workers else None,
        env=env, timeout=timeout, name="performance",
    )

    cache: CacheDelta | None = None
    timings: list[QueryTiming] = []
    if redis_client is not None and before is not None:
        try:
            cache = CacheDelta.between(before, CacheCounters.read(redis_client))
            # Every service cache miss and every fresh read is one database read: that bounds
            # the service timings to this load.
            reads = cache.service_misses if cache.service_misses is not None else cache.misses
            reads += fresh_reads(load.stats)
            timings += service_timings(redis_client, queries, reads)
        except Exception as exc:  # noqa: BLE001
            errors["cache"] = f"Redis at {redact(redis_url)} unreadable after the load: {redact(str(exc))}"
        finally:
            redis_client.close()
    if postgres_dsn and queries:
        try:
            timings = time_queries_directly(postgres_dsn, queries, DIRECT_SAMPLES) + timings
        except Exception as exc:  # noqa: BLE001 - reported by the DB check
            errors["db"] = f"cannot time queries on {redact(postgres_dsn)}: {redact(str(exc), [postgres_dsn])}"
    elif queries:
        errors["db"] = "no postgres_dsn target (policy key targets.postgres_dsn)"

    evidence = PerformanceEvidence(load, cache, tuple(timings), release, api_url, errors)
    (Path(artifacts_dir) / "performance-summary.json").write_text(json.dumps(evidence.summary(), indent=2, default=str))
    (Path(artifacts_dir) / EVIDENCE_FILE).write_text(json.dumps(evidence.to_json(), default=str))
    return evidence


# -- verdicts: None when healthy, else the message --------------------------------------------------------------


def check_api(ev: PerformanceEvidence, t: Thresholds) -> list[str]:
    api = ev.load.http
    problems = []
    if api.num_requests == 0:
        return [f"{INCONCLUSIVE} API: no HTTP request completed during the load; {ev.where()}; see {ev.load.log_path}"]
    if api.p95 >= t.api_p95:
        worst = max((e for e in ev.load.stats.entries if e.method.upper() != "WS" and e.num_requests),
                    key=lambda e: e.p95, default=api)
        problems.append(
            f"{THRESHOLD_BREACHED} API p95 latency {api.p95} ms >= threshold {t.api_p95:g} ms (performance.api_p95) over "
            f"{api.num_requests} requests (slowest: {worst.key} p95 {worst.p95} ms); {ev.where()}"
        )
    if api.failure_ratio > t.max_failure_ratio:
        problems.append(
            f"{THRESHOLD_BREACHED} API failure ratio {api.failure_ratio:.2%} > threshold {t.max_failure_ratio:.2%} "
            f"(performance.max_failure_ratio): {api.num_failures} of {api.num_requests} requests failed; "
            f"{ev.where()}; failures in {ev.load.html_path}"
        )
    return problems


def check_ws(ev: PerformanceEvidence, t: Thresholds) -> list[str]:
    """WebSocket connect failures, event delivery (lost events), then event latency p95.

    Connects and deliveries are gated before latency: a release refusing
    handshakes or dropping events also leaves too few events to time, and the
    message must name the cause, not "inconclusive".
    """
    events, connects = ev.load.ws_events, ev.load.ws_connects
    timed = events.num_requests - events.num_none_requests
    problems = []
    if connects.num_failures and connects.failure_ratio > t.max_failure_ratio:
        problems.append(
            f"{THRESHOLD_BREACHED} WebSocket connect failure ratio {connects.failure_ratio:.2%} > threshold "
            f"{t.max_failure_ratio:.2%} (performance.max_failure_ratio): {connects.num_failures} of "
            f"{connects.num_requests} handshakes failed or dropped; {ev.where()}; errors in {ev.load.html_path}"
        )
    if events.num_failures and events.failure_ratio > t.max_failure_ratio:
        problems.append(
            f"{THRESHOLD_BREACHED} WebSocket event delivery: {events.num_failures} of {events.num_requests} published "
            f"events lost ({events.failure_ratio:.2%} > threshold {t.max_failure_ratio:.2%}, "
            f"performance.max_failure_ratio; an event not received within the load's deadline is lost); {ev.where()}"
        )
    if problems:
        return problems
    if timed < MIN_WS_EVENTS:
        return [
            f"{INCONCLUSIVE} WebSocket event latency: only {timed} events received (need {MIN_WS_EVENTS}); "
            f"connects {connects.num_requests} ({connects.num_failures} failed), "
            f"events lost {events.num_failures}; {ev.where()}"
        ]
    if events.p95 >= t.ws_p95:
        return [
            f"{THRESHOLD_BREACHED} WebSocket event latency p95 {events.p95} ms >= threshold {t.ws_p95:g} ms (performance.ws_p95) over "
            f"{timed} events (p50 {events.p50} ms, max {events.max_response_time:.0f} ms); {ev.where()}"
        ]
    return []


def fresh_reads(stats: RunStats) -> int:
    """Requests of the load that read the database by asking for a fresh read."""
    return sum(e.num_requests for e in stats.entries if e.name.endswith(FRESH_SUFFIX))


def check_db(ev: PerformanceEvidence, t: Thresholds) -> list[str]:
    if not t.queries:
        return []
    if "db" in ev.errors:
        return [f"{PROVIDER_ERROR} database query p95: {ev.errors['db']}; {ev.where()}"]
    problems = []
    for timing in ev.queries:
        if timing.p95 is not None and timing.p95 >= t.db_p95:
            view = ("timed on the gate's own connection" if timing.source == "direct"
                    else "as the service ran it during the load")
            problems.append(
                f"{THRESHOLD_BREACHED} database query p95 of {timing.name} {timing.p95:.1f} ms >= threshold {t.db_p95:g} ms "
                f"(performance.db_p95), {view}, {timing.count} samples; {ev.where()}"
            )
    missing = [n for n in t.queries if not any(q.name == n and q.source == "direct" and q.count for q in ev.queries)]
    if missing:
        problems.append(f"{INCONCLUSIVE} database query p95: no direct timing of {', '.join(missing)}; {ev.where()}")
    return problems


def check_cache(ev: PerformanceEvidence, t: Thresholds) -> list[str]:
    if ev.cache is None:
        return [f"{PROVIDER_ERROR} cache hit rate: {ev.errors.get('cache', 'not measured')}; {ev.where()}"]
    rate = ev.cache.hit_rate
    if rate is None:
        return [f"{INCONCLUSIVE} cache hit rate: no cache lookups in Redis during the load (keyspace hits and misses unchanged); "
                f"{ev.where()}"]
    if rate <= t.cache_hit_rate:
        service = ev.cache.service_hit_rate
        return [
            f"{THRESHOLD_BREACHED} cache hit rate {rate:.1%} <= threshold {t.cache_hit_rate:.0%} (performance.cache_hit_rate): "
            f"{ev.cache.hits} hits, {ev.cache.misses} misses (Redis keyspace) during the load"
            + (f"; service counters {service:.1%}" if service is not None else "")
            + f"; {ev.where()}"
        ]
    return []


def attach_artifacts(ev: PerformanceEvidence) -> None:
    """Attach the HTML report, the JSON stats and the summary to the running test (no-op without Allure)."""
    from ..reporting.attach import Attachment

    summary = Path(ev.load.json_path).with_name("performance-summary.json")
    for path, name in ((ev.load.html_path, "locust report"), (ev.load.json_path, "locust stats"),
                       (summary, "performance summary")):
        if path.is_file():
            Attachment.file(name, path).attach_to_current_test()
