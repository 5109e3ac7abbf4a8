"""The performance suite's load through the sandbox's front door, at several user counts.

    .venv/bin/llamadeploy sandbox up
    .venv/bin/python bench/bench_frontdoor.py [--users 10,50,100] [--duration 15] [--processes 1]

For each user count: the same Locust run the performance gate makes
(``load.gate.run_performance``, paced users, queries + WebSocket subscribers)
against the running sandbox's front door, the API p95 and requests/s from
Locust's own stats, and the CPU (share of one core) of the front door, the
release's service, moto and Locust over the run. Goal (issue 10): at 50 users,
API p95 under 50 ms on a healthy release and the front door under 50 % of a core.

Targets 127.0.0.1 only; each load is bounded by --duration (+ Locust's start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_idle import _cpu, _tree, sandbox_pids  # noqa: E402


class CpuMeter:
    """CPU seconds of named process trees between start() and stop(); new children counted as they appear."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.seen: dict[str, dict[int, float]] = {name: {} for name in pids}
        self._stop = threading.Event()

    def _poll(self) -> None:
        for name, pid in self.pids.items():
            for p in _tree(pid):
                self.seen[name][p] = _cpu(p)

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(busy, total) jiffies of the whole machine, from /proc/stat."""
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def __enter__(self) -> CpuMeter:
        self.machine0 = self._machine()
        self._poll()
        self.base = {name: dict(v) for name, v in self.seen.items()}
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = self._machine()
        self.machine_busy = (busy - self.machine0[0]) / max(total - self.machine0[1], 1.0)
        self._poll()
        self.elapsed = time.monotonic() - self.t0

    def shares(self) -> dict[str, float]:
        out = {}
        for name, by_pid in self.seen.items():
            used = sum(cpu - self.base[name].get(pid, 0.0) for pid, cpu in by_pid.items())
            out[name] = round(100.0 * used / self.elapsed, 1)
        # The whole machine, in cores (2 = both cores busy): what the load, Locust and the rest left free.
        out["machine_cores_busy"] = round(self.machine_busy * (os.cpu_count() or 1), 2)
        return out


def run_one(state, users: int, duration: float, processes: int, folder: Path) -> dict[str, object]:
    from pytest_llamadeploy.load.gate import run_performance
    from pytest_llamadeploy.load.options import LoadOptions

    pids = {k: v for k, v in sandbox_pids().items() if k in ("frontdoor", "moto", "traffic") or k.startswith("service")}
    with CpuMeter(pids) as meter:
        evidence = run_performance(
            api_url=state.api_url.rstrip("/"), ws_url=state.ws_url, redis_url=state.redis_url,
            postgres_dsn="", users=users, spawn_rate=users, duration=duration, queries=[],
            artifacts_dir=folder / f"u{users}", options=LoadOptions(processes=processes),
        )
    http = evidence.load.http
    return {
        "users": users,
        "requests": http.num_requests,
        "rps": round(http.num_requests / max(duration, 1e-9), 1),
        "api_p50_ms": http.p50,
        "api_p95_ms": http.p95,
        "failures": http.num_failures,
        "ws_event_p95_ms": evidence.load.ws_events.p95,
        "cpu_pct_of_core": meter.shares(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()

    from pytest_llamadeploy.sandbox.state import SandboxState

    state = SandboxState.load(None)
    with tempfile.TemporaryDirectory(prefix="bench-frontdoor-") as tmp:
        for users in [int(u) for u in args.users.split(",")]:
            print(json.dumps(run_one(state, users, args.duration, args.processes, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
