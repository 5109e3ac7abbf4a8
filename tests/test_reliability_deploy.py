"""The deploy command (finding 11): its whole process group dies on timeout, its output is capped on disk."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pytest_llamadeploy import deploycmd
from pytest_llamadeploy.deploycmd import TAIL_CHARS, run_deploy
from pytest_llamadeploy.policy import DeployCommand
from pytest_llamadeploy.procs import pid_alive

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

SPAWNS_AND_SLEEPS = """\
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
print("deploying...", flush=True)
time.sleep(60)
"""

LEAVES_A_SESSION_HOLDING_ITS_OUTPUT = """\
import os, subprocess, sys, time
# `setsid cmd &` in a deploy script: out of the process group, but holding the command's stdout.
daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
with open(sys.argv[1], "w") as f:
    f.write(str(daemon.pid))
print("deploying...", flush=True)
time.sleep(60)
"""

FLOODS = """\
import sys
line = "x" * 99 + "\\n"
for i in range(30000):  # 3 MB
    sys.stdout.write(line)
print("token=hunter2hunter2 last line of the deploy")
"""


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def test_timeout_kills_the_deploy_commands_grandchildren(tmp_path: Path) -> None:
    script, pids_file = tmp_path / "deploy.py", tmp_path / "pids"
    script.write_text(SPAWNS_AND_SLEEPS)
    command = DeployCommand(argv=[sys.executable, str(script), str(pids_file)], timeout=1.5)
    pids: list[int] = []
    try:
        result = run_deploy(command, env="prod", release="v2", cwd=tmp_path, log_path=tmp_path / "deploy.log")
        pids = [int(p) for p in pids_file.read_text().split()]
        assert result.timed_out and not result.ok and "process group was killed" in result.summary()
        assert "deploying..." in result.output
        assert _wait_gone(pids, 10) == [], "a process of the deploy command outlived its timeout"
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_deploy_output_is_streamed_to_a_capped_file(tmp_path: Path) -> None:
    script = tmp_path / "deploy.py"
    script.write_text(FLOODS)
    log = tmp_path / "deploy.log"
    command = DeployCommand(argv=[sys.executable, str(script)], timeout=60)
    result = run_deploy(command, env="prod", release="v2", cwd=tmp_path, log_path=log, cap=1_000_000)
    assert result.ok and result.bytes_total > 3_000_000 and result.truncated
    size = log.stat().st_size
    assert 1_000_000 <= size < 1_001_000, size  # the cap, plus the command line and the summary
    assert "output beyond 1000000 bytes is not kept" in log.read_text()
    # The record keeps the tail, redacted, bounded whatever the command printed.
    assert len(result.output) <= TAIL_CHARS and result.output.rstrip().endswith("last line of the deploy")
    assert "hunter2" not in result.output and "token=***" in result.output


def test_the_deploy_command_is_told_the_release_it_must_stamp(tmp_path: Path) -> None:
    script = tmp_path / "deploy.py"
    script.write_text("import os; print(os.environ['LLAMADEPLOY_RELEASE'], os.environ['LLAMADEPLOY_ENV'])")
    result = run_deploy(DeployCommand(argv=[sys.executable, str(script)]), env="prod", release="v2.1",
                        cwd=tmp_path, log_path=tmp_path / "deploy.log")
    assert result.ok and result.output.strip() == "v2.1 prod"


def test_a_process_that_left_the_group_holding_the_output_does_not_hold_the_gate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: closing the pipe waited for that process (a 1.5 s timeout returned after 121 s).
    monkeypatch.setattr(deploycmd, "KILL_GRACE", 1.0)
    script, pid_file = tmp_path / "deploy.py", tmp_path / "pid"
    script.write_text(LEAVES_A_SESSION_HOLDING_ITS_OUTPUT)
    log = tmp_path / "deploy.log"
    pids: list[int] = []
    try:
        started = time.monotonic()
        result = run_deploy(DeployCommand(argv=[sys.executable, str(script), str(pid_file)], timeout=1.0),
                            env="prod", release="v2", cwd=tmp_path, log_path=log)
        took = time.monotonic() - started
        pids = [int(pid_file.read_text())]
        assert result.timed_out and not result.ok and "deploying..." in result.output
        assert took < 6, f"run_deploy returned {took:.1f} s after its start, on a 1 s timeout"
        assert "its output is not read any further" in log.read_text()
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
