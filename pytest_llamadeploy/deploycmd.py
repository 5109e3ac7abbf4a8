"""Running the policy's deploy command: an argv list, no shell, a timeout, output kept redacted.

The command runs in its own process group (a new session), so a timeout or an
interrupted gate kills the whole group, grandchildren included (``serverless``
spawns node, which spawns more); a process that starts a session of its own
has left the group and is its own business, but if it still holds the output
open the gate stops reading it rather than wait for it. Its output is streamed line by
line, redacted, into the run's ``deploy.log`` up to :data:`OUTPUT_CAP` bytes;
memory holds only the last :data:`TAIL_CHARS` characters, which the ledger
and the report keep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .policy import DeployCommand
from .redact import redact
from .targets import _expand

#: deploy.log stops growing here (the rest is counted, and its tail still kept in memory).
OUTPUT_CAP = 8 * 1024 * 1024
TAIL_CHARS = 20000
#: A line longer than this is cut into pieces (a minified bundle printed on one line).
_LINE_MAX = 64 * 1024
#: After SIGTERM to the group, how long before SIGKILL.
KILL_GRACE = 5.0


@dataclass(frozen=True)
class DeployResult:
    argv: list[str]
    returncode: int | None
    seconds: float
    output: str  # the last TAIL_CHARS of stdout + stderr, redacted
    timed_out: bool
    bytes_total: int = 0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def summary(self) -> str:
        if self.timed_out:
            return f"deploy command timed out after {self.seconds:.0f}s (its process group was killed): {' '.join(self.argv)}"
        return f"deploy command exited {self.returncode} after {self.seconds:.1f}s: {' '.join(self.argv)}"


def render_argv(command: DeployCommand, *, env: str, release: str) -> list[str]:
    try:
        return [part.format(env=env, release=release) for part in command.argv]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"deploy.argv: unknown placeholder {exc}; allowed: {{env}}, {{release}}") from None


class _Pump(threading.Thread):
    """Copies the command's output to the log (redacted, capped), keeping a tail in memory."""

    def __init__(self, source: IO[bytes], log: IO[str], secrets: list[str], cap: int):
        super().__init__(name="llamadeploy-deploy-output", daemon=True)
        self.source, self.log, self.secrets, self.cap = source, log, secrets, cap
        self.tail: deque[str] = deque()
        self.tail_chars = 0
        self.written = 0
        self.total = 0
        self.truncated = False
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        try:
            while True:
                raw = self.source.readline(_LINE_MAX)
                if not raw:
                    return
                with self._lock:
                    if self._abandoned:
                        return
                    self._take(raw)
        except (OSError, ValueError):
            return  # the pipe was closed under us (the group was killed)

    def abandon(self) -> None:
        """Stop keeping output: what comes later belongs to no stage (the log file is closed soon after)."""
        with self._lock:
            self._abandoned = True

    def _take(self, raw: bytes) -> None:
        self.total += len(raw)
        line = redact(raw.decode(errors="replace"), self.secrets)
        self._keep(line)
        if self.written + len(line) <= self.cap:
            self.log.write(line)
            self.written += len(line)
        elif not self.truncated:
            self.truncated = True
            self.log.write(f"\n[llamadeploy: output beyond {self.cap} bytes is not kept in this file; "
                           "its last lines are in the stage record]\n")

    def _keep(self, line: str) -> None:
        self.tail.append(line)
        self.tail_chars += len(line)
        while self.tail_chars > TAIL_CHARS and len(self.tail) > 1:
            self.tail_chars -= len(self.tail.popleft())

    def text(self) -> str:
        with self._lock:
            return "".join(self.tail)[-TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's whole process group, SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break  # nobody is left in the group
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # The leader is gone; its children may not be: SIGKILL whatever is left of the group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        break


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_deploy(command: DeployCommand, *, env: str, release: str, cwd: Path, log_path: Path | None = None,
               extra_env: dict[str, str] | None = None, cap: int = OUTPUT_CAP) -> DeployResult:
    argv = render_argv(command, env=env, release=release)
    environ = dict(os.environ)
    # Commands installed beside the gate (the venv's bin, e.g. `llamadeploy`) are found
    # even when the venv is not activated, as in CI's `.venv/bin/pytest ...`.
    bindir = os.path.dirname(sys.executable)
    environ["PATH"] = bindir + os.pathsep + environ.get("PATH", "")
    command_env = {k: _expand(f"deploy.env.{k}", v, environ) for k, v in command.env.items()}
    environ.update(command_env)
    # What the command must stamp on the versions it publishes (README: the deploy contract).
    environ.update({"LLAMADEPLOY_RELEASE": release, "LLAMADEPLOY_ENV": env})
    environ.update(extra_env or {})
    secrets = list(command_env.values())
    if log_path is None:
        import tempfile

        log_path = Path(tempfile.mkdtemp(prefix="llamadeploy-deploy-")) / "deploy.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        if shutil.which(argv[0], path=environ["PATH"]) is None:
            output = f"{argv[0]}: command not found (policy key deploy.argv)"
            result = DeployResult(argv, 127, time.monotonic() - start, output, False)
            log.write(f"{output}\n# {result.summary()}\n")
            return result
        proc = subprocess.Popen(argv, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdout is not None
        pump = _Pump(proc.stdout, log, secrets, cap)
        pump.start()
        code: int | None
        timed_out = False
        try:
            code = proc.wait(timeout=command.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code, timed_out = None, True
        except BaseException:  # the gate is interrupted (SIGTERM/SIGINT): the deploy must not outlive it
            _kill_group(proc)
            pump.join(KILL_GRACE)
            raise
        pump.join(KILL_GRACE)
        if pump.is_alive() and _group_alive(proc):
            # The command exited but something it started still holds its output open.
            _kill_group(proc)
            pump.join(KILL_GRACE)
        if pump.is_alive():
            # A process that left the group (a session of its own: `setsid cmd &`) holds the output open.
            # Closing the pipe would wait for it to end (seen: a 1.5 s timeout returned after 121 s), so the
            # pump is left to die with the gate; nothing it reads from now on is kept.
            pump.abandon()
            log.write("\n[llamadeploy: a process outside the command's process group still holds its output "
                      "open; its output is not read any further]\n")
        else:
            _close(proc.stdout)
        result = DeployResult(argv, code, time.monotonic() - start, pump.text(), timed_out,
                              bytes_total=pump.total, truncated=pump.truncated)
        log.write(f"\n# {result.summary()}\n")
    return result


def _close(stream: Any) -> None:
    try:
        stream.close()
    except OSError:
        pass
