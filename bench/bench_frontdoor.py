"""The performance suite's load through the sandbox's front door, at several user counts.

    .venv/bin/llamadeploy sandbox up
    .venv/bin/python bench/bench_frontdoor.py [--users 10,50,100] [--duration 15] [--processes 1]

For each user count: the same Locust run the performance gate makes
(``load.gate.run_performance``, paced users, queries + WebSocket subscribers)
against the running sandbox's front door, the API p95 and requests/s from
Locust's own stats, and the CPU (share of one core) of the front door, the
release's service, moto and Locust over the run, the whole machine's busy cores,
the load average, and (``--top N``) the N busiest processes of the machine, the
sandbox's or not: what tells the front door's own queueing from a 2-core machine
that is simply full. Goal (issue 10): at 50 users, API p95 under 50 ms on a
healthy release and the front door under 50 % of a core.

``--where`` starts each run on a minute boundary and reads back, for that minute,
the p50/p95 the front door published (API Gateway ``Latency``: its whole answer;
``IntegrationLatency``: the release's part) and the release's own EMF ``Latency``
(its handler, from its middleware): Latency - IntegrationLatency is the front
door's own time, IntegrationLatency - the release's Latency the hop and the
release's wait to be scheduled. Percentiles of different minutes do not add up,
so the run must fit in one minute (``--duration`` <= 45).

Targets 127.0.0.1 only; each load is bounded by --duration (+ Locust's start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
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


def _all_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (short command line, CPU seconds) of every process on the machine."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a][:6]
        name = " ".join(w.rsplit("/", 1)[-1] if i == 0 else w for i, w in enumerate(words))[:90]
        out[int(entry.name)] = (name or entry.name, _cpu(int(entry.name)))
    return out


def busiest(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], elapsed: float,
            n: int) -> list[str]:
    """The n processes that used the most CPU between two _all_cpu() readings, as '% of a core  pid  command'."""
    used = [(cpu - before.get(pid, ("", 0.0))[1], pid, name) for pid, (name, cpu) in after.items()]
    used.sort(reverse=True)
    return [f"{100.0 * u / elapsed:5.1f}%  {pid:>7}  {name}" for u, pid, name in used[:n] if u > 0]


def _rusage_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for_minute() -> datetime:
    """Sleep to the next minute boundary (+0.5 s); returns that minute's start (UTC)."""
    now = time.time()
    start = (int(now) // 60 + 1) * 60
    time.sleep(start + 0.5 - now)  # the measurement is aligned to CloudWatch's one-minute period
    return datetime.fromtimestamp(start, UTC)


def where_the_time_goes(state, minute: datetime) -> dict[str, float | None]:
    """p50/p95 over one minute of what the front door and the baseline release published (ms)."""
    from pytest_llamadeploy import metricnames as mn
    from pytest_llamadeploy.aws import AwsConfig
    from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

    cw = AwsConfig(region=state.region or "us-east-1", endpoint_url=state.aws_endpoint,
                   credentials=dict(SANDBOX_CREDENTIALS)).client("cloudwatch")
    names = state.extra.get("names") or {}
    stage = [{"Name": "ApiName", "Value": names.get("rest_api", "onchain-api")},
             {"Name": "Stage", "Value": names.get("rest_stage", "live")}]
    api_version = next(iter(state.versions.values()))["lambda_versions"]["onchain-api"]
    series = {
        "frontdoor_latency": ("AWS/ApiGateway", mn.APIGW_LATENCY, stage),
        "frontdoor_integration": ("AWS/ApiGateway", mn.APIGW_INTEGRATION_LATENCY, stage),
        "release_handler": ("LlamaDeploy/Service", mn.SVC_LATENCY, mn.service_dims("onchain-api", api_version)),
    }
    queries = [{"Id": f"q{i}{stat}", "Label": f"{name}_{stat}", "MetricStat": {
                "Metric": {"Namespace": ns, "MetricName": metric, "Dimensions": dims}, "Period": 60, "Stat": stat}}
               for i, (name, (ns, metric, dims)) in enumerate(series.items()) for stat in ("p50", "p95")]
    time.sleep(5.0)  # the physics' lag: the minute's last datapoints reach moto 1-3 s after it closes
    found = cw.get_metric_data(MetricDataQueries=queries, StartTime=minute, EndTime=minute + timedelta(seconds=60))
    return {r["Label"]: (round(r["Values"][0], 1) if r["Values"] else None) for r in found["MetricDataResults"]}


def run_one(state, users: int, duration: float, processes: int, folder: Path, top: int = 0,
            api_url: str = "", ws_url: str = "", pids: dict[str, int] | None = None,
            where: bool = False) -> dict[str, object]:
    """One performance-suite load; ``api_url``/``ws_url``/``pids`` default to the sandbox's front door."""
    from pytest_llamadeploy.load.gate import run_performance
    from pytest_llamadeploy.load.options import LoadOptions

    if pids is None:
        pids = {k: v for k, v in sandbox_pids().items()
                if k in ("frontdoor", "moto", "traffic") or k.startswith("service")}
    minute = wait_for_minute() if where else None
    everyone = _all_cpu() if top else {}
    # Locust runs as this process's child and has exited (been waited for) by the end: its CPU is
    # in this process's RUSAGE_CHILDREN, not in any /proc entry left to read.
    children0 = _rusage_children()
    with CpuMeter(pids) as meter:
        evidence = run_performance(
            api_url=(api_url or state.api_url).rstrip("/"), ws_url=ws_url or state.ws_url,
            redis_url=state.redis_url, postgres_dsn="", users=users, spawn_rate=users, duration=duration,
            queries=[], artifacts_dir=folder / f"u{users}", options=LoadOptions(processes=processes),
        )
    http = evidence.load.http
    shares = meter.shares()
    shares["locust"] = round(100.0 * (_rusage_children() - children0) / meter.elapsed, 1)
    row: dict[str, object] = {
        "users": users,
        "loadavg_after": load_average(),
        "requests": http.num_requests,
        "rps": round(http.num_requests / max(duration, 1e-9), 1),
        "api_p50_ms": http.p50,
        "api_p95_ms": http.p95,
        "failures": http.num_failures,
        "ws_event_p95_ms": evidence.load.ws_events.p95,
        "cpu_pct_of_core": shares,
    }
    if minute is not None:
        row["minute"] = minute.isoformat()
        row["published_ms"] = where_the_time_goes(state, minute)
    if top:
        row["top"] = busiest(everyone, _all_cpu(), meter.elapsed, top)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--top", type=int, default=0, help="also list the N busiest processes of the machine")
    parser.add_argument("--repeat", type=int, default=1, help="runs per user count")
    parser.add_argument("--where", action="store_true",
                        help="align each run to a minute and read back the front door's and the release's p95s")
    args = parser.parse_args()
    if args.where and args.duration > 45:
        parser.error("--where: the run must fit in one CloudWatch minute; use --duration 45 or less")

    from pytest_llamadeploy.sandbox.state import SandboxState

    state = SandboxState.load(None)
    with tempfile.TemporaryDirectory(prefix="bench-frontdoor-") as tmp:
        for users in [int(u) for u in args.users.split(",")]:
            for _ in range(args.repeat):
                print(json.dumps({"loadavg_before": load_average(),
                                  **run_one(state, users, args.duration, args.processes, Path(tmp), args.top,
                                           where=args.where)}),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
