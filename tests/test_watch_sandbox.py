"""The metrics watch on the real sandbox: a trigger fires mid-bake and the stage rolls back end to end;
every fault kind of issue 14 is stopped at 10 %.

The end-to-end case is the run's one bad release (``bad_release``, tests/sandbox_fixtures.py): shift10 as CI
runs it (a real ``pytest --env=sandbox --stage=shift10`` subprocess, ``error_rate=0.3`` injected with
``llamadeploy sandbox fault`` once the stage prints that the bake started; probes off and a longer bake,
``BAD_RELEASE_BAKE``), caught by the CloudWatch trigger:
rollback, ledger, alias, all of it. test_report_browser.py reads the same run's report. Then every fault
kind runs under the stage's own watch and probes in this process at 10 % (a few seconds each instead of a
stage's ~25 s): which trigger names it, how soon. A healthy release through shift10..shift100 with every
trigger on is test_rehearse.py's good release. The module holds the shared sandbox alone
(``exclusive``) and runs on one xdist worker (``xdist_group``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.policy import load_policy
from tests.sandbox_fixtures import exclusive
from tests.support.stagerun import BAD_RELEASE_BAKE, BadReleaseRun

pytestmark = [pytest.mark.sandbox, pytest.mark.xdist_group("sandbox-exclusive")]

ROOT = Path(__file__).resolve().parents[1]

#: The rules that may name the bad release's error_rate=0.3 with the probes off (the run reads the metrics
#: as a reviewer would): what AWS would count (sandbox/physics.py): a handled 500 is no Lambda Error, so
#: it is the functions' own per-version error rate.
BAD_RELEASE_TRIGGERS = ("error_rate",)
#: Rules whose AWS metric has no per-version series: they judge the alias as a whole (a throttle has no
#: ExecutedVersion).
ALIAS_WIDE = {"lambda_throttle_rate"}


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy(ROOT / "policies", "sandbox").policy


@pytest.fixture(scope="module")
def held(sandbox: Any, bad_release: BadReleaseRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The sandbox held by this module (reset, so no fault and the alias on the baseline), after the bad
    release's run (tests/sandbox_fixtures.py); its release stays deployed at 0 %."""
    with exclusive(sandbox, tmp_path_factory) as state:
        yield state


def _weights(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {fn: (s["version"], s["weights"]) for fn, s in snapshot["functions"].items()}


def test_trigger_rolls_back_mid_bake(bad_release: BadReleaseRun, policy: Any) -> None:
    run, record, after = bad_release.shift10, bad_release.shift10_record, bad_release.after
    out = run.text()
    assert run.fault_rc == 0, run.extra.get("fault_output")
    assert run.rc == 1, out[-4000:]
    assert run.baking_at is not None and run.rolled_back_at is not None, out[-4000:]

    # The ledger: rolled back, and the reason names the trigger, the value, the threshold, the window, the version.
    assert record["status"] == "rolled_back", record
    reason = record["reason"]
    assert any(f"rollback trigger {t}" in reason for t in BAD_RELEASE_TRIGGERS), reason
    new = record["new_versions"]
    breach = run.context()["watch"]["bake"]["breach"]
    assert breach["rule"] in BAD_RELEASE_TRIGGERS and breach["source"] == "cloudwatch", breach
    assert breach["label"] == "new" and breach["version"] == new[breach["function"]], (breach, new)
    assert f"version {breach['version']} (new)" in reason, reason
    assert breach["threshold"] is not None and breach["value"] is not None and breach["value"] > breach["threshold"]
    # Which window, ending when (data arrives late: the window ends where it has arrived).
    assert "must be <=" in reason, reason
    assert re.search(r"over \d+s ending \d\d:\d\d:\d\d UTC", reason), reason
    rule = policy.rollback_triggers[breach["rule"]]
    assert f"{rule.threshold * 100:g}%" in reason and breach["window"] > 0, reason

    # Traffic back on the old version: every function on the version that served before, no weights.
    old = record["old_versions"]
    assert _weights(after) == {fn: (old[fn], {}) for fn in old}, after
    assert record["details"]["rollback"]["ok"] is True

    # Mid-bake: the watch caught it in the first half of the bake (the run's bake is BAD_RELEASE_BAKE, so
    # a decision at the bake's end would come long after), and the stage rolled back at once.
    watch = run.context()["watch"]["bake"]
    timeline = _timeline(run, watch, breach)
    assert watch["deadline"] - watch["started_at"] == BAD_RELEASE_BAKE, timeline
    assert breach["at"] - watch["started_at"] < BAD_RELEASE_BAKE / 2, timeline
    assert run.rolled_back_at < watch["deadline"] and run.rolled_back_at - breach["at"] < 5.0, timeline


def _timeline(run: Any, watch: dict[str, Any], breach: dict[str, Any]) -> dict[str, float]:
    """Seconds from the shift (the bake's start) to each step: a failure says where the time went."""
    start = watch["started_at"]
    points = {"baking printed": run.baking_at, "fault applied": run.fault_done_at, "breach": breach["at"],
              "rolled back printed": run.rolled_back_at, "deadline": watch["deadline"]}
    return {k: round(v - start, 2) for k, v in points.items() if v is not None}


#: Issue 14: every fault kind, at a size the runbook's thresholds are meant to catch, on the release at
#: 10 % -> the triggers that may name it first (the probes' active checks often act before a metric
#: window has filled). Figures of the whole plan per fault: bench/bench_blast_radius.py.
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "latency_ms=150": ("latency_vs_old",),
    # Users' requests that miss the cache are 120 ms slower too: the latency comparison may see it first.
    "slow_query_ms=120": ("db_time_vs_old", "latency_vs_old"),
    "cache_bypass=true": ("cache_probe_failure_ratio", "cache_hit_rate_vs_old"),
    "event_drop_rate=0.5": ("event_probe_failure_ratio", "event_delivery_ratio"),
    "ws_connect_error_rate=0.5": ("event_probe_failure_ratio", "ws_connect_error_rate"),
    # A throttled function refuses WebSocket $connect invocations too: the connect error rate may see it first.
    "throttle_rate=0.3": ("lambda_throttle_rate", "ws_connect_error_rate"),
    "crash=true": ("probe_failure_ratio",),
    # The query and publish paths (the active checks' cache read and event publish) answer 500 / raise.
    "error_rate=0.3": ("error_rate", "cache_probe_failure_ratio", "probe_failure_ratio"),
    "unhandled_error_rate=0.3": ("lambda_error_rate", "error_rate", "cache_probe_failure_ratio",
                                 "probe_failure_ratio"),
}


@pytest.fixture(scope="module")
def fault_kind_breaches(bad_release: BadReleaseRun, held: Any, policy: Any) -> dict[str, tuple[Any, float]]:
    """The bake watch of shift10, in this process, once per fault kind: (breach or None, seconds from the shift).

    The watch and its probes are the stage's own (BakeWatch, bake_probe); the rollback that follows a
    breach is the stage's, proven end to end by the bad release's run (test above), so here the alias is put back
    by the test. Each case starts its windows at its own shift, so an earlier case's data is never judged.
    """
    from types import SimpleNamespace

    from pytest_llamadeploy.aws import aws_config
    from pytest_llamadeploy.bakeprobe import bake_probe
    from pytest_llamadeploy.metrics.watch import BakeWatch
    from pytest_llamadeploy.sandbox.deploy import set_faults
    from pytest_llamadeploy.targets import resolve_targets
    from pytest_llamadeploy.traffic import LambdaAliasDriver, promote_target, shift_target

    release = bad_release.release
    record = bad_release.deploy_record
    old, new = record["old_versions"], record["new_versions"]
    aws = aws_config(policy)
    driver = LambdaAliasDriver(aws.client("lambda"), policy.service.functions, policy.service.alias)
    preview = LambdaAliasDriver(aws.client("lambda"), policy.service.functions, policy.service.preview_alias)
    preview.apply(promote_target(new))  # where the deploy stage points it (a rollback above pointed it back)
    context = SimpleNamespace(new_versions=new, old_versions=old, release=release, client=aws.client,
                              resolved_targets=resolve_targets(policy))
    bake = float(policy.stages["shift10"].bake)
    out: dict[str, tuple[Any, float]] = {}
    try:
        for fault in FAULT_KINDS:
            knob = fault.split("=")[0]
            # In process (the CLI's own code, without an interpreter start per call); the CLI itself is
            # what the trigger case above uses.
            set_faults(held.directory, release, [fault])
            driver.apply(shift_target(driver.read(), old, new, 0.1))
            started = time.time()
            watch = BakeWatch(aws.client("cloudwatch"), policy, policy.service.functions, policy.service.alias,
                              old, new, started, bake_probe(context, policy), lambda breach: None)
            watch.start()
            try:
                breach = watch.wait(bake)
            finally:
                watch.stop()
                driver.apply(promote_target(old))
                set_faults(held.directory, release, [f"{knob}=0"])
            out[fault] = (breach, (breach.at if breach else time.time()) - started)
    finally:
        driver.apply(promote_target(old))
        preview.apply(promote_target(old))
    return out


@pytest.mark.parametrize("fault", list(FAULT_KINDS))
def test_every_fault_kind_is_stopped_at_shift10(fault_kind_breaches: Any, policy: Any, fault: str) -> None:
    breach, seconds = fault_kind_breaches[fault]
    assert breach is not None, f"{fault}: the whole bake passed at 10 %"
    assert breach.kind in ("threshold", "probe"), breach.message  # a verdict on the data, never "inconclusive"
    assert breach.rule in FAULT_KINDS[fault], breach.message
    # Within shift10's watch: mid-bake, or at its final decision, which waits at most the longest lag for
    # the bake's last data (a 120 ms query sampled ~1.7/s needs most of the 15 s under load).
    from pytest_llamadeploy.metrics.evaluate import max_lag

    assert seconds < float(policy.stages["shift10"].bake) + max_lag(policy, policy.rollback_triggers) + 2.0, (
        seconds, breach.message)
    if breach.rule in ALIAS_WIDE:
        assert breach.label == "all", breach.message
    else:  # the trigger names the new version and its own value, threshold and window
        assert breach.label == "new" and "(new)" in breach.message, breach.message
        assert breach.value is not None and breach.threshold is not None and breach.window > 0, breach
