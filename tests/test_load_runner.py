"""The Locust runner: command lines, percentiles as locust computes them, and real runs.

Real runs start a small uvicorn/starlette app as a subprocess on 127.0.0.1
and run locust as a subprocess against it (never imported here).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llamadeploy.load.runner import (
    LocustError,
    LocustRun,
    _child_env,
    local_workers,
    run_locust,
    worker_command,
)
from pytest_llamadeploy.load.stats import (
    EndpointStats,
    RunStats,
    StatsFileError,
    merge,
    response_time_percentile,
)
from pytest_llamadeploy.net import free_port

APP = textwrap.dedent('''
    import asyncio
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    COUNTS = {"fast": 0, "slow": 0, "fail": 0}

    async def fast(request):
        COUNTS["fast"] += 1
        return JSONResponse({"ok": True})

    async def slow(request):
        COUNTS["slow"] += 1
        await asyncio.sleep(0.25)
        return JSONResponse({"ok": True})

    async def fail(request):
        COUNTS["fail"] += 1
        return JSONResponse({"error": "injected"}, status_code=500)

    async def counts(request):
        return JSONResponse(COUNTS)

    app = Starlette(routes=[Route("/fast", fast), Route("/slow", slow), Route("/fail", fail), Route("/counts", counts)])
''')

LOCUSTFILE = textwrap.dedent('''
    from locust import FastHttpUser, constant_pacing, task

    class Mixed(FastHttpUser):
        wait_time = constant_pacing(0.05)

        @task(6)
        def fast(self):
            self.client.get("/fast")

        @task(2)
        def slow(self):
            self.client.get("/slow")

        @task(1)
        def fail(self):
            self.client.get("/fail")
''')


def _wait_ready(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"test app exited with {proc.returncode}")
        try:
            if httpx.get(url + "/counts", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"test app at {url} not ready")


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "loadapp.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loadapp:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, time.monotonic() + 15)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def locustfile(tmp_path: Path) -> Path:
    path = tmp_path / "mixed_locustfile.py"
    path.write_text(LOCUSTFILE)
    return path


def _server_counts(url: str) -> dict[str, int]:
    import httpx

    return httpx.get(url + "/counts", timeout=5).json()


# -- pure logic ---------------------------------------------------------------------------------------------


@pytest.mark.sandbox
def test_percentile_equals_locusts_own_function() -> None:
    rng = random.Random(7)
    cases = []
    for _ in range(40):
        histogram = {rng.choice([1, 2, 3, 5, 8, 13, 40, 99, 150, 230, 1200]): rng.randint(1, 50) for _ in range(6)}
        total = sum(histogram.values()) + rng.choice([0, 0, 3])  # locust may count more requests than bucketed
        cases.append((histogram, total, rng.choice([0.5, 0.95, 0.99, 1.0, 0.0])))
    # Locust runs in a subprocess: importing it here would patch this process with gevent.
    code = textwrap.dedent('''
        import json, sys
        from locust.stats import calculate_response_time_percentile as f
        cases = json.load(sys.stdin)
        print(json.dumps([f({int(k): v for k, v in h.items()}, n, p) for h, n, p in cases]))
    ''')
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True,
                         timeout=60, check=True)
    expected = json.loads(out.stdout)
    ours = [response_time_percentile(h, n, p) for h, n, p in cases]
    assert ours == expected


def test_percentile_rejects_percent_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="0.95 for p95"):
        response_time_percentile({1: 1}, 1, 95)


def test_merge_sums_like_locusts_aggregated_row() -> None:
    a = EndpointStats("GET", "/a", 10, 1, 0, 100.0, 2.0, 30.0, {2: 5, 30: 5}, 100.0, 110.0)
    b = EndpointStats("POST", "/b", 10, 3, 0, 400.0, 10.0, 90.0, {10: 5, 90: 5}, 102.0, 120.0)
    total = merge([a, b])
    assert (total.num_requests, total.num_failures) == (20, 4)
    assert total.failure_ratio == pytest.approx(0.2)
    assert total.response_times == {2: 5, 30: 5, 10: 5, 90: 5}
    assert (total.min_response_time, total.max_response_time) == (2.0, 90.0)
    assert total.rps == pytest.approx(20 / 20.0)
    # Locust walks the histogram from the top: with 10 of 20 at or above 30 ms, p50 is 30.
    assert total.p50 == 30 and total.p95 == 90


def test_stats_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StatsFileError, match="wrote no JSON stats"):
        RunStats.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StatsFileError, match=re.escape(str(bad))):
        RunStats.load(bad)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(StatsFileError, match="expected a list"):
        RunStats.load(tmp_path / "obj.json")


def test_command_line_for_processes_and_master(tmp_path: Path) -> None:
    base = dict(locustfile=tmp_path / "f.py", host="http://127.0.0.1:1", users=5, spawn_rate=2.5, duration=9.2)
    cmd = LocustRun(**base).command(tmp_path / "out", tmp_path / "out.html")
    assert cmd[1:3] == ["-f", str(tmp_path / "f.py")]
    assert cmd[cmd.index("-u") + 1] == "5" and cmd[cmd.index("-r") + 1] == "2.5" and cmd[cmd.index("-t") + 1] == "10s"
    assert "--exit-code-on-error" in cmd and "--processes" not in cmd and "--master" not in cmd

    cmd = LocustRun(**base, processes=2).command(tmp_path / "out", tmp_path / "out.html")
    assert cmd[cmd.index("--processes") + 1] == "2"

    cmd = LocustRun(**base, expect_workers=3, master_bind_port=5999).command(tmp_path / "o", tmp_path / "o.html")
    assert cmd[cmd.index("--expect-workers") + 1] == "3"
    assert cmd[cmd.index("--master-bind-host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--master-bind-port") + 1] == "5999"

    worker = worker_command(tmp_path / "f.py", "10.0.0.5", 5999, processes=4)
    assert worker[-7:] == ["--worker", "--master-host", "10.0.0.5", "--master-port", "5999", "--processes", "4"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"users": 0}, "performance.users"),
        ({"spawn_rate": 0}, "performance.spawn_rate"),
        ({"processes": 0}, "--locust-processes"),
        ({"processes": 2, "expect_workers": 2}, "give the processes to the workers"),
    ],
)
def test_bad_settings_name_the_knob(tmp_path: Path, overrides: dict, message: str) -> None:
    base = dict(locustfile=tmp_path / "f.py", host="http://x", users=1, spawn_rate=1, duration=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        LocustRun(**{**base, **overrides})


def test_child_env_drops_locust_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_USERS", "999")
    env = _child_env({"LLAMA_WS_URL": "ws://127.0.0.1:1/ws"})
    assert "LOCUST_USERS" not in env and env["LLAMA_WS_URL"] == "ws://127.0.0.1:1/ws"


# -- real locust runs ---------------------------------------------------------------------------------------


def test_run_counts_failures_and_percentiles(app_url: str, locustfile: Path, tmp_path: Path) -> None:
    result = run_locust(locustfile, app_url, users=4, spawn_rate=4, duration=3, artifacts_dir=tmp_path / "art",
                        name="mixed", timeout=60)
    served = _server_counts(app_url)
    eps = result.endpoints
    fast, slow, fail = eps["GET /fast"], eps["GET /slow"], eps["GET /fail"]
    # Locust stops users mid-request at the deadline: the server may have seen a request locust never logged.
    for name, row in (("fast", fast), ("slow", slow), ("fail", fail)):
        assert 0 <= served[name] - row.num_requests <= 4, (name, served, row.summary())
        assert row.num_requests > 0
    assert fail.num_failures == fail.num_requests and fast.num_failures == 0 and slow.num_failures == 0
    assert result.http.failure_ratio == pytest.approx(fail.num_requests / result.http.num_requests)
    assert 250 <= slow.p50 < 400 and fast.p50 < 100
    assert result.http.p99 >= 250
    assert result.rps > 0 and result.total.num_requests == fast.num_requests + slow.num_requests + fail.num_requests
    assert result.json_path.is_file() and result.html_path.is_file() and result.log_path.is_file()
    assert "<html" in result.html_path.read_text()[:2000].lower()
    assert "4 users" in result.load_description


def test_timeout_stops_locust_and_says_so(app_url: str, locustfile: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(LocustError, match="did not finish within 2 s") as info:
        run_locust(locustfile, app_url, users=1, spawn_rate=1, duration=30, artifacts_dir=tmp_path, timeout=2)
    assert time.monotonic() - started < 15
    assert "Log " in str(info.value)


@pytest.mark.sandbox
def test_broken_locustfile_is_reported_with_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "broken_locustfile.py"
    bad.write_text("import no_such_module_here\n")
    with pytest.raises(LocustError, match="no_such_module_here"):
        run_locust(bad, "http://127.0.0.1:9", users=1, spawn_rate=1, duration=1, artifacts_dir=tmp_path, timeout=60)
    with pytest.raises(LocustError, match="not found"):
        run_locust(tmp_path / "nope.py", "http://127.0.0.1:9", users=1, spawn_rate=1, duration=1,
                   artifacts_dir=tmp_path)


def test_master_with_two_workers_on_loopback(app_url: str, locustfile: Path, tmp_path: Path) -> None:
    port = free_port()
    with local_workers(locustfile, port, 2, log_dir=tmp_path / "workers", timeout=90) as workers:
        result = run_locust(locustfile, app_url, users=4, spawn_rate=4, duration=3, artifacts_dir=tmp_path / "art",
                            expect_workers=2, master_bind_port=port, worker_wait=30, timeout=90, name="master")
        pids = [w.pid for w in workers]
    # Workers quit with their master; local_workers stops any that did not, by PID.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    served = _server_counts(app_url)
    assert result.endpoints["GET /fast"].num_requests > 0
    assert 0 <= served["fast"] - result.endpoints["GET /fast"].num_requests <= 4
    log = result.log_path.read_text()
    assert "2 workers" in result.load_description
    assert re.search(r"worker.*connected|Sending spawn jobs|All users spawned", log, re.IGNORECASE), log[-1500:]
    for i in range(2):  # each worker ran under this master and quit with it (issue 15: was `st_size >= 0`)
        text = (tmp_path / "workers" / f"worker-{i}.log").read_text()
        assert "Starting Locust" in text and "Got quit message from master" in text, f"worker-{i}.log: {text[-800:]}"


@pytest.mark.sandbox
def test_master_without_workers_gives_up_with_the_worker_command(locustfile: Path, tmp_path: Path) -> None:
    with pytest.raises(LocustError) as info:
        run_locust(locustfile, "http://127.0.0.1:9", users=1, spawn_rate=1, duration=1, artifacts_dir=tmp_path,
                   expect_workers=1, worker_wait=1, timeout=60)
    assert "--worker --master-host 127.0.0.1" in str(info.value)
