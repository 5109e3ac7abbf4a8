"""The reference On-Chain service against real PostgreSQL, Redis and a moto server.

Each xdist worker that runs tests of this module starts its own small stack
(temp dirs, free ports), so nothing is shared between workers. The functional
gate suite is also run, as a pytest subprocess, against this stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.sandbox.physics import FUNCTION_ERROR_HEADER, THROTTLED_HEADER
from pytest_llamadeploy.sandbox.provision import subscribe_queue_to_topic
from pytest_llamadeploy.sandbox.service import auth
from pytest_llamadeploy.sandbox.service.faults import KNOBS, defaults, parse_faults, validate_faults
from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS, SandboxState
from tests.support.botocalls import allowed_actions, not_allowed, recorded

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
START_TIMEOUT = 60.0


# -- pure logic ----------------------------------------------------------------


def test_parse_faults_accepts_every_kind() -> None:
    assert parse_faults(["error_rate=0.3", "throttle_rate=5%", "latency_ms=250", "cache_bypass=true",
                         "crash=no"]) == {"error_rate": 0.3, "throttle_rate": 0.05, "latency_ms": 250.0,
                                          "cache_bypass": True, "crash": False}
    assert set(defaults()) == set(KNOBS)


@pytest.mark.parametrize(("item", "names"), [
    ("bogus=1", ["bogus", "error_rate", "crash"]),
    ("error_rate=1.5", ["error_rate", "between 0 and 1"]),
    ("error_rate=lots", ["error_rate", "not a number"]),
    ("latency_ms=-5", ["latency_ms", "milliseconds"]),
    ("crash=maybe", ["crash", "true or false"]),
    ("error_rate", ["KNOB=VALUE"]),
])
def test_parse_faults_errors_name_knob_and_allowed_values(item: str, names: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_faults([item])
    for name in names:
        assert name in str(info.value)


def test_validate_faults_rejects_json_of_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="cache_bypass"):
        validate_faults({"cache_bypass": 3})
    with pytest.raises(ValueError, match="error_rate"):
        validate_faults({"error_rate": True})
    assert validate_faults({"latency_ms": 10, "crash": "on"}) == {"latency_ms": 10.0, "crash": True}


def test_tokens_verify_and_refuse_tampering_and_expiry() -> None:
    secret = b"s" * 32
    token, expires = auth.issue(secret, "alice", ttl=60, now=1000.0)
    assert expires == 1060.0
    assert auth.verify(secret, token, now=1001.0) == "alice"
    with pytest.raises(auth.AuthError, match="expired"):
        auth.verify(secret, token, now=1060.0)
    with pytest.raises(auth.AuthError, match="signature"):
        auth.verify(b"t" * 32, token, now=1001.0)
    with pytest.raises(auth.AuthError, match="malformed"):
        auth.verify(secret, "nodot", now=1001.0)
    with pytest.raises(auth.AuthError, match="missing"):
        auth.bearer(None)
    with pytest.raises(auth.AuthError):
        auth.issue(secret, "bad user!")


# -- a real stack ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready within {timeout:g}s")


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()  # the port line was read from it; the pipe is ours to close


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    from pytest_llamadeploy.sandbox.postgres import find_bin_dir

    pg_bin = find_bin_dir()  # any installed major version; not found is an error naming the install command
    root = Path(tempfile.mkdtemp(prefix="svc-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run(_as_postgres([str(pg_bin / "initdb"), "-D", str(data), "--auth=trust", "-N", "-U", "postgres"]),
                   check=True, capture_output=True, timeout=60)
    subprocess.run(_as_postgres([str(pg_bin / "pg_ctl"), "-w", "-t", "30", "-D", str(data), "-l", str(root / "log"),
                                 "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True, timeout=60)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE defillama")
        yield f"postgresql://postgres@127.0.0.1:{port}/defillama"
    finally:
        subprocess.run(_as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="svc-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        _wait(up, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        _wait(up, "moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


class _Aws:
    """Clients of the module's moto (what provision's helpers take)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **SANDBOX_CREDENTIALS)


def _sqs(endpoint: str) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", **SANDBOX_CREDENTIALS)


@pytest.fixture(scope="module")
def state_dir(postgres_dsn: str, redis_url: str, moto_endpoint: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="svc-state-"))
    queue = _sqs(moto_endpoint).create_queue(QueueName=f"onchain-alerts-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    # As `sandbox up` provisions it: the service publishes alerts to the topic, the alerts queue is subscribed.
    topic_arn = subscribe_queue_to_topic(_Aws(moto_endpoint), "onchain-alerts", queue)
    SandboxState(directory=directory, aws_endpoint=moto_endpoint, postgres_dsn=postgres_dsn, redis_url=redis_url,
                 sqs_queue_url=queue, extra={"alerts_topic_arn": topic_arn}).save()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Running:
    def __init__(self, proc: subprocess.Popen[str], url: str, release: str):
        self.proc, self.url, self.release = proc, url, release
        self.ws_url = url.replace("http://", "ws://") + "/ws"


def _start_service(state_dir: Path, release: str, *faults: str) -> Running:
    log = open(state_dir / f"service-{release}.log", "a")  # noqa: SIM115 - the child owns it until it exits
    proc = subprocess.Popen([PY, "-m", "pytest_llamadeploy.sandbox.service", "--release", release, "--port", "0",
                             "--state-dir", str(state_dir), *(f"--fault={f}" for f in faults)],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    log.close()
    assert proc.stdout is not None
    line = ""
    deadline = time.monotonic() + START_TIMEOUT
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and "ready" not in line:
            if proc.poll() is not None:
                raise AssertionError(f"service {release} exited {proc.returncode}: "
                                     f"{(state_dir / f'service-{release}.log').read_text()[-2000:]}")
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
    assert "ready" in line, f"service {release} printed no ready line within {START_TIMEOUT:g}s"
    url = line.split("url=")[1].split()[0]
    return Running(proc, url, release)


@pytest.fixture(scope="module")
def services(state_dir: Path) -> Iterator[tuple[Running, Running]]:
    """Two releases at once, as behind the front door during a shift."""
    one = _start_service(state_dir, "r1")
    try:
        two = _start_service(state_dir, "r2")
    except BaseException:
        _stop(one.proc)
        raise
    yield one, two
    for running in (one, two):
        _stop(running.proc)


@pytest.fixture
def svc(services: tuple[Running, Running]) -> Iterator[Running]:
    """Release r1, its faults reset after the test."""
    import httpx

    yield services[0]
    for running in services:
        httpx.delete(f"{running.url}/_sandbox/faults", timeout=5).raise_for_status()


@pytest.fixture
def http(svc: Running) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=svc.url, timeout=10) as client:
        yield client


@pytest.fixture
def bearer(http: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {http.post('/auth/token', json={'user': 'tester'}).json()['token']}"}


def _faults(url: str, **values: Any) -> dict[str, Any]:
    import httpx

    response = httpx.post(f"{url}/_sandbox/faults", json=values, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _ws(url: str) -> Any:
    from websockets.sync.client import connect

    return connect(url, open_timeout=5, close_timeout=2)


def _recv_until(conn: Any, match: Callable[[dict[str, Any]], bool], timeout: float) -> list[dict[str, Any]]:
    """Every message read until one matches or ``timeout``; the match is last."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(conn.recv(timeout=left))
        except TimeoutError:
            break
        seen.append(message)
        if match(message):
            break
    return seen


def _subscribe(conn: Any, *channels: str) -> dict[str, Any]:
    hello = json.loads(conn.recv(timeout=5))
    for channel in channels:
        conn.send(json.dumps({"action": "subscribe", "channel": channel}))
        assert _recv_until(conn, lambda m, c=channel: m == {"type": "subscribed", "channel": c}, 5)[-1]["type"] == "subscribed"
    return hello


# -- health, headers, auth ----------------------------------------------------------


def test_health_checks_postgres_and_redis(http: Any, svc: Running) -> None:
    response = http.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["release"] == "r1"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["postgres"]["latency_ms"] >= 0
    assert response.headers["x-llama-release"] == "r1"


def test_crash_fault_fails_health_live(http: Any, svc: Running) -> None:
    _faults(svc.url, crash=True)
    response = http.get("/health")
    assert response.status_code == 503 and response.json()["checks"]["crash"]["ok"] is False
    assert response.headers["x-llama-release"] == "r1"


def test_every_answer_names_the_release(http: Any, svc: Running, bearer: dict[str, str]) -> None:
    for method, path, headers in [("GET", "/chains", bearer), ("GET", "/chains", {}), ("GET", "/nope", {}),
                                  ("GET", "/stats", {}), ("GET", "/_sandbox/faults", {})]:
        assert http.request(method, path, headers=headers).headers.get("x-llama-release") == "r1", path


def test_auth_refuses_missing_and_bad_tokens(http: Any, bearer: dict[str, str]) -> None:
    assert http.get("/chains", headers=bearer).status_code == 200
    missing = http.get("/chains")
    assert missing.status_code == 401 and missing.json() == {"error": "unauthorized", "detail": "missing bearer token"}
    forged = bearer["Authorization"][:-3] + "xyz"
    assert http.get("/chains", headers={"Authorization": forged}).json()["detail"] == "bad token signature"
    assert http.post("/auth/token", json={"user": ""}).status_code == 400
    assert http.post("/auth/token", content=b"not json").status_code == 400


def test_token_from_one_release_works_on_another(services: tuple[Running, Running], bearer: dict[str, str],
                                                  state_dir: Path) -> None:
    import httpx

    assert httpx.get(f"{services[1].url}/chains", headers=bearer, timeout=5).status_code == 200
    secret_file = state_dir / auth.SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600


# -- queries and cache ----------------------------------------------------------------


def _db(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_queries_equal_the_database(http: Any, bearer: dict[str, str], postgres_dsn: str) -> None:
    chains = [r[0] for r in _db(postgres_dsn, "SELECT DISTINCT chain FROM protocols ORDER BY 1")]
    assert len(chains) == 10 and _db(postgres_dsn, "SELECT count(*) FROM protocols")[0][0] == 200
    assert http.get("/chains", headers=bearer).json()["chains"] == chains
    latest = ("SELECT p.id, t.tvl_usd FROM protocols p JOIN tvl t ON t.protocol_id = p.id "
              "WHERE p.chain = %s AND t.ts = (SELECT max(ts) FROM tvl) ORDER BY t.tvl_usd DESC, p.id")
    rows = _db(postgres_dsn, latest, ("Arbitrum",))
    got = http.get("/protocols", params={"chain": "Arbitrum"}, headers=bearer).json()["protocols"]
    assert [(p["id"], p["tvl"]) for p in got] == [(r[0], float(r[1])) for r in rows]
    tvl = http.get("/tvl/Arbitrum", headers=bearer).json()
    assert tvl == {"chain": "Arbitrum", "tvl": float(sum(r[1] for r in rows)), "protocols": len(rows)}
    one = http.get(f"/protocols/{rows[0][0]}", headers=bearer).json()
    assert (one["id"], one["chain"], one["tvl"]) == (rows[0][0], "Arbitrum", float(rows[0][1]))
    assert http.get("/protocols/99999", headers=bearer).status_code == 404
    assert http.get("/tvl/NoSuchChain", headers=bearer).status_code == 404
    assert http.get("/protocols", params={"chain": "bad chain!"}, headers=bearer).status_code == 400


def test_representative_queries_run_on_the_database(postgres_dsn: str, svc: Running) -> None:
    from pytest_llamadeploy.sandbox.service.db import REPRESENTATIVE_QUERIES

    assert {"protocols_by_chain", "tvl_by_chain"} <= set(REPRESENTATIVE_QUERIES)
    for name, (sql, params) in REPRESENTATIVE_QUERIES.items():
        assert _db(postgres_dsn, sql, params), f"{name} returned no rows for {params}"


def _stats(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/stats", timeout=5).json()


def _keyspace(redis_url: str) -> tuple[int, int]:
    import redis

    info = redis.Redis.from_url(redis_url).info("stats")
    return int(info["keyspace_hits"]), int(info["keyspace_misses"])


def test_cache_counts_hits_and_misses(http: Any, svc: Running, bearer: dict[str, str], redis_url: str) -> None:
    assert http.delete("/_sandbox/cache").status_code == 200
    first = http.get("/tvl/Base", headers=bearer)
    second = http.get("/tvl/Base", headers=bearer)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()
    stats = _stats(svc.url)["cache"]
    assert (stats["hits"], stats["misses"]) == (1, 1)


def test_fresh_read_reads_postgres_and_is_neither_hit_nor_miss(http: Any, svc: Running, bearer: dict[str, str],
                                                               redis_url: str) -> None:
    import redis

    http.get("/protocols?chain=Base", headers=bearer)  # cached now
    client = redis.Redis.from_url(redis_url)
    timings_before = client.llen("llama:stats:db_ms:protocols_by_chain")
    before = _stats(svc.url)["cache"]
    hits0, misses0 = _keyspace(redis_url)
    fresh = [http.get("/protocols?chain=Base", headers={**bearer, "Cache-Control": "no-cache"}) for _ in range(3)]
    hits1, misses1 = _keyspace(redis_url)
    after = _stats(svc.url)["cache"]
    assert [f.headers["x-cache"] for f in fresh] == ["refresh"] * 3
    assert fresh[0].json() == http.get("/protocols?chain=Base", headers=bearer).json()
    # Each fresh read is a database read with its timing recorded, and no cache read at all.
    assert client.llen("llama:stats:db_ms:protocols_by_chain") - timings_before == 3
    assert (hits1 - hits0, misses1 - misses0) == (0, 0)
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (0, 0)


def test_cache_bypass_always_reads_postgres(http: Any, svc: Running, bearer: dict[str, str], redis_url: str) -> None:
    http.get("/tvl/Solana", headers=bearer)  # warm
    _faults(svc.url, cache_bypass=True)
    # /stats itself reads Redis: keep it outside the keyspace measurement.
    before = _stats(svc.url)["cache"]
    hits0, misses0 = _keyspace(redis_url)
    answers = [http.get("/tvl/Solana", headers=bearer) for _ in range(5)]
    hits1, misses1 = _keyspace(redis_url)
    after = _stats(svc.url)["cache"]
    assert [a.headers["x-cache"] for a in answers] == ["miss"] * 5
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (0, 5)
    assert misses1 - misses0 >= 5 and hits1 - hits0 == 0, "Redis INFO must see the bypass as misses too"


# -- events and alerts ------------------------------------------------------------------


def test_event_reaches_subscribers_of_every_release(services: tuple[Running, Running], svc: Running,
                                                    bearer: dict[str, str], http: Any) -> None:
    one, two = services
    with _ws(one.ws_url) as a, _ws(two.ws_url) as b:
        assert _subscribe(a, "tvl")["release"] == "r1"
        assert _subscribe(b, "tvl")["release"] == "r2"
        response = http.post("/events/tvl", json={"chain": "Ethereum", "tvl": 5.0}, headers=bearer)
        assert response.status_code == 200, response.text
        posted = response.json()
        for conn in (a, b):
            got = _recv_until(conn, lambda m: m.get("id") == posted["id"], 3)
            assert got and got[-1]["id"] == posted["id"] and got[-1]["type"] == "event"
            assert got[-1]["ts"] == posted["ts"] and got[-1]["chain"] == "Ethereum"
        a.send(json.dumps({"action": "ping", "id": 7}))
        assert _recv_until(a, lambda m: m.get("type") == "pong", 3)[-1]["id"] == 7
        a.send("not json")
        assert _recv_until(a, lambda m: m.get("type") == "error", 3)[-1]["type"] == "error"


def test_alert_exactly_once_across_releases_and_in_sqs(services: tuple[Running, Running], svc: Running,
                                                       bearer: dict[str, str], http: Any, state_dir: Path) -> None:
    import httpx

    one, two = services
    chain = f"t-{uuid.uuid4().hex[:8]}"
    rule = http.post("/alerts", json={"chain": chain, "above": 150}, headers=bearer)
    assert rule.status_code == 201
    rule_id = rule.json()["id"]
    with _ws(one.ws_url) as a, _ws(two.ws_url) as b:
        _subscribe(a, "alerts")
        _subscribe(b, "alerts")
        # Events alternate between the releases: the crossing is judged wherever it lands.
        answers = [httpx.post(f"{url}/events/tvl", json={"chain": chain, "tvl": value}, headers=bearer, timeout=5).json()
                   for url, value in [(one.url, 100), (two.url, 200), (one.url, 300), (two.url, 120)]]
        assert [len(x["alerts"]) for x in answers] == [0, 1, 0, 0]
        assert [x["previous"] for x in answers] == [0.0, 100.0, 200.0, 300.0]
        assert answers[1]["alerts"][0]["sqs"] is True
        for conn in (a, b):
            seen = _recv_until(conn, lambda m: False, 1.5)
            alerts = [m for m in seen if m.get("type") == "alert" and m.get("rule_id") == rule_id]
            assert len(alerts) == 1 and alerts[0]["event_id"] == answers[1]["id"], seen
    state = SandboxState.load(state_dir)
    sqs = _sqs(state.aws_endpoint)
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=state.sqs_queue_url, MaxNumberOfMessages=10,
                                                                 WaitTimeSeconds=1).get("Messages", [])]
    assert [b["rule_id"] for b in bodies if b["chain"] == chain] == [rule_id]
    fired = http.get(f"/alerts/{rule_id}", headers=bearer).json()["alerts"]
    assert [f["event_id"] for f in fired] == [answers[1]["id"]]


# -- fault knobs ----------------------------------------------------------------------------


def test_error_and_throttle_faults(http: Any, svc: Running, bearer: dict[str, str]) -> None:
    _faults(svc.url, error_rate=1)
    assert http.get("/chains", headers=bearer).status_code == 500
    assert http.get("/health").status_code == 200, "error_rate must spare /health"
    _faults(svc.url, error_rate=0, throttle_rate=1)
    throttled = http.get("/chains", headers=bearer)
    assert throttled.status_code == 429 and throttled.json() == {"error": "throttled"}
    # Lambda refused it before the function ran: the runtime marks it, nothing of the release answers.
    assert throttled.headers[THROTTLED_HEADER] == "1" and "x-llama-release" not in throttled.headers
    _faults(svc.url, throttle_rate=0, unhandled_error_rate=1)
    raised = http.get("/chains", headers=bearer)
    assert raised.status_code == 500 and raised.headers[FUNCTION_ERROR_HEADER] == "Unhandled"
    assert http.get("/health").status_code == 200, "unhandled_error_rate must spare /health"
    _faults(svc.url, unhandled_error_rate=0)
    _faults(svc.url, throttle_rate=0.5)
    codes = [http.get("/chains", headers=bearer).status_code for _ in range(60)]
    assert 10 <= codes.count(429) <= 50 and set(codes) == {200, 429}


def test_latency_fault(http: Any, svc: Running) -> None:
    _faults(svc.url, latency_ms=300)
    start = time.perf_counter()
    assert http.get("/health").status_code == 200
    assert time.perf_counter() - start >= 0.3


def test_slow_query_fault(http: Any, svc: Running, bearer: dict[str, str]) -> None:
    _faults(svc.url, slow_query_ms=250, cache_bypass=True)
    start = time.perf_counter()
    assert http.get("/protocols", params={"chain": "Tron"}, headers=bearer).status_code == 200
    assert time.perf_counter() - start >= 0.25
    assert _stats(svc.url)["db"]["protocols_by_chain"]["p95_ms"] >= 250


def test_ws_connect_error_fault(svc: Running) -> None:
    from websockets.exceptions import InvalidStatus

    _faults(svc.url, ws_connect_error_rate=1)
    with pytest.raises(InvalidStatus) as info:
        _ws(svc.ws_url)
    assert info.value.response.status_code == 503
    assert _stats(svc.url)["ws"]["rejected"] >= 1


def test_event_drop_fault_hits_only_the_faulty_release(services: tuple[Running, Running], svc: Running,
                                                       bearer: dict[str, str], http: Any) -> None:
    one, two = services
    _faults(one.url, event_drop_rate=1)
    with _ws(one.ws_url) as dropped, _ws(two.ws_url) as healthy:
        _subscribe(dropped, "tvl")
        _subscribe(healthy, "tvl")
        posted = http.post("/events/tvl", json={"chain": "BSC", "tvl": 1.0}, headers=bearer).json()
        assert _recv_until(healthy, lambda m: m.get("id") == posted["id"], 3)[-1]["id"] == posted["id"]
        assert not [m for m in _recv_until(dropped, lambda m: False, 1.0) if m.get("id") == posted["id"]]


def test_admin_endpoint_rejects_bad_faults(svc: Running) -> None:
    import httpx

    bad = httpx.post(f"{svc.url}/_sandbox/faults", json={"error_rate": 2}, timeout=5)
    assert bad.status_code == 400 and "error_rate" in bad.json()["detail"]
    unknown = httpx.post(f"{svc.url}/_sandbox/faults", json={"nope": 1}, timeout=5)
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]
    assert httpx.get(f"{svc.url}/_sandbox/faults", timeout=5).json() == defaults()


# -- process lifecycle ---------------------------------------------------------------------


def test_start_with_crash_and_clean_sigterm(state_dir: Path) -> None:
    import httpx

    bad = subprocess.run([PY, "-m", "pytest_llamadeploy.sandbox.service", "--release", "x", "--state-dir",
                          str(state_dir), "--fault", "crash=perhaps"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "crash" in bad.stderr and "true or false" in bad.stderr
    running = _start_service(state_dir, "crashy", "crash=true")
    try:
        assert httpx.get(f"{running.url}/health", timeout=5).status_code == 503
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(10) == 0
    finally:
        _stop(running.proc)


# -- the functional gate suite, run against this stack ----------------------------------------

_LLAMA_PLUGIN = '''
import os
import pytest
from pytest_llamadeploy.context import StageContext

if os.environ.get("BOTOCALLS"):  # every AWS call of the suite, recorded
    from tests.support.botocalls import install
    install(os.environ["BOTOCALLS"], stage="functional")

@pytest.fixture(scope="session")
def llama():
    return StageContext(**__import__("json").loads(open(os.environ["SVC_TEST_CONTEXT"]).read()))
'''


def _leftovers(state: SandboxState) -> dict[str, Any]:
    """What a functional run could leave behind: test rows, Redis keys, queues, subscriptions, production messages."""
    import psycopg
    import redis

    with psycopg.connect(state.postgres_dsn, autocommit=True, connect_timeout=10) as conn:
        rules = conn.execute("SELECT count(*) FROM alert_rules WHERE chain LIKE 'llamadeploy-%'").fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM alerts WHERE rule_id IN (SELECT id FROM alert_rules "
                              "WHERE chain LIKE 'llamadeploy-%')").fetchone()[0]
    keys = redis.Redis.from_url(state.redis_url)
    try:
        tvl_keys = sorted(keys.scan_iter(match="llama:last_tvl:llamadeploy-*"))
    finally:
        keys.close()
    aws = _Aws(state.aws_endpoint)
    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=state.sqs_queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    # Messages in the queue, visible or in flight: a message an earlier test of this module received
    # (its visibility timeout running out during this one) is still the same message, not a leftover.
    # That the suite never receives from this queue is asserted from its recorded calls.
    production = sum(int(attributes[k]) for k in attributes)
    return {"alert_rules": rules, "alerts": alerts, "redis_keys": tvl_keys,
            "queues": sorted(sqs.list_queues().get("QueueUrls", [])),
            "subscriptions": len(aws.client("sns").list_subscriptions()["Subscriptions"]),
            "production_messages": production}


def _run_functional(svc: Running, state: SandboxState, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The functional suite as a gate session runs it, every botocore call recorded to tmp_path/calls.jsonl."""
    context = {
        "env": "sandbox", "stage": "verify", "release": "r1", "policy_dir": str(REPO / "policies"),
        "run_id": f"svc{uuid.uuid4().hex[:8]}",
        "aws": {"region": "us-east-1", "endpoint_url": state.aws_endpoint, "credentials": dict(SANDBOX_CREDENTIALS)},
        "targets": {"api_url": svc.url, "ws_url": svc.ws_url, "postgres_dsn": state.postgres_dsn,
                    "redis_url": state.redis_url, "sqs_queue_url": state.sqs_queue_url, "source": "sandbox"},
    }
    (tmp_path / "ctx.json").write_text(json.dumps(context))
    (tmp_path / "svc_llama_plugin.py").write_text(_LLAMA_PLUGIN)
    env = {**os.environ, "SVC_TEST_CONTEXT": str(tmp_path / "ctx.json"), "BOTOCALLS": str(tmp_path / "calls.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    return subprocess.run([PY, "-m", "pytest", "suites/functional", "-q", "-p", "no:cacheprovider",
                           "-p", "no:llamadeploy", "-p", "svc_llama_plugin", "-p", "no:xdist", "-p", "no:randomly", "-s", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_functional_suite_passes_on_a_good_release(services: tuple[Running, Running], svc: Running,
                                                    state_dir: Path, tmp_path: Path) -> None:
    state = SandboxState.load(state_dir)
    before = _leftovers(state)
    result = _run_functional(svc, state, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
    # Issue 13: safe on production. It wrote (alert rules, alerts, last TVLs) and removed all of it; its
    # alert came through a queue of its own subscribed to the alert topic, gone afterwards; the production
    # queue was never received from and holds no test alert (its subscription filters them out).
    assert re.search(r"removed the test data of llamadeploy-svc\w+: [1-9]\d* alert rule\(s\), [1-9]\d* alert\(s\), "
                     r"[1-9]\d* Redis key\(s\)", result.stdout), result.stdout[-2000:]  # it did write
    assert _leftovers(state) == before
    calls = recorded(tmp_path / "calls.jsonl")
    receives = [c["queue_url"] for c in calls if c["action"] == "sqs:ReceiveMessage"]
    assert receives and state.sqs_queue_url not in receives, receives
    assert {"sqs:CreateQueue", "sns:Subscribe", "sns:Unsubscribe", "sqs:DeleteQueue"} <= {c["action"] for c in calls}
    # docs/iam-policy.json lets every stage that runs the functional suite make these calls (issue 13 part 7).
    document = json.loads((REPO / "docs" / "iam-policy.json").read_text())
    for stage in ("Deploy", "Promote", "Verify"):
        sids = {s["Sid"] for s in document["Statement"] if s["Sid"].startswith(("EveryStage", f"Stage{stage}"))}
        assert not_allowed([c["action"] for c in calls], allowed_actions(document, sids)) == [], stage


def test_functional_suite_removes_its_data_when_a_test_fails(services: tuple[Running, Running], svc: Running,
                                                             state_dir: Path, tmp_path: Path) -> None:
    state = SandboxState.load(state_dir)
    before = _leftovers(state)
    for running in services:  # alerts are stored and queued but never reach a WebSocket: the alert test fails
        _faults(running.url, event_drop_rate=1.0)
    result = _run_functional(svc, state, tmp_path, "-k", "alert_fires_once")
    assert result.returncode == 1 and "did not arrive" in result.stdout, result.stdout[-4000:]
    assert re.search(r"removed the test data of llamadeploy-svc\w+: 1 alert rule\(s\), 1 alert\(s\)", result.stdout)
    assert _leftovers(state) == before


# -- the Prometheus provider against a real Prometheus scraping these services -------------


def test_prometheus_provider_catches_the_error_fault_on_the_new_version(
        services: tuple[Running, Running], svc: Running, bearer: dict[str, str], moto_endpoint: str,
        tmp_path: Path) -> None:
    """A rule on a custom signal from a Prometheus source (the functions' own per-version counters,
    GET /metrics) breaches on the new version with error_rate=0.5 (and latency_ms=100: its p95 from the
    histogram's buckets) and passes on the healthy old one,
    through the real bake watch (its first breach; the healthy bake to its final decision) and
    evaluate_rules, with the counts exact."""
    import math

    import httpx

    from pytest_llamadeploy.metrics.evaluate import evaluate_rules
    from pytest_llamadeploy.metrics.providers import metric_providers
    from pytest_llamadeploy.metrics.watch import BakeWatch, Breach
    from pytest_llamadeploy.policy import load_policy
    from pytest_llamadeploy.sandbox.physics import FUNCTION_NAME_HEADER, FUNCTION_VERSION_HEADER
    from tests.support.prometheus import POLICY, prometheus_server

    old, new = services  # each its own process, as two Lambda versions are
    _faults(new.url, error_rate=0.5, latency_ms=100)
    fn, versions = "onchain-api", {"old": "41", "new": "42"}  # versions no other test of the module labels
    targets = [r.url.removeprefix("http://") for r in services]
    with prometheus_server(tmp_path / "prometheus", targets) as prom_url:

        def both_scraped() -> bool:
            up = httpx.get(f"{prom_url}/api/v1/query", params={"query": "up == 1"}, timeout=2).json()
            return len(up["data"]["result"]) == 2

        pdir = tmp_path / "policies"
        shutil.copytree(REPO / "policies", pdir)
        (pdir / "promtest.yaml").write_text(POLICY.format(url=prom_url))
        policy = load_policy(pdir, "promtest").policy
        cloudwatch = _Aws(moto_endpoint).client("cloudwatch")  # the report's plots still read the EMF
        router = metric_providers(policy, cloudwatch)

        start = float(math.floor(time.time()))
        sent = {"old": 0, "new": 0}
        errors = {"old": 0, "new": 0}
        with httpx.Client(base_url=old.url, timeout=10) as to_old, httpx.Client(base_url=new.url, timeout=10) as to_new:
            for _ in range(30):
                for label, client in (("old", to_old), ("new", to_new)):
                    headers = {**bearer, FUNCTION_NAME_HEADER: fn, FUNCTION_VERSION_HEADER: versions[label]}
                    status = client.get("/chains", headers=headers).status_code
                    sent[label] += 1
                    errors[label] += status >= 500
        # Prometheus 2.42 hands its targets to the scraper ~5 s after it starts (its discovery's update
        # interval): the counters, born during the traffic, are first scraped whole, and counted from zero.
        _wait(both_scraped, "Prometheus's first scrape of both services", timeout=20)
        # A request's count is scraped within 1 s and lands in the bucket before that step.
        end = time.time() + 2.0
        assert errors["old"] == 0 and errors["new"] >= 5, errors

        breaches: list[Breach] = []
        rules = {"prom_error_rate": policy.rollback_triggers["prom_error_rate"]}
        watched = policy.model_copy(update={"rollback_triggers": rules, "key_metrics": {}})
        watch = BakeWatch(router, watched, [fn], "live", {fn: versions["old"]}, {fn: versions["new"]}, start, None,
                          breaches.append, baseline=False)
        breach = watch.simulate(end - start, lambda seconds: time.sleep(seconds))  # waits as the bake's end does
        assert breach is not None and breaches == [breach], watch.evidence()["last_results"]
        assert (breach.kind, breach.rule, breach.version, breach.label) == ("threshold", "prom_error_rate", "42",
                                                                            "new"), breach.message
        assert "source: prometheus: prom metrics" in breach.message
        # The same bake with the healthy version as the new one runs to its end without a breach.
        healthy = BakeWatch(router, watched, [fn], "live", {fn: versions["new"]}, {fn: versions["old"]}, start, None,
                            breaches.append, baseline=False)
        assert healthy.simulate(end - start, lambda seconds: time.sleep(seconds)) is None and breaches == [breach]
        (judged,) = [r for r in healthy.evidence()["last_results"] if r["version"] == "new"]
        assert (judged["verdict"], judged["version_number"], judged["value"]) == ("pass", "41", 0.0), judged

        by: dict[str, Any] = {}

        def all_counted() -> bool:  # the watch fired at its first breach; the last scrapes may still be due
            results = evaluate_rules(router, policy, rules, {label: {fn: v} for label, v in versions.items()},
                                     start, end)
            by.update({r.version: r for r in results})
            return all(by[label].samples == sent[label] for label in sent)

        _wait(all_counted, f"Prometheus's counts of the {sent} requests sent", timeout=15)
        results = list(by.values())
        assert by["new"].verdict == "fail" and by["old"].verdict == "pass", [r.message for r in results]
        # Exactly what the services answered: every request counted once, in its version's series.
        assert by["new"].value == pytest.approx(errors["new"] / sent["new"]) and by["old"].value == 0.0
        # A percentile from the histogram's buckets: every answer of the new version took > 100 ms (its
        # bucket: 100-200 ms, interpolated), the old version's a few ms.
        latency = {r.version: r for r in evaluate_rules(router, policy, {"prom_latency": policy.key_metrics[
            "prom_latency"]}, {label: {fn: v} for label, v in versions.items()}, start, end)}
        assert latency["new"].verdict == "fail" and 100.0 <= (latency["new"].value or 0) <= 200.0, latency["new"].message
        assert latency["old"].verdict == "pass" and 0.0 < (latency["old"].value or 0) < 80.0, latency["old"].message
