"""The code passes its own linters: ruff (style, bugs) and mypy (types), as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox  # ruff and mypy run as processes (tests/conftest.py)

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


def test_no_test_names_a_postgresql_major_version() -> None:
    """Issue 15: tests pinned PostgreSQL 15's bin folder and skipped on every other PostgreSQL."""
    import re

    pinned = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "tests").rglob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"/usr/lib/postgresql/\d+", line)]
    assert pinned == [], f"use pytest_llamadeploy.sandbox.postgres.find_bin_dir(): {pinned}"


def test_postgresql_is_found_whatever_its_major_version(tmp_path: Path) -> None:
    from pytest_llamadeploy.sandbox.postgres import find_bin_dir

    for version, server in (("9.6", True), ("14", True), ("17", True), ("18", False)):  # 18: client only
        (tmp_path / version / "bin").mkdir(parents=True)
        if server:
            (tmp_path / version / "bin" / "pg_ctl").touch()
    assert find_bin_dir(str(tmp_path)) == tmp_path / "17" / "bin"
