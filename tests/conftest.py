"""Fixtures shared by the project's own tests (not the gate suites)."""

from __future__ import annotations

import os
import subprocess
import threading
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


#: Fixtures that start a server process (moto, PostgreSQL, Redis, a release's service, the front door, the
#: shared sandbox): a test that uses one, directly or through another fixture, is a sandbox test. Tests that
#: start processes themselves carry the mark in their module; ``_pure_logic_only`` keeps the two sets honest.
_SERVER_FIXTURES = frozenset({"moto_url", "sandbox", "rig", "live", "ops_moto_url", "ops_pg", "postgres_dsn",
                              "redis_url", "moto_endpoint", "app_url"})

#: Every test that holds the shared sandbox alone runs on ONE xdist worker, one after another: spread
#: over two workers, the second waited on the cross-worker lock, idle (setups of 80-220 s measured),
#: while the other worker's queue could have used it. The rest is spread over every worker.
SANDBOX_EXCLUSIVE_GROUP = "sandbox-exclusive"
#: Modules whose module-scoped fixtures hold the sandbox alone (``exclusive(...)``), so every test in them.
_EXCLUSIVE_MODULES = {"test_adopt_wheel", "test_ops_sandbox", "test_report_browser", "test_verify_sandbox",
                      "test_watch_sandbox"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sandbox)
        module = getattr(item, "module", None)
        if "sandbox_exclusive" in getattr(item, "fixturenames", ()) or (
                module is not None and module.__name__.rpartition(".")[2] in _EXCLUSIVE_MODULES):
            item.add_marker(pytest.mark.xdist_group(SANDBOX_EXCLUSIVE_GROUP))
    if getattr(config.option, "loadgroup", False):  # set only on an xdist worker of --dist loadgroup
        _group_suffix_for_xdist(items)
    # STYLE.md: warnings are errors in the project's own tests (not in the gate suites users run,
    # which share pyproject's [tool.pytest.ini_options]): a deprecation fails here, not in production.
    # Except the two the garbage collector raises: an unclosed file or an exception in a __del__
    # surfaces whenever the collector runs, in whichever test happens to be running then, so as an
    # error it would fail an innocent test at random. They stay visible in the warnings summary.
    mark = pytest.mark.filterwarnings("error", "default::ResourceWarning",
                                      "default::pytest.PytestUnraisableExceptionWarning")
    for item in items:
        item.add_marker(mark)


def _group_suffix_for_xdist(items: list[pytest.Item]) -> None:
    """Put each grouped test's ``@group`` into its node id where pytest 9.2 reads it.

    xdist's scheduler groups tests by that suffix, which its worker hook writes into ``item._nodeid``;
    pytest 9.2 builds ``item.nodeid`` from a structured id instead, so the suffix never arrived and every
    group was spread over every worker (pytest-dev/pytest-xdist#1386, open; 4 test files marked
    ``xdist_group("g")`` ran on 3 workers here). The sandbox-exclusive tests then ran on all workers at
    once, each waiting on the cross-worker lock for the others. When xdist writes the structured id itself,
    the suffix is appended twice; its scheduler reads the last one, the same group.
    """
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest before 9.2: xdist's own hook works
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _pure_logic_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``sandbox`` mark is pure logic: it may not start a process.

    ``pytest tests -m "not sandbox"`` is the developer's answer in under a minute (issue 10); one test
    that forks a gate run or starts a server would cost it seconds each, unseen. So here it fails, naming
    the fix. Only the test's own thread is watched: a sandbox test's leftover thread may still run.
    """
    if request.node.get_closest_marker("sandbox") is not None:
        return
    owner = threading.current_thread()

    def refuse(what: str) -> None:
        if threading.current_thread() is owner:
            raise RuntimeError(f"{request.node.nodeid} {what}: mark it @pytest.mark.sandbox (tests that start "
                               "processes or servers), or keep it pure logic")

    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    fork = os.fork

    def guarded_execute_child(self: subprocess.Popen[bytes], args: object, *rest: object, **kw: object) -> None:
        refuse(f"started a process ({args!r:.80})")
        execute_child(self, args, *rest, **kw)

    def guarded_fork() -> int:
        refuse("forked")
        return fork()

    monkeypatch.setattr(subprocess.Popen, "_execute_child", guarded_execute_child)
    monkeypatch.setattr(os, "fork", guarded_fork)
