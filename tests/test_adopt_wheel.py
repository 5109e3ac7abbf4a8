"""Another team's path: build the wheel, install it into a fresh venv, `llamadeploy init` an empty folder.

The wheel is built from a copy of this checkout (``pip wheel . --no-deps``), as
PyPI would get it, and installed with ``--no-deps`` into a new venv whose only
link to this checkout is a ``.pth`` line naming this venv's site-packages (the
dependencies, so nothing is downloaded again). This venv's own package is an
editable install whose finder that line does not activate: what the new venv
imports is the wheel's copy, which the tests assert. Then, against the shared
sandbox, the README's sandbox commands and ``pytest --env=sandbox --stage=verify``
run in the initialised folder with that venv's ``llamadeploy`` and ``pytest``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_llamadeploy._shipped import SHIPPED
from tests.sandbox_fixtures import exclusive

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300
VERIFY_TIMEOUT = 240

# Both tests of the module share the built wheel: keep them on one xdist worker (scripts/test: --dist loadgroup).
pytestmark = [pytest.mark.sandbox, pytest.mark.xdist_group("sandbox-exclusive")]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def run(self, *argv: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """A command of the new venv (``llamadeploy`` or ``python``), never this checkout's."""
        command = [str(self.bin / argv[0]), *argv[1:]]
        environ = {**os.environ, **(env or {})}
        environ.pop("PYTHONPATH", None)  # the new venv must find the package in its own site-packages
        environ.pop("PYTEST_XDIST_WORKER", None)
        environ["PATH"] = f"{self.bin}{os.pathsep}{environ.get('PATH', '')}"
        return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout,
                              check=False)


def _source_copy(dest: Path) -> Path:
    """What a release would be built from: the checkout without venv, caches, build output and node_modules."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".venv", ".git", "node_modules", "build", "*.egg-info", "__pycache__", ".llamadeploy", "allure-results",
        "allure-report", "_templates", ".pytest_cache"))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("adopt-wheel")
    source = _source_copy(work / "source")
    wheels = work / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(wheels)],
                           cwd=source, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("pytest_llamadeploy-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    (site / "llamadeploy-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                             check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(wheel, venv)


@pytest.fixture(scope="module")
def adopted(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("adopting-repo")
    done = installed.run("llamadeploy", "init", ".", cwd=target)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def _repo_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pattern in SHIPPED:
        files.update({p.relative_to(ROOT).as_posix(): p for p in ROOT.glob(pattern)
                      if p.is_file() and "__pycache__" not in p.parts})
    return files


def test_the_wheel_ships_suites_policies_and_workflow(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        for rel, path in _repo_files().items():
            member = f"pytest_llamadeploy/_templates/{rel}"
            assert member in names, f"{rel} is not in {installed.wheel.name}"
            assert wheel.read(member) == path.read_bytes(), f"{member} differs from the repository's {rel}"
    assert {"policies/prod.yaml", "suites/health/test_health.py", ".github/workflows/deploy.yml"} <= set(_repo_files())


def test_init_from_the_installed_wheel(installed: Installed, adopted: Path) -> None:
    version = installed.run("llamadeploy", "--version", cwd=adopted)
    assert version.stdout.strip() == f"llamadeploy {metadata.version('pytest-llamadeploy')}", version.stderr
    where = installed.run("python", "-c", "import pytest_llamadeploy.scaffold as s; print(s.template_root())",
                          cwd=adopted)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), f"init read {where.stdout} (not the wheel's copy)"
    for rel, path in _repo_files().items():
        assert (adopted / rel).read_bytes() == path.read_bytes(), rel
    assert (adopted / "requirements-llamadeploy.txt").is_file() and (adopted / "pyproject.toml").is_file()
    checked = installed.run("llamadeploy", "policy", "check", cwd=adopted)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok: prod" in checked.stdout and "ok: sandbox" in checked.stdout
    # pytest there finds the plugin and the gate suites, and asks for an environment (exit 4, nothing run)
    collected = installed.run("python", "-m", "pytest", "--co", "-q", cwd=adopted)
    assert collected.returncode == 4, collected.stdout + collected.stderr
    assert "the gate suites need an environment and a stage" in collected.stderr


def _shared_runner_policies(adopted: Path) -> Path:
    """The adopted sandbox policy with test_verify_sandbox.py's allowances for a shared 2-core runner."""
    folder = adopted.parent / f"{adopted.name}-policies"
    shutil.copytree(adopted / "policies", folder, dirs_exist_ok=True)
    sandbox = folder / "sandbox.yaml"
    data = yaml.safe_load(sandbox.read_text())
    perf = data.setdefault("performance", {})
    perf.update(duration="5s", api_p95="500ms", ws_p95="250ms", db_p95="125ms")
    # Not the monitoring suite (see the healthy run): every suite a stage lists must pass a test (issue 15),
    # so verify is narrowed in its policy, not only with -k.
    data.setdefault("stages", {}).setdefault("verify", {})["suites"] = ["health", "functional", "performance"]
    sandbox.write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.mark.sandbox
def test_the_adopted_repository_rehearses_in_the_sandbox(installed: Installed, adopted: Path, sandbox: Any,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    release = f"adopt-{uuid.uuid4().hex[:6]}"
    env = {"LLAMADEPLOY_SANDBOX_DIR": str(sandbox.directory)}
    with exclusive(sandbox, tmp_path_factory):
        # The README's sandbox commands, from the adopted folder with the installed console script
        # (`down` would stop the sandbox every test shares: the lifecycle tests cover it).
        up = installed.run("llamadeploy", "sandbox", "up", cwd=adopted, env=env, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        deployed = installed.run("llamadeploy", "sandbox", "deploy", "--release", release, cwd=adopted, env=env,
                                 timeout=180)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        faulted = installed.run("llamadeploy", "sandbox", "fault", "--release", release, "latency_ms=5", cwd=adopted,
                                env=env)
        assert faulted.returncode == 0, faulted.stdout + faulted.stderr
        status = installed.run("llamadeploy", "sandbox", "status", "--json", cwd=adopted, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert release in json.dumps(json.loads(status.stdout)), status.stdout
        # A gate of the adopted repository against what the sandbox serves. Not the monitoring suite: its
        # 5-minute window holds the 5xx that other tests' faults left on the shared sandbox.
        results = adopted / "allure-results"
        gate = installed.run(
            "python", "-m", "pytest", "--env=sandbox", "--stage=verify", f"--release={release}",
            f"--policy-dir={_shared_runner_policies(adopted)}", "-k", "health or functional or performance",
            "-rfE", cwd=adopted, env=env, timeout=VERIFY_TIMEOUT)
    tail = (gate.stdout + gate.stderr)[-4000:]
    assert gate.returncode == 0, tail
    assert f"sandbox verify {release}: PASSED" in gate.stdout, tail
    for suite in ("suites/health/", "suites/functional/", "suites/performance/"):
        assert suite in gate.stdout, tail
    assert list(results.glob("*-result.json")), f"no Allure results in {results}"
