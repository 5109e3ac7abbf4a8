"""Adoption commands: `llamadeploy --version`, `policy check --json`, `llamadeploy init` from a source checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.scaffold import REQUIREMENTS

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"


@pytest.mark.sandbox
def test_version_is_the_installed_distribution() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_llamadeploy.cli", "--version"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"llamadeploy {metadata.version('pytest-llamadeploy')}"


# --- policy check --json -----------------------------------------------------------------------


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    shutil.copytree(POLICIES, tmp_path / "policies")
    return tmp_path / "policies"


def _check_json(pdir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = cli(["policy", "check", str(pdir), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_policy_check_json_all_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _check_json(POLICIES, capsys)
    assert code == 0 and data["ok"] is True
    assert sorted(data["envs"]) == ["dev", "prod", "sandbox", "sandbox-aws", "staging"]
    prod = data["envs"]["prod"]
    assert prod["ok"] and prod["problems"] == [] and prod["violations"] == []
    assert [Path(f).name for f in prod["files"]] == ["defaults.yaml", "prod.yaml"]
    assert len(prod["sha256"]) == 64


def test_policy_check_json_names_file_key_value_allowed(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prod = (pdir / "prod.yaml").read_text()
    loosened = prod.replace("rollback_on_failure: true", "rollback_on_failure: false", 1)
    assert loosened != prod
    (pdir / "prod.yaml").write_text(loosened)
    dev = (pdir / "dev.yaml").read_text()
    (pdir / "dev.yaml").write_text(dev + "\nwatch:\n  interval: fast\n")
    code, data = _check_json(pdir, capsys)
    assert code == 1 and data["ok"] is False
    assert data["envs"]["staging"]["ok"] is True
    violation = data["envs"]["prod"]["violations"][0]
    assert violation["file"] == str(pdir / "prod.yaml")
    assert (violation["key"], violation["value"], violation["rule"]) == (
        "rollback_on_failure", False, "prod rolls back on failure")
    assert violation["allowed"]
    problem = data["envs"]["dev"]["problems"][0]
    assert problem["file"] == str(pdir / "dev.yaml")
    assert (problem["key"], problem["value"]) == ("watch.interval", "fast")
    assert "not a duration" in problem["allowed"] and problem["message"].startswith(str(pdir / "dev.yaml"))


def test_policy_check_json_without_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _check_json(tmp_path, capsys)
    assert code == 2 and data["ok"] is False and data["envs"] == {}
    assert "no policy files" in data["problems"][0]["message"]


# --- init from a source checkout (the wheel's copy: tests/test_adopt_wheel.py) ------------------


def test_init_writes_a_starting_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "service"
    assert cli(["init", str(target)]) == 0
    out = capsys.readouterr().out
    for name in ("defaults", "dev", "staging", "prod", "sandbox"):
        assert (target / "policies" / f"{name}.yaml").read_bytes() == (POLICIES / f"{name}.yaml").read_bytes()
    for suite in ROOT.joinpath("suites").rglob("*.py"):
        assert (target / suite.relative_to(ROOT)).read_bytes() == suite.read_bytes(), suite
    for workflow in ROOT.joinpath(".github", "workflows").glob("*.yml"):
        assert (target / workflow.relative_to(ROOT)).read_bytes() == workflow.read_bytes(), workflow
    assert f"pytest-llamadeploy=={metadata.version('pytest-llamadeploy')}" in (target / REQUIREMENTS).read_text()
    assert 'testpaths = ["suites"]' in (target / "pyproject.toml").read_text()
    assert (target / "sql" / "migrations").is_dir()
    # what the workflows install from and cache on is there (tests/test_workflow.py checks the same here)
    for needed in ("requirements-llamadeploy.txt", "pyproject.toml", "tools/allure/package-lock.json",
                   ".github/workflows/gate.yml"):
        assert (target / needed).is_file(), needed
    assert "llamadeploy sandbox up" in out and "pytest --env=sandbox --stage=verify" in out
    assert ".llamadeploy/" in (target / ".gitignore").read_text().split()
    # the written policies pass the same check as ours
    assert cli(["policy", "check", str(target / "policies")]) == 0


def test_init_refuses_to_overwrite_naming_each_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "service"
    (target / "policies").mkdir(parents=True)
    (target / "policies" / "prod.yaml").write_text("# ours\n")
    (target / "suites" / "health").mkdir(parents=True)
    (target / "suites" / "health" / "test_health.py").write_text("def test_ours(): pass\n")
    (target / "pyproject.toml").write_text("[project]\nname = 'service'\n")
    (target / ".gitignore").write_text("allure-results/\n")
    assert cli(["init", str(target)]) == 2
    out = capsys.readouterr().out
    assert "refused, nothing written" in out
    assert "would overwrite policies/prod.yaml" in out and "would overwrite suites/health/test_health.py" in out
    assert "--force" in out
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        ".gitignore", "policies/prod.yaml", "pyproject.toml", "suites/health/test_health.py"]  # nothing else written
    # --force overwrites those two and leaves the repository's own pyproject.toml alone, saying what to add
    assert cli(["init", str(target), "--force"]) == 0
    out = capsys.readouterr().out
    assert "overwrote policies/prod.yaml" in out and "overwrote suites/health/test_health.py" in out
    assert (target / "policies" / "prod.yaml").read_bytes() == (POLICIES / "prod.yaml").read_bytes()
    assert (target / "pyproject.toml").read_text() == "[project]\nname = 'service'\n"
    assert "to do by hand: pyproject.toml exists" in out and 'testpaths = ["suites"]' in out
    assert "to do by hand: .gitignore exists: add .llamadeploy/, allure-report/" in out
    assert (target / ".gitignore").read_text() == "allure-results/\n"


def test_init_twice_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["init", str(tmp_path)]) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli(["init", str(tmp_path)]) == 0
    assert "0 file(s) written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
