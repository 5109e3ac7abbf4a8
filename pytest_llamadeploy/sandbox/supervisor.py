"""Process supervision for the sandbox: spawn, wait until ready, recognise, stop.

Every component runs in its own session (``start_new_session=True``) so a
signal to its process group reaches its children too and never ours. A PID
read back from ``state.json`` is only signalled after ``/proc/PID/cmdline``
shows it still runs the recorded command: after a crash or a reboot the PID
may belong to someone else's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..net import port_open
from ..procs import pid_alive

#: The directory that holds the ``pytest_llamadeploy`` package: children must import it
#: even when the package is not installed and the caller's cwd is elsewhere.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class SandboxError(Exception):
    """A sandbox operation failed; the message says what, where, and the fix."""


def child_env(state_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a component: it finds the package and the sandbox state."""
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["LLAMADEPLOY_SANDBOX_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    # A component must never think it is a pytest-xdist worker or pick up the caller's AWS profile.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def freeze_startup_heap() -> None:
    """For a long-running server component, once its imports are done: freeze the start-up heap and
    collect young objects less often.

    A server allocates many short-lived objects per request; full collections traverse everything
    imported at start-up. In the front door they stalled the event loop for whole seconds under
    load (seen with gdb); in an idle release they were 6 % of its CPU (perf, bench/IDLE.md).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def runnable(module: str) -> bool:
    """True when ``python -m module`` would run (a package needs its ``__main__``)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:
            return importlib.util.find_spec(module + ".__main__") is not None
    except ModuleNotFoundError:
        return False
    return True


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running component detached in its own session, output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Logs are appended across runs (a restart after a crash reuses the file): mark each start.
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env), cwd=str(cwd) if cwd else None, start_new_session=True,
        )


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    from ..redact import redact

    tail = "\n".join(text.splitlines()[-lines:])
    return redact(tail)


def wait_until(check: Callable[[], bool], timeout: float, what: str, *,
               proc: subprocess.Popen[bytes] | None = None, log_path: Path | None = None,
               interval: float = 0.05) -> None:
    """Poll ``check`` until true; fail early if ``proc`` dies, or at the deadline, with the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise SandboxError(
                f"{what}: the process exited with code {proc.returncode} before it was ready"
                f"{_log_hint(log_path)}"
            )
        if time.monotonic() >= deadline:
            raise SandboxError(f"{what}: not ready after {timeout:.0f}s{_log_hint(log_path)}")
        time.sleep(interval)


def _log_hint(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    tail = log_tail(log_path)
    return f" (log {log_path}{':' if tail else ''}\n{tail})" if tail else f" (log {log_path})"


def read_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_matches(pid: int | None, markers: Sequence[str]) -> bool:
    """True when pid is alive and its command line contains every marker (the recorded identity)."""
    if not pid_alive(pid):
        return False
    cmdline = read_cmdline(int(pid or 0))
    if not cmdline:
        return False
    joined = " ".join(cmdline)
    return all(marker in joined for marker in markers)


def stop_pid(pid: int, markers: Sequence[str], timeout: float = 10.0, name: str = "process") -> str:
    """SIGTERM pid's process group, wait, SIGKILL after ``timeout``. Returns what was done.

    Only signals pid when it still runs the recorded command (``markers``).
    """
    if not pid_alive(pid):
        return "not running"
    if not pid_matches(pid, markers):
        return f"pid {pid} now runs another command; left alone"
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return "stopped"
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return f"killed (did not stop within {timeout:.0f}s of SIGTERM)"
        time.sleep(0.05)
    raise SandboxError(f"{name} (pid {pid}) survived SIGKILL; stop it by hand")


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # Components run in their own session, so pid is also their process group.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_port_closed(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(port):
            return True
        time.sleep(0.05)
    return not port_open(port)


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers url with any status (a 500 is an answer: the process is up)."""
    import urllib.error
    import urllib.request

    # Loopback only: a proxy from the environment must never see sandbox traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
