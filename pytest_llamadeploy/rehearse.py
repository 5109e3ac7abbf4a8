"""``llamadeploy rehearse``: the whole production plan against the sandbox, as CI would run it.

A good release goes through every stage of the env's plan (``--env``, default
``sandbox``), each stage its own ``pytest --env=... --stage=... --release=...``
process; then a release deployed with the ``--fault`` knobs (default
``error_rate=0.3``) must be caught and rolled back with traffic back on the good
one. Exit 0 only when both happened. The sandbox is brought up with the physics
the env's policy is written for: ``aws`` when its AWS metrics are per minute
(``sandbox-aws``), ``fast`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    release: str
    stage: str
    result: str
    seconds: float
    weights: str
    reason: str = ""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="sandbox",
                        help="a sandbox env of the policy folder: sandbox (fast physics) or sandbox-aws (prod's "
                             "policy under AWS's physics); default sandbox")
    parser.add_argument("--policy-dir", default="policies", help="policy folder (default: policies)")
    parser.add_argument("--alluredir", default="allure-results", help="Allure results folder (default: allure-results)")
    parser.add_argument("--fault", action="append", default=None, metavar="KNOB=VALUE",
                        help="a fault of the bad release, repeatable (default: error_rate=0.3); knobs: "
                             "`llamadeploy sandbox fault --help`")
    parser.add_argument("--down", action="store_true", help="stop the sandbox at the end")
    parser.add_argument("--workers", default="0", help="pytest-xdist workers per stage (default: 0, in process)")


def _llamadeploy(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def _weights(status: dict[str, Any]) -> str:
    parts = []
    for fn, st in status.get("functions", {}).items():
        w = st.get("weights") or {}
        share = 1.0 - sum(w.values())
        parts.append(f"{fn} v{st['version']} {share:.0%}" + "".join(f" + v{v} {x:.0%}" for v, x in w.items()))
    return "; ".join(parts)


def _status(args: argparse.Namespace) -> dict[str, Any]:
    out = _llamadeploy("status", "--env", args.env, "--policy-dir", args.policy_dir, "--json", timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _stage(release: str, stage: str, args: argparse.Namespace, env: dict[str, str], log_dir: Path,
           timeout: float) -> Row:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--env={args.env}", f"--stage={stage}",
            f"--release={release}", f"--policy-dir={args.policy_dir}", f"--alluredir={args.alluredir}", "-q",
            "-rfE", f"--junitxml={log_dir / f'{release}-{stage}.xml'}"]
    if args.workers not in ("0", ""):
        argv += ["-n", args.workers]
    started = time.monotonic()
    log = log_dir / f"{release}-{stage}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    status = _status(args)
    recorded = next((r["stages"].get(stage) for r in status.get("releases", []) if r["release"] == release), None)
    result = recorded or ("refused" if proc.returncode == 4 else f"exit {proc.returncode}")
    reason = ""
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(("reason:", "ERROR", "FAILED"))]
        reason = (lines[0] if lines else f"see {log}")[:160]
    print(f"  {release:<22} {stage:<9} {result:<12} {seconds:6.1f}s  {_weights(status)}", flush=True)
    return Row(release, stage, result, seconds, _weights(status), reason)


def run(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policy

    try:
        policy = load_policy(args.policy_dir, args.env).policy
    except PolicyError as exc:
        print("rehearse: " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    if policy.aws.endpoint != "sandbox" or policy.targets.source != "sandbox":
        print(f"rehearse: env {args.env} is not a sandbox env (its policy needs aws.endpoint: sandbox and "
              "targets.source: sandbox); rehearse sandbox or sandbox-aws", file=sys.stderr)
        return 2
    faults = args.fault or ["error_rate=0.3"]
    from .sandbox.deploy import FaultError, parse_fault_args

    try:
        parse_fault_args(faults)  # a bad knob is refused before anything starts
    except FaultError as exc:
        print(f"rehearse: {exc}", file=sys.stderr)
        return 2
    # The physics the policy is written for: AWS/* per minute means AWS's (sandbox/physics.py).
    physics = "aws" if policy.metrics.aws.resolution >= 60 else "fast"
    started = time.monotonic()
    print(f"rehearse: bringing the sandbox up with {physics} physics (idempotent)", flush=True)
    up = _llamadeploy("sandbox", "up", "--physics", physics, timeout=600)
    if up.returncode != 0:
        print(up.stdout + up.stderr, file=sys.stderr)
        print("rehearse: the sandbox did not come up", file=sys.stderr)
        return 1
    plan = policy.plan
    # A stage lasts its bake, the final wait for the bake's last data and its suites.
    stage_timeout = max(s.bake for s in policy.stages.values()) + policy.metrics.aws.lag + 900.0
    stamp = time.strftime("%m%d%H%M%S")
    good, bad = f"good-{stamp}", f"bad-{stamp}"
    log_dir = Path(".llamadeploy/rehearse") / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "LLAMADEPLOY_SANDBOX_FAULTS"}
    rows: list[Row] = []
    print(f"rehearse: plan {' -> '.join(plan)}; logs in {log_dir}", flush=True)
    print(f"  {'release':<22} {'stage':<9} {'result':<12} {'time':>7}  weights after", flush=True)
    for stage in plan:
        rows.append(_stage(good, stage, args, base_env, log_dir, stage_timeout))
        if rows[-1].result != "passed":
            break
    good_ok = all(r.result == "passed" for r in rows) and len(rows) == len(plan)
    good_versions = _status(args).get("functions", {})
    bad_env = {**base_env, "LLAMADEPLOY_SANDBOX_FAULTS": ",".join(faults)}
    bad_rows: list[Row] = []
    if good_ok:
        for stage in plan:
            bad_rows.append(_stage(bad, stage, args, bad_env, log_dir, stage_timeout))
            if bad_rows[-1].result != "passed":
                break
    after = _status(args).get("functions", {})
    bad_caught = bool(bad_rows) and bad_rows[-1].result == "rolled_back"
    traffic_on_good = bool(after) and all(
        st.get("version") == good_versions.get(fn, {}).get("version") and not st.get("weights") for fn, st in after.items())
    rows += bad_rows
    print()
    print(f"{'release':<22} {'stage':<9} {'result':<12} {'duration':>8}  weights after")
    for r in rows:
        print(f"{r.release:<22} {r.stage:<9} {r.result:<12} {r.seconds:7.1f}s  {r.weights}")
        if r.reason:
            print(f"{'':<22}   {r.reason}")
    print()
    print(f"good release {good}: {'promoted to 100%' if good_ok else 'NOT promoted'}")
    print(f"bad release {bad} ({', '.join(faults)}): "
          + (f"caught at {bad_rows[-1].stage} and rolled back" if bad_caught else "NOT rolled back")
          + ("; traffic back on the good release" if traffic_on_good else "; traffic NOT on the good release"))
    print(f"Allure results: {Path(args.alluredir).resolve()} (build the report: llamadeploy report)")
    print(f"stage logs and JUnit XML: {log_dir.resolve()}")
    print(f"rehearsal took {time.monotonic() - started:.0f}s")
    if args.down:
        _llamadeploy("sandbox", "down", timeout=300)
    return 0 if (good_ok and bad_caught and traffic_on_good) else 1
