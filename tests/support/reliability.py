"""Helpers of the reliability and chaos tests: a test-only checkpoint plugin, policy overrides, seeding.

The gate project is test_gate.py's (``project`` fixture: policies copied from the
repository, a stand-in gate suite, a notifier); these helpers add to it:

- ``CHECKPOINT_PLUGIN`` (appended to the project's conftest): implements the
  ``pytest_llamadeploy_checkpoint`` hook to log each checkpoint, SIGKILL the
  gate at one (``KILL_AT``), send it signals at some (``SIGNAL_AT=name=SIGTERM,...``)
  or move an alias behind its back (``MOVE_ALIAS_AT``), and a ledger backend
  whose verdict writes fail (``FAIL_VERDICT_WRITES=DIR``);
- ``set_policy``: fastprod's policy with overrides (fastprod extends the
  FAST_PROD file, renamed fastbase, so the env keeps its name);
- ``seed_deployed``: v2 published and its deploy recorded as passed, without a
  gate run, so a test starts at the stage it is about.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from pytest_llamadeploy.ledger import StageRecord, new_run_id
from tests.support.aws_setup import FUNCTIONS, lambda_client

CHECKPOINT_PLUGIN = """

import os as _os
import signal as _signal

import pytest as _pytest


@_pytest.hookimpl(optionalhook=True)
def pytest_llamadeploy_checkpoint(name, run_id):
    log = _os.environ.get("CHECKPOINT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(name + "\\n")
    if _os.environ.get("MOVE_ALIAS_AT") == name:
        import boto3

        fn, _, version = _os.environ["MOVE_ALIAS_TO"].partition("=")
        boto3.client("lambda", region_name="us-east-1").update_alias(
            FunctionName=fn, Name="live", FunctionVersion=version, RoutingConfig={"AdditionalVersionWeights": {}})
    for spec in filter(None, _os.environ.get("SIGNAL_AT", "").split(",")):
        at, _, sig = spec.partition("=")
        if at == name:
            _os.kill(_os.getpid(), getattr(_signal, sig))
    if _os.environ.get("KILL_AT") == name:
        _os.kill(_os.getpid(), _signal.SIGKILL)


def pytest_llamadeploy_ledger_backend(policy, aws, rootdir):
    if not _os.environ.get("FAIL_VERDICT_WRITES"):
        return None
    from pytest_llamadeploy.ledger import FileLedger

    class DiskFullOnVerdict(FileLedger):
        def put(self, record, *, fence=None):
            if record.status != "started":
                raise OSError(28, "No space left on device")
            return super().put(record, fence=fence)

    return DiskFullOnVerdict(_os.environ["FAIL_VERDICT_WRITES"])
"""


def add_checkpoint_plugin(project: pytest.Pytester) -> None:
    conftest = project.path / "conftest.py"
    conftest.write_text(conftest.read_text() + CHECKPOINT_PLUGIN)


def set_policy(project: pytest.Pytester, overrides: dict[str, Any]) -> None:
    """fastprod = test_gate's FAST_PROD + ``overrides`` (deep-merged by the policy loader)."""
    pol = project.path / "policies"
    base = pol / "fastbase.yaml"
    if not base.exists():
        (pol / "fastprod.yaml").rename(base)
    (pol / "fastprod.yaml").write_text(yaml.safe_dump({"extends": "fastbase", **overrides}))


def publish(url: str, release: str, *, description: str | None = None) -> dict[str, str]:
    """Publish a version of every function that names ``release`` (the deploy contract)."""
    client = lambda_client(url)
    out = {}
    for fn in FUNCTIONS:
        client.update_function_configuration(FunctionName=fn, Environment={"Variables": {"LLAMA_RELEASE": release}})
        out[fn] = client.publish_version(FunctionName=fn, Description=release if description is None else description)["Version"]
    return out


def record(ledger: Any, release: str, stage: str, status: str, old: dict[str, str], new: dict[str, str],
           weights: dict[str, Any] | None = None) -> StageRecord:
    rec = StageRecord(env="fastprod", release=release, stage=stage, status=status, run_id=new_run_id(),
                      owner="seed@test:1", started_at=time.time(), ended_at=time.time(), approver="alice",
                      old_versions=dict(old), new_versions=dict(new), weights_after=weights or {})
    ledger.put(rec)
    return rec


def seed_deployed(url: str, ledger: Any, release: str = "v2") -> dict[str, str]:
    """``release`` published at 0 % with a passed deploy record, as `--stage=deploy` leaves it."""
    new = publish(url, release)
    record(ledger, release, "deploy", "passed", {fn: "1" for fn in FUNCTIONS}, new)
    return new


def set_alias(url: str, version: str, weights: dict[str, float] | None = None) -> None:
    client = lambda_client(url)
    for fn in FUNCTIONS:
        client.update_alias(FunctionName=fn, Name="live", FunctionVersion=version,
                            RoutingConfig={"AdditionalVersionWeights": weights or {}})


class GateProcess:
    """A gate run as CI starts it, in its own process (to be signalled or killed); its output read as it comes."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None:
                self._reader.join(5)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"the gate ended (exit {self.proc.returncode}) before {text!r}:\n{self.output()}")
            assert time.monotonic() < deadline, f"the gate did not print {text!r} in {seconds}s"
            time.sleep(0.05)

    def finish(self, seconds: float = 60) -> tuple[int, str]:
        code = self.proc.wait(seconds)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code, self.output()


def spawn_gate(project: pytest.Pytester, stage: str, *args: str, release: str = "v2",
               env: dict[str, str] | None = None, ignore_sigint: bool = False) -> GateProcess:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--env=fastprod", f"--stage={stage}",
            "--approved-by=alice", *args]
    if release:
        argv.append(f"--release={release}")
    if ignore_sigint:
        # What a shell does for a background job: SIGINT ignored, inherited through exec.
        argv = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "os.execv(sys.argv[1], sys.argv[1:])", *argv]
    return GateProcess(argv, project.path, {**os.environ, **(env or {})})


def finish(proc: GateProcess, seconds: float = 60) -> tuple[int, str]:
    return proc.finish(seconds)


def dynamodb(url: str) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1", endpoint_url=url)
