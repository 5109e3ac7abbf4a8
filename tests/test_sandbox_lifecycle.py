"""The sandbox's lifecycle through its real CLI: up, up again, crash recovery, down, status, deploy, fault."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_llamadeploy.sandbox.state import SandboxState
from pytest_llamadeploy.sandbox.supervisor import PACKAGE_ROOT, pid_alive, port_open, stop_pid

pytestmark = pytest.mark.sandbox


def sandbox_cli(directory: Path, *args: str, timeout: float = 240,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", "sandbox", "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=timeout, env=environ, cwd=str(directory))


def recorded(directory: Path) -> list[dict[str, Any]]:
    state = SandboxState.load(directory)
    return [*state.components.values(), *(v for v in state.versions.values() if v.get("pid"))]


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive {timeout}s after SIGKILL"
        time.sleep(0.05)


def assert_nothing_left(entries: list[dict[str, Any]]) -> None:
    alive = [e["pid"] for e in entries if pid_alive(e["pid"])]
    assert not alive, f"processes left running after down: {alive}"
    listening = [e["port"] for e in entries if e.get("port") and port_open(int(e["port"]))]
    assert not listening, f"ports still accepting connections after down: {listening}"


def test_up_is_idempotent_comes_back_after_a_crash_and_down_leaves_nothing(tmp_path: Path) -> None:
    # One sandbox's life (a sandbox start is ~20 s of the suite): up, up again, a crash, up, down.
    started = time.monotonic()
    first = sandbox_cli(tmp_path, "up", "--traffic-rate", "0")
    up_seconds = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    before = recorded(tmp_path)
    assert {"moto", "postgres", "redis"} <= set(SandboxState.load(tmp_path).components)
    try:
        again = sandbox_cli(tmp_path, "up", "--traffic-rate", "0")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert [e["pid"] for e in recorded(tmp_path)] == [e["pid"] for e in before]

        # A crash: redis killed. status says so; the next up cleans the stale processes and comes back.
        redis_pid = SandboxState.load(tmp_path).components["redis"]["pid"]
        os.kill(redis_pid, signal.SIGKILL)
        wait_dead(redis_pid)
        status = sandbox_cli(tmp_path, "status", "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["components"]["redis"]["alive"] is False
        back = sandbox_cli(tmp_path, "up", "--traffic-rate", "0")
        assert back.returncode == 0, back.stderr
        assert "stale state (redis not running)" in back.stderr
        # The crashed run's other processes were stopped, not left behind next to the new ones.
        assert_nothing_left(before)
        state = SandboxState.load(tmp_path)
        assert state.components["redis"]["pid"] != redis_pid
        assert json.loads(sandbox_cli(tmp_path, "status", "--json").stdout)["running"] is True
    finally:
        after = recorded(tmp_path)
        started = time.monotonic()
        down = sandbox_cli(tmp_path, "down")
        down_seconds = time.monotonic() - started
        assert down.returncode == 0, down.stderr
        assert_nothing_left(after)
    assert not (tmp_path / "state.json").exists()
    print(f"sandbox up {up_seconds:.1f}s, down {down_seconds:.1f}s")


def test_status_json_names_endpoints_versions_and_faults(sandbox: SandboxState) -> None:
    result = sandbox_cli(sandbox.directory, "status", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    data = json.loads(result.stdout)
    for key in ("aws_endpoint", "api_url", "ws_url", "postgres_dsn", "redis_url", "sqs_queue_url"):
        assert data[key], f"status --json has no {key}"
    assert data["postgres_dsn"].startswith("postgresql://postgres@127.0.0.1:")
    baseline = data["versions"]["v0"]
    assert baseline["alive"] is True and "faults" in baseline
    assert set(baseline["lambda_versions"]) == {"onchain-api", "onchain-ws"}
    assert set(data["aliases"]) == {"onchain-api", "onchain-ws"}
    assert all(entry["alive"] for entry in data["components"].values())


@pytest.fixture(scope="module")
def deployed(sandbox: SandboxState) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A release of this module's own, deployed with faults, on the shared sandbox.

    Its own, because the sandbox-exclusive tests on the other workers move the alias and set faults
    on the baseline v0 at any moment: what is asserted here is about this release alone.
    """
    release = f"lifecycle-{uuid.uuid4().hex[:6]}"
    result = sandbox_cli(sandbox.directory, "deploy", "--release", release, "--fault", "latency_ms=1",
                         env={"LLAMADEPLOY_SANDBOX_FAULTS": "error_rate=0.5"})
    assert result.returncode == 0, result.stderr
    return release, result


def test_deploy_publishes_versions_pointing_at_the_release_and_leaves_the_alias(
        sandbox: SandboxState, deployed: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    import httpx

    from pytest_llamadeploy.sandbox.provision import sandbox_aws

    release, result = deployed
    lam = sandbox_aws(sandbox).client("lambda")
    lines = result.stdout.strip().splitlines()
    versions = dict(line.split() for line in lines[:2])
    summary = json.loads(lines[2])
    assert summary["lambda_versions"] == versions and summary["faults"] == {"error_rate": 0.5, "latency_ms": 1.0}

    url = SandboxState.load(sandbox.directory).versions[release]["url"]
    for function, version in versions.items():
        assert int(version) > 1
        env = lam.get_function_configuration(FunctionName=function, Qualifier=version)["Environment"]["Variables"]
        assert env["LLAMA_BACKEND_URL"] == url and env["LLAMA_RELEASE"] == release
        # The sandbox's DSN has a user and no password: nothing secret goes into a Lambda configuration.
        assert urlsplit(env["DATABASE_URL"]).password is None and env["REDIS_URL"] == sandbox.redis_url
    health = httpx.get(f"{url}/health", timeout=5, trust_env=False)
    assert health.headers.get("x-llama-release") == release
    # Deploying sends the new versions no traffic: the alias names neither, as primary or weighted.
    for function, version in versions.items():
        alias = lam.get_alias(FunctionName=function, Name="live")
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        assert alias["FunctionVersion"] != version and version not in weights, (function, version, alias)

    again = sandbox_cli(sandbox.directory, "deploy", "--release", release)
    assert again.returncode == 0, again.stderr
    assert dict(line.split() for line in again.stdout.strip().splitlines()[:2]) == versions


def test_fault_with_an_unknown_knob_or_bad_value_is_a_clear_error(
        sandbox: SandboxState, deployed: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    from pytest_llamadeploy.sandbox.deploy import state_lock

    release, _ = deployed
    # Under the state lock every writer of state.json takes (the CLI, and the exclusive tests' reset, which
    # clears every running release's faults): the bad input is refused before the CLI takes that lock, and
    # between the two reads nothing else may write. A CLI that took the lock first would wait and time out.
    with state_lock(sandbox.directory):
        before = SandboxState.load(sandbox.directory).versions[release].get("faults")
        unknown = sandbox_cli(sandbox.directory, "fault", "--release", release, "bogus_knob=1", timeout=60)
        bad = sandbox_cli(sandbox.directory, "fault", "--release", release, "error_rate=2", timeout=60)
        after = SandboxState.load(sandbox.directory).versions[release].get("faults")
    assert unknown.returncode == 2
    assert "bogus_knob" in unknown.stderr and "error_rate" in unknown.stderr
    assert bad.returncode == 2
    assert "error_rate" in bad.stderr and "between 0 and 1" in bad.stderr
    assert after == before


def test_stop_pid_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    # A PID from a crashed run's state may now belong to another program: it must not be signalled.
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"sleep" not in cmdline.read_bytes():  # until the fork has exec'd `sleep`
        assert time.monotonic() < deadline, "sleep did not start"
        time.sleep(0.01)
    try:
        assert "left alone" in stop_pid(proc.pid, ["pytest_llamadeploy.sandbox.moto_server", str(tmp_path)])
        assert proc.poll() is None
        assert stop_pid(proc.pid, ["sleep", "30"], timeout=5) == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
