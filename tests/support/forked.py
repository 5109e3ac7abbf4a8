"""A gate run in a child process forked from the test: what ``Pytester.runpytest_subprocess`` gives
(a process of its own: its own signal handlers, exit code, module state and pytest session), without
the interpreter's start-up and imports, which were most of a gate run's time. ``import
pytest_llamadeploy.stage`` alone (boto3, botocore, pydantic) measured 3.5-6.6 s on this 2-core machine
under the test suite's own load; the forked child starts with all of it already imported.

The child is a copy of the test process at the moment of the fork; everything the stage does happens
in the child and is gone with it. The only state carried over is what the parent had imported or
cached, which is why the boto3 session cache is cleared in the child.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
import time
import traceback
from itertools import count

import pytest
from _pytest.pathlib import make_numbered_dir

_RUNS = count()


def _child(project: pytest.Pytester, argv: list[str], out: str, err: str, env: dict[str, str]) -> None:
    """The forked child: ``pytest *argv`` in the project folder, its output in two files. Never returns."""
    code = 70  # EX_SOFTWARE: the child failed before pytest could give an exit code
    try:
        os.environ.update(env)
        os.chdir(project.path)
        # Like `python -m pytest` run in the project folder: the folder is first on sys.path.
        sys.path.insert(0, str(project.path))
        sys.argv = [sys.executable, "-m", "pytest", *argv]  # what a plugin reading sys.argv would see
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the parent's stdin may be xdist's channel: never read it
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child ends with os._exit
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from pytest_llamadeploy import aws  # a boto3 session of the parent's must not serve the child

        aws._session.cache_clear()
        # The parent's objects are the child's too, and pytest's unconfigure runs gc.collect() several times:
        # over the parent's heap each took ~0.5 s. Frozen, the collector looks only at what the child makes.
        gc.freeze()
        code = int(pytest.main(argv))
    except BaseException:  # noqa: BLE001 - whatever happened goes to the child's stderr, then its exit code
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - nothing more can be said about a broken stream
                pass
        os._exit(code)


def run_forked(project: pytest.Pytester, *args: str | os.PathLike[str], timeout: float = 120,
               env: dict[str, str] | None = None) -> pytest.RunResult:
    """``project.runpytest_subprocess(*args, timeout=timeout)``, in a forked child with ``env`` added to its
    environment. ``ret`` is minus the signal's number when a signal ended the child (a checkpoint's SIGKILL)."""
    __tracebackhide__ = True
    basetemp = make_numbered_dir(root=project.path, prefix="runpytest-", mode=0o700)
    argv = [f"--basetemp={basetemp}", *(str(a) for a in args)]
    for plugin in project.plugins:
        argv = ["-p", str(plugin), *argv]
    n = next(_RUNS)
    out, err = project.path / f"forked-{n}.out", project.path / f"forked-{n}.err"
    for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice, by both processes
        stream.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(project, argv, str(out), str(err), env or {})
    pidfd = os.pidfd_open(pid)  # readable when the child has ended: no polling
    try:
        if not select.select([pidfd], [], [], timeout)[0]:  # bounded, as runpytest_subprocess: the test fails
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise project.TimeoutExpired(f"{timeout} second timeout expired running: pytest {' '.join(argv)}\n"
                                         f"{out.read_text(errors='replace')}")
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    outlines = out.read_text(errors="replace").splitlines()
    errlines = err.read_text(errors="replace").splitlines()
    # Shown when the test fails, as runpytest_subprocess does.
    print("\n".join(outlines))
    print("\n".join(errlines), file=sys.stderr)
    return pytest.RunResult(code, outlines, errlines, time.monotonic() - start)
