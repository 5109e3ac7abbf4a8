"""Running the policy's deploy command: an argv list, no shell, a timeout, output kept redacted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .policy import DeployCommand
from .redact import redact
from .targets import _expand


@dataclass(frozen=True)
class DeployResult:
    argv: list[str]
    returncode: int | None
    seconds: float
    output: str  # stdout + stderr, redacted
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def summary(self) -> str:
        if self.timed_out:
            return f"deploy command timed out after {self.seconds:.0f}s: {' '.join(self.argv)}"
        return f"deploy command exited {self.returncode} after {self.seconds:.1f}s: {' '.join(self.argv)}"


def render_argv(command: DeployCommand, *, env: str, release: str) -> list[str]:
    try:
        return [part.format(env=env, release=release) for part in command.argv]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"deploy.argv: unknown placeholder {exc}; allowed: {{env}}, {{release}}") from None


def run_deploy(command: DeployCommand, *, env: str, release: str, cwd: Path, log_path: Path | None = None,
               extra_env: dict[str, str] | None = None) -> DeployResult:
    argv = render_argv(command, env=env, release=release)
    environ = dict(os.environ)
    # Commands installed beside the gate (the venv's bin, e.g. `llamadeploy`) are found
    # even when the venv is not activated, as in CI's `.venv/bin/pytest ...`.
    bindir = os.path.dirname(sys.executable)
    environ["PATH"] = bindir + os.pathsep + environ.get("PATH", "")
    command_env = {k: _expand(f"deploy.env.{k}", v, environ) for k, v in command.env.items()}
    environ.update(command_env)
    environ.update(extra_env or {})
    secrets = list(command_env.values())
    start = time.monotonic()
    try:
        if shutil.which(argv[0], path=environ["PATH"]) is None:
            raise FileNotFoundError(argv[0])
        proc = subprocess.run(argv, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=command.timeout, text=True, check=False)
        output, code, timed_out = proc.stdout, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        code, timed_out = None, True
    except FileNotFoundError:
        output, code, timed_out = f"{argv[0]}: command not found (policy key deploy.argv)", 127, False
    result = DeployResult(argv, code, time.monotonic() - start, redact(output, secrets), timed_out)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {' '.join(argv)}\n{result.output}\n# {result.summary()}\n")
    return result
