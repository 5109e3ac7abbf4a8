"""Gate stages as CI runs them, against the shared sandbox: a ``pytest --env=sandbox --stage=X`` subprocess.

``run_stage`` can inject a fault on the release with ``llamadeploy sandbox fault`` as soon as the stage
prints that its bake started, and records when (baking, fault applied, rolled back). ``bad_release_run``
is the one bad release several test modules read: its deploy passes, then ``error_rate=0.3`` mid-bake
at shift10 is caught by the watch and rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LLAMADEPLOY = [sys.executable, "-m", "pytest_llamadeploy.cli"]
STAGE_TIMEOUT = 240.0


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


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLAMADEPLOY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def run_stage(stage: str, release: str, artifacts: Path, fault: str | None = None, *extra: str,
              alluredir: Path | None = None) -> StageRun:
    """One gate stage as CI runs it; with ``fault``, inject it on the release as soon as the bake starts."""
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=sandbox", f"--stage={stage}",
            f"--release={release}", f"--llama-alluredir={alluredir or artifacts}", f"--llama-artifacts={artifacts}",
            *extra]
    started = time.time()
    run = StageRun(stage, -1, [], 0.0, artifacts)
    # The with-block closes the pipe and reaps the process however the loop ends.
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=os.environ.copy()) as proc:
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
                        done = cli("sandbox", "fault", "--release", release, fault)
                        run.fault_done_at, run.fault_rc = time.time(), done.returncode
                        run.extra["fault_output"] = done.stdout + done.stderr
                if run.rolled_back_at is None and "llamadeploy: rolled back" in line:
                    run.rolled_back_at = at
            run.rc = proc.wait(timeout=30)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
    run.seconds = time.time() - started
    return run


def status() -> dict[str, Any]:
    done = cli("status", "--env", "sandbox", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def ledger_record(release: str, stage: str) -> dict[str, Any]:
    """The ledger record of (release, stage) (the latest run), read through the backend the gate uses."""
    from pytest_llamadeploy.aws import aws_config
    from pytest_llamadeploy.ledger import open_ledger
    from pytest_llamadeploy.policy import load_policy

    policy = load_policy(ROOT / "policies", "sandbox").policy
    record = open_ledger(policy, aws_config(policy), ROOT).get("sandbox", release, stage)
    assert record is not None, f"no {stage} record for {release}"
    return record.to_json()


def bad_release_policies(folder: Path) -> Path:
    """The sandbox policy as the bad release's run needs it: the watch's probes off, so the CloudWatch
    trigger catches the fault, and shift10 baking ``BAD_RELEASE_BAKE``.

    The probes catch error_rate=0.3 within 1-2 s, before CloudWatch holds a series to plot; a run
    read for a metric breach (the metric, its value, its threshold, the window, the plotted series)
    needs the metric to be what fires. The probes' own catches are proven in process, per fault kind.
    """
    import yaml

    shutil.copytree(ROOT / "policies", folder)
    data = yaml.safe_load((folder / "sandbox.yaml").read_text())
    data.setdefault("watch", {})["probe_rate"] = 0
    data["stages"]["shift10"]["bake"] = f"{BAD_RELEASE_BAKE:g}s"
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


#: shift10's bake in the bad release's run. With the probes off, the error-rate trigger waits for the
#: new version's organic traffic: 10 % of ~20 requests/s, so its 10 samples (min_samples) take ~5 s, and
#: Poisson spread, the EMF delay (0.5-1.5 s), the 1-s bucket and the 1-s poll come on top. Measured from
#: the shift to the breach: 7.1-12.2 s on a quiet machine (5 runs), 8.3 s with three busy loops, 13.2 s
#: in CI (2026-12-02), against the policy's 15-s bake. The breach stops the stage, so a longer bake costs nothing and keeps "mid-bake"
#: a matter of the watch, not of the machine's load.
BAD_RELEASE_BAKE = 40.0

#: The fault injected mid-bake into the bad release.
BAD_FAULT = "error_rate=0.3"


@dataclass(frozen=True)
class BadReleaseRun:
    """A release whose deploy passed and whose shift10 the watch rolled back (``BAD_FAULT`` mid-bake)."""

    release: str
    results: Path  # Allure results of both stages
    deploy: StageRun
    shift10: StageRun
    deploy_record: dict[str, Any]
    shift10_record: dict[str, Any]
    after: dict[str, Any]  # `llamadeploy status --json` right after the rollback


def bad_release_run(work: Path) -> BadReleaseRun:
    """deploy, then shift10 with ``BAD_FAULT`` injected once the bake (and its watch) started; the fault is
    cleared afterwards, the release stays deployed. The caller holds the sandbox alone."""
    release = f"t-{uuid.uuid4().hex[:6]}"
    results = work / "allure-results"
    policies = f"--policy-dir={bad_release_policies(work / 'policies')}"
    deploy = run_stage("deploy", release, work / "deploy", None, policies, alluredir=results)
    assert deploy.rc == 0, f"deploy of the bad release failed:\n{deploy.text()[-4000:]}"
    deploy_record = ledger_record(release, "deploy")
    try:
        shift10 = run_stage("shift10", release, work / "shift10", BAD_FAULT, policies, alluredir=results)
        shift10_record, after = ledger_record(release, "shift10"), status()
    finally:
        cleared = cli("sandbox", "fault", "--release", release, f"{BAD_FAULT.split('=')[0]}=0")
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    return BadReleaseRun(release, results, deploy, shift10, deploy_record, shift10_record, after)
