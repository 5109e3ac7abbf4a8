"""Benchmark: where each fault kind is stopped, and false rollbacks of healthy releases (run by hand).

    .venv/bin/python bench/bench_blast_radius.py [--faults all|KNOB=VALUE,...] [--healthy N] [--dir SANDBOX_DIR]

Without ``--dir`` it brings up a sandbox of its own (fast physics) in a temporary folder and stops it at the
end; with ``--dir`` it uses that running sandbox and leaves it running.

Per fault (issue 14's list, at a size the runbook's thresholds are meant to catch): a new release runs
``pytest --env=sandbox --stage=deploy`` healthy, the fault is injected on it right after deploy passed
(``llamadeploy sandbox fault``), then the plan runs on: shift10, shift50, shift100, each as CI runs it,
until a stage fails. Printed per fault: the stage that stopped it, the share of traffic the release had
then, the trigger named in the ledger, and the seconds from that stage's traffic shift to the rollback
(the watch's breach time and the verdict, from context.json). Then ``--healthy N`` healthy releases through
the whole plan (deploy, shift10, shift50, shift100): each false rollback printed, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llamadeploy.sandbox.state import ENV_DIR  # noqa: E402

LLAMADEPLOY = [sys.executable, "-m", "pytest_llamadeploy.cli"]
STAGE_TIMEOUT = 300
PLAN = ("shift10", "shift50", "shift100")
SHARE = {"deploy": "0 %", "shift10": "10 %", "shift50": "50 %", "shift100": "100 %"}
#: Each fault kind at a size the runbook's thresholds are meant to catch.
FAULTS = (
    "latency_ms=150",
    "slow_query_ms=120",
    "cache_bypass=true",
    "event_drop_rate=0.5",
    "ws_connect_error_rate=0.5",
    "throttle_rate=0.3",
    "crash=true",
    "error_rate=0.3",
    "unhandled_error_rate=0.3",
)


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLAMADEPLOY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _stage(stage: str, release: str, out: Path) -> dict[str, Any]:
    artifacts = out / f"{release}-{stage}"
    artifacts.mkdir(parents=True)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=sandbox",
                           f"--stage={stage}", f"--release={release}", f"--llama-alluredir={artifacts}",
                           f"--llama-artifacts={artifacts}", "-q"], cwd=ROOT, capture_output=True, text=True,
                          timeout=STAGE_TIMEOUT)
    run: dict[str, Any] = {"stage": stage, "rc": done.returncode, "seconds": time.time() - started,
                           "tail": (done.stdout + done.stderr).splitlines()[-12:]}
    contexts = sorted(artifacts.glob("*/context.json"))
    if contexts:
        context = json.loads(contexts[-1].read_text())
        breach = (context.get("watch", {}).get("bake") or {}).get("breach")
        run["breach"] = breach
        moved = context.get("traffic_moved_at")
        if breach and moved:
            run["shift_to_breach"] = breach["at"] - moved
    reason = [line for line in run["tail"] if line.startswith("reason:")]
    run["reason"] = reason[0] if reason else ""
    return run


def plan(release: str, out: Path, fault: str | None) -> dict[str, Any]:
    """deploy healthy, inject the fault, then shift10..shift100 until a stage fails."""
    deploy = _stage("deploy", release, out)
    if deploy["rc"] != 0:
        return {"stopped": "deploy", "run": deploy, "error": "the healthy deploy failed"}
    if fault:
        done = _cli("sandbox", "fault", "--release", release, fault)
        if done.returncode != 0:
            return {"stopped": "deploy", "run": deploy, "error": done.stdout + done.stderr}
    for stage in PLAN:
        run = _stage(stage, release, out)
        if run["rc"] != 0:
            return {"stopped": stage, "run": run}
    return {"stopped": None, "run": run}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faults", default="all", help="all, none, or KNOB=VALUE,KNOB=VALUE")
    parser.add_argument("--healthy", type=int, default=0, help="healthy releases through the whole plan")
    parser.add_argument("--dir", type=Path, default=None, help="a running sandbox to use (default: start one)")
    args = parser.parse_args()
    from pytest_llamadeploy.sandbox import cli

    faults = {"all": list(FAULTS), "none": []}.get(args.faults, args.faults.split(","))
    own = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="bench-blast-")) if own else args.dir.resolve()
    os.environ[ENV_DIR] = str(directory)
    out = Path(tempfile.mkdtemp(prefix="bench-blast-out-"))
    failures = 0
    try:
        if own:
            cli.up(directory)
        print("| fault | stopped at | traffic exposed | trigger | shift -> breach | stage wall |")
        print("|---|---|---|---|---|---|")
        for fault in faults:
            release = f"bad-{uuid.uuid4().hex[:6]}"
            result = plan(release, out, fault)
            run, stopped = result["run"], result["stopped"]
            breach = run.get("breach") or {}
            trigger = breach.get("rule") or run["reason"][:90] or result.get("error", "")[:90]
            seconds = f"{run['shift_to_breach']:.1f} s" if "shift_to_breach" in run else "-"
            print(f"| {fault} | {stopped or 'NOT STOPPED'} | {SHARE.get(stopped or '', '100 % (shipped)')} | "
                  f"{trigger} | {seconds} | {run['seconds']:.0f} s |", flush=True)
            failures += stopped != "shift10"
            _cli("sandbox", "fault", "--release", release, f"{fault.split('=')[0]}=0")
        false_rollbacks = 0
        for i in range(args.healthy):
            release = f"good-{uuid.uuid4().hex[:6]}"
            result = plan(release, out, None)
            if result["stopped"] is not None:
                false_rollbacks += 1
                run = result["run"]
                print(f"healthy {i + 1}: FALSE ROLLBACK at {result['stopped']}: {run['reason']}\n  "
                      + "\n  ".join(run["tail"]))
            print(f"healthy {i + 1}/{args.healthy}: {'passed' if result['stopped'] is None else 'rolled back'}, "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
        if args.healthy:
            print(f"false rollbacks: {false_rollbacks} of {args.healthy} healthy releases")
        return 1 if failures or false_rollbacks else 0
    finally:
        if own:
            cli.down(directory)


if __name__ == "__main__":
    sys.exit(main())
