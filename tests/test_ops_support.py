"""Real servers for the ops tests: a moto server subprocess and a PostgreSQL cluster.

Each xdist worker starts its own (free ports, own temp dirs) and stops them at
module end, so workers share nothing. The sandbox's shared fixtures can replace
these later.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.aws import AwsConfig
from pytest_llamadeploy.context import StageContext
from pytest_llamadeploy.ledger import FileLedger
from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

REPO = Path(__file__).resolve().parents[1]

# moto cannot reach UPDATE_ROLLBACK_FAILED through its API (a failed update leaves the old
# status). This launcher makes an update whose template Description carries the marker fail
# the way AWS does when the update and then its rollback fail; everything else is plain moto.
ROLLBACK_FAILED_MARKER = "llamadeploy-test:update-and-rollback-fail"
_MOTO_LAUNCHER = f"""
import sys
from moto.cloudformation import models
from moto.server import main

_update = models.Stack.update

def update(self, template, *args, **kwargs):
    if {ROLLBACK_FAILED_MARKER!r} not in template:
        return _update(self, template, *args, **kwargs)
    self._add_stack_event("UPDATE_IN_PROGRESS", resource_status_reason="User Initiated")
    self._add_stack_event("UPDATE_FAILED", resource_status_reason="Resource handler returned message: limit exceeded")
    self._add_stack_event("UPDATE_ROLLBACK_IN_PROGRESS")
    self._add_stack_event("UPDATE_ROLLBACK_FAILED", resource_status_reason="The following resource(s) failed to update: [Api]")
    self.status = "UPDATE_ROLLBACK_FAILED"

models.Stack.update = update
main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ops_moto_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _MOTO_LAUNCHER, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(port) or proc.poll() is not None, 90, "moto server")
        assert proc.poll() is None, "moto server exited at start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def ops_aws(ops_moto_url: str) -> AwsConfig:
    import httpx

    httpx.post(f"{ops_moto_url}/moto-api/reset", timeout=10).raise_for_status()
    return AwsConfig(region="us-east-1", endpoint_url=ops_moto_url, max_attempts=1,
                     credentials=dict(SANDBOX_CREDENTIALS))


def _as_postgres(*argv: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


@pytest.fixture(scope="module")
def ops_pg() -> Iterator[str]:
    """A PostgreSQL cluster on a free port; yields a DSN template without dbname."""
    from pytest_llamadeploy.sandbox.postgres import find_bin_dir

    pg_bin = find_bin_dir()  # any installed major version
    data = Path(tempfile.mkdtemp(prefix="ops-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_postgres(str(pg_bin / "initdb"), "-D", str(data), "--auth=trust", "-N", "-U", "postgres"),
                   check=True, capture_output=True, timeout=60)
    subprocess.run(_as_postgres(str(pg_bin / "pg_ctl"), "-w", "-t", "30", "-D", str(data), "-l", str(data / "log"),
                                "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"),
                   check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def ops_dsn(ops_pg: str) -> str:
    """A fresh, empty database for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{ops_pg}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{ops_pg}/{name}"


def new_ledger(tmp_path: Path) -> FileLedger:
    """The real file ledger in a fresh folder."""
    return FileLedger(tmp_path / f"ledger-{uuid.uuid4().hex[:6]}")


def kinds(ledger: FileLedger, env: str = "opstest") -> list[str]:
    """Kinds of the artifacts recorded, oldest first."""
    doc = json.loads((ledger.directory / f"{env}.json").read_text())
    return [a["kind"] for a in doc["artifacts"]]


def policy_dir(tmp_path: Path, env: str = "opstest", extends: str = "sandbox", extra: str = "") -> Path:
    """The repo's policies plus ``opstest.yaml`` extending ``extends`` with ``extra`` YAML."""
    directory = tmp_path / "policies"
    shutil.copytree(REPO / "policies", directory, dirs_exist_ok=True)
    (directory / f"{env}.yaml").write_text(f"extends: {extends}\n{extra}")
    return directory


def make_ctx(tmp_path: Path, aws: AwsConfig | None, dsn: str = "", *, env: str = "opstest",
             release: str = "v1.2.3", extends: str = "sandbox", extra: str = "", **kw: Any) -> StageContext:
    return StageContext(
        env=env, stage=kw.pop("stage", "preflight"), release=release,
        policy_dir=str(policy_dir(tmp_path, env, extends, extra)),
        aws={"region": aws.region, "endpoint_url": aws.endpoint_url, "max_attempts": 1,
             "credentials": dict(aws.credentials)} if aws else {},
        targets={"api_url": "", "ws_url": "", "postgres_dsn": dsn, "redis_url": kw.pop("redis_url", ""),
                 "sqs_queue_url": "", "source": "sandbox"},
        artifacts_dir=str(tmp_path / "artifacts"), **kw,
    )




def create_functions(aws: AwsConfig, variables: dict[str, str]) -> dict[str, str]:
    """onchain-api and onchain-ws with one published version behind alias ``live``; returns the versions."""
    import io
    import zipfile

    role = aws.client("iam").create_role(RoleName="ops-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    lam = aws.client("lambda")
    versions = {}
    for fn in ("onchain-api", "onchain-ws"):
        lam.create_function(FunctionName=fn, Runtime="python3.11", Role=role, Handler="handler.handler",
                            Code={"ZipFile": buf.getvalue()}, Environment={"Variables": dict(variables)})
        versions[fn] = lam.publish_version(FunctionName=fn)["Version"]
        lam.create_alias(FunctionName=fn, Name="live", FunctionVersion=versions[fn])
    return versions
