"""The gate decides correctly under CloudWatch as AWS serves it: prod's real policy, the real watch,
evaluation and comparison, against a deterministic simulation of CloudWatch on a virtual clock
(tests/support/cloudwatch_sim.py: 60-s AWS/* buckets each 60-180 s late, a minute that never
arrives, the functions' 1-s EMF series seconds late, a sparse WebSocket series).

Each plan runs shift10 -> shift50 -> shift100 as the stages do: the watch over the bake (its
final decision waiting for the bake's last data), then the monitoring suite's key metrics over
the bake window, then, at shift50, the comparison of the versions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.metrics.compare import compare_versions
from pytest_llamadeploy.metrics.evaluate import evaluate_rules
from pytest_llamadeploy.metrics.watch import BakeWatch
from pytest_llamadeploy.policy import load_policy
from tests.support.cloudwatch_sim import API, WS, CloudWatchSim, Faults, VirtualClock, Workload, with_weight

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # a whole minute, far from any real clock: nothing here reads time.time()
HISTORY = 180.0
OLD, NEW = "1", "2"


@pytest.fixture(scope="module")
def prod() -> Any:
    return load_policy(ROOT / "policies", "prod").policy


def run_plan(policy: Any, seed: int, faults: Faults, lost_minutes: tuple[int, ...] = ()) -> dict[str, Any]:
    """The plan's watched stages against one simulated account; where (and why) it stopped, if it did."""
    clock = VirtualClock(T0)
    sim = CloudWatchSim(clock, seed, lost_minutes=lost_minutes)
    workload = Workload(new_faults=faults)
    sim.run_until(T0 + HISTORY, with_weight(workload, 0.0))
    old, new = {API: OLD, WS: OLD}, {API: NEW, WS: NEW}
    for name in policy.plan[1:]:
        sp = policy.stages[name]
        weight = 1.0 if sp.action == "promote" else float(sp.weight)
        load = with_weight(workload, weight)
        shift = clock.now
        breaches: list[Any] = []
        watch = BakeWatch(sim, policy, policy.service.functions, policy.service.alias, old, new, shift, None,
                          breaches.append, clock=clock, baseline=sp.action == "shift")
        breach = watch.simulate(sp.bake, lambda seconds, w=load: sim.run_until(clock.now + seconds, w))
        if breach is not None:
            return {"stage": name, "rule": breach.rule, "message": breach.message, "at": breach.at - shift,
                    "version": breach.version}
        end = shift + sp.bake
        versions = {"new": new, **({"old": old} if sp.action == "shift" else {})}
        for result in evaluate_rules(sim, policy, policy.key_metrics, versions, shift, end, now=clock.now):
            if result.verdict != "pass":
                return {"stage": name, "rule": result.rule, "message": result.message, "at": clock.now - shift,
                        "version": result.version_number}
        if "compare" in sp.suites:
            for c in compare_versions(sim, policy, policy.service.functions, policy.service.alias, old, new, shift,
                                      end, now=clock.now):
                for verdict, message in ((c.error_verdict, c.error_message), (c.p95_verdict, c.p95_message),
                                         (c.rank_verdict, c.rank_message)):
                    if verdict != "pass":
                        return {"stage": name, "rule": "compare", "message": message(), "at": clock.now - shift,
                                "version": c.new_version}
    return {"stage": None}


# Two seeds here (each plan ~4 s of CPU); bench/bench_physics.py runs many more by hand.
@pytest.mark.parametrize("seed", range(2))
def test_healthy_release_passes_every_stage(prod: Any, seed: int) -> None:
    outcome = run_plan(prod, seed, Faults())
    assert outcome["stage"] is None, outcome


def test_healthy_release_passes_when_a_minute_never_arrives(prod: Any) -> None:
    # The last minutes of shift10's bake, and one in the middle of shift50's, are lost for good.
    shift10_end = T0 + HISTORY + prod.stages["shift10"].bake
    lost = (int(shift10_end // 60) - 1, int(shift10_end // 60), int((shift10_end + 400) // 60))
    outcome = run_plan(prod, 101, Faults(), lost_minutes=lost)
    assert outcome["stage"] is None, outcome


#: fault -> (where the runbook's thresholds stop it with prod's policy, the rules that may name it)
FAULTS = {
    "5% 5xx": (Faults(error_rate=0.05), "shift10", {"error_rate", "apigw_5xx"}),
    "unhandled errors": (Faults(unhandled_error_rate=0.10), "shift10", {"error_rate", "lambda_error_rate",
                                                                        "apigw_5xx"}),
    "2% WebSocket connect errors": (Faults(ws_connect_error_rate=0.02), "shift10",
                                    {"ws_connect_error_rate", "apigw_ws_connect_error_rate"}),
    # Under the absolute bound (p95 ~420 ms < 500 ms): the new version against the old one sees it at 10 %.
    "+300 ms latency": (Faults(latency_ms=300.0), "shift10", {"latency_vs_old"}),
    "+120 ms database queries": (Faults(slow_query_ms=120.0), "shift10", {"db_time_vs_old"}),
    "cache bypassed": (Faults(cache_bypass=True), "shift10", {"cache_hit_rate", "cache_hit_rate_vs_old"}),
    "half the events dropped": (Faults(event_drop_rate=0.5), "shift10", {"event_delivery_ratio"}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_release_rolls_back_at_the_right_stage(prod: Any, fault: str) -> None:
    faults, stage, rules = FAULTS[fault]
    outcome = run_plan(prod, 1000, faults)
    assert outcome["stage"] == stage, outcome
    assert outcome["rule"] in rules, outcome
    message = outcome["message"]
    if outcome["rule"] != "compare":
        # Trigger, value, threshold, window and version, in one line a human reads.
        where = "the whole service" if outcome["rule"].startswith("apigw") else f"version {NEW}"
        assert outcome["rule"] in message and where in message, message
        assert re.search(r": (p\d+ )?\d+(\.\d+)?(%| ms)? on ", message), message  # the value
        assert re.search(r"must be [<>=]+ \d", message), message
        assert re.search(r" over (the same )?\d+[smh]", message), message
    else:
        assert f"new v{NEW}" in message and "old v1" in message, message


def test_the_error_rate_on_emf_stops_a_bad_release_within_a_minute_of_the_shift(prod: Any) -> None:
    outcome = run_plan(prod, 7, Faults(error_rate=0.3))
    assert outcome["stage"] == "shift10" and outcome["rule"] == "error_rate", outcome
    # EMF: 1-s data, 2-12 s late, polled every 10 s; AWS/Lambda alone would need 2-4 minutes.
    assert outcome["at"] < 60, outcome
