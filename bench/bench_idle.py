"""CPU of an idle sandbox (no gate running), summed over its processes.

    .venv/bin/llamadeploy sandbox up
    .venv/bin/python bench/bench_idle.py [--seconds 60]

    .venv/bin/python bench/bench_idle.py --state-dir A --state-dir B   # a before/after pair, same interval

Reads utime+stime from /proc/PID/stat (and of each process's children that
still run, e.g. PostgreSQL's backends) for every process state.json records,
twice, ``--seconds`` apart. Prints each component's share of one core and the
sum. Goal (issue 10): the sum <= 25 % of one core. Profiles, figures and what
stands in the way: bench/IDLE.md (the machine's load moves a lone figure by
+-10 %: compare two sandboxes in one interval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def _stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, utime + stime; start time, clock ticks after boot) of ``pid``; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[19])


def _cpu(pid: int) -> float:
    stat = _stat(pid)
    return stat[0] if stat else 0.0


def sample(pids: dict[str, int]) -> dict[str, float]:
    return {name: sum(_cpu(p) for p in _tree(pid)) for name, pid in pids.items()}


def sandbox_pids(state_dir: str | None = None) -> dict[str, int]:
    from pytest_llamadeploy.sandbox.state import SandboxState

    state = SandboxState.load(state_dir)
    pids = {name: int(c["pid"]) for name, c in state.components.items() if c.get("pid")}
    pids.update({f"service {r}": int(v["pid"]) for r, v in state.versions.items() if v.get("pid")})
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--state-dir", action="append", default=[],
                        help="a sandbox to measure (repeatable: several sandboxes in the same interval, so a "
                             "before/after pair sees the same machine load); default: the current sandbox")
    args = parser.parse_args()
    dirs = args.state_dir or [None]
    pids = {d: sandbox_pids(d) for d in dirs}
    before = {d: sample(p) for d, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(args.seconds)  # the measurement interval itself
    after = {d: sample(p) for d, p in pids.items()}
    elapsed = time.monotonic() - t0
    for d in dirs:
        shares = {name: round(100.0 * (after[d][name] - before[d][name]) / elapsed, 1) for name in pids[d]}
        shares["total"] = round(sum(shares.values()), 1)
        if args.json:
            print(json.dumps({"state_dir": d, **shares} if d else shares))
            continue
        if d:
            print(f"== {d}")
        for name, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"{name:16} {pct:5.1f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
