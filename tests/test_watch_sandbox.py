"""The metrics watch on the real sandbox: a trigger fires mid-bake and the stage rolls back end to end;
every fault kind of issue 14 is stopped at 10 %.

One release for the whole module (a deploy costs ~20 s). ``error_rate`` runs shift10 as CI runs it (a real
``pytest --env=sandbox --stage=shift10`` subprocess, the fault injected with ``llamadeploy sandbox fault``
once the stage prints that the bake started): rollback, ledger, alias, all of it. Then every fault kind
runs under the stage's own watch and probes in this process at 10 % (a few seconds each instead of a
stage's ~25 s): which trigger names it, how soon. A healthy release through shift10..shift100 with every
trigger on is test_rehearse.py's good release. The module holds the shared sandbox alone
(``exclusive``) and runs on one xdist worker (``xdist_group``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.policy import load_policy
from tests.sandbox_fixtures import exclusive

pytestmark = [pytest.mark.sandbox, pytest.mark.xdist_group("sandbox-exclusive")]

ROOT = Path(__file__).resolve().parents[1]
LLAMADEPLOY = [sys.executable, "-m", "pytest_llamadeploy.cli"]
STAGE_TIMEOUT = 240.0
API, WS = "onchain-api", "onchain-ws"

#: knob injected mid-bake -> the trigger(s) that must name it (error_rate may be caught by the probes first).
#: What AWS would count (sandbox/physics.py): a handled 500 is no Lambda Error, so error_rate is the
#: functions' own per-version error rate; a throttle has no ExecutedVersion, so Lambda's throttle rate
#: is the alias's; a refused $connect ran fine (no Lambda Error), so only the connect error rate sees it.
TRIGGERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "error_rate": ("error_rate=0.3", ("error_rate", "cache_probe_failure_ratio", "probe_failure_ratio")),
}
#: Rules whose AWS metric has no per-version series: they judge the alias as a whole.
ALIAS_WIDE = {"lambda_throttle_rate"}


@dataclass
class StageRun:
    stage: str
    rc: int
    output: list[tuple[float, str]]
    seconds: float
    artifacts: Path
    #: time.time() when "baking" was printed, when the fault command returned, when "rolled back" was printed.
    baking_at: float | None = None
    fault_done_at: float | None = None
    rolled_back_at: float | None = None
    fault_rc: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(line for _, line in self.output)

    def context(self) -> dict[str, Any]:
        found = sorted(self.artifacts.glob("*/context.json"))
        assert found, f"no context.json under {self.artifacts}\n{self.text()[-3000:]}"
        return json.loads(found[-1].read_text())


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLAMADEPLOY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def run_stage(stage: str, release: str, tmp: Path, fault: str | None = None, *extra: str) -> StageRun:
    """One gate stage as CI runs it; with ``fault``, inject it on the release as soon as the bake starts."""
    artifacts = tmp / f"{stage}-{uuid.uuid4().hex[:4]}"
    artifacts.mkdir()
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=sandbox", f"--stage={stage}",
            f"--release={release}", f"--llama-alluredir={artifacts}", f"--llama-artifacts={artifacts}", *extra]
    started = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    run = StageRun(stage, -1, [], 0.0, artifacts)
    # A watchdog, so a hung stage cannot hang the suite: the read loop below ends when the process does.
    timer = threading.Timer(STAGE_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            at = time.time()
            run.output.append((at, line.rstrip("\n")))
            if run.baking_at is None and "llamadeploy: baking" in line:
                run.baking_at = at
                if fault is not None:
                    done = _cli("sandbox", "fault", "--release", release, fault)
                    run.fault_done_at, run.fault_rc = time.time(), done.returncode
                    run.extra["fault_output"] = done.stdout + done.stderr
            if run.rolled_back_at is None and "llamadeploy: rolled back" in line:
                run.rolled_back_at = at
        run.rc = proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    run.seconds = time.time() - started
    return run


def status() -> dict[str, Any]:
    done = _cli("status", "--env", "sandbox", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def ledger_record(release: str, stage: str) -> dict[str, Any]:
    """The ledger record of (release, stage) (the latest run), read through the backend the gate uses."""
    from pytest_llamadeploy.aws import aws_config
    from pytest_llamadeploy.ledger import open_ledger

    policy = load_policy(ROOT / "policies", "sandbox").policy
    record = open_ledger(policy, aws_config(policy), ROOT).get("sandbox", release, stage)
    assert record is not None, f"no {stage} record for {release}"
    return record.to_json()


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy(ROOT / "policies", "sandbox").policy


@pytest.fixture(scope="module")
def deployed(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StageRun, Any]]:
    """The sandbox held by this module, with one release deployed (new version at 0 %)."""
    with exclusive(sandbox, tmp_path_factory) as state:
        release = f"t-{uuid.uuid4().hex[:6]}"
        run = run_stage("deploy", release, tmp_path_factory.mktemp("watch-deploy"))
        assert run.rc == 0, run.text()[-4000:]
        try:
            yield release, run, state
        finally:
            _cli("sandbox", "fault", "--release", release,
                 *sorted({f"{k}=0" for k in TRIGGERS} | {f"{f.split('=')[0]}=0" for f in FAULT_KINDS}))


@pytest.fixture(scope="module")
def trigger_runs(deployed: tuple[str, StageRun, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[StageRun, dict[str, Any], dict[str, Any]]]:
    """shift10 of the one release, once per knob: (run, ledger record, alias status right after)."""
    release, _, _ = deployed
    runs = {}
    for knob, (fault, _) in TRIGGERS.items():
        run = run_stage("shift10", release, tmp_path_factory.mktemp(f"watch-{knob}"), fault=fault)
        after = status()
        cleared = _cli("sandbox", "fault", "--release", release, f"{knob}=0")
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr
        runs[knob] = (run, ledger_record(release, "shift10"), after)
    return runs


def _weights(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {fn: (s["version"], s["weights"]) for fn, s in snapshot["functions"].items()}


@pytest.mark.parametrize("knob", list(TRIGGERS))
def test_trigger_rolls_back_mid_bake(trigger_runs: Any, deployed: Any, policy: Any, knob: str) -> None:
    run, record, after = trigger_runs[knob]
    _, triggers = TRIGGERS[knob]
    out = run.text()
    assert run.fault_rc == 0, run.extra.get("fault_output")
    assert run.rc == 1, out[-4000:]
    assert run.baking_at is not None and run.rolled_back_at is not None, out[-4000:]

    # The ledger: rolled back, and the reason names the trigger, the value, the threshold, the window, the version.
    assert record["status"] == "rolled_back", record
    reason = record["reason"]
    assert any(f"rollback trigger {t}" in reason for t in triggers), reason
    new = record["new_versions"]
    breach = run.context()["watch"]["bake"]["breach"]
    assert breach["rule"] in triggers, breach
    if breach["rule"] in ALIAS_WIDE:
        # The alias as a whole (every version it routes to), never one version called "new".
        assert breach["label"] == "all" and "(new)" not in reason, (breach, reason)
    else:
        assert breach["label"] == "new" and breach["version"] == new[breach["function"]], (breach, new)
        assert f"version {breach['version']} (new)" in reason, reason
    assert breach["threshold"] is not None and breach["value"] is not None and breach["value"] > breach["threshold"]
    # Which window, ending when (data arrives late: the window ends where it has arrived).
    assert "must be <=" in reason, reason
    assert re.search(r"over \d+s ending \d\d:\d\d:\d\d UTC" if breach["source"] == "cloudwatch"
                     else r"over the last \d+\.\ds", reason), reason
    if breach["source"] == "cloudwatch":
        rule = policy.rollback_triggers[breach["rule"]]
        assert f"{rule.threshold * 100:g}%" in reason and breach["window"] > 0, reason

    # Traffic back on the old version: every function on the version that served before, no weights.
    old = record["old_versions"]
    assert _weights(after) == {fn: (old[fn], {}) for fn in old}, after
    assert record["details"]["rollback"]["ok"] is True

    # Mid-bake: the rollback came well before the bake would have ended, and soon after the fault.
    bake = float(policy.stages["shift10"].bake)
    watch = run.context()["watch"]["bake"]
    assert breach["at"] < watch["deadline"] - 3.0, (breach["at"], watch["deadline"])
    assert run.rolled_back_at - run.baking_at < bake - 3.0, (run.rolled_back_at - run.baking_at, out[-3000:])
    assert run.rolled_back_at - run.fault_done_at < 10.0


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
def fault_kind_breaches(deployed: tuple[str, StageRun, Any], trigger_runs: Any,
                        policy: Any) -> dict[str, tuple[Any, float]]:
    """The bake watch of shift10, in this process, once per fault kind: (breach or None, seconds from the shift).

    The watch and its probes are the stage's own (BakeWatch, bake_probe); the rollback that follows a
    breach is the stage's, proven end to end by the subprocess cases above, so here the alias is put back
    by the test. Each case starts its windows at its own shift, so an earlier case's data is never judged.
    """
    from types import SimpleNamespace

    from pytest_llamadeploy.aws import aws_config
    from pytest_llamadeploy.bakeprobe import bake_probe
    from pytest_llamadeploy.metrics.watch import BakeWatch
    from pytest_llamadeploy.sandbox.deploy import set_faults
    from pytest_llamadeploy.targets import resolve_targets
    from pytest_llamadeploy.traffic import LambdaAliasDriver, promote_target, shift_target

    release = deployed[0]
    record = ledger_record(release, "deploy")
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
            set_faults(deployed[2].directory, release, [fault])
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
                set_faults(deployed[2].directory, release, [f"{knob}=0"])
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
