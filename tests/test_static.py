"""The code passes its own linters: ruff (style, bugs) and mypy (types), as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.xdist_group("static")
def test_ruff_finds_nothing() -> None:
    out = _run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.xdist_group("static")
def test_mypy_finds_nothing() -> None:
    out = _run("mypy", "-p", "pytest_llamadeploy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
