"""The performance gate against the real sandbox: a healthy release passes, each fault knob fails its check.

Knobs are set live on the baseline release (``POST /_sandbox/faults``) under
``sandbox_exclusive``, which resets them afterwards. The load goes through the
front door like the gate's at shift100/verify: Locust is a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.load.gate import (
    PerformanceEvidence,
    Thresholds,
    check_api,
    check_cache,
    check_db,
    check_ws,
    run_performance,
)
from pytest_llamadeploy.policy import load_policy

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[1]
#: Small but enough samples: the machine has 2 cores shared with the sandbox itself.
USERS, SPAWN_RATE, DURATION, PACING = 6, 6.0, 5.0, "0.1"


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    return Thresholds.from_policy(load_policy(ROOT / "policies", "sandbox").policy.performance)


def _baseline_url(state: Any) -> str:
    return str(state.versions[state.extra["baseline"]["release"]]["url"])


def _flush_cache(state: Any) -> None:
    import httpx

    # Starts the load on a cold cache, as a release whose cache entries expired (TTL 60 s) would.
    response = httpx.delete(_baseline_url(state) + "/_sandbox/cache", timeout=5, trust_env=False)
    assert response.status_code == 200, response.text


def _load(state: Any, tmp_path: Path, thresholds: Thresholds) -> PerformanceEvidence:
    return run_performance(
        api_url=state.api_url, ws_url=state.ws_url, redis_url=state.redis_url, postgres_dsn=state.postgres_dsn,
        users=USERS, spawn_rate=SPAWN_RATE, duration=DURATION, queries=thresholds.queries,
        artifacts_dir=tmp_path / "perf", release="v0", timeout=90, extra_env={"LLAMA_LOAD_PACING": PACING},
    )


def _set(state: Any, knob: str) -> None:
    from pytest_llamadeploy.sandbox.deploy import set_faults

    set_faults(state.directory, state.extra["baseline"]["release"], [knob])


def _warm_cache(state: Any) -> None:
    import httpx

    # A fresh sandbox starts cold; production's cache is warm. Read each chain's entries once.
    with httpx.Client(base_url=state.api_url, timeout=30, trust_env=False) as client:
        token = client.post("/auth/token", json={"user": "perf-warmup"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        for chain in client.get("/chains", headers=headers).json()["chains"]:
            client.get("/protocols", params={"chain": chain}, headers=headers)
            client.get(f"/tvl/{chain}", headers=headers)


def test_healthy_release_passes_every_check(sandbox_exclusive: Any, tmp_path: Path, thresholds: Thresholds) -> None:
    _warm_cache(sandbox_exclusive)
    ev = _load(sandbox_exclusive, tmp_path, thresholds)
    checks = {"api": check_api(ev, thresholds), "ws": check_ws(ev, thresholds), "db": check_db(ev, thresholds),
              "cache": check_cache(ev, thresholds)}
    assert checks == {"api": [], "ws": [], "db": [], "cache": []}, ev.summary()
    # Evidence is real: requests to the query endpoints, events timed, queries timed on both sides.
    assert ev.load.http.num_requests > 50
    assert ev.load.ws_events.num_requests - ev.load.ws_events.num_none_requests >= 5
    assert {q.name for q in ev.queries if q.source == "direct"} == set(thresholds.queries)
    assert ev.cache is not None and ev.cache.lookups > 0
    assert ev.load.html_path.is_file() and (tmp_path / "perf" / "performance-summary.json").is_file()
    assert PerformanceEvidence.from_json(ev.to_json()).load.http.p95 == ev.load.http.p95


@pytest.mark.parametrize(
    ("knob", "check", "expected", "cold_cache"),
    [
        ("latency_ms=300", check_api, "API p95 latency", False),
        # Queries only run on cache misses: start cold so the slow release really queries during the load.
        ("slow_query_ms=120", check_db, "database query p95", True),
        ("cache_bypass=true", check_cache, "cache hit rate", True),
    ],
    ids=["latency_ms->api_p95", "slow_query_ms->db_p95", "cache_bypass->cache_hit_rate"],
)
def test_fault_knob_fails_its_check(sandbox_exclusive: Any, tmp_path: Path, thresholds: Thresholds,
                                    knob: str, check: Any, expected: str, cold_cache: bool) -> None:
    _set(sandbox_exclusive, knob)
    if cold_cache:
        _flush_cache(sandbox_exclusive)
    ev = _load(sandbox_exclusive, tmp_path, thresholds)
    problems = check(ev, thresholds)
    assert problems, f"{knob} should fail {expected}; evidence {ev.summary()}"
    message = "\n".join(problems)
    assert message.startswith("threshold breached:") and expected in message
    assert f"{USERS} users" in message and "release v0" in message
    if check is check_api:
        # Added HTTP latency leaves the database alone: the failure points at one cause.
        assert check_db(ev, thresholds) == [], ev.summary()
