"""Run Locust as a subprocess and read its results back.

Locust is never imported here: ``import locust`` monkey-patches the whole
process with gevent, which breaks pytest-xdist and later threads (see
../shared/TOOLING.md). The gate builds a command line, runs it with a deadline
in its own process group (``--processes N`` forks children we must also stop),
and parses the ``--json-file`` it leaves behind.

Scaling out uses Locust's own distribution:

* one machine, every core: ``processes=N`` (``locust --processes N``);
* several machines: ``expect_workers=N`` makes this run the master, bound to
  ``master_bind_host:master_bind_port``; start each worker elsewhere with
  :func:`worker_command`, i.e.
  ``locust -f locustfile.py --worker --master-host HOST --master-port PORT``
  (add ``--processes N`` there to use every core of the worker machine).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..net import free_port
from ..redact import redact
from .stats import EndpointStats, RunStats, StatsFileError

#: Extra seconds past ``duration`` for start-up (~0.5 s), spawning and writing the report.
STARTUP_ALLOWANCE = 30.0
#: How long a master waits for ``expect_workers`` before giving up (locust's default is forever).
DEFAULT_WORKER_WAIT = 60
_LOG_TAIL = 2000


class LocustError(Exception):
    """Locust could not run, or ended without results; the message says why and where the log is."""


def locust_executable() -> list[str]:
    """The ``locust`` of this interpreter's environment (never one found elsewhere on PATH)."""
    script = Path(sys.executable).parent / "locust"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    # A venv without console scripts (e.g. installed with --no-binary) still has the module.
    return [sys.executable, "-m", "locust"]


def _run_time(duration: float) -> str:
    if duration <= 0:
        raise ValueError(f"duration {duration!r} s: a load run needs a positive duration (policy performance.duration)")
    return f"{max(1, math.ceil(duration))}s"


@dataclass(frozen=True)
class LocustRun:
    """What to run: everything the command line depends on, nothing about where results go."""

    locustfile: Path
    host: str
    users: int
    spawn_rate: float
    duration: float
    processes: int = 1
    expect_workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int | None = None
    worker_wait: int = DEFAULT_WORKER_WAIT
    user_classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users {self.users!r}: at least 1 user (policy performance.users)")
        if self.spawn_rate <= 0:
            raise ValueError(f"spawn_rate {self.spawn_rate!r}: must be > 0 (policy performance.spawn_rate)")
        if self.processes < 1:
            raise ValueError(f"processes {self.processes!r}: at least 1 (--locust-processes)")
        if self.expect_workers < 0:
            raise ValueError(f"expect_workers {self.expect_workers!r}: 0 (no master) or more (--locust-expect-workers)")
        if self.expect_workers and self.processes > 1:
            raise ValueError(
                "--locust-processes and --locust-expect-workers do not combine on the master: "
                "give the processes to the workers (locust --worker --processes N ...)"
            )

    def command(self, json_prefix: Path, html: Path) -> list[str]:
        cmd = [*locust_executable(), "-f", str(self.locustfile), *self.user_classes,
               "--headless", "-u", str(self.users), "-r", f"{self.spawn_rate:g}", "-t", _run_time(self.duration),
               "--host", self.host, "--json-file", str(json_prefix), "--html", str(html),
               # Request failures are the gate's verdict, not locust's: exit 0 keeps "could not run" distinct.
               "--only-summary", "--exit-code-on-error", "0"]
        if self.tags:
            cmd += ["--tags", *self.tags]
        if self.exclude_tags:
            cmd += ["--exclude-tags", *self.exclude_tags]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        if self.expect_workers:
            if self.master_bind_port is None:
                raise ValueError("a master needs master_bind_port (run_locust picks a free one)")
            cmd += ["--master", "--expect-workers", str(self.expect_workers),
                    "--expect-workers-max-wait", str(self.worker_wait),
                    "--master-bind-host", self.master_bind_host, "--master-bind-port", str(self.master_bind_port)]
        return cmd


def worker_command(locustfile: Path | str, master_host: str, master_port: int, processes: int = 1) -> list[str]:
    """The documented way to start a worker for a master run (on this or another machine)."""
    cmd = [*locust_executable(), "-f", str(locustfile), "--worker",
           "--master-host", master_host, "--master-port", str(master_port)]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


@dataclass(frozen=True)
class LoadResult:
    run: LocustRun
    stats: RunStats
    json_path: Path
    html_path: Path
    log_path: Path
    #: The command as run, secrets masked.
    command: str
    returncode: int
    elapsed: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoints(self) -> dict[str, EndpointStats]:
        return self.stats.by_key()

    @property
    def total(self) -> EndpointStats:
        return self.stats.total

    @property
    def http(self) -> EndpointStats:
        return self.stats.http

    @property
    def ws_events(self) -> EndpointStats:
        return self.stats.ws_events

    @property
    def ws_connects(self) -> EndpointStats:
        return self.stats.ws_connects

    @property
    def rps(self) -> float:
        return self.total.rps

    @property
    def load_description(self) -> str:
        """How the load was made, for gate messages: users, spawn rate, duration, scale-out."""
        r = self.run
        text = f"{r.users} users (spawn {r.spawn_rate:g}/s) for {_run_time(r.duration)}"
        if r.processes > 1:
            text += f", {r.processes} processes"
        if r.expect_workers:
            text += f", {r.expect_workers} workers"
        return text

    def summary(self) -> dict[str, Any]:
        return {
            "load": self.load_description,
            "host": redact(self.run.host),
            "elapsed_s": round(self.elapsed, 2),
            "total": self.total.summary(),
            "endpoints": [e.summary() for e in self.stats.entries],
            "json": str(self.json_path),
            "html": str(self.html_path),
            "log": str(self.log_path),
        }


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    # LOCUST_* variables would silently override the policy's users and duration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop the process group we created for ``proc`` (its PID is the group id): TERM, then KILL.

    The group also holds the children ``--processes`` forks, which outlive a
    killed parent otherwise.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.wait(timeout=grace)


def _tail(path: Path) -> str:
    try:
        return redact(path.read_text(errors="replace")[-_LOG_TAIL:])
    except OSError:
        return "(no log)"


def run_locust(
    locustfile: Path | str,
    host: str,
    users: int,
    spawn_rate: float,
    duration: float,
    *,
    artifacts_dir: Path | str,
    processes: int = 1,
    expect_workers: int = 0,
    master_bind_port: int | None = None,
    master_bind_host: str = "127.0.0.1",
    worker_wait: int = DEFAULT_WORKER_WAIT,
    user_classes: Sequence[str] = (),
    tags: Sequence[str] = (),
    exclude_tags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    name: str = "locust",
) -> LoadResult:
    """Run one headless Locust load and return its per-endpoint results.

    ``env`` reaches the locustfile (our locustfile reads its WebSocket URL and
    token from there). The JSON stats, the HTML report and the log stay in
    ``artifacts_dir`` as ``{name}.json``, ``{name}.html`` and ``{name}.log``.
    Raises :class:`LocustError` when locust fails, times out or writes no stats.
    """
    locustfile = Path(locustfile).resolve()
    if not locustfile.is_file():
        raise LocustError(f"locustfile {locustfile} not found")
    if expect_workers and master_bind_port is None:
        master_bind_port = free_port()
    run = LocustRun(locustfile, host, users, spawn_rate, duration, processes, expect_workers, master_bind_host,
                    master_bind_port, worker_wait, tuple(user_classes), tuple(tags), tuple(exclude_tags))
    out = Path(artifacts_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    json_prefix, html, log = out / name, out / f"{name}.html", out / f"{name}.log"
    json_path = out / f"{name}.json"
    for stale in (json_path, html):
        stale.unlink(missing_ok=True)
    cmd = run.command(json_prefix, html)
    if timeout is None:
        timeout = duration + STARTUP_ALLOWANCE + (worker_wait if expect_workers else 0)
    shown = redact(" ".join(cmd), secrets=(env or {}).values())

    started = time.monotonic()
    with log.open("wb") as log_file:
        # cwd=out: locust reads locust.conf / pyproject.toml from its working directory, and the
        # gate's load must be the policy's, not whatever the repository's [tool.locust] says.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=out, env=_child_env(env), start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise LocustError(
                f"locust did not finish within {timeout:g} s ({run.users} users for {_run_time(duration)}"
                f"{f', waiting for {expect_workers} workers' if expect_workers else ''}); stopped it. "
                f"Log {log}:\n{_tail(log)}"
            ) from None
        finally:
            if proc.poll() is None:
                _stop_group(proc)
            else:
                # --processes children normally exit with the parent; make sure none linger.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    elapsed = time.monotonic() - started

    if returncode != 0:
        hint = ""
        if expect_workers and "waiting for workers" in _tail(log).lower():
            hint = (f" The master gave up after {worker_wait} s waiting for {expect_workers} workers: start them with "
                    f"`{' '.join(worker_command(locustfile, master_bind_host, master_bind_port or 0))}`.")
        raise LocustError(f"locust exited with {returncode}: `{shown}`.{hint} Log {log}:\n{_tail(log)}")
    try:
        stats = RunStats.load(json_path)
    except StatsFileError as exc:
        raise LocustError(f"{exc}. Command `{shown}`; log {log}:\n{_tail(log)}") from None
    return LoadResult(run, stats, json_path, html, log, shown, returncode, elapsed)


@contextmanager
def local_workers(locustfile: Path | str, master_port: int, count: int, *, master_host: str = "127.0.0.1",
                  log_dir: Path | str, env: Mapping[str, str] | None = None,
                  timeout: float = 120.0) -> Iterator[list[subprocess.Popen[Any]]]:
    """Workers on this machine for a master run (tests and benchmarks); each is stopped by its PID on exit.

    Workers exit by themselves when the master quits; ``timeout`` bounds them
    if it never does.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[Any]] = []
    deadline = time.monotonic() + timeout
    try:
        for index in range(count):
            with (log_dir / f"worker-{index}.log").open("wb") as log_file:
                procs.append(subprocess.Popen(
                    worker_command(Path(locustfile).resolve(), master_host, master_port),
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=log_dir, env=_child_env(env), start_new_session=True))
        yield procs
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, min(15.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                _stop_group(proc)
