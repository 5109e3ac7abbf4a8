"""What on the command line narrows a gate run below the suites its stage lists.

``-k``, ``-m``, ``--deselect``, ``--last-failed`` and path arguments naming a file, a
test or one suite's folder each run fewer gate tests than the policy asks for: a stage
could pass on its health checks alone. A guarded env refuses them (exit 4) unless the
run is an ``--emergency`` with a ``--reason``; any env records them with the stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .suiteassign import SUITES_DIR
from .suitenames import KNOWN_SUITES


def narrowing(config: pytest.Config) -> tuple[str, ...]:
    """Each option or argument of this run that selects fewer gate tests than collection would."""
    found: list[str] = []
    option = config.option
    if getattr(option, "keyword", ""):
        found.append(f"-k {option.keyword!r}")
    if getattr(option, "markexpr", ""):
        found.append(f"-m {option.markexpr!r}")
    found += [f"--deselect {d}" for d in getattr(option, "deselect", None) or []]
    if getattr(option, "lf", False):
        found.append("--last-failed")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        for arg in config.args:
            why = _narrowing_path(arg, config.invocation_params.dir, config.rootpath)
            if why:
                found.append(why)
    return tuple(found)


def _narrowing_path(arg: str, cwd: Path, rootdir: Path) -> str | None:
    """Why a path argument narrows the run (a test, a file, one suite's folder), or None (a folder of suites)."""
    if "::" in arg:
        return f"{arg} (a single test or class)"
    path = (cwd / arg).resolve()
    if not path.is_dir():
        return f"{arg} (a single file)"
    try:
        parts = path.relative_to(rootdir.resolve()).parts
    except ValueError:
        parts = path.parts
    # A folder below suites/ is one suite (or part of one), whatever its name: a team's own suites
    # are declared in the policy, which is not read here.
    below_suites = SUITES_DIR in parts[:-1]
    if below_suites or set(parts) & set(KNOWN_SUITES):
        return f"{arg} (one suite's folder)"
    return None
