"""Benchmark: fault onset to all traffic back on the old version (run by hand; figures in bench/WATCH.md).

    .venv/bin/python bench/bench_rollback.py [--runs 5] [--at 5] [--dir SANDBOX_DIR] [--env sandbox-aws]

``--env sandbox-aws`` runs prod's policy (5-minute bakes) against a sandbox brought up with
``llamadeploy sandbox up --physics aws`` (AWS/* at 60-s resolution, minutes late): issue 11's figure is
``--env sandbox-aws --physics aws --runs 3 --at 60``.

Without ``--dir`` it brings up a sandbox of its own in a temporary folder and stops it at the end; with
``--dir`` it uses that running sandbox (and leaves it running). It deploys one release (stage ``deploy``),
then ``--runs`` times: runs ``pytest --env=sandbox --stage=shift10`` as CI would, waits ``--at`` seconds
after the stage prints that the bake started, injects ``error_rate=0.3`` with ``llamadeploy sandbox fault``
and, from the moment that command returns, polls ``get_alias`` of every function every 50 ms until none
has routing weights left (all traffic on the old version). The fault is then cleared and shift10 re-run
for the same release (a rolled-back shift10 may be re-run: its previous stage, deploy, passed).

Printed per run: onset -> alias clear (the figure), onset -> breach and breach -> rollback (from the
watch evidence in context.json), the trigger that fired and the stage's exit code; then the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llamadeploy.sandbox.state import ENV_DIR, SandboxState  # noqa: E402

LLAMADEPLOY = [sys.executable, "-m", "pytest_llamadeploy.cli"]
FUNCTIONS = ("onchain-api", "onchain-ws")
FAULT = "error_rate=0.3"
STAGE_TIMEOUT = 900.0
#: The env the stages run in (``--env``): sandbox (fast physics) or sandbox-aws (prod's policy).
ENV = "sandbox"


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLAMADEPLOY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _stage(stage: str, release: str, out: Path, on_baking: Any = None) -> tuple[int, list[str], Path]:
    artifacts = out / f"{stage}-{uuid.uuid4().hex[:4]}"
    artifacts.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--env={ENV}",
                             f"--stage={stage}", f"--release={release}", f"--llama-alluredir={artifacts}",
                             f"--llama-artifacts={artifacts}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(STAGE_TIMEOUT, proc.kill)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_baking is not None and "llamadeploy: baking" in line:
                threading.Thread(target=on_baking, daemon=True).start()
                on_baking = None
        return proc.wait(timeout=30), lines, artifacts
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _alias_clear(lam: Any) -> bool:
    return all(not (lam.get_alias(FunctionName=fn, Name="live").get("RoutingConfig") or {})
               .get("AdditionalVersionWeights") for fn in FUNCTIONS)


def one_run(lam: Any, release: str, at: float, out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def inject() -> None:
        time.sleep(at)  # the fault's onset, a chosen point in the bake (not a stand-in for a condition)
        if _alias_clear(lam):
            result["error"] = "alias already clear before the fault"
            return
        done = _cli("sandbox", "fault", "--release", release, FAULT)
        onset = time.time()
        result["onset"] = onset
        result["fault_rc"] = done.returncode
        deadline = onset + 240.0  # AWS physics: a miss by the EMF signal waits for AWS/Lambda (minutes)
        while time.time() < deadline:
            if _alias_clear(lam):
                result["clear"] = time.time()
                return
            time.sleep(0.05)

    rc, lines, artifacts = _stage("shift10", release, out, on_baking=inject)
    cleared = _cli("sandbox", "fault", "--release", release, "error_rate=0")
    if cleared.returncode != 0:
        raise SystemExit(f"could not clear the fault: {cleared.stdout}{cleared.stderr}")
    result["rc"] = rc
    contexts = sorted(artifacts.glob("*/context.json"))
    breach = json.loads(contexts[-1].read_text())["watch"].get("bake", {}).get("breach") if contexts else None
    result["breach"] = breach
    if "onset" in result and "clear" in result:
        result["onset_to_clear"] = result["clear"] - result["onset"]
    if breach and "onset" in result:
        result["onset_to_breach"] = breach["at"] - result["onset"]
        if "clear" in result:
            result["breach_to_clear"] = result["clear"] - breach["at"]
    if rc != 1 or "onset_to_clear" not in result:
        result["tail"] = lines[-15:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--at", type=float, default=5.0, help="seconds into the bake to inject the fault")
    parser.add_argument("--dir", type=Path, default=None, help="a running sandbox to use (default: start one)")
    parser.add_argument("--env", default="sandbox", help="sandbox or sandbox-aws")
    parser.add_argument("--physics", default="fast", help="the physics of a sandbox this bench starts")
    args = parser.parse_args()
    global ENV
    ENV = args.env
    from pytest_llamadeploy.sandbox import cli
    from pytest_llamadeploy.sandbox.provision import sandbox_aws

    own = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="bench-rollback-")) if own else args.dir
    os.environ[ENV_DIR] = str(directory)
    out = Path(tempfile.mkdtemp(prefix="bench-rollback-out-"))
    try:
        if own:
            t0 = time.monotonic()
            cli.up(directory, physics=args.physics)
            print(f"sandbox up in {time.monotonic() - t0:.1f}s ({directory})")
        lam = sandbox_aws(SandboxState.load(directory)).client("lambda")
        release = f"bench-{uuid.uuid4().hex[:6]}"
        rc, lines, _ = _stage("deploy", release, out)
        if rc != 0:
            print("\n".join(lines[-30:]))
            print(f"deploy of {release} exited {rc}", file=sys.stderr)
            return 1
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        figures = []
        for i in range(args.runs):
            r = one_run(lam, release, args.at, out)
            b = r.get("breach") or {}
            print(f"run {i + 1}: exit {r['rc']}, onset->alias clear "
                  f"{r.get('onset_to_clear', float('nan')):.2f}s (onset->breach "
                  f"{r.get('onset_to_breach', float('nan')):.2f}s, breach->clear "
                  f"{r.get('breach_to_clear', float('nan')):.2f}s), trigger {b.get('rule')} "
                  f"(source {b.get('source')}), load {os.getloadavg()[0]:.1f}")
            if "tail" in r:
                print("  " + "\n  ".join(r["tail"]))
            if "onset_to_clear" in r:
                figures.append(r["onset_to_clear"])
        if figures:
            print(f"median onset->alias clear over {len(figures)} runs: {statistics.median(figures):.2f}s "
                  f"(min {min(figures):.2f}s, max {max(figures):.2f}s)")
        return 0 if len(figures) == args.runs else 1
    finally:
        if own:
            cli.down(directory)


if __name__ == "__main__":
    sys.exit(main())
