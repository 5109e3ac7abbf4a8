"""Fixtures shared by the project's own tests (not the gate suites)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.aws_setup import create_service
from tests.support.moto import moto_server, reset

_HERE = Path(__file__).parent
pytest_plugins = ["tests.sandbox_fixtures"] if (_HERE / "sandbox_fixtures.py").exists() else []


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server (server mode, own process) per xdist worker; tests reset it."""
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh moto with the service's functions and alias `live` -> 1, reached through
    boto3's standard configuration (AWS_ENDPOINT_URL), as a real env would be."""
    reset(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "LLAMADEPLOY_APPROVED_BY", "LLAMADEPLOY_SANDBOX_DIR"):
        monkeypatch.delenv(name, raising=False)
    create_service(moto_url)
    return moto_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # STYLE.md: warnings are errors in the project's own tests (not in the gate suites users run,
    # which share pyproject's [tool.pytest.ini_options]): a deprecation fails here, not in production.
    # Except the two the garbage collector raises: an unclosed file or an exception in a __del__
    # surfaces whenever the collector runs, in whichever test happens to be running then, so as an
    # error it would fail an innocent test at random. They stay visible in the warnings summary.
    mark = pytest.mark.filterwarnings("error", "default::ResourceWarning",
                                      "default::pytest.PytestUnraisableExceptionWarning")
    for item in items:
        item.add_marker(mark)
